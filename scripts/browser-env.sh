# Sourced by the browser scripts: installs what running wasm32 tests in
# real browsers needs, then exports the driver paths.
#   - rustup target wasm32-unknown-unknown
#   - Debian's chromium + chromium-driver and firefox-esr (apt)
#   - wasm-bindgen-cli at exactly Cargo.lock's wasm-bindgen version
#   - geckodriver built from crates.io (the npm package downloads a binary
#     and fails on a closed network)
# Debian's webkit2gtk-driver (WebKitWebDriver) is installed for the WebKit
# attempt, which is reported, not required.

browser_sudo() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

provision_browsers() {
    rustup target add wasm32-unknown-unknown >/dev/null
    local missing=()
    [ -x /usr/bin/chromium ] || missing+=(chromium)
    [ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
    [ -x /usr/bin/firefox-esr ] || missing+=(firefox-esr)
    [ -x /usr/bin/WebKitWebDriver ] || missing+=(webkit2gtk-driver)
    command -v xvfb-run >/dev/null || missing+=(xvfb xauth)
    if [ ${#missing[@]} -gt 0 ]; then
        browser_sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive browser_sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    local want
    want=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/"/, "", $3); print $3; exit }' Cargo.lock)
    if [ "$(wasm-bindgen-test-runner --version 2>/dev/null | awk '{print $2}')" != "$want" ]; then
        # No --locked: one of its locked dependencies is not on the registry.
        cargo install -q wasm-bindgen-cli --version "=$want"
    fi
    if ! command -v geckodriver >/dev/null; then
        cargo install -q geckodriver --version "=0.37.1"
    fi
    export PATH="$HOME/.cargo/bin:$PATH"
    export CHROMEDRIVER_BIN=/usr/bin/chromedriver
    GECKODRIVER_BIN=$(command -v geckodriver)
    export GECKODRIVER_BIN
}

# run_in_browser chrome|firefox|webkit ARGS...: `cargo test` for wasm32 with
# only that browser's driver in the runner's environment.
run_in_browser() {
    local browser=$1
    shift
    case $browser in
    chrome) env -u GECKODRIVER -u SAFARIDRIVER CHROMEDRIVER="$CHROMEDRIVER_BIN" \
        cargo test --locked --target wasm32-unknown-unknown "$@" ;;
    firefox) env -u CHROMEDRIVER -u SAFARIDRIVER GECKODRIVER="$GECKODRIVER_BIN" \
        cargo test --locked --target wasm32-unknown-unknown "$@" ;;
    webkit) env -u CHROMEDRIVER -u GECKODRIVER SAFARIDRIVER=/usr/bin/WebKitWebDriver \
        WASM_BINDGEN_TEST_TIMEOUT=60 xvfb-run -a cargo test --locked --target wasm32-unknown-unknown "$@" ;;
    esac
}
