//! Inspection and maintenance: stats, listing pending and dead events,
//! requeueing dead ones, pruning delivered ones.

use std::collections::HashSet;

use js_sys::Array;
use outbox_core::codec::{PendingEntry, Status, corrupt, encode_pending, encode_row};
use outbox_core::{Envelope, EventId, Result, StoreStats, Timestamp};
use wasm_bindgen::JsCast;

use crate::codec::{bytes_js, id_js, js_u64, seq_js};
use crate::schema::{DEAD, DELIVERED, EVENTS, IDS, PENDING};
use crate::tx::{Db, count, delete, finish, get, get_all_keys, pending_entries, put, read_row, store};

/// Counts by status, the events in flight at `now`, the oldest pending.
pub(crate) async fn stats(db: &Db, now: Timestamp) -> Result<StoreStats> {
    let tx = db.tx(&[PENDING, DEAD, DELIVERED], false)?;
    let mut s = StoreStats::default();
    for (_, e) in pending_entries(&store(&tx, PENDING, "stats")?).await? {
        s.pending += 1;
        if e.leased_at(now) {
            s.in_flight += 1;
        }
        s.oldest_pending_at = Some(s.oldest_pending_at.map_or(e.created_at, |o| o.min(e.created_at)));
    }
    s.dead = count(&store(&tx, DEAD, "stats")?, "count dead").await?;
    s.delivered = count(&store(&tx, DELIVERED, "stats")?, "count delivered").await?;
    Ok(s)
}

/// Up to `limit` dead (`dead`) or pending events, in seq order.
pub(crate) async fn list(db: &Db, dead: bool, limit: usize) -> Result<Vec<Envelope>> {
    let tx = db.tx(&[PENDING, DEAD, EVENTS], false)?;
    let seqs: Vec<u64> = if dead {
        get_all_keys(&store(&tx, DEAD, "list")?, None, "scan dead")
            .await?
            .iter()
            .map(|k| js_u64(k, "dead key"))
            .collect::<Result<_>>()?
    } else {
        pending_entries(&store(&tx, PENDING, "list")?).await?.into_iter().map(|(s, _)| s).collect()
    };
    let ev = store(&tx, EVENTS, "list")?;
    let mut out = Vec::new();
    for seq in seqs.into_iter().take(limit) {
        if let Some(row) = read_row(&ev, seq).await? {
            out.push(row.env);
        }
    }
    Ok(out)
}

/// Moves the dead events `ids` back to pending, due at `now` with their
/// attempts reset; returns how many moved.
pub(crate) async fn requeue_dead(db: &Db, now: Timestamp, ids: &[EventId]) -> Result<u64> {
    let what = "requeue";
    let tx = db.tx(&[IDS, EVENTS, PENDING, DEAD], true)?;
    let (id_st, ev) = (store(&tx, IDS, what)?, store(&tx, EVENTS, what)?);
    let (pending, dead) = (store(&tx, PENDING, what)?, store(&tx, DEAD, what)?);
    let mut moved = 0;
    let mut seen = HashSet::new();
    for id in ids {
        if !seen.insert(*id) {
            continue;
        }
        let Some(s) = get(&id_st, id_js(*id), "read id").await? else { continue };
        let seq = js_u64(&s, "id index")?;
        let Some(mut row) = read_row(&ev, seq).await? else { continue };
        if row.status != Status::Dead {
            continue;
        }
        row.status = Status::Pending;
        row.env.attempts = 0;
        row.env.next_attempt_at = now;
        row.claimed_by = None;
        row.lease_until = None;
        put(&ev, seq_js(seq), bytes_js(&encode_row(&row)), what)?;
        delete(&dead, seq_js(seq), what)?;
        put(&pending, seq_js(seq), bytes_js(&encode_pending(&PendingEntry::of(&row))), what)?;
        moved += 1;
    }
    finish(tx, what).await?;
    Ok(moved)
}

/// Deletes up to `limit` events delivered before `before`, oldest first.
pub(crate) async fn prune_delivered(db: &Db, before: Timestamp, limit: usize) -> Result<u64> {
    let what = "prune delivered";
    let tx = db.tx(&[DELIVERED, EVENTS, IDS], true)?;
    let (delivered, ev, ids) =
        (store(&tx, DELIVERED, what)?, store(&tx, EVENTS, what)?, store(&tx, IDS, what)?);
    let cap = u32::try_from(limit).unwrap_or(u32::MAX);
    let mut n = 0;
    for k in get_all_keys(&delivered, Some(cap), what).await? {
        let parts: Array = k.clone().dyn_into().map_err(|_| corrupt("delivered key"))?;
        let at = parts.get(0).as_f64().ok_or_else(|| corrupt("delivered key time"))?;
        if at >= before.as_millis() as f64 {
            break;
        }
        let seq = js_u64(&parts.get(1), "delivered key seq")?;
        if let Some(row) = read_row(&ev, seq).await? {
            delete(&ids, id_js(row.env.id), what)?;
        }
        delete(&ev, seq_js(seq), what)?;
        delete(&delivered, k, what)?;
        n += 1;
    }
    finish(tx, what).await?;
    Ok(n)
}
