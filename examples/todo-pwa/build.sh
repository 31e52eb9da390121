#!/usr/bin/env bash
# Builds the Todo PWA into a directory the sync server serves:
#   1. the page's crate (todo-pwa) and the worker's (todo-pwa-worker: the
#      forwarder, loaded by the tabs' dedicated workers and the service
#      worker) for wasm32 (cargo, profile `wasm-size`: opt-level "z",
#      LTO, one codegen unit, panic = "abort"; `--dev` for a fast debug build),
#   2. wasm-bindgen (the CLI pinned to Cargo.lock's wasm-bindgen): --target
#      web for the page, --target no-modules for the worker bundle (workers
#      `importScripts` it),
#   3. wasm-opt -Oz (npm's binaryen, pinned: Debian's wasm-opt emits wasm
#      that fails to load),
#   4. the static files (index.html, main.js, app.css, the manifest, the
#      icons, the dedicated worker's script, the service worker, stamped
#      with a hash of the build).
# Installs what it misses (the wasm32 target, wasm-bindgen-cli, binaryen
# under target/todo-pwa-tools).
#
# Usage: examples/todo-pwa/build.sh [--dev] [--out DIR]
#   DIR defaults to examples/todo-pwa/web/dist. Prints "built DIR" last.
set -euo pipefail
cd "$(dirname "$0")/../.."

out=examples/todo-pwa/web/dist
profile=wasm-size
while [ $# -gt 0 ]; do
    case $1 in
    --dev) profile=dev ;;
    --out) out=$2; shift ;;
    *) echo "usage: $0 [--dev] [--out DIR]" >&2; exit 2 ;;
    esac
    shift
done
web=examples/todo-pwa/web
target=${CARGO_TARGET_DIR:-target}
tools=target/todo-pwa-tools
binaryen=132.0.0

if command -v rustup >/dev/null; then
    rustup target add wasm32-unknown-unknown >/dev/null 2>&1
fi
export PATH="$HOME/.cargo/bin:$PATH"
want=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/"/, "", $3); print $3; exit }' Cargo.lock)
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$want" ]; then
    echo "installing wasm-bindgen-cli $want (takes a few minutes)"
    # No --locked: one of its locked dependencies is not on the registry.
    cargo install -q wasm-bindgen-cli --version "=$want"
fi
if [ "$profile" != dev ] && [ ! -x "$tools/node_modules/.bin/wasm-opt" ]; then
    mkdir -p "$tools"
    npm install --silent --no-audit --no-fund -E --prefix "$tools" "binaryen@$binaryen" >/dev/null
fi

cargo build --locked --target wasm32-unknown-unknown --profile "$profile" -p todo-pwa -p todo-pwa-worker
case $profile in
dev) dir=debug ;;
*) dir=$profile ;;
esac

rm -rf "$out"
mkdir -p "$out/pkg" "$out/worker" "$out/icons"
# bindgen CRATE TARGET DIR: wasm-bindgen (and, for release, wasm-opt -Oz).
bindgen() {
    local wasm=$target/wasm32-unknown-unknown/$dir/$1.wasm
    if [ "$profile" = dev ]; then
        wasm-bindgen --target "$2" --no-typescript --out-dir "$3" "$wasm"
    else
        wasm-bindgen --target "$2" --no-typescript --remove-name-section --remove-producers-section \
            --out-dir "$3" "$wasm"
        "$tools/node_modules/.bin/wasm-opt" -Oz --enable-bulk-memory --enable-nontrapping-float-to-int \
            --enable-sign-ext --enable-mutable-globals --enable-reference-types --enable-multivalue \
            "$3/$1_bg.wasm" -o "$3/$1_bg.opt.wasm"
        mv "$3/$1_bg.opt.wasm" "$3/$1_bg.wasm"
    fi
}
bindgen todo_pwa web "$out/pkg"
bindgen todo_pwa_worker no-modules "$out/worker"
cp "$web/index.html" "$web/main.js" "$web/app.css" "$web/manifest.webmanifest" "$web/outbox-worker.js" "$web/sw.js" "$out/"
cp "$web"/icons/*.png "$out/icons/"

# The service worker's cache is named after the build: a new build
# replaces the cached shell.
build=$(cd "$out" && find . -type f ! -name sw.js -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-12)
sed -i "s/__BUILD__/$build/" "$out/sw.js"

for b in pkg/todo_pwa worker/todo_pwa_worker; do
    w=$out/${b}_bg.wasm
    j=$out/$b.js
    echo "${b%%/*}: wasm $(wc -c <"$w") bytes, $(gzip -9 -c "$w" | wc -c) gzipped; JS glue $(gzip -9 -c "$j" | wc -c) gzipped (build $build, profile $profile)"
done
echo "built $out"
