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

use outbox_core::{DurableStore, EventId};
use outbox_store_sqlite::SqliteStore;
use outbox_testkit::bench::{Rate, commit_rate, drain, fill, median};
use rusqlite::{Connection, TransactionBehavior, params};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Dir {
    _tmp: Option<tempfile::TempDir>,
    root: PathBuf,
    n: std::cell::Cell<u32>,
}

impl Dir {
    fn new() -> Self {
        match std::env::var("BENCH_DIR") {
            Ok(d) => Dir { _tmp: None, root: PathBuf::from(d), n: Default::default() },
            Err(_) => {
                let t = tempfile::tempdir().expect("temp dir");
                let root = t.path().to_owned();
                Dir { _tmp: Some(t), root, n: Default::default() }
            }
        }
    }

    /// A fresh database file with the outbox schema.
    fn fresh(&self) -> PathBuf {
        self.n.set(self.n.get() + 1);
        let p = self.root.join(format!("bench-{}-{}.db", std::process::id(), self.n.get()));
        drop(SqliteStore::open(&p).expect("create schema"));
        p
    }
}

fn ours(path: &Path) -> Arc<dyn DurableStore> {
    Arc::new(SqliteStore::open(path).expect("open"))
}

fn raw_conn(path: &Path) -> Connection {
    let c = Connection::open(path).expect("raw open");
    c.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0)).expect("wal");
    c.pragma_update(None, "synchronous", "FULL").expect("sync");
    c
}

/// The raw baseline: one transaction per commit, the same upsert + insert
/// into the same tables, FULL sync.
fn raw_commits(path: &Path, n: u64) -> Rate {
    let mut c = raw_conn(path);
    let start = Instant::now();
    for v in 1..=n as i64 {
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).expect("begin");
        tx.prepare_cached(
            "INSERT INTO outbox_state (actor, version, snapshot, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (actor) DO UPDATE SET version = excluded.version, snapshot = excluded.snapshot,
             updated_at = excluded.updated_at",
        )
        .and_then(|mut s| s.execute(params!["raw", v, vec![b's'; 64], 0]))
        .expect("upsert");
        tx.prepare_cached(
            "INSERT INTO outbox_events (id, origin, key, event_type, payload_kind, payload, headers,
                                        schema_version, created_at, next_attempt_at)
             VALUES (?1, ?2, ?3, ?4, 'bytes', ?5, '{}', 1, ?6, ?6)",
        )
        .and_then(|mut s| {
            s.execute(params![&EventId::new().to_bytes()[..], "raw", "raw", "BENCH", vec![b'x'; 100], 0])
        })
        .expect("insert");
        tx.commit().expect("commit");
    }
    Rate { ops: n, elapsed: start.elapsed() }
}

/// The raw drain baseline: per batch, one transaction selecting the next
/// pending rows and leasing them, one marking them delivered.
fn raw_drain(path: &Path, batch: i64) -> Rate {
    let mut c = raw_conn(path);
    let start = Instant::now();
    let mut ops = 0;
    loop {
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).expect("begin");
        let rows: Vec<(i64, Vec<u8>, Vec<u8>)> = tx
            .prepare_cached(
                "SELECT seq, id, payload FROM outbox_events WHERE status <> 'delivered' AND status = 'pending'
                 ORDER BY seq LIMIT ?1",
            )
            .and_then(|mut s| s.query_map([batch], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect())
            .expect("select");
        if rows.is_empty() {
            break;
        }
        for (seq, _, _) in &rows {
            tx.prepare_cached(
                "UPDATE outbox_events SET attempts = attempts + 1, lease_until = ?2 WHERE seq = ?1",
            )
            .and_then(|mut s| s.execute(params![seq, i64::MAX]))
            .expect("lease");
        }
        tx.commit().expect("commit");
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).expect("begin");
        for (seq, _, _) in &rows {
            tx.prepare_cached(
                "UPDATE outbox_events SET status = 'delivered', delivered_at = 1 WHERE seq = ?1",
            )
            .and_then(|mut s| s.execute([seq]))
            .expect("deliver");
        }
        tx.commit().expect("commit");
        ops += rows.len() as u64;
    }
    Rate { ops, elapsed: start.elapsed() }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs = env("BENCH_RUNS", 5);
    let commits = env("BENCH_COMMITS", 2000);
    let backlog = env("BENCH_BACKLOG", 1_000_000);
    let drain_runs = env("BENCH_DRAIN_RUNS", 1);
    let dir = Dir::new();
    println!("# outbox-store-sqlite benchmarks ({runs} runs, medians; synchronous=FULL)\n");

    // 1. One committer, ours vs raw, interleaved run by run.
    let (mut ours_us, mut raw_us, mut raw_rate) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let r = raw_commits(&dir.fresh(), commits);
        raw_us.push(r.micros_per_op());
        raw_rate.push(r.per_sec());
        let store = ours(&dir.fresh());
        ours_us.push(commit_rate(&store, "one", 1, commits).micros_per_op());
    }
    let (o, r) = (median(ours_us), median(raw_us));
    let raw_single = median(raw_rate);
    // The cost of the hop to the worker thread and back, alone: a stats
    // query on an empty store, repeated.
    let hop = {
        let store = ours(&dir.fresh());
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
            let path = dir.fresh();
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
        let p1 = dir.fresh();
        let s1 = ours(&p1);
        fill_r.push(fill(&s1, backlog, 10_000, 1000).per_sec());
        let d = drain(&s1, 1000);
        assert_eq!(d.ops, backlog, "ours drained everything");
        ours_d.push(d.per_sec());
        drop(s1);
        let p2 = dir.fresh();
        let s2 = ours(&p2);
        fill(&s2, backlog, 10_000, 1000);
        drop(s2);
        let d = raw_drain(&p2, 1000);
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
