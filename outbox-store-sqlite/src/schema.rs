//! The on-disk schema and its forward migrations.
//!
//! The schema version is SQLite's `user_version`; outbox files carry
//! `application_id` `0x4f424f58` (ASCII `OBOX`). Opening first identifies
//! the file with reads only: a file whose version is newer than
//! [`SCHEMA_VERSION`] is refused with `SchemaTooNew`, and a SQLite file of
//! another program (another `application_id`, or none with a
//! `user_version` or tables of its own) with `Corrupted`, before anything
//! (not even a pragma that changes the file) touches it. A new file, an
//! empty one (0 bytes) or a SQLite database with nothing in it is ours to
//! create.

use outbox_core::{Error, Result};
use rusqlite::{Connection, TransactionBehavior};

use crate::error::map;

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: u32 = 3;

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
    // 2 -> 3: CHECK constraints on every column of `outbox_events`, so a
    // row of the wrong type or shape (a program in another language
    // writing the table) fails at its INSERT instead of in the forwarder.
    // Each column's check names only its own column (SQLite evaluates a
    // CHECK on UPDATE only when the update sets a column it names), so a
    // row that breaks them (copied from version 2 below, or written with
    // `ignore_check_constraints`) can still be quarantined, requeued,
    // discarded and pruned. The table is rebuilt as in 1 -> 2; the rows are
    // copied verbatim with the checks off (the migration runs with
    // `PRAGMA ignore_check_constraints = ON`), then the pending and dead
    // ones that break a check are quarantined: dead letters whose
    // `last_error` says `corrupted: ` and what is wrong, their stored
    // values untouched (a skipped dead letter stays skipped).
    "
    CREATE TABLE outbox_events_v3 (
        seq             INTEGER PRIMARY KEY AUTOINCREMENT,
        id              BLOB NOT NULL UNIQUE CHECK (typeof(id) = 'blob' AND length(id) = 16),
        origin          TEXT NOT NULL
                        CHECK (typeof(origin) = 'text' AND length(CAST(origin AS BLOB)) BETWEEN 1 AND 256),
        key             TEXT NOT NULL
                        CHECK (typeof(key) = 'text' AND length(CAST(key AS BLOB)) BETWEEN 1 AND 256),
        event_type      TEXT NOT NULL CHECK (typeof(event_type) = 'text' AND length(event_type) > 0),
        payload_kind    TEXT NOT NULL CHECK (payload_kind IN ('json', 'bytes')),
        payload         BLOB NOT NULL CHECK (typeof(payload) = 'blob'),
        headers         TEXT NOT NULL DEFAULT '{}'
                        CHECK (typeof(headers) = 'text' AND json_valid(headers) AND json_type(headers) = 'object'),
        schema_version  INTEGER NOT NULL DEFAULT 1
                        CHECK (typeof(schema_version) = 'integer' AND schema_version BETWEEN 0 AND 4294967295),
        created_at      INTEGER NOT NULL CHECK (typeof(created_at) = 'integer'),
        status          TEXT NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'dead', 'delivered', 'discarded')),
        skipped         INTEGER NOT NULL DEFAULT 0 CHECK (skipped IN (0, 1)),
        attempts        INTEGER NOT NULL DEFAULT 0
                        CHECK (typeof(attempts) = 'integer' AND attempts BETWEEN 0 AND 4294967295),
        next_attempt_at INTEGER NOT NULL CHECK (typeof(next_attempt_at) = 'integer'),
        lease_until     INTEGER CHECK (lease_until IS NULL OR typeof(lease_until) = 'integer'),
        claimed_epoch   INTEGER CHECK (claimed_epoch IS NULL OR typeof(claimed_epoch) = 'integer'),
        last_error      TEXT CHECK (last_error IS NULL OR typeof(last_error) = 'text'),
        delivered_at    INTEGER CHECK (delivered_at IS NULL OR typeof(delivered_at) = 'integer'),
        CHECK (skipped = 0 OR status = 'dead'),
        CHECK (payload_kind <> 'json' OR json_valid(CAST(payload AS TEXT)))
    );
    INSERT INTO outbox_events_v3 (seq, id, origin, key, event_type, payload_kind, payload, headers,
                                  schema_version, created_at, status, skipped, attempts, next_attempt_at,
                                  lease_until, claimed_epoch, last_error, delivered_at)
        SELECT seq, id, origin, key, event_type, payload_kind, payload, headers,
               schema_version, created_at, status, skipped, attempts, next_attempt_at,
               lease_until, claimed_epoch, last_error, delivered_at
        FROM outbox_events ORDER BY seq;
    DELETE FROM sqlite_sequence WHERE name = 'outbox_events_v3';
    INSERT INTO sqlite_sequence (name, seq)
        SELECT 'outbox_events_v3', max(seq) FROM (
            SELECT seq FROM sqlite_sequence WHERE name = 'outbox_events'
            UNION ALL SELECT max(seq) FROM outbox_events_v3
        ) HAVING max(seq) IS NOT NULL;
    DROP TABLE outbox_events;
    ALTER TABLE outbox_events_v3 RENAME TO outbox_events;
    CREATE INDEX outbox_events_unsettled ON outbox_events (seq) WHERE status IN ('pending', 'dead');
    CREATE INDEX outbox_events_settled ON outbox_events (delivered_at, status)
        WHERE status IN ('delivered', 'discarded');
    UPDATE outbox_events
       SET last_error = 'corrupted: ' || reason
                        || CASE WHEN last_error IS NULL THEN '' ELSE '; last error: ' || last_error END,
           status = 'dead', lease_until = NULL
      FROM (SELECT seq AS bad_seq, CASE
              WHEN typeof(id) <> 'blob' OR length(id) <> 16 THEN
                  'id is ' || upper(typeof(id)) || ' of ' || length(CAST(id AS BLOB))
                  || ' bytes, not a 16-byte BLOB (listed as '
                  || printf('00000000-0000-8000-8000-%012x', seq) || ', an id derived from seq ' || seq || ')'
              WHEN typeof(origin) <> 'text' OR length(CAST(origin AS BLOB)) NOT BETWEEN 1 AND 256 THEN
                  'origin is not 1 to 256 bytes of TEXT'
              WHEN typeof(key) <> 'text' OR length(CAST(key AS BLOB)) NOT BETWEEN 1 AND 256 THEN
                  'key is not 1 to 256 bytes of TEXT'
              WHEN typeof(event_type) <> 'text' OR length(event_type) = 0 THEN 'event_type is not non-empty TEXT'
              WHEN payload_kind NOT IN ('json', 'bytes') THEN 'payload_kind is neither json nor bytes'
              WHEN typeof(payload) <> 'blob' THEN 'payload is ' || upper(typeof(payload)) || ', not a BLOB'
              WHEN payload_kind = 'json' AND NOT json_valid(CAST(payload AS TEXT)) THEN 'payload is not JSON text'
              WHEN typeof(headers) <> 'text' OR NOT json_valid(headers) OR json_type(headers) <> 'object' THEN
                  'headers are not a JSON object'
              WHEN typeof(schema_version) <> 'integer' OR schema_version NOT BETWEEN 0 AND 4294967295 THEN
                  'schema_version is not an INTEGER in range'
              WHEN typeof(created_at) <> 'integer' THEN 'created_at is ' || upper(typeof(created_at)) || ', not an INTEGER'
              WHEN typeof(attempts) <> 'integer' OR attempts NOT BETWEEN 0 AND 4294967295 THEN
                  'attempts is not an INTEGER in range'
              WHEN typeof(next_attempt_at) <> 'integer' THEN
                  'next_attempt_at is ' || upper(typeof(next_attempt_at)) || ', not an INTEGER'
              WHEN lease_until IS NOT NULL AND typeof(lease_until) <> 'integer' THEN 'lease_until is not an INTEGER'
              WHEN claimed_epoch IS NOT NULL AND typeof(claimed_epoch) <> 'integer' THEN
                  'claimed_epoch is not an INTEGER'
              WHEN last_error IS NOT NULL AND typeof(last_error) <> 'text' THEN 'last_error is not TEXT'
            END AS reason
            FROM outbox_events WHERE status IN ('pending', 'dead'))
     WHERE seq = bad_seq AND reason IS NOT NULL;
    ",
];

/// What [`identify`] found in a file.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Found {
    /// Nothing: a new or empty file, or a SQLite database without tables,
    /// `user_version` or `application_id` (another process of ours may be
    /// creating it). Ours to create.
    Empty,
    /// An outbox file at this schema version (at most [`SCHEMA_VERSION`]).
    Outbox(u32),
}

/// What the file behind `conn` is, read in one statement (so in one read
/// transaction), without writing anything: an outbox file, an empty one, or
/// an error — `SchemaTooNew` for an outbox file of a newer schema,
/// `Corrupted` for a file that is not SQLite or is another program's
/// database.
pub(crate) fn identify(conn: &Connection) -> Result<Found> {
    let (app_id, version, objects): (i32, i64, i64) = conn
        .query_row(
            "SELECT (SELECT application_id FROM pragma_application_id),
                    (SELECT user_version FROM pragma_user_version),
                    (SELECT count(*) FROM sqlite_schema)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .map_err(|e| map("read the file's identity", e))?;
    classify(app_id, version, objects)
}

fn classify(app_id: i32, version: i64, objects: i64) -> Result<Found> {
    let foreign = |why: String| Error::Corrupted {
        message: format!("not an outbox file, left as it is: {why}"),
        source: None,
    };
    match app_id {
        APPLICATION_ID => match u32::try_from(version) {
            Ok(found) if found > SCHEMA_VERSION => {
                Err(Error::SchemaTooNew { found, supported: SCHEMA_VERSION })
            }
            Ok(0) if objects == 0 => Ok(Found::Empty),
            Ok(0) => Err(foreign(format!(
                "outbox application_id but schema version 0 and {objects} schema objects"
            ))),
            Ok(found) => Ok(Found::Outbox(found)),
            Err(_) => Err(foreign(format!("outbox application_id but schema version {version}"))),
        },
        0 if version == 0 && objects == 0 => Ok(Found::Empty),
        0 if version == 0 => Err(foreign(format!(
            "a SQLite database with {objects} schema objects of its own and no application_id"
        ))),
        0 => Err(foreign(format!("a SQLite database with user_version {version} and no application_id"))),
        other => Err(foreign(format!(
            "a SQLite database with application_id {other:#x} (outbox files have {APPLICATION_ID:#x}, \"OBOX\")"
        ))),
    }
}

/// Reads the schema version; fails with `Corrupted` on a file that is not
/// a SQLite database.
pub(crate) fn read_version(conn: &Connection) -> Result<u32> {
    let v: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| map("read schema version", e))?;
    u32::try_from(v)
        .map_err(|_| Error::Corrupted { message: format!("schema version {v} out of range"), source: None })
}

/// Checks that the file is an outbox file (or empty), then applies the
/// migrations it lacks, each in its own transaction.
pub(crate) fn migrate(conn: &mut Connection) -> Result<()> {
    migrate_to(conn, SCHEMA_VERSION)
}

/// [`migrate`], stopping at version `target` (at most [`SCHEMA_VERSION`]):
/// tests make files of an older version with it.
pub(crate) fn migrate_to(conn: &mut Connection, target: u32) -> Result<()> {
    let found = match identify(conn)? {
        Found::Empty => 0,
        Found::Outbox(v) => v,
    };
    for (from, sql) in MIGRATIONS.iter().enumerate().take(target as usize).skip(found as usize) {
        // Immediate: the file is identified again under the write lock, so
        // two processes opening an old (or new) file at once migrate it
        // once, and a file another program filled meanwhile is refused.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| map("begin migration", e))?;
        let now = match identify(&tx)? {
            Found::Empty => 0,
            Found::Outbox(v) => v,
        };
        if now as usize > from {
            continue; // another connection applied it meanwhile
        }
        // 2 -> 3 copies rows that may break its new checks (and then
        // quarantines them): the checks are off while it runs.
        let unchecked = from == 2;
        if unchecked {
            tx.pragma_update(None, "ignore_check_constraints", true).map_err(|e| map("migrate", e))?;
        }
        let applied = tx.execute_batch(sql);
        if unchecked {
            tx.pragma_update(None, "ignore_check_constraints", false).map_err(|e| map("migrate", e))?;
        }
        applied.map_err(|e| map("migrate", e))?;
        tx.pragma_update(None, "application_id", APPLICATION_ID).map_err(|e| map("set application id", e))?;
        tx.pragma_update(None, "user_version", from as i64 + 1).map_err(|e| map("set schema version", e))?;
        tx.commit().map_err(|e| map("commit migration", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! A file written at schema version 1 or 2 (by its migrations, exactly
    //! as those builds made it, and its rows as they, or a program in
    //! another language, wrote them) opens, migrates to the current version
    //! and keeps everything; rows that break the version-3 checks are
    //! quarantined.

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
                                        next_attempt_at) VALUES (?1, 'a', 'a', 'T', 'json', x'31', 0, 0)",
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

#[cfg(test)]
mod v2_tests {
    use std::path::Path;
    use std::time::Duration;

    use futures::executor::block_on;
    use outbox_core::prelude::*;
    use outbox_core::{ClaimRequest, Commit, EventId, ManualClock, NewEvent, Timestamp};
    use rusqlite::params;
    use rusqlite::types::Value;

    use super::*;
    use crate::SqliteStore;

    const T0: i64 = 1_700_000_000_000;

    /// A version-2 file, as the version-2 build left it.
    fn v2_file(path: &Path) -> Connection {
        let mut c = Connection::open(path).unwrap();
        c.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0)).unwrap();
        migrate_to(&mut c, 2).unwrap();
        assert_eq!(read_version(&c).unwrap(), 2);
        c
    }

    /// Inserts an event into a version-2 file, `id`, `payload`, `headers`
    /// and `created_at` as given; returns its seq.
    fn insert(c: &Connection, id: Value, key: &str, payload: Value, headers: &str, created_at: Value) -> i64 {
        c.execute(
            "INSERT INTO outbox_events (id, origin, key, event_type, payload_kind, payload, headers,
                                        schema_version, created_at, next_attempt_at)
             VALUES (?1, ?2, ?2, 'T', 'json', ?3, ?4, 1, ?5, ?6)",
            params![id, key, payload, headers, created_at, T0],
        )
        .unwrap();
        c.last_insert_rowid()
    }

    fn good(c: &Connection, id: EventId, key: &str) -> i64 {
        insert(
            c,
            Value::Blob(id.to_bytes().to_vec()),
            key,
            Value::Blob(b"1".to_vec()),
            "{}",
            Value::Integer(T0),
        )
    }

    /// The values a row holds, as stored: `(typeof, quote)` of each column.
    fn stored(c: &Connection, seq: i64) -> Vec<(String, String)> {
        let cols = ["id", "origin", "key", "payload", "headers", "created_at", "next_attempt_at"];
        cols.iter()
            .map(|col| {
                c.query_row(
                    &format!("SELECT typeof({col}), quote({col}) FROM outbox_events WHERE seq = ?1"),
                    [seq],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap()
            })
            .collect()
    }

    /// A version-2 file holding rows its schema let through and version 3
    /// refuses (a TEXT payload, a REAL time, an id that is 16 characters of
    /// TEXT, headers that are not JSON) migrates: those still pending or
    /// dead are quarantined (dead, `corrupted: `, a skipped one stays
    /// skipped), their values untouched; settled ones are left alone; the
    /// good rows flow on, and the checks are in force for new rows.
    #[test]
    fn a_version_2_file_migrates_and_quarantines_the_rows_the_checks_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v2.db");
        let [a1, a2, b1, dead_id, done_id] = [(); 5].map(|()| EventId::new());
        let text = |s: &str| Value::Text(s.into());
        let (text_payload, real_time, text_id, bad_headers, dead_real, done_text, before);
        {
            let c = v2_file(&path);
            good(&c, a1, "a");
            text_payload = insert(
                &c,
                Value::Blob(EventId::new().to_bytes().to_vec()),
                "a",
                text(r#"{"x":1}"#),
                "{}",
                Value::Integer(T0),
            );
            good(&c, a2, "a");
            real_time = insert(
                &c,
                Value::Blob(EventId::new().to_bytes().to_vec()),
                "b",
                Value::Blob(b"2".to_vec()),
                "{}",
                Value::Real(1.7e9 + 0.5),
            );
            good(&c, b1, "b");
            text_id = insert(
                &c,
                text("sixteen chars id"),
                "c",
                Value::Blob(b"3".to_vec()),
                "{}",
                Value::Integer(T0),
            );
            bad_headers = insert(
                &c,
                Value::Blob(EventId::new().to_bytes().to_vec()),
                "d",
                Value::Blob(b"4".to_vec()),
                "not json",
                Value::Integer(T0),
            );
            dead_real = insert(
                &c,
                Value::Blob(dead_id.to_bytes().to_vec()),
                "e",
                Value::Blob(b"5".to_vec()),
                "{}",
                Value::Real(0.5),
            );
            c.execute(
                "UPDATE outbox_events SET status = 'dead', skipped = 1, last_error = 'boom' WHERE seq = ?1",
                [dead_real],
            )
            .unwrap();
            done_text = insert(
                &c,
                Value::Blob(done_id.to_bytes().to_vec()),
                "f",
                text("6"),
                "{}",
                Value::Integer(T0),
            );
            c.execute(
                "UPDATE outbox_events SET status = 'delivered', delivered_at = ?2 WHERE seq = ?1",
                params![done_text, T0],
            )
            .unwrap();
            before = [text_payload, real_time, text_id, bad_headers, dead_real, done_text]
                .map(|seq| stored(&c, seq));
        }

        let clock = ManualClock::new(Timestamp::from_millis(T0));
        let store = SqliteStore::options(&path).clock(clock.clone()).open().unwrap();
        let c = Connection::open(&path).unwrap();
        assert_eq!(read_version(&c).unwrap(), SCHEMA_VERSION);
        let after =
            [text_payload, real_time, text_id, bad_headers, dead_real, done_text].map(|seq| stored(&c, seq));
        assert_eq!(after, before, "every stored value is as it was");
        let state = |seq: i64| -> (String, i64, Option<String>) {
            c.query_row("SELECT status, skipped, last_error FROM outbox_events WHERE seq = ?1", [seq], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap()
        };
        for seq in [text_payload, real_time, text_id, bad_headers] {
            let (status, skipped, why) = state(seq);
            assert_eq!((status.as_str(), skipped), ("dead", 0), "seq {seq}");
            assert!(why.unwrap().starts_with("corrupted: "), "seq {seq}");
        }
        let (status, skipped, why) = state(dead_real);
        assert_eq!((status.as_str(), skipped), ("dead", 1), "a skipped dead letter stays skipped");
        let why = why.unwrap();
        assert!(why.starts_with("corrupted: ") && why.ends_with("; last error: boom"), "{why}");
        assert_eq!(state(done_text), ("delivered".into(), 0, None), "a settled row is left alone");

        // Listed, the 16-character TEXT id under the id derived from its seq.
        let derived = crate::rows::derived_id(text_id);
        let dead = block_on(store.list_dead(10)).unwrap();
        assert_eq!(dead.len(), 5);
        assert!(
            dead.iter()
                .any(|e| e.id == derived && e.last_error.as_deref().unwrap().contains(&derived.to_string()))
        );

        // The good rows flow, parked behind their key's quarantined row.
        let ttl = Duration::from_secs(30);
        let g = block_on(store.acquire_leadership("l", ttl)).unwrap().unwrap();
        let claim = |park| {
            block_on(store.claim(&g, ClaimRequest::new(10, ttl).park_dead_keys(park)))
                .unwrap()
                .into_iter()
                .map(|e| e.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(claim(true), vec![a1]);
        block_on(store.ack(&g, &[a1])).unwrap();
        assert_eq!(claim(false), vec![a2, b1]);

        // The checks hold now; a new event's seq is above every old one.
        let err = c
            .execute(
                "INSERT INTO outbox_events (id, origin, key, event_type, payload_kind, payload, created_at, next_attempt_at)
                 VALUES (?1, 'a', 'a', 'T', 'json', '1', 0, 0)",
                [&EventId::new().to_bytes()[..]],
            )
            .unwrap_err();
        assert_eq!(err.sqlite_error_code(), Some(rusqlite::ErrorCode::ConstraintViolation));
        let e = NewEvent::json(outbox_core::ActorId::new("z").unwrap(), "T", &1).unwrap();
        block_on(store.put_state_and_events(Commit::events_only().event(e.clone()))).unwrap();
        let seq: i64 = c
            .query_row("SELECT seq FROM outbox_events WHERE id = ?1", [&e.id.to_bytes()[..]], |r| r.get(0))
            .unwrap();
        assert_eq!(seq, done_text + 1);
    }
}
