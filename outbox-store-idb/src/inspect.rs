//! Inspection and maintenance: stats, listing pending and dead events,
//! requeueing, discarding and skipping dead ones, pruning delivered and
//! discarded ones.

use std::collections::HashSet;

use indexed_db_futures::object_store::ObjectStore;
use js_sys::Array;
use outbox_core::codec::{corrupt, encode_pending};
use outbox_core::rules::ClaimEntry;
use outbox_core::{Envelope, EventId, Result, StoreStats, Timestamp};
use wasm_bindgen::{JsCast, JsValue};

use crate::codec::{Event, Status, bytes_js, dead_js, id_js, js_dead, js_u64, seq_js, time_seq_js};
use crate::schema::{DEAD, DELIVERED, DISCARDED, EVENTS, IDS, PENDING};
use crate::tx::{
    Db, count, delete, finish, get, get_all, get_all_keys, pending_entries, put, read_row, store,
};

/// Counts by status, the events in flight at `now`, the oldest pending,
/// the keys parked by a dead letter.
pub(crate) async fn stats(db: &Db, now: Timestamp) -> Result<StoreStats> {
    let tx = db.tx(&[PENDING, DEAD, DELIVERED, DISCARDED], false)?;
    let mut s = StoreStats::default();
    for (_, e) in pending_entries(&store(&tx, PENDING, "stats")?).await? {
        s.pending += 1;
        if e.leased_at(now) {
            s.in_flight += 1;
        }
        s.oldest_pending_at = Some(s.oldest_pending_at.map_or(e.created_at, |o| o.min(e.created_at)));
    }
    // The dead index's values: the plain key of a dead letter that parks
    // its key, `[key, true]` for a skipped one.
    let dead = get_all(&store(&tx, DEAD, "stats")?, "scan dead").await?;
    s.dead = dead.len() as u64;
    let mut parked = HashSet::new();
    for v in &dead {
        if let (key, ClaimEntry::Dead) = js_dead(v)? {
            parked.insert(key);
        }
    }
    s.parked_keys = parked.len() as u64;
    s.delivered = count(&store(&tx, DELIVERED, "stats")?, "count delivered").await?;
    s.discarded = count(&store(&tx, DISCARDED, "stats")?, "count discarded").await?;
    Ok(s)
}

/// Up to `limit` dead (`dead`, skipped ones included) or pending events,
/// in seq order.
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
            out.push(row.into_env());
        }
    }
    Ok(out)
}

/// The dead events among `ids` (each once), with their seqs, read in
/// the transaction of `id_st` and `ev`.
async fn dead_rows(
    id_st: &ObjectStore<'_>,
    ev: &ObjectStore<'_>,
    ids: &[EventId],
) -> Result<Vec<(u64, Event)>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for id in ids {
        if !seen.insert(*id) {
            continue;
        }
        let Some(s) = get(id_st, id_js(*id), "read id").await? else { continue };
        let seq = js_u64(&s, "id index")?;
        let Some(row) = read_row(ev, seq).await? else { continue };
        if matches!(row.status(), Status::Dead { .. }) {
            out.push((seq, row));
        }
    }
    Ok(out)
}

/// Moves the dead events `ids` (skipped or not) back to pending, due at
/// `now` with their attempts reset; returns how many moved.
pub(crate) async fn requeue_dead(db: &Db, now: Timestamp, ids: &[EventId]) -> Result<u64> {
    let what = "requeue";
    let tx = db.tx(&[IDS, EVENTS, PENDING, DEAD], true)?;
    let (id_st, ev) = (store(&tx, IDS, what)?, store(&tx, EVENTS, what)?);
    let (pending, dead) = (store(&tx, PENDING, what)?, store(&tx, DEAD, what)?);
    let rows = dead_rows(&id_st, &ev, ids).await?;
    for (seq, mut row) in rows.iter().cloned() {
        row.set_status(Status::Pending);
        let env = row.env_mut();
        env.attempts = 0;
        env.next_attempt_at = now;
        row.set_claim(None, None);
        put(&ev, seq_js(seq), bytes_js(&row.encode()), what)?;
        delete(&dead, seq_js(seq), what)?;
        put(&pending, seq_js(seq), bytes_js(&encode_pending(&row.pending_entry())), what)?;
    }
    finish(tx, what).await?;
    Ok(rows.len() as u64)
}

/// Discards the dead events `ids` (skipped or not) at `now`: out of the
/// dead index, into the discarded one; returns how many.
pub(crate) async fn discard_dead(db: &Db, now: Timestamp, ids: &[EventId]) -> Result<u64> {
    let what = "discard";
    let tx = db.tx(&[IDS, EVENTS, DEAD, DISCARDED], true)?;
    let (id_st, ev) = (store(&tx, IDS, what)?, store(&tx, EVENTS, what)?);
    let (dead, discarded) = (store(&tx, DEAD, what)?, store(&tx, DISCARDED, what)?);
    let rows = dead_rows(&id_st, &ev, ids).await?;
    for (seq, mut row) in rows.iter().cloned() {
        row.set_status(Status::Discarded(now));
        put(&ev, seq_js(seq), bytes_js(&row.encode()), what)?;
        delete(&dead, seq_js(seq), what)?;
        put(&discarded, time_seq_js(now, seq), seq_js(seq), what)?;
    }
    finish(tx, what).await?;
    Ok(rows.len() as u64)
}

/// Marks the dead events `ids` that are not yet skipped as skipped (they
/// stay in the dead index, no longer parking their key); returns how
/// many changed.
pub(crate) async fn skip_dead(db: &Db, ids: &[EventId]) -> Result<u64> {
    let what = "skip";
    let tx = db.tx(&[IDS, EVENTS, DEAD], true)?;
    let (id_st, ev, dead) = (store(&tx, IDS, what)?, store(&tx, EVENTS, what)?, store(&tx, DEAD, what)?);
    let mut n = 0;
    for (seq, mut row) in dead_rows(&id_st, &ev, ids).await? {
        if row.status() != (Status::Dead { skipped: false }) {
            continue;
        }
        row.set_status(Status::Dead { skipped: true });
        put(&ev, seq_js(seq), bytes_js(&row.encode()), what)?;
        put(&dead, seq_js(seq), dead_js(&row.env().key, true), what)?;
        n += 1;
    }
    finish(tx, what).await?;
    Ok(n)
}

/// `(time, seq, key)` of the first `cap` entries of a `[time, seq]`
/// index.
async fn by_time(st: &ObjectStore<'_>, cap: u32, what: &str) -> Result<Vec<(f64, u64, JsValue)>> {
    let mut out = Vec::new();
    for k in get_all_keys(st, Some(cap), what).await? {
        let parts: Array = k.clone().dyn_into().map_err(|_| corrupt("settled index key"))?;
        let at = parts.get(0).as_f64().ok_or_else(|| corrupt("settled index key time"))?;
        let seq = js_u64(&parts.get(1), "settled index key seq")?;
        out.push((at, seq, k));
    }
    Ok(out)
}

/// Deletes up to `limit` events delivered or discarded before `before`,
/// oldest first.
pub(crate) async fn prune_delivered(db: &Db, before: Timestamp, limit: usize) -> Result<u64> {
    let what = "prune delivered";
    if limit == 0 {
        return Ok(0);
    }
    let tx = db.tx(&[DELIVERED, DISCARDED, EVENTS, IDS], true)?;
    let (delivered, discarded) = (store(&tx, DELIVERED, what)?, store(&tx, DISCARDED, what)?);
    let (ev, ids) = (store(&tx, EVENTS, what)?, store(&tx, IDS, what)?);
    let cap = u32::try_from(limit).unwrap_or(u32::MAX);
    let before = before.as_millis() as f64;
    // Both indexes' oldest `limit`, merged by time: the oldest `limit` of
    // their union.
    let mut doomed: Vec<(f64, u64, JsValue, bool)> = Vec::new();
    for (st, is_discarded) in [(&delivered, false), (&discarded, true)] {
        for (at, seq, k) in by_time(st, cap, what).await? {
            if at < before {
                doomed.push((at, seq, k, is_discarded));
            }
        }
    }
    doomed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    doomed.truncate(limit);
    for (_, seq, k, is_discarded) in &doomed {
        if let Some(row) = read_row(&ev, *seq).await? {
            delete(&ids, id_js(row.env().id), what)?;
        }
        delete(&ev, seq_js(*seq), what)?;
        delete(if *is_discarded { &discarded } else { &delivered }, k.clone(), what)?;
    }
    finish(tx, what).await?;
    Ok(doomed.len() as u64)
}
