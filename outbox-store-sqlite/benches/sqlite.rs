//! SQLite store benchmarks, each against a raw rusqlite baseline measured
//! in the same run, on the same file system:
//!
//! 1. one committer: our `put_state_and_events` vs a raw transaction doing
//!    the same upsert + insert (ratio of time per commit);
//! 2. 1, 8 and 64 concurrent committers (group commit) vs the raw
//!    one-committer rate;
//! 3. claim + ack draining a backlog (1,000,000 events by default) vs a raw
//!    select-lease-update drain of the same rows.
//!
//! `cargo bench -p outbox-store-sqlite --bench sqlite`
//! Env: `BENCH_RUNS` (5), `BENCH_COMMITS` (2000), `BENCH_BACKLOG`
//! (1000000), `BENCH_DRAIN_RUNS` (1), `BENCH_DIR` (a temp dir).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use outbox_core::DurableStore;
use outbox_store_sqlite::SqliteStore;
use outbox_testkit::bench::{BenchDir, Rate, commit_rate, drain, fill, median};
use outbox_testkit::crash::env_u64;

#[path = "common/baseline.rs"]
mod baseline;

/// A fresh database file with the outbox schema.
fn fresh(dir: &BenchDir) -> PathBuf {
    let p = dir.next("db");
    drop(SqliteStore::open(&p).expect("create schema"));
    p
}

fn ours(path: &Path) -> Arc<dyn DurableStore> {
    Arc::new(SqliteStore::open(path).expect("open"))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs = env_u64("BENCH_RUNS", 5);
    let commits = env_u64("BENCH_COMMITS", 2000);
    let backlog = env_u64("BENCH_BACKLOG", 1_000_000);
    let drain_runs = env_u64("BENCH_DRAIN_RUNS", 1);
    let dir = BenchDir::new();
    println!("# outbox-store-sqlite benchmarks ({runs} runs, medians; synchronous=FULL)\n");

    // 1. One committer, ours vs raw, interleaved run by run.
    let (mut ours_us, mut raw_us, mut raw_rate) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let (ops, elapsed) = baseline::raw_commits(&fresh(&dir), commits);
        let r = Rate { ops, elapsed };
        raw_us.push(r.micros_per_op());
        raw_rate.push(r.per_sec());
        let store = ours(&fresh(&dir));
        ours_us.push(commit_rate(&store, "one", 1, commits).micros_per_op());
    }
    let (o, r) = (median(ours_us), median(raw_us));
    let raw_single = median(raw_rate);
    // The cost of the hop to the worker thread and back, alone: a stats
    // query on an empty store, repeated.
    let hop = {
        let store = ours(&fresh(&dir));
        let mut xs = Vec::new();
        for _ in 0..runs {
            let start = Instant::now();
            for _ in 0..2000 {
                futures::executor::block_on(store.stats()).expect("stats");
            }
            xs.push(start.elapsed().as_secs_f64() * 1e6 / 2000.0);
        }
        median(xs)
    };
    println!("## 1. one committer, {commits} commits (state upsert + 1 event)\n");
    println!("| | µs/commit | commits/s |\n|---|---:|---:|");
    println!("| raw rusqlite transaction | {r:.0} | {:.0} |", 1e6 / r);
    println!("| outbox put_state_and_events | {o:.0} | {:.0} |", 1e6 / o);
    println!("| (worker round trip alone: stats on an empty store) | {hop:.0} | |");
    println!("\nratio ours/raw time: **{:.3}×** (goal ≤ 1.10×)\n", o / r);

    // 2. Concurrent committers vs the raw one-committer rate.
    println!("## 2. concurrent committers (group commit), vs raw one-committer {raw_single:.0} commits/s\n");
    println!("| committers | commits/s | × raw single | commits per fsync |\n|---:|---:|---:|---:|");
    for committers in [1usize, 8, 64] {
        let per = (commits / committers as u64).max(16);
        let mut rates = Vec::new();
        let mut per_tx = Vec::new();
        for _ in 0..runs {
            let path = fresh(&dir);
            let store = Arc::new(SqliteStore::open(&path).expect("open"));
            let dynstore: Arc<dyn DurableStore> = store.clone();
            rates.push(commit_rate(&dynstore, "conc", committers, per).per_sec());
            let g = store.group_commit_stats();
            per_tx.push(g.commits as f64 / g.transactions.max(1) as f64);
        }
        let rate = median(rates);
        println!("| {committers} | {rate:.0} | {:.2}× | {:.1} |", rate / raw_single, median(per_tx));
    }

    // 3. Draining a backlog.
    println!("\n## 3. claim + ack draining a {backlog}-event backlog (batches of 1000, 1000 keys)\n");
    let (mut ours_d, mut raw_d, mut fill_r) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..drain_runs {
        let p1 = fresh(&dir);
        let s1 = ours(&p1);
        fill_r.push(fill(&s1, backlog, 10_000, 1000).per_sec());
        let d = drain(&s1, 1000);
        assert_eq!(d.ops, backlog, "ours drained everything");
        ours_d.push(d.per_sec());
        drop(s1);
        let p2 = fresh(&dir);
        let s2 = ours(&p2);
        fill(&s2, backlog, 10_000, 1000);
        drop(s2);
        let (ops, elapsed) = baseline::raw_drain(&p2, 1000);
        let d = Rate { ops, elapsed };
        assert_eq!(d.ops, backlog, "raw drained everything");
        raw_d.push(d.per_sec());
        let _ = std::fs::remove_file(&p1);
        let _ = std::fs::remove_file(&p2);
    }
    let (o, r) = (median(ours_d), median(raw_d));
    println!("| | events/s |\n|---|---:|");
    println!("| fill (our commits, 10,000 events each) | {:.0} |", median(fill_r));
    println!("| raw select + lease + deliver | {r:.0} |");
    println!("| outbox claim + ack | {o:.0} |");
    println!("\nratio ours/raw throughput: **{:.2}×**", o / r);
}
