//! Row decoding and the small conversions the SQL needs.

use std::fmt;

use outbox_core::{
    ActorId, Envelope, Error, EventId, Headers, OrderingKey, Payload, PayloadKind, Result, Timestamp,
};
use rusqlite::Row;

use crate::error::corrupt;

/// The columns of `outbox_events` an [`Envelope`] is decoded from, in the
/// order [`envelope_at`] reads them.
pub(crate) const ENVELOPE_COLS: &str = "id, origin, key, event_type, payload_kind, payload, headers, \
                                        schema_version, created_at, attempts, next_attempt_at, last_error";

/// Decodes [`ENVELOPE_COLS`] starting at column 0.
pub(crate) fn envelope(r: &Row<'_>) -> rusqlite::Result<Result<Envelope>> {
    envelope_at(r, 0)
}

/// Decodes [`ENVELOPE_COLS`] starting at column `at`.
pub(crate) fn envelope_at(r: &Row<'_>, at: usize) -> rusqlite::Result<Result<Envelope>> {
    let id: Vec<u8> = r.get(at)?;
    let origin: String = r.get(at + 1)?;
    let key: String = r.get(at + 2)?;
    let event_type: String = r.get(at + 3)?;
    let kind: String = r.get(at + 4)?;
    let payload: Vec<u8> = r.get(at + 5)?;
    let headers: String = r.get(at + 6)?;
    let schema_version: i64 = r.get(at + 7)?;
    let created_at: i64 = r.get(at + 8)?;
    let attempts: i64 = r.get(at + 9)?;
    let next_attempt_at: i64 = r.get(at + 10)?;
    let last_error: Option<String> = r.get(at + 11)?;
    Ok((|| {
        let bytes: [u8; 16] = id.as_slice().try_into().map_err(|_| corrupt("event id is not 16 bytes"))?;
        let headers: Headers =
            serde_json::from_str(&headers).map_err(|e| Error::corrupted("event headers", e))?;
        Ok(Envelope {
            id: EventId::from_bytes(bytes),
            origin: ActorId::new(origin).map_err(|e| Error::corrupted("event origin", e))?,
            key: OrderingKey::new(key).map_err(|e| Error::corrupted("event key", e))?,
            event_type,
            payload: Payload::from_stored(PayloadKind::parse(&kind)?, payload)?,
            headers,
            schema_version: u32::try_from(schema_version)
                .map_err(|_| corrupt("schema version out of range"))?,
            created_at: Timestamp::from_millis(created_at),
            attempts: u32::try_from(attempts).map_err(|_| corrupt("attempts out of range"))?,
            next_attempt_at: Timestamp::from_millis(next_attempt_at),
            last_error,
        })
    })())
}

/// `[a,b,c]`: a JSON array of already-encoded items, for `json_each`.
pub(crate) fn json_list<T: fmt::Display>(items: impl Iterator<Item = T>) -> String {
    let mut s = String::from("[");
    for (i, item) in items.enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&item.to_string());
    }
    s.push(']');
    s
}

/// `v` as an SQLite integer; `InvalidInput` if it does not fit.
pub(crate) fn to_i64(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::invalid_input(format!("{what} {v} is out of range")))
}

/// A row limit as an SQLite integer (saturating).
pub(crate) fn limit_i64(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}
