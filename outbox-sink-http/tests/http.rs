//! The HTTP sink against a real HTTP/1.1 server on 127.0.0.1 in this test
//! process (`tests/support/server.rs`, the same server the browser suite
//! runs): the status mapping, `Retry-After`, timeouts, refused
//! connections, a large body, and the requests the server saw.
#![cfg(not(target_arch = "wasm32"))]

#[path = "support/server.rs"]
mod server;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use outbox_core::{ActorId, Envelope, ErrorKind, NewEvent, Outcome, Payload, Sink, Timestamp};
use outbox_sink_http::HttpSink;

fn event(event_type: &str) -> Envelope {
    let origin = ActorId::new("form-1").expect("actor");
    let e =
        NewEvent::json(origin, event_type, &serde_json::json!({ "field": "value", "n": 1 })).expect("json");
    Envelope::committed(e, Timestamp::from_millis(1_700_000_000_000))
}

async fn outcome_at(url: &str) -> Outcome {
    let sink = HttpSink::builder(url).timeout(Duration::from_secs(10)).build().expect("sink");
    let mut outcomes = sink.publish(&[event("T")]).await;
    assert_eq!(outcomes.len(), 1);
    outcomes.remove(0)
}

async fn start() -> server::Server {
    server::start(0).await.expect("test server")
}

#[tokio::test]
async fn http_sink_success_statuses_and_conflict_are_ok() {
    let s = start().await;
    for code in [200, 201, 202, 204, 409] {
        assert_eq!(outcome_at(&format!("{}/status/{code}", s.url)).await, Outcome::Ok, "{code}");
    }
}

#[tokio::test]
async fn http_sink_timeout_throttling_and_server_errors_are_retriable() {
    let s = start().await;
    for code in [408, 429, 500, 502, 503] {
        let outcome = outcome_at(&format!("{}/status/{code}", s.url)).await;
        assert!(matches!(outcome, Outcome::Retriable(_)), "{code}: {outcome:?}");
    }
}

#[tokio::test]
async fn http_sink_retry_after_seconds_is_honoured() {
    let s = start().await;
    let outcome = outcome_at(&format!("{}/retry-after/7", s.url)).await;
    assert!(matches!(outcome, Outcome::RetryAfter(d, _) if d == Duration::from_secs(7)), "{outcome:?}");
    let outcome = outcome_at(&format!("{}/status/503?retry-after=0", s.url)).await;
    assert!(matches!(outcome, Outcome::RetryAfter(d, _) if d.is_zero()), "{outcome:?}");
}

#[tokio::test]
async fn http_sink_retry_after_http_date_is_honoured() {
    let s = start().await;
    // Two minutes from the server's now, whole seconds: between 118 and 120 s.
    let outcome = outcome_at(&format!("{}/status/503?retry-after-in=120", s.url)).await;
    assert!(
        matches!(outcome, Outcome::RetryAfter(d, _) if d > Duration::from_secs(115) && d <= Duration::from_secs(120)),
        "{outcome:?}"
    );
    // A date in the past: retry now.
    let past = "Sun,%2006%20Nov%201994%2008:49:37%20GMT";
    let outcome = outcome_at(&format!("{}/status/429?retry-after={past}", s.url)).await;
    assert!(matches!(outcome, Outcome::RetryAfter(d, _) if d.is_zero()), "{outcome:?}");
    // Not a date: plain retriable.
    let outcome = outcome_at(&format!("{}/status/429?retry-after=later", s.url)).await;
    assert!(matches!(outcome, Outcome::Retriable(_)), "{outcome:?}");
}

#[tokio::test]
async fn http_sink_client_errors_and_redirects_are_not_retriable() {
    let s = start().await;
    for code in [400, 401, 403, 404, 413, 422, 301, 302, 307, 308] {
        let outcome = outcome_at(&format!("{}/status/{code}", s.url)).await;
        assert!(matches!(outcome, Outcome::NonRetriable(_)), "{code}: {outcome:?}");
    }
    // Retry-After on a refusal changes nothing.
    let outcome = outcome_at(&format!("{}/status/400?retry-after=5", s.url)).await;
    assert!(matches!(outcome, Outcome::NonRetriable(_)), "{outcome:?}");
}

#[tokio::test]
async fn http_sink_no_answer_is_retriable_after_the_timeout() {
    let s = start().await;
    let sink = HttpSink::builder(format!("{}/hang", s.url))
        .timeout(Duration::from_millis(200))
        .build()
        .expect("sink");
    let started = Instant::now();
    let outcomes = sink.publish(&[event("T")]).await;
    let took = started.elapsed();
    assert!(matches!(outcomes.as_slice(), [Outcome::Retriable(_)]), "{outcomes:?}");
    assert!(took >= Duration::from_millis(200) && took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test]
async fn http_sink_connection_refused_is_retriable() {
    let port = server::free_port().expect("port");
    let outcome = outcome_at(&format!("http://127.0.0.1:{port}/hook")).await;
    assert!(matches!(outcome, Outcome::Retriable(_)), "{outcome:?}");
}

#[tokio::test]
async fn http_sink_a_success_with_a_huge_body_is_ok() {
    let s = start().await;
    // 4 GiB announced: the sink must not read it to call it a success.
    let sink = HttpSink::builder(format!("{}/big/{}", s.url, 4_u64 << 30))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("sink");
    assert_eq!(sink.publish(&[event("T")]).await, vec![Outcome::Ok]);
}

#[tokio::test]
async fn http_sink_request_carries_the_event_and_the_headers() {
    let s = start().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let sink = HttpSink::builder(format!("{}/echo/headers", s.url))
        .header("X-Api-Key", "static-key")
        .headers_from(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            vec![("Authorization".into(), format!("Bearer token-{n}"))]
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
        .with_header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        .with_header("user", "ann")
        .with_schema_version(2),
        Timestamp::from_millis(1_700_000_000_123),
    );
    let bytes = Envelope::committed(
        NewEvent::new(ActorId::new("form-3").expect("actor"), "BLOB", Payload::bytes(vec![0, 1, 2, 255])),
        Timestamp::from_millis(5),
    );
    let batch = [event("FORM_OPENED"), traced.clone(), bytes.clone()];
    assert_eq!(sink.publish(&batch).await, vec![Outcome::Ok; 3]);
    assert_eq!(calls.load(Ordering::SeqCst), 3, "the callback runs once per request");

    let seen = s.seen("headers");
    assert_eq!(seen.len(), 3);
    let mut tokens: Vec<&str> = seen.iter().flat_map(|r| r.header("authorization")).collect();
    tokens.sort_unstable();
    assert_eq!(tokens, vec!["Bearer token-1", "Bearer token-2", "Bearer token-3"]);
    for e in &batch {
        let id = e.id.to_string();
        let r = seen
            .iter()
            .find(|r| r.header("idempotency-key") == vec![id.as_str()])
            .expect("request for event");
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/echo/headers");
        assert_eq!(r.header("content-type"), vec!["application/json"]);
        assert_eq!(r.header("outbox-origin"), vec![e.origin.as_str()]);
        assert_eq!(r.header("outbox-event-type"), vec![e.event_type.as_str()]);
        assert_eq!(r.header("x-api-key"), vec!["static-key"]);
        let body: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON body");
        assert_eq!(body["id"], id);
        assert_eq!(body["origin"], e.origin.as_str());
        assert_eq!(body["key"], e.key.as_str());
        assert_eq!(body["type"], e.event_type.as_str());
        assert_eq!(body["schema_version"], e.schema_version);
        assert_eq!(body["created_at"], e.created_at.as_millis());
        assert_eq!(body["headers"], serde_json::to_value(&e.headers).expect("headers"));
    }
    let r = |e: &Envelope| {
        let id = e.id.to_string();
        seen.iter().find(|r| r.header("idempotency-key") == vec![id.as_str()]).cloned().expect("request")
    };
    let traced_req = r(&traced);
    assert_eq!(
        traced_req.header("traceparent"),
        vec!["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]
    );
    assert!(traced_req.header("user").is_empty(), "only trace headers become HTTP headers");
    let body: serde_json::Value = serde_json::from_slice(&traced_req.body).expect("json");
    assert_eq!(body["payload"], serde_json::json!({"saved": true}));
    assert_eq!(body["headers"]["user"], "ann");
    let body: serde_json::Value = serde_json::from_slice(&r(&bytes).body).expect("json");
    assert_eq!(body["payload"], serde_json::json!({"base64": "AAEC/w=="}));
    assert!(r(&bytes).header("traceparent").is_empty());
}

#[tokio::test]
async fn http_sink_batch_mode_sends_one_array_and_applies_its_status_to_all() {
    let s = start().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let sink = HttpSink::builder(format!("{}/echo/batch", s.url))
        .batch(true)
        .headers_from(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            vec![("Authorization".into(), "Bearer b".into())]
        })
        .build()
        .expect("sink");
    let batch = [event("A"), event("B"), event("C")];
    assert_eq!(sink.publish(&batch).await, vec![Outcome::Ok; 3]);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let seen = s.seen("batch");
    assert_eq!(seen.len(), 1, "one request for the whole batch");
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].header("authorization"), vec!["Bearer b"]);
    assert_eq!(seen[0].header("content-type"), vec!["application/json"]);
    let body: serde_json::Value = serde_json::from_slice(&seen[0].body).expect("json");
    let ids: Vec<String> =
        body.as_array().expect("array").iter().map(|e| e["id"].as_str().expect("id").to_owned()).collect();
    assert_eq!(ids, batch.iter().map(|e| e.id.to_string()).collect::<Vec<_>>());
    assert_eq!(body[1]["type"], "B");

    let failing = HttpSink::builder(format!("{}/status/503", s.url)).batch(true).build().expect("sink");
    let outcomes = failing.publish(&batch).await;
    assert_eq!(outcomes.len(), 3);
    assert!(outcomes.iter().all(|o| matches!(o, Outcome::Retriable(_))), "{outcomes:?}");
    assert!(failing.publish(&[]).await.is_empty());
}

#[tokio::test]
async fn http_sink_per_event_requests_run_concurrently_and_keep_their_order() {
    let s = start().await;
    // The server answers only once all three requests are in flight.
    let sink = HttpSink::builder(format!("{}/gather/three/3", s.url)).concurrency(3).build().expect("sink");
    assert_eq!(sink.publish(&[event("A"), event("B"), event("C")]).await, vec![Outcome::Ok; 3]);

    let sink = HttpSink::builder(format!("{}/status-from-type", s.url)).concurrency(2).build().expect("sink");
    let types = ["status-200", "status-503", "status-404", "status-409", "status-429", "status-201"];
    let batch: Vec<Envelope> = types.iter().map(|t| event(t)).collect();
    let outcomes = sink.publish(&batch).await;
    assert!(
        matches!(
            outcomes.as_slice(),
            [
                Outcome::Ok,
                Outcome::Retriable(_),
                Outcome::NonRetriable(_),
                Outcome::Ok,
                Outcome::Retriable(_),
                Outcome::Ok
            ]
        ),
        "{outcomes:?}"
    );
}

#[tokio::test]
async fn http_sink_a_wrong_url_is_invalid_input() {
    for url in
        ["", "not a url", "127.0.0.1:8080/hook", "ftp://127.0.0.1/", "http://", "http://127.0.0.1:70000/"]
    {
        let err = HttpSink::new(url).expect_err(url);
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{url}");
    }
    let err =
        HttpSink::builder("http://127.0.0.1/").header("Bad Header", "x").build().expect_err("bad header");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}
