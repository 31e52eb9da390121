//! Inbox marks: whether a consumer processed an event, and pruning old
//! marks.

use js_sys::Array;
use outbox_core::codec::corrupt;
use outbox_core::{ActorId, ConsumerId, EventId, Result, Timestamp};
use wasm_bindgen::{JsCast, JsValue};

use crate::codec::inbox_js;
use crate::schema::{INBOX, INBOX_AT};
use crate::tx::{Db, delete, finish, get, get_all_keys, store};

/// Whether `consumer` marked the event `id` of `origin` processed.
pub(crate) async fn is_processed(
    db: &Db,
    consumer: &ConsumerId,
    origin: &ActorId,
    id: EventId,
) -> Result<bool> {
    let tx = db.tx(&[INBOX], false)?;
    let st = store(&tx, INBOX, "read inbox")?;
    Ok(get(&st, inbox_js(consumer, origin, id), "read inbox").await?.is_some())
}

/// Deletes up to `limit` marks made before `before`, oldest first.
pub(crate) async fn prune_inbox(db: &Db, before: Timestamp, limit: usize) -> Result<u64> {
    let what = "prune inbox";
    let tx = db.tx(&[INBOX, INBOX_AT], true)?;
    let (inbox, inbox_at) = (store(&tx, INBOX, what)?, store(&tx, INBOX_AT, what)?);
    let cap = u32::try_from(limit).unwrap_or(u32::MAX);
    let mut n = 0;
    for k in get_all_keys(&inbox_at, Some(cap), what).await? {
        let parts: Array = k.clone().dyn_into().map_err(|_| corrupt("inbox time key"))?;
        let at = parts.get(0).as_f64().ok_or_else(|| corrupt("inbox time key"))?;
        if at >= before.as_millis() as f64 {
            break;
        }
        let mark: JsValue = Array::of3(&parts.get(1), &parts.get(2), &parts.get(3)).into();
        delete(&inbox, mark, what)?;
        delete(&inbox_at, k, what)?;
        n += 1;
    }
    finish(tx, what).await?;
    Ok(n)
}
