//! Kill the consumer (SIGKILL, a real child process) at random moments
//! while it handles a stream of events with a transactional handler over
//! SQLite; after each kill, and after the final redelivery, the consumer's
//! state must equal applying each event exactly once, in per-key order.
//!
//! The producer (the parent process, on its own store handle) keeps
//! committing while the consumer runs and while it is killed: one new
//! event for each one the consumer is handed, over a backlog of
//! [`BACKLOG`], so every kill lands on work (checked: events are waiting
//! after every kill).
//!
//! `OUTBOX_CONSUMER_KILLS` (or else `OUTBOX_CRASH_KILLS`) sets the number
//! of kills (default 100); `OUTBOX_CRASH_SEED` replays a run.

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
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
/// Events waiting when the first child starts; the producer keeps it so.
const BACKLOG: usize = 512;

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
    (k * 1_000_000 + i) as i64
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

/// The producer: commits ADD events for random keys, each key's `x`s in
/// order ([`x_of`]), from the parent process while the consumer runs.
struct Producer {
    store: SqliteStore,
    next: Vec<usize>,
    produced: usize,
    rng: SplitMix64,
}

impl Producer {
    /// One commit of `n` events.
    fn produce(&mut self, n: usize) {
        let mut commit = Commit::events_only();
        for _ in 0..n {
            let k = (self.rng.next_u64() % KEYS as u64) as usize;
            let a = ActorId::new(format!("key{k}")).expect("id");
            let x = x_of(k, self.next[k]);
            self.next[k] += 1;
            commit = commit.event(NewEvent::json(a, "ADD", &serde_json::json!({ "x": x })).expect("json"));
        }
        let mut tries = 0;
        loop {
            match futures::executor::block_on(self.store.put_state_and_events(commit.clone())) {
                Ok(_) => break,
                // The consumer holds the write lock: again.
                Err(e) if e.is_retryable() && tries < 1000 => tries += 1,
                Err(e) => panic!("produce: {e}"),
            }
        }
        self.produced += n;
    }
}

/// Events the consumer is handed, waiting to be produced.
#[derive(Default)]
struct Credits {
    owed: Mutex<usize>,
    changed: Condvar,
}

fn parent() {
    let kills = std::env::var("OUTBOX_CONSUMER_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| crash::env_u64("OUTBOX_CRASH_KILLS", 100));
    let seed = crash::seed();
    println!("{NAME}: {kills} kills, OUTBOX_CRASH_SEED={seed}");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("consumer.db");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut rng = SplitMix64::new(seed);
    // The backlog: BACKLOG events, then one more for each one the consumer
    // is handed, committed while it runs (and while it is killed).
    let mut producer = Producer {
        store: SqliteStore::open(&path).expect("open"),
        next: vec![0; KEYS],
        produced: 0,
        rng: SplitMix64::new(rng.next_u64()),
    };
    while producer.produced < BACKLOG {
        producer.produce(16);
    }

    let exe = std::env::current_exe().expect("exe");
    let credits = Arc::new(Credits::default());
    let mut lines_seen = 0u64;
    let mut least_backlog = usize::MAX;
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
        // is killed anyway. Each one earns the producer as many events as
        // the batch it reports.
        let reader = BufReader::new(child.stdout.take().expect("stdout"));
        let (tx, rx) = std::sync::mpsc::channel();
        let reading = {
            let credits = credits.clone();
            std::thread::spawn(move || {
                let mut reader = reader;
                while let Some(line) = crash::complete_line(&mut reader) {
                    let n: usize =
                        line.strip_prefix("D ").and_then(|n| n.parse().ok()).expect("a progress line");
                    *credits.owed.lock().expect("credits") += n;
                    credits.changed.notify_all();
                    if tx.send(()).is_err() {
                        break;
                    }
                }
            })
        };
        let stop = Arc::new(AtomicBool::new(false));
        let producing = {
            let (credits, stop) = (credits.clone(), stop.clone());
            std::thread::spawn(move || {
                loop {
                    let n = {
                        let mut owed = credits.owed.lock().expect("credits");
                        while *owed == 0 && !stop.load(Ordering::Relaxed) {
                            owed = credits
                                .changed
                                .wait_timeout(owed, Duration::from_millis(5))
                                .expect("credits")
                                .0;
                        }
                        let n = (*owed).min(4);
                        *owed -= n;
                        n
                    };
                    if n == 0 {
                        return producer;
                    }
                    producer.produce(n);
                }
            })
        };
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
        // The batches it reported before it died are owed too; then the
        // producer stops.
        reading.join().expect("reader");
        stop.store(true, Ordering::Relaxed);
        credits.changed.notify_all();
        producer = producing.join().expect("producer");
        lines_seen += n;
        let applied = rt.block_on(verify(&path, k, None));
        let backlog = producer.produced.saturating_sub(applied);
        assert!(backlog > 0, "kill {k}: the consumer ran out of work");
        least_backlog = least_backlog.min(backlog);
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
    rt.block_on(verify(&path, kills, Some(producer.produced)));
    println!(
        "{NAME}: ok: {kills} kills, {lines_seen} batches seen before kills, {} events produced, most while the consumer ran ({least_backlog} or more waiting at every kill), final state exact",
        producer.produced
    );
    println!("{NAME}: 1 passed, 0 failed");
}

/// Checks the consumer's state against its inbox after kill `k`; with
/// `complete`, that all `complete` events were applied. Returns how many
/// were applied.
async fn verify(path: &Path, k: u64, complete: Option<usize>) -> usize {
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
    if let Some(all) = complete {
        assert_eq!(ledger.applied as usize, all, "every event applied once in the end");
    }
    ledger.applied as usize
}
