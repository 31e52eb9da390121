#!/usr/bin/env bash
# Browser figures for BENCHMARKS.md: the wasm size measurement
# (scripts/wasm-size.sh) and IndexedDB commits/s, ours against a raw
# indexed_db_futures transaction doing the same writes, strict and relaxed,
# and a backlog drained by claim + ack against raw transactions,
# in headless Chromium and Firefox (release build).
# Usage: scripts/browser-bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/browser-env.sh
source scripts/browser-env.sh
provision_browsers

scripts/wasm-size.sh
for browser in chrome firefox; do
    echo "==> IndexedDB commits in $browser"
    run_in_browser "$browser" --release -p outbox-store-idb --test idb_bench -- --nocapture 2>&1 |
        grep -E "BENCH|test result" | sed "s/^/$browser: /"
done
