//! Values to and from rows: ids, times and counts as PostgreSQL stores
//! them, and envelopes decoded from [`ENVELOPE_COLS`](crate::queries::ENVELOPE_COLS).

use outbox_core::{
    ActorId, Envelope, Error, EventId, Headers, OrderingKey, Payload, PayloadKind, Result, Timestamp,
};
use tokio_postgres::Row;
use tokio_postgres::types::FromSql;
use uuid::Uuid;

use crate::error::PgError;

/// An event id as the `uuid` column holds it.
pub(crate) fn uuid(id: EventId) -> Uuid {
    Uuid::from_bytes(id.to_bytes())
}

/// A time as the `bigint` columns hold it (milliseconds).
pub(crate) fn millis(t: Timestamp) -> i64 {
    t.as_millis()
}

/// A row limit as a `bigint` parameter.
pub(crate) fn limit_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Decodes an envelope from a row that starts with the envelope columns.
pub(crate) fn envelope(r: &Row) -> Result<Envelope> {
    envelope_at(r, 0)
}

/// Column `i` of `r`, `Corrupted` if it does not decode.
fn column<'a, T: FromSql<'a>>(r: &'a Row, i: usize, what: &'static str) -> Result<T> {
    r.try_get(i).map_err(|source| PgError::Decode { what, source }.into())
}

/// Decodes the envelope columns starting at column `at`.
pub(crate) fn envelope_at(r: &Row, at: usize) -> Result<Envelope> {
    let bad = |what: &str| Error::Corrupted { message: format!("postgres outbox row: {what}"), source: None };
    let id: Uuid = column(r, at, "id")?;
    let headers: Headers = serde_json::from_str(&column::<String>(r, at + 6, "headers")?)
        .map_err(|e| Error::corrupted("stored headers", e))?;
    Ok(Envelope {
        id: EventId::from_bytes(*id.as_bytes()),
        origin: ActorId::new(column::<String>(r, at + 1, "origin")?).map_err(|_| bad("origin"))?,
        key: OrderingKey::new(column::<String>(r, at + 2, "key")?).map_err(|_| bad("key"))?,
        event_type: column(r, at + 3, "event_type")?,
        payload: Payload::from_stored(
            PayloadKind::parse(&column::<String>(r, at + 4, "payload_kind")?)?,
            column(r, at + 5, "payload")?,
        )?,
        headers,
        schema_version: column::<i32>(r, at + 7, "schema_version")? as u32,
        created_at: Timestamp::from_millis(column(r, at + 8, "created_at")?),
        attempts: column::<i32>(r, at + 9, "attempts")? as u32,
        next_attempt_at: Timestamp::from_millis(column(r, at + 10, "next_attempt_at")?),
        last_error: column(r, at + 11, "last_error")?,
    })
}
