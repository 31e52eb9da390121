//! IndexedDB commit throughput in the browser, against a same-run baseline:
//! a raw `indexed_db_futures` readwrite transaction doing the same writes
//! (state, event row, pending entry, id, sequence), per durability hint.
//! Prints figures; asserts nothing about speed. Not run by `cargo test`
//! (`test = false`); run it with `scripts/browser-bench.sh`.
#![cfg(target_arch = "wasm32")]

mod common;

use common::unique;
use indexed_db_futures::database::Database;
use indexed_db_futures::prelude::*;
use indexed_db_futures::transaction::{TransactionDurability, TransactionMode, TransactionOptions};
use outbox_core::prelude::*;
use outbox_core::{ActorId, Commit, NewEvent, Version};
use outbox_store_idb::{Durability, IdbStore};
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
