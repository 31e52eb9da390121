//! Leadership and delivery on the worker: grants and their epochs, the
//! claim (planned by [`rules::ClaimPlan`] over the pending index),
//! settling claimed events and making backed-off events due, every step
//! fenced by the grant's epoch.

use std::time::Duration;

use outbox_core::rules::{self, ClaimEntry, ClaimPlan};
use outbox_core::{
    Attempt, ClaimRequest, Envelope, Epoch, EventId, LeaderGrant, OrderingKey, Result, Timestamp,
};

use crate::codec::{PendingEntry, Row, Status, encode_pending, encode_row};
use crate::error::map;
use crate::quarantine::{Fault, Healing};
use crate::schema::{DEAD, EPOCH_KEY, EVENTS, HELD_KEY, IDS, META, PENDING, seq_key, seq_of};
use crate::worker::{Worker, put_indexed};

/// One claimed event: its seq key, its new row and pending entry, and the
/// envelope handed out.
type Claimed = ([u8; 8], Vec<u8>, Vec<u8>, Envelope);

impl Worker {
    /// Grants leadership to `holder` unless another holder's grant is
    /// unexpired. The new epoch is persisted (and marked held until
    /// released) before the grant is returned.
    pub(crate) fn acquire(&mut self, holder: &str, ttl: Duration) -> Result<Option<LeaderGrant>> {
        let now = self.now();
        if let Some(cur) = &self.leader
            && cur.holder != holder
            && cur.expires_at > now
        {
            return Ok(None);
        }
        let epoch = self.last_epoch + 1;
        self.all[META].insert(EPOCH_KEY, &epoch.to_be_bytes()).map_err(|e| map("write epoch", e))?;
        self.all[META].insert(HELD_KEY, &epoch.to_be_bytes()).map_err(|e| map("write held epoch", e))?;
        self.last_epoch = epoch;
        let grant = LeaderGrant {
            holder: holder.to_owned(),
            epoch: Epoch(epoch),
            expires_at: now.saturating_add(ttl),
        };
        self.leader = Some(grant.clone());
        Ok(Some(grant))
    }

    /// Extends the current grant by `ttl` from now.
    pub(crate) fn renew(&mut self, grant: LeaderGrant, ttl: Duration) -> Result<LeaderGrant> {
        self.check_fence(&grant)?;
        let renewed = LeaderGrant { expires_at: self.now().saturating_add(ttl), ..grant };
        self.leader = Some(renewed.clone());
        Ok(renewed)
    }

    /// Ends the grant of `epoch` if it is the current one.
    pub(crate) fn release_leadership(&mut self, epoch: Epoch) -> Result<()> {
        if self.leader.as_ref().is_some_and(|g| g.epoch == epoch) {
            self.leader = None;
            self.all[META].remove(HELD_KEY).map_err(|e| map("clear held epoch", e))?;
        }
        Ok(())
    }

    /// Claims what [`ClaimPlan`] takes: the dead index is reported first
    /// (when parking), then the pending index is offered in commit order.
    /// A row that does not read is quarantined on the way
    /// ([`Worker::healing`]) and the claim planned again.
    pub(crate) fn claim(&mut self, grant: &LeaderGrant, request: ClaimRequest) -> Result<Vec<Envelope>> {
        self.check_fence(grant)?;
        if request.limit == 0 {
            return Ok(Vec::new());
        }
        let now = self.now();
        let lease_until = now.saturating_add(request.lease);
        let rows = self.healing(|w| w.plan_claim(grant, &request, now, lease_until))?;
        // Read outside, write inside: every write runs on this thread.
        self.tx("claim", |v| {
            for (k, row, entry, _) in &rows {
                v[EVENTS].insert(k, row.as_slice())?;
                v[PENDING].insert(k, entry.as_slice())?;
            }
            Ok(())
        })?;
        Ok(rows.into_iter().map(|(_, _, _, env)| env).collect())
    }

    /// The claim's reads: what it takes.
    fn plan_claim(
        &self,
        grant: &LeaderGrant,
        request: &ClaimRequest,
        now: Timestamp,
        lease_until: Timestamp,
    ) -> Healing<Vec<Claimed>> {
        let mut plan: ClaimPlan<OrderingKey> = ClaimPlan::new(request, now);
        // Dead events hold their key only when parking, so the dead index
        // is not read otherwise. It holds only the dead letters that park
        // their key: skipped ones are indexed apart.
        if request.park_dead_keys {
            for item in self.all[DEAD].iter() {
                let (k, v) = item.map_err(|e| map("scan dead", e))?;
                let seq = seq_of(&k)?;
                let key = String::from_utf8(v.to_vec()).ok().and_then(|s| OrderingKey::new(s).ok());
                plan.dead(&key.ok_or(Fault::Bad(seq))?, seq);
            }
        }
        let mut picked: Vec<(u64, PendingEntry)> = Vec::new();
        for item in self.all[PENDING].iter() {
            if plan.is_full() {
                break;
            }
            let (k, v) = item.map_err(|e| map("scan pending", e))?;
            let seq = seq_of(&k)?;
            let entry = Self::pending_entry(seq, &v)?;
            let offered = ClaimEntry::Pending {
                lease_until: entry.lease_until,
                next_attempt_at: entry.next_attempt_at,
            };
            if plan.offer(&entry.key, seq, offered) {
                picked.push((seq, entry));
            }
        }
        let mut rows = Vec::with_capacity(picked.len());
        for (seq, entry) in picked {
            let mut row = self.pending_row(seq)?;
            if row.status != Status::Pending || row.env.key != entry.key {
                // The pending entry disagrees with its row.
                return Err(Fault::Bad(seq));
            }
            row.env.attempts = row.env.attempts.saturating_add(1);
            row.claimed_by = Some(grant.epoch.0);
            row.lease_until = Some(lease_until);
            let entry = PendingEntry { lease_until: Some(lease_until), ..entry };
            rows.push((seq_key(seq), encode_row(&row), encode_pending(&entry), row.env));
        }
        Ok(rows)
    }

    /// The rows `grant` may settle, by seq; `Fenced` if `grant` is not
    /// current or any id is held by another claim. Delivered, dead and
    /// unknown ids are skipped.
    fn settleable(&self, grant: &LeaderGrant, ids: &[EventId]) -> Result<Vec<(u64, Row)>> {
        self.check_fence(grant)?;
        self.healing(|w| {
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let Some(s) = w.all[IDS].get(id.to_bytes()).map_err(|e| map("read id", e))? else { continue };
                let seq = seq_of(&s)?;
                let Some(row) = w.row_by_id(seq)? else { continue };
                if row.status != Status::Pending {
                    continue;
                }
                rules::check_claim_holder(grant, row.claimed_by.map(Epoch))?;
                out.push((seq, row));
            }
            Ok(out)
        })
    }

    /// Writes back settled rows (pending ones, as [`Worker::settleable`]
    /// read them): pending ones update the claim index, others leave it
    /// for the index of their new status.
    pub(crate) fn write_settled(&self, what: &'static str, rows: &[(u64, Row)]) -> Result<()> {
        self.tx(what, |v| {
            for (seq, row) in rows {
                put_indexed(v, *seq, Status::Pending, row)?;
            }
            Ok(())
        })
    }

    pub(crate) fn ack(&self, grant: &LeaderGrant, ids: &[EventId]) -> Result<()> {
        let now = self.now();
        let mut rows = self.settleable(grant, ids)?;
        for (_, row) in &mut rows {
            row.status = Status::Delivered(now);
            row.lease_until = None;
        }
        self.write_settled("ack", &rows)
    }

    pub(crate) fn release(&self, grant: &LeaderGrant, ids: &[EventId]) -> Result<()> {
        let mut rows = self.settleable(grant, ids)?;
        rows.retain(|(_, r)| r.lease_until.is_some());
        for (_, row) in &mut rows {
            row.env.attempts = row.env.attempts.saturating_sub(1);
            row.lease_until = None;
        }
        self.write_settled("release", &rows)
    }

    /// Puts event `id` back, due at `at`; an [`Attempt::Uncounted`] takes
    /// back the attempt its claim counted (if it is leased, as
    /// [`Worker::release`] does).
    pub(crate) fn retry_later(
        &self,
        grant: &LeaderGrant,
        id: EventId,
        at: Timestamp,
        error: &str,
        attempt: Attempt,
    ) -> Result<()> {
        let mut rows = self.settleable(grant, &[id])?;
        for (_, row) in &mut rows {
            if attempt == Attempt::Uncounted && row.lease_until.is_some() {
                row.env.attempts = row.env.attempts.saturating_sub(1);
            }
            row.env.next_attempt_at = at;
            row.env.last_error = Some(error.to_owned());
            row.lease_until = None;
        }
        self.write_settled("retry later", &rows)
    }

    pub(crate) fn dead_letter(&self, grant: &LeaderGrant, id: EventId, error: &str) -> Result<()> {
        let mut rows = self.settleable(grant, &[id])?;
        for (_, row) in &mut rows {
            row.status = Status::DEAD;
            row.env.last_error = Some(error.to_owned());
            row.lease_until = None;
        }
        self.write_settled("dead letter", &rows)
    }

    /// Makes every pending event that failed and waits for a later retry
    /// due now; says how many. Leases are left alone.
    pub(crate) fn retry_now(&self, grant: &LeaderGrant) -> Result<u64> {
        self.check_fence(grant)?;
        let now = self.now();
        let rows = self.healing(|w| {
            let mut rows = Vec::new();
            for item in w.all[PENDING].iter() {
                let (k, v) = item.map_err(|e| map("scan pending", e))?;
                let seq = seq_of(&k)?;
                if Self::pending_entry(seq, &v)?.next_attempt_at <= now {
                    continue;
                }
                // Due later: backed off after a failure, or committed with
                // `not_before` (no error: left alone).
                let mut row = w.pending_row(seq)?;
                if row.env.last_error.is_some() {
                    row.env.next_attempt_at = now;
                    rows.push((seq, row));
                }
            }
            Ok(rows)
        })?;
        self.write_settled("retry now", &rows)?;
        Ok(rows.len() as u64)
    }
}
