//! Raw rusqlite baselines for benchmarks: the same writes as the store,
//! done the plain way, so a benchmark can report our cost as a ratio
//! measured in the same run. Bench code, not part of the library: a bench
//! pulls it in with `#[path = ".../benches/common/baseline.rs"] mod baseline;`
//! (it needs `rusqlite` and `outbox-core`).
//!
//! Each returns (operations, elapsed). Panics on any SQLite error (a
//! benchmark cannot go on without its baseline).
#![allow(clippy::expect_used, missing_docs, dead_code)]

use std::path::Path;
use std::time::Instant;

use outbox_core::EventId;
use rusqlite::{Connection, TransactionBehavior, params};

fn raw_conn(path: &Path) -> Connection {
    let c = Connection::open(path).expect("raw open");
    c.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0)).expect("wal");
    c.pragma_update(None, "synchronous", "FULL").expect("sync");
    c
}

/// The raw baseline: one transaction per commit, the same upsert + insert
/// into the same tables, FULL sync.
pub(crate) fn raw_commits(path: &Path, n: u64) -> (u64, std::time::Duration) {
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
    (n, start.elapsed())
}

/// The raw drain baseline: per batch, one transaction selecting the next
/// pending rows and leasing them, one marking them delivered.
pub(crate) fn raw_drain(path: &Path, batch: i64) -> (u64, std::time::Duration) {
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
    (ops, start.elapsed())
}
