//! The on-disk schema and its forward migrations.
//!
//! The schema version is SQLite's `user_version`. A file whose version is
//! newer than [`SCHEMA_VERSION`] is refused with `SchemaTooNew` before
//! anything (not even a pragma that changes the file) touches it.

use outbox_core::{Error, Result};
use rusqlite::{Connection, TransactionBehavior};

use crate::error::map;

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: u32 = 2;

/// `PRAGMA application_id` of outbox files: ASCII "OBOX".
pub(crate) const APPLICATION_ID: i32 = 0x4f42_4f58;

/// Migration `i` takes a file from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1
    "
    CREATE TABLE outbox_state (
        actor       TEXT PRIMARY KEY NOT NULL,
        version     INTEGER NOT NULL CHECK (version > 0),
        snapshot    BLOB NOT NULL,
        updated_at  INTEGER NOT NULL
    );

    CREATE TABLE outbox_events (
        seq             INTEGER PRIMARY KEY AUTOINCREMENT,
        id              BLOB NOT NULL UNIQUE CHECK (length(id) = 16),
        origin          TEXT NOT NULL,
        key             TEXT NOT NULL,
        event_type      TEXT NOT NULL,
        payload_kind    TEXT NOT NULL CHECK (payload_kind IN ('json', 'bytes')),
        payload         BLOB NOT NULL,
        headers         TEXT NOT NULL DEFAULT '{}',
        schema_version  INTEGER NOT NULL DEFAULT 1,
        created_at      INTEGER NOT NULL,
        status          TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'dead', 'delivered')),
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER NOT NULL,
        lease_until     INTEGER,
        claimed_epoch   INTEGER,
        last_error      TEXT,
        delivered_at    INTEGER
    );
    CREATE INDEX outbox_events_undelivered ON outbox_events (seq) WHERE status <> 'delivered';
    CREATE INDEX outbox_events_delivered ON outbox_events (delivered_at) WHERE status = 'delivered';

    CREATE TABLE outbox_inbox (
        consumer      TEXT NOT NULL,
        origin        TEXT NOT NULL,
        event_id      BLOB NOT NULL,
        processed_at  INTEGER NOT NULL,
        UNIQUE (consumer, origin, event_id)
    );
    CREATE INDEX outbox_inbox_processed_at ON outbox_inbox (processed_at);

    CREATE TABLE outbox_leader (
        id          INTEGER PRIMARY KEY CHECK (id = 1),
        holder      TEXT,
        epoch       INTEGER NOT NULL,
        expires_at  INTEGER
    );
    INSERT INTO outbox_leader (id, holder, epoch, expires_at) VALUES (1, NULL, 0, NULL);
    ",
    // 1 -> 2: the `discarded` status and the `skipped` flag of dead events.
    // SQLite cannot alter a CHECK constraint, so `outbox_events` is rebuilt
    // (create, copy, drop, rename; the migration's transaction makes it
    // atomic). Every row keeps its `seq`, and the AUTOINCREMENT high-water
    // mark (`sqlite_sequence`) carries over, so new events still get seqs
    // above every seq ever handed out (pruned ones included). The partial
    // indexes are recreated for the new statuses: the claim scan reads
    // `pending` and `dead` rows, pruning and counting the settled ones
    // (`delivered`, `discarded`).
    "
    CREATE TABLE outbox_events_v2 (
        seq             INTEGER PRIMARY KEY AUTOINCREMENT,
        id              BLOB NOT NULL UNIQUE CHECK (length(id) = 16),
        origin          TEXT NOT NULL,
        key             TEXT NOT NULL,
        event_type      TEXT NOT NULL,
        payload_kind    TEXT NOT NULL CHECK (payload_kind IN ('json', 'bytes')),
        payload         BLOB NOT NULL,
        headers         TEXT NOT NULL DEFAULT '{}',
        schema_version  INTEGER NOT NULL DEFAULT 1,
        created_at      INTEGER NOT NULL,
        status          TEXT NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'dead', 'delivered', 'discarded')),
        skipped         INTEGER NOT NULL DEFAULT 0 CHECK (skipped IN (0, 1)),
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER NOT NULL,
        lease_until     INTEGER,
        claimed_epoch   INTEGER,
        last_error      TEXT,
        delivered_at    INTEGER,
        CHECK (skipped = 0 OR status = 'dead')
    );
    INSERT INTO outbox_events_v2 (seq, id, origin, key, event_type, payload_kind, payload, headers,
                                  schema_version, created_at, status, attempts, next_attempt_at,
                                  lease_until, claimed_epoch, last_error, delivered_at)
        SELECT seq, id, origin, key, event_type, payload_kind, payload, headers,
               schema_version, created_at, status, attempts, next_attempt_at,
               lease_until, claimed_epoch, last_error, delivered_at
        FROM outbox_events ORDER BY seq;
    DELETE FROM sqlite_sequence WHERE name = 'outbox_events_v2';
    INSERT INTO sqlite_sequence (name, seq)
        SELECT 'outbox_events_v2', max(seq) FROM (
            SELECT seq FROM sqlite_sequence WHERE name = 'outbox_events'
            UNION ALL SELECT max(seq) FROM outbox_events_v2
        ) HAVING max(seq) IS NOT NULL;
    DROP TABLE outbox_events;
    ALTER TABLE outbox_events_v2 RENAME TO outbox_events;
    CREATE INDEX outbox_events_unsettled ON outbox_events (seq) WHERE status IN ('pending', 'dead');
    CREATE INDEX outbox_events_settled ON outbox_events (delivered_at, status)
        WHERE status IN ('delivered', 'discarded');
    ",
];

/// Reads the schema version; fails with `Corrupted` on a file that is not
/// a SQLite database.
pub(crate) fn read_version(conn: &Connection) -> Result<u32> {
    let v: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| map("read schema version", e))?;
    u32::try_from(v)
        .map_err(|_| Error::Corrupted { message: format!("schema version {v} out of range"), source: None })
}

/// Checks that a non-empty file is an outbox file, then applies the
/// migrations it lacks, each in its own transaction.
pub(crate) fn migrate(conn: &mut Connection) -> Result<()> {
    migrate_to(conn, SCHEMA_VERSION)
}

/// [`migrate`], stopping at version `target` (at most [`SCHEMA_VERSION`]):
/// tests make files of an older version with it.
pub(crate) fn migrate_to(conn: &mut Connection, target: u32) -> Result<()> {
    let found = read_version(conn)?;
    if found > SCHEMA_VERSION {
        return Err(Error::SchemaTooNew { found, supported: SCHEMA_VERSION });
    }
    let app_id: i32 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(|e| map("read application id", e))?;
    if found > 0 && app_id != APPLICATION_ID {
        return Err(Error::Corrupted {
            message: format!("not an outbox file (application_id {app_id:#x}, schema version {found})"),
            source: None,
        });
    }
    for (from, sql) in MIGRATIONS.iter().enumerate().take(target as usize).skip(found as usize) {
        // Immediate: the version is read again under the write lock, so
        // two processes opening an old file at once migrate it once.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| map("begin migration", e))?;
        let now = read_version(&tx)?;
        if now > SCHEMA_VERSION {
            return Err(Error::SchemaTooNew { found: now, supported: SCHEMA_VERSION });
        }
        if now as usize > from {
            continue; // another connection applied it meanwhile
        }
        tx.execute_batch(sql).map_err(|e| map("migrate", e))?;
        tx.pragma_update(None, "application_id", APPLICATION_ID).map_err(|e| map("set application id", e))?;
        tx.pragma_update(None, "user_version", from as i64 + 1).map_err(|e| map("set schema version", e))?;
        tx.commit().map_err(|e| map("commit migration", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! A file written at schema version 1 (by its migration, exactly as
    //! that build made it, and its rows as that build wrote them) opens,
    //! migrates to the current version and keeps everything.

    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use futures::executor::block_on;
    use outbox_core::prelude::*;
    use outbox_core::{
        ActorId, Attempt, ClaimRequest, Clock, Commit, ConsumerId, EventId, ManualClock, NewEvent, Timestamp,
    };
    use rusqlite::params;

    use super::*;
    use crate::SqliteStore;

    const T0: Timestamp = Timestamp::from_millis(1_000_000);

    fn actor(s: &str) -> ActorId {
        ActorId::new(s).unwrap()
    }

    /// A version-1 file, as the version-1 build left it.
    fn v1_file(path: &Path) -> Connection {
        let mut c = Connection::open(path).unwrap();
        c.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0)).unwrap();
        migrate_to(&mut c, 1).unwrap();
        assert_eq!(read_version(&c).unwrap(), 1);
        c
    }

    /// Inserts an event the way the version-1 build did; returns its seq.
    fn insert(c: &Connection, id: EventId, key: &str, created_at: i64) -> i64 {
        c.execute(
            "INSERT INTO outbox_events (id, origin, key, event_type, payload_kind, payload, headers,
                                        schema_version, created_at, next_attempt_at)
             VALUES (?1, ?2, ?2, 'T', 'json', x'31', '{}', 1, ?3, ?3)",
            params![&id.to_bytes()[..], key, created_at],
        )
        .unwrap();
        c.last_insert_rowid()
    }

    fn seq_of(path: &Path, id: EventId) -> i64 {
        Connection::open(path)
            .unwrap()
            .query_row("SELECT seq FROM outbox_events WHERE id = ?1", [&id.to_bytes()[..]], |r| r.get(0))
            .unwrap()
    }

    fn ids(envs: &[outbox_core::Envelope]) -> Vec<EventId> {
        envs.iter().map(|e| e.id).collect()
    }

    #[test]
    fn a_version_1_file_migrates_and_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        let [dead, a2, b1, b2, pruned] = [(); 5].map(|()| EventId::new());
        let t = T0.as_millis();
        {
            let c = v1_file(&path);
            c.execute(
                "INSERT INTO outbox_state (actor, version, snapshot, updated_at) VALUES ('a', 3, x'5354', ?1)",
                [t],
            )
            .unwrap();
            c.execute(
                "INSERT INTO outbox_inbox (consumer, origin, event_id, processed_at) VALUES ('c', 'p', ?1, ?2)",
                params![&dead.to_bytes()[..], t],
            )
            .unwrap();
            assert_eq!(insert(&c, dead, "a", t), 1);
            insert(&c, a2, "a", t + 1);
            insert(&c, b1, "b", t + 2);
            insert(&c, b2, "b", t + 3);
            assert_eq!(insert(&c, pruned, "c", t + 4), 5);
            // The version-1 build's settlements: a dead letter, an ack, a
            // claim left leased by a leader that died, and a pruned event
            // (the highest seq, gone: the next seq must still be above it).
            c.execute(
                "UPDATE outbox_events SET status = 'dead', attempts = 3, last_error = 'boom' WHERE seq = 1",
                [],
            )
            .unwrap();
            c.execute("UPDATE outbox_events SET status = 'delivered', delivered_at = ?1 WHERE seq = 3", [t])
                .unwrap();
            c.execute(
                "UPDATE outbox_events SET attempts = 1, lease_until = ?1, claimed_epoch = 1 WHERE seq = 4",
                [t + 3_600_000],
            )
            .unwrap();
            c.execute("UPDATE outbox_leader SET holder = 'old', epoch = 1, expires_at = ?1", [t + 30_000])
                .unwrap();
            c.execute("DELETE FROM outbox_events WHERE seq = 5", []).unwrap();
        }

        let clock = ManualClock::new(T0.saturating_add(Duration::from_secs(10)));
        let open = || SqliteStore::options(&path).clock(clock.clone()).open().unwrap();
        let store = open();
        {
            let c = Connection::open(&path).unwrap();
            assert_eq!(read_version(&c).unwrap(), SCHEMA_VERSION);
            let (pending, dead_rows, skipped): (i64, i64, i64) = c
                .query_row(
                    "SELECT sum(status = 'pending'), sum(status = 'dead'), sum(skipped) FROM outbox_events",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .unwrap();
            assert_eq!((pending, dead_rows, skipped), (2, 1, 0));
        }
        assert_eq!([dead, a2, b1, b2].map(|id| seq_of(&path, id)), [1, 2, 3, 4], "seqs kept");

        // Everything the version-1 build wrote is there.
        let s = block_on(store.stats()).unwrap();
        assert_eq!((s.pending, s.in_flight, s.dead, s.delivered, s.discarded), (2, 1, 1, 1, 0));
        assert_eq!(s.oldest_pending_at, Some(Timestamp::from_millis(t + 1)));
        let listed = block_on(store.list_dead(10)).unwrap();
        assert_eq!(ids(&listed), vec![dead]);
        assert_eq!((listed[0].attempts, listed[0].last_error.as_deref()), (3, Some("boom")));
        assert_eq!(block_on(store.load_state(&actor("a"))).unwrap().unwrap().bytes, b"ST");
        let consumer = ConsumerId::new("c").unwrap();
        assert!(block_on(store.is_processed(&consumer, &actor("p"), dead)).unwrap());

        // The new operations work on the migrated rows.
        let ttl = Duration::from_secs(30);
        let g = block_on(store.acquire_leadership("new", ttl)).unwrap().expect("the old leader is gone");
        let park = |n| ClaimRequest::new(n, ttl).park_dead_keys(true);
        let got = block_on(store.claim(&g, park(10))).unwrap();
        assert_eq!(ids(&got), vec![b2], "a is parked behind its dead letter; b2's orphaned lease is void");
        assert_eq!(got[0].attempts, 2);
        block_on(store.retry_later(&g, b2, clock.now().saturating_add(ttl), "down", Attempt::Uncounted))
            .unwrap();
        assert_eq!(block_on(store.skip_dead(&[dead])).unwrap(), 1);
        assert_eq!(ids(&block_on(store.claim(&g, park(10))).unwrap()), vec![a2], "a flows past it");
        block_on(store.ack(&g, &[a2])).unwrap();
        assert_eq!(block_on(store.retry_now(&g)).unwrap(), 1);
        let again = block_on(store.claim(&g, park(10))).unwrap();
        assert_eq!((ids(&again), again[0].attempts), (vec![b2], 2), "the uncounted attempt was taken back");
        block_on(store.ack(&g, &[b2])).unwrap();

        // A new event's seq is above every seq the old file handed out.
        let a3 = NewEvent::json(actor("a"), "T", &3).unwrap();
        block_on(store.put_state_and_events(Commit::events_only().event(a3.clone()))).unwrap();
        assert_eq!(seq_of(&path, a3.id), 6, "above the pruned seq 5");

        clock.advance(Duration::from_secs(1));
        assert_eq!(block_on(store.discard_dead(&[dead])).unwrap(), 1);
        let s = block_on(store.stats()).unwrap();
        assert_eq!((s.pending, s.dead, s.delivered, s.discarded), (1, 0, 3, 1));
        drop(store);

        // Reopened at the current version: nothing migrates twice.
        let store = open();
        assert_eq!(block_on(store.stats()).unwrap().discarded, 1);
        let later = clock.now().saturating_add(Duration::from_millis(1));
        assert_eq!(block_on(store.prune_delivered(later, 100)).unwrap(), 4);
        let s = block_on(store.stats()).unwrap();
        assert_eq!((s.pending, s.dead, s.delivered, s.discarded), (1, 0, 0, 0));
    }

    #[test]
    fn an_empty_version_1_file_migrates_and_numbers_from_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        drop(v1_file(&path));
        let store = SqliteStore::options(&path).clock(ManualClock::new(T0)).open().unwrap();
        let e = NewEvent::json(actor("a"), "T", &1).unwrap();
        block_on(store.put_state_and_events(Commit::events_only().event(e.clone()))).unwrap();
        assert_eq!(seq_of(&path, e.id), 1);
        let _: Arc<dyn outbox_core::DurableStore> = Arc::new(store);
    }

    #[test]
    fn the_status_check_still_guards_the_rebuilt_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v2.db");
        drop(SqliteStore::open(&path).unwrap());
        let c = Connection::open(&path).unwrap();
        let e = EventId::new();
        c.execute(
            "INSERT INTO outbox_events (id, origin, key, event_type, payload_kind, payload, created_at,
                                        next_attempt_at) VALUES (?1, 'a', 'a', 'T', 'json', '1', 0, 0)",
            [&e.to_bytes()[..]],
        )
        .unwrap();
        for bad in [
            "UPDATE outbox_events SET status = 'lost'",
            "UPDATE outbox_events SET skipped = 2",
            "UPDATE outbox_events SET skipped = 1",
        ] {
            let err = c.execute(bad, []).expect_err(bad);
            assert_eq!(err.sqlite_error_code(), Some(rusqlite::ErrorCode::ConstraintViolation), "{bad}");
        }
        c.execute("UPDATE outbox_events SET status = 'dead', skipped = 1", []).unwrap();
    }
}
