//! Values to and from rows: ids, times and counts as PostgreSQL stores
//! them, and envelopes decoded from [`ENVELOPE_COLS`](crate::queries::ENVELOPE_COLS).
//!
//! A row whose columns have their types but whose values break the
//! envelope's rules (headers that are not a JSON object of strings, a
//! payload marked `json` that is not JSON, an empty or oversized origin or
//! key: mistakes a writer in another language can make) decodes to a
//! [`Quarantine`]: the envelope it is stored as once it is moved to the
//! dead letters, every broken value replaced and its raw text or bytes
//! kept. A column whose type does not decode at all (a table altered
//! behind the store's back) fails every row alike, so it is an error
//! (`Corrupted`) instead.

use outbox_core::{
    ActorId, Envelope, EventId, Headers, OrderingKey, Payload, PayloadKind, Result, Timestamp,
};
use tokio_postgres::types::FromSql;
use tokio_postgres::{Row, Transaction};
use uuid::Uuid;

use crate::error::{PgError, map};
use crate::queries::SQL_QUARANTINE;

/// The origin and ordering key a quarantined row gets when its own are not
/// valid ids.
pub(crate) const CORRUPTED_ID: &str = "outbox.corrupted";
/// Header keeping a quarantined row's raw origin (when it was not a valid
/// actor id).
pub(crate) const RAW_ORIGIN: &str = "outbox.corrupted.origin";
/// Header keeping a quarantined row's raw ordering key.
pub(crate) const RAW_KEY: &str = "outbox.corrupted.key";
/// Header keeping a quarantined row's raw `headers` text (when it was not
/// a JSON object of strings).
pub(crate) const RAW_HEADERS: &str = "outbox.corrupted.headers";
/// Header keeping a quarantined row's `payload_kind` (when its payload,
/// kept as it was, is now marked `bytes`).
pub(crate) const RAW_PAYLOAD_KIND: &str = "outbox.corrupted.payload_kind";

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

/// Column `i` of `r`, `Corrupted` if it does not decode.
fn column<'a, T: FromSql<'a>>(r: &'a Row, i: usize, what: &'static str) -> Result<T> {
    r.try_get(i).map_err(|source| PgError::Decode { what, source }.into())
}

/// An events row, decoded.
pub(crate) enum Decoded {
    /// A valid envelope.
    Event(Envelope),
    /// A row that breaks the envelope's rules.
    Corrupted(Box<Quarantine>),
}

impl Decoded {
    /// The envelope: the row's, or the one its quarantine stores (for
    /// listing a row before its quarantine).
    pub(crate) fn envelope(self) -> Envelope {
        match self {
            Decoded::Event(e) => e,
            Decoded::Corrupted(q) => q.envelope,
        }
    }
}

/// A row that breaks the envelope's rules, as its quarantine stores it: a
/// dead letter whose `last_error` is `corrupted: ` and what is wrong, with
/// a valid origin, key, payload kind and headers, and the raw values
/// kept (the payload's bytes as they were, marked `bytes`; the raw origin,
/// key, headers text and payload kind in the `outbox.corrupted.*`
/// headers).
pub(crate) struct Quarantine {
    /// The envelope stored instead.
    pub(crate) envelope: Envelope,
    /// Its headers as the `headers` column holds them.
    pub(crate) headers: String,
}

/// Decodes the envelope columns starting at column `at`.
pub(crate) fn decode_at(r: &Row, at: usize) -> Result<Decoded> {
    let id: Uuid = column(r, at, "id")?;
    let origin: String = column(r, at + 1, "origin")?;
    let key: String = column(r, at + 2, "key")?;
    let kind: String = column(r, at + 4, "payload_kind")?;
    let payload: Vec<u8> = column(r, at + 5, "payload")?;
    let headers_text: String = column(r, at + 6, "headers")?;
    let mut problems: Vec<String> = Vec::new();
    let mut raw = Headers::new();
    let mut headers = match serde_json::from_str::<Headers>(&headers_text) {
        Ok(h) => h,
        Err(e) => {
            problems.push(format!("headers are not a JSON object of strings ({e})"));
            raw.insert(RAW_HEADERS.into(), headers_text);
            Headers::new()
        }
    };
    let origin = match ActorId::new(origin.as_str()) {
        Ok(o) => o,
        Err(_) => {
            problems.push(format!("origin is {} bytes, not 1 to {}", origin.len(), ActorId::MAX_LEN));
            raw.insert(RAW_ORIGIN.into(), origin);
            ActorId::new(CORRUPTED_ID)?
        }
    };
    let key = match OrderingKey::new(key.as_str()) {
        Ok(k) => k,
        Err(_) => {
            problems.push(format!("key is {} bytes, not 1 to {}", key.len(), OrderingKey::MAX_LEN));
            raw.insert(RAW_KEY.into(), key);
            OrderingKey::new(CORRUPTED_ID)?
        }
    };
    let payload = match PayloadKind::parse(&kind) {
        Ok(k) => match Payload::from_stored(k, payload) {
            Ok(p) => p,
            Err(_) => {
                problems.push(format!("payload marked {kind} is not {kind}"));
                raw.insert(RAW_PAYLOAD_KIND.into(), kind);
                // Read again: `from_stored` took the bytes (copied only
                // on this path).
                Payload::bytes(column::<Vec<u8>>(r, at + 5, "payload")?)
            }
        },
        Err(_) => {
            problems.push(format!("payload kind {kind:?} is unknown"));
            raw.insert(RAW_PAYLOAD_KIND.into(), kind);
            Payload::bytes(payload)
        }
    };
    let mut envelope = Envelope {
        id: EventId::from_bytes(*id.as_bytes()),
        origin,
        key,
        event_type: column(r, at + 3, "event_type")?,
        payload,
        headers: Headers::new(),
        schema_version: column::<i32>(r, at + 7, "schema_version")? as u32,
        created_at: Timestamp::from_millis(column(r, at + 8, "created_at")?),
        attempts: column::<i32>(r, at + 9, "attempts")? as u32,
        next_attempt_at: Timestamp::from_millis(column(r, at + 10, "next_attempt_at")?),
        last_error: column(r, at + 11, "last_error")?,
    };
    if problems.is_empty() {
        envelope.headers = headers;
        return Ok(Decoded::Event(envelope));
    }
    headers.extend(raw);
    let text = serde_json::to_string(&headers)?;
    envelope.headers = headers;
    envelope.last_error = Some(format!("corrupted: {}", problems.join("; ")));
    Ok(Decoded::Corrupted(Box::new(Quarantine { envelope, headers: text })))
}

/// Moves `rows` to the dead letters as their quarantine stores them
/// (pipelined, in `tx`).
pub(crate) async fn quarantine(tx: &Transaction<'_>, rows: &[Box<Quarantine>]) -> Result<()> {
    let updates = rows.iter().map(|q| {
        let e = &q.envelope;
        tracing::warn!(
            target: "outbox",
            id = %e.id,
            reason = e.last_error.as_deref().unwrap_or_default(),
            "outbox: postgres row quarantined to the dead letters"
        );
        async move {
            tx.execute(
                SQL_QUARANTINE,
                &[
                    &uuid(e.id),
                    &e.origin.as_str(),
                    &e.key.as_str(),
                    &e.payload.kind().as_str(),
                    &q.headers,
                    &e.last_error,
                ],
            )
            .await
        }
    });
    for r in futures::future::join_all(updates).await {
        r.map_err(|e| map("quarantine", e))?;
    }
    Ok(())
}

/// A commit's events as the events insert's column arrays, encoded before
/// any transaction opens (the store's own commit and an enlisted one use
/// the same insert).
pub(crate) struct EventColumns<'a> {
    pub(crate) ids: Vec<Uuid>,
    origins: Vec<&'a str>,
    keys: Vec<&'a str>,
    types: Vec<&'a str>,
    kinds: Vec<&'a str>,
    payloads: Vec<&'a [u8]>,
    headers: Vec<String>,
    versions: Vec<i32>,
    at: i64,
    due: Vec<i64>,
}

impl<'a> EventColumns<'a> {
    /// The columns of `events` committed at `at` (milliseconds).
    pub(crate) fn of(events: &'a [outbox_core::NewEvent], at: i64) -> Result<Self> {
        Ok(EventColumns {
            ids: events.iter().map(|e| uuid(e.id)).collect(),
            origins: events.iter().map(|e| e.origin.as_str()).collect(),
            keys: events.iter().map(|e| e.key.as_str()).collect(),
            types: events.iter().map(|e| e.event_type.as_str()).collect(),
            kinds: events.iter().map(|e| e.payload.kind().as_str()).collect(),
            payloads: events.iter().map(|e| e.payload.as_bytes()).collect(),
            headers: events
                .iter()
                .map(|e| serde_json::to_string(&e.headers))
                .collect::<std::result::Result<Vec<_>, _>>()?,
            versions: events.iter().map(|e| e.schema_version as i32).collect(),
            at,
            due: events.iter().map(|e| e.not_before.map_or(at, |t| millis(t).max(at))).collect(),
        })
    }

    /// The insert's first ten parameters: ids, origins, keys, types,
    /// payload kinds, payloads, headers, schema versions, the commit time
    /// and the due times.
    pub(crate) fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 10] {
        [
            &self.ids,
            &self.origins,
            &self.keys,
            &self.types,
            &self.kinds,
            &self.payloads,
            &self.headers,
            &self.versions,
            &self.at,
            &self.due,
        ]
    }
}
