#!/usr/bin/env bash
# The browser outbox beside TanStack DB's offline transactions, in one run
# of this machine's Chromium: the peer kit (benches/peers/tanstack, copied
# to target/peers/ and run there) and our equivalent scenarios
# (outbox/tests/browser_peer_bench.rs: the same N, an in-page sink and an
# HTTP stub). Prints both sets of figures, then a table with the ratios.
# Usage: scripts/browser-peer-bench.sh   (N=1000 by default; BENCH_PEER_N=...)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/browser-env.sh
source scripts/browser-env.sh
provision_browsers
n=${BENCH_PEER_N:-1000}

# The HTTP stub ours posts to: the HTTP sink's test server.
cargo build --locked -q -p outbox-sink-http --example http-sink-test-server
server_log=$(mktemp)
"${CARGO_TARGET_DIR:-target}/debug/examples/http-sink-test-server" 0 >"$server_log" 2>&1 &
server_pid=$!
trap 'kill "$server_pid" 2>/dev/null || true; rm -f "$server_log"' EXIT
for _ in $(seq 100); do
    grep -q '^listening on ' "$server_log" && break
    sleep 0.1
done
export OUTBOX_HTTP_TEST_URL
OUTBOX_HTTP_TEST_URL=$(awk '/^listening on / { print $3; exit }' "$server_log")

echo "==> outbox (release wasm, Chromium), N=$n"
ours=$(mktemp)
BENCH_PEER_N=$n WASM_BINDGEN_TEST_TIMEOUT=600 run_in_browser chrome --release -p outbox --test browser_peer_bench \
    -- --nocapture 2>&1 | tee "$ours" | grep -E '^PEER|test result'

echo "==> TanStack DB offline transactions (the peer kit), N=$n"
kit=target/peers/tanstack
mkdir -p target/peers
rm -rf "$kit/src" && cp -r benches/peers/tanstack target/peers/
theirs=$(mktemp)
(cd "$kit" && N=$n ./run.sh) | tee "$theirs" | tail -5
json=$(ls -t "$kit"/results/*.json | head -1)

echo
echo "==> same run, N=$n (ours / theirs)"
node - "$json" "$ours" <<'JS'
const fs = require('fs');
const [json, oursLog] = process.argv.slice(2);
const r = JSON.parse(fs.readFileSync(json, 'utf8'));
const log = fs.readFileSync(oursLog, 'utf8');
const num = (re) => { const m = log.match(re); return m ? Number(m[1]) : NaN; };
const ours = {
  p50: num(/PEER commit: .* p50 ([\d.]+) ms/), p99: num(/PEER commit: .* p99 ([\d.]+) ms/),
  localFirst: num(/PEER drain local: .* first delivery ([\d.]+) ms/), localAll: num(/PEER drain local: .* all acknowledged ([\d.]+) ms/),
  local: num(/PEER drain local: .* ([\d.]+) events\/s/), http: num(/PEER drain http: .* ([\d.]+) events\/s/),
  httpAll: num(/PEER drain http: .* all acknowledged ([\d.]+) ms/),
};
const serial = (sink) => r.enqueueDrain.find((x) => x.sink === sink).serial;
const t = { p50: serial('local').persistP50, p99: serial('local').persistP99,
  local: serial('local').drain.eventsPerSec, http: serial('http').drain.eventsPerSec,
  localFirst: serial('local').drain.onlineToFirstCallMs, localAll: serial('local').drain.onlineToAllRemovedMs,
  httpAll: serial('http').drain.onlineToAllRemovedMs };
const f = (x, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : 'n/a');
const rows = [
  ['offline commit p50, ms (lower is better)', ours.p50, t.p50, t.p50 / ours.p50],
  ['offline commit p99, ms (lower is better)', ours.p99, t.p99, t.p99 / ours.p99],
  ['reconnect drain, in-page sink, events/s', ours.local, t.local, ours.local / t.local],
  ['reconnect drain, HTTP stub, events/s', ours.http, t.http, ours.http / t.http],
  ['online to first delivery, ms', ours.localFirst, t.localFirst, t.localFirst / ours.localFirst],
  ['online to all delivered (in-page), ms', ours.localAll, t.localAll, t.localAll / ours.localAll],
  ['online to all delivered (HTTP), ms', ours.httpAll, t.httpAll, t.httpAll / ours.httpAll],
];
console.log('| measure | outbox | TanStack | outbox advantage |');
console.log('| --- | ---: | ---: | ---: |');
for (const [m, a, b, x] of rows) console.log(`| ${m} | ${f(a, 2)} | ${f(b, 2)} | ${f(x, 2)}x |`);
console.log(`(TanStack ${r.versions.offlineTx}, Chromium ${r.versions.chromium}; raw results ${json})`);
JS
rm -f "$ours" "$theirs"
