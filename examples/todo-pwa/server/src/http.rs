//! The routes.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use outbox::consumer::{Consumer, Delivery, HandlerError, once_per_event};
use outbox::{
    ActorId, Commit, ConsumerId, DurableStore, Envelope, EventId, NewEvent, OrderingKey, Payload, Timestamp,
    Version,
};
use outbox_example_todo::TodoState;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::apply::{Applied, ApplyTodo, LogEntry};

/// The largest request body taken (a batch of events included).
const MAX_BODY: usize = 1 << 20;

pub(crate) type Body = Full<Bytes>;

/// `POST /admin/fail`'s rule: answer `/events` with `status` for the next
/// `remaining` requests and/or until `until`.
#[derive(Debug)]
struct FailRule {
    status: StatusCode,
    remaining: Option<u64>,
    until: Option<Instant>,
    retry_after: Option<u64>,
}

impl FailRule {
    fn active(&self) -> bool {
        self.remaining != Some(0) && self.until.is_none_or(|u| Instant::now() < u)
    }

    fn report(&self) -> FailReport {
        FailReport {
            status: self.status.as_u16(),
            remaining: self.remaining,
            remaining_ms: self.until.map(|u| {
                u64::try_from(u.saturating_duration_since(Instant::now()).as_millis()).unwrap_or(u64::MAX)
            }),
            retry_after: self.retry_after,
        }
    }
}

/// The failure switch as `GET /state` and `POST /admin/fail` report it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailReport {
    /// The status `/events` answers with.
    pub status: u16,
    /// How many more requests get it (`None`: no count).
    pub remaining: Option<u64>,
    /// For how much longer, in milliseconds (`None`: no time limit).
    pub remaining_ms: Option<u64>,
    /// The `Retry-After` header sent with it, in seconds, if any.
    pub retry_after: Option<u64>,
}

/// `GET /state`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateReport {
    /// Each list as applied (by list id): the app's `TodoState` shape.
    pub lists: BTreeMap<String, TodoState>,
    /// Events applied (each once): kept in the server's SQLite file.
    pub applied: u64,
    /// Redeliveries dropped by the inbox: kept in the SQLite file too.
    pub duplicates: u64,
    /// `/events` requests answered by the failure switch since start.
    pub rejected: u64,
    /// Every applied event, in order.
    pub events: Vec<LogEntry>,
    /// The failure switch, while it is on.
    pub fail: Option<FailReport>,
}

pub(crate) struct Shared {
    store: Arc<dyn DurableStore>,
    consumer: Consumer<ApplyTodo>,
    state_actor: ActorId,
    duplicates_actor: ActorId,
    /// Deliveries one at a time: the server's state is one actor.
    gate: tokio::sync::Mutex<()>,
    fail: Mutex<Option<FailRule>>,
    rejected: AtomicU64,
    pub(crate) static_dir: Option<PathBuf>,
    verbose: bool,
}

impl Shared {
    pub(crate) fn new(
        store: Arc<dyn DurableStore>,
        static_dir: Option<PathBuf>,
        verbose: bool,
    ) -> Result<Self, crate::StartError> {
        let id = |s: &str| ActorId::new(s).map_err(crate::StartError::Store);
        let state_actor = id("todo-server/state")?;
        let consumer_id = ConsumerId::new("todo-server").map_err(crate::StartError::Store)?;
        let consumer = once_per_event(store.clone(), consumer_id, ApplyTodo { state: state_actor.clone() });
        Ok(Shared {
            store,
            consumer,
            state_actor,
            duplicates_actor: id("todo-server/duplicates")?,
            gate: tokio::sync::Mutex::new(()),
            fail: Mutex::new(None),
            rejected: AtomicU64::new(0),
            static_dir,
            verbose,
        })
    }

    fn fail_rule(&self) -> std::sync::MutexGuard<'_, Option<FailRule>> {
        self.fail.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn load<T: Default + serde::de::DeserializeOwned>(
        &self,
        actor: &ActorId,
    ) -> outbox::Result<(T, Version)> {
        match self.store.load_state(actor).await? {
            Some(s) => Ok((serde_json::from_slice(&s.bytes)?, s.version)),
            None => Ok((T::default(), Version::NONE)),
        }
    }

    async fn report(&self) -> outbox::Result<StateReport> {
        let (applied, _): (Applied, _) = self.load(&self.state_actor).await?;
        let (duplicates, _): (u64, _) = self.load(&self.duplicates_actor).await?;
        let fail = self.fail_rule().as_ref().filter(|r| r.active()).map(FailRule::report);
        Ok(StateReport {
            lists: applied.lists,
            applied: applied.applied,
            duplicates,
            rejected: self.rejected.load(Ordering::Relaxed),
            events: applied.log,
            fail,
        })
    }

    /// Counts a dropped redelivery in the SQLite file (deliveries are
    /// serialized by the gate, so the version cannot move under it).
    async fn count_duplicate(&self) -> outbox::Result<()> {
        let (n, version): (u64, _) = self.load(&self.duplicates_actor).await?;
        let commit = Commit::state(self.duplicates_actor.clone(), version, serde_json::to_vec(&(n + 1))?);
        self.store.put_state_and_events(commit).await.map(|_| ())
    }

    /// Delivers one event: applied, or dropped as a duplicate.
    async fn deliver(&self, event: &Envelope) -> Result<Delivery, HandlerError> {
        let _one_at_a_time = self.gate.lock().await;
        let d = self.consumer.deliver(event).await?;
        if d == Delivery::Duplicate {
            self.count_duplicate().await?;
        }
        if self.verbose {
            eprintln!("{:?}: {} {} {}", d, event.event_type, event.origin, event.id);
        }
        Ok(d)
    }

    /// The failure switch's answer for this `/events` request, if it is on.
    fn injected_failure(&self) -> Option<Response<Body>> {
        let mut rule = self.fail_rule();
        let r = rule.as_mut()?;
        if !r.active() {
            *rule = None;
            return None;
        }
        if let Some(n) = &mut r.remaining {
            *n -= 1;
        }
        self.rejected.fetch_add(1, Ordering::Relaxed);
        let mut resp =
            json_response(r.status, &serde_json::json!({ "error": "failure injected by POST /admin/fail" }));
        if let Some(s) = r.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        Some(resp)
    }
}

/// Accepts connections until `stop` fires.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    loop {
        let stream = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    eprintln!("todo-pwa-server: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(&shared, req).await) }
            });
            // A client that goes away mid-request is not an error here.
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

pub(crate) fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(body) => response(status, "application/json", body),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("serializing the answer: {e}")),
    }
}

pub(crate) fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut body = body.into();
    body.push('\n');
    response(status, "text/plain; charset=utf-8", body)
}

async fn route(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let mut resp = match (req.method().clone(), path.as_str()) {
        (Method::OPTIONS, _) => response(StatusCode::NO_CONTENT, "text/plain", Bytes::new()),
        (Method::POST, "/events") => events(shared, req).await,
        (Method::GET, "/state") => match shared.report().await {
            Ok(r) => json_response(StatusCode::OK, &r),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("reading the state: {e}")),
        },
        (Method::POST, "/admin/fail") => admin_fail(shared, req.uri().query().unwrap_or("")),
        (Method::POST, "/admin/recover") => admin_fail(shared, "count=0"),
        (Method::GET | Method::HEAD, _) => {
            crate::static_files::serve(shared.static_dir.as_deref(), &path).await
        }
        (_, "/events" | "/state" | "/admin/fail" | "/admin/recover") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => text(StatusCode::NOT_FOUND, "not found"),
    };
    let h = resp.headers_mut();
    // The app posts from its own origin; these let a page elsewhere (a
    // test, a dashboard) call the API too.
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("*"));
    h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("Retry-After"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    resp
}

/// An event as the HTTP sink posts it (`outbox-sink-http`'s README).
#[derive(Deserialize)]
struct WireEvent {
    id: String,
    origin: String,
    key: Option<String>,
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default = "one")]
    schema_version: u32,
    #[serde(default)]
    created_at: i64,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    payload: serde_json::Value,
}

fn one() -> u32 {
    1
}

impl WireEvent {
    fn into_envelope(self) -> outbox::Result<Envelope> {
        let origin = ActorId::new(self.origin)?;
        let mut e = NewEvent::new(origin, self.event_type, Payload::json(&self.payload)?)
            .with_id(self.id.parse::<EventId>()?)
            .with_schema_version(self.schema_version);
        if let Some(k) = self.key {
            e = e.with_key(OrderingKey::new(k)?);
        }
        e.headers = self.headers;
        Ok(Envelope::committed(e, Timestamp::from_millis(self.created_at)))
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum WireBody {
    One(WireEvent),
    Batch(Vec<WireEvent>),
}

/// `POST /events`: one event (the HTTP sink's default) or a JSON array
/// of them (its batch mode). 200 once each is applied or dropped as a
/// duplicate; 422 for an event the server refuses for good (the sink
/// dead-letters it); 503/500 for a failure worth retrying; 400 for a body
/// that is not an event.
async fn events(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    if let Some(resp) = shared.injected_failure() {
        return resp;
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return text(StatusCode::PAYLOAD_TOO_LARGE, format!("reading the body: {e}")),
    };
    let wire: Vec<WireEvent> = match serde_json::from_slice::<WireBody>(&body) {
        Ok(WireBody::One(e)) => vec![e],
        Ok(WireBody::Batch(es)) => es,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("not an event: {e}")),
    };
    let mut results = Vec::with_capacity(wire.len());
    for w in wire {
        let event = match w.into_envelope() {
            Ok(e) => e,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("not an event: {e}")),
        };
        match shared.deliver(&event).await {
            Ok(d) => results.push(serde_json::json!({
                "id": event.id.to_string(),
                "delivery": match d {
                    Delivery::Applied => "applied",
                    Delivery::Duplicate => "duplicate",
                    Delivery::Expired => "expired",
                },
            })),
            Err(HandlerError::NonRetriable(m)) => {
                return text(StatusCode::UNPROCESSABLE_ENTITY, format!("event {}: {m}", event.id));
            }
            Err(HandlerError::Retriable(m)) => {
                return text(StatusCode::SERVICE_UNAVAILABLE, format!("event {}: {m}", event.id));
            }
            Err(HandlerError::Store(e)) => {
                return text(StatusCode::INTERNAL_SERVER_ERROR, format!("event {}: {e}", event.id));
            }
        }
    }
    match results.len() {
        1 => json_response(StatusCode::OK, &results[0]),
        _ => json_response(StatusCode::OK, &results),
    }
}

/// `POST /admin/fail?status=503&count=N&ms=M&retry_after=S`: answer the
/// next N `/events` requests (any number without `count`), for M
/// milliseconds (no time limit without `ms`), with `status` (default
/// 503), with a `Retry-After: S` header if given. `count=0` (or `POST
/// /admin/recover`) turns the switch off. Answers with the switch's state.
fn admin_fail(shared: &Shared, query: &str) -> Response<Body> {
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    let mut rule = FailRule { status, remaining: None, until: None, retry_after: None };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let n = match v.parse::<u64>() {
            Ok(n) => n,
            Err(_) => return text(StatusCode::BAD_REQUEST, format!("{k}={v:?}: not a number")),
        };
        match k {
            "status" => match u16::try_from(n).ok().and_then(|s| StatusCode::from_u16(s).ok()) {
                Some(s) if (200..=599).contains(&s.as_u16()) => status = s,
                _ => return text(StatusCode::BAD_REQUEST, format!("status={v}: not an HTTP status")),
            },
            "count" => rule.remaining = Some(n),
            "ms" => rule.until = Some(Instant::now() + Duration::from_millis(n)),
            "retry_after" => rule.retry_after = Some(n),
            _ => return text(StatusCode::BAD_REQUEST, format!("unknown parameter {k:?}")),
        }
    }
    rule.status = status;
    let report = rule.active().then(|| rule.report());
    *shared.fail_rule() = rule.active().then_some(rule);
    json_response(StatusCode::OK, &serde_json::json!({ "fail": report }))
}
