//! Kill the consumer (SIGKILL, a real child process) at random moments
//! while it handles a stream of events with a transactional handler over
//! SQLite; after each kill, and after the final redelivery, the consumer's
//! state must equal applying each event exactly once, in per-key order.
//!
//! `OUTBOX_CONSUMER_KILLS` sets the number of kills (default 100);
//! `OUTBOX_CRASH_SEED` replays a run.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use outbox_consumer::{Handler, HandlerError, Tx, async_trait, once_per_event};
use outbox_core::prelude::*;
use outbox_core::{
    ActorId, Clock, Commit, ConsumerId, Envelope, ManualClock, NewEvent, SharedClock, SplitMix64, SystemClock,
};
use outbox_forwarder::{Forwarder, ForwarderConfig, Outcome, Sink};
use outbox_store_sqlite::SqliteStore;
use outbox_testkit::crash;
use serde::{Deserialize, Serialize};

const NAME: &str = "consumer_sigkill_applies_each_event_once";
const KEYS: usize = 8;
const EVENTS: usize = 8000;

#[derive(Default, Serialize, Deserialize, Debug, PartialEq)]
struct Ledger {
    total: i64,
    applied: u64,
    per_key: BTreeMap<String, Vec<i64>>,
}

struct Accumulate(ActorId);

#[async_trait]
impl Handler for Accumulate {
    async fn handle(&self, event: &Envelope, tx: &mut Tx<'_>) -> Result<(), HandlerError> {
        let body: serde_json::Value = event.payload.decode_json().map_err(HandlerError::Store)?;
        let x = body["x"].as_i64().ok_or_else(|| HandlerError::NonRetriable("no x".into()))?;
        let mut ledger: Ledger = tx.load(&self.0).await?;
        ledger.total += x;
        ledger.applied += 1;
        ledger.per_key.entry(event.key.to_string()).or_default().push(x);
        tx.save(&ledger)?;
        Ok(())
    }
}

/// Prints a line after each delivered batch, so the parent can kill at a
/// random point of progress.
#[derive(Debug)]
struct Reporting<S>(S);

#[async_trait]
impl<S: Sink> Sink for Reporting<S> {
    async fn publish(&self, batch: &[Envelope]) -> Vec<Outcome> {
        let out = self.0.publish(batch).await;
        if std::env::var_os("OUTBOX_CONSUMER_CHILD").is_some() {
            let mut o = std::io::stdout().lock();
            let _ = writeln!(o, "D {}", batch.len());
            let _ = o.flush();
        }
        out
    }
}

fn me() -> ActorId {
    ActorId::new("ledger-state").expect("id")
}

fn consumer_id() -> ConsumerId {
    ConsumerId::new("ledger").expect("id")
}

fn x_of(k: usize, i: usize) -> i64 {
    (k * 10_000 + i) as i64
}

fn forwarder(store: Arc<dyn DurableStore>, clock: SharedClock) -> Forwarder {
    let consumer = once_per_event(store.clone(), consumer_id(), Accumulate(me())).with_clock(clock.clone());
    let cfg = ForwarderConfig::default()
        .holder(format!("consumer-crash-{}", std::process::id()))
        .batch_size(16)
        .lease(Duration::from_millis(100))
        .flush_interval(Duration::from_millis(5))
        .max_idle_interval(Duration::from_millis(20))
        .clock(clock);
    Forwarder::new(store, Arc::new(Reporting(consumer)), cfg)
}

fn main() {
    let path = match crash::role(NAME, "OUTBOX_CONSUMER_CHILD") {
        crash::Role::Child(path) => path,
        crash::Role::Parent => return parent(),
        crash::Role::Skip => return,
    };
    // The child: consume until killed.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let store: Arc<dyn DurableStore> = Arc::new(SqliteStore::open(&path).expect("child opens"));
        let handle = forwarder(store, SystemClock::shared()).spawn();
        std::future::pending::<()>().await;
        handle.shutdown().await;
    });
}

fn parent() {
    let kills = crash::env_u64("OUTBOX_CONSUMER_KILLS", 100);
    let seed = crash::seed();
    println!("{NAME}: {kills} kills, OUTBOX_CRASH_SEED={seed}");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("consumer.db");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    // The producer's events: KEYS keys, interleaved.
    rt.block_on(async {
        let store = SqliteStore::open(&path).expect("open");
        let mut commit = Commit::events_only();
        for i in 0..EVENTS / KEYS {
            for k in 0..KEYS {
                let a = ActorId::new(format!("key{k}")).expect("id");
                commit = commit
                    .event(NewEvent::json(a, "ADD", &serde_json::json!({ "x": x_of(k, i) })).expect("json"));
            }
        }
        store.put_state_and_events(commit).await.expect("produce");
    });

    let exe = std::env::current_exe().expect("exe");
    let mut rng = SplitMix64::new(seed);
    let mut lines_seen = 0u64;
    for k in 0..kills {
        let wait = if rng.next_u64().is_multiple_of(6) { 0 } else { rng.next_u64() % 12 };
        let mut child = Command::new(&exe)
            .env("OUTBOX_CONSUMER_CHILD", &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn");
        // Progress lines arrive through a reader thread, so a child with
        // nothing left to do cannot hang the parent: after a quiet spell it
        // is killed anyway.
        let reader = BufReader::new(child.stdout.take().expect("stdout"));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in reader.lines() {
                if line.is_err() || tx.send(()).is_err() {
                    break;
                }
            }
        });
        let mut n = 0;
        while n < wait {
            match rx.recv_timeout(Duration::from_secs(5)) {
                Ok(()) => n += 1,
                Err(_) => break,
            }
        }
        // Kill at a random moment, not right after a progress line (which
        // the child writes at a batch boundary): up to 3 ms later.
        std::thread::sleep(Duration::from_micros(rng.next_u64() % 3000));
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("wait");
        assert!(status.code().is_none(), "kill {k}: the child exited by itself ({status})");
        lines_seen += n;
        rt.block_on(verify(&path, k, false));
    }
    // Redelivery to the end, in-process, on a clock past every lease.
    rt.block_on(async {
        let clock = ManualClock::new(SystemClock.now().saturating_add(Duration::from_secs(3600)));
        let shared: SharedClock = clock;
        let store: Arc<dyn DurableStore> =
            Arc::new(SqliteStore::options(&path).clock(shared.clone()).open().expect("open"));
        let mut f = forwarder(store.clone(), shared);
        for _ in 0..10_000 {
            if store.stats().await.expect("stats").pending == 0 {
                break;
            }
            f.run_once().await.expect("cycle");
        }
        f.step_down().await;
    });
    rt.block_on(verify(&path, kills, true));
    println!("{NAME}: ok: {kills} kills, {lines_seen} batches seen before kills, final state exact");
    println!("{NAME}: 1 passed, 0 failed");
}

async fn verify(path: &Path, k: u64, complete: bool) {
    let store = SqliteStore::open(path).unwrap_or_else(|e| panic!("kill {k}: reopen: {e}"));
    let ledger: Ledger = match store.load_state(&me()).await.expect("load") {
        Some(s) => serde_json::from_slice(&s.bytes).expect("ledger decodes"),
        None => Ledger::default(),
    };
    drop(store);
    let c = rusqlite::Connection::open(path).expect("open");
    // Every ADD event the inbox says was processed, by key, in commit order.
    let mut marked: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut st = c
        .prepare(
            "SELECT e.key, e.payload FROM outbox_events e JOIN outbox_inbox i ON i.event_id = e.id
             WHERE i.consumer = 'ledger' AND e.event_type = 'ADD' ORDER BY e.seq",
        )
        .expect("prepare");
    let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))).expect("query");
    for row in rows {
        let (key, payload) = row.expect("row");
        let v: serde_json::Value = serde_json::from_slice(&payload).expect("payload");
        marked.entry(key).or_default().push(v["x"].as_i64().expect("x"));
    }
    let marks: usize = marked.values().map(Vec::len).sum();
    assert_eq!(
        ledger.applied as usize, marks,
        "kill {k}: effects applied == inbox marks (no double apply, no lost mark)"
    );
    assert_eq!(
        ledger.per_key, marked,
        "kill {k}: the ledger holds exactly the marked events, once each, in order"
    );
    assert_eq!(ledger.total, marked.values().flatten().sum::<i64>(), "kill {k}: total");
    for (key, xs) in &ledger.per_key {
        let kk: usize = key.trim_start_matches("key").parse().expect("key");
        let want: Vec<i64> = (0..xs.len()).map(|i| x_of(kk, i)).collect();
        assert_eq!(xs, &want, "kill {k}: {key} is a prefix of its events in commit order");
    }
    if complete {
        assert_eq!(ledger.applied as usize, EVENTS, "every event applied once in the end");
    }
}
