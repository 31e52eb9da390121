//! IndexedDB commit throughput in the browser, against a same-run baseline:
//! a raw `indexed_db_futures` readwrite transaction doing the same writes
//! (state, event row, pending entry, id, sequence), per durability hint.
//! And draining a backlog by claim + ack batches, against raw transactions
//! doing the same reads and writes per batch.
//! Prints figures; asserts nothing about speed. Not run by `cargo test`
//! (`test = false`); run it with `scripts/browser-bench.sh`.
#![cfg(target_arch = "wasm32")]

mod common;

use common::unique;
use indexed_db_futures::database::Database;
use indexed_db_futures::prelude::*;
use indexed_db_futures::transaction::{TransactionDurability, TransactionMode, TransactionOptions};
use outbox_core::prelude::*;
use outbox_core::{ActorId, ClaimRequest, Commit, NewEvent, Version};
use outbox_store_idb::{Durability, IdbStore};
use std::time::Duration;
use wasm_bindgen::JsValue;
use wasm_bindgen_test::{console_log, wasm_bindgen_test};

wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

const COMMITS: u32 = 300;
const ROUNDS: usize = 3;

fn now_ms() -> f64 {
    web_sys::window().and_then(|w| w.performance()).map_or_else(js_sys::Date::now, |p| p.now())
}

async fn ours(durability: Durability) -> f64 {
    let store = IdbStore::options(unique("bench")).durability(durability).open().await.expect("open");
    let a = ActorId::new("form").expect("actor");
    let t0 = now_ms();
    for i in 0..COMMITS {
        let e = NewEvent::json(a.clone(), "saved", &serde_json::json!({ "n": i })).expect("json");
        let c = Commit::state(a.clone(), Version(u64::from(i)), vec![7u8; 64]).event(e);
        store.put_state_and_events(c).await.expect("commit");
    }
    f64::from(COMMITS) / ((now_ms() - t0) / 1e3)
}

async fn raw(durability: TransactionDurability) -> f64 {
    let names = ["state", "events", "pending", "ids", "meta"];
    let db = Database::open(unique("raw").as_str())
        .with_version(1u32)
        .with_on_upgrade_needed(move |_, db| {
            for n in names {
                db.create_object_store(n).build()?;
            }
            Ok(())
        })
        .await
        .expect("open raw");
    let t0 = now_ms();
    for i in 0..COMMITS {
        // Comparable values: a 64-byte state, a ~120-byte row, a small entry.
        let state: JsValue = js_sys::Uint8Array::from(&[7u8; 80][..]).into();
        let row: JsValue = js_sys::Uint8Array::from(&[1u8; 120][..]).into();
        let entry: JsValue = js_sys::Uint8Array::from(&[2u8; 40][..]).into();
        let id: JsValue = js_sys::Uint8Array::from(&uuid::Uuid::now_v7().into_bytes()[..]).into();
        let seq = JsValue::from_f64(f64::from(i));
        let mut opts = TransactionOptions::new();
        opts.set_durability(durability);
        let tx = db
            .transaction(names)
            .with_mode(TransactionMode::Readwrite)
            .with_options(opts)
            .build()
            .expect("tx");
        let st = |n: &str| tx.object_store(n).expect("store");
        let (s, ev, p, ids, meta) = (st("state"), st("events"), st("pending"), st("ids"), st("meta"));
        let _ = meta
            .get::<JsValue, JsValue, JsValue>("next_seq".into())
            .primitive()
            .expect("get")
            .await
            .expect("get");
        let _ =
            s.get::<JsValue, JsValue, JsValue>("form".into()).primitive().expect("get").await.expect("get");
        drop(s.put(state).with_key(JsValue::from_str("form")).primitive().expect("put"));
        let add = ids.add(seq.clone()).with_key(id).primitive().expect("add");
        drop(ev.put(row).with_key(seq.clone()).primitive().expect("put"));
        drop(p.put(entry).with_key(seq.clone()).primitive().expect("put"));
        drop(meta.put(seq).with_key(JsValue::from_str("next_seq")).primitive().expect("put"));
        add.await.expect("add");
        tx.commit().await.expect("commit");
    }
    f64::from(COMMITS) / ((now_ms() - t0) / 1e3)
}

/// The drain's backlog: `BENCH_IDB_BACKLOG` at build time, a multiple of
/// 500 (default 4,000).
const BACKLOG: u32 = match option_env!("BENCH_IDB_BACKLOG") {
    Some(s) => parse_u32(s),
    None => 4_000,
};

const fn parse_u32(s: &str) -> u32 {
    let (b, mut i, mut n) = (s.as_bytes(), 0, 0u32);
    while i < b.len() {
        n = n * 10 + (b[i] - b'0') as u32;
        i += 1;
    }
    n
}
/// The drain's batch: `BENCH_IDB_BATCH` at build time (default 100).
const BATCH: u32 = match option_env!("BENCH_IDB_BATCH") {
    Some(s) => parse_u32(s),
    None => 100,
};

/// Drains a backlog of `BACKLOG` events by `claim` + `ack` batches of
/// `BATCH`: events drained per second. With `BENCH_IDB_EXCLUSIVE` set at
/// build time the claims are exclusive (no lease written; the ack is one
/// batch record), as the browser's forwarder makes them under the
/// origin's Web Lock.
async fn drain_ours() -> f64 {
    let store =
        IdbStore::options(unique("drain")).durability(Durability::Relaxed).open().await.expect("open");
    let a = ActorId::new("form").expect("actor");
    for chunk in 0..BACKLOG / 500 {
        let events = (0..500).map(|i| {
            NewEvent::json(a.clone(), "saved", &serde_json::json!({ "n": chunk * 500 + i })).expect("json")
        });
        store.put_state_and_events(Commit::events_only().events(events)).await.expect("fill");
    }
    let grant =
        store.acquire_leadership("bench", Duration::from_secs(600)).await.expect("lead").expect("grant");
    let t0 = now_ms();
    let mut n = 0;
    let (mut claiming, mut acking) = (0.0, 0.0);
    loop {
        let t = now_ms();
        let batch = store
            .claim(
                &grant,
                ClaimRequest::new(BATCH as usize, Duration::from_secs(60))
                    .exclusive(option_env!("BENCH_IDB_EXCLUSIVE").is_some()),
            )
            .await
            .expect("claim");
        claiming += now_ms() - t;
        if batch.is_empty() {
            break;
        }
        n += batch.len();
        let ids: Vec<_> = batch.iter().map(|e| e.id).collect();
        let t = now_ms();
        store.ack(&grant, &ids).await.expect("ack");
        acking += now_ms() - t;
    }
    assert_eq!(n, BACKLOG as usize, "drained everything");
    console_log!("BENCH idb drain split: claim {claiming:.0} ms, ack {acking:.0} ms");
    f64::from(BACKLOG) / ((now_ms() - t0) / 1e3)
}

/// The same drain on raw `indexed_db_futures`: per batch, one transaction
/// reads the next `BATCH` pending entries and their rows and writes them
/// back leased; a second deletes the pending entries, writes the rows
/// delivered and adds the delivered index entries.
async fn drain_raw() -> f64 {
    let names = ["events", "pending", "delivered"];
    let db = Database::open(unique("rawdrain").as_str())
        .with_version(1u32)
        .with_on_upgrade_needed(move |_, db| {
            for n in names {
                db.create_object_store(n).build()?;
            }
            Ok(())
        })
        .await
        .expect("open raw");
    let mut opts = TransactionOptions::new();
    opts.set_durability(TransactionDurability::Relaxed);
    let rw = || {
        db.transaction(names)
            .with_mode(TransactionMode::Readwrite)
            .with_options(opts.clone())
            .build()
            .expect("tx")
    };
    let bytes = |n: usize| -> JsValue { js_sys::Uint8Array::from(&vec![1u8; n][..]).into() };
    for chunk in 0..BACKLOG / 500 {
        let tx = rw();
        let (ev, p) = (tx.object_store("events").expect("st"), tx.object_store("pending").expect("st"));
        for i in 0..500 {
            let seq = JsValue::from_f64(f64::from(chunk * 500 + i + 1));
            drop(ev.put(bytes(120)).with_key(seq.clone()).primitive().expect("put"));
            drop(p.put(bytes(40)).with_key(seq).primitive().expect("put"));
        }
        tx.commit().await.expect("fill");
    }
    let t0 = now_ms();
    let mut n = 0;
    loop {
        let tx = rw();
        let (ev, p) = (tx.object_store("events").expect("st"), tx.object_store("pending").expect("st"));
        let keys: Vec<JsValue> = p
            .get_all_keys::<JsValue>()
            .with_limit(BATCH)
            .primitive()
            .expect("keys")
            .await
            .expect("keys")
            .map(|k| k.expect("key"))
            .collect();
        let _: Vec<JsValue> = p
            .get_all::<JsValue>()
            .with_limit(BATCH)
            .primitive()
            .expect("values")
            .await
            .expect("values")
            .map(|v| v.expect("value"))
            .collect();
        if keys.is_empty() {
            break;
        }
        for k in &keys {
            let _ =
                ev.get::<JsValue, JsValue, JsValue>(k.clone()).primitive().expect("get").await.expect("get");
            drop(ev.put(bytes(130)).with_key(k.clone()).primitive().expect("put"));
            drop(p.put(bytes(48)).with_key(k.clone()).primitive().expect("put"));
        }
        tx.commit().await.expect("claim");
        let tx = rw();
        let st = |s: &str| tx.object_store(s).expect("st");
        let (ev, p, d) = (st("events"), st("pending"), st("delivered"));
        for k in &keys {
            let _ =
                ev.get::<JsValue, JsValue, JsValue>(k.clone()).primitive().expect("get").await.expect("get");
            drop(ev.put(bytes(130)).with_key(k.clone()).primitive().expect("put"));
            drop(p.delete::<JsValue, JsValue>(k.clone()).primitive().expect("delete"));
            drop(d.put(k.clone()).with_key(k.clone()).primitive().expect("put"));
        }
        tx.commit().await.expect("ack");
        n += keys.len();
    }
    assert_eq!(n, BACKLOG as usize, "drained everything");
    f64::from(BACKLOG) / ((now_ms() - t0) / 1e3)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[wasm_bindgen_test]
async fn commits_per_second_strict_and_relaxed() {
    for (label, d, rd) in [
        ("strict", Durability::Strict, TransactionDurability::Strict),
        ("relaxed", Durability::Relaxed, TransactionDurability::Relaxed),
    ] {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            a.push(ours(d).await);
            b.push(raw(rd).await);
        }
        let (a, b) = (median(a), median(b));
        console_log!(
            "BENCH idb {label}: outbox {a:.0} commits/s, raw indexed_db_futures {b:.0} tx/s, ratio {:.2}x ({COMMITS} commits, median of {ROUNDS})",
            a / b
        );
    }
}

#[wasm_bindgen_test]
async fn drain_a_backlog_by_claim_and_ack() {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        a.push(drain_ours().await);
        b.push(drain_raw().await);
    }
    let (a, b) = (median(a), median(b));
    console_log!(
        "BENCH idb drain: outbox {a:.0} events/s, raw indexed_db_futures {b:.0} events/s, ratio {:.2}x ({BACKLOG} events, batches of {BATCH}, relaxed, median of {ROUNDS})",
        a / b
    );
}
