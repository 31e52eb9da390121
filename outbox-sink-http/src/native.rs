//! The native transport: `reqwest` over rustls. It only fetches; what an
//! answer means is [`crate::mapping`]'s.

use std::error::Error as StdError;
use std::time::Duration;

use outbox_core::{Error, Outcome, Result};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::{Client, Url, redirect};

use crate::mapping;

/// One client (one connection pool) per sink.
pub(crate) struct Transport {
    client: Client,
    url: Url,
}

impl Transport {
    /// A client for `url` with `timeout` per request; redirects are not
    /// followed (a `POST` redirected by 301/302/303 would arrive as a
    /// bodiless `GET` and could answer `2xx` for an event never delivered).
    pub(crate) fn new(url: &str, timeout: Duration) -> Result<Self> {
        let url = Url::parse(url)
            .map_err(|e| Error::InvalidInput { message: format!("HTTP sink URL {url:?}: {e}") })?;
        let client =
            Client::builder().redirect(redirect::Policy::none()).timeout(timeout).build().map_err(|e| {
                Error::Internal {
                    message: format!("cannot make the HTTP client: {e}"),
                    source: Some(Box::new(e)),
                }
            })?;
        Ok(Transport { client, url })
    }

    /// POSTs `body` with `headers` (already checked) and maps the answer.
    /// The response body is never read: a 2xx is a success however large
    /// its body is.
    pub(crate) async fn post(
        &self,
        headers: &[(String, String)],
        body: Vec<u8>,
        timeout: Duration,
    ) -> Outcome {
        let mut map = HeaderMap::with_capacity(headers.len());
        for (name, value) in headers {
            match (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
                (Ok(name), Ok(value)) => {
                    map.append(name, value);
                }
                _ => return mapping::bad_callback_header(name),
            }
        }
        match self.client.post(self.url.clone()).headers(map).body(body).send().await {
            Ok(response) => {
                let retry_after = response.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok());
                mapping::outcome_for_status(response.status().as_u16(), retry_after, crate::now())
            }
            Err(e) if e.is_timeout() => mapping::timed_out(timeout),
            Err(e) => mapping::network_error(&chain(&e)),
        }
    }
}

/// An error and its causes, `: `-separated (reqwest's own text names only
/// the URL; the cause says "connection refused").
fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
