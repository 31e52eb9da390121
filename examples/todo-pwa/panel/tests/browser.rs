//! The panel in a real browser, over an outbox on IndexedDB: its buttons
//! discard and requeue dead events, pending events show their attempts
//! and error, the toggle, the status lines, unmounting.
#![cfg(target_arch = "wasm32")]

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::Duration;

use outbox::{
    ActorId, Commit, Envelope, EventId, NewEvent, OnQuota, Outbox, OutboxConfig, Outcome, Sink, StoreChoice,
    async_trait, configure_outbox,
};
use outbox_panel::{PanelOptions, mount_with};
use wasm_bindgen::JsCast;
use wasm_bindgen_test::wasm_bindgen_test;
use web_sys::{Element, HtmlElement};

wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

/// What the sink answers, switchable; it records what it delivered.
#[derive(Debug, Default)]
struct Switch {
    answer: RefCell<Option<Outcome>>,
    delivered: RefCell<Vec<EventId>>,
    calls: Cell<u32>,
}

#[async_trait]
impl Sink for Switch {
    async fn publish(&self, batch: &[Envelope]) -> Vec<Outcome> {
        self.calls.set(self.calls.get() + 1);
        let answer = self.answer.borrow().clone().unwrap_or(Outcome::Ok);
        if answer.is_ok() {
            self.delivered.borrow_mut().extend(batch.iter().map(|e| e.id));
        }
        batch.iter().map(|_| answer.clone()).collect()
    }
}

async fn outbox_with(sink: Arc<Switch>) -> Outbox {
    let db = format!("outbox-panel-test-{}", EventId::new());
    let config = OutboxConfig::default()
        .store(StoreChoice::IndexedDb(db))
        .on_quota(OnQuota::Fallback)
        .flush_interval(Duration::from_millis(20));
    configure_outbox(config, sink).await.expect("configure")
}

async fn commit(outbox: &Outbox, list: &str, ty: &str) -> EventId {
    let e = NewEvent::json(ActorId::new(list).expect("id"), ty, &list).expect("event");
    let id = e.id;
    outbox.commit(Commit::events_only().event(e)).await.expect("commit");
    id
}

fn container() -> Element {
    let doc = web_sys::window().expect("window").document().expect("document");
    let div = doc.create_element("div").expect("div");
    doc.body().expect("body").append_child(&div).expect("append");
    div
}

async fn sleep_ms(ms: u32) {
    gloo_timers::future::TimeoutFuture::new(ms).await;
}

/// Waits (bounded) for `cond`, checking every 10 ms.
async fn wait_until(what: &str, within_ms: u32, mut cond: impl FnMut() -> bool) {
    let mut waited = 0;
    while !cond() {
        assert!(waited < within_ms, "{what}: not within {within_ms} ms");
        sleep_ms(10).await;
        waited += 10;
    }
}

fn find(root: &Element, selector: &str) -> Option<Element> {
    root.query_selector(selector).expect("selector")
}

fn all(root: &Element, selector: &str) -> u32 {
    root.query_selector_all(selector).expect("selector").length()
}

fn click(e: &Element) {
    e.dyn_ref::<HtmlElement>().expect("an HTML element").click();
}

fn attr(root: &Element, selector: &str, name: &str) -> Option<String> {
    find(root, selector).and_then(|e| e.get_attribute(name))
}

#[wasm_bindgen_test]
async fn a_dead_event_discarded_from_the_panel_is_gone() {
    let sink = Arc::new(Switch::default());
    *sink.answer.borrow_mut() = Some(Outcome::NonRetriable("422 refused".into()));
    let outbox = outbox_with(sink.clone()).await;
    let id = commit(&outbox, "inbox", "TODO_ADDED").await;
    let mut waited = 0;
    while outbox.dead_letters(10).await.expect("dead").is_empty() {
        assert!(waited < 10_000, "the event was not dead-lettered");
        sleep_ms(10).await;
        waited += 10;
    }

    let root = container();
    let panel = mount_with(&outbox, &root, PanelOptions::default().open(true).refresh_ms(50)).expect("mount");
    let row = format!("[data-testid=outbox-panel-dead-row][data-event-id=\"{id}\"]");
    wait_until("the dead row", 5_000, || find(&root, &row).is_some()).await;
    assert_eq!(attr(&root, &row, "data-event-type").as_deref(), Some("TODO_ADDED"));
    let text = find(&root, &row).and_then(|r| r.text_content()).unwrap_or_default();
    assert!(text.contains("422 refused"), "the row shows the last error: {text}");
    assert_eq!(all(&root, "[data-testid=outbox-panel-pending-row]"), 0);
    assert!(find(&root, "[data-testid=outbox-panel-pending] [data-testid=outbox-panel-empty]").is_some());
    assert_eq!(attr(&root, "[data-testid=outbox-panel-storage]", "data-durable").as_deref(), Some("true"));
    wait_until("this tab leads", 5_000, || {
        attr(&root, "[data-testid=outbox-panel-leader]", "data-leader").as_deref() == Some("true")
    })
    .await;

    let discard =
        find(&root, &format!("{row} [data-testid=outbox-panel-discard]")).expect("a discard button");
    assert!(discard.get_attribute("aria-label").is_some_and(|l| l.contains("Discard")));
    click(&discard);
    wait_until("the row is gone", 5_000, || find(&root, &row).is_none()).await;
    assert!(outbox.dead_letters(10).await.expect("dead").is_empty());
    let stats = outbox.store().stats().await.expect("stats");
    assert_eq!((stats.dead, stats.discarded, stats.pending), (0, 1, 0));
    assert!(sink.delivered.borrow().is_empty(), "a discarded event is never delivered");
    assert!(find(&root, "[data-testid=outbox-panel-dead] [data-testid=outbox-panel-empty]").is_some());

    drop(panel);
    assert!(find(&root, "[data-testid=outbox-panel-root]").is_none(), "dropping the handle unmounts");
    outbox.shutdown().await;
}

#[wasm_bindgen_test]
async fn a_dead_event_requeued_from_the_panel_is_delivered() {
    let sink = Arc::new(Switch::default());
    *sink.answer.borrow_mut() = Some(Outcome::NonRetriable("400 bad".into()));
    let outbox = outbox_with(sink.clone()).await;
    let id = commit(&outbox, "work", "TODO_COMPLETED").await;
    let root = container();
    let panel = mount_with(&outbox, &root, PanelOptions::default().open(true).refresh_ms(50)).expect("mount");
    let row = format!("[data-testid=outbox-panel-dead-row][data-event-id=\"{id}\"]");
    wait_until("the dead row", 10_000, || find(&root, &row).is_some()).await;
    wait_until("the counts", 5_000, || {
        attr(&root, "[data-testid=outbox-panel-counts]", "data-dead").as_deref() == Some("1")
    })
    .await;

    *sink.answer.borrow_mut() = None;
    click(&find(&root, &format!("{row} [data-testid=outbox-panel-requeue]")).expect("a requeue button"));
    wait_until("delivered", 10_000, || sink.delivered.borrow().contains(&id)).await;
    wait_until("the row is gone", 5_000, || find(&root, &row).is_none()).await;
    wait_until("the counts", 5_000, || {
        attr(&root, "[data-testid=outbox-panel-counts]", "data-delivered").as_deref() == Some("1")
    })
    .await;
    let message = find(&root, "[data-testid=outbox-panel-message]").and_then(|m| m.text_content());
    assert!(message.is_some_and(|m| m.contains(&id.to_string())), "the status line names the event");
    drop(panel);
    outbox.shutdown().await;
}

#[wasm_bindgen_test]
async fn a_retried_event_is_listed_as_pending_and_the_toggle_opens_and_closes_the_panel() {
    let sink = Arc::new(Switch::default());
    *sink.answer.borrow_mut() = Some(Outcome::Retriable("503 down".into()));
    let outbox = outbox_with(sink.clone()).await;
    let id = commit(&outbox, "inbox", "TODO_RENAMED").await;
    wait_until("an attempt", 10_000, || sink.calls.get() > 0).await;

    let root = container();
    let panel = mount_with(&outbox, &root, PanelOptions::default().refresh_ms(50)).expect("mount");
    let toggle = find(&root, "[data-testid=outbox-panel-toggle]").expect("toggle");
    let body = find(&root, "[data-testid=outbox-panel]").expect("body");
    assert_eq!(toggle.get_attribute("aria-expanded").as_deref(), Some("false"));
    assert!(body.has_attribute("hidden"));
    wait_until("the badge counts it", 5_000, || {
        find(&root, "[data-testid=outbox-panel-badge]").and_then(|b| b.text_content()).as_deref()
            == Some("(1)")
    })
    .await;

    click(&toggle);
    assert!(panel.is_open());
    assert_eq!(toggle.get_attribute("aria-expanded").as_deref(), Some("true"));
    assert!(!body.has_attribute("hidden"));
    let row = format!("[data-testid=outbox-panel-pending-row][data-event-id=\"{id}\"]");
    wait_until("the pending row", 5_000, || find(&root, &row).is_some()).await;
    wait_until("its error", 5_000, || {
        find(&root, &row).and_then(|r| r.text_content()).is_some_and(|t| t.contains("503 down"))
    })
    .await;
    let attempts: u32 = attr(&root, &row, "data-attempts").and_then(|a| a.parse().ok()).expect("attempts");
    assert!(attempts >= 1);
    assert_eq!(all(&root, &format!("{row} button")), 0, "pending events have no actions");
    let headers = all(&root, "[data-testid=outbox-panel-pending] thead th[scope=col]");
    assert_eq!(headers, 6, "type, key, attempts, age, next attempt, last error");

    click(&toggle);
    assert!(!panel.is_open());
    assert!(body.has_attribute("hidden"));
    *sink.answer.borrow_mut() = None;
    outbox.notify_online();
    wait_until("delivered", 10_000, || sink.delivered.borrow().contains(&id)).await;
    drop(panel);
    outbox.shutdown().await;
}
