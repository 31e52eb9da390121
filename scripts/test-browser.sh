#!/usr/bin/env bash
# The browser suite, in headless Chromium and Firefox (both must pass, none
# may be skipped), then an attempt in WebKit, reported:
#   - outbox-store-idb: the IndexedDB store's conformance suite and its
#     browser tests (tests/conformance.rs, tests/browser.rs);
#   - outbox-forwarder: the browser forwarder (`browser::TabForwarder`)
#     over that store (tests/browser.rs; its other tests are native);
#   - outbox-sink-http: the HTTP sink's `fetch` transport, in a page and in
#     a dedicated worker (tests/browser.rs, tests/worker.rs), against the
#     native test server (its examples/http-sink-test-server.rs), started
#     here and found by the tests through OUTBOX_HTTP_TEST_URL;
#   - outbox: the facade on wasm32 (tests/browser.rs): actors, IndexedDB,
#     the tab forwarder, listeners in the page, the HTTP sink.
# Installs what it needs.
# Usage: scripts/test-browser.sh   (prints "browser tests: P passed, F failed")
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/browser-env.sh
source scripts/browser-env.sh
provision_browsers

# The wasm32 lints and docs (native clippy does not see this code).
cargo clippy --locked -p outbox-store-idb -p outbox-forwarder -p outbox-sink-http --target wasm32-unknown-unknown --all-targets -- -D warnings
cargo clippy --locked -p outbox --target wasm32-unknown-unknown --lib --test browser -- -D warnings
cargo clippy --locked -p outbox-consumer --target wasm32-unknown-unknown --lib -- -D warnings
cargo clippy --locked -p outbox-panel -p todo-pwa --target wasm32-unknown-unknown --all-targets -- -D warnings
cargo clippy --locked -p outbox-core -p outbox-testkit -p outbox-size-app -p outbox-size-commit -p outbox-size-raw-commit -p outbox-size-raw-commit-json \
    --target wasm32-unknown-unknown --lib -- -D warnings
RUSTDOCFLAGS=-Dwarnings cargo doc --locked -p outbox -p outbox-store-idb -p outbox-forwarder -p outbox-sink-http --no-deps --target wasm32-unknown-unknown

# The HTTP sink's test server: built natively, run on a free port on
# 127.0.0.1 for the whole run, stopped on exit. The browser tests read its
# URL at compile time and fail without it.
cargo build --locked -q -p outbox-sink-http --example http-sink-test-server
server_log=$(mktemp)
"${CARGO_TARGET_DIR:-target}/debug/examples/http-sink-test-server" 0 >"$server_log" 2>&1 &
server_pid=$!
trap 'kill "$server_pid" 2>/dev/null || true; rm -f "$server_log"' EXIT
for _ in $(seq 100); do
    grep -q '^listening on ' "$server_log" && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
done
OUTBOX_HTTP_TEST_URL=$(awk '/^listening on / { print $3; exit }' "$server_log")
[ -n "$OUTBOX_HTTP_TEST_URL" ] || { echo "the HTTP sink's test server did not start:" >&2; cat "$server_log" >&2; exit 1; }
export OUTBOX_HTTP_TEST_URL
echo "HTTP sink test server: $OUTBOX_HTTP_TEST_URL"

# Each suite: a name, the fewest tests it may report per browser (a suite
# that shrinks unnoticed is a failure), and its cargo arguments.
suites=(
    "outbox-store-idb|50|-p outbox-store-idb"
    "outbox-forwarder|3|-p outbox-forwarder --test browser"
    "outbox-sink-http|11|-p outbox-sink-http --test browser"
    "outbox|8|-p outbox --test browser"
    "outbox-sink-http-worker|3|-p outbox-sink-http --test worker"
    "outbox-panel|3|-p outbox-panel --test browser"
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
