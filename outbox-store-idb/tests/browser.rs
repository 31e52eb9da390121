//! IndexedDB specifics and tab leadership, in a real browser.
#![cfg(target_arch = "wasm32")]

mod common;

use std::sync::{Arc, Mutex};

use common::{unique, wait_until};
use indexed_db_futures::database::Database;
use indexed_db_futures::prelude::*;
use indexed_db_futures::transaction::TransactionMode;
use outbox_core::prelude::*;
use outbox_core::{
    ActorId, ClaimRequest, Commit, DurableStore, Envelope, ErrorKind, EventId, InboxMark, NewEvent, Version,
    async_trait,
};
use outbox_forwarder::{ForwarderConfig, Outcome, Sink};
use outbox_store_idb::{IdbStore, SCHEMA_VERSION, TabForwarder, TabRole, lock_name};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_test::wasm_bindgen_test;

wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

fn actor(s: &str) -> ActorId {
    ActorId::new(s).expect("actor id")
}

fn event(origin: &ActorId, n: u64) -> NewEvent {
    NewEvent::json(origin.clone(), "T", &serde_json::json!({ "n": n })).expect("json")
}

fn kind<T: std::fmt::Debug>(r: outbox_core::Result<T>) -> ErrorKind {
    r.expect_err("expected an error").kind()
}

// ------------------------------------------------------------ atomicity

/// A request fails after the commit's state, first event and pending entry
/// were already written in its transaction (the second event's id `add`
/// hits an existing id): the transaction is aborted, never committed, so
/// none of the earlier writes is there afterwards.
#[wasm_bindgen_test]
async fn a_request_error_mid_commit_leaves_nothing_written() {
    let store = IdbStore::open(&unique("abort")).await.expect("open");
    let a = actor("form");
    let old = event(&a, 0);
    store.put_state_and_events(Commit::events_only().event(old.clone())).await.expect("first commit");
    let before = store.stats().await.expect("stats");

    let mut dup = event(&a, 2);
    dup.id = old.id;
    let c = Commit::state(a.clone(), Version::NONE, b"draft".to_vec()).event(event(&a, 1)).event(dup);
    assert_eq!(kind(store.put_state_and_events(c).await), ErrorKind::DuplicateEvent);

    assert_eq!(store.load_state(&a).await.expect("load"), None, "the state write was rolled back");
    assert_eq!(store.stats().await.expect("stats"), before, "no event of the failed commit is stored");
    assert_eq!(
        store.list_pending(10).await.expect("list").iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![old.id]
    );

    // Same for an inbox mark that exists already, after state and events.
    let consumer = outbox_core::ConsumerId::new("c").expect("consumer");
    let mark = InboxMark { consumer: consumer.clone(), origin: a.clone(), event_id: old.id };
    store.put_state_and_events(Commit::events_only().inbox_mark(mark.clone())).await.expect("mark");
    let c = Commit::state(a.clone(), Version::NONE, b"x".to_vec()).event(event(&a, 3)).inbox_mark(mark);
    assert_eq!(kind(store.put_state_and_events(c).await), ErrorKind::AlreadyProcessed);
    assert_eq!(store.load_state(&a).await.expect("load"), None);
    assert_eq!(store.stats().await.expect("stats"), before);

    // The store is still usable and the sequence did not move.
    let next = event(&a, 4);
    store.put_state_and_events(Commit::events_only().event(next.clone())).await.expect("commit after");
    let ids: Vec<EventId> = store.list_pending(10).await.expect("list").iter().map(|e| e.id).collect();
    assert_eq!(ids, vec![old.id, next.id]);
}

// --------------------------------------------------------------- schema

/// A database at a higher version than this build knows is refused with
/// `SchemaTooNew` and left as it was.
#[wasm_bindgen_test]
async fn a_newer_database_is_refused_and_left_untouched() {
    let name = unique("newer");
    let newer = SCHEMA_VERSION + 1;
    let db = Database::open(name.as_str())
        .with_version(newer)
        .with_on_upgrade_needed(|_, db| {
            db.create_object_store("future").build()?;
            Ok(())
        })
        .await
        .expect("create a newer database");
    db.close();
    match IdbStore::open(&name).await {
        Err(outbox_core::Error::SchemaTooNew { found, supported }) => {
            assert_eq!((found, supported), (newer, SCHEMA_VERSION));
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    let db = Database::open(name.as_str()).await.expect("reopen");
    assert_eq!(db.version() as u32, newer);
    assert!(db.object_store_names().any(|n| n == "future"), "left untouched");
    db.close();
}

/// A database of that name that is not an outbox is `Corrupted`, not a
/// panic and not silently used.
#[wasm_bindgen_test]
async fn a_foreign_database_is_corrupted() {
    let name = unique("foreign");
    let db = Database::open(name.as_str())
        .with_version(SCHEMA_VERSION)
        .with_on_upgrade_needed(|_, db| {
            db.create_object_store("someone-else").build()?;
            Ok(())
        })
        .await
        .expect("create");
    db.close();
    assert_eq!(kind(IdbStore::open(&name).await), ErrorKind::Corrupted);
}

/// Bytes that do not decode are `Corrupted` from every read path.
#[wasm_bindgen_test]
async fn a_damaged_row_is_a_typed_error() {
    let name = unique("damaged");
    let store = IdbStore::open(&name).await.expect("open");
    let a = actor("a");
    store.put_state_and_events(Commit::events_only().event(event(&a, 1))).await.expect("commit");
    {
        let db = Database::open(name.as_str()).await.expect("raw open");
        let tx =
            db.transaction(["events", "pending"]).with_mode(TransactionMode::Readwrite).build().expect("tx");
        let junk: JsValue = js_sys::Uint8Array::from(&[1u8, 2, 3][..]).into();
        for st in ["events", "pending"] {
            let s = tx.object_store(st).expect("store");
            s.put(junk.clone())
                .with_key(JsValue::from_f64(1.0))
                .primitive()
                .expect("put")
                .await
                .expect("put");
        }
        tx.commit().await.expect("commit junk");
        db.close();
    }
    assert_eq!(kind(store.list_pending(10).await), ErrorKind::Corrupted);
    assert_eq!(kind(store.stats().await), ErrorKind::Corrupted);
    let g =
        store.acquire_leadership("h", std::time::Duration::from_secs(5)).await.expect("lead").expect("free");
    assert_eq!(
        kind(store.claim(&g, ClaimRequest::new(10, std::time::Duration::from_secs(5))).await),
        ErrorKind::Corrupted
    );
}

/// DOM exception names map to the core kinds (a real `DOMException`
/// each; the browser will not fill its quota on cue).
#[wasm_bindgen_test]
fn dom_errors_map_to_core_kinds() {
    let cases = [
        ("QuotaExceededError", ErrorKind::QuotaExceeded),
        ("InvalidStateError", ErrorKind::Unavailable),
        ("TransactionInactiveError", ErrorKind::Unavailable),
        ("AbortError", ErrorKind::Unavailable),
        ("UnknownError", ErrorKind::Unavailable),
        ("NotFoundError", ErrorKind::Corrupted),
        ("SecurityError", ErrorKind::PermissionDenied),
        ("DataCloneError", ErrorKind::Internal),
    ];
    for (name, want) in cases {
        let e = web_sys::DomException::new_with_message_and_name("test", name).expect("DOMException");
        let got = outbox_store_idb::error::from_dom(&e.name(), &e.message(), "test").kind();
        assert_eq!(got, want, "{name}");
    }
    assert!(outbox_store_idb::error::from_dom("UnknownError", "", "t").is_retryable());
    assert!(!outbox_store_idb::error::from_dom("QuotaExceededError", "", "t").is_retryable());
}

/// Capabilities: durable, reopenable, exclusive leadership, and whether
/// the browser granted persistent storage: a `bool` where the browser has
/// `navigator.storage.persisted` (Chromium, Firefox), `None` where not
/// (WebKitGTK).
#[wasm_bindgen_test]
async fn capabilities_report_persistence() {
    let store = IdbStore::open(&unique("caps")).await.expect("open");
    let c = store.capabilities();
    assert_eq!(c.backend, "indexeddb");
    assert!(c.durable && c.survives_reopen);
    let nav = web_sys::window().expect("window").navigator();
    let has_api = js_sys::Reflect::get(&nav, &"storage".into())
        .ok()
        .filter(|s| !s.is_undefined())
        .and_then(|s| js_sys::Reflect::get(&s, &"persisted".into()).ok())
        .is_some_and(|f| f.is_function());
    assert_eq!(c.persistent.is_some(), has_api, "persisted() is reported exactly where the browser has it");
    assert_eq!(c.persistent, store.persisted());
}

// ----------------------------------------------------------- leadership

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
    ForwarderConfig {
        flush_interval: std::time::Duration::from_secs(30),
        max_idle_interval: std::time::Duration::from_secs(30),
        ..Default::default()
    }
}

async fn commit_n(store: &IdbStore, a: &ActorId, from: u64, n: u64) -> Vec<EventId> {
    let events: Vec<NewEvent> = (from..from + n).map(|i| event(a, i)).collect();
    let ids = events.iter().map(|e| e.id).collect();
    store.put_state_and_events(Commit::events_only().events(events)).await.expect("commit");
    ids
}

/// A claim reads the pending index in chunks until its batch is full: a
/// due event behind several chunks' worth of held ones (one key whose
/// head is leased) is still found, and nothing held is handed out.
#[wasm_bindgen_test]
async fn a_claim_finds_a_due_event_behind_chunks_of_held_ones() {
    let store = IdbStore::open(&unique("chunks")).await.expect("open");
    let (busy, idle) = (actor("busy"), actor("idle"));
    let held = commit_n(&store, &busy, 0, 300).await;
    let due = commit_n(&store, &idle, 0, 1).await;
    let grant = store
        .acquire_leadership("t", std::time::Duration::from_secs(60))
        .await
        .expect("acquire")
        .expect("granted");
    let lease = std::time::Duration::from_secs(60);
    let head = store.claim(&grant, ClaimRequest::new(1, lease)).await.expect("claim");
    assert_eq!(head.iter().map(|e| e.id).collect::<Vec<_>>(), held[..1]);
    // The busy key is held from its leased head on: 299 entries (several
    // chunks) stand before the idle key's event.
    let next = store.claim(&grant, ClaimRequest::new(1, lease)).await.expect("claim");
    assert_eq!(next.iter().map(|e| e.id).collect::<Vec<_>>(), due);
    let rest = store.claim(&grant, ClaimRequest::new(500, lease)).await.expect("claim");
    assert!(rest.is_empty(), "a held key's events are not handed out: {rest:?}");
}

/// A tab closed mid-batch leaves its grant unreleased and its batch
/// leased. The next lock holder (same holder name, another handle) voids
/// those leases as it takes over, so the batch is claimable at once; the
/// same handle re-acquiring voids nothing, and a released grant's leases
/// stand.
#[wasm_bindgen_test]
async fn a_tab_closed_mid_batch_leaves_no_lease_for_the_next_to_wait_out() {
    let name = unique("takeover");
    let (ttl, lease) = (std::time::Duration::from_secs(30), std::time::Duration::from_secs(3600));
    let holder = lock_name(&name);
    let a = IdbStore::open(&name).await.expect("open a");
    let first = commit_n(&a, &actor("x"), 0, 1).await;
    let ga = a.acquire_leadership(&holder, ttl).await.expect("acquire").expect("a leads");
    assert_eq!(a.claim(&ga, ClaimRequest::new(10, lease)).await.expect("claim").len(), 1);
    drop(a); // the tab is closed: no ack, no release

    let b = IdbStore::open(&name).await.expect("open b");
    let gb = b.acquire_leadership(&holder, ttl).await.expect("acquire").expect("b takes over");
    let again = b.claim(&gb, ClaimRequest::new(10, lease)).await.expect("claim");
    assert_eq!(
        again.iter().map(|e| (e.id, e.attempts)).collect::<Vec<_>>(),
        vec![(first[0], 2)],
        "claimable at once, not in an hour; the lost attempt is counted"
    );
    let gb2 = b.acquire_leadership(&holder, ttl).await.expect("acquire").expect("b again");
    assert!(gb2.epoch > gb.epoch);
    assert!(b.claim(&gb2, ClaimRequest::new(10, lease)).await.expect("claim").is_empty(), "b's lease holds");
    b.release_leadership(&gb2).await.expect("release");
    drop(b);

    let c = IdbStore::open(&name).await.expect("open c");
    let gc = c.acquire_leadership(&holder, ttl).await.expect("acquire").expect("c leads");
    assert!(
        c.claim(&gc, ClaimRequest::new(10, lease)).await.expect("claim").is_empty(),
        "released: it stands"
    );
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
    let a = TabForwarder::start(store_a.clone(), sink_a.clone(), cfg());
    wait_until("tab a leads", 5_000, || a.role() == TabRole::Leader).await;
    let b = TabForwarder::start(store_b.clone(), sink_b.clone(), cfg());

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
    let tab = TabForwarder::start(store.clone(), sink.clone(), cfg());
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
    let cfg = ForwarderConfig {
        breaker: outbox_forwarder::BreakerConfig {
            failure_threshold: 1,
            open_for: std::time::Duration::from_secs(60),
            max_open_for: std::time::Duration::from_secs(60),
            ..Default::default()
        },
        retry: outbox_core::RetryPolicy {
            backoff: outbox_core::Backoff {
                base: std::time::Duration::from_secs(60),
                cap: std::time::Duration::from_secs(60),
            },
            max_attempts: 100,
        },
        ..cfg()
    };
    let tab = TabForwarder::start(store.clone(), sink.clone(), cfg);
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
