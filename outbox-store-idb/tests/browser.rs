//! IndexedDB specifics and the store's side of tab leadership, in a real
//! browser (the `TabForwarder` tests are in `outbox-forwarder/tests/browser.rs`).
#![cfg(target_arch = "wasm32")]

mod common;

use common::unique;
use indexed_db_futures::database::Database;
use indexed_db_futures::prelude::*;
use indexed_db_futures::transaction::TransactionMode;
use outbox_core::codec::{PendingEntry, Row, Status, Writer, encode_pending, encode_row, time_bytes};
use outbox_core::prelude::*;
use outbox_core::{
    ActorId, ClaimRequest, Commit, DurableStore, Envelope, ErrorKind, EventId, InboxMark, ManualClock,
    NewEvent, Timestamp, Version,
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

/// Puts `(key, value)` pairs into the object store `st` of the raw
/// database `db`, in one transaction.
async fn put_raw(db: &Database, st: &str, pairs: Vec<(JsValue, JsValue)>) {
    let tx = db.transaction(st).with_mode(TransactionMode::Readwrite).build().expect("tx");
    let s = tx.object_store(st).expect("store");
    for (k, v) in pairs {
        s.put(v).with_key(k).primitive().expect("put").await.expect("put");
    }
    tx.commit().await.expect("commit");
}

fn bytes(b: &[u8]) -> JsValue {
    js_sys::Uint8Array::from(b).into()
}

fn num(n: i64) -> JsValue {
    JsValue::from_f64(n as f64)
}

/// The object stores of schema version 1.
const V1_STORES: [&str; 9] =
    ["meta", "state", "events", "ids", "pending", "dead", "delivered", "inbox", "inbox_at"];

/// A database as a version-1 build left it, written by hand: the nine
/// object stores of version 1, event rows in `outbox_core::codec`'s
/// layout (statuses pending, dead, delivered), the dead index holding
/// ordering keys, the delivered index `[ack time, seq]`.
async fn create_version_1(name: &str, rows: &[Row], state: (&ActorId, u64, &[u8]), mark: &InboxMark) {
    create_old_version(name, 1, rows, state, mark).await
}

/// [`create_version_1`] at `version` (1 or 2: version 2 adds the empty
/// `discarded` object store; its records are version 1's).
async fn create_old_version(
    name: &str,
    version: u32,
    rows: &[Row],
    state: (&ActorId, u64, &[u8]),
    mark: &InboxMark,
) {
    let db = Database::open(name)
        .with_version(version)
        .with_on_upgrade_needed(move |_, db| {
            for st in V1_STORES {
                db.create_object_store(st).build()?;
            }
            if version >= 2 {
                db.create_object_store("discarded").build()?;
            }
            Ok(())
        })
        .await
        .expect("create an old-version database");
    let (mut events, mut ids, mut pending, mut dead, mut delivered) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, row) in rows.iter().enumerate() {
        let seq = num(i as i64 + 1);
        events.push((seq.clone(), bytes(&encode_row(row))));
        ids.push((bytes(&row.env.id.to_bytes()), seq.clone()));
        match row.status {
            Status::Pending => pending.push((seq, bytes(&encode_pending(&PendingEntry::of(row))))),
            Status::Dead => dead.push((seq, row.env.key.as_str().into())),
            Status::Delivered(at) => {
                delivered.push((js_sys::Array::of2(&num(at.as_millis()), &seq).into(), seq))
            }
        }
    }
    put_raw(&db, "events", events).await;
    put_raw(&db, "ids", ids).await;
    put_raw(&db, "pending", pending).await;
    put_raw(&db, "dead", dead).await;
    put_raw(&db, "delivered", delivered).await;
    let meta = vec![("next_seq".into(), num(rows.len() as i64 + 1)), ("last_epoch".into(), num(4))];
    put_raw(&db, "meta", meta).await;
    // A snapshot: version, time, bytes.
    let mut w = Writer::default();
    w.u64(state.1);
    w.time(T0);
    w.bytes(state.2);
    put_raw(&db, "state", vec![(state.0.as_str().into(), bytes(&w.0))]).await;
    let (c, o, id) = (mark.consumer.as_str(), mark.origin.as_str(), bytes(&mark.event_id.to_bytes()));
    let key = js_sys::Array::of3(&c.into(), &o.into(), &id).into();
    put_raw(&db, "inbox", vec![(key, num(T0.as_millis()))]).await;
    let at_key = js_sys::Array::of4(&num(T0.as_millis()), &c.into(), &o.into(), &id).into();
    put_raw(&db, "inbox_at", vec![(at_key, num(0))]).await;
    db.close();
}

const T0: Timestamp = Timestamp::from_millis(1_700_000_000_000);

fn at(secs: u64) -> Timestamp {
    T0.saturating_add(std::time::Duration::from_secs(secs))
}

/// A stored row as a version-1 build wrote it.
fn row(origin: &ActorId, n: u64, status: Status) -> Row {
    let env = Envelope::committed(event(origin, n), T0.saturating_add(std::time::Duration::from_millis(n)));
    Row { env, status, claimed_by: None, lease_until: None }
}

fn env_ids(envs: &[Envelope]) -> Vec<EventId> {
    envs.iter().map(|e| e.id).collect()
}

/// A database written by a version-1 build (events pending, backed off,
/// dead under two keys, delivered; a state; an inbox mark) opens with
/// this build: it is upgraded to [`SCHEMA_VERSION`] in place, everything
/// is there, and the operations of the new version work on the old rows
/// (retry now, skip, discard, prune), with each key's order kept.
#[wasm_bindgen_test]
async fn a_version_1_database_opens_upgraded_and_keeps_working() {
    let name = unique("v1");
    let (a, b, c) = (actor("a"), actor("b"), actor("c"));
    let mut a1 = row(&a, 1, Status::Dead);
    (a1.env.attempts, a1.env.last_error) = (3, Some("NonRetriable: 422".into()));
    let mut b2 = row(&b, 5, Status::Pending);
    (b2.env.attempts, b2.env.last_error, b2.env.next_attempt_at) = (1, Some("503".into()), at(3600));
    b2.claimed_by = Some(4);
    let rows = vec![
        a1,
        row(&a, 2, Status::Pending),
        row(&a, 3, Status::Pending),
        row(&b, 4, Status::Delivered(at(1))),
        b2,
        row(&c, 6, Status::Dead),
    ];
    let id: Vec<EventId> = rows.iter().map(|r| r.env.id).collect();
    let consumer = outbox_core::ConsumerId::new("consumer").expect("consumer");
    let mark = InboxMark { consumer: consumer.clone(), origin: b.clone(), event_id: id[3] };
    create_version_1(&name, &rows, (&a, 2, b"draft"), &mark).await;

    let clock = ManualClock::new(at(10));
    let store = IdbStore::options(name.as_str()).clock(clock.clone()).open().await.expect("open");
    let raw = Database::open(name.as_str()).await.expect("raw open");
    assert_eq!(raw.version() as u32, SCHEMA_VERSION, "upgraded in place");
    assert!(raw.object_store_names().any(|n| n == "discarded"));
    raw.close();

    // Everything is there.
    let state = store.load_state(&a).await.expect("load").expect("a state");
    assert_eq!((state.version, state.bytes.as_slice()), (Version(2), &b"draft"[..]));
    assert!(store.is_processed(&consumer, &b, id[3]).await.expect("inbox"));
    let s = store.stats().await.expect("stats");
    assert_eq!((s.pending, s.in_flight, s.dead, s.delivered, s.discarded), (3, 0, 2, 1, 0));
    assert_eq!(s.oldest_pending_at, Some(rows[1].env.created_at));
    assert_eq!(env_ids(&store.list_pending(10).await.expect("pending")), vec![id[1], id[2], id[4]]);
    let dead = store.list_dead(10).await.expect("dead");
    assert_eq!(env_ids(&dead), vec![id[0], id[5]]);
    assert_eq!((dead[0].attempts, dead[0].last_error.as_deref()), (3, Some("NonRetriable: 422")));

    // The epoch goes on from the stored one; the dead letter parks "a",
    // the backed-off event waits for its time, until retry_now.
    let ttl = std::time::Duration::from_secs(60);
    let g = store.acquire_leadership("l", ttl).await.expect("acquire").expect("granted");
    assert_eq!(g.epoch.0, 5);
    let park = |n| ClaimRequest::new(n, ttl).park_dead_keys(true);
    assert!(store.claim(&g, park(10)).await.expect("claim").is_empty());
    assert_eq!(store.retry_now(&g).await.expect("retry now"), 1);
    let got = store.claim(&g, park(10)).await.expect("claim");
    assert_eq!((env_ids(&got), got[0].attempts), (vec![id[4]], 2));
    store.ack(&g, &[id[4]]).await.expect("ack");

    // Skip the old dead letter: its key flows in order, it stays dead.
    assert_eq!(store.skip_dead(&[id[0], id[1]]).await.expect("skip"), 1);
    assert_eq!(env_ids(&store.claim(&g, park(10)).await.expect("claim")), vec![id[1], id[2]]);
    store.ack(&g, &[id[1], id[2]]).await.expect("ack");
    assert_eq!(env_ids(&store.list_dead(10).await.expect("dead")), vec![id[0], id[5]]);

    // New commits go on after the old seqs.
    let a4 = event(&a, 7);
    store.put_state_and_events(Commit::events_only().event(a4.clone())).await.expect("commit");
    assert_eq!(env_ids(&store.claim(&g, park(10)).await.expect("claim")), vec![a4.id]);
    store.ack(&g, &[a4.id]).await.expect("ack");

    // Discard both old dead letters (skipped or not), then prune them by
    // discard time with the delivered ones.
    clock.advance(std::time::Duration::from_secs(10));
    assert_eq!(store.discard_dead(&[id[0], id[5]]).await.expect("discard"), 2);
    let s = store.stats().await.expect("stats");
    assert_eq!((s.pending, s.dead, s.delivered, s.discarded), (0, 0, 5, 2));
    assert_eq!(store.prune_delivered(at(20), 100).await.expect("prune"), 5, "acked before the discards");
    assert_eq!(store.prune_delivered(at(21), 100).await.expect("prune"), 2, "the discarded ones");
    assert_eq!(store.stats().await.expect("stats"), outbox_core::StoreStats::default());

    // Reopening the upgraded database runs no upgrade and finds it as left.
    drop(store);
    let store = IdbStore::open(&name).await.expect("reopen");
    assert!(store.load_state(&a).await.expect("load").is_some());
    assert_eq!(store.stats().await.expect("stats"), outbox_core::StoreStats::default());
}

/// A version-1 database of that name that is not an outbox is
/// `Corrupted` and not upgraded: its version and object stores stay.
#[wasm_bindgen_test]
async fn a_foreign_version_1_database_is_not_upgraded() {
    let name = unique("foreign-v1");
    let db = Database::open(name.as_str())
        .with_version(1u32)
        .with_on_upgrade_needed(|_, db| {
            db.create_object_store("someone-else").build()?;
            Ok(())
        })
        .await
        .expect("create");
    db.close();
    assert_eq!(kind(IdbStore::open(&name).await), ErrorKind::Corrupted);
    let db = Database::open(name.as_str()).await.expect("reopen");
    assert_eq!(db.version() as u32, 1, "not upgraded");
    assert_eq!(db.object_store_names().collect::<Vec<_>>(), vec!["someone-else".to_owned()]);
    db.close();
}

/// The stored status of an event row (its first byte, then a time): a
/// delivered row keeps its ack time, a discarded one its discard time in
/// the same place; a skipped dead row has a status of its own, and the
/// dead index says it no longer parks its key.
#[wasm_bindgen_test]
async fn rows_keep_the_discard_time_and_the_skip_in_their_status() {
    let name = unique("rows");
    let clock = ManualClock::new(T0);
    let store = IdbStore::options(name.as_str()).clock(clock.clone()).open().await.expect("open");
    let (a, b) = (actor("a"), actor("b"));
    let evs = [event(&a, 1), event(&b, 1), event(&b, 2)];
    store.put_state_and_events(Commit::events_only().events(evs.to_vec())).await.expect("commit");
    let ttl = std::time::Duration::from_secs(60);
    let g = store.acquire_leadership("l", ttl).await.expect("acquire").expect("granted");
    assert_eq!(store.claim(&g, ClaimRequest::new(10, ttl)).await.expect("claim").len(), 3);
    clock.set(at(1));
    store.ack(&g, &[evs[0].id]).await.expect("ack");
    store.dead_letter(&g, evs[1].id, "x").await.expect("dead");
    store.dead_letter(&g, evs[2].id, "y").await.expect("dead");
    clock.set(at(2));
    assert_eq!(store.discard_dead(&[evs[1].id]).await.expect("discard"), 1);
    assert_eq!(store.skip_dead(&[evs[2].id]).await.expect("skip"), 1);

    let raw = Database::open(name.as_str()).await.expect("raw open");
    let tx = raw.transaction(["events", "dead", "discarded"]).build().expect("tx");
    let get = |st: &'static str, key: JsValue| {
        let s = tx.object_store(st).expect("store");
        async move {
            s.get::<JsValue, JsValue, JsValue>(key)
                .primitive()
                .expect("get")
                .await
                .expect("get")
                .expect("there")
        }
    };
    let row = |v: JsValue| js_sys::Uint8Array::new(&v).to_vec();
    let (delivered, discarded, skipped) = (
        row(get("events", num(1)).await),
        row(get("events", num(2)).await),
        row(get("events", num(3)).await),
    );
    assert_eq!((delivered[0], &delivered[1..9]), (2, &time_bytes(at(1))[..]), "delivered, ack time");
    assert_eq!((discarded[0], &discarded[1..9]), (3, &time_bytes(at(2))[..]), "discarded, discard time");
    assert_eq!(skipped[0], 4, "dead and skipped");
    let by_time = js_sys::Array::of2(&num(at(2).as_millis()), &num(2)).into();
    assert_eq!(get("discarded", by_time).await.as_f64(), Some(2.0), "the discarded index, by discard time");
    let dead: js_sys::Array = get("dead", num(3)).await.into();
    assert_eq!((dead.get(0).as_string().as_deref(), dead.get(1)), (Some("b"), JsValue::TRUE));
    drop(tx);
    raw.close();
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

/// An event record and its pending entry that do not decode (junk in
/// both) are quarantined by the first read that meets them: every read
/// path goes on; the event is dead, and parks nothing (its key is
/// unknowable).
#[wasm_bindgen_test]
async fn a_damaged_row_and_its_index_entry_are_quarantined() {
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
    assert!(store.list_pending(10).await.expect("list").is_empty());
    let s = store.stats().await.expect("stats");
    assert_eq!((s.pending, s.dead, s.parked_keys), (0, 1, 0));
    let g =
        store.acquire_leadership("h", std::time::Duration::from_secs(5)).await.expect("lead").expect("free");
    let later = event(&a, 2);
    store.put_state_and_events(Commit::events_only().event(later.clone())).await.expect("commit");
    let request = ClaimRequest::new(10, std::time::Duration::from_secs(5)).park_dead_keys(true);
    assert_eq!(env_ids(&store.claim(&g, request).await.expect("claim")), vec![later.id]);
    let dead = store.list_dead(10).await.expect("dead");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload.as_bytes(), &[1, 2, 3]);
}

/// What a test does to one committed event's stored record or index
/// entries.
#[derive(Clone, Copy, Debug)]
enum Poison {
    /// Garbage bytes in place of the record.
    Garbage,
    /// The record cut short.
    Truncated,
    /// A status tag no version has.
    UnknownStatus,
    /// A JSON payload that is not JSON.
    BadJson,
    /// An origin that is not UTF-8: an id that does not parse.
    BadOrigin,
    /// No record, while the pending index names it.
    Missing,
    /// A good record whose pending entry is garbage.
    BadPendingEntry,
    /// A record that is not even bytes (a string), a garbage pending
    /// entry, no id index entry: nothing says its id or its key.
    Unknowable,
}

/// Applies `poison` to the stored event `id` of the database `name`;
/// returns what the quarantine should list as its payload (the stored
/// value's bytes).
async fn poison(name: &str, id: EventId, poison: Poison) -> Vec<u8> {
    let db = Database::open(name).await.expect("raw open");
    let tx = db
        .transaction(["events", "pending", "ids"])
        .with_mode(TransactionMode::Readwrite)
        .build()
        .expect("tx");
    let (events, pending, ids) = (
        tx.object_store("events").expect("events"),
        tx.object_store("pending").expect("pending"),
        tx.object_store("ids").expect("ids"),
    );
    let seq = ids
        .get::<JsValue, JsValue, JsValue>(bytes(&id.to_bytes()))
        .primitive()
        .expect("get")
        .await
        .expect("get")
        .expect("the event's seq");
    let stored = events
        .get::<JsValue, JsValue, JsValue>(seq.clone())
        .primitive()
        .expect("get")
        .await
        .expect("get")
        .expect("the event's record");
    let mut row = js_sys::Uint8Array::new(&stored).to_vec();
    let garbage = b"\xde\xad\xbe\xef not a row".to_vec();
    let replace = |row: &mut Vec<u8>, from: &[u8], to: &[u8]| {
        let at = row.windows(from.len()).position(|w| w == from).expect("pattern in the record");
        row[at..at + to.len()].copy_from_slice(to);
    };
    let mut value = None;
    match poison {
        Poison::Garbage => row = garbage,
        Poison::Truncated => row.truncate(row.len() / 2),
        Poison::UnknownStatus => row[0] = 9,
        Poison::BadJson => replace(&mut row, b"\"xyzzy\"", b"{\"nope\""),
        Poison::BadOrigin => replace(&mut row, b"\x00\x00\x00\x04uuuu", b"\x00\x00\x00\x04\xff\xff\xff\xff"),
        Poison::Missing => {
            events
                .delete::<JsValue, JsValue>(seq.clone())
                .primitive()
                .expect("delete")
                .await
                .expect("delete");
            row = Vec::new();
        }
        Poison::BadPendingEntry => {
            pending.put(bytes(&garbage)).with_key(seq.clone()).primitive().expect("put").await.expect("put");
        }
        Poison::Unknowable => {
            pending.put(bytes(&garbage)).with_key(seq.clone()).primitive().expect("put").await.expect("put");
            ids.delete::<JsValue, JsValue>(bytes(&id.to_bytes()))
                .primitive()
                .expect("delete")
                .await
                .expect("delete");
            value = Some(JsValue::from_str("not bytes"));
            row = b"not bytes".to_vec();
        }
    }
    if !matches!(poison, Poison::Missing | Poison::BadPendingEntry) {
        let v = value.unwrap_or_else(|| bytes(&row));
        events.put(v).with_key(seq).primitive().expect("put").await.expect("put");
    }
    tx.commit().await.expect("commit the poison");
    db.close();
    row
}

/// The stored value of the event at `seq` as bytes, if any.
async fn stored_event(name: &str, seq: u64) -> Option<Vec<u8>> {
    let db = Database::open(name).await.expect("raw open");
    let tx = db.transaction("events").build().expect("tx");
    let v = tx
        .object_store("events")
        .expect("events")
        .get::<JsValue, JsValue, JsValue>(num(seq as i64))
        .primitive()
        .expect("get")
        .await
        .expect("get");
    drop(tx);
    db.close();
    v.map(|v| js_sys::Uint8Array::new(&v).to_vec())
}

/// Event records that do not decode (garbage, truncated, an unknown
/// status, a JSON payload that is not JSON, an origin that does not
/// parse, a value that is not bytes, a missing record the index names)
/// are quarantined: moved to the dead letters with a `last_error`
/// starting `corrupted:`, their stored values kept as they were, while
/// every other event flows in per-key order. A bad index entry of a good
/// record is rebuilt from it. A poison record at the head of its key
/// parks the key like any dead letter; one whose key is unknowable parks
/// nothing, and one whose id is unknowable is listed under an id derived
/// from its seq. Claims, listings and counts never fail.
#[wasm_bindgen_test]
async fn a_poison_row_is_quarantined() {
    let name = unique("poison");
    let ttl = std::time::Duration::from_secs(30);
    let store = IdbStore::open(&name).await.expect("open");
    let mk = |key: &str| NewEvent::json(actor(key), "T", &"xyzzy").expect("json");
    let cases = [
        ("p", Poison::Garbage),
        ("q", Poison::Truncated),
        ("r", Poison::UnknownStatus),
        ("s", Poison::BadJson),
        ("uuuu", Poison::BadOrigin),
        ("t", Poison::Missing),
        ("v", Poison::BadPendingEntry),
        ("w", Poison::Unknowable),
    ];
    let bad: Vec<NewEvent> = cases.iter().map(|(key, _)| mk(key)).collect();
    // Each poisoned event has a good follower on its key.
    let next: Vec<NewEvent> = cases.iter().map(|(key, _)| mk(key)).collect();
    for e in bad.iter().chain(&next) {
        store.put_state_and_events(Commit::events_only().event(e.clone())).await.expect("commit");
    }
    let mut listed_bytes = Vec::new();
    for (e, (_, p)) in bad.iter().zip(&cases) {
        listed_bytes.push(poison(&name, e.id, *p).await);
    }
    // Good events on two keys, after the poison.
    let (a, b) = (actor("a"), actor("b"));
    let good = [event(&a, 0), event(&b, 0), event(&a, 1), event(&b, 1)];
    store.put_state_and_events(Commit::events_only().events(good.to_vec())).await.expect("commit");

    let g = store.acquire_leadership("l", ttl).await.expect("acquire").expect("granted");
    // Settling a poisoned id is a no-op, not an error.
    store.ack(&g, &[bad[2].id]).await.expect("ack");
    let park = || ClaimRequest::new(100, ttl).park_dead_keys(true);
    let got = store.claim(&g, park()).await.expect("claim");
    // v's record was good (its index entry is rebuilt): v flows, both
    // events; w's poison parks nothing (its key is unknowable): its
    // follower flows; every other poisoned key is parked behind its
    // poison.
    let want = vec![bad[6].id, next[6].id, next[7].id, good[0].id, good[1].id, good[2].id, good[3].id];
    assert_eq!(env_ids(&got), want);
    store.list_pending(100).await.expect("list pending");
    let s = store.stats().await.expect("stats");
    assert_eq!((s.pending, s.in_flight, s.dead, s.parked_keys), (6 + 7, 7, 7, 6));
    store.ack(&g, &env_ids(&got)).await.expect("ack");
    assert!(store.claim(&g, park()).await.expect("claim").is_empty(), "the parked keys stay parked");

    // Listed dead, in commit order, with what could be read.
    let dead = store.list_dead(100).await.expect("list dead");
    assert_eq!(dead.len(), 7);
    for d in &dead {
        let e = d.last_error.as_deref().unwrap_or_default();
        assert!(e.starts_with("corrupted:"), "{e}");
    }
    let quarantined = [0, 1, 2, 3, 4, 5, 7];
    assert_eq!(env_ids(&dead[..6]), quarantined[..6].iter().map(|&i| bad[i].id).collect::<Vec<_>>());
    let keys: Vec<&str> = dead.iter().map(|d| d.key.as_str()).collect();
    assert_eq!(keys, ["p", "q", "r", "s", "uuuu", "t", "outbox.corrupted"]);
    for (d, i) in dead.iter().zip(quarantined) {
        assert_eq!(d.payload.as_bytes(), listed_bytes[i].as_slice(), "{:?}", cases[i].1);
    }
    // Nothing said w's id: it is listed under one derived from its seq.
    let w = &dead[6];
    assert_ne!(w.id, bad[7].id);
    assert!(w.last_error.as_deref().expect("reason").contains(&w.id.to_string()));
    let s = store.stats().await.expect("stats");
    assert_eq!((s.pending, s.in_flight, s.dead, s.delivered, s.parked_keys), (6, 0, 7, 7, 6));

    // Like any dead letter: skipped, its key flows; discarded, then
    // pruned; not requeued (no event to deliver).
    assert_eq!(store.skip_dead(&[bad[0].id]).await.expect("skip"), 1);
    assert_eq!(env_ids(&store.claim(&g, park()).await.expect("claim")), vec![next[0].id]);
    assert_eq!(store.requeue_dead(&[bad[1].id]).await.expect("requeue"), 0);
    assert_eq!(store.discard_dead(&[bad[1].id, w.id]).await.expect("discard"), 2);
    let s = store.stats().await.expect("stats");
    assert_eq!((s.dead, s.discarded, s.parked_keys), (5, 2, 4));
    assert_eq!(env_ids(&store.claim(&g, park()).await.expect("claim")), vec![next[1].id], "q flows on");
    store.ack(&g, &[next[0].id, next[1].id]).await.expect("ack");
    let far = Timestamp::from_millis(i64::MAX);
    assert_eq!(store.prune_delivered(far, 100).await.expect("prune"), 9 + 2);
    let s = store.stats().await.expect("stats");
    assert_eq!((s.pending, s.dead, s.delivered, s.discarded), (4, 5, 0, 0));

    // The quarantined records are untouched (seqs 1 to 8: p to w).
    for i in [0, 2, 3, 4] {
        assert_eq!(stored_event(&name, i as u64 + 1).await.as_deref(), Some(listed_bytes[i].as_slice()));
    }
    assert_eq!(stored_event(&name, 2).await, None, "q's was pruned");
}

/// A database at version 2 (the previous version) opens upgraded to the
/// current one, with the `quarantine` object store, and a record of it
/// that does not decode is quarantined by the first read that meets it.
#[wasm_bindgen_test]
async fn a_version_2_database_opens_upgraded_and_quarantines_a_poison_row() {
    let name = unique("v2");
    let (a, b) = (actor("a"), actor("b"));
    let rows = vec![row(&a, 1, Status::Pending), row(&a, 2, Status::Pending), row(&b, 3, Status::Pending)];
    let id: Vec<EventId> = rows.iter().map(|r| r.env.id).collect();
    let consumer = outbox_core::ConsumerId::new("consumer").expect("consumer");
    let mark = InboxMark { consumer, origin: b.clone(), event_id: id[2] };
    create_old_version(&name, 2, &rows, (&a, 1, b"s"), &mark).await;
    let db = Database::open(name.as_str()).await.expect("raw open");
    put_raw(&db, "events", vec![(num(1), bytes(b"\xffgarbage"))]).await;
    db.close();

    let store = IdbStore::open(&name).await.expect("open");
    let raw = Database::open(name.as_str()).await.expect("raw open");
    assert_eq!(raw.version() as u32, SCHEMA_VERSION, "upgraded in place");
    assert!(raw.object_store_names().any(|n| n == "quarantine"));
    raw.close();
    assert_eq!(env_ids(&store.list_pending(10).await.expect("pending")), vec![id[1], id[2]]);
    let ttl = std::time::Duration::from_secs(60);
    let g = store.acquire_leadership("l", ttl).await.expect("acquire").expect("granted");
    let got = store.claim(&g, ClaimRequest::new(10, ttl).park_dead_keys(true)).await.expect("claim");
    assert_eq!(env_ids(&got), vec![id[2]], "a is parked behind its poison; b flows");
    let dead = store.list_dead(10).await.expect("dead");
    assert_eq!((env_ids(&dead), dead[0].payload.as_bytes()), (vec![id[0]], &b"\xffgarbage"[..]));
    assert!(dead[0].last_error.as_deref().expect("reason").starts_with("corrupted:"));
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

/// Requeueing a dead event posts on the commit channel too (the event is
/// due now, for whichever tab or worker forwards); a requeue that changes
/// nothing posts nothing.
#[wasm_bindgen_test]
async fn a_requeue_posts_on_the_commit_channel() {
    use std::cell::Cell;
    use std::rc::Rc;

    let name = unique("requeue-channel");
    let store = IdbStore::open(&name).await.expect("open");
    let a = actor("form");
    commit_n(&store, &a, 0, 1).await;
    let g = store
        .acquire_leadership("tab", std::time::Duration::from_secs(60))
        .await
        .expect("lead")
        .expect("grant");
    let claimed =
        store.claim(&g, ClaimRequest::new(1, std::time::Duration::from_secs(30))).await.expect("claim");
    store.dead_letter(&g, claimed[0].id, "422").await.expect("dead letter");
    let heard = Rc::new(Cell::new(0));
    let h = heard.clone();
    let on_message = wasm_bindgen::closure::Closure::<dyn FnMut(JsValue)>::new(move |_| h.set(h.get() + 1));
    let listener =
        web_sys::BroadcastChannel::new(&outbox_store_idb::channel_name(&name)).expect("BroadcastChannel");
    listener.set_onmessage(Some(wasm_bindgen::JsCast::unchecked_ref(on_message.as_ref())));
    let missing = NewEvent::json(a.clone(), "never", &0).expect("event").id;
    assert_eq!(store.requeue_dead(&[missing]).await.expect("requeue nothing"), 0);
    assert_eq!(store.requeue_dead(&[claimed[0].id]).await.expect("requeue"), 1);
    common::wait_until("the requeue is announced", 5_000, || heard.get() >= 1).await;
    assert_eq!(heard.get(), 1, "one post: the requeue that changed nothing made none");
    listener.close();
}

/// An exclusive claim (the forwarder holds the origin's Web Lock) writes
/// no lease: another handle on the database sees the event pending and
/// not in flight, and the raw event record is unchanged until the ack.
#[wasm_bindgen_test]
async fn exclusive_claims_write_no_lease_until_settled() {
    let name = unique("exclusive");
    let store = IdbStore::open(&name).await.expect("open");
    let other = IdbStore::open(&name).await.expect("second handle");
    let a = ActorId::new("a").expect("actor");
    let e = NewEvent::json(a, "saved", &1).expect("event");
    store.put_state_and_events(Commit::events_only().event(e.clone())).await.expect("commit");
    let before = stored_event(&name, 1).await;
    let g = store
        .acquire_leadership("tab", std::time::Duration::from_secs(60))
        .await
        .expect("lead")
        .expect("grant");
    let claimed = store
        .claim(&g, ClaimRequest::new(10, std::time::Duration::from_secs(30)).exclusive(true))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(stored_event(&name, 1).await, before, "nothing written by the claim");
    let s = other.stats().await.expect("stats");
    assert_eq!((s.pending, s.in_flight), (1, 0), "no lease on disk: {s:?}");
    store.ack(&g, &[e.id]).await.expect("ack");
    let s = other.stats().await.expect("stats");
    assert_eq!((s.pending, s.delivered), (0, 1), "{s:?}");
}

/// An ack of an exclusively claimed batch is one `delivered_batches`
/// record: the events count, list and prune as delivered (in part, then
/// whole), a second ack or a retry of one of them changes nothing, and
/// none is claimed again.
#[wasm_bindgen_test]
async fn a_batch_ack_counts_lists_and_prunes_as_delivered() {
    use outbox_core::{Attempt, EventStatus};
    let name = unique("batch-ack");
    let clock = ManualClock::new(T0);
    let store = IdbStore::options(name.as_str()).clock(clock.clone()).open().await.expect("open");
    let events: Vec<NewEvent> = (0..10)
        .map(|i| NewEvent::json(ActorId::new(format!("a{i}")).expect("actor"), "saved", &i).expect("event"))
        .collect();
    store.put_state_and_events(Commit::events_only().events(events.clone())).await.expect("commit");
    let ttl = std::time::Duration::from_secs(60);
    let g = store.acquire_leadership("tab", ttl).await.expect("lead").expect("grant");
    let claimed = store.claim(&g, ClaimRequest::new(100, ttl).exclusive(true)).await.expect("claim");
    let ids: Vec<EventId> = claimed.iter().map(|e| e.id).collect();
    assert_eq!(ids, events.iter().map(|e| e.id).collect::<Vec<_>>());
    store.ack(&g, &ids).await.expect("ack");
    let s = store.stats().await.expect("stats");
    assert_eq!((s.pending, s.delivered), (0, 10), "{s:?}");
    let listed = store.list_by_status(EventStatus::Delivered, 100).await.expect("list");
    assert_eq!(listed.iter().map(|e| e.id).collect::<Vec<_>>(), ids, "listed as delivered");
    assert!(store.list_pending(100).await.expect("list").is_empty());
    // Settled again one by one: delivered events are skipped.
    store.ack(&g, &ids[..3]).await.expect("ack again");
    store.retry_later(&g, ids[4], T0, "late", Attempt::Counted).await.expect("retry");
    let s = store.stats().await.expect("stats");
    assert_eq!((s.pending, s.delivered), (0, 10), "nothing counted twice or made pending: {s:?}");
    assert!(
        store.claim(&g, ClaimRequest::new(100, ttl)).await.expect("claim").is_empty(),
        "none claimed again"
    );
    clock.set(at(1));
    assert_eq!(store.prune_delivered(at(1), 4).await.expect("prune"), 4);
    let s = store.stats().await.expect("stats");
    assert_eq!(s.delivered, 6, "the batch keeps the rest: {s:?}");
    assert_eq!(store.prune_delivered(at(1), 100).await.expect("prune"), 6);
    assert_eq!(store.stats().await.expect("stats").delivered, 0);
    // Pruned ids are forgotten, as for events acked one by one.
    store.put_state_and_events(Commit::events_only().event(events[0].clone())).await.expect("recommit");
}

/// A row delivered by a batch ack keeps its committed (pending) status;
/// when a damaged index entry makes the store fix that row, it is not made
/// pending again (which would deliver it twice).
#[wasm_bindgen_test]
async fn fixing_a_row_delivered_in_a_batch_does_not_make_it_pending() {
    let name = unique("batch-fix");
    let clock = ManualClock::new(T0);
    let store = IdbStore::options(name.as_str()).clock(clock.clone()).open().await.expect("open");
    let events: Vec<NewEvent> = (0..4)
        .map(|i| NewEvent::json(ActorId::new(format!("a{i}")).expect("actor"), "saved", &i).expect("event"))
        .collect();
    store.put_state_and_events(Commit::events_only().events(events.clone())).await.expect("commit");
    let ttl = std::time::Duration::from_secs(60);
    let g = store.acquire_leadership("tab", ttl).await.expect("lead").expect("grant");
    let claimed = store.claim(&g, ClaimRequest::new(100, ttl).exclusive(true)).await.expect("claim");
    store.ack(&g, &claimed.iter().map(|e| e.id).collect::<Vec<_>>()).await.expect("ack");
    // A stray pending entry for seq 1 that names another key: the claim
    // finds the entry and its row disagree, and fixes seq 1.
    let stray = PendingEntry {
        next_attempt_at: T0,
        lease_until: None,
        created_at: T0,
        key: outbox_core::OrderingKey::new("stray").expect("key"),
    };
    let raw = Database::open(name.as_str()).await.expect("raw open");
    put_raw(&raw, "pending", vec![(num(1), bytes(&encode_pending(&stray)))]).await;
    raw.close();
    assert!(
        store.claim(&g, ClaimRequest::new(100, ttl)).await.expect("claim").is_empty(),
        "not delivered again"
    );
    let s = store.stats().await.expect("stats");
    assert_eq!((s.pending, s.delivered, s.dead), (0, 4, 0), "{s:?}");
}
