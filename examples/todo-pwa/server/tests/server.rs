//! The sync server over HTTP, started in-process on a free port: each
//! event applied once (a redelivery dropped and counted), the failure
//! switch, the static files, a restart, and the real `TodoList` actor
//! delivering to it through the HTTP sink.
#![cfg(not(target_arch = "wasm32"))]

use std::sync::Arc;
use std::time::Duration;

use outbox::{
    ActorId, Durability, Envelope, NewEvent, OutboxConfig, Outcome, Sink, Timestamp, configure_outbox,
};
use outbox_example_todo::{TodoList, TodoMsg};
use outbox_sink_http::HttpSink;
use todo_pwa_server::{Config, Running, StateReport};

async fn start(dir: &tempfile::TempDir) -> Running {
    let web = dir.path().join("web");
    std::fs::create_dir_all(web.join("pkg")).expect("mkdir");
    std::fs::write(web.join("index.html"), "<!doctype html><title>t</title>").expect("write");
    std::fs::write(web.join("pkg/app_bg.wasm"), b"\0asm\x01\0\0\0").expect("write");
    std::fs::write(web.join("manifest.webmanifest"), "{}").expect("write");
    std::fs::write(dir.path().join("secret.txt"), "no").expect("write");
    todo_pwa_server::start(Config::new(0, dir.path().join("db/server.db")).static_dir(web))
        .await
        .expect("start")
}

async fn state(server: &Running) -> StateReport {
    let body = reqwest::get(format!("{}/state", server.url)).await.expect("GET /state");
    assert_eq!(body.status(), 200);
    serde_json::from_slice(&body.bytes().await.expect("body")).expect("JSON state")
}

async fn post(url: String) -> reqwest::Response {
    reqwest::Client::new().post(url).send().await.expect("POST")
}

fn added(list: &str, id: u32, title: &str) -> Envelope {
    let e = NewEvent::json(
        ActorId::new(list).expect("id"),
        "TODO_ADDED",
        &serde_json::json!({"id": id, "title": title}),
    )
    .expect("event");
    Envelope::committed(e, Timestamp::from_millis(1_700_000_000_000))
}

#[tokio::test]
async fn the_same_event_posted_twice_is_applied_once_and_counted_as_a_duplicate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(&dir).await;
    let sink = HttpSink::new(format!("{}/events", server.url)).expect("sink");
    let event = added("inbox", 0, "milk");
    assert_eq!(sink.publish(std::slice::from_ref(&event)).await, vec![Outcome::Ok]);
    assert_eq!(
        sink.publish(std::slice::from_ref(&event)).await,
        vec![Outcome::Ok],
        "a redelivery is acknowledged"
    );

    let s = state(&server).await;
    assert_eq!((s.applied, s.duplicates, s.rejected), (1, 1, 0));
    assert_eq!(s.events.len(), 1);
    assert_eq!(s.events[0].id, event.id.to_string());
    let inbox = &s.lists["inbox"];
    assert_eq!(inbox.items.len(), 1);
    assert_eq!(inbox.items[0].title, "milk");
    server.stop().await;
}

#[tokio::test]
async fn the_failure_switch_answers_events_with_its_status_then_turns_itself_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(&dir).await;
    let sink = HttpSink::new(format!("{}/events", server.url)).expect("sink");
    let on = post(format!("{}/admin/fail?status=503&count=2", server.url)).await;
    assert_eq!(on.status(), 200);
    assert_eq!(state(&server).await.fail.map(|f| (f.status, f.remaining)), Some((503, Some(2))));

    let event = added("inbox", 0, "milk");
    for _ in 0..2 {
        let outcome = sink.publish(std::slice::from_ref(&event)).await;
        assert!(matches!(outcome[..], [Outcome::Retriable(_)]), "503 is retriable: {outcome:?}");
    }
    assert_eq!(sink.publish(std::slice::from_ref(&event)).await, vec![Outcome::Ok]);
    let s = state(&server).await;
    assert_eq!((s.applied, s.duplicates, s.rejected), (1, 0, 2));
    assert!(s.fail.is_none());

    // Without a count it stays on until recovered; a Retry-After is sent.
    post(format!("{}/admin/fail?status=503&retry_after=7", server.url)).await;
    let outcome = sink.publish(&[added("inbox", 1, "bread")]).await;
    assert!(matches!(outcome[..], [Outcome::RetryAfter(d, _)] if d == Duration::from_secs(7)), "{outcome:?}");
    assert_eq!(post(format!("{}/admin/recover", server.url)).await.status(), 200);
    assert_eq!(sink.publish(&[added("inbox", 1, "bread")]).await, vec![Outcome::Ok]);

    // A status the sink treats as final dead-letters the event.
    post(format!("{}/admin/fail?status=400&count=1", server.url)).await;
    let outcome = sink.publish(&[added("inbox", 2, "jam")]).await;
    assert!(matches!(outcome[..], [Outcome::NonRetriable(_)]), "{outcome:?}");

    assert_eq!(post(format!("{}/admin/fail?status=abc", server.url)).await.status(), 400);
    assert_eq!(post(format!("{}/admin/fail?colour=red", server.url)).await.status(), 400);
    server.stop().await;
}

#[tokio::test]
async fn an_event_the_app_cannot_emit_is_refused_for_good() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(&dir).await;
    let sink = HttpSink::new(format!("{}/events", server.url)).expect("sink");
    let e = NewEvent::json(ActorId::new("inbox").expect("id"), "TODO_EXPLODED", &1).expect("event");
    let outcome = sink.publish(&[Envelope::committed(e, Timestamp::EPOCH)]).await;
    assert!(matches!(outcome[..], [Outcome::NonRetriable(_)]), "{outcome:?}");
    let not_json =
        reqwest::Client::new().post(format!("{}/events", server.url)).body("{").send().await.expect("POST");
    assert_eq!(not_json.status(), 400);
    let s = state(&server).await;
    assert_eq!((s.applied, s.duplicates), (0, 0));
    server.stop().await;
}

#[tokio::test]
async fn static_files_are_served_with_their_mime_types_and_nothing_outside_the_root() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(&dir).await;
    let get = |path: &str| reqwest::get(format!("{}{path}", server.url));
    let ct = |r: &reqwest::Response| {
        r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
    };
    let index = get("/").await.expect("GET /");
    assert_eq!(index.status(), 200);
    assert!(ct(&index).starts_with("text/html"));
    let wasm = get("/pkg/app_bg.wasm").await.expect("GET wasm");
    assert_eq!((wasm.status().as_u16(), ct(&wasm).as_str()), (200, "application/wasm"));
    let manifest = get("/manifest.webmanifest").await.expect("GET manifest");
    assert_eq!(ct(&manifest), "application/manifest+json");
    assert_eq!(get("/missing.js").await.expect("GET").status(), 404);
    assert_eq!(get("/../secret.txt").await.expect("GET").status(), 404);
    assert_eq!(get("/%2e%2e/secret.txt").await.expect("GET").status(), 404);
    server.stop().await;
}

#[tokio::test]
async fn what_was_applied_and_dropped_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(&dir).await;
    let sink = HttpSink::new(format!("{}/events", server.url)).expect("sink");
    let event = added("inbox", 0, "milk");
    assert_eq!(sink.publish(std::slice::from_ref(&event)).await, vec![Outcome::Ok]);
    server.stop().await;

    let server = start(&dir).await;
    let sink = HttpSink::new(format!("{}/events", server.url)).expect("sink");
    assert_eq!(sink.publish(std::slice::from_ref(&event)).await, vec![Outcome::Ok]);
    let s = state(&server).await;
    assert_eq!((s.applied, s.duplicates), (1, 1), "the inbox remembered the event across the restart");
    server.stop().await;
}

/// The app's actor, natively, delivering through the HTTP sink: the
/// server ends with the same list as the actor's committed state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_todo_actor_delivering_over_http_leaves_the_server_with_the_same_list() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(&dir).await;
    let sink = HttpSink::new(format!("{}/events", server.url)).expect("sink");
    let config =
        OutboxConfig::default().durability(Durability::Memory).flush_interval(Duration::from_millis(20));
    let outbox = configure_outbox(config, Arc::new(sink)).await.expect("outbox");
    let list = outbox.spawn_actor(ActorId::new("groceries").expect("id"), TodoList).await.expect("spawn");
    for msg in [
        TodoMsg::Add("milk".into()),
        TodoMsg::Add("bread".into()),
        TodoMsg::Add("jam".into()),
        TodoMsg::Complete(0),
        TodoMsg::Rename(1, "rye bread".into()),
        TodoMsg::Delete(2),
    ] {
        list.send(msg).await.expect("committed");
    }
    let mut waited = Duration::ZERO;
    let s = loop {
        let s = state(&server).await;
        if s.applied == 6 {
            break s;
        }
        assert!(waited < Duration::from_secs(20), "not delivered within 20 s: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += Duration::from_millis(20);
    };
    assert_eq!(s.lists["groceries"], *list.state());
    let types: Vec<&str> = s.events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        ["TODO_ADDED", "TODO_ADDED", "TODO_ADDED", "TODO_COMPLETED", "TODO_RENAMED", "TODO_DELETED"]
    );
    outbox.shutdown().await;
    server.stop().await;
}
