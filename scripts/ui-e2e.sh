#!/usr/bin/env bash
# The web view of the `outbox` command (`outbox ui`) in headless Chromium:
# outbox-cli/e2e/ui.js drives the page through Playwright (playwright-core,
# Debian's /usr/bin/chromium) against a live application (the example
# outbox-cli/examples/ui_fixture.rs) whose sink dead-letters one event;
# the page requeues it and sees it delivered.
#
#   1. provisions Chromium (scripts/browser-env.sh) and the npm packages of
#      examples/todo-pwa/e2e/package.json (pinned, shared with
#      scripts/e2e.sh) in target/e2e-node/;
#   2. builds `outbox` and the fixture (cargo, debug);
#   3. runs the scenarios; the page's screenshot goes to
#      target/ui-e2e/ui.png (with --update-screenshot, also to
#      outbox-cli/screenshots/ui.png, shown in outbox-cli/README.md).
#
# Usage: scripts/ui-e2e.sh [--update-screenshot]
# Ends with one line "ui-e2e: P passed, F failed"; exits non-zero if F > 0.
set -euo pipefail
cd "$(dirname "$0")/.."

update=false
case ${1:-} in
--update-screenshot) update=true ;;
"") ;;
*) echo "usage: $0 [--update-screenshot]" >&2; exit 2 ;;
esac

cargo_target=${CARGO_TARGET_DIR:-target}
work=target/ui-e2e
node_dir=target/e2e-node
pkg_src=examples/todo-pwa/e2e

done_line=false
finish() {
    local status=$?
    if ! $done_line; then
        echo "ui-e2e: setup failed (exit $status)" >&2
        echo "ui-e2e: 0 passed, 1 failed"
    fi
}
trap finish EXIT

step() { printf '\n==> ui-e2e: %s\n' "$*"; }

step "provision: Chromium (scripts/browser-env.sh) and playwright-core (${pkg_src}/package.json, pinned) in ${node_dir}"
if [ ! -x "${E2E_CHROMIUM:-/usr/bin/chromium}" ]; then
    # shellcheck source=scripts/browser-env.sh
    source scripts/browser-env.sh
    provision_browsers
fi
command -v node >/dev/null && command -v npm >/dev/null || { echo "node and npm (Node >= 20) are needed" >&2; exit 1; }
mkdir -p "$node_dir"
stamp=$(cat "$pkg_src/package.json" "$pkg_src/package-lock.json" | sha256sum | cut -c1-16)
if [ "$(cat "$node_dir/.stamp" 2>/dev/null)" != "$stamp" ] || [ ! -d "$node_dir/node_modules/playwright-core" ]; then
    cp "$pkg_src/package.json" "$pkg_src/package-lock.json" "$node_dir/"
    (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$stamp" >"$node_dir/.stamp"
fi
export NODE_PATH=$PWD/$node_dir/node_modules

step "build: outbox and the fixture (outbox-cli/examples/ui_fixture.rs)"
cargo build --locked -q -p outbox-cli --bin outbox --example ui_fixture

step "scenarios (Chromium, Playwright)"
mkdir -p "$work"
log=$(mktemp)
status=0
node outbox-cli/e2e/ui.js --outbox "$cargo_target/debug/outbox" --fixture "$cargo_target/debug/examples/ui_fixture" \
    --out "$work" --screenshot "$work/ui.png" 2>&1 | tee "$log" || status=$?
read -r passed failed < <(awk '/^ui-e2e scenarios: [0-9]+ passed, [0-9]+ failed$/ { print $3, $5 }' "$log") || true
rm -f "$log"
if [ -z "${passed:-}" ]; then
    echo "the scenarios ended without their summary (exit $status); processes: $work/processes.log" >&2
    passed=0 failed=1
elif [ "$status" != 0 ] && [ "$failed" = 0 ]; then
    failed=1
fi
if $update && [ "$failed" = 0 ]; then
    mkdir -p outbox-cli/screenshots
    cp "$work/ui.png" outbox-cli/screenshots/ui.png
    echo "updated outbox-cli/screenshots/ui.png"
fi
done_line=true
echo "ui-e2e: ${passed} passed, ${failed} failed"
[ "$failed" = 0 ]
