//! The on-disk schema and its forward migrations.
//!
//! The schema version is SQLite's `user_version`. A file whose version is
//! newer than [`SCHEMA_VERSION`] is refused with `SchemaTooNew` before
//! anything (not even a pragma that changes the file) touches it.

use outbox_core::{Error, Result};
use rusqlite::Connection;

use crate::error::map;

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: u32 = 1;

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
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction().map_err(|e| map("begin migration", e))?;
        tx.execute_batch(sql).map_err(|e| map("migrate", e))?;
        tx.pragma_update(None, "application_id", APPLICATION_ID).map_err(|e| map("set application id", e))?;
        tx.pragma_update(None, "user_version", from as i64 + 1).map_err(|e| map("set schema version", e))?;
        tx.commit().map_err(|e| map("commit migration", e))?;
    }
    Ok(())
}
