#!/usr/bin/env bash
# The Todo PWA's end-to-end suite (examples/todo-pwa/e2e/), then Lighthouse.
#
#   1. provisions what it needs: the browsers, wasm-bindgen-cli and
#      geckodriver (scripts/browser-env.sh, as the browser suite does), the
#      npm packages of examples/todo-pwa/e2e/package.json (pinned, from its
#      package-lock.json) in target/e2e-node/;
#   2. builds the app (examples/todo-pwa/build.sh, the size profile, into
#      target/e2e/dist) and the sync server (cargo, debug);
#   3. runs the scenarios (examples/todo-pwa/e2e/run.js): in Chromium
#      through Playwright (playwright-core, Debian's /usr/bin/chromium) and
#      in Firefox ESR through selenium-webdriver + geckodriver (WebDriver
#      BiDi for the offline switch), every scenario with its own server and
#      SQLite file, fresh persistent profiles; then an attempt in WebKit
#      (WebKitWebDriver + MiniBrowser under Xvfb), reported, not counted;
#   4. Lighthouse 11.7.1 against http://localhost:PORT/ (PWA and
#      accessibility), its reports in target/lighthouse/: fails below 95.
#
# Usage: scripts/e2e.sh [--update-screenshots] [--only REGEX]
#   --update-screenshots copies the screenshots the suite takes in Chromium
#   (target/e2e/screenshots/) to examples/todo-pwa/screenshots/;
#   --only runs the scenarios whose id matches REGEX (while working on one).
# Ends with one line "e2e: P passed, F failed"; exits non-zero if F > 0 or
# a scenario was skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

update_screenshots=false
only=()
while [ $# -gt 0 ]; do
    case $1 in
    --update-screenshots) update_screenshots=true ;;
    --only) only=(--only "$2"); shift ;;
    *) echo "usage: $0 [--update-screenshots] [--only REGEX]" >&2; exit 2 ;;
    esac
    shift
done

start=$(date +%s)
cargo_target=${CARGO_TARGET_DIR:-target}
work=target/e2e
node_dir=target/e2e-node
reports=target/lighthouse
e2e_src=examples/todo-pwa/e2e
lighthouse_min=95

passed=0
failed=0
done_line=false
server_pid=
finish() {
    local status=$?
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
    if ! $done_line; then
        # Provisioning or a build failed before any test could run.
        echo "e2e: setup failed (exit $status)" >&2
        echo "e2e: ${passed} passed, $((failed + 1)) failed"
    fi
}
trap finish EXIT

step() { printf '\n==> e2e: %s\n' "$*"; }

step "provision: browsers, wasm-bindgen-cli, geckodriver (scripts/browser-env.sh)"
# shellcheck source=scripts/browser-env.sh
source scripts/browser-env.sh
provision_browsers

step "provision: node packages (${e2e_src}/package.json, pinned) in ${node_dir}"
command -v node >/dev/null && command -v npm >/dev/null || { echo "node and npm (Node >= 20) are needed" >&2; exit 1; }
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || { echo "Node >= 20 is needed (found $(node --version))" >&2; exit 1; }
mkdir -p "$node_dir"
stamp=$(cat "$e2e_src/package.json" "$e2e_src/package-lock.json" | sha256sum | cut -c1-16)
if [ "$(cat "$node_dir/.stamp" 2>/dev/null)" != "$stamp" ] || [ ! -d "$node_dir/node_modules" ]; then
    cp "$e2e_src/package.json" "$e2e_src/package-lock.json" "$node_dir/"
    # No browser downloads: playwright-core has no install step, and the
    # browsers are Debian's.
    (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$stamp" >"$node_dir/.stamp"
fi
export NODE_PATH=$PWD/$node_dir/node_modules
# selenium-webdriver: the drivers are given, never looked up or downloaded.
export SE_OFFLINE=true

step "build: the app (examples/todo-pwa/build.sh --out ${work}/dist) and the sync server"
mkdir -p "$work"
examples/todo-pwa/build.sh --out "$work/dist"
cargo build --locked -q -p todo-pwa-server
server_bin=$cargo_target/debug/todo-pwa-server

step "scenarios: Chromium (Playwright), Firefox ESR (selenium-webdriver + geckodriver, WebDriver BiDi); WebKit attempted"
log=$(mktemp)
status=0
node "$e2e_src/run.js" --server "$server_bin" --dist "$work/dist" --out "$work" --webkit "${only[@]}" 2>&1 | tee "$log" || status=$?
read -r sp sf ss < <(awk '/^e2e scenarios:/ { print $3, $5, $7 }' "$log") || true
rm -f "$log"
if [ -z "${sp:-}" ]; then
    echo "the scenario runner ended without its summary (exit $status)" >&2
    sp=0 sf=1 ss=0
elif [ "$status" != 0 ] && [ "$sf" = 0 ] && [ "$ss" = 0 ]; then
    sf=1
fi
passed=$((passed + sp))
failed=$((failed + sf))
skipped=$ss

if $update_screenshots; then
    if [ -f "$work/screenshots/app.png" ] && [ -f "$work/screenshots/panel.png" ]; then
        cp "$work/screenshots/app.png" "$work/screenshots/panel.png" examples/todo-pwa/screenshots/
        echo "updated examples/todo-pwa/screenshots/app.png and panel.png"
    else
        echo "no screenshots to copy (the screenshots scenario failed?)" >&2
        failed=$((failed + 1))
    fi
fi

step "Lighthouse 11.7.1 (PWA and accessibility, at least ${lighthouse_min} each) against http://localhost:PORT/"
rm -rf "$work/lighthouse-server" "$reports"
mkdir -p "$work/lighthouse-server" "$reports"
server_log=$work/lighthouse-server/server.log
"$server_bin" --port 0 --db "$work/lighthouse-server/server.db" --static "$work/dist" --quiet >"$server_log" 2>&1 &
server_pid=$!
url=
for _ in $(seq 100); do
    url=$(awk '/^listening on / { print $3; exit }' "$server_log")
    [ -n "$url" ] && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$url" ]; then
    echo "the sync server did not start for Lighthouse:" >&2
    cat "$server_log" >&2
    failed=$((failed + 2))
else
    port=${url##*:}
    port=${port%%/*}
    lh_status=0
    CHROME_PATH=/usr/bin/chromium node "$node_dir/node_modules/lighthouse/cli/index.js" "http://localhost:${port}/" \
        --only-categories=pwa,accessibility --output=json --output=html --output-path="$reports/todo-pwa" \
        --chrome-flags="--headless=new --no-sandbox" --quiet || lh_status=$?
    if [ "$lh_status" != 0 ] || [ ! -f "$reports/todo-pwa.report.json" ]; then
        echo "FAILED  lighthouse: did not produce a report (exit $lh_status)"
        failed=$((failed + 2))
    else
        while read -r category score; do
            if [ "$score" != null ] && [ "$score" -ge "$lighthouse_min" ]; then
                echo "ok      lighthouse › ${category}: ${score} (at least ${lighthouse_min})"
                passed=$((passed + 1))
            else
                echo "FAILED  lighthouse › ${category}: ${score} (at least ${lighthouse_min}); see $reports/todo-pwa.report.html"
                failed=$((failed + 1))
            fi
        done < <(node -e '
            const r = require(process.argv[1]);
            for (const id of ["pwa", "accessibility"]) {
              const c = r.categories[id];
              console.log(id, c && c.score !== null ? Math.round(c.score * 100) : "null");
            }' "$PWD/$reports/todo-pwa.report.json")
        echo "reports: $reports/todo-pwa.report.json, $reports/todo-pwa.report.html"
    fi
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
fi

echo
echo "e2e: took $(($(date +%s) - start)) s"
if [ "$skipped" != 0 ]; then
    echo "e2e: ${skipped} scenario(s) skipped: that fails the suite"
fi
done_line=true
echo "e2e: ${passed} passed, ${failed} failed"
[ "$failed" = 0 ] && [ "$skipped" = 0 ]
