//! The schema and its forward migrations, applied once under an advisory
//! lock.
//!
//! The version lives in `outbox_schema`. A database whose version is newer
//! than [`SCHEMA_VERSION`] is refused with `SchemaTooNew` and not altered.

use futures::StreamExt;
use outbox_core::{Error, Result};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, Transaction};

use crate::error::map;
use crate::queries::ENVELOPE_COLS;
use crate::rows::{Decoded, decode_at, quarantine};

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: i32 = 6;

/// The version whose upgrade quarantines the pending and dead rows that
/// break the envelope's rules (its checks apply to rows written after).
const CHECKED: usize = 6;

/// Migration `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE outbox_state (
        actor       text PRIMARY KEY,
        version     bigint NOT NULL CHECK (version > 0),
        snapshot    bytea NOT NULL,
        updated_at  bigint NOT NULL
    );
    -- One row per ordering key: committers lock the rows of their keys
    -- (so one key's sequence numbers follow commit order), claimers lock
    -- them with SKIP LOCKED (so one key is claimed by one forwarder at a
    -- time).
    CREATE TABLE outbox_keys (key text PRIMARY KEY);
    CREATE TABLE outbox_events (
        seq             bigserial PRIMARY KEY,
        id              uuid NOT NULL UNIQUE,
        origin          text NOT NULL,
        key             text NOT NULL,
        event_type      text NOT NULL,
        payload_kind    text NOT NULL CHECK (payload_kind IN ('json', 'bytes')),
        payload         bytea NOT NULL,
        headers         text NOT NULL DEFAULT '{}',
        schema_version  integer NOT NULL DEFAULT 1,
        created_at      bigint NOT NULL,
        -- 0 pending, 1 dead, 2 delivered
        status          smallint NOT NULL DEFAULT 0 CHECK (status IN (0, 1, 2)),
        attempts        integer NOT NULL DEFAULT 0,
        next_attempt_at bigint NOT NULL,
        last_error      text,
        claimed_epoch   bigint,
        lease_until     bigint,
        delivered_at    bigint
    );
    CREATE INDEX outbox_events_pending ON outbox_events (seq) WHERE status = 0;
    CREATE INDEX outbox_events_by_key ON outbox_events (key, seq) WHERE status <> 2;
    CREATE INDEX outbox_events_delivered ON outbox_events (delivered_at) WHERE status = 2;
    CREATE TABLE outbox_inbox (
        consumer      text NOT NULL,
        origin        text NOT NULL,
        event_id      uuid NOT NULL,
        processed_at  bigint NOT NULL,
        PRIMARY KEY (consumer, origin, event_id)
    );
    CREATE INDEX outbox_inbox_time ON outbox_inbox (processed_at);
    CREATE SEQUENCE outbox_epochs;
    CREATE TABLE outbox_leaders (
        epoch       bigint PRIMARY KEY,
        holder      text NOT NULL,
        expires_at  bigint NOT NULL,
        released    boolean NOT NULL DEFAULT false
    );
",
    "
    -- Ordering keys are locked with transaction-level advisory locks
    -- instead of key rows. A process still running schema 1 code fails on
    -- the missing table rather than taking a lock the others ignore.
    DROP TABLE outbox_keys;
",
    r#"
    -- Ordering keys compare byte-wise: the by-key index is searched for
    -- every claim candidate, and under a libc collation (the database
    -- default, often en_US.UTF-8 or C.UTF-8) each comparison is a strcoll
    -- call. Keys only need equality and a stable order. Rewrites the table.
    ALTER TABLE outbox_events ALTER COLUMN key TYPE text COLLATE "C";
    -- Room on each page for a row's next version: a claim's lease update
    -- changes no indexed column, so it can stay on the page (a HOT update)
    -- and add no index entries. Applies to pages written from now on.
    ALTER TABLE outbox_events SET (fillfactor = 50);
"#,
    "
    -- An ack sets a row's status, so its new row version goes into every
    -- index whose predicate it meets: the primary key, the id's unique
    -- index and the delivered-time index (measured: these three entries
    -- were a quarter of the ack). The id becomes the primary key (it was
    -- unique and not null already; the constraint keeps its name), the
    -- sequence number is only reached through the pending and by-key
    -- indexes, and pruning walks the table instead of a delivered-time
    -- index. Rebuilds the id index.
    ALTER TABLE outbox_events DROP CONSTRAINT outbox_events_pkey;
    ALTER TABLE outbox_events DROP CONSTRAINT outbox_events_id_key;
    ALTER TABLE outbox_events ADD CONSTRAINT outbox_events_id_key PRIMARY KEY (id);
    DROP INDEX outbox_events_delivered;
",
    "
    -- Dead letters handled one by one. Status 3 is a discarded dead
    -- letter: settled like a delivered event (never claimed, never parks
    -- its key), its discard time in `delivered_at` (the settled-at time:
    -- ack or discard), pruned with the delivered events. `skipped` marks
    -- a dead letter (status 1) that no longer parks its key; it is false
    -- in every other status. The status codes are now 0 pending, 1 dead,
    -- 2 delivered, 3 discarded. No rewrite: the new column's default is a
    -- constant, and the new check only scans the table.
    ALTER TABLE outbox_events DROP CONSTRAINT outbox_events_status_check;
    ALTER TABLE outbox_events ADD CONSTRAINT outbox_events_status_check CHECK (status IN (0, 1, 2, 3));
    ALTER TABLE outbox_events ADD COLUMN skipped boolean NOT NULL DEFAULT false;
",
    r#"
    -- Checks on what a writer outside this library can get wrong with
    -- these column types (an application in another language inserting
    -- its own events): origin and key are 1 to 256 bytes (the ids'
    -- rule), headers a JSON object of strings, attempts not negative. A
    -- row breaking them now fails at its INSERT, not later in a
    -- forwarder. (A payload marked json is checked when read instead:
    -- parsing every payload again at insert would double a commit's
    -- work on large payloads.) The headers are checked on their text (a
    -- JSON text, matching an object of strings) and never unescaped:
    -- `\u0000` is valid JSON a header may hold, and PostgreSQL cannot
    -- unescape it to text. (An E'' literal: the function body is parsed
    -- in the inserting session, whatever its standard_conforming_strings.)
    -- NOT VALID: rows already stored are not
    -- scanned for them; the pending and dead ones that break the
    -- envelope's rules are quarantined right after this, in the same
    -- transaction, and settled ones are never updated again. Negative
    -- attempt counts are zeroed first (one scan of the table).
    UPDATE outbox_events SET attempts = 0 WHERE attempts < 0;
    CREATE OR REPLACE FUNCTION outbox_headers_ok(h text) RETURNS boolean
        LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
        AS $$ SELECT h::json IS NOT NULL
                     AND h ~ E'^\\s*\\{\\s*(?:"(?:[^"\\\\]|\\\\.)*"\\s*:\\s*"(?:[^"\\\\]|\\\\.)*"\\s*(?:,\\s*"(?:[^"\\\\]|\\\\.)*"\\s*:\\s*"(?:[^"\\\\]|\\\\.)*"\\s*)*)?\\}\\s*$' $$;
    ALTER TABLE outbox_events
        ADD CONSTRAINT outbox_events_origin_check CHECK (octet_length(origin) BETWEEN 1 AND 256) NOT VALID,
        ADD CONSTRAINT outbox_events_key_check CHECK (octet_length(key) BETWEEN 1 AND 256) NOT VALID,
        ADD CONSTRAINT outbox_events_headers_check CHECK (headers = '{}' OR outbox_headers_ok(headers)) NOT VALID,
        ADD CONSTRAINT outbox_events_attempts_check CHECK (attempts >= 0) NOT VALID;
"#,
];

/// The outbox schema version stored in `outbox_schema` (0 when no row),
/// refused as `SchemaTooNew` when newer than this build's.
pub(crate) async fn stored_version(client: &impl GenericClient) -> Result<i32> {
    let found: i32 = client
        .query_opt("SELECT version FROM outbox_schema WHERE id = 1", &[])
        .await
        .map_err(|e| map("read the schema version", e))?
        .map_or(0, |r| r.get(0));
    if found > SCHEMA_VERSION {
        return Err(Error::SchemaTooNew { found: found as u32, supported: SCHEMA_VERSION as u32 });
    }
    Ok(found)
}

/// Brings the schema in `client`'s search path up to [`SCHEMA_VERSION`],
/// once, under an advisory lock keyed by the schema name.
pub(crate) async fn migrate(client: &mut Client, schema: &str) -> Result<()> {
    let tx = client.transaction().await.map_err(|e| map("begin migration", e))?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext('outbox:' || $1))", &[&schema])
        .await
        .map_err(|e| map("take the migration lock", e))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS outbox_schema (id int PRIMARY KEY CHECK (id = 1), version int NOT NULL)",
    )
    .await
    .map_err(|e| map("create the version table", e))?;
    let found = stored_version(&tx).await?;
    if found < 0 {
        return Err(Error::Corrupted { message: format!("schema version {found}"), source: None });
    }
    for (i, m) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.batch_execute(m).await.map_err(|e| map("migrate", e))?;
        if i + 1 == CHECKED && found > 0 {
            quarantine_stored(&tx).await?;
        }
    }
    tx.execute(
        "INSERT INTO outbox_schema (id, version) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET version = $1",
        &[&SCHEMA_VERSION],
    )
    .await
    .map_err(|e| map("record the schema version", e))?;
    tx.commit().await.map_err(|e| map("commit migration", e))
}

/// Quarantines the pending and dead rows that break the envelope's rules
/// (see `rows.rs`), for the upgrade that adds the checks: rows written
/// before it may break them, and a row breaking a check cannot be
/// updated (claimed, acked) until it is repaired.
async fn quarantine_stored(tx: &Transaction<'_>) -> Result<()> {
    let none: [&(dyn ToSql + Sync); 0] = [];
    let rows = tx
        .query_raw(
            &format!("SELECT {ENVELOPE_COLS} FROM outbox_events WHERE status IN (0, 1)"),
            none.iter().map(|p| *p as &dyn ToSql),
        )
        .await
        .map_err(|e| map("read stored events", e))?;
    let mut rows = std::pin::pin!(rows);
    let mut bad = Vec::new();
    while let Some(r) = rows.next().await {
        if let Decoded::Corrupted(q) = decode_at(&r.map_err(|e| map("read stored events", e))?, 0)? {
            bad.push(q);
        }
    }
    quarantine(tx, &bad).await
}
