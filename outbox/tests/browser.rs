//! The `outbox` facade in a real browser (wasm32, IndexedDB): the same
//! application code as natively (an `Actor`, `configure_outbox`,
//! `spawn_actor`, `send`, `watch`), a form saved offline, the outbox
//! reopened, delivered once; listeners in the page; the HTTP sink against
//! the test server.
#![cfg(target_arch = "wasm32")]

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use outbox::consumer::{Delivery, Handler, HandlerError, Tx, once_per_event};
use outbox::{
    Actor, ActorError, ActorId, Bus, ConsumerId, Context, Durability, Envelope, EventId, OutboxConfig,
    Outcome, Sink, StoreChoice, Topic, async_trait, configure_outbox,
};
use serde::{Deserialize, Serialize};
use wasm_bindgen_test::wasm_bindgen_test;

wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
enum Form {
    #[default]
    Empty,
    Saved {
        title: String,
    },
}

#[derive(Debug, thiserror::Error)]
enum FormError {
    #[error("a form needs a title")]
    NoTitle,
}

struct FormActor;

/// The same handler as the native tests': async, typed error.
#[async_trait]
impl Actor for FormActor {
    type State = Form;
    type Message = String;
    type Error = FormError;

    async fn handle(&mut self, draft: &mut Form, title: String, ctx: &mut Context) -> Result<(), FormError> {
        if title.is_empty() {
            return Err(FormError::NoTitle);
        }
        // An await inside the handler: a timer on the page's event loop.
        gloo_timers::future::TimeoutFuture::new(1).await;
        *draft = Form::Saved { title: title.clone() };
        ctx.emit("FORM_SAVED", &title);
        Ok(())
    }
}

/// A sink that is offline until told otherwise, and records what it took.
#[derive(Debug, Default)]
struct Flaky {
    online: Cell<bool>,
    took: RefCell<Vec<EventId>>,
}

#[async_trait]
impl Sink for Flaky {
    async fn publish(&self, batch: &[Envelope]) -> Vec<Outcome> {
        if !self.online.get() {
            return batch.iter().map(|_| Outcome::Retriable("offline".into())).collect();
        }
        self.took.borrow_mut().extend(batch.iter().map(|e| e.id));
        batch.iter().map(|_| Outcome::Ok).collect()
    }
}

/// A database name no other test (or earlier run in this profile) uses.
fn unique(tag: &str) -> String {
    format!("{tag}-{}", EventId::new())
}

fn config(db: &str) -> OutboxConfig {
    OutboxConfig::default()
        .store(StoreChoice::IndexedDb(db.to_owned()))
        .flush_interval(std::time::Duration::from_millis(20))
}

async fn sleep_ms(ms: u32) {
    gloo_timers::future::TimeoutFuture::new(ms).await;
}

/// Waits (bounded: `within_ms` of real time) for `cond`, checking every
/// 10 ms: browser events arrive on the event loop, so tests wait for
/// their effect, never for a fixed time.
async fn wait_until(what: &str, within_ms: u32, mut cond: impl FnMut() -> bool) {
    let mut waited = 0;
    while !cond() {
        assert!(waited < within_ms, "{what}: not within {within_ms} ms");
        sleep_ms(10).await;
        waited += 10;
    }
}

#[wasm_bindgen_test]
async fn a_form_saved_offline_is_delivered_once_after_reopening() {
    let db = unique("facade-offline");
    let offline = Arc::new(Flaky::default());
    let outbox = configure_outbox(config(&db), offline.clone()).await.expect("configure");
    assert!(outbox.is_durable(), "IndexedDB is durable");
    let form = outbox.spawn_actor(ActorId::new("form-1").expect("id"), FormActor).await.expect("spawn");
    let mut watch = form.watch();
    form.send("Offline title".into()).await.expect("committed while offline");
    assert!(watch.has_changed().expect("watch"));
    assert_eq!(**watch.borrow_and_update(), Form::Saved { title: "Offline title".into() });
    wait_until("the forwarder tried", 5_000, || outbox.is_forwarding()).await;
    outbox.shutdown().await;
    assert!(offline.took.borrow().is_empty());
    assert_eq!(outbox.store().stats().await.expect("stats").pending, 1, "kept in IndexedDB");

    // The tab is "closed" (the outbox dropped) and the app opens again,
    // online this time.
    drop(form);
    drop(outbox);
    let online = Arc::new(Flaky::default());
    online.online.set(true);
    let outbox = configure_outbox(config(&db), online.clone()).await.expect("reopen");
    let form = outbox.spawn_actor(ActorId::new("form-1").expect("id"), FormActor).await.expect("spawn");
    assert_eq!(*form.state(), Form::Saved { title: "Offline title".into() }, "state restored");
    wait_until("delivered", 10_000, || !online.took.borrow().is_empty()).await;
    outbox.notify_online();
    sleep_ms(100).await;
    assert_eq!(online.took.borrow().len(), 1, "once");
    let s = outbox.store().stats().await.expect("stats");
    assert_eq!((s.pending, s.dead, s.delivered), (0, 0, 1));
    outbox.shutdown().await;
}

#[wasm_bindgen_test]
async fn a_handler_error_commits_nothing_and_comes_back_typed() {
    let db = unique("facade-error");
    let outbox = configure_outbox(config(&db), Arc::new(Flaky::default())).await.expect("configure");
    let form = outbox.spawn_actor(ActorId::new("form-2").expect("id"), FormActor).await.expect("spawn");
    let err = form.send(String::new()).await.expect_err("refused");
    assert!(matches!(err, ActorError::Handler(FormError::NoTitle)));
    assert_eq!(*form.state(), Form::Empty);
    let s = outbox.store().stats().await.expect("stats");
    assert_eq!(s.pending, 0, "no event of the refused message");
    outbox.shutdown().await;
}

/// Counts its effects; its inbox marks live in the same IndexedDB.
struct CountSaves(Rc<Cell<u32>>);

#[async_trait]
impl Handler for CountSaves {
    async fn handle(&self, _event: &Envelope, _tx: &mut Tx<'_>) -> Result<(), HandlerError> {
        self.0.set(self.0.get() + 1);
        Ok(())
    }
}

#[wasm_bindgen_test]
async fn listeners_in_the_page_see_each_event_and_apply_it_once() {
    let db = unique("facade-listeners");
    let bus = Bus::new();
    let mut saved = bus.subscribe(Topic::EventType("FORM_SAVED".into()));
    let outbox = configure_outbox(config(&db), Arc::new(bus.sink())).await.expect("configure");
    let form = outbox.spawn_actor(ActorId::new("form-3").expect("id"), FormActor).await.expect("spawn");
    form.send("Hello".into()).await.expect("committed");
    let event = saved.recv().await.expect("delivered to the page's listener");
    assert_eq!(event.origin.as_str(), "form-3");

    let effects = Rc::new(Cell::new(0));
    let listener =
        once_per_event(outbox.store(), ConsumerId::new("badge").expect("id"), CountSaves(effects.clone()));
    assert_eq!(listener.deliver(&event).await.expect("deliver"), Delivery::Applied);
    assert_eq!(listener.deliver(&event).await.expect("again"), Delivery::Duplicate);
    assert_eq!(effects.get(), 1, "the duplicate reached the effect once");
    outbox.shutdown().await;
}

#[wasm_bindgen_test]
async fn memory_durability_says_it_is_not_durable() {
    let outbox =
        configure_outbox(OutboxConfig::default().durability(Durability::Memory), Arc::new(Bus::new().sink()))
            .await
            .expect("configure");
    assert!(!outbox.is_durable());
    assert!(!outbox.store().capabilities().durable);
    outbox.shutdown().await;
}

#[wasm_bindgen_test]
async fn auto_picks_indexeddb_in_the_browser() {
    let name = unique("facade-auto");
    let outbox = configure_outbox(OutboxConfig::default().app_name(name), Arc::new(Bus::new().sink()))
        .await
        .expect("configure");
    let caps = outbox.store().capabilities();
    assert_eq!(caps.backend, "indexeddb");
    assert!(caps.durable && outbox.is_durable());
    outbox.shutdown().await;
}

fn server() -> &'static str {
    match option_env!("OUTBOX_HTTP_TEST_URL") {
        Some(url) => url,
        None => panic!(
            "OUTBOX_HTTP_TEST_URL was not set at compile time: run the browser suite through scripts/test-browser.sh"
        ),
    }
}

#[wasm_bindgen_test]
async fn http_sink_delivers_through_the_facade_and_dead_letters_a_refusal() {
    let db = unique("facade-http");
    let sink = outbox_sink_http::HttpSink::new(format!("{}/status/201", server())).expect("sink");
    let outbox = configure_outbox(config(&db), Arc::new(sink)).await.expect("configure");
    let form = outbox.spawn_actor(ActorId::new("form-4").expect("id"), FormActor).await.expect("spawn");
    form.send("Over HTTP".into()).await.expect("committed");
    let store = outbox.store();
    let mut delivered = 0;
    for _ in 0..500 {
        delivered = store.stats().await.expect("stats").delivered;
        if delivered == 1 {
            break;
        }
        sleep_ms(10).await;
    }
    assert_eq!(delivered, 1, "the server took it");
    outbox.shutdown().await;

    let db = unique("facade-http-422");
    let sink = outbox_sink_http::HttpSink::new(format!("{}/status/422", server())).expect("sink");
    let outbox = configure_outbox(config(&db), Arc::new(sink)).await.expect("configure");
    let form = outbox.spawn_actor(ActorId::new("form-5").expect("id"), FormActor).await.expect("spawn");
    form.send("Refused".into()).await.expect("committed");
    let mut dead = Vec::new();
    for _ in 0..500 {
        dead = outbox.dead_letters(10).await.expect("dead letters");
        if !dead.is_empty() {
            break;
        }
        sleep_ms(10).await;
    }
    assert_eq!(dead.len(), 1, "a 422 is not retried: a dead letter, one by one");
    assert!(outbox.discard(dead[0].id).await.expect("discard"));
    assert_eq!(outbox.store().stats().await.expect("stats").discarded, 1);
    outbox.shutdown().await;
}

#[wasm_bindgen_test]
async fn a_full_indexeddb_falls_back_to_memory_and_keeps_delivering() {
    let db = unique("facade-quota");
    let idb: Arc<dyn outbox::DurableStore> =
        Arc::new(outbox::IdbStore::options(&db).open().await.expect("open"));
    let faulty = outbox_testkit::FaultyStore::new(idb.clone());
    let errors: Rc<RefCell<Vec<outbox::ErrorKind>>> = Rc::default();
    let seen = errors.clone();
    let sink = Arc::new(Flaky::default());
    let config = OutboxConfig::default()
        .store(StoreChoice::Custom(faulty.clone()))
        .flush_interval(std::time::Duration::from_millis(20))
        .on_error(move |_, e| seen.borrow_mut().push(e.kind()));
    let outbox = configure_outbox(config, sink.clone()).await.expect("configure");
    let form = outbox.spawn_actor(ActorId::new("form-q").expect("id"), FormActor).await.expect("spawn");
    form.send("stored".into()).await.expect("committed to IndexedDB");
    assert!(outbox.is_durable());

    faulty.fill_up();
    form.send("in memory".into()).await.expect("the commit goes to memory: Ok");
    assert!(!outbox.is_durable(), "the UI can show it");
    assert_eq!(*errors.borrow(), vec![outbox::ErrorKind::QuotaExceeded], "on_error once");
    form.send("in memory too".into()).await.expect("still Ok");
    assert_eq!(*errors.borrow(), vec![outbox::ErrorKind::QuotaExceeded], "once, not per commit");

    sink.online.set(true);
    outbox.notify_online();
    wait_until("all three delivered", 10_000, || sink.took.borrow().len() == 3).await;
    assert_eq!(idb.stats().await.expect("stats").delivered, 1, "what IndexedDB held was delivered");
    outbox.shutdown().await;
}

/// A page whose forwarder runs in a worker (`outbox::browser`): it
/// commits durably with no forwarder of its own, and a worker script that
/// does not load is reported to `on_error` as `Unavailable`.
#[wasm_bindgen_test]
async fn a_page_commits_and_reports_a_worker_that_does_not_load() {
    use outbox::browser::{WorkerForwarding, configure_page};
    let db = unique("page");
    let failures = Rc::new(Cell::new(0u32));
    let kinds = Rc::new(RefCell::new(Vec::new()));
    let (f, k) = (failures.clone(), kinds.clone());
    let cfg = config(&db).on_error(move |_, e| {
        f.set(f.get() + 1);
        k.borrow_mut().push(e.kind());
    });
    let outbox =
        configure_page(cfg, WorkerForwarding::new("/no-such-outbox-worker.js").background_sync(false))
            .await
            .expect("configure_page");
    let form = outbox.spawn_actor(ActorId::new("form").expect("actor"), FormActor).await.expect("spawn");
    let sent = form.send("Draft".to_owned()).await.expect("send");
    assert!(sent.durable, "committed to IndexedDB");
    assert!(!outbox.is_forwarding(), "no worker leads");
    wait_until("the worker's failure is reported", 10_000, || failures.get() > 0).await;
    assert_eq!(kinds.borrow()[0], outbox::ErrorKind::Unavailable);
    let stats = outbox.store().stats().await.expect("stats");
    assert_eq!(stats.pending, 1, "kept for a worker to deliver: {stats:?}");
    let off =
        configure_page(config(&unique("off")).durability(Durability::Off), WorkerForwarding::new("/w.js"))
            .await;
    assert_eq!(
        off.map(|_| ()).map_err(|e| e.kind()),
        Err(outbox::ErrorKind::InvalidInput),
        "Off keeps nothing for a worker"
    );
    let memory =
        configure_page(config(&unique("mem")).durability(Durability::Memory), WorkerForwarding::new("/w.js"))
            .await;
    assert_eq!(
        memory.map(|_| ()).map_err(|e| e.kind()),
        Err(outbox::ErrorKind::InvalidInput),
        "Memory keeps events where no worker can read them"
    );
}
