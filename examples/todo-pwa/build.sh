#!/usr/bin/env bash
# Builds the Todo PWA into a directory the sync server serves:
#   1. the app crate for wasm32 (cargo, profile `wasm-size`: opt-level "z",
#      LTO, one codegen unit, panic = "abort"; `--dev` for a fast debug build),
#   2. wasm-bindgen --target web (the CLI pinned to Cargo.lock's wasm-bindgen),
#   3. wasm-opt -Oz (npm's binaryen, pinned: Debian's wasm-opt emits wasm
#      that fails to load),
#   4. the static files (index.html, main.js, app.css, the manifest, the
#      icons, the service worker, stamped with a hash of the build).
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

cargo build --locked --target wasm32-unknown-unknown --profile "$profile" -p todo-pwa
case $profile in
dev) dir=debug ;;
*) dir=$profile ;;
esac
wasm=$target/wasm32-unknown-unknown/$dir/todo_pwa.wasm

rm -rf "$out"
mkdir -p "$out/pkg" "$out/icons"
if [ "$profile" = dev ]; then
    wasm-bindgen --target web --no-typescript --out-dir "$out/pkg" "$wasm"
else
    wasm-bindgen --target web --no-typescript --remove-name-section --remove-producers-section \
        --out-dir "$out/pkg" "$wasm"
    "$tools/node_modules/.bin/wasm-opt" -Oz --enable-bulk-memory --enable-nontrapping-float-to-int \
        --enable-sign-ext --enable-mutable-globals --enable-reference-types --enable-multivalue \
        "$out/pkg/todo_pwa_bg.wasm" -o "$out/pkg/todo_pwa_bg.opt.wasm"
    mv "$out/pkg/todo_pwa_bg.opt.wasm" "$out/pkg/todo_pwa_bg.wasm"
fi
cp "$web/index.html" "$web/main.js" "$web/app.css" "$web/manifest.webmanifest" "$web/sw.js" "$out/"
cp "$web"/icons/*.png "$out/icons/"

# The service worker's cache is named after the build: a new build
# replaces the cached shell.
build=$(cd "$out" && find . -type f ! -name sw.js -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-12)
sed -i "s/__BUILD__/$build/" "$out/sw.js"

w=$out/pkg/todo_pwa_bg.wasm
j=$out/pkg/todo_pwa.js
echo "wasm: $(wc -c <"$w") bytes, $(gzip -9 -c "$w" | wc -c) gzipped; JS glue: $(gzip -9 -c "$j" | wc -c) gzipped (build $build, profile $profile)"
echo "built $out"
