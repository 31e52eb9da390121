//! Inspection and maintenance: stats, listing pending and dead events,
//! requeueing, discarding and skipping dead ones, pruning delivered and
//! discarded ones.

use std::collections::HashSet;

use indexed_db_futures::object_store::ObjectStore;
use js_sys::{Array, Uint8Array};
use outbox_core::codec::{corrupt, encode_pending};
use outbox_core::rules::ClaimEntry;
use outbox_core::{Envelope, EventId, OrderingKey, Result, StoreStats, Timestamp};
use wasm_bindgen::{JsCast, JsValue};

use crate::codec::{
    Event, Status, bytes_js, dead_js, id_js, js_batch_count, js_bytes, js_dead, js_seqs, js_u64,
    quarantined_envelope, salvage, seq_js, seqs_js, time_seq_js,
};
use crate::quarantine::{Fault, Found, Healing, at, found, healing, quarantined, row_by_id, seq_of_id};
use crate::schema::{DEAD, DELIVERED, DELIVERED_BATCHES, DISCARDED, EVENTS, IDS, PENDING, QUARANTINE};
use crate::tx::{
    Db, Tx, count, delete, finish, get, get_all, get_all_keys, get_many, pending_entries, put, store,
};

/// Counts by status, the events in flight at `now`, the oldest pending,
/// the keys parked by a dead letter. A pending or dead index entry that
/// does not read is fixed on the way ([`healing`]).
pub(crate) async fn stats(db: &Db, now: Timestamp) -> Result<StoreStats> {
    healing(db, now, || async {
        let tx = db.tx(&[PENDING, DEAD, DELIVERED, DELIVERED_BATCHES, DISCARDED], false)?;
        let mut s = StoreStats::default();
        for (_, e) in pending_entries(&store(&tx, PENDING, "stats")?).await? {
            s.pending += 1;
            if e.leased_at(now) {
                s.in_flight += 1;
            }
            s.oldest_pending_at = Some(s.oldest_pending_at.map_or(e.created_at, |o| o.min(e.created_at)));
        }
        // The dead index's values: the plain key of a dead letter that
        // parks its key, `[key, true]` for a skipped one.
        let dead_st = store(&tx, DEAD, "stats")?;
        let keys = get_all_keys(&dead_st, None, "scan dead").await?;
        let dead = get_all(&dead_st, "scan dead").await?;
        s.dead = dead.len() as u64;
        let mut parked = HashSet::new();
        for (k, v) in keys.iter().zip(&dead) {
            if let (key, ClaimEntry::Dead) = at(js_u64(k, "dead key")?, js_dead(v))? {
                parked.insert(key);
            }
        }
        s.parked_keys = parked.len() as u64;
        s.delivered = count(&store(&tx, DELIVERED, "stats")?, "count delivered").await?;
        for k in
            get_all_keys(&store(&tx, DELIVERED_BATCHES, "stats")?, None, "scan delivered batches").await?
        {
            s.delivered += js_batch_count(&k)?;
        }
        s.discarded = count(&store(&tx, DISCARDED, "stats")?, "count discarded").await?;
        Ok(s)
    })
    .await
}

/// Up to `limit` dead (`dead`, skipped ones included) or pending events,
/// in seq order; a quarantined one as
/// [`quarantined_envelope`] shows it. An event that does not read is
/// quarantined on the way ([`healing`]).
pub(crate) async fn list(db: &Db, now: Timestamp, dead: bool, limit: usize) -> Result<Vec<Envelope>> {
    healing(db, now, || async {
        let tx = db.tx(&[PENDING, DEAD, EVENTS, QUARANTINE], false)?;
        let seqs: Vec<u64> = if dead {
            get_all_keys(&store(&tx, DEAD, "list")?, None, "scan dead")
                .await?
                .iter()
                .map(|k| js_u64(k, "dead key"))
                .collect::<Result<_>>()?
        } else {
            pending_entries(&store(&tx, PENDING, "list")?).await?.into_iter().map(|(s, _)| s).collect()
        };
        let (ev, q) = (store(&tx, EVENTS, "list")?, store(&tx, QUARANTINE, "list")?);
        let mut out = Vec::new();
        for seq in seqs.into_iter().take(limit) {
            out.push(match found(&ev, &q, seq).await? {
                Found::Row(row) if dead || row.status() == Status::Pending => row.into_env(),
                Found::Quarantined(rec, raw) if dead => quarantined_envelope(&rec, raw.as_ref()),
                // A pending entry of an event that is not pending.
                _ => return Err(Fault::Bad(seq)),
            });
        }
        Ok(out)
    })
    .await
}

/// Up to `limit` settled events of the index `index` ([`DELIVERED`] or
/// [`DISCARDED`], whose values are the seqs), in seq order; a
/// quarantined one as [`quarantined_envelope`] shows it.
pub(crate) async fn list_settled(
    db: &Db,
    now: Timestamp,
    index: &'static str,
    limit: usize,
) -> Result<Vec<Envelope>> {
    healing(db, now, || async {
        let tx = db.tx(&[index, DELIVERED_BATCHES, EVENTS, QUARANTINE], false)?;
        let mut seqs: Vec<u64> = get_all(&store(&tx, index, "list settled")?, "scan settled")
            .await?
            .iter()
            .map(|v| js_u64(v, "settled seq"))
            .collect::<Result<_>>()?;
        if index == DELIVERED {
            for batch in
                get_all(&store(&tx, DELIVERED_BATCHES, "list settled")?, "scan delivered batches").await?
            {
                seqs.extend(js_seqs(&batch, "delivered batch")?);
            }
        }
        seqs.sort_unstable();
        let (ev, q) = (store(&tx, EVENTS, "list settled")?, store(&tx, QUARANTINE, "list settled")?);
        let mut out = Vec::new();
        for seq in seqs.into_iter().take(limit) {
            out.push(match found(&ev, &q, seq).await? {
                Found::Row(row) => row.into_env(),
                Found::Quarantined(rec, raw) => quarantined_envelope(&rec, raw.as_ref()),
            });
        }
        Ok(out)
    })
    .await
}

/// The dead events among `ids` (each once), read in `tx` (over `ids`,
/// `events`, `pending`, `dead`, `quarantine`): the events that decode,
/// with their seqs, and the quarantined ones' seqs with their keys and
/// whether they are skipped.
async fn dead_rows(tx: &Tx<'_>, ids: &[EventId]) -> Healing<DeadRows> {
    let w = "read dead";
    let (id_st, ev) = (store(tx, IDS, w)?, store(tx, EVENTS, w)?);
    let (pending, dead, q) = (store(tx, PENDING, w)?, store(tx, DEAD, w)?, store(tx, QUARANTINE, w)?);
    let mut out = DeadRows::default();
    let mut seen = HashSet::new();
    for id in ids {
        let Some(seq) = seq_of_id(&id_st, &q, *id).await? else { continue };
        if !seen.insert(seq) {
            continue;
        }
        if quarantined(&q, seq).await?.is_some() {
            if let Some(v) = get(&dead, seq_js(seq), w).await? {
                let (key, entry) = at(seq, js_dead(&v))?;
                out.quarantined.push((seq, key, entry == ClaimEntry::Skipped));
            }
            continue;
        }
        let Some(row) = row_by_id(&ev, &q, [&pending, &dead], seq).await? else { continue };
        if matches!(row.status(), Status::Dead { .. }) {
            out.rows.push((seq, row));
        }
    }
    Ok(out)
}

/// The dead events an operator's call names.
#[derive(Default)]
struct DeadRows {
    /// Events that decode, by seq.
    rows: Vec<(u64, Event)>,
    /// Quarantined events: seq, the key of their dead index entry, and
    /// whether skipped.
    quarantined: Vec<(u64, OrderingKey, bool)>,
}

/// Moves the dead events `ids` (skipped or not) back to pending, due at
/// `now` with their attempts reset; returns how many moved. A quarantined
/// event is not requeued: there is no event to deliver.
pub(crate) async fn requeue_dead(db: &Db, now: Timestamp, ids: &[EventId]) -> Result<u64> {
    healing(db, now, || async {
        let what = "requeue";
        let tx = db.tx(&[IDS, EVENTS, PENDING, DEAD, QUARANTINE], true)?;
        let rows = dead_rows(&tx, ids).await?.rows;
        let (ev, pending, dead) =
            (store(&tx, EVENTS, what)?, store(&tx, PENDING, what)?, store(&tx, DEAD, what)?);
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
    })
    .await
}

/// Discards the dead events `ids` (skipped, quarantined or not) at `now`:
/// out of the dead index, into the discarded one; returns how many.
pub(crate) async fn discard_dead(db: &Db, now: Timestamp, ids: &[EventId]) -> Result<u64> {
    healing(db, now, || async {
        let what = "discard";
        let tx = db.tx(&[IDS, EVENTS, PENDING, DEAD, DISCARDED, QUARANTINE], true)?;
        let d = dead_rows(&tx, ids).await?;
        let (ev, dead, discarded) =
            (store(&tx, EVENTS, what)?, store(&tx, DEAD, what)?, store(&tx, DISCARDED, what)?);
        for (seq, mut row) in d.rows.iter().cloned() {
            row.set_status(Status::Discarded(now));
            put(&ev, seq_js(seq), bytes_js(&row.encode()), what)?;
            delete(&dead, seq_js(seq), what)?;
            put(&discarded, time_seq_js(now, seq), seq_js(seq), what)?;
        }
        // A quarantined event's status is its index entry (its record
        // cannot say).
        for (seq, _, _) in &d.quarantined {
            delete(&dead, seq_js(*seq), what)?;
            put(&discarded, time_seq_js(now, *seq), seq_js(*seq), what)?;
        }
        finish(tx, what).await?;
        Ok((d.rows.len() + d.quarantined.len()) as u64)
    })
    .await
}

/// Marks the dead events `ids` that are not yet skipped (quarantined ones
/// included) as skipped (they stay in the dead index, no longer parking
/// their key); returns how many changed.
pub(crate) async fn skip_dead(db: &Db, now: Timestamp, ids: &[EventId]) -> Result<u64> {
    healing(db, now, || async {
        let what = "skip";
        let tx = db.tx(&[IDS, EVENTS, PENDING, DEAD, QUARANTINE], true)?;
        let d = dead_rows(&tx, ids).await?;
        let (ev, dead) = (store(&tx, EVENTS, what)?, store(&tx, DEAD, what)?);
        let mut n = 0;
        for (seq, mut row) in d.rows {
            if row.status() != (Status::Dead { skipped: false }) {
                continue;
            }
            row.set_status(Status::Dead { skipped: true });
            put(&ev, seq_js(seq), bytes_js(&row.encode()), what)?;
            put(&dead, seq_js(seq), dead_js(&row.env().key, true), what)?;
            n += 1;
        }
        for (seq, key, skipped) in d.quarantined {
            if !skipped {
                put(&dead, seq_js(seq), dead_js(&key, true), what)?;
                n += 1;
            }
        }
        finish(tx, what).await?;
        Ok(n)
    })
    .await
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
    let tx = db.tx(&[DELIVERED, DELIVERED_BATCHES, DISCARDED, EVENTS, IDS, QUARANTINE], true)?;
    let (delivered, discarded) = (store(&tx, DELIVERED, what)?, store(&tx, DISCARDED, what)?);
    let batches_st = store(&tx, DELIVERED_BATCHES, what)?;
    let (ev, ids, q) = (store(&tx, EVENTS, what)?, store(&tx, IDS, what)?, store(&tx, QUARANTINE, what)?);
    let cap = u32::try_from(limit).unwrap_or(u32::MAX);
    let before = before.as_millis() as f64;
    // Both indexes' oldest `limit`, merged by time: the oldest `limit` of
    // their union.
    // `Some(i)`: an event of `batches[i]`; `None`: of an index entry.
    let mut doomed: Vec<(f64, u64, JsValue, bool, Option<usize>)> = Vec::new();
    for (st, is_discarded) in [(&delivered, false), (&discarded, true)] {
        for (at, seq, k) in by_time(st, cap, what).await? {
            if at < before {
                doomed.push((at, seq, k, is_discarded, None));
            }
        }
    }
    // Batches (`delivered_batches`), each event on its own.
    let mut batches: Vec<(JsValue, Vec<u64>, usize)> = Vec::new();
    let keys: Vec<(f64, u64, JsValue)> = by_time(&batches_st, cap, what).await?;
    let values =
        get_many(&batches_st, keys.iter().map(|(_, _, k)| k.clone()), "read delivered batch").await?;
    for ((at, _, k), v) in keys.into_iter().zip(values) {
        let (Some(v), true) = (v, at < before) else { continue };
        let seqs = js_seqs(&v, "delivered batch")?;
        for seq in &seqs {
            doomed.push((at, *seq, k.clone(), false, Some(batches.len())));
        }
        batches.push((k, seqs, 0));
    }
    doomed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    doomed.truncate(limit);
    for (_, seq, k, is_discarded, batch) in &doomed {
        // The id of a quarantined event is its record's; an event that
        // went bad once settled gives what can be read of it.
        let id = match quarantined(&q, *seq).await? {
            Some(rec) => Some(rec.id),
            None => match get(&ev, seq_js(*seq), "read event").await? {
                Some(v) => match js_bytes(&v, "event row").and_then(Event::decode) {
                    Ok(row) => Some(row.env().id),
                    Err(_) => v.dyn_ref::<Uint8Array>().and_then(|b| salvage(&b.to_vec()).id),
                },
                None => None,
            },
        };
        if let Some(id) = id
            && get(&ids, id_js(id), "read id").await?.and_then(|v| v.as_f64()) == Some(*seq as f64)
        {
            delete(&ids, id_js(id), what)?;
        }
        delete(&q, seq_js(*seq), what)?;
        delete(&ev, seq_js(*seq), what)?;
        match batch {
            Some(i) => batches[*i].2 += 1,
            None => delete(if *is_discarded { &discarded } else { &delivered }, k.clone(), what)?,
        }
    }
    // A batch pruned whole goes; one pruned in part keeps the rest.
    let gone: HashSet<u64> = doomed.iter().filter(|d| d.4.is_some()).map(|d| d.1).collect();
    for (k, seqs, pruned) in &batches {
        if *pruned == seqs.len() {
            delete(&batches_st, k.clone(), what)?;
        } else if *pruned > 0 {
            let rest: Vec<u64> = seqs.iter().copied().filter(|s| !gone.contains(s)).collect();
            // The count is in the key: the rest goes under a new one.
            delete(&batches_st, k.clone(), what)?;
            let parts: Array = k.clone().dyn_into().map_err(|_| corrupt("delivered batch key"))?;
            let new_key = Array::of3(&parts.get(0), &parts.get(1), &JsValue::from_f64(rest.len() as f64));
            put(&batches_st, new_key.into(), seqs_js(&rest), what)?;
        }
    }
    finish(tx, what).await?;
    Ok(doomed.len() as u64)
}
