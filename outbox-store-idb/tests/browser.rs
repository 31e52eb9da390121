//! IndexedDB specifics and the store's side of tab leadership, in a real
//! browser (the `TabForwarder` tests are in `outbox-forwarder/tests/browser.rs`).
#![cfg(target_arch = "wasm32")]

mod common;

use common::unique;
use indexed_db_futures::database::Database;
use indexed_db_futures::prelude::*;
use indexed_db_futures::transaction::TransactionMode;
use outbox_core::prelude::*;
use outbox_core::{
    ActorId, ClaimRequest, Commit, DurableStore, ErrorKind, EventId, InboxMark, NewEvent, Version,
};
use outbox_store_idb::{IdbStore, SCHEMA_VERSION};
use wasm_bindgen::JsValue;
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
    // The holder name every tab shares (the forwarder's Web Lock name).
    let holder = format!("outbox-forwarder:{name}");
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

// ------------------------------------------------------------ wake-ups

/// A commit with events posts on the database's `BroadcastChannel`
/// ([`outbox_store_idb::channel_name`]), where the leading tab listens; a
/// commit of state alone posts nothing.
#[wasm_bindgen_test]
async fn a_commit_with_events_posts_on_the_commit_channel() {
    use std::cell::Cell;
    use std::rc::Rc;

    let name = unique("channel");
    let store = IdbStore::open(&name).await.expect("open");
    // Messages are counted by whether they arrive before or after the
    // commit with events returned: its post is made just before it
    // returns, and a message is delivered in a later task.
    let (committed, early, late) = (Rc::new(Cell::new(false)), Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
    let (c, e, l) = (committed.clone(), early.clone(), late.clone());
    let on_message = wasm_bindgen::closure::Closure::<dyn FnMut(JsValue)>::new(move |_| {
        let n = if c.get() { &l } else { &e };
        n.set(n.get() + 1);
    });
    // Another channel object of that name: what a tab's listener is.
    let listener =
        web_sys::BroadcastChannel::new(&outbox_store_idb::channel_name(&name)).expect("BroadcastChannel");
    listener.set_onmessage(Some(wasm_bindgen::JsCast::unchecked_ref(on_message.as_ref())));

    let a = actor("form");
    store
        .put_state_and_events(Commit::state(a.clone(), Version::NONE, b"draft".to_vec()))
        .await
        .expect("state only");
    commit_n(&store, &a, 0, 2).await;
    committed.set(true);
    common::wait_until("the commit is announced", 5_000, || late.get() >= 1).await;
    assert_eq!(early.get(), 0, "the state-only commit posted nothing");
    listener.close();
}
