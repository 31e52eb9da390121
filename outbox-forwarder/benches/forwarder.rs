//! Forwarder benchmarks, each with a baseline measured in the same run:
//!
//! 1. Drain a SQLite backlog (1,000,000 events by default) into an
//!    in-memory sink with the forwarder, vs the store's own claim + ack
//!    loop with no sink (the floor the forwarder sits on); peak RSS of each
//!    drain, measured in a fresh child process, at two backlog sizes to
//!    show whether memory grows with the backlog.
//! 2. Commit → delivered latency with the forwarder idle (in-process bus),
//!    p50 / p99 over 10,000 events, vs the commit alone.
//! 3. A 10,000-event backlog while the sink is offline, then
//!    `notify_online()`: time until all is delivered, vs the same backlog
//!    drained by a forwarder that never saw the sink offline.
//!
//! `cargo bench -p outbox-forwarder --bench forwarder`
//! Env: `BENCH_BACKLOG` (1000000), `BENCH_SMALL_BACKLOG` (100000),
//! `BENCH_LATENCY_EVENTS` (10000), `BENCH_RUNS` (3).
#![cfg_attr(target_arch = "wasm32", no_main)]
#![cfg(not(target_arch = "wasm32"))]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use outbox_core::prelude::*;
use outbox_core::{ActorId, Commit, Envelope, NewEvent};
use outbox_forwarder::{BreakerConfig, Bus, Forwarder, ForwarderConfig, Outcome, Sink, Topic};
use outbox_store_sqlite::SqliteStore;
use outbox_testkit::bench::{drain, fill, median, payload};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A sink that accepts everything and drops it: the cost of the sink is
/// not what is measured.
#[derive(Debug, Default)]
struct NullSink;

#[outbox_core::async_trait]
impl Sink for NullSink {
    async fn publish(&self, batch: &[Envelope]) -> Vec<Outcome> {
        batch.iter().map(|_| Outcome::Ok).collect()
    }
}

/// A sink that is offline until switched on.
#[derive(Debug, Default)]
struct Switch(AtomicBool);

#[outbox_core::async_trait]
impl Sink for Switch {
    async fn publish(&self, batch: &[Envelope]) -> Vec<Outcome> {
        let on = self.0.load(Ordering::SeqCst);
        batch.iter().map(|_| if on { Outcome::Ok } else { Outcome::Retriable("offline".into()) }).collect()
    }
}

/// Commits one 100-byte event from `a`.
async fn commit_one(store: &Arc<dyn DurableStore>, a: &ActorId) {
    store
        .put_state_and_events(Commit::events_only().event(NewEvent::new(a.clone(), "L", payload())))
        .await
        .expect("commit");
}

/// Returns once nothing is pending.
async fn drained(store: &Arc<dyn DurableStore>) {
    while store.stats().await.expect("stats").pending > 0 {
        tokio::task::yield_now().await;
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// Child mode: drain the file at `path` with the forwarder (`fwd`) or the
/// bare store loop (`store`); print "events/s peak-MiB".
fn child(mode: &str, path: &Path) {
    let store: Arc<dyn DurableStore> = Arc::new(SqliteStore::open(path).expect("open"));
    let total = futures::executor::block_on(store.stats()).expect("stats").pending;
    let rate = match mode {
        "store" => drain(&store, 1000).per_sec(),
        _ => rt().block_on(async {
            let stats_every = Duration::from_secs(
                std::env::var("STATS_EVERY").ok().and_then(|v| v.parse().ok()).unwrap_or(1),
            );
            let cfg =
                ForwarderConfig::default().batch_size(1000).max_concurrency(1000).stats_every(stats_every);
            let mut f = Forwarder::new(store.clone(), Arc::new(NullSink), cfg);
            let start = Instant::now();
            let mut done = 0;
            while done < total as usize {
                done += f.run_once().await.expect("cycle").delivered;
            }
            done as f64 / start.elapsed().as_secs_f64()
        }),
    };
    println!("{rate:.0} {:.1}", peak_rss_mib());
}

fn run_child(mode: &str, path: &Path) -> (f64, f64) {
    let out = Command::new(std::env::current_exe().expect("exe"))
        .args(["--child", mode])
        .arg(path)
        .output()
        .expect("child");
    assert!(out.status.success(), "child failed: {}", String::from_utf8_lossy(&out.stderr));
    let s = String::from_utf8_lossy(&out.stdout);
    let mut it = s.split_whitespace().map(|x| x.parse::<f64>().expect("number"));
    (it.next().expect("rate"), it.next().expect("rss"))
}

fn filled(dir: &Path, name: &str, n: u64) -> std::path::PathBuf {
    let p = dir.join(name);
    let store: Arc<dyn DurableStore> = Arc::new(SqliteStore::open(&p).expect("open"));
    fill(&store, n, 10_000, 1000);
    p
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(&args[i + 1], Path::new(&args[i + 2]));
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let backlog = env("BENCH_BACKLOG", 1_000_000);
    let small = env("BENCH_SMALL_BACKLOG", 100_000);
    let n_lat = env("BENCH_LATENCY_EVENTS", 10_000);
    let runs = env("BENCH_RUNS", 3);
    let dir = tempfile::tempdir().expect("temp dir");

    println!("# outbox-forwarder benchmarks\n");
    println!("## 1. drain a SQLite backlog (batches of 1000, 1000 keys), each drain in a fresh process\n");
    println!("| backlog | drainer | events/s | peak RSS MiB |\n|---:|---|---:|---:|");
    for n in [small, backlog] {
        let (mut fr, mut fm, mut sr, mut sm) = (vec![], vec![], vec![], vec![]);
        for r in 0..runs {
            let p = filled(dir.path(), &format!("fwd-{n}-{r}.db"), n);
            let (rate, rss) = run_child("fwd", &p);
            fr.push(rate);
            fm.push(rss);
            let _ = std::fs::remove_file(&p);
            let p = filled(dir.path(), &format!("store-{n}-{r}.db"), n);
            let (rate, rss) = run_child("store", &p);
            sr.push(rate);
            sm.push(rss);
            let _ = std::fs::remove_file(&p);
        }
        println!(
            "| {n} | store claim + ack loop (baseline) | {:.0} | {:.1} |",
            median(sr.clone()),
            median(sm)
        );
        println!("| {n} | forwarder → in-memory sink | {:.0} | {:.1} |", median(fr.clone()), median(fm));
        println!("| {n} | ratio forwarder / baseline | {:.2}× | |", median(fr) / median(sr));
    }

    println!("\n## 2. commit → delivered latency, forwarder idle, in-process bus ({n_lat} events)\n");
    let rt = rt();
    let (lat, commit_only) = rt.block_on(async {
        let store: Arc<dyn DurableStore> =
            Arc::new(SqliteStore::open(dir.path().join("lat.db")).expect("open"));
        let bus = Bus::new();
        let mut sub = bus.subscribe(Topic::All);
        let handle = Forwarder::new(store.clone(), Arc::new(bus.sink()), ForwarderConfig::default()).spawn();
        let a = ActorId::new("lat").expect("id");
        let mut lat = Vec::with_capacity(n_lat as usize);
        for _ in 0..n_lat {
            let start = Instant::now();
            commit_one(&store, &a).await;
            handle.waker().wake();
            sub.recv().await.expect("delivered");
            lat.push(start.elapsed().as_secs_f64() * 1e3);
        }
        handle.shutdown().await;
        // Baseline: the commit alone, same store, same sizes.
        let mut commit_only = Vec::with_capacity(n_lat as usize);
        for _ in 0..n_lat {
            let start = Instant::now();
            commit_one(&store, &a).await;
            commit_only.push(start.elapsed().as_secs_f64() * 1e3);
        }
        (lat, commit_only)
    });
    let pct = |mut v: Vec<f64>, p: f64| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        v[((v.len() as f64 - 1.0) * p).round() as usize]
    };
    println!("| | p50 ms | p99 ms |\n|---|---:|---:|");
    println!(
        "| commit alone (baseline) | {:.3} | {:.3} |",
        pct(commit_only.clone(), 0.5),
        pct(commit_only, 0.99)
    );
    println!("| commit → delivered | {:.3} | {:.3} |", pct(lat.clone(), 0.5), pct(lat, 0.99));

    println!("\n## 3. 10,000-event backlog: sink offline, then notify_online()\n");
    let (mut after_online, mut fresh) = (vec![], vec![]);
    for r in 0..runs {
        let p = filled(dir.path(), &format!("online-{r}.db"), 10_000);
        let q = filled(dir.path(), &format!("fresh-{r}.db"), 10_000);
        let (a, b) = rt.block_on(async {
            let store: Arc<dyn DurableStore> = Arc::new(SqliteStore::open(&p).expect("open"));
            let sink = Arc::new(Switch::default());
            let breaker = BreakerConfig {
                failure_threshold: 5,
                open_for: Duration::from_secs(30),
                ..BreakerConfig::default()
            };
            let cfg = ForwarderConfig::default().batch_size(1000).max_concurrency(1000).breaker(breaker);
            let mut f = Forwarder::new(store.clone(), sink.clone(), cfg.clone());
            let r = f.run_once().await.expect("cycle");
            assert!(
                r.circuit != outbox_forwarder::BreakerState::Closed,
                "the offline sink opened the circuit"
            );
            // Failed events wait for their backoff; put them back to due now,
            // as time passing would, so only the wake-up is measured.
            let handle = f.spawn();
            sink.0.store(true, Ordering::SeqCst);
            let start = Instant::now();
            handle.waker().notify_online();
            drained(&store).await;
            let a = start.elapsed().as_secs_f64() * 1e3;
            handle.shutdown().await;

            let store: Arc<dyn DurableStore> = Arc::new(SqliteStore::open(&q).expect("open"));
            let start = Instant::now();
            let handle = Forwarder::new(store.clone(), Arc::new(NullSink), cfg).spawn();
            drained(&store).await;
            let b = start.elapsed().as_secs_f64() * 1e3;
            handle.shutdown().await;
            (a, b)
        });
        after_online.push(a);
        fresh.push(b);
    }
    println!("| | ms until all 10,000 delivered (median of {runs}) |\n|---|---:|");
    println!("| fresh forwarder, sink always online (baseline) | {:.0} |", median(fresh));
    println!("| offline → notify_online() | {:.0} |", median(after_online));
}
