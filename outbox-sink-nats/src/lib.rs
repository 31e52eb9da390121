#![doc = include_str!("../README.md")]

use std::error::Error as StdError;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::header::{HeaderName, HeaderValue};
use async_nats::jetstream::context::{Context, ContextBuilder, PublishError, PublishErrorKind};
use async_nats::jetstream::{self, message::PublishMessage, stream};
use bytes::Bytes;
use outbox_core::{Envelope, Error, PayloadKind, Result, async_trait};
use outbox_core::{Outcome, Sink};

/// The header carrying the event id; JetStream drops a publish whose id
/// it has seen inside the stream's duplicate window.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// The header carrying the emitting actor (with the id, the idempotency key).
pub const ORIGIN: &str = "Outbox-Origin";
/// The header carrying the ordering key.
pub const KEY: &str = "Outbox-Key";
/// The header carrying the event type.
pub const EVENT_TYPE: &str = "Outbox-Type";
/// The header carrying the payload schema version.
pub const SCHEMA_VERSION: &str = "Outbox-Schema-Version";
/// The header carrying the commit time, in milliseconds since the epoch.
pub const CREATED_AT: &str = "Outbox-Created-At";

/// JetStream API error codes that no retry can fix: the message is larger
/// than the stream accepts (10054), or its subject is not one the stream
/// may store (10055, 10056, 10074).
const PERMANENT_API_ERRORS: [u64; 4] = [10054, 10055, 10056, 10074];

/// How an event's subject is chosen.
#[derive(Clone)]
pub enum Subjects {
    /// `<prefix>.<event type>`, the event type's characters that a subject
    /// cannot hold (whitespace, `*`, `>`, empty tokens) replaced by `_`.
    Prefix(String),
    /// One subject for every event.
    Fixed(String),
    /// Your function; a subject it returns that is not a valid publish
    /// subject dead-letters the event.
    Custom(Arc<dyn Fn(&Envelope) -> String + Send + Sync>),
}

impl fmt::Debug for Subjects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subjects::Prefix(p) => f.debug_tuple("Prefix").field(p).finish(),
            Subjects::Fixed(s) => f.debug_tuple("Fixed").field(s).finish(),
            Subjects::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

impl Subjects {
    /// The subject `e` is published to.
    pub fn subject(&self, e: &Envelope) -> String {
        match self {
            Subjects::Prefix(p) => {
                let mut s = String::with_capacity(p.len() + 1 + e.event_type.len());
                s.push_str(p);
                for token in e.event_type.split('.') {
                    s.push('.');
                    if token.is_empty() {
                        s.push('_');
                    }
                    s.extend(
                        token
                            .chars()
                            .map(|c| if c.is_whitespace() || c == '*' || c == '>' { '_' } else { c }),
                    );
                }
                s
            }
            Subjects::Fixed(s) => s.clone(),
            Subjects::Custom(f) => f(e),
        }
    }
}

/// Whether `s` is a subject a message may be published to: non-empty
/// dot-separated tokens without whitespace or wildcards.
pub fn is_valid_subject(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|t| !t.is_empty() && t != "*" && t != ">" && !t.chars().any(char::is_whitespace))
}

/// Settings of a [`NatsSink`].
#[derive(Clone, Debug)]
pub struct NatsSinkOptions {
    /// Subject choice; default `Prefix("outbox")`.
    pub subjects: Subjects,
    /// Most publishes awaiting their ack at once (the pipeline depth);
    /// default 256.
    pub max_in_flight: usize,
    /// How long one publish waits for its ack before it counts as
    /// retriable; default 5 s.
    pub ack_timeout: Duration,
    /// The longest wait between reconnect attempts after the server went
    /// away; default 1 s.
    pub max_reconnect_delay: Duration,
}

impl Default for NatsSinkOptions {
    fn default() -> Self {
        NatsSinkOptions {
            subjects: Subjects::Prefix("outbox".into()),
            max_in_flight: 256,
            ack_timeout: Duration::from_secs(5),
            max_reconnect_delay: Duration::from_secs(1),
        }
    }
}

/// A [`Sink`] publishing to NATS JetStream.
///
/// - `Nats-Msg-Id` is the event id, so a redelivery after a crash (the
///   forwarder delivers at least once) is dropped by the broker inside the
///   stream's duplicate window; an ack saying "duplicate" counts as
///   delivered.
/// - The batch is pipelined: up to `max_in_flight` publishes are sent
///   before their acks are awaited together.
/// - Outcomes: a message the server will never take (larger than its
///   `max_payload` or the stream's limit, an invalid subject or header) is
///   `NonRetriable`; everything else (timeouts, a lost connection, no
///   stream yet for the subject, a full stream) is `Retriable`.
#[derive(Clone)]
pub struct NatsSink {
    js: Context,
    subjects: Subjects,
    max_in_flight: usize,
}

impl fmt::Debug for NatsSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSink")
            .field("subjects", &self.subjects)
            .field("max_in_flight", &self.max_in_flight)
            .finish_non_exhaustive()
    }
}

impl NatsSink {
    /// Connects to the server at `url` (`nats://host:port`). A malformed
    /// URL is `InvalidInput`, a refused or timed-out connection
    /// `Unavailable`, rejected credentials `PermissionDenied`. After the
    /// first connection the client reconnects by itself, waiting at most
    /// `max_reconnect_delay` between attempts.
    pub async fn connect(url: &str, options: NatsSinkOptions) -> Result<Self> {
        let max = options.max_reconnect_delay;
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .reconnect_delay_callback(move |attempts| {
                let exp = u32::try_from(attempts.min(16)).unwrap_or(16);
                Duration::from_millis(2u64.saturating_pow(exp)).min(max)
            })
            .connect(url)
            .await
            .map_err(connect_error)?;
        Ok(Self::new(client, options))
    }

    /// A sink over an existing client.
    pub fn new(client: async_nats::Client, options: NatsSinkOptions) -> Self {
        let max_in_flight = options.max_in_flight.max(1);
        let js = ContextBuilder::new()
            .timeout(options.ack_timeout)
            .max_ack_inflight(max_in_flight.max(1024))
            .build(client);
        NatsSink { js, subjects: options.subjects, max_in_flight }
    }

    /// The JetStream context, for creating streams and reading them.
    pub fn jetstream(&self) -> &Context {
        &self.js
    }

    /// Creates the stream `name` over `subjects` unless it exists, with
    /// the given duplicate window (how long the broker remembers ids;
    /// make it longer than the forwarder's lease so a redelivery after a
    /// crash is still recognised).
    pub async fn ensure_stream(
        &self,
        name: &str,
        subjects: Vec<String>,
        duplicate_window: Duration,
    ) -> Result<stream::Stream> {
        let cfg = stream::Config {
            name: name.to_owned(),
            subjects,
            duplicate_window,
            storage: stream::StorageType::File,
            ..Default::default()
        };
        self.js.get_or_create_stream(cfg).await.map_err(|e| Error::Unavailable {
            message: format!("create the stream {name}: {e}"),
            source: Some(Box::new(e)),
        })
    }

    /// The message `e` becomes: its subject and the message, or why it can
    /// never be published.
    fn message(&self, e: &Envelope) -> std::result::Result<(String, PublishMessage), String> {
        let subject = self.subjects.subject(e);
        if !is_valid_subject(&subject) {
            return Err(format!("{subject:?} is not a valid NATS subject"));
        }
        let mut headers = HeaderMap::new();
        let mut put = |name: &str, value: &str| -> std::result::Result<(), String> {
            let n = HeaderName::from_str(name).map_err(|_| format!("invalid NATS header name {name:?}"))?;
            let v = HeaderValue::from_str(value)
                .map_err(|_| format!("the value of header {name:?} is not a valid NATS header value"))?;
            headers.insert(n, v);
            Ok(())
        };
        for (k, v) in &e.headers {
            put(k, v)?;
        }
        put(MSG_ID, &e.id.to_string())?;
        put(ORIGIN, e.origin.as_str())?;
        put(KEY, e.key.as_str())?;
        put(EVENT_TYPE, &e.event_type)?;
        put(SCHEMA_VERSION, &e.schema_version.to_string())?;
        put(CREATED_AT, &e.created_at.as_millis().to_string())?;
        if e.payload.kind() == PayloadKind::Json {
            put("Content-Type", "application/json")?;
        }
        let body = Bytes::copy_from_slice(e.payload.as_bytes());
        Ok((subject, PublishMessage::build().payload(body).headers(headers)))
    }
}

/// The outcome a publish error maps to.
pub fn outcome_of(e: &PublishError) -> Outcome {
    let msg = match e.source() {
        Some(s) => format!("{e}: {s}"),
        None => e.to_string(),
    };
    match e.kind() {
        PublishErrorKind::MaxPayloadExceeded => Outcome::NonRetriable(msg),
        PublishErrorKind::Other => {
            let code = e.source().and_then(|s| s.downcast_ref::<jetstream::Error>()).map(|j| j.error_code());
            match code {
                Some(c) if PERMANENT_API_ERRORS.contains(&c.0) => Outcome::NonRetriable(msg),
                _ => Outcome::Retriable(msg),
            }
        }
        _ => Outcome::Retriable(msg),
    }
}

fn connect_error(e: async_nats::ConnectError) -> Error {
    use async_nats::ConnectErrorKind as K;
    let message = format!("connect to NATS: {e}");
    match e.kind() {
        K::ServerParse | K::Tls => Error::InvalidInput { message },
        K::Authentication | K::AuthorizationViolation => {
            Error::PermissionDenied { message, source: Some(Box::new(e)) }
        }
        _ => Error::Unavailable { message, source: Some(Box::new(e)) },
    }
}

#[async_trait]
impl Sink for NatsSink {
    fn name(&self) -> &str {
        "nats"
    }

    async fn publish(&self, batch: &[Envelope]) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(batch.len());
        for chunk in batch.chunks(self.max_in_flight) {
            // Send the whole chunk, then await its acks together.
            let mut pending = Vec::with_capacity(chunk.len());
            for e in chunk {
                match self.message(e) {
                    Err(why) => pending.push(Err(Outcome::NonRetriable(why))),
                    Ok((subject, msg)) => match self.js.send_publish(subject, msg).await {
                        Ok(ack) => pending.push(Ok(ack)),
                        Err(err) => pending.push(Err(outcome_of(&err))),
                    },
                }
            }
            let acks = futures::future::join_all(pending.into_iter().map(|p| async move {
                match p {
                    Ok(ack) => match ack.await {
                        // A duplicate was stored before: delivered.
                        Ok(_) => Outcome::Ok,
                        Err(err) => outcome_of(&err),
                    },
                    Err(o) => o,
                }
            }))
            .await;
            outcomes.extend(acks);
        }
        outcomes
    }
}
