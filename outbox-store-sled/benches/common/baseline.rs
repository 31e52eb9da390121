//! Raw sled baselines for benchmarks: the same writes as the store, done
//! the plain way (a two-tree transaction + flush + fsync of sled's log
//! per commit, as durable as the store, which fsyncs after its flush), so a
//! benchmark can report our cost as a ratio measured in the same run.
//!
//! Each returns (operations, elapsed). Panics on any sled error (a
//! benchmark cannot go on without its baseline).
#![allow(clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

/// Flushes and fsyncs sled's log (sled's own flush only calls
/// `sync_file_range`, which a power loss can undo).
fn durable_flush(db: &sled::Db, log: &std::fs::File) {
    db.flush().expect("flush");
    log.sync_data().expect("fsync");
}

fn open(path: &Path) -> (sled::Db, sled::Tree, sled::Tree, std::fs::File) {
    let db = sled::Config::new()
        .path(path)
        .mode(sled::Mode::HighThroughput)
        .flush_every_ms(None)
        .open()
        .expect("raw open");
    let state = db.open_tree("raw_state").expect("tree");
    let events = db.open_tree("raw_events").expect("tree");
    let log = std::fs::File::open(path.join("db")).expect("log");
    (db, state, events, log)
}

/// `committers` threads, each doing `per` commits: a transaction over a
/// state tree and an events tree (state upsert of 64 bytes, one 100-byte
/// event under the next sequence number), then `flush`.
pub(crate) fn raw_commits(path: &Path, committers: usize, per: u64) -> (u64, Duration) {
    let (db, state, events, log) = open(path);
    let seq = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    std::thread::scope(|s| {
        for c in 0..committers {
            let (db, state, events, seq, log) = (&db, &state, &events, &seq, &log);
            s.spawn(move || {
                let actor = format!("raw-{c}");
                for _ in 0..per {
                    let n = seq.fetch_add(1, Ordering::Relaxed);
                    (state, events)
                        .transaction(|(st, ev)| {
                            st.insert(actor.as_bytes(), vec![b's'; 64])?;
                            ev.insert(&n.to_be_bytes(), vec![b'x'; 100])?;
                            Ok::<_, ConflictableTransactionError>(())
                        })
                        .expect("raw commit");
                    durable_flush(db, log);
                }
            });
        }
    });
    (committers as u64 * per, start.elapsed())
}

/// Fills the raw events tree with `n` 100-byte events.
pub(crate) fn raw_fill(path: &Path, n: u64) {
    let (db, _, events, log) = open(path);
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        let mut b = sled::Batch::default();
        for i in chunk {
            b.insert(&i.to_be_bytes(), vec![b'x'; 100]);
        }
        events.apply_batch(b).expect("fill");
    }
    durable_flush(&db, &log);
}

/// The raw drain: per batch, scan the next `batch` pending events, mark
/// them leased in one transaction + flush, then delivered in another +
/// flush (a status byte prepended to the value).
pub(crate) fn raw_drain(path: &Path, batch: usize) -> (u64, Duration) {
    let (db, _, events, log) = open(path);
    let leased = db.open_tree("raw_leased").expect("tree");
    let start = Instant::now();
    let mut from: Vec<u8> = Vec::new();
    let mut ops = 0;
    loop {
        let rows: Vec<(sled::IVec, sled::IVec)> =
            events.range(from.clone()..).take(batch).collect::<Result<_, _>>().expect("scan");
        if rows.is_empty() {
            break;
        }
        (&events, &leased)
            .transaction(|(ev, le)| {
                for (k, v) in &rows {
                    let mut nv = vec![1u8];
                    nv.extend_from_slice(v);
                    ev.insert(k, nv)?;
                    le.insert(k, &[])?;
                }
                Ok::<_, ConflictableTransactionError>(())
            })
            .expect("lease");
        durable_flush(&db, &log);
        (&events, &leased)
            .transaction(|(ev, le)| {
                for (k, _) in &rows {
                    ev.remove(k)?;
                    le.remove(k)?;
                }
                Ok::<_, ConflictableTransactionError>(())
            })
            .expect("deliver");
        durable_flush(&db, &log);
        ops += rows.len() as u64;
        from = rows.last().map(|(k, _)| k.to_vec()).unwrap_or_default();
        from.push(0);
    }
    (ops, start.elapsed())
}
