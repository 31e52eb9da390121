#!/usr/bin/env bash
# The browser suite, in headless Chromium and Firefox (both must pass, none
# may be skipped), then an attempt in WebKit, reported:
#   - outbox-store-idb: the IndexedDB store's conformance suite and its
#     browser tests (tests/conformance.rs, tests/browser.rs);
#   - outbox-forwarder: the browser forwarder (`browser::TabForwarder`)
#     over that store (tests/browser.rs; its other tests are native).
# Installs what it needs.
# Usage: scripts/test-browser.sh   (prints "browser tests: P passed, F failed")
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/browser-env.sh
source scripts/browser-env.sh
provision_browsers

# The wasm32 lints and docs (native clippy does not see this code).
cargo clippy --locked -p outbox-store-idb -p outbox-forwarder --target wasm32-unknown-unknown --all-targets -- -D warnings
cargo clippy --locked -p outbox-core -p outbox-testkit -p outbox-size-app -p outbox-size-commit -p outbox-size-raw-commit \
    --target wasm32-unknown-unknown --lib -- -D warnings
RUSTDOCFLAGS=-Dwarnings cargo doc --locked -p outbox-store-idb -p outbox-forwarder --no-deps --target wasm32-unknown-unknown

# Each suite: a name, the fewest tests it may report per browser (a suite
# that shrinks unnoticed is a failure), and its cargo arguments.
suites=(
    "outbox-store-idb|30|-p outbox-store-idb"
    "outbox-forwarder|3|-p outbox-forwarder --test browser"
)

# "P F": the passed and failed counts of the libtest summaries in a log.
counts() {
    awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } } END { print p + 0, f + 0 }' "$1"
}

passed=0
failed=0
for browser in chrome firefox; do
    for suite in "${suites[@]}"; do
        IFS='|' read -r name min args <<<"$suite"
        log=$(mktemp)
        echo "==> $name in $browser"
        status=0
        # shellcheck disable=SC2086 # $args is a list of cargo arguments
        run_in_browser "$browser" $args 2>&1 | tee "$log" || status=$?
        grep -q "Running headless tests in" "$log" || { echo "no browser ran for $name in $browser" >&2; exit 1; }
        read -r p f < <(counts "$log")
        rm -f "$log"
        echo "$name in $browser: $p passed, $f failed"
        if [ "$status" != 0 ] || [ "$f" != 0 ] || [ "$p" -lt "$min" ]; then
            echo "the browser suite failed: $name in $browser (at least $min tests must pass)" >&2
            exit 1
        fi
        passed=$((passed + p))
        failed=$((failed + f))
    done
done

echo "==> WebKit (WebKitWebDriver under Xvfb): an attempt, reported, not required"
for suite in "${suites[@]}"; do
    IFS='|' read -r name _ args <<<"$suite"
    log=target/webkit-$name.log
    # shellcheck disable=SC2086 # $args is a list of cargo arguments
    if run_in_browser webkit $args >"$log" 2>&1; then
        read -r p f < <(counts "$log")
        echo "webkit: $name: $p passed, $f failed"
    else
        echo "webkit: $name failed or did not run (see $log): $(grep -m3 -E '^test .*FAIL|Error' "$log" | tr '\n' ' ')"
    fi
done

echo "browser tests: ${passed} passed, ${failed} failed"
