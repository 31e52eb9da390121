//! Events: what an application hands to a commit ([`NewEvent`]) and what a
//! store hands back for delivery ([`Envelope`]).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::id::{ActorId, EventId, OrderingKey};
use crate::retry::SplitMix64;
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

    /// The trace context set on the event (its [`TRACEPARENT`] header), if
    /// it has a well-formed one.
    pub fn trace_parent(&self) -> Option<TraceParent> {
        TraceParent::from_headers(&self.headers)
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

    /// The trace context committed with the event (its [`TRACEPARENT`]
    /// header), if it has a well-formed one.
    pub fn trace_parent(&self) -> Option<TraceParent> {
        TraceParent::from_headers(&self.headers)
    }
}

/// The header that carries an event's W3C trace context
/// (`00-<trace id>-<span id>-<flags>`, see [`TraceParent`]).
pub const TRACEPARENT: &str = "traceparent";

/// A W3C Trace Context `traceparent`: the trace an event belongs to and the
/// span it continues, as carried in the [`TRACEPARENT`] header.
///
/// Only version `00` is read, strictly: 55 characters, lowercase hex,
/// non-zero ids. Anything else is not a trace context (a malformed header
/// is ignored; whoever reads it starts a new trace instead).
///
/// The outbox stamps each event at commit with a *child* of the trace
/// current where the work started ([`TraceParent::current`]): same trace
/// id, a new span id for the event. The forwarder's publish span and a
/// consumer's span are children of the event's.
///
/// ```
/// use outbox_core::event::TraceParent;
///
/// let parent = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
/// let child = parent.child();
/// assert_eq!(child.trace_id(), parent.trace_id());
/// assert_ne!(child.span_id(), parent.span_id());
/// assert_eq!(child.to_string().len(), 55);
/// assert!(TraceParent::parse("00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01").is_none());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
}

thread_local! {
    /// The trace context of the future being polled on this thread (see
    /// [`TraceParent::scope`]).
    static CURRENT_TRACE: Cell<Option<TraceParent>> = const { Cell::new(None) };
    /// Random span and trace ids: a SplitMix64 per thread, seeded once
    /// from a UUID v7's random bits (no clock reads after that; works on
    /// wasm32).
    static TRACE_IDS: Cell<Option<SplitMix64>> = const { Cell::new(None) };
}

fn seeded() -> SplitMix64 {
    let (hi, lo) = uuid::Uuid::now_v7().as_u64_pair();
    SplitMix64::new(SplitMix64::new(hi).next_u64() ^ lo)
}

/// 64 random bits for an id (never zero).
fn random_id_bits() -> u64 {
    let draw = |rng: &mut SplitMix64| loop {
        let v = rng.next_u64();
        if v != 0 {
            break v;
        }
    };
    TRACE_IDS
        .try_with(|cell| {
            let mut rng = cell.take().unwrap_or_else(seeded);
            let v = draw(&mut rng);
            cell.set(Some(rng));
            v
        })
        // The thread is being torn down: a one-off generator.
        .unwrap_or_else(|_| draw(&mut seeded()))
}

fn hex_into(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
}

/// Lowercase hex only (W3C: uppercase is invalid).
fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = digit(s[2 * i])? << 4 | digit(s[2 * i + 1])?;
    }
    Some(out)
}

/// Puts back the trace context that was current before a poll.
struct RestoreTrace(Option<TraceParent>);

impl Drop for RestoreTrace {
    fn drop(&mut self) {
        let prev = self.0;
        let _ = CURRENT_TRACE.try_with(|c| c.set(prev));
    }
}

impl TraceParent {
    /// The `sampled` flag.
    pub const SAMPLED: u8 = 0x01;

    /// A trace context from its parts; `None` if either id is all zeros
    /// (invalid in W3C Trace Context).
    pub fn from_parts(trace_id: [u8; 16], span_id: [u8; 8], flags: u8) -> Option<Self> {
        (trace_id != [0; 16] && span_id != [0; 8]).then_some(TraceParent { trace_id, span_id, flags })
    }

    /// Parses a `traceparent` value: version `00`, lowercase hex,
    /// non-zero ids, nothing more or less. `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.split('-');
        let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || version != "00" {
            return None;
        }
        let [flags] = parse_hex::<1>(flags)?;
        Self::from_parts(parse_hex(trace)?, parse_hex(span)?, flags)
    }

    /// The trace context in `headers` ([`TRACEPARENT`]), if well-formed.
    pub fn from_headers(headers: &Headers) -> Option<Self> {
        headers.get(TRACEPARENT).and_then(|v| Self::parse(v))
    }

    /// A new trace (random trace and span ids), sampled.
    pub fn new_trace() -> Self {
        let (a, b, c) = (random_id_bits(), random_id_bits(), random_id_bits());
        let mut trace_id = [0u8; 16];
        trace_id[..8].copy_from_slice(&a.to_be_bytes());
        trace_id[8..].copy_from_slice(&b.to_be_bytes());
        TraceParent { trace_id, span_id: c.to_be_bytes(), flags: Self::SAMPLED }
    }

    /// A child: the same trace (and flags), a new random span id.
    pub fn child(&self) -> Self {
        TraceParent { span_id: random_id_bits().to_be_bytes(), ..*self }
    }

    /// The 16-byte trace id.
    pub fn trace_id(&self) -> [u8; 16] {
        self.trace_id
    }

    /// The 8-byte span (parent) id.
    pub fn span_id(&self) -> [u8; 8] {
        self.span_id
    }

    /// The trace flags ([`TraceParent::SAMPLED`]).
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        let mut s = String::with_capacity(32);
        hex_into(&mut s, &self.trace_id);
        s
    }

    /// The span id as 16 lowercase hex digits.
    pub fn span_id_hex(&self) -> String {
        let mut s = String::with_capacity(16);
        hex_into(&mut s, &self.span_id);
        s
    }

    /// Gives `event` a [`TRACEPARENT`] header with a child of this
    /// context, unless it already has one (an application's own is kept
    /// as it is). Returns whether it stamped the event.
    pub fn stamp(&self, event: &mut NewEvent) -> bool {
        if event.headers.contains_key(TRACEPARENT) {
            return false;
        }
        event.headers.insert(TRACEPARENT.to_owned(), self.child().to_string());
        true
    }

    /// The trace context of the work running on this thread: set by
    /// [`TraceParent::scope`] (the `outbox` facade's `trace::in_trace`, an
    /// actor handling a message, a consumer handling an event).
    pub fn current() -> Option<Self> {
        CURRENT_TRACE.try_with(Cell::get).ok().flatten()
    }

    /// Runs `fut` with this as the [current](TraceParent::current) trace
    /// context: it is set while `fut` is polled, whatever the executor or
    /// thread (a task-local, without a runtime). Tasks `fut` spawns do not
    /// inherit it.
    pub async fn scope<F: Future>(self, fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        std::future::poll_fn(move |cx| {
            let _restore = RestoreTrace(CURRENT_TRACE.with(|c| c.replace(Some(self))));
            fut.as_mut().poll(cx)
        })
        .await
    }
}

impl fmt::Display for TraceParent {
    /// `00-<32 hex>-<16 hex>-<2 hex>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::with_capacity(55);
        s.push_str("00-");
        hex_into(&mut s, &self.trace_id);
        s.push('-');
        hex_into(&mut s, &self.span_id);
        s.push('-');
        hex_into(&mut s, &[self.flags]);
        f.write_str(&s)
    }
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceParent({self})")
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

    const W3C: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_round_trips() {
        let t = TraceParent::parse(W3C).unwrap();
        assert_eq!(t.to_string(), W3C);
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.span_id_hex(), "00f067aa0ba902b7");
        assert_eq!(t.flags(), TraceParent::SAMPLED);
        assert_eq!(t.trace_id()[0], 0x4b);
        let unsampled =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert_eq!(unsampled.flags(), 0);
        assert_eq!(unsampled.child().flags(), 0, "a child keeps the flags");
    }

    #[test]
    fn traceparent_parsing_is_strict() {
        for bad in [
            "",
            "00",
            // uppercase hex
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            // other versions, including the forbidden ff
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // zero ids
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // wrong lengths, extra fields, stray characters
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
        assert_eq!(TraceParent::from_parts([0; 16], [1; 8], 1), None);
        assert_eq!(TraceParent::from_parts([1; 16], [0; 8], 1), None);
    }

    #[test]
    fn new_traces_and_children_have_fresh_valid_ids() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let t = TraceParent::new_trace();
            assert_eq!(TraceParent::parse(&t.to_string()), Some(t), "formats what it parses");
            assert!(seen.insert(t.trace_id()), "trace ids differ");
            let c = t.child();
            assert_eq!((c.trace_id(), c.flags()), (t.trace_id(), t.flags()));
            assert_ne!(c.span_id(), t.span_id());
            assert_ne!(c.span_id(), [0; 8]);
        }
        let other = std::thread::spawn(TraceParent::new_trace).join().unwrap();
        assert!(!seen.contains(&other.trace_id()), "another thread's ids are its own");
    }

    #[test]
    fn stamp_adds_a_child_unless_the_event_has_a_traceparent() {
        let a = ActorId::new("a").unwrap();
        let parent = TraceParent::parse(W3C).unwrap();
        let mut e = NewEvent::json(a.clone(), "T", &1).unwrap();
        assert!(parent.stamp(&mut e));
        let got = e.trace_parent().unwrap();
        assert_eq!(got.trace_id(), parent.trace_id());
        assert_ne!(got.span_id(), parent.span_id());
        assert!(!TraceParent::new_trace().stamp(&mut e), "stamped once");
        assert_eq!(e.trace_parent(), Some(got));
        let mut own = NewEvent::json(a, "T", &1).unwrap().with_header(TRACEPARENT, "not a trace");
        assert!(!parent.stamp(&mut own), "the application's header is kept");
        assert_eq!(own.headers[TRACEPARENT], "not a trace");
        assert_eq!(own.trace_parent(), None);
        let env = Envelope::committed(own, Timestamp::EPOCH);
        assert_eq!(env.trace_parent(), None, "malformed: ignored");
    }

    #[test]
    fn scope_sets_the_current_trace_while_polled_only() {
        let t = TraceParent::parse(W3C).unwrap();
        assert_eq!(TraceParent::current(), None);
        let inner = TraceParent::new_trace();
        let seen = futures::executor::block_on(t.scope(async move {
            let outer = TraceParent::current();
            let nested = inner.scope(async { TraceParent::current() }).await;
            (outer, nested, TraceParent::current())
        }));
        assert_eq!(seen, (Some(t), Some(inner), Some(t)));
        assert_eq!(TraceParent::current(), None, "restored after the scope");
    }
}
