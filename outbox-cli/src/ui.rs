//! `outbox ui`: the web view, a page of plain HTML and JavaScript served
//! with a small JSON API over the same store contract as the commands.
//!
//! Every request must carry the token printed on start (the page's URL
//! holds it; the page sends it in the `x-outbox-token` header, which a
//! page of another origin cannot set, so a foreign page can neither read
//! the API nor press its buttons). The view reads through a read-only
//! store; a button opens the store read-write for its one change.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use outbox_core::prelude::*;
use outbox_core::{DurableStore, ErrorKind, EventId, EventStatus};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::Failure;
use crate::commands::{Action, Which, event_detail, now, resolve_dead, stats_json};
use crate::open::{Target, open_store};
use crate::view::{self, Filter, parse_duration};

/// The page.
const PAGE: &str = include_str!("ui.html");
/// How often the counts are sampled for the chart (and a sled copy
/// refreshed).
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Samples kept: ten minutes.
const SAMPLES_KEPT: usize = 600;

/// One point of the chart.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: i64,
    pending: u64,
    dead: u64,
    delivered: u64,
    lag_ms: u64,
}

struct Shared {
    target: Target,
    token: String,
    read_only: bool,
    view: Mutex<Arc<dyn DurableStore>>,
    history: Mutex<VecDeque<Sample>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn view(&self) -> Arc<dyn DurableStore> {
        lock(&self.view).clone()
    }

    /// Reads the counts into the history; a snapshot store (a sled copy)
    /// is opened again first, so the view follows the database.
    async fn sample(&self) -> Result<(), Failure> {
        if self.target.is_snapshot(true) {
            let fresh = open_store(&self.target, true).await?;
            *lock(&self.view) = fresh;
        }
        let s = self.view().stats().await?;
        let t = now();
        let mut h = lock(&self.history);
        h.push_back(Sample {
            at: t.as_millis(),
            pending: s.pending,
            dead: s.dead,
            delivered: s.delivered,
            lag_ms: s.oldest_pending_at.map_or(0, |o| t.duration_since(o).as_millis() as u64),
        });
        while h.len() > SAMPLES_KEPT {
            h.pop_front();
        }
        Ok(())
    }
}

/// Serves the web view until interrupted (Ctrl-C or SIGTERM).
pub(crate) async fn serve(
    target: Target,
    addr: SocketAddr,
    read_only: bool,
    json: bool,
) -> Result<(), Failure> {
    let store = open_store(&target, true).await?;
    let shared = Arc::new(Shared {
        target,
        token: token()?,
        read_only,
        view: Mutex::new(store),
        history: Mutex::new(VecDeque::new()),
    });
    shared.sample().await?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| outbox_core::Error::invalid_input(format!("cannot listen on {addr}: {e}")))?;
    let local = listener.local_addr().map_err(|e| outbox_core::Error::internal(e.to_string()))?;
    let host = if local.ip().is_unspecified() { "127.0.0.1".to_owned() } else { local.ip().to_string() };
    let host = if local.is_ipv6() { format!("[{host}]") } else { host };
    let url = format!("http://{host}:{}/?t={}", local.port(), shared.token);
    if json {
        println!("{}", json!({ "store": shared.target.shown(), "url": url, "read_only": read_only }));
    } else {
        println!(
            "outbox ui: {} at {url}{}",
            shared.target.shown(),
            if read_only { " (read-only)" } else { "" }
        );
    }
    {
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }
    let sampler = {
        let shared = shared.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SAMPLE_EVERY).await;
                if let Err(e) = shared.sample().await {
                    eprintln!("outbox ui: reading the store: {}", e.message());
                }
            }
        })
    };
    let stop = shutdown();
    tokio::pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("outbox ui: accept: {e}");
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
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
    sampler.abort();
    Ok(())
}

/// Ctrl-C, or SIGTERM on Unix.
async fn shutdown() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// 128 random bits, in hex.
fn token() -> Result<String, Failure> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| outbox_core::Error::internal(format!("no random token: {e}")))?;
    Ok(view::hex(&b))
}

type Resp = Response<Full<Bytes>>;

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    if let Ok(v) = content_type.parse() {
        h.insert(hyper::header::CONTENT_TYPE, v);
    }
    if let Ok(v) = "no-store".parse() {
        h.insert(hyper::header::CACHE_CONTROL, v);
    }
    if let Ok(v) = "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'".parse() {
        h.insert(hyper::header::CONTENT_SECURITY_POLICY, v);
    }
    r
}

fn json_resp(status: StatusCode, v: &Value) -> Resp {
    respond(status, "application/json", v.to_string())
}

fn error_resp(f: &Failure) -> Resp {
    let status = match f {
        Failure::NotFound(_) => StatusCode::NOT_FOUND,
        Failure::Store(e) if e.kind() == ErrorKind::InvalidInput => StatusCode::BAD_REQUEST,
        Failure::Store(e) if e.kind() == ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
        Failure::Store(e) if e.kind() == ErrorKind::Unavailable || e.is_retryable() => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        Failure::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    json_resp(status, &json!({ "error": f.message() }))
}

/// The query string's pairs, percent-decoded.
fn query(req: &Request<Incoming>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(x) => {
                        out.push(x);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, v)| k == name && !v.is_empty()).map(|(_, v)| v.as_str())
}

async fn route(shared: &Shared, req: Request<Incoming>) -> Resp {
    let q = query(&req);
    let path = req.uri().path().to_owned();
    if req.method() == Method::GET && path == "/" {
        return if param(&q, "t") == Some(shared.token.as_str()) {
            respond(StatusCode::OK, "text/html; charset=utf-8", PAGE)
        } else {
            respond(
                StatusCode::FORBIDDEN,
                "text/plain; charset=utf-8",
                "Open the URL `outbox ui` printed when it started: it carries the access token.\n",
            )
        };
    }
    let header_token = req.headers().get("x-outbox-token").and_then(|v| v.to_str().ok());
    if header_token != Some(shared.token.as_str()) {
        return json_resp(StatusCode::FORBIDDEN, &json!({ "error": "missing or wrong x-outbox-token" }));
    }
    let result = match (req.method().clone(), path.as_str()) {
        (Method::GET, "/api/stats") => api_stats(shared).await,
        (Method::GET, "/api/history") => Ok(api_history(shared)),
        (Method::GET, "/api/events") => api_events(shared, &q).await,
        (Method::GET, p) if p.starts_with("/api/event/") => {
            api_event(shared, &p["/api/event/".len()..]).await
        }
        (Method::POST, p) if p.starts_with("/api/event/") => {
            api_action(shared, &p["/api/event/".len()..]).await
        }
        _ => Err(Failure::NotFound(format!("no such page: {path}"))),
    };
    match result {
        Ok(v) => json_resp(StatusCode::OK, &v),
        Err(f) => error_resp(&f),
    }
}

async fn api_stats(shared: &Shared) -> Result<Value, Failure> {
    let s = shared.view().stats().await?;
    let mut v = stats_json(&shared.target, &s, now());
    v["read_only"] = json!(shared.read_only);
    Ok(v)
}

fn api_history(shared: &Shared) -> Value {
    let h = lock(&shared.history);
    Value::Array(
        h.iter()
            .map(|s| {
                json!({ "at": s.at, "pending": s.pending, "dead": s.dead, "delivered": s.delivered, "lag_ms": s.lag_ms })
            })
            .collect(),
    )
}

fn bad(m: impl Into<String>) -> Failure {
    Failure::Store(outbox_core::Error::invalid_input(m))
}

async fn api_events(shared: &Shared, q: &[(String, String)]) -> Result<Value, Failure> {
    let status: EventStatus = param(q, "status").unwrap_or("pending").parse()?;
    let since = match param(q, "since") {
        Some(s) => Some(now().saturating_sub(parse_duration(s).map_err(bad)?)),
        None => None,
    };
    let filter = Filter {
        event_type: param(q, "type").map(str::to_owned),
        key: param(q, "key").map(str::to_owned),
        origin: param(q, "origin").map(str::to_owned),
        since,
    };
    let after = match param(q, "after") {
        Some(a) => Some(a.parse::<EventId>().map_err(|_| bad(format!("not an event id: {a}")))?),
        None => None,
    };
    let limit = match param(q, "limit") {
        Some(l) => l.parse::<usize>().map_err(|_| bad(format!("not a number: {l}")))?.clamp(1, 500),
        None => 50,
    };
    let store = shared.view();
    let page = view::page(store.as_ref(), status, &filter, after, limit).await?;
    let by_key = view::pending_by_key(store.as_ref()).await?;
    let now = now();
    let mut events = Vec::with_capacity(page.events.len());
    for e in &page.events {
        events.push(view::event_json_full(store.as_ref(), e, status, &by_key, now).await?);
    }
    Ok(json!({ "events": events, "more": page.more, "next_cursor": page.next.map(|i| i.to_string()) }))
}

fn event_id(s: &str) -> Result<EventId, Failure> {
    s.parse::<EventId>().map_err(|_| bad(format!("not an event id: {s}")))
}

async fn api_event(shared: &Shared, id: &str) -> Result<Value, Failure> {
    let id = event_id(id)?;
    let store = shared.view();
    let Some((status, e)) = store.find_event(id).await? else {
        return Err(Failure::NotFound(format!("no event {id} (never committed here, or pruned)")));
    };
    event_detail(store.as_ref(), status, &e).await
}

/// `POST /api/event/ID/requeue|discard|skip`: the change, in one store
/// call on a read-write open; then the view is refreshed.
async fn api_action(shared: &Shared, rest: &str) -> Result<Value, Failure> {
    let (id, verb) =
        rest.split_once('/').ok_or_else(|| Failure::NotFound(format!("no such action: {rest}")))?;
    let action = match verb {
        "requeue" => Action::Requeue,
        "discard" => Action::Discard,
        "skip" => Action::Skip,
        _ => return Err(Failure::NotFound(format!("no such action: {verb}"))),
    };
    if shared.read_only {
        return Err(Failure::Store(outbox_core::Error::PermissionDenied {
            message: "the view was started with --read-only".into(),
            source: None,
        }));
    }
    let id = event_id(id)?;
    let store = open_store(&shared.target, false).await?;
    let events = resolve_dead(store.as_ref(), &Which::Ids(vec![id])).await?;
    let ids: Vec<EventId> = events.iter().map(|e| e.id).collect();
    let changed = action.apply(store.as_ref(), &ids).await?;
    drop(store);
    shared.sample().await?;
    Ok(json!({ "id": id.to_string(), "action": verb, "changed": changed }))
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(decode("a%20b+c"), "a b c");
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz"), "%zz");
    }
}
