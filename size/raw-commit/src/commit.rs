//! The commit `size/raw-commit` measures, hand-written on
//! `indexed_db_futures`; `size/raw-commit-json` includes this file too
//! (`#[path]`), so that the two measure the same commit.

use indexed_db_futures::database::Database;
use indexed_db_futures::prelude::*;
use indexed_db_futures::transaction::{TransactionDurability, TransactionMode, TransactionOptions};
use js_sys::Uint8Array;
use wasm_bindgen::prelude::*;

const STORES: [&str; 9] =
    ["meta", "state", "events", "ids", "pending", "dead", "delivered", "inbox", "inbox_at"];

fn e(err: impl std::fmt::Display) -> JsValue {
    JsValue::from_str(&err.to_string())
}

/// Whether `err` is the DOM exception `name`.
fn is(err: &indexed_db_futures::error::Error, name: &str) -> bool {
    match err {
        indexed_db_futures::error::Error::DomException(d) => {
            d.as_ref().unchecked_ref::<web_sys::DomException>().name() == name
        }
        _ => false,
    }
}

fn bytes(b: &[u8]) -> JsValue {
    Uint8Array::from(b).into()
}

/// Opens `db` and commits `snapshot` for `actor` at `expected` with one
/// event whose payload is `payload`.
pub(crate) async fn commit(
    db: &str,
    actor: &str,
    expected: f64,
    snapshot: &[u8],
    payload: &[u8],
) -> Result<(), JsValue> {
    let opened = Database::open(db)
        .with_version(1u32)
        .with_on_upgrade_needed(|ev, db| {
            if ev.old_version() < 1.0 {
                for n in STORES {
                    db.create_object_store(n).build()?;
                }
            }
            Ok(())
        })
        .await;
    let db = match opened {
        Ok(db) => db,
        Err(indexed_db_futures::error::OpenDbError::Base(b)) if is(&b, "VersionError") => {
            return Err(JsValue::from_str("schema too new"));
        }
        Err(err) => return Err(e(err)),
    };
    // Encoded before the transaction opens: the event row (id, time,
    // actor, type, payload) and its pending entry (time, actor).
    let id = uuid::Uuid::now_v7();
    let now = js_sys::Date::now();
    let mut row = Vec::with_capacity(64 + payload.len());
    row.extend_from_slice(id.as_bytes());
    row.extend_from_slice(&now.to_le_bytes());
    for part in [actor.as_bytes(), b"saved", payload] {
        row.extend_from_slice(&(part.len() as u32).to_le_bytes());
        row.extend_from_slice(part);
    }
    let mut entry = now.to_le_bytes().to_vec();
    entry.extend_from_slice(actor.as_bytes());
    let mut state = (expected + 1.0).to_le_bytes().to_vec();
    state.extend_from_slice(snapshot);

    let mut opts = TransactionOptions::new();
    opts.set_durability(TransactionDurability::Strict);
    let tx = db
        .transaction(["meta", "state", "events", "ids", "pending"])
        .with_mode(TransactionMode::Readwrite)
        .with_options(opts)
        .build()
        .map_err(e)?;
    let st = |n: &str| tx.object_store(n).map_err(e);
    let (meta, state_st, ev, ids, pending) =
        (st("meta")?, st("state")?, st("events")?, st("ids")?, st("pending")?);
    let next = meta
        .get::<JsValue, JsValue, JsValue>("next_seq".into())
        .primitive()
        .map_err(e)?
        .await
        .map_err(e)?
        .and_then(|v| v.as_f64())
        .unwrap_or(1.0);
    let current = state_st
        .get::<JsValue, JsValue, JsValue>(actor.into())
        .primitive()
        .map_err(e)?
        .await
        .map_err(e)?
        .and_then(|v| v.dyn_into::<Uint8Array>().ok())
        .map(|b| {
            let mut v = [0u8; 8];
            for (i, x) in (0u32..).zip(&mut v) {
                *x = b.get_index(i);
            }
            f64::from_le_bytes(v)
        })
        .unwrap_or(0.0);
    if current != expected {
        return Err(JsValue::from_str("version conflict"));
    }
    let seq = JsValue::from_f64(next);
    drop(state_st.put(bytes(&state)).with_key(JsValue::from_str(actor)).primitive().map_err(e)?);
    let add = ids.add(seq.clone()).with_key(bytes(id.as_bytes())).primitive().map_err(e)?;
    drop(ev.put(bytes(&row)).with_key(seq.clone()).primitive().map_err(e)?);
    drop(pending.put(bytes(&entry)).with_key(seq).primitive().map_err(e)?);
    drop(
        meta.put(JsValue::from_f64(next + 1.0))
            .with_key(JsValue::from_str("next_seq"))
            .primitive()
            .map_err(e)?,
    );
    match add.await {
        Ok(_) => {}
        Err(err) if is(&err, "ConstraintError") => {
            return Err(JsValue::from_str("duplicate event"));
        }
        Err(err) => return Err(e(err)),
    }
    tx.commit().await.map_err(e)?;
    Ok(())
}
