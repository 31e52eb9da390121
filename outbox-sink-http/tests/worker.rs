//! The HTTP sink in a dedicated worker (no `window`: `fetch` and
//! `setTimeout` through the global object), against the test server that
//! `scripts/test-browser.sh` starts (`OUTBOX_HTTP_TEST_URL`, required at
//! compile time like `tests/browser.rs`).
#![cfg(target_arch = "wasm32")]

use std::time::Duration;

use outbox_core::{ActorId, Envelope, NewEvent, Outcome, Sink, Timestamp};
use outbox_sink_http::HttpSink;
use wasm_bindgen_test::wasm_bindgen_test;

wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_dedicated_worker);

/// The test server's URL: required, a missing server is a failure.
fn server() -> &'static str {
    match option_env!("OUTBOX_HTTP_TEST_URL") {
        Some(url) => url,
        None => panic!(
            "OUTBOX_HTTP_TEST_URL was not set at compile time: run the browser suite through \
             scripts/test-browser.sh, which starts the test server"
        ),
    }
}

fn event() -> Envelope {
    let e = NewEvent::json(ActorId::new("worker-1").expect("actor"), "T", &1).expect("json");
    Envelope::committed(e, Timestamp::from_millis(0))
}

async fn outcome_at(path: &str) -> Outcome {
    let sink = HttpSink::builder(format!("{}{path}", server()))
        .headers_from(|| vec![("Authorization".into(), "Bearer w".into())])
        .build()
        .expect("sink");
    let mut outcomes = sink.publish(&[event()]).await;
    assert_eq!(outcomes.len(), 1);
    outcomes.remove(0)
}

#[wasm_bindgen_test]
fn http_sink_worker_has_no_window() {
    assert!(server().starts_with("http://"));
    assert!(web_sys::window().is_none());
}

#[wasm_bindgen_test]
async fn http_sink_worker_status_mapping() {
    assert_eq!(outcome_at("/status/204").await, Outcome::Ok);
    assert_eq!(outcome_at("/status/409").await, Outcome::Ok);
    assert!(matches!(outcome_at("/status/503").await, Outcome::Retriable(_)));
    assert!(
        matches!(outcome_at("/retry-after/7").await, Outcome::RetryAfter(d, _) if d == Duration::from_secs(7))
    );
    assert!(matches!(outcome_at("/status/404").await, Outcome::NonRetriable(_)));
    assert_eq!(outcome_at("/echo").await, Outcome::Ok);
}

#[wasm_bindgen_test]
async fn http_sink_worker_timeout_is_retriable() {
    let sink = HttpSink::builder(format!("{}/hang", server()))
        .timeout(Duration::from_millis(200))
        .build()
        .expect("sink");
    let started = js_sys::Date::now();
    let outcomes = sink.publish(&[event()]).await;
    let took = js_sys::Date::now() - started;
    assert!(matches!(outcomes.as_slice(), [Outcome::Retriable(_)]), "{outcomes:?}");
    assert!((150.0..5_000.0).contains(&took), "{took} ms");
}
