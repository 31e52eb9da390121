#![doc = include_str!("../README.md")]

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use outbox_core::{Clock, Envelope, Error, Outcome, Result, Sink, SystemClock, async_trait};

mod body;
pub mod mapping;

#[cfg(not(target_arch = "wasm32"))]
mod native;
#[cfg(not(target_arch = "wasm32"))]
use native::Transport;

#[cfg(target_arch = "wasm32")]
mod web;
#[cfg(target_arch = "wasm32")]
use web::Transport;

/// The header carrying the event id, for the receiver to deduplicate on.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
/// The header carrying the actor that emitted the event.
pub const ORIGIN: &str = "Outbox-Origin";
/// The header carrying the event type.
pub const EVENT_TYPE: &str = "Outbox-Event-Type";
/// The W3C trace-context headers copied from the event's own headers when
/// it has them.
pub const TRACE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// The per-request timeout unless [`HttpSinkBuilder::timeout`] says
/// otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How many per-event requests of one batch run at once unless
/// [`HttpSinkBuilder::concurrency`] says otherwise.
pub const DEFAULT_CONCURRENCY: usize = 8;

/// The application's per-request headers (an auth token it refreshes):
/// called once for every request the sink makes. `Send + Sync` on native
/// targets; on `wasm32` (one thread) it may hold JavaScript values.
#[cfg(not(target_arch = "wasm32"))]
pub type HeaderCallback = Arc<dyn Fn() -> Vec<(String, String)> + Send + Sync>;
/// The application's per-request headers (an auth token it refreshes):
/// called once for every request the sink makes. `Send + Sync` on native
/// targets; on `wasm32` (one thread) it may hold JavaScript values.
#[cfg(target_arch = "wasm32")]
pub type HeaderCallback = Arc<dyn Fn() -> Vec<(String, String)>>;

/// A [`Sink`] that POSTs events as JSON to one URL: natively with
/// `reqwest` (rustls), in a browser with `fetch`. See the crate
/// documentation for the request and the status mapping.
pub struct HttpSink {
    url: String,
    timeout: Duration,
    headers: Vec<(String, String)>,
    header_fn: Option<HeaderCallback>,
    batch: bool,
    concurrency: usize,
    transport: Transport,
}

impl fmt::Debug for HttpSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values are left out: they are often credentials.
        f.debug_struct("HttpSink")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .field("headers", &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>())
            .field("header_fn", &self.header_fn.as_ref().map(|_| ".."))
            .field("batch", &self.batch)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

/// Configures an [`HttpSink`]; [`HttpSinkBuilder::build`] checks it.
#[must_use = "a builder does nothing until built"]
pub struct HttpSinkBuilder {
    url: String,
    timeout: Duration,
    headers: Vec<(String, String)>,
    header_fn: Option<HeaderCallback>,
    batch: bool,
    concurrency: usize,
}

impl fmt::Debug for HttpSinkBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSinkBuilder")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .field("headers", &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>())
            .field("header_fn", &self.header_fn.as_ref().map(|_| ".."))
            .field("batch", &self.batch)
            .field("concurrency", &self.concurrency)
            .finish()
    }
}

impl HttpSink {
    /// A sink with the defaults: one request per event, a 10 s timeout, 8
    /// requests at once. [`Error::InvalidInput`] for a URL that does not
    /// parse or is not `http://` or `https://`.
    pub fn new(url: impl Into<String>) -> Result<Self> {
        Self::builder(url).build()
    }

    /// A builder for a sink posting to `url`.
    pub fn builder(url: impl Into<String>) -> HttpSinkBuilder {
        HttpSinkBuilder {
            url: url.into(),
            timeout: DEFAULT_TIMEOUT,
            headers: Vec::new(),
            header_fn: None,
            batch: false,
            concurrency: DEFAULT_CONCURRENCY,
        }
    }

    /// The URL events are posted to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether a `publish` call is sent as one request (a JSON array).
    pub fn is_batch(&self) -> bool {
        self.batch
    }

    /// The headers of one request: the static ones, the callback's, then
    /// the sink's own (which win over an application header of the same
    /// name), `Content-Type` last. `event` is `None` for a batch request,
    /// which carries no per-event header (each array element has its id,
    /// origin, type and headers).
    fn request_headers(&self, event: Option<&Envelope>) -> Result<Vec<(String, String)>, Outcome> {
        let mut headers = self.headers.clone();
        if let Some(f) = &self.header_fn {
            for (name, value) in f() {
                body::check_header(&name, &value).map_err(|why| mapping::bad_callback_header(&why))?;
                headers.push((name, value));
            }
        }
        let own = |headers: &mut Vec<(String, String)>, name: &str, value: String| {
            headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
            headers.push((name.to_owned(), value));
        };
        if let Some(e) = event {
            own(&mut headers, IDEMPOTENCY_KEY, e.id.to_string());
            for (name, value) in [(ORIGIN, e.origin.as_str()), (EVENT_TYPE, e.event_type.as_str())] {
                // An origin or type HTTP cannot carry travels in the body only.
                if body::check_header(name, value).is_ok() {
                    own(&mut headers, name, value.to_owned());
                }
            }
            for name in TRACE_HEADERS {
                let value = e.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v);
                if let Some(value) = value.filter(|v| body::check_header(name, v).is_ok()) {
                    own(&mut headers, name, value.clone());
                }
            }
        }
        own(&mut headers, "Content-Type", "application/json".to_owned());
        Ok(headers)
    }

    /// Sends one request and maps its answer.
    async fn send(&self, event: Option<&Envelope>, body: Vec<u8>) -> Outcome {
        match self.request_headers(event) {
            Ok(headers) => self.transport.post(&headers, body, self.timeout).await,
            Err(outcome) => outcome,
        }
    }
}

impl HttpSinkBuilder {
    /// The per-request timeout (default 10 s): from the start of the
    /// request until the response's status and headers arrive. A request
    /// with no answer by then is [`Outcome::Retriable`]. Zero is refused at
    /// [`HttpSinkBuilder::build`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// A header sent with every request (an API key). Checked at
    /// [`HttpSinkBuilder::build`]: the name must be an HTTP token and the
    /// value visible ASCII. The sink's own headers (`Content-Type`,
    /// `Idempotency-Key`, `Outbox-Origin`, `Outbox-Event-Type`,
    /// `traceparent`) win over one of the same name. In a browser, `fetch`
    /// drops the headers it forbids scripts to set (`Cookie`, `Host`, ...).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Headers computed for each request by `f` (a bearer token the
    /// application refreshes), called once per request, after the static
    /// headers. A header `f` returns that HTTP cannot carry makes that
    /// request's events [`Outcome::Retriable`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn headers_from(mut self, f: impl Fn() -> Vec<(String, String)> + Send + Sync + 'static) -> Self {
        self.header_fn = Some(Arc::new(f));
        self
    }

    /// Headers computed for each request by `f` (a bearer token the
    /// application refreshes), called once per request, after the static
    /// headers. A header `f` returns that HTTP cannot carry makes that
    /// request's events [`Outcome::Retriable`].
    #[cfg(target_arch = "wasm32")]
    pub fn headers_from(mut self, f: impl Fn() -> Vec<(String, String)> + 'static) -> Self {
        self.header_fn = Some(Arc::new(f));
        self
    }

    /// Batch mode: each `publish` call is one request whose body is a JSON
    /// array of its events, and that request's single answer is every
    /// event's outcome. Off by default (one request per event). A batch
    /// request has no per-event headers: the receiver deduplicates on each
    /// element's `id` (the forwarder may group events differently on a
    /// retry).
    pub fn batch(mut self, batch: bool) -> Self {
        self.batch = batch;
        self
    }

    /// How many per-event requests of one `publish` call run at once
    /// (default 8; the forwarder never hands one call two events of one
    /// ordering key, so their order does not matter). Zero is refused at
    /// [`HttpSinkBuilder::build`].
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// Checks the configuration and makes the sink. [`Error::InvalidInput`]
    /// for a URL that does not parse, a scheme other than `http` or
    /// `https`, a header HTTP cannot carry, a zero timeout or a zero
    /// concurrency.
    pub fn build(self) -> Result<HttpSink> {
        let invalid = |message: String| Error::InvalidInput { message };
        check_url(&self.url).map_err(|why| invalid(format!("HTTP sink URL {:?}: {why}", self.url)))?;
        for (name, value) in &self.headers {
            body::check_header(name, value).map_err(invalid)?;
        }
        if self.timeout.is_zero() {
            return Err(invalid("HTTP sink timeout must be more than zero".into()));
        }
        if self.concurrency == 0 {
            return Err(invalid("HTTP sink concurrency must be at least 1".into()));
        }
        let transport = Transport::new(&self.url, self.timeout)?;
        Ok(HttpSink {
            url: self.url,
            timeout: self.timeout,
            headers: self.headers,
            header_fn: self.header_fn,
            batch: self.batch,
            concurrency: self.concurrency,
            transport,
        })
    }
}

/// The checks both targets make before their own URL parser: an `http` or
/// `https` scheme, a host, no whitespace or control characters.
fn check_url(url: &str) -> Result<(), &'static str> {
    let (scheme, rest) = url.split_once("://").ok_or("not an absolute http(s) URL")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err("the scheme must be http or https");
    }
    if url.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
        return Err("it holds whitespace or control characters");
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() || host.starts_with(':') {
        return Err("it has no host");
    }
    Ok(())
}

/// The wall clock `Retry-After` dates are counted from.
fn now() -> outbox_core::Timestamp {
    SystemClock.now()
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl Sink for HttpSink {
    fn name(&self) -> &str {
        "http"
    }

    async fn publish(&self, batch: &[Envelope]) -> Vec<Outcome> {
        if batch.is_empty() {
            return Vec::new();
        }
        if self.batch {
            let outcome = self.send(None, body::batch_body(batch)).await;
            return vec![outcome; batch.len()];
        }
        // At most `concurrency` requests in flight, outcomes in order.
        let requests: Vec<_> = batch.iter().map(|e| self.send(Some(e), body::event_body(e))).collect();
        futures::stream::iter(requests).buffered(self.concurrency).collect().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outbox_core::{ActorId, ErrorKind, NewEvent, Timestamp};

    #[test]
    fn urls_are_checked_without_panicking() {
        for good in
            ["http://127.0.0.1:8080/hook", "https://example.com", "HTTPS://user:pw@example.com:443/a?b#c"]
        {
            assert!(HttpSink::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "example.com/hook",
            "ftp://example.com",
            "file:///etc/passwd",
            "http://",
            "http:///path",
            "http://:80/",
            "http://exa mple.com",
            "http://example.com:99999/",
            "http://[::1/",
            "mailto:a@b.c",
        ] {
            let err = HttpSink::new(bad).expect_err(bad);
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad}");
        }
    }

    #[test]
    fn configuration_is_checked() {
        let b = || HttpSink::builder("http://127.0.0.1:1/");
        let kind = |r: Result<HttpSink>| r.map(|_| ()).map_err(|e| e.kind());
        assert_eq!(kind(b().timeout(Duration::ZERO).build()), Err(ErrorKind::InvalidInput));
        assert_eq!(kind(b().concurrency(0).build()), Err(ErrorKind::InvalidInput));
        assert_eq!(kind(b().header("Bad Name", "v").build()), Err(ErrorKind::InvalidInput));
        assert_eq!(kind(b().header("X-Token", "a\nb").build()), Err(ErrorKind::InvalidInput));
        assert_eq!(kind(b().header("X-Token", "ok").concurrency(1).batch(true).build()), Ok(()));
    }

    #[test]
    fn own_headers_win_and_trace_headers_are_copied() {
        let sink = HttpSink::builder("http://127.0.0.1:1/")
            .header("Idempotency-Key", "app")
            .header("X-Static", "s")
            .headers_from(|| vec![("content-type".into(), "text/plain".into()), ("X-Dyn".into(), "d".into())])
            .build()
            .expect("sink");
        let e = Envelope::committed(
            NewEvent::json(ActorId::new("a").expect("actor"), "T", &1)
                .expect("json")
                .with_header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
                .with_header("other", "x"),
            Timestamp::from_millis(0),
        );
        let headers = sink.request_headers(Some(&e)).expect("headers");
        let get = |name: &str| {
            let found: Vec<&str> = headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
                .collect();
            found
        };
        assert_eq!(get("Idempotency-Key"), vec![e.id.to_string().as_str()]);
        assert_eq!(get("Content-Type"), vec!["application/json"]);
        assert_eq!(get("Outbox-Origin"), vec!["a"]);
        assert_eq!(get("Outbox-Event-Type"), vec!["T"]);
        assert_eq!(get("traceparent"), vec!["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]);
        assert_eq!(get("X-Static"), vec!["s"]);
        assert_eq!(get("X-Dyn"), vec!["d"]);
        assert!(get("other").is_empty() && get("tracestate").is_empty());
        // A batch request has no per-event header (the app's own stay).
        let batch = sink.request_headers(None).expect("headers");
        assert!(!batch.iter().any(|(n, _)| n == ORIGIN || n == EVENT_TYPE || n == "traceparent"));
        assert!(batch.iter().any(|(n, v)| n == IDEMPOTENCY_KEY && v == "app"));
    }

    #[test]
    fn a_bad_callback_header_is_retriable() {
        let sink = HttpSink::builder("http://127.0.0.1:1/")
            .headers_from(|| vec![("Authorization".into(), "Bearer a\r\nb".into())])
            .build()
            .expect("sink");
        assert!(matches!(sink.request_headers(None), Err(Outcome::Retriable(_))));
    }
}
