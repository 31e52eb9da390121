//! The HTTP sink in a real browser (`fetch`), against the test server of
//! `examples/http-sink-test-server.rs` (the native tests' server, with
//! CORS). `scripts/test-browser.sh` starts it and sets
//! `OUTBOX_HTTP_TEST_URL` at compile time; without it every test fails.
#![cfg(target_arch = "wasm32")]

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use outbox_core::{ActorId, Envelope, ErrorKind, EventId, NewEvent, Outcome, Payload, Sink, Timestamp};
use outbox_sink_http::HttpSink;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::wasm_bindgen_test;

wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

/// The test server's URL: required, a missing server is a failure.
fn server() -> &'static str {
    // Not `env!`: the other crates' wasm32 builds (clippy, docs) must not
    // need the server; these tests fail without it.
    match option_env!("OUTBOX_HTTP_TEST_URL") {
        Some(url) => url,
        None => panic!(
            "OUTBOX_HTTP_TEST_URL was not set at compile time: run the browser suite through \
             scripts/test-browser.sh, which starts the test server"
        ),
    }
}

fn event(event_type: &str) -> Envelope {
    let origin = ActorId::new("form-1").expect("actor");
    let e =
        NewEvent::json(origin, event_type, &serde_json::json!({ "field": "value", "n": 1 })).expect("json");
    Envelope::committed(e, Timestamp::from_millis(1_700_000_000_000))
}

async fn outcome_at(path: &str) -> Outcome {
    let sink = HttpSink::builder(format!("{}{path}", server()))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("sink");
    let mut outcomes = sink.publish(&[event("T")]).await;
    assert_eq!(outcomes.len(), 1);
    outcomes.remove(0)
}

/// GETs `path` from the test server with the page's own fetch.
async fn get_text(path: &str) -> String {
    let window = web_sys::window().expect("window");
    let response =
        JsFuture::from(window.fetch_with_str(&format!("{}{path}", server()))).await.expect("fetch");
    let response: web_sys::Response = response.dyn_into().expect("response");
    assert_eq!(response.status(), 200, "{path}");
    let text = JsFuture::from(response.text().expect("text")).await.expect("body");
    text.as_string().expect("string")
}

/// The requests the server recorded under `tag`.
async fn seen(tag: &str) -> Vec<serde_json::Value> {
    let text = get_text(&format!("/seen/{tag}")).await;
    serde_json::from_str::<serde_json::Value>(&text).expect("json").as_array().expect("array").clone()
}

fn unique(tag: &str) -> String {
    format!("{tag}-{}", EventId::new())
}

#[wasm_bindgen_test]
async fn http_sink_success_statuses_and_conflict_are_ok() {
    for code in [200, 201, 204, 409] {
        assert_eq!(outcome_at(&format!("/status/{code}")).await, Outcome::Ok, "{code}");
    }
}

#[wasm_bindgen_test]
async fn http_sink_timeout_throttling_and_server_errors_are_retriable() {
    for code in [408, 429, 500, 503] {
        let outcome = outcome_at(&format!("/status/{code}")).await;
        assert!(matches!(outcome, Outcome::Retriable(_)), "{code}: {outcome:?}");
    }
}

#[wasm_bindgen_test]
async fn http_sink_retry_after_seconds_and_dates_are_honoured() {
    let outcome = outcome_at("/retry-after/7").await;
    assert!(matches!(outcome, Outcome::RetryAfter(d, _) if d == Duration::from_secs(7)), "{outcome:?}");
    let outcome = outcome_at("/status/503?retry-after-in=120").await;
    assert!(
        matches!(outcome, Outcome::RetryAfter(d, _) if d > Duration::from_secs(115) && d <= Duration::from_secs(120)),
        "{outcome:?}"
    );
    let outcome = outcome_at("/status/429?retry-after=Sun,%2006%20Nov%201994%2008:49:37%20GMT").await;
    assert!(matches!(outcome, Outcome::RetryAfter(d, _) if d.is_zero()), "{outcome:?}");
}

#[wasm_bindgen_test]
async fn http_sink_client_errors_and_redirects_are_not_retriable() {
    for code in [400, 404, 422, 302, 307] {
        let outcome = outcome_at(&format!("/status/{code}")).await;
        assert!(matches!(outcome, Outcome::NonRetriable(_)), "{code}: {outcome:?}");
    }
}

#[wasm_bindgen_test]
async fn http_sink_no_answer_is_retriable_after_the_timeout() {
    let sink = HttpSink::builder(format!("{}/hang", server()))
        .timeout(Duration::from_millis(200))
        .build()
        .expect("sink");
    let started = js_sys::Date::now();
    let outcomes = sink.publish(&[event("T")]).await;
    let took = js_sys::Date::now() - started;
    assert!(matches!(outcomes.as_slice(), [Outcome::Retriable(_)]), "{outcomes:?}");
    assert!((150.0..5_000.0).contains(&took), "{took} ms");
}

#[wasm_bindgen_test]
async fn http_sink_connection_refused_is_retriable() {
    let port = get_text("/free-port").await;
    let sink = HttpSink::new(format!("http://127.0.0.1:{port}/hook")).expect("sink");
    let outcomes = sink.publish(&[event("T")]).await;
    assert!(matches!(outcomes.as_slice(), [Outcome::Retriable(_)]), "{outcomes:?}");
}

#[wasm_bindgen_test]
async fn http_sink_a_success_with_a_huge_body_is_ok() {
    assert_eq!(outcome_at(&format!("/big/{}", 4_u64 << 30)).await, Outcome::Ok);
}

#[wasm_bindgen_test]
async fn http_sink_request_carries_the_event_and_the_headers() {
    let tag = unique("headers");
    let calls = Rc::new(Cell::new(0));
    let counter = calls.clone();
    let sink = HttpSink::builder(format!("{}/echo/{tag}", server()))
        .header("X-Api-Key", "static-key")
        .headers_from(move || {
            counter.set(counter.get() + 1);
            vec![("Authorization".into(), format!("Bearer token-{}", counter.get()))]
        })
        .build()
        .expect("sink");
    let traced = Envelope::committed(
        NewEvent::json(
            ActorId::new("form-2").expect("actor"),
            "FORM_SAVED",
            &serde_json::json!({"saved": true}),
        )
        .expect("json")
        .with_header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        Timestamp::from_millis(1_700_000_000_123),
    );
    let bytes = Envelope::committed(
        NewEvent::new(ActorId::new("form-3").expect("actor"), "BLOB", Payload::bytes(vec![0, 1, 2, 255])),
        Timestamp::from_millis(5),
    );
    let batch = [event("FORM_OPENED"), traced.clone(), bytes.clone()];
    assert_eq!(sink.publish(&batch).await, vec![Outcome::Ok; 3]);
    assert_eq!(calls.get(), 3, "the callback runs once per request");

    let seen = seen(&tag).await;
    assert_eq!(seen.len(), 3);
    let mut tokens: Vec<&str> = seen.iter().filter_map(|r| r["headers"]["authorization"].as_str()).collect();
    tokens.sort_unstable();
    assert_eq!(tokens, vec!["Bearer token-1", "Bearer token-2", "Bearer token-3"]);
    for e in &batch {
        let id = e.id.to_string();
        let r =
            seen.iter().find(|r| r["headers"]["idempotency-key"] == id.as_str()).expect("request for event");
        assert_eq!(r["method"], "POST");
        let h = &r["headers"];
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(h["outbox-origin"], e.origin.as_str());
        assert_eq!(h["outbox-event-type"], e.event_type.as_str());
        assert_eq!(h["x-api-key"], "static-key");
        let body: serde_json::Value =
            serde_json::from_str(r["body"].as_str().expect("body")).expect("JSON body");
        assert_eq!(body["id"], id);
        assert_eq!(body["origin"], e.origin.as_str());
        assert_eq!(body["key"], e.key.as_str());
        assert_eq!(body["type"], e.event_type.as_str());
        assert_eq!(body["schema_version"], e.schema_version);
        assert_eq!(body["created_at"], e.created_at.as_millis());
        if e.id == traced.id {
            assert_eq!(h["traceparent"], "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
            assert_eq!(body["payload"], serde_json::json!({"saved": true}));
        } else {
            assert!(h.get("traceparent").is_none());
        }
        if e.id == bytes.id {
            assert_eq!(body["payload"], serde_json::json!({"base64": "AAEC/w=="}));
        }
    }
}

#[wasm_bindgen_test]
async fn http_sink_batch_mode_sends_one_array() {
    let tag = unique("batch");
    let sink = HttpSink::builder(format!("{}/echo/{tag}", server())).batch(true).build().expect("sink");
    let batch = [event("A"), event("B"), event("C")];
    assert_eq!(sink.publish(&batch).await, vec![Outcome::Ok; 3]);
    let seen = seen(&tag).await;
    assert_eq!(seen.len(), 1, "one request for the whole batch");
    let body: serde_json::Value =
        serde_json::from_str(seen[0]["body"].as_str().expect("body")).expect("json");
    let ids: Vec<&str> =
        body.as_array().expect("array").iter().map(|e| e["id"].as_str().expect("id")).collect();
    assert_eq!(ids, batch.iter().map(|e| e.id.to_string()).collect::<Vec<_>>());

    let failing = HttpSink::builder(format!("{}/status/429", server())).batch(true).build().expect("sink");
    let outcomes = failing.publish(&batch).await;
    assert!(
        outcomes.len() == 3 && outcomes.iter().all(|o| matches!(o, Outcome::Retriable(_))),
        "{outcomes:?}"
    );
}

#[wasm_bindgen_test]
async fn http_sink_per_event_requests_run_concurrently_and_keep_their_order() {
    let tag = unique("gather");
    let sink =
        HttpSink::builder(format!("{}/gather/{tag}/3", server())).concurrency(3).build().expect("sink");
    assert_eq!(sink.publish(&[event("A"), event("B"), event("C")]).await, vec![Outcome::Ok; 3]);

    let sink =
        HttpSink::builder(format!("{}/status-from-type", server())).concurrency(2).build().expect("sink");
    let batch: Vec<Envelope> =
        ["status-200", "status-503", "status-404", "status-409"].iter().map(|t| event(t)).collect();
    let outcomes = sink.publish(&batch).await;
    assert!(
        matches!(
            outcomes.as_slice(),
            [Outcome::Ok, Outcome::Retriable(_), Outcome::NonRetriable(_), Outcome::Ok]
        ),
        "{outcomes:?}"
    );
}

#[wasm_bindgen_test]
fn http_sink_a_wrong_url_is_invalid_input() {
    // Read the server URL so a missing server fails this test too.
    assert!(server().starts_with("http://"));
    for url in
        ["", "not a url", "127.0.0.1:8080/hook", "ftp://127.0.0.1/", "http://", "http://127.0.0.1:70000/"]
    {
        let err = HttpSink::new(url).expect_err(url);
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{url}");
    }
}
