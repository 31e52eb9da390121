#!/usr/bin/env bash
# The whole test suite: provisions what it needs, then runs every check CI
# runs. Usage: scripts/test-all.sh
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

disk() { df -h . | awk 'NR == 2 { print "disk: " $4 " free of " $2 }'; }
disk

step "provision: rust components and the wasm32 target"
rustup component add rustfmt clippy >/dev/null 2>&1 || true
rustup target add wasm32-unknown-unknown

step "provision: cargo-deny, cargo-hack and the MSRV toolchain"
msrv=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
rustup toolchain install "$msrv" --profile minimal
command -v cargo-hack >/dev/null || cargo install cargo-hack --locked
command -v cargo-deny >/dev/null || cargo install cargo-deny --locked

step "provision: strace (the power-loss tests record the stores' writes and syncs with it)"
if ! command -v strace >/dev/null; then
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq strace; else sudo apt-get update -qq && sudo apt-get install -y -qq strace; fi
fi

step "provision: PostgreSQL and NATS on loopback (scripts/servers.sh)"
scripts/servers.sh start
# shellcheck disable=SC1091
source target/servers/env
trap 'scripts/servers.sh stop' EXIT

step "format"
cargo fmt --all --check

step "clippy"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

step "dependencies: licenses, bans and sources (cargo deny; advisories need the RustSec database from GitHub, not reachable here)"
cargo deny --locked --log-level error check bans licenses sources

step "the facade under every combination of its features (cargo hack)"
cargo hack check -p outbox --feature-powerset --locked

step "MSRV: the libraries build with Rust $msrv (rust-version)"
cargo "+$msrv" check --workspace --lib --locked

step "tests"
log=$(mktemp)
cargo test --workspace --all-features --locked 2>&1 | tee "$log"
read -r passed failed < <(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } } END { print p + 0, f + 0 }' "$log")
rm -f "$log"

disk
step "the forwarder without its default features (metrics off, as a browser bundle builds it)"
cargo clippy -p outbox-forwarder --no-default-features --all-targets --locked -- -D warnings
log=$(mktemp)
cargo test -p outbox-forwarder --no-default-features --locked 2>&1 | tee "$log"
read -r fpassed ffailed < <(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } } END { print p + 0, f + 0 }' "$log")
rm -f "$log"
passed=$((passed + fpassed))
failed=$((failed + ffailed))

step "browser suite: the store, forwarder, HTTP sink and facade in headless Chromium and Firefox (WebKit attempted)"
blog=$(mktemp)
scripts/test-browser.sh 2>&1 | tee "$blog"
read -r bpassed bfailed < <(awk '/^browser tests:/ { print $3, $5 }' "$blog")
rm -f "$blog"
passed=$((passed + bpassed))
failed=$((failed + bfailed))

step "end-to-end: the Todo PWA in Chromium (Playwright) and Firefox ESR (selenium-webdriver + geckodriver), WebKit attempted; Lighthouse PWA and accessibility"
elog=$(mktemp)
scripts/e2e.sh 2>&1 | tee "$elog"
read -r epassed efailed < <(awk '/^e2e: [0-9]+ passed, [0-9]+ failed$/ { print $2, $4 }' "$elog")
rm -f "$elog"
passed=$((passed + epassed))
failed=$((failed + efailed))

step "the inspector's web view (outbox ui) in Chromium (Playwright): requeue a dead event from the page, see it delivered"
ulog=$(mktemp)
scripts/ui-e2e.sh 2>&1 | tee "$ulog"
read -r upassed ufailed < <(awk '/^ui-e2e: [0-9]+ passed, [0-9]+ failed$/ { print $2, $4 }' "$ulog")
rm -f "$ulog"
echo "ui-e2e: ${upassed} passed, ${ufailed} failed"
passed=$((passed + upassed))
failed=$((failed + ufailed))

step "demo (the README's first command, as a smoke test)"
cargo run --locked -q -p outbox-cli -- demo

step "book and examples: mdbook build (the book's Rust blocks ran as outbox-book's doctests in \"tests\"), each example run (pg-nats on the servers above), semver-checks"
# mdbook 0.5.4 without its `serve`/`watch` features: a build needs nothing else.
command -v mdbook >/dev/null || cargo install mdbook --version 0.5.4 --locked --no-default-features --features search
mdbook build docs
# Built with the workspace's features, as in "tests", so nothing but the
# three binaries is compiled again.
cargo build --locked --workspace --all-features \
    --bin outbox-example-todo-service --bin outbox-example-custom-store --bin outbox-example-pg-nats
bin=${CARGO_TARGET_DIR:-target}/debug
"$bin/outbox-example-custom-store"
"$bin/outbox-example-todo-service" --data "$(mktemp -d)" --port 0 --exit-after 3 --timeout 60
"$bin/outbox-example-pg-nats"
if prev=$(git describe --tags --abbrev=0 --match 'v*' 2>/dev/null); then
    command -v cargo-semver-checks >/dev/null || cargo install cargo-semver-checks --locked
    cargo semver-checks --workspace --baseline-rev "$prev"
else
    echo "semver-checks: skipped: no previous tagged version"
fi

step "docs"
RUSTDOCFLAGS=-Dwarnings cargo doc --workspace --no-deps --locked
# docs.rs documents each crate alone with its default features: the
# facade's docs must not link what only another feature brings.
RUSTDOCFLAGS=-Dwarnings cargo doc -p outbox --no-deps --locked
RUSTDOCFLAGS=-Dwarnings cargo doc -p outbox --no-deps --locked --no-default-features

step "wasm32 builds: the core, the facade (IndexedDB only), the todo example shared with its native program, the Todo PWA (page and worker bundles), clippy on wasm32"
cargo build -p outbox-core --target wasm32-unknown-unknown --locked
cargo build -p outbox --target wasm32-unknown-unknown --no-default-features --features idb --locked
cargo build -p outbox-example-todo --target wasm32-unknown-unknown --locked
cargo build -p todo-pwa -p todo-pwa-worker --target wasm32-unknown-unknown --locked
cargo clippy --target wasm32-unknown-unknown --locked --lib -p outbox -p outbox-forwarder \
    -p outbox-store-idb -p outbox-sink-http -p todo-pwa -p todo-pwa-worker -p outbox-size-page \
    -p outbox-size-worker -- -D warnings
cargo run --locked -q -p outbox-example-todo -- --db "$(mktemp -d)/todo.db"

step "mutation check: every conformance test fails on a store broken the way it checks"
python3 scripts/mutants.py

disk
step "all checks passed"
echo "tests: ${passed} passed, ${failed} failed"
