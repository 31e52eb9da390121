//! The browser forwarder ([`TabForwarder`]) over the IndexedDB store, in a
//! real browser: one tab forwards, another takes over, a lock held in a
//! worker keeps a tab following, the `online` event closes the breaker.
#![cfg(target_arch = "wasm32")]

use std::sync::{Arc, Mutex};

use outbox_core::prelude::*;
use outbox_core::{ActorId, Commit, Envelope, EventId, NewEvent, async_trait};
use outbox_forwarder::browser::{TabForwarder, TabRole, lock_name};
use outbox_forwarder::{ForwarderConfig, Outcome, Sink};
use outbox_store_idb::{IdbStore, channel_name};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_test::wasm_bindgen_test;

wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

fn actor(s: &str) -> ActorId {
    ActorId::new(s).expect("actor id")
}

fn event(origin: &ActorId, n: u64) -> NewEvent {
    NewEvent::json(origin.clone(), "T", &serde_json::json!({ "n": n })).expect("json")
}

/// A database name no other test (or earlier run in this profile) uses.
fn unique(tag: &str) -> String {
    format!("{tag}-{}", uuid::Uuid::now_v7())
}

/// Waits (bounded: `within_ms` of real time) until `cond` holds, checking
/// every 10 ms; panics naming `what` if it never does. Browser events
/// (a lock handed over, a channel message) arrive on the event loop, so
/// tests wait for their effect, never for a fixed time.
async fn wait_until(what: &str, within_ms: u32, mut cond: impl FnMut() -> bool) {
    let mut waited = 0;
    while !cond() {
        assert!(waited < within_ms, "{what}: not within {within_ms} ms");
        gloo_timers::future::TimeoutFuture::new(10).await;
        waited += 10;
    }
}

/// Records what it was handed.
#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<EventId>>);

impl Recorder {
    fn ids(&self) -> Vec<EventId> {
        self.0.lock().expect("lock").clone()
    }
}

#[async_trait(?Send)]
impl Sink for Recorder {
    async fn publish(&self, batch: &[Envelope]) -> Vec<Outcome> {
        self.0.lock().expect("lock").extend(batch.iter().map(|e| e.id));
        batch.iter().map(|_| Outcome::Ok).collect()
    }
}

/// A long idle interval: delivery within the tests' bounds then proves
/// the commit woke the leader (BroadcastChannel), not its timer.
fn cfg() -> ForwarderConfig {
    ForwarderConfig::default()
        .flush_interval(std::time::Duration::from_secs(30))
        .max_idle_interval(std::time::Duration::from_secs(30))
}

/// Starts a tab's forwarder over `store` under the names the IndexedDB
/// store's tabs meet by.
fn start(store: &Arc<IdbStore>, sink: Arc<dyn Sink>, cfg: ForwarderConfig) -> TabForwarder {
    let db = store.name();
    TabForwarder::start(store.clone(), sink, cfg, &lock_name(db), &channel_name(db))
}

async fn commit_n(store: &IdbStore, a: &ActorId, from: u64, n: u64) -> Vec<EventId> {
    let events: Vec<NewEvent> = (from..from + n).map(|i| event(a, i)).collect();
    let ids = events.iter().map(|e| e.id).collect();
    store.put_state_and_events(Commit::events_only().events(events)).await.expect("commit");
    ids
}

/// Two "tabs" (two handles on one database, two forwarders): exactly one
/// holds the lock and forwards, including what the follower commits; when
/// it stops, the other takes over and forwards the rest; nothing twice.
#[wasm_bindgen_test]
async fn one_tab_forwards_and_the_other_takes_over_when_it_stops() {
    let name = unique("tabs");
    let (store_a, store_b) = (
        Arc::new(IdbStore::open(&name).await.expect("a")),
        Arc::new(IdbStore::open(&name).await.expect("b")),
    );
    let (sink_a, sink_b) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
    let a = start(&store_a, sink_a.clone(), cfg());
    wait_until("tab a leads", 5_000, || a.role() == TabRole::Leader).await;
    let b = start(&store_b, sink_b.clone(), cfg());

    // The follower commits durably; the leader is woken and forwards it.
    let origin = actor("form");
    let first = commit_n(&store_b, &origin, 0, 5).await;
    wait_until("leader forwards the follower's commit", 5_000, || sink_a.ids().len() == first.len()).await;
    assert_eq!(sink_a.ids(), first);
    assert_eq!(b.role(), TabRole::Follower);
    assert!(sink_b.ids().is_empty(), "the follower forwards nothing");

    a.stop().await;
    wait_until("tab b takes over", 5_000, || b.role() == TabRole::Leader).await;
    let second = commit_n(&store_a, &origin, 5, 5).await;
    wait_until("the new leader forwards", 5_000, || sink_b.ids().len() == second.len()).await;
    assert_eq!(sink_b.ids(), second);
    assert_eq!(sink_a.ids(), first, "the stopped tab forwards nothing more");
    assert_eq!(store_a.stats().await.expect("stats").pending, 0);
    b.stop().await;
}

/// Another context (a dedicated worker) holding the origin's lock keeps
/// this tab a follower; the moment the worker lets go, this tab leads and
/// delivers what was committed meanwhile.
#[wasm_bindgen_test]
async fn a_lock_held_in_a_worker_keeps_this_tab_following() {
    let name = unique("worker");
    let src = format!(
        "navigator.locks.request({:?}, () => new Promise(release => {{ \
            self.onmessage = () => release(); postMessage('held'); }}));",
        lock_name(&name)
    );
    let parts = js_sys::Array::of1(&src.into());
    let opts = web_sys::BlobPropertyBag::new();
    opts.set_type("text/javascript");
    let blob = web_sys::Blob::new_with_str_sequence_and_options(&parts, &opts).expect("blob");
    let url = web_sys::Url::create_object_url_with_blob(&blob).expect("url");
    let worker = web_sys::Worker::new(&url).expect("worker");
    let held = Arc::new(Mutex::new(false));
    let flag = held.clone();
    let on_msg = wasm_bindgen::closure::Closure::<dyn FnMut(JsValue)>::new(move |_| {
        *flag.lock().expect("lock") = true;
    });
    worker.set_onmessage(Some(on_msg.as_ref().unchecked_ref()));
    wait_until("the worker holds the lock", 5_000, || *held.lock().expect("lock")).await;

    let store = Arc::new(IdbStore::open(&name).await.expect("open"));
    let sink = Arc::new(Recorder::default());
    let tab = start(&store, sink.clone(), cfg());
    let ids = commit_n(&store, &actor("form"), 0, 3).await;
    // The lock manager reports this tab's request as waiting behind the
    // worker's: it is queued, not refused, and not forwarding.
    let mut waited = 0;
    while lock_requests_waiting(&lock_name(&name)).await != 1 {
        assert!(waited < 5_000, "this tab's lock request is not queued behind the worker's");
        gloo_timers::future::TimeoutFuture::new(10).await;
        waited += 10;
    }
    assert_eq!(tab.role(), TabRole::Follower);
    assert!(sink.ids().is_empty());

    worker.post_message(&JsValue::NULL).expect("post");
    wait_until("this tab leads once the worker lets go", 5_000, || tab.role() == TabRole::Leader).await;
    wait_until("and delivers the backlog", 5_000, || sink.ids().len() == ids.len()).await;
    assert_eq!(sink.ids(), ids);
    tab.stop().await;
    worker.terminate();
}

/// How many requests for lock `name` are waiting (`navigator.locks.query()`).
async fn lock_requests_waiting(name: &str) -> usize {
    let locks = js_sys::Reflect::get(&web_sys::window().expect("window").navigator(), &"locks".into())
        .expect("navigator.locks");
    let query: js_sys::Function =
        js_sys::Reflect::get(&locks, &"query".into()).expect("query").unchecked_into();
    let p: js_sys::Promise = query.call0(&locks).expect("call").unchecked_into();
    let snapshot = wasm_bindgen_futures::JsFuture::from(p).await.expect("query result");
    let pending: js_sys::Array =
        js_sys::Reflect::get(&snapshot, &"pending".into()).expect("pending").unchecked_into();
    pending
        .iter()
        .filter(|r| {
            js_sys::Reflect::get(r, &"name".into()).ok().and_then(|n| n.as_string()).as_deref() == Some(name)
        })
        .count()
}

/// Fails every event while `down`, records what it delivered otherwise.
#[derive(Debug, Default)]
struct Flaky {
    down: std::sync::atomic::AtomicBool,
    delivered: Recorder,
}

#[async_trait(?Send)]
impl Sink for Flaky {
    async fn publish(&self, batch: &[Envelope]) -> Vec<Outcome> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return batch.iter().map(|_| Outcome::Retriable("offline".into())).collect();
        }
        self.delivered.publish(batch).await
    }
}

/// The `online` event reaches the leader: its open circuit breaker goes
/// to a probe at once, so the event that failed and what was committed
/// during the outage are delivered now, not after the breaker's 60 s (a
/// commit's own wake-up cannot pass an open breaker). Without the event
/// this test fails.
#[wasm_bindgen_test]
async fn the_online_event_closes_the_breaker_and_delivers() {
    let store = Arc::new(IdbStore::open(&unique("online")).await.expect("open"));
    let sink = Arc::new(Flaky::default());
    sink.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let cfg = cfg()
        .breaker(outbox_forwarder::BreakerConfig {
            failure_threshold: 1,
            open_for: std::time::Duration::from_secs(60),
            max_open_for: std::time::Duration::from_secs(60),
            ..Default::default()
        })
        .retry(outbox_core::RetryPolicy::new(outbox_core::Backoff {
            base: std::time::Duration::from_secs(60),
            cap: std::time::Duration::from_secs(60),
        }));
    let tab = start(&store, sink.clone(), cfg);
    wait_until("tab leads", 5_000, || tab.role() == TabRole::Leader).await;
    // The sink is down: the first event fails and opens the circuit.
    let e0 = event(&actor("k0"), 0);
    let first = e0.id;
    store.put_state_and_events(Commit::events_only().event(e0)).await.expect("commit");
    let mut waited = 0;
    while store.list_pending(10).await.expect("list").first().is_none_or(|e| e.last_error.is_none()) {
        assert!(waited < 5_000, "the outage was not seen");
        gloo_timers::future::TimeoutFuture::new(10).await;
        waited += 10;
    }
    // The sink is back, unknown to the forwarder; two more commits wake it
    // but the open circuit lets nothing through.
    sink.down.store(false, std::sync::atomic::Ordering::SeqCst);
    let later: Vec<NewEvent> = (1..3).map(|i| event(&actor(&format!("k{i}")), i)).collect();
    let ids: Vec<EventId> = later.iter().map(|e| e.id).collect();
    store.put_state_and_events(Commit::events_only().events(later)).await.expect("commit");
    assert!(sink.delivered.ids().is_empty());

    let ev = web_sys::Event::new("online").expect("event");
    web_sys::window().expect("window").dispatch_event(&ev).expect("dispatch");
    wait_until("what was committed during the outage goes out after `online`", 5_000, || {
        sink.delivered.ids().len() == 3
    })
    .await;
    let got = sink.delivered.ids();
    assert_eq!(got[0], first, "the probe goes first: the event that failed");
    assert_eq!(got[1..].to_vec(), ids);
    tab.stop().await;
}
