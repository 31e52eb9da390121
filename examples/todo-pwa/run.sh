#!/usr/bin/env bash
# The Todo PWA in one command: builds it (build.sh), then starts the sync
# server on 127.0.0.1, which prints "listening on http://127.0.0.1:PORT".
# Open that URL (or http://localhost:PORT) in Chromium or Firefox.
# Usage: examples/todo-pwa/run.sh   (PORT=8080 by default; PORT=0 picks a free one)
set -euo pipefail
cd "$(dirname "$0")/../.."
examples/todo-pwa/build.sh
cargo build --locked -q -p todo-pwa-server
echo "starting the sync server (Ctrl-C stops it); its SQLite file is target/todo-pwa/server.db"
exec "${CARGO_TARGET_DIR:-target}/debug/todo-pwa-server" --port "${PORT:-8080}" \
    --db target/todo-pwa/server.db --static examples/todo-pwa/web/dist
