//! sled store benchmarks beside the SQLite store's, in the same run, each
//! against its raw baseline measured in that run on the same file system:
//!
//! 1. one committer: `put_state_and_events` (state + 1 event, flushed) vs
//!    a raw sled two-tree transaction + flush doing the same writes (and
//!    SQLite's store vs a raw rusqlite transaction);
//! 2. 64 concurrent committers (group flush) vs 64 raw committer threads
//!    each doing transaction + flush;
//! 3. claim + ack draining a backlog vs a raw scan-lease-deliver drain.
//!
//! `cargo bench -p outbox-store-sled --bench sled`
//! Env: `BENCH_RUNS` (5), `BENCH_COMMITS` (2000), `BENCH_BACKLOG`
//! (200000), `BENCH_DIR` (a temp dir).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use outbox_core::DurableStore;
use outbox_store_sled::SledStore;
use outbox_store_sqlite::SqliteStore;
use outbox_testkit::bench::{BenchDir, Rate, commit_rate, drain, fill, median};
use outbox_testkit::crash::env_u64;

#[path = "common/baseline.rs"]
mod baseline;
#[path = "../../outbox-store-sqlite/benches/common/baseline.rs"]
mod sqlite_baseline;

/// A fresh SQLite file with the outbox schema.
fn sqlite(dir: &BenchDir) -> PathBuf {
    let p = dir.next("db");
    drop(SqliteStore::open(&p).expect("create schema"));
    p
}

fn remove(p: &Path) {
    let _ = if p.is_dir() { std::fs::remove_dir_all(p) } else { std::fs::remove_file(p) };
}

fn sled_store(p: &Path) -> Arc<SledStore> {
    Arc::new(SledStore::open(p).expect("open sled"))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs = env_u64("BENCH_RUNS", 5);
    let commits = env_u64("BENCH_COMMITS", 2000);
    let backlog = env_u64("BENCH_BACKLOG", 200_000);
    let dir = BenchDir::new();
    println!(
        "# embedded stores: sled beside SQLite ({runs} runs, medians; every commit durable on return)\n"
    );

    // 1 + 2. Commit rates, ours vs raw, interleaved run by run.
    println!("## commits (state upsert + 1 event of 100 bytes)\n");
    println!("| store | committers | raw commits/s | outbox commits/s | outbox/raw | commits per flush |");
    println!("|---|---:|---:|---:|---:|---:|");
    for committers in [1usize, 64] {
        let per = (commits / committers as u64).max(32);
        let (mut raw, mut ours, mut per_flush) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let p = dir.next("rawsled");
            let (ops, elapsed) = baseline::raw_commits(&p, committers, per);
            raw.push(Rate { ops, elapsed }.per_sec());
            remove(&p);
            let p = dir.next("sled");
            let store = sled_store(&p);
            let dynstore: Arc<dyn DurableStore> = store.clone();
            ours.push(commit_rate(&dynstore, "c", committers, per).per_sec());
            let f = store.flush_stats();
            per_flush.push(f.commits as f64 / f.flushes.max(1) as f64);
            drop((dynstore, store));
            remove(&p);
        }
        let (r, o) = (median(raw), median(ours));
        println!("| sled | {committers} | {r:.0} | {o:.0} | {:.2}× | {:.1} |", o / r, median(per_flush));

        let (mut raw, mut ours, mut per_tx) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            if committers == 1 {
                let p = sqlite(&dir);
                let (ops, elapsed) = sqlite_baseline::raw_commits(&p, per);
                raw.push(Rate { ops, elapsed }.per_sec());
                remove(&p);
            }
            let p = sqlite(&dir);
            let store = Arc::new(SqliteStore::open(&p).expect("open sqlite"));
            let dynstore: Arc<dyn DurableStore> = store.clone();
            ours.push(commit_rate(&dynstore, "c", committers, per).per_sec());
            let g = store.group_commit_stats();
            per_tx.push(g.commits as f64 / g.transactions.max(1) as f64);
            drop((dynstore, store));
            remove(&p);
        }
        let o = median(ours);
        if committers == 1 {
            let r = median(raw);
            println!("| sqlite | 1 | {r:.0} | {o:.0} | {:.2}× | {:.1} |", o / r, median(per_tx));
        } else {
            println!(
                "| sqlite | {committers} | (one connection per committer not measured) | {o:.0} | | {:.1} |",
                median(per_tx)
            );
        }
    }

    // 3. Draining a backlog.
    println!("\n## claim + ack draining a {backlog}-event backlog (batches of 1000, 1000 keys)\n");
    let (mut sled_raw, mut sled_ours, mut sq_raw, mut sq_ours) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs.min(3) {
        let p = dir.next("rawsled");
        baseline::raw_fill(&p, backlog);
        let (ops, elapsed) = baseline::raw_drain(&p, 1000);
        assert_eq!(ops, backlog, "raw sled drained everything");
        sled_raw.push(Rate { ops, elapsed }.per_sec());
        remove(&p);

        let p = dir.next("sled");
        let s: Arc<dyn DurableStore> = sled_store(&p);
        fill(&s, backlog, 10_000, 1000);
        let d = drain(&s, 1000);
        assert_eq!(d.ops, backlog, "sled store drained everything");
        sled_ours.push(d.per_sec());
        drop(s);
        remove(&p);

        let p = sqlite(&dir);
        let s: Arc<dyn DurableStore> = Arc::new(SqliteStore::open(&p).expect("open"));
        fill(&s, backlog, 10_000, 1000);
        let d = drain(&s, 1000);
        assert_eq!(d.ops, backlog, "sqlite store drained everything");
        sq_ours.push(d.per_sec());
        drop(s);
        remove(&p);

        let p = sqlite(&dir);
        let s: Arc<dyn DurableStore> = Arc::new(SqliteStore::open(&p).expect("open"));
        fill(&s, backlog, 10_000, 1000);
        drop(s);
        let (ops, elapsed) = sqlite_baseline::raw_drain(&p, 1000);
        assert_eq!(ops, backlog, "raw sqlite drained everything");
        sq_raw.push(Rate { ops, elapsed }.per_sec());
        remove(&p);
    }
    let (sr, so, qr, qo) = (median(sled_raw), median(sled_ours), median(sq_raw), median(sq_ours));
    println!("| store | raw events/s | outbox events/s | outbox/raw |\n|---|---:|---:|---:|");
    println!("| sled | {sr:.0} | {so:.0} | {:.2}× |", so / sr);
    println!("| sqlite | {qr:.0} | {qo:.0} | {:.2}× |", qo / qr);
}
