#!/usr/bin/env bash
# Gzipped wasm size of a minimal outbox app against an empty wasm-bindgen
# app and a bare indexed_db_futures write (the floor). Each: release with
# opt-level "z", lto, one codegen unit (profile `wasm-size`), wasm-bindgen
# with the name section removed, npm binaryen's wasm-opt -Oz, gzip -9.
# size/raw-commit is the commit's writes hand-written on indexed_db_futures:
# a lower bound for the commit path; size/raw-commit-json is that commit
# with the actor's state and the event's payload encoded by serde_json (as
# the facade's serde-typed actors need), a lower bound for the page.
# size/page is the page of an app whose
# forwarder runs in a worker (an actor, configure_page, send); size/worker
# is that worker's bundle (store, forwarder, HTTP sink). Budgets (issue 24):
# page <= 10 KB, worker <= 31 KB above the floor.
# Usage: scripts/wasm-size.sh   (needs wasm-bindgen-cli; see test-all.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=target/size
TOOLS=target/size-tools
mkdir -p "$OUT" "$TOOLS"
if [ ! -x "$TOOLS/node_modules/.bin/wasm-opt" ]; then
    # Debian's binaryen (wasm-opt 108) emits wasm that fails to load.
    npm install --silent --prefix "$TOOLS" binaryen@132 >/dev/null
fi
WASM_OPT=$TOOLS/node_modules/.bin/wasm-opt

cargo build --locked --profile wasm-size --target wasm32-unknown-unknown \
    -p outbox-size-empty -p outbox-size-idb-floor -p outbox-size-commit -p outbox-size-raw-commit -p outbox-size-raw-commit-json -p outbox-size-app \
    -p outbox-size-page -p outbox-size-worker

gz() { gzip -9 -c "$1" | wc -c; }
printf '%-16s %10s %10s %10s %12s\n' app "wasm B" "wasm gz B" "js gz B" "total gz B"
declare -A total
for app in empty idb_floor raw_commit raw_commit_json commit app page worker; do
    dir=$OUT/$app
    rm -rf "$dir"
    wasm-bindgen --target web --remove-name-section --remove-producers-section --out-dir "$dir" \
        "target/wasm32-unknown-unknown/wasm-size/outbox_size_${app}.wasm"
    w=$dir/outbox_size_${app}_bg.wasm
    "$WASM_OPT" -Oz --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext \
        --enable-mutable-globals --enable-reference-types --enable-multivalue "$w" -o "$w.opt"
    mv "$w.opt" "$w"
    wgz=$(gz "$w")
    jgz=$(gz "$dir/outbox_size_${app}.js")
    total[$app]=$((wgz + jgz))
    printf '%-16s %10s %10s %10s %12s\n' "$app" "$(wc -c <"$w")" "$wgz" "$jgz" "${total[$app]}"
done
echo
echo "outbox app above the indexed_db_futures floor: $((total[app] - total[idb_floor])) bytes gzipped"
echo "  of which the commit path (size/commit):       $((total[commit] - total[idb_floor])) bytes gzipped"
echo "  and forwarding (size/app - size/commit):      $((total[app] - total[commit])) bytes gzipped"
echo "the same commit hand-written (size/raw-commit): $((total[raw_commit] - total[idb_floor])) bytes gzipped"
echo "hand-written commit with serde_json:            $((total[raw_commit_json] - total[idb_floor])) bytes gzipped"
echo "indexed_db_futures floor above the empty app:   $((total[idb_floor] - total[empty])) bytes gzipped"
echo
kb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1000 }'; }
page=$((total[page] - total[idb_floor]))
worker=$((total[worker] - total[idb_floor]))
raw=$((total[raw_commit] - total[idb_floor]))
echo "page: $(kb "$page") KB gz above the floor"
echo "worker: $(kb "$worker") KB gz above the floor"
echo "  (budgets: page 10.0, worker 31.0; the page is $(awk -v p="$page" -v r="$raw" 'BEGIN { printf "%.1f", p / r }')x the hand-written commit)"
