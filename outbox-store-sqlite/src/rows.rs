//! Row decoding and the small conversions the SQL needs.
//!
//! An event row is read column by column as whatever SQLite holds
//! ([`RawRow`]), never through a typed getter that would fail the whole
//! statement: a row written wrongly (by another program, or before the
//! schema's `CHECK` constraints existed) is then one row that does not
//! decode ([`RawRow::decode`] says why), which the claim quarantines and
//! the listings show as it is ([`Corrupt::envelope`]), while every other
//! row keeps flowing.

use std::fmt;

use outbox_core::{
    ActorId, Envelope, Error, EventId, Headers, OrderingKey, Payload, PayloadKind, Result, Timestamp,
};
use rusqlite::Row;
use rusqlite::types::ValueRef;

/// The columns of `outbox_events` a [`RawRow`] is read from, in the order
/// [`RawRow::read`] reads them.
pub(crate) const ROW_COLS: &str = "seq, id, origin, key, event_type, payload_kind, payload, headers, \
                                   schema_version, created_at, attempts, next_attempt_at, last_error";

/// Prefix of the `last_error` of a row quarantined because it does not
/// decode.
pub(crate) const CORRUPTED: &str = "corrupted: ";

/// One stored value, as SQLite holds it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Raw {
    Null,
    Integer(i64),
    Real(f64),
    /// TEXT, as stored (not necessarily UTF-8).
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

impl Raw {
    fn from_ref(v: ValueRef<'_>) -> Raw {
        match v {
            ValueRef::Null => Raw::Null,
            ValueRef::Integer(i) => Raw::Integer(i),
            ValueRef::Real(f) => Raw::Real(f),
            ValueRef::Text(t) => Raw::Text(t.to_vec()),
            ValueRef::Blob(b) => Raw::Blob(b.to_vec()),
        }
    }

    /// The value read at column `i` of `r`, whatever its type.
    pub(crate) fn at(r: &Row<'_>, i: usize) -> rusqlite::Result<Raw> {
        Ok(Raw::from_ref(r.get_ref(i)?))
    }

    /// SQLite's name of the value's type, with its size for text and blobs.
    fn describe(&self) -> String {
        match self {
            Raw::Null => "NULL".into(),
            Raw::Integer(i) => format!("INTEGER {i}"),
            Raw::Real(f) => format!("REAL {f}"),
            Raw::Text(t) => format!("TEXT of {} bytes", t.len()),
            Raw::Blob(b) => format!("BLOB of {} bytes", b.len()),
        }
    }

    /// UTF-8 text, or why not.
    fn text(&self, column: &str) -> std::result::Result<&str, String> {
        match self {
            Raw::Text(t) => std::str::from_utf8(t).map_err(|_| format!("{column} is TEXT that is not UTF-8")),
            other => Err(format!("{column} is {}, not TEXT", other.describe())),
        }
    }

    /// An integer, or why not.
    fn integer(&self, column: &str) -> std::result::Result<i64, String> {
        match self {
            Raw::Integer(i) => Ok(*i),
            other => Err(format!("{column} is {}, not an INTEGER", other.describe())),
        }
    }

    /// The value's bytes whatever its type (numbers as their decimal text).
    fn into_bytes(self) -> Vec<u8> {
        match self {
            Raw::Null => Vec::new(),
            Raw::Integer(i) => i.to_string().into_bytes(),
            Raw::Real(f) => f.to_string().into_bytes(),
            Raw::Text(b) | Raw::Blob(b) => b,
        }
    }

    /// The value as text whatever its type (lossy).
    fn lossy(&self) -> String {
        match self {
            Raw::Null => String::new(),
            Raw::Integer(i) => i.to_string(),
            Raw::Real(f) => f.to_string(),
            Raw::Text(b) | Raw::Blob(b) => String::from_utf8_lossy(b).into_owned(),
        }
    }

    /// The value as a time or count, best effort (a REAL is truncated).
    fn lenient_integer(&self) -> Option<i64> {
        match self {
            Raw::Integer(i) => Some(*i),
            Raw::Real(f) if f.is_finite() => Some(*f as i64),
            _ => None,
        }
    }
}

/// The key a claim scan groups a row under: its key column as text
/// (lossy, for a row whose key is not text: such a row does not decode and
/// is quarantined when the claim reaches it).
pub(crate) fn scan_key(r: &Row<'_>, i: usize) -> rusqlite::Result<String> {
    Ok(match r.get_ref(i)? {
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
        other => Raw::from_ref(other).lossy(),
    })
}

/// An optional time column as a claim scan reads it: `None` unless it is
/// a number.
pub(crate) fn scan_time(r: &Row<'_>, i: usize) -> rusqlite::Result<Option<i64>> {
    Ok(Raw::from_ref(r.get_ref(i)?).lenient_integer())
}

/// The id a row whose stored id is not 16 bytes is listed under: the UUID
/// `00000000-0000-8000-8000-<seq as 12 hex digits>` (a version-8 UUID made
/// from the row's `seq`), stable for the row's life.
pub(crate) fn derived_id(seq: i64) -> EventId {
    let mut b = [0u8; 16];
    b[6] = 0x80;
    b[8] = 0x80;
    b[10..].copy_from_slice(&seq.to_be_bytes()[2..]);
    EventId::from_bytes(b)
}

/// The `seq` an id made by [`derived_id`] stands for, if it is one.
pub(crate) fn derived_seq(id: EventId) -> Option<i64> {
    let b = id.to_bytes();
    if b[..10] != [0, 0, 0, 0, 0, 0, 0x80, 0, 0x80, 0] {
        return None;
    }
    let mut s = [0u8; 8];
    s[2..].copy_from_slice(&b[10..]);
    Some(i64::from_be_bytes(s))
}

/// An event row as stored: every column of [`ROW_COLS`], whatever its type.
#[derive(Clone, Debug)]
pub(crate) struct RawRow {
    pub(crate) seq: i64,
    id: Raw,
    origin: Raw,
    key: Raw,
    event_type: Raw,
    kind: Raw,
    payload: Raw,
    headers: Raw,
    schema_version: Raw,
    created_at: Raw,
    attempts: Raw,
    next_attempt_at: Raw,
    last_error: Raw,
}

/// A row that does not decode: the row and why.
#[derive(Debug)]
pub(crate) struct Corrupt {
    pub(crate) row: RawRow,
    /// What is wrong, for people (`last_error` after [`CORRUPTED`]).
    pub(crate) reason: String,
}

impl RawRow {
    /// Reads [`ROW_COLS`] starting at column `at`; fails only if SQLite
    /// does (a value of any type is read).
    pub(crate) fn read(r: &Row<'_>, at: usize) -> rusqlite::Result<RawRow> {
        let c = |i: usize| Raw::at(r, at + i);
        Ok(RawRow {
            seq: r.get(at)?,
            id: c(1)?,
            origin: c(2)?,
            key: c(3)?,
            event_type: c(4)?,
            kind: c(5)?,
            payload: c(6)?,
            headers: c(7)?,
            schema_version: c(8)?,
            created_at: c(9)?,
            attempts: c(10)?,
            next_attempt_at: c(11)?,
            last_error: c(12)?,
        })
    }

    /// The event, if every column holds what the schema says; otherwise the
    /// row and the first thing wrong with it.
    pub(crate) fn decode(self) -> std::result::Result<Envelope, Box<Corrupt>> {
        match self.check() {
            Ok(checked) => Ok(self.build(checked)),
            Err(reason) => Err(Box::new(Corrupt { reason: self.explain(reason), row: self })),
        }
    }

    /// `reason`, plus, when the id is not 16 bytes, the id the row is
    /// listed under.
    fn explain(&self, reason: String) -> String {
        if self.stored_id().is_some() {
            return reason;
        }
        format!("{reason} (listed as {}, an id derived from seq {})", derived_id(self.seq), self.seq)
    }

    fn stored_id(&self) -> Option<EventId> {
        match &self.id {
            Raw::Blob(b) => <[u8; 16]>::try_from(b.as_slice()).ok().map(EventId::from_bytes),
            _ => None,
        }
    }

    fn check(&self) -> std::result::Result<Checked, String> {
        let id =
            self.stored_id().ok_or_else(|| format!("id is {}, not a 16-byte BLOB", self.id.describe()))?;
        let origin = ActorId::new(self.origin.text("origin")?).map_err(|e| format!("origin: {e}"))?;
        let key = OrderingKey::new(self.key.text("key")?).map_err(|e| format!("key: {e}"))?;
        let event_type = self.event_type.text("event_type")?.to_owned();
        let kind = PayloadKind::parse(self.kind.text("payload_kind")?).map_err(|e| e.to_string())?;
        // A JSON payload is checked (on a copy, so a row that fails keeps
        // its bytes); bytes are taken as they are.
        let payload = match &self.payload {
            Raw::Blob(b) if kind == PayloadKind::Json => Some(
                Payload::from_stored(kind, b.clone()).map_err(|_| "payload is not JSON text".to_owned())?,
            ),
            Raw::Blob(_) => None,
            other => return Err(format!("payload is {}, not a BLOB", other.describe())),
        };
        let headers: Headers = serde_json::from_str(self.headers.text("headers")?)
            .map_err(|e| format!("headers are not a JSON object of strings: {e}"))?;
        let schema_version = u32::try_from(self.schema_version.integer("schema_version")?)
            .map_err(|_| "schema_version is out of range".to_owned())?;
        let created_at = self.created_at.integer("created_at")?;
        let attempts = u32::try_from(self.attempts.integer("attempts")?)
            .map_err(|_| "attempts is out of range".to_owned())?;
        let next_attempt_at = self.next_attempt_at.integer("next_attempt_at")?;
        Ok(Checked {
            id,
            origin,
            key,
            event_type,
            payload,
            headers,
            schema_version,
            created_at,
            attempts,
            next_attempt_at,
        })
    }

    fn last_error(&self) -> Option<String> {
        match &self.last_error {
            Raw::Null => None,
            other => Some(other.lossy()),
        }
    }

    fn build(self, c: Checked) -> Envelope {
        let last_error = self.last_error();
        Envelope {
            id: c.id,
            origin: c.origin,
            key: c.key,
            event_type: c.event_type,
            payload: c.payload.unwrap_or_else(|| Payload::bytes(self.payload.into_bytes())),
            headers: c.headers,
            schema_version: c.schema_version,
            created_at: Timestamp::from_millis(c.created_at),
            attempts: c.attempts,
            next_attempt_at: Timestamp::from_millis(c.next_attempt_at),
            last_error,
        }
    }
}

impl Corrupt {
    /// The row as well as it can be shown: its id (or [`derived_id`]),
    /// the payload's raw bytes as [`Payload::bytes`], what decodes of the
    /// rest, and in `last_error` why it is corrupted.
    pub(crate) fn envelope(self) -> Result<Envelope> {
        let Corrupt { row, reason } = self;
        let stored = row.last_error();
        let last_error = match stored {
            Some(e) if e.starts_with(CORRUPTED) => e,
            Some(e) => format!("{CORRUPTED}{reason}; last error: {e}"),
            None => format!("{CORRUPTED}{reason}"),
        };
        let headers = row.headers.text("headers").ok().and_then(|h| serde_json::from_str(h).ok());
        Ok(Envelope {
            id: row.stored_id().unwrap_or_else(|| derived_id(row.seq)),
            origin: lenient_actor(&row.origin.lossy())?,
            key: lenient_key(&row.key.lossy())?,
            event_type: row.event_type.lossy(),
            payload: Payload::bytes(row.payload.into_bytes()),
            headers: headers.unwrap_or_default(),
            schema_version: row
                .schema_version
                .lenient_integer()
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(0),
            created_at: Timestamp::from_millis(row.created_at.lenient_integer().unwrap_or(0)),
            attempts: row.attempts.lenient_integer().and_then(|v| u32::try_from(v).ok()).unwrap_or(0),
            next_attempt_at: Timestamp::from_millis(row.next_attempt_at.lenient_integer().unwrap_or(0)),
            last_error: Some(last_error),
        })
    }
}

/// What [`RawRow::check`] parsed.
struct Checked {
    id: EventId,
    origin: ActorId,
    key: OrderingKey,
    event_type: String,
    /// The checked JSON payload; `None` for bytes (taken from the row).
    payload: Option<Payload>,
    headers: Headers,
    schema_version: u32,
    created_at: i64,
    attempts: u32,
    next_attempt_at: i64,
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `s` for an id of a listing: cut to `max` bytes, `corrupted` if empty.
fn listable(s: &str, max: usize) -> &str {
    match truncate(s, max) {
        "" => "corrupted",
        t => t,
    }
}

/// An actor id for a listing (see [`listable`]).
fn lenient_actor(s: &str) -> Result<ActorId> {
    ActorId::new(listable(s, ActorId::MAX_LEN))
}

/// An ordering key for a listing (see [`listable`]).
fn lenient_key(s: &str) -> Result<OrderingKey> {
    OrderingKey::new(listable(s, OrderingKey::MAX_LEN))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_round_trip_and_do_not_match_real_ones() {
        for seq in [0, 1, 42, (1 << 48) - 1] {
            assert_eq!(derived_seq(derived_id(seq)), Some(seq));
        }
        assert_eq!(derived_id(42).to_string(), "00000000-0000-8000-8000-00000000002a");
        assert_eq!(derived_seq(EventId::new()), None);
    }
}
