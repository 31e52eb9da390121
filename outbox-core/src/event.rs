//! Events: what an application hands to a commit ([`NewEvent`]) and what a
//! store hands back for delivery ([`Envelope`]).

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::id::{ActorId, EventId, OrderingKey};
use crate::time::Timestamp;

/// How a [`Payload`]'s bytes are encoded.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum PayloadKind {
    /// UTF-8 JSON text.
    Json,
    /// Opaque bytes.
    Bytes,
}

impl PayloadKind {
    /// The name stores write to their `payload_kind` column: `"json"` or
    /// `"bytes"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            PayloadKind::Json => "json",
            PayloadKind::Bytes => "bytes",
        }
    }

    /// Parses [`PayloadKind::as_str`]; anything else is
    /// [`Error::Corrupted`] (it came from a store).
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "json" => Ok(PayloadKind::Json),
            "bytes" => Ok(PayloadKind::Bytes),
            other => {
                Err(Error::Corrupted { message: format!("unknown payload kind \"{other}\""), source: None })
            }
        }
    }
}

/// An event's body, already encoded.
///
/// JSON payloads are serialized when the event is made, so a value that
/// cannot be serialized is reported to the caller before any commit starts,
/// and stores and sinks move bytes without re-encoding.
#[derive(Clone, PartialEq, Eq)]
pub struct Payload {
    kind: PayloadKind,
    bytes: Vec<u8>,
}

impl Payload {
    /// Serializes `value` as JSON. A value serde cannot serialize (a map
    /// with non-string keys, a failing `Serialize` impl) is
    /// [`Error::Serialization`].
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self> {
        Ok(Payload { kind: PayloadKind::Json, bytes: serde_json::to_vec(value)? })
    }

    /// Opaque bytes.
    pub fn bytes(bytes: impl Into<Vec<u8>>) -> Self {
        Payload { kind: PayloadKind::Bytes, bytes: bytes.into() }
    }

    /// Rebuilds a payload read back from a store. JSON text is checked to
    /// be valid UTF-8 JSON; a payload that is not is [`Error::Corrupted`].
    pub fn from_stored(kind: PayloadKind, bytes: Vec<u8>) -> Result<Self> {
        if kind == PayloadKind::Json && !crate::json::is_json(&bytes) {
            return Err(Error::Corrupted {
                message: "stored JSON payload does not parse".into(),
                source: None,
            });
        }
        Ok(Payload { kind, bytes })
    }

    /// The encoding.
    pub fn kind(&self) -> PayloadKind {
        self.kind
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The encoded bytes, by value.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// Decodes a JSON payload into `T` ([`Error::Serialization`] if it does
    /// not fit, or if the payload is not JSON).
    pub fn decode_json<T: DeserializeOwned>(&self) -> Result<T> {
        if self.kind != PayloadKind::Json {
            return Err(Error::Serialization { message: "payload is bytes, not JSON".into(), source: None });
        }
        Ok(serde_json::from_slice(&self.bytes)?)
    }

    /// The encoded length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the payload has no bytes.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            PayloadKind::Json => match std::str::from_utf8(&self.bytes) {
                Ok(s) if s.len() <= 200 => write!(f, "Json({s})"),
                _ => write!(f, "Json({} bytes)", self.bytes.len()),
            },
            PayloadKind::Bytes => write!(f, "Bytes({} bytes)", self.bytes.len()),
        }
    }
}

/// Event headers: small string pairs carried to the sink (trace ids,
/// content hints). Sorted, so stores encode them the same way each time.
pub type Headers = BTreeMap<String, String>;

/// An event as an application makes it, before it is committed.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NewEvent {
    /// The id (UUID v7), made when the event is made so the application
    /// knows it before the commit.
    pub id: EventId,
    /// The actor that emits it.
    pub origin: ActorId,
    /// The ordering key; defaults to the origin.
    pub key: OrderingKey,
    /// The event type, e.g. `"FORM_SAVED"`; sinks route on it.
    pub event_type: String,
    /// The body.
    pub payload: Payload,
    /// Headers.
    pub headers: Headers,
    /// The version of the payload's schema, for consumers that upgrade.
    pub schema_version: u32,
    /// Deliver no earlier than this (a delayed event); `None` delivers as
    /// soon as it is committed.
    pub not_before: Option<Timestamp>,
}

impl NewEvent {
    /// An event with a payload already made.
    pub fn new(origin: ActorId, event_type: impl Into<String>, payload: Payload) -> Self {
        NewEvent {
            id: EventId::new(),
            key: OrderingKey::from(&origin),
            origin,
            event_type: event_type.into(),
            payload,
            headers: Headers::new(),
            schema_version: 1,
            not_before: None,
        }
    }

    /// An event whose payload is `value` as JSON.
    pub fn json<T: Serialize + ?Sized>(
        origin: ActorId,
        event_type: impl Into<String>,
        value: &T,
    ) -> Result<Self> {
        Ok(Self::new(origin, event_type, Payload::json(value)?))
    }

    /// Sets the ordering key.
    pub fn with_key(mut self, key: OrderingKey) -> Self {
        self.key = key;
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Sets the payload schema version.
    pub fn with_schema_version(mut self, v: u32) -> Self {
        self.schema_version = v;
        self
    }

    /// Delays delivery until `at`.
    pub fn not_before(mut self, at: Timestamp) -> Self {
        self.not_before = Some(at);
        self
    }

    /// Sets the id (for replaying events made elsewhere; ids must stay
    /// unique per store, or the commit fails with
    /// [`Error::DuplicateEvent`]).
    pub fn with_id(mut self, id: EventId) -> Self {
        self.id = id;
        self
    }
}

/// A committed event as a store keeps it and hands it to the forwarder.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Envelope {
    /// The id; with `origin`, the idempotency key.
    pub id: EventId,
    /// The actor that emitted it.
    pub origin: ActorId,
    /// Events of one key are delivered in commit order.
    pub key: OrderingKey,
    /// The event type.
    pub event_type: String,
    /// The body.
    pub payload: Payload,
    /// Headers.
    pub headers: Headers,
    /// The payload schema version.
    pub schema_version: u32,
    /// When it was committed, by the store's clock.
    pub created_at: Timestamp,
    /// Delivery attempts started so far (a claim counts as one).
    pub attempts: u32,
    /// When it is next due for delivery.
    pub next_attempt_at: Timestamp,
    /// The error of the last failed attempt, if any.
    pub last_error: Option<String>,
}

impl Envelope {
    /// The envelope a store keeps for `event`, committed at `now`.
    pub fn committed(event: NewEvent, now: Timestamp) -> Self {
        Envelope {
            id: event.id,
            origin: event.origin,
            key: event.key,
            event_type: event.event_type,
            payload: event.payload,
            headers: event.headers,
            schema_version: event.schema_version,
            created_at: now,
            attempts: 0,
            next_attempt_at: event.not_before.map_or(now, |t| t.max(now)),
            last_error: None,
        }
    }

    /// The idempotency key consumers deduplicate on: (origin, id).
    pub fn idempotency_key(&self) -> (&ActorId, EventId) {
        (&self.origin, self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn unserializable_payload_is_a_serialization_error() {
        let mut m: HashMap<Vec<u8>, u8> = HashMap::new();
        m.insert(vec![1], 1);
        let err = Payload::json(&m).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Serialization);
    }

    #[test]
    fn json_payload_round_trips_and_bytes_refuse_json_decode() {
        let p = Payload::json(&serde_json::json!({"a": 1})).unwrap();
        let back: serde_json::Value = p.decode_json().unwrap();
        assert_eq!(back["a"], 1);
        let b = Payload::bytes(vec![1, 2, 3]);
        assert_eq!(b.decode_json::<u8>().unwrap_err().kind(), crate::ErrorKind::Serialization);
        assert_eq!(
            Payload::from_stored(PayloadKind::Json, b"{nope".to_vec()).unwrap_err().kind(),
            crate::ErrorKind::Corrupted
        );
        assert_eq!(PayloadKind::parse("xml").unwrap_err().kind(), crate::ErrorKind::Corrupted);
    }

    #[test]
    fn key_defaults_to_origin_and_not_before_is_never_in_the_past() {
        let a = ActorId::new("a").unwrap();
        let e = NewEvent::json(a.clone(), "T", &1).unwrap();
        assert_eq!(e.key.as_str(), "a");
        let env =
            Envelope::committed(e.clone().not_before(Timestamp::from_millis(5)), Timestamp::from_millis(10));
        assert_eq!(env.next_attempt_at.as_millis(), 10);
        let env = Envelope::committed(e.not_before(Timestamp::from_millis(50)), Timestamp::from_millis(10));
        assert_eq!(env.next_attempt_at.as_millis(), 50);
        assert_eq!(env.created_at.as_millis(), 10);
    }
}
