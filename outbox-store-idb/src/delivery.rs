//! Delivery: the claim (a plan over the dead index and the pending index
//! in seq order), settling claimed events (ack, release, retry, dead
//! letter) and making backed-off events due (retry now), each one
//! transaction fenced by the leader's epoch.

use std::cell::RefCell;
use std::collections::HashMap;

use outbox_core::codec::{PendingEntry, encode_pending};
use outbox_core::rules::{ClaimEntry, ClaimPlan, check_claim_holder, check_fence};
use outbox_core::{
    ClaimRequest, Envelope, Epoch, Error, EventId, LeaderGrant, OrderingKey, Result, Timestamp,
};

use crate::codec::{
    Event, Status, batch_key_js, bytes_js, dead_js, id_js, js_dead, js_u64, seq_js, seqs_js, time_seq_js,
};
use crate::leader::current_epoch;
use crate::quarantine::{Fault, Healing, at, healing, pending_row, pending_rows, rows_by_id};
use crate::schema::{DEAD, DELIVERED, DELIVERED_BATCHES, EVENTS, IDS, META, PENDING, QUARANTINE};
use crate::tx::{
    Db, Tx, delete_seqs, finish, get_all, get_all_keys, get_many, pending_after, pending_entries, put, store,
};

/// Claims made with [`ClaimRequest::exclusive`] (the claimer holds the
/// origin's exclusive Web Lock and settles through this handle): kept
/// here, in this handle's memory, instead of a lease written per event.
/// Each row is kept as the claim would have written it (attempt counted,
/// claimed by the grant's epoch, leased until `lease_until`), and is
/// written with its settlement. Claims of an older grant are dropped when
/// a newer grant claims: they were never written, so there is nothing to
/// undo.
#[derive(Debug, Default)]
pub(crate) struct Inflight {
    epoch: u64,
    rows: HashMap<u64, Event>,
    by_id: HashMap<EventId, u64>,
}

impl Inflight {
    /// Drops claims of another grant and lapsed ones.
    fn refresh(&mut self, epoch: u64, now: Timestamp) {
        if self.epoch != epoch {
            self.epoch = epoch;
            self.rows.clear();
            self.by_id.clear();
        }
        let lapsed: Vec<u64> = self
            .rows
            .iter()
            .filter(|(_, r)| r.lease_until().is_none_or(|t| t <= now))
            .map(|(s, _)| *s)
            .collect();
        for seq in lapsed {
            if let Some(r) = self.rows.remove(&seq) {
                self.by_id.remove(&r.env().id);
            }
        }
    }

    /// The claimed row of `id` under `epoch`, if held here.
    fn get(&self, epoch: u64, id: EventId) -> Option<(u64, &Event)> {
        if self.epoch != epoch {
            return None;
        }
        let seq = *self.by_id.get(&id)?;
        Some((seq, self.rows.get(&seq)?))
    }

    fn remove(&mut self, seq: u64) {
        if let Some(r) = self.rows.remove(&seq) {
            self.by_id.remove(&r.env().id);
        }
    }
}

/// Claims up to `request.limit` due events under `grant` (see
/// [`ClaimPlan`]): dead events first from the dead index (when parking;
/// a skipped one is [`ClaimEntry::Skipped`] and parks nothing), then the
/// pending index in seq order, read in chunks until the plan is full, so
/// a claim reads about what it takes, not the backlog. An event that does
/// not read is quarantined on the way ([`healing`]) and the claim runs
/// again.
///
/// With [`ClaimRequest::exclusive`] the claim writes nothing: the rows are
/// kept in `inflight` (see [`Inflight`]).
pub(crate) async fn claim(
    db: &Db,
    now: Timestamp,
    grant: &LeaderGrant,
    request: &ClaimRequest,
    inflight: &RefCell<Inflight>,
) -> Result<Vec<Envelope>> {
    if request.exclusive {
        inflight.borrow_mut().refresh(grant.epoch.0, now);
    }
    let claimed = healing(db, now, || claim_once(db, now, grant, request, inflight)).await?;
    if !request.exclusive {
        return Ok(claimed.into_iter().map(|(_, row)| row.into_env()).collect());
    }
    let mut held = inflight.borrow_mut();
    let mut out = Vec::with_capacity(claimed.len());
    for (seq, row) in claimed {
        held.by_id.insert(row.env().id, seq);
        out.push(row.env().clone());
        held.rows.insert(seq, row);
    }
    Ok(out)
}

async fn claim_once(
    db: &Db,
    now: Timestamp,
    grant: &LeaderGrant,
    request: &ClaimRequest,
    inflight: &RefCell<Inflight>,
) -> Healing<Vec<(u64, Event)>> {
    let what = "claim";
    let tx = db.tx(&[META, PENDING, DEAD, EVENTS, QUARANTINE], !request.exclusive)?;
    let (meta, pending) = (store(&tx, META, what)?, store(&tx, PENDING, what)?);
    let (dead, ev) = (store(&tx, DEAD, what)?, store(&tx, EVENTS, what)?);
    let q = store(&tx, QUARANTINE, what)?;
    check_fence(grant, current_epoch(&meta).await?)?;
    if request.limit == 0 {
        return Ok(Vec::new());
    }
    let mut plan: ClaimPlan<OrderingKey> = ClaimPlan::new(request, now);
    if request.park_dead_keys {
        let keys = get_all_keys(&dead, None, "scan dead").await?;
        let values = get_all(&dead, "scan dead").await?;
        for (k, v) in keys.iter().zip(&values) {
            let seq = js_u64(k, "dead key")?;
            // A skipped one (`ClaimEntry::Skipped`) parks nothing, and is
            // never claimed: it is not in the pending index.
            if let (key, ClaimEntry::Dead) = at(seq, js_dead(v))? {
                plan.dead(&key, seq);
            }
        }
    }
    let chunk = u32::try_from(request.limit.clamp(64, 4096)).unwrap_or(4096);
    let mut picked: Vec<(u64, PendingEntry)> = Vec::new();
    let mut after = 0;
    while !plan.is_full() {
        let entries = pending_after(&pending, after, chunk).await?;
        let last_chunk = entries.len() < chunk as usize;
        for (seq, entry) in entries {
            if plan.is_full() {
                break;
            }
            after = seq;
            // A claim held in memory leases its event as a written one.
            let lease_until = match request.exclusive {
                true => inflight.borrow().rows.get(&seq).and_then(Event::lease_until).or(entry.lease_until),
                false => entry.lease_until,
            };
            let offered = ClaimEntry::Pending { lease_until, next_attempt_at: entry.next_attempt_at };
            if plan.offer(&entry.key, seq, offered) {
                picked.push((seq, entry));
            }
        }
        if last_chunk {
            break;
        }
    }
    // Every row is read (and checked) before anything is written.
    let seqs: Vec<u64> = picked.iter().map(|(seq, _)| *seq).collect();
    let read = pending_rows(&ev, &q, &seqs).await?;
    let mut rows = Vec::with_capacity(picked.len());
    for ((seq, entry), row) in picked.into_iter().zip(read) {
        if row.status() != Status::Pending || row.env().key != entry.key {
            // The pending entry disagrees with its event.
            return Err(Fault::Bad(seq));
        }
        rows.push((seq, entry, row));
    }
    let lease_until = now.saturating_add(request.lease);
    let mut out = Vec::with_capacity(rows.len());
    for (seq, entry, mut row) in rows {
        let env = row.env_mut();
        env.attempts = env.attempts.saturating_add(1);
        row.set_claim(Some(grant.epoch.0), Some(lease_until));
        if !request.exclusive {
            let entry = PendingEntry { lease_until: Some(lease_until), ..entry };
            put(&ev, seq_js(seq), bytes_js(&row.encode()), what)?;
            put(&pending, seq_js(seq), bytes_js(&encode_pending(&entry)), what)?;
        }
        out.push((seq, row));
    }
    finish(tx, what).await?;
    Ok(out)
}

/// Applies `change` to the pending events `ids` claimed under `grant`, in
/// one transaction: `Fenced` if `grant` is not the current grant or any
/// id is held by another claim. Delivered, dead and unknown ids are
/// skipped (a pending or dead one that does not read is quarantined).
///
/// Ids claimed into `inflight` by an exclusive claim under `grant` are
/// settled from there (nothing read but the fence), and dropped from it
/// once written.
pub(crate) async fn settle(
    db: &Db,
    now: Timestamp,
    what: &str,
    grant: &LeaderGrant,
    ids: &[EventId],
    change: impl Fn(&mut Event),
    inflight: &RefCell<Inflight>,
) -> Result<()> {
    let (held, others): (Vec<(u64, Event)>, Vec<EventId>) = {
        let mem = inflight.borrow();
        let (mut held, mut others) = (Vec::new(), Vec::new());
        for id in ids {
            match mem.get(grant.epoch.0, *id) {
                Some((seq, row)) => held.push((seq, row.clone())),
                None => others.push(*id),
            }
        }
        (held, others)
    };
    healing(db, now, || async {
        let tx = db.tx(&[META, IDS, EVENTS, PENDING, DEAD, DELIVERED, QUARANTINE], true)?;
        let mut rows = if others.is_empty() {
            check_fence(grant, current_epoch(&store(&tx, META, "settle")?).await?)?;
            Vec::new()
        } else {
            settleable(&tx, grant, &others).await?
        };
        rows.extend(held.iter().cloned());
        for (_, row) in &mut rows {
            change(row);
        }
        Ok(write_settled(tx, what, &rows).await?)
    })
    .await?;
    let mut mem = inflight.borrow_mut();
    for (seq, _) in &held {
        mem.remove(*seq);
    }
    Ok(())
}

/// Acks `ids` when every one is held in `inflight` under `grant` (an
/// exclusive claim's batch), in one transaction of a few requests
/// whatever the batch's size: the fence read, the pending entries deleted
/// by key range, and one `delivered_batches` record `[now, first seq]` ->
/// the seqs. The rows are left as committed (their pending status is
/// overridden by their absence from the pending index). Returns `false`,
/// having done nothing, when some id is not held: the caller settles them
/// one by one.
pub(crate) async fn ack_batch(
    db: &Db,
    now: Timestamp,
    grant: &LeaderGrant,
    ids: &[EventId],
    inflight: &RefCell<Inflight>,
) -> Result<bool> {
    let what = "ack";
    let mut seqs = Vec::with_capacity(ids.len());
    {
        let mem = inflight.borrow();
        for id in ids {
            match mem.get(grant.epoch.0, *id) {
                Some((seq, _)) => seqs.push(seq),
                None => return Ok(false),
            }
        }
    }
    seqs.sort_unstable();
    seqs.dedup();
    let Some(&first) = seqs.first() else { return Ok(true) };
    let tx = db.tx(&[META, PENDING, DELIVERED_BATCHES], true)?;
    check_fence(grant, current_epoch(&store(&tx, META, what)?).await?)?;
    delete_seqs(&store(&tx, PENDING, what)?, &seqs, what).await?;
    put(&store(&tx, DELIVERED_BATCHES, what)?, batch_key_js(now, first, seqs.len()), seqs_js(&seqs), what)?;
    finish(tx, what).await?;
    let mut mem = inflight.borrow_mut();
    for seq in seqs {
        mem.remove(seq);
    }
    Ok(true)
}

/// The rows `grant` may settle (read inside `tx`).
async fn settleable(tx: &Tx<'_>, grant: &LeaderGrant, ids: &[EventId]) -> Healing<Vec<(u64, Event)>> {
    let meta = store(tx, META, "settle")?;
    check_fence(grant, current_epoch(&meta).await?)?;
    let id_st = store(tx, IDS, "settle")?;
    let ev = store(tx, EVENTS, "settle")?;
    let (q, pending, dead) =
        (store(tx, QUARANTINE, "settle")?, store(tx, PENDING, "settle")?, store(tx, DEAD, "settle")?);
    let mut seqs = Vec::with_capacity(ids.len());
    for s in get_many(&id_st, ids.iter().map(|id| id_js(*id)), "read id").await?.into_iter().flatten() {
        seqs.push(js_u64(&s, "id index")?);
    }
    let rows = rows_by_id(&ev, &q, [&pending, &dead], &seqs).await?;
    // A row acked in a batch keeps its committed (pending) status: the
    // pending index says whether it still is.
    let listed = get_many(&pending, seqs.iter().map(|s| seq_js(*s)), "read pending").await?;
    let mut out = Vec::with_capacity(seqs.len());
    for ((seq, row), listed) in seqs.into_iter().zip(rows).zip(listed) {
        let Some(row) = row else { continue };
        if row.status() != Status::Pending || listed.is_none() {
            continue;
        }
        check_claim_holder(grant, row.claimed_by().map(Epoch))?;
        out.push((seq, row));
    }
    Ok(out)
}

/// Writes back settled rows (in `tx`) and commits.
async fn write_settled(tx: Tx<'_>, what: &str, rows: &[(u64, Event)]) -> Result<()> {
    let (ev, pending) = (store(&tx, EVENTS, what)?, store(&tx, PENDING, what)?);
    let (dead, delivered) = (store(&tx, DEAD, what)?, store(&tx, DELIVERED, what)?);
    // Pending entries leaving the index, deleted together (by key range
    // where they are consecutive).
    let mut gone = Vec::new();
    for (seq, row) in rows {
        put(&ev, seq_js(*seq), bytes_js(&row.encode()), what)?;
        match row.status() {
            Status::Pending => {
                put(&pending, seq_js(*seq), bytes_js(&encode_pending(&row.pending_entry())), what)?
            }
            Status::Dead { skipped } => {
                gone.push(*seq);
                put(&dead, seq_js(*seq), dead_js(&row.env().key, skipped), what)?;
            }
            Status::Delivered(at) => {
                gone.push(*seq);
                put(&delivered, time_seq_js(at, *seq), seq_js(*seq), what)?;
            }
            // Settling starts from a pending event: only an operator
            // discards, and only dead ones.
            Status::Discarded(_) => return Err(Error::internal("a claimed event cannot be discarded")),
        }
    }
    gone.sort_unstable();
    gone.dedup();
    delete_seqs(&pending, &gone, what).await?;
    finish(tx, what).await
}

/// Makes every pending event that failed an attempt and is due after
/// `now` due at `now` (leases untouched), under `grant`; returns how many.
pub(crate) async fn retry_now(db: &Db, now: Timestamp, grant: &LeaderGrant) -> Result<u64> {
    healing(db, now, || async {
        let what = "retry now";
        let tx = db.tx(&[META, PENDING, EVENTS, QUARANTINE], true)?;
        let (meta, pending, ev) =
            (store(&tx, META, what)?, store(&tx, PENDING, what)?, store(&tx, EVENTS, what)?);
        let q = store(&tx, QUARANTINE, what)?;
        check_fence(grant, current_epoch(&meta).await?)?;
        let mut due = Vec::new();
        for (seq, entry) in pending_entries(&pending).await? {
            if entry.next_attempt_at <= now {
                continue;
            }
            let row = pending_row(&ev, &q, seq).await?;
            if row.env().last_error.is_none() {
                // Scheduled by `not_before`, never failed.
                continue;
            }
            due.push((seq, entry, row));
        }
        let n = due.len() as u64;
        for (seq, entry, mut row) in due {
            row.env_mut().next_attempt_at = now;
            let entry = PendingEntry { next_attempt_at: now, ..entry };
            put(&ev, seq_js(seq), bytes_js(&row.encode()), what)?;
            put(&pending, seq_js(seq), bytes_js(&encode_pending(&entry)), what)?;
        }
        finish(tx, what).await?;
        Ok(n)
    })
    .await
}
