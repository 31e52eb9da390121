//! Actor message → committed → delivered, many actors concurrently, on
//! SQLite (synchronous = FULL), against the raw-transaction baseline (one
//! rusqlite transaction per state upsert + event insert, one connection)
//! measured in the same run.
//!
//! `cargo bench -p outbox --bench actors`; env `BENCH_MESSAGES` (4096),
//! `BENCH_RUNS` (3).

use std::sync::Arc;
use std::time::Instant;

use outbox::{Actor, ActorId, Bus, Context, OutboxConfig, StoreChoice, Topic, configure_outbox};
#[path = "../../outbox-store-sqlite/benches/common/baseline.rs"]
mod baseline;
use outbox_testkit::bench::median;

struct Counter;

#[outbox::async_trait]
impl Actor for Counter {
    type State = u64;
    type Message = ();
    type Error = std::convert::Infallible;

    async fn handle(&mut self, state: &mut u64, _m: (), ctx: &mut Context) -> Result<(), Self::Error> {
        *state += 1;
        ctx.emit("COUNTED", &*state);
        Ok(())
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Messages per second, from the first send to the last delivery; and the
/// p50 / p99 of one message's send → delivered time is not separable here,
/// so the per-message commit (send) latency is reported instead.
async fn run(dir: &std::path::Path, actors: u64, total: u64) -> (f64, f64, f64) {
    let bus = Bus::new();
    let mut sub = bus.subscribe(Topic::All);
    let cfg = OutboxConfig::default()
        .store(StoreChoice::Sqlite(dir.join(format!("actors-{actors}-{}.db", rand_suffix()))));
    let outbox = configure_outbox(cfg, Arc::new(bus.sink())).await.expect("outbox");
    let per = total / actors;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for a in 0..actors {
        let r = outbox.spawn_actor(ActorId::new(format!("a{a}")).expect("id"), Counter).await.expect("actor");
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per as usize);
            for _ in 0..per {
                let t = Instant::now();
                r.send(()).await.expect("committed");
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
            lat
        }));
    }
    let mut got = 0;
    while got < per * actors {
        sub.recv().await.expect("delivered");
        got += 1;
    }
    let elapsed = start.elapsed();
    let mut lat: Vec<f64> = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("task"));
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    outbox.shutdown().await;
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize];
    (got as f64 / elapsed.as_secs_f64(), p(0.5), p(0.99))
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let total = env("BENCH_MESSAGES", 4096);
    let runs = env("BENCH_RUNS", 3);
    let dir = tempfile::tempdir().expect("dir");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    println!("# actor message → committed → delivered (SQLite, FULL), {total} messages, median of {runs}\n");
    let mut raw = Vec::new();
    for r in 0..runs {
        let p = dir.path().join(format!("raw-{r}.db"));
        drop(outbox::SqliteStore::open(&p).expect("schema"));
        let (ops, elapsed) = baseline::raw_commits(&p, total.min(2000));
        raw.push(ops as f64 / elapsed.as_secs_f64());
    }
    let raw = median(raw);
    println!(
        "| | messages/s (commit + deliver) | × raw | send p50 ms | send p99 ms |\n|---|---:|---:|---:|---:|"
    );
    println!("| raw rusqlite transaction, 1 connection (commit only) | {raw:.0} | 1.00× | | |");
    for actors in [1u64, 64] {
        let (mut rate, mut p50, mut p99) = (vec![], vec![], vec![]);
        for _ in 0..runs {
            let (r, a, b) = rt.block_on(run(dir.path(), actors, total));
            rate.push(r);
            p50.push(a);
            p99.push(b);
        }
        let rate = median(rate);
        println!(
            "| {actors} actor(s), outbox (commit + deliver to bus) | {rate:.0} | {:.2}× | {:.3} | {:.3} |",
            rate / raw,
            median(p50),
            median(p99)
        );
    }
}
