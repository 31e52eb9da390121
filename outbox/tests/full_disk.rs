//! Nothing acknowledged is lost when the disk fills up, on a real full file
//! system: a small tmpfs mounted for each test (the tests run as root in
//! CI's container), SQLite on it, the rest of it taken by a filler file
//! until the OS refuses writes with ENOSPC.
//!
//! Where mounting is not permitted, the tests say so on stderr and use
//! SQLite's page cap (`max_size_bytes`, SQLITE_FULL) instead, freeing room
//! by pruning delivered events; `OUTBOX_FULL_DISK_NO_MOUNT=1` forces that.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is the test failing

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox::{
    Actor, ActorId, ActorRef, Context, DurableStore, Envelope, ErrorKind, EventId, OnQuota, Outbox,
    OutboxConfig, Outcome, Sink, SqliteStore, StoreChoice, Timestamp, Version, async_trait, configure_outbox,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

#[derive(Clone, Default, Serialize, Deserialize)]
struct Count {
    n: u64,
}

/// Counts its messages; each one emits an event carrying the count and a
/// kilobyte of padding (so the disk fills in a few dozen commits).
struct Counter;

#[async_trait]
impl Actor for Counter {
    type State = Count;
    type Message = ();
    type Error = std::io::Error;

    async fn handle(&mut self, state: &mut Count, _: (), ctx: &mut Context) -> Result<(), std::io::Error> {
        state.n += 1;
        ctx.emit("COUNTED", &serde_json::json!({ "n": state.n, "pad": "x".repeat(1000) }));
        Ok(())
    }
}

/// A sink that refuses everything (retryably) while offline, and records
/// what it took: (ordering key, id, count).
#[derive(Debug)]
struct Recorder {
    online: AtomicBool,
    took: Mutex<Vec<(String, EventId, u64)>>,
    seen: watch::Sender<usize>,
}

impl Recorder {
    fn new() -> Arc<Self> {
        Arc::new(Recorder {
            online: AtomicBool::new(true),
            took: Mutex::default(),
            seen: watch::channel(0).0,
        })
    }

    /// Waits (bounded) until `n` events were taken.
    async fn wait_for(&self, n: usize) {
        let mut rx = self.seen.subscribe();
        tokio::time::timeout(Duration::from_secs(60), rx.wait_for(|got| *got >= n))
            .await
            .unwrap_or_else(|_| panic!("{n} events not delivered within 60 s (got {})", *self.seen.borrow()))
            .expect("recorder alive");
    }
}

#[async_trait]
impl Sink for Recorder {
    async fn publish(&self, batch: &[Envelope]) -> Vec<Outcome> {
        if !self.online.load(Ordering::SeqCst) {
            return batch.iter().map(|_| Outcome::Retriable("offline".into())).collect();
        }
        let mut took = self.took.lock().unwrap();
        for e in batch {
            let n = e.payload.decode_json::<serde_json::Value>().unwrap()["n"].as_u64().unwrap();
            took.push((e.key.as_str().to_owned(), e.id, n));
        }
        self.seen.send_replace(took.len());
        batch.iter().map(|_| Outcome::Ok).collect()
    }
}

/// A small file system mounted for one test, unmounted when dropped.
struct Mount {
    dir: tempfile::TempDir,
}

impl Drop for Mount {
    fn drop(&mut self) {
        // Lazily: a store handle an actor task still holds must not keep it.
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Where the SQLite file lives, and how that place is filled and freed.
enum Disk {
    /// A real file system of a few megabytes: full once the filler file
    /// took what SQLite left.
    Tmpfs { mount: Mount },
    /// Mounting was not permitted: SQLite's page cap stands in for the disk.
    Capped { dir: tempfile::TempDir },
}

const TMPFS_SIZE: &str = "size=8m";
const CAP_BYTES: u64 = 192 * 1024;

impl Disk {
    fn new(test: &str) -> Disk {
        let dir = tempfile::tempdir().unwrap();
        if std::env::var_os("OUTBOX_FULL_DISK_NO_MOUNT").is_some() {
            eprintln!(
                "{test}: OUTBOX_FULL_DISK_NO_MOUNT is set: SQLite's page cap stands in for a full disk"
            );
            return Disk::Capped { dir };
        }
        let mounted =
            Command::new("mount").args(["-t", "tmpfs", "-o", TMPFS_SIZE, "tmpfs"]).arg(dir.path()).output();
        match mounted {
            Ok(out) if out.status.success() => Disk::Tmpfs { mount: Mount { dir } },
            other => {
                let why = match other {
                    Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                    Err(e) => e.to_string(),
                };
                eprintln!(
                    "{test}: NOT ON A REAL FULL DISK: mounting a {TMPFS_SIZE} tmpfs was refused ({why}); \
                     using SQLite's max_page_count (SQLITE_FULL) instead"
                );
                Disk::Capped { dir }
            }
        }
    }

    fn db(&self) -> PathBuf {
        match self {
            Disk::Tmpfs { mount } => mount.dir.path().join("app.db"),
            Disk::Capped { dir } => dir.path().join("app.db"),
        }
    }

    fn filler(&self) -> Option<PathBuf> {
        match self {
            Disk::Tmpfs { mount } => Some(mount.dir.path().join("filler")),
            Disk::Capped { .. } => None,
        }
    }

    /// The outbox's configuration on this disk, delivering to the sink
    /// given to `configure_outbox`, leases and leadership kept short.
    fn config(&self) -> OutboxConfig {
        let store = match self {
            Disk::Tmpfs { .. } => StoreChoice::Sqlite(self.db()),
            Disk::Capped { .. } => StoreChoice::Custom(Arc::new(
                SqliteStore::options(self.db()).max_size_bytes(CAP_BYTES).open().unwrap(),
            )),
        };
        let mut config = OutboxConfig::default().store(store).flush_interval(Duration::from_millis(20));
        config.forwarder.lease = Duration::from_secs(2);
        config.forwarder.leader_ttl = Duration::from_secs(2);
        config
    }

    /// Takes every byte the file system has left (the OS says ENOSPC).
    fn fill(&self) {
        let Some(path) = self.filler() else { return };
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0xA5u8; 64 * 1024];
        loop {
            match f.write_all(&chunk).and_then(|()| f.sync_all()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        assert!(f.write_all(&[1]).and_then(|()| f.sync_all()).is_err(), "the disk is full");
    }

    /// Makes room: deletes the filler (or, under the page cap, prunes the
    /// delivered events).
    async fn free(&self, outbox: &Outbox) {
        match self.filler() {
            Some(path) => std::fs::remove_file(path).unwrap(),
            None => {
                let pruned =
                    outbox.store().prune_delivered(Timestamp::from_millis(i64::MAX), 10_000).await.unwrap();
                assert!(pruned > 0, "delivered events to prune");
            }
        }
    }
}

fn actors() -> [ActorId; 2] {
    [ActorId::new("a").unwrap(), ActorId::new("b").unwrap()]
}

async fn spawn(outbox: &Outbox) -> Vec<ActorRef<Counter>> {
    let mut refs = Vec::new();
    for id in actors() {
        refs.push(outbox.spawn_actor(id, Counter).await.unwrap());
    }
    refs
}

/// The counts of the events of `key` in `events`, in their order.
fn counts_of(events: &[(String, EventId, u64)], key: &str) -> Vec<u64> {
    events.iter().filter(|(k, ..)| k == key).map(|(.., n)| *n).collect()
}

async fn version(store: &Arc<dyn DurableStore>, actor: &ActorId) -> Version {
    store.load_state(actor).await.unwrap().map_or(Version::NONE, |s| s.version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_commits_survive_a_full_disk() {
    let disk = Disk::new("acknowledged_commits_survive_a_full_disk");
    let sink = Recorder::new();
    let errors: Arc<Mutex<Vec<ErrorKind>>> = Arc::default();
    let seen = errors.clone();
    let config = disk.config().on_error(move |_, e| seen.lock().unwrap().push(e.kind()));
    let outbox = configure_outbox(config, sink.clone()).await.unwrap();
    let refs = spawn(&outbox).await;
    // Every send that returned Ok, per actor.
    let mut sends = [0u64; 2];

    // Delivered while there is room.
    for i in 0..40 {
        let sent = refs[i % 2].send(()).await.unwrap();
        sends[i % 2] += 1;
        assert!(sent.durable);
    }
    sink.wait_for(40).await;
    // The rest is delivered by the next run: nothing is settled on a full
    // disk, so nothing is delivered twice here.
    outbox.shutdown().await;
    sink.online.store(false, Ordering::SeqCst);

    disk.fill();
    let mut i = 0;
    loop {
        let sent = refs[i % 2].send(()).await.expect("a full disk does not fail the commit");
        sends[i % 2] += 1;
        i += 1;
        if !sent.durable {
            break;
        }
        assert!(i < 2_000, "the disk never filled up");
    }
    assert!(!outbox.is_durable(), "the outbox says what the receipt said");
    for _ in 0..10 {
        let sent = refs[i % 2].send(()).await.unwrap();
        sends[i % 2] += 1;
        i += 1;
        assert!(!sent.durable, "memory holds it, and the caller can tell");
    }
    assert_eq!(*errors.lock().unwrap(), vec![ErrorKind::QuotaExceeded], "on_error once");

    // Room again: the next commit moves what memory holds back first.
    disk.free(&outbox).await;
    let sent = refs[0].send(()).await.unwrap();
    sends[0] += 1;
    assert!(sent.durable, "moved back, then committed durably");
    assert_eq!(sent.version, Version(sends[0]));
    assert!(outbox.is_durable(), "durable again");
    assert!(outbox.store().capabilities().durable);
    let store = outbox.store();
    for (k, id) in actors().iter().enumerate() {
        assert_eq!(version(&store, id).await, Version(sends[k]), "{id}: every state, in SQLite");
    }
    let pending = store.list_pending(10_000).await.unwrap();
    let pending: Vec<(String, EventId, u64)> = pending
        .iter()
        .map(|e| {
            let n = e.payload.decode_json::<serde_json::Value>().unwrap()["n"].as_u64().unwrap();
            (e.key.as_str().to_owned(), e.id, n)
        })
        .collect();
    for (k, id) in actors().iter().enumerate() {
        let counts = counts_of(&pending, id.as_str());
        assert_eq!(counts, (21..=sends[k]).collect::<Vec<_>>(), "{id}: the held events in SQLite, in order");
    }
    for i in 0..6 {
        assert!(refs[i % 2].send(()).await.unwrap().durable);
        sends[i % 2] += 1;
    }
    drop(refs);
    drop(store);
    drop(outbox);

    // The next run: everything acknowledged is there, and delivered once.
    sink.online.store(true, Ordering::SeqCst);
    let outbox = configure_outbox(disk.config(), sink.clone()).await.unwrap();
    outbox.notify_online();
    let refs = spawn(&outbox).await;
    for (k, r) in refs.iter().enumerate() {
        assert_eq!(r.state().n, sends[k], "{}: every acknowledged message", r.id());
    }
    let total = (sends[0] + sends[1]) as usize;
    sink.wait_for(total).await;
    outbox.shutdown().await;
    let took = sink.took.lock().unwrap().clone();
    assert_eq!(took.len(), total, "nothing delivered twice");
    assert_eq!(took.iter().map(|(_, id, _)| *id).collect::<HashSet<_>>().len(), total);
    for (k, id) in actors().iter().enumerate() {
        assert_eq!(
            counts_of(&took, id.as_str()),
            (1..=sends[k]).collect::<Vec<_>>(),
            "{id}: every event once, in order, across both runs"
        );
    }
    let s = outbox.store().stats().await.unwrap();
    assert_eq!((s.pending, s.dead), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_quota_fail_acknowledges_only_durable_commits() {
    let disk = Disk::new("on_quota_fail_acknowledges_only_durable_commits");
    let sink = Recorder::new();
    let errors: Arc<Mutex<Vec<ErrorKind>>> = Arc::default();
    let seen = errors.clone();
    let config =
        disk.config().on_quota(OnQuota::Fail).on_error(move |_, e| seen.lock().unwrap().push(e.kind()));
    let outbox = configure_outbox(config, sink.clone()).await.unwrap();
    let refs = spawn(&outbox).await;
    let mut acked: HashMap<usize, u64> = HashMap::new();
    for i in 0..40 {
        assert!(refs[i % 2].send(()).await.unwrap().durable);
        *acked.entry(i % 2).or_default() += 1;
    }
    sink.wait_for(40).await;
    outbox.shutdown().await;

    disk.fill();
    let mut i = 0;
    let refused = loop {
        match refs[i % 2].send(()).await {
            Ok(sent) => {
                assert!(sent.durable, "only durable commits are acknowledged");
                *acked.entry(i % 2).or_default() += 1;
            }
            Err(e) => break e,
        }
        i += 1;
        assert!(i < 2_000, "the disk never filled up");
    };
    assert_eq!(refused.store_kind(), Some(ErrorKind::QuotaExceeded), "the committer is told");
    assert!(refs[(i + 1) % 2].send(()).await.is_err(), "and the next one too");
    assert!(outbox.is_durable(), "nothing is held in memory");
    assert!(errors.lock().unwrap().is_empty(), "no fallback to report");
    let store = outbox.store();
    for (k, id) in actors().iter().enumerate() {
        assert_eq!(version(&store, id).await, Version(acked[&k]), "{id}: exactly what was acknowledged");
    }

    disk.free(&outbox).await;
    let sent = refs[i % 2].send(()).await.expect("room again");
    assert!(sent.durable);
    *acked.entry(i % 2).or_default() += 1;
    drop(refs);
    drop(store);
    drop(outbox);

    let outbox = configure_outbox(disk.config(), sink.clone()).await.unwrap();
    for (k, r) in spawn(&outbox).await.iter().enumerate() {
        assert_eq!(r.state().n, acked[&k], "{}: every acknowledged message, nothing else", r.id());
    }
    outbox.shutdown().await;
}
