//! Inspection, the operator's handling of dead letters (requeue, discard,
//! skip), pruning, and the inbox marks.

use std::collections::HashSet;

use outbox_core::{ActorId, ConsumerId, Envelope, EventId, Result, StoreStats, Timestamp};

use crate::codec::{Row, Status, corrupt, decode_pending, decode_row, time_bytes};
use crate::error::map;
use crate::schema::{
    DEAD, DELIVERED, DISCARDED, EVENTS, IDS, INBOX, INBOX_TIME, PENDING, SKIPPED, inbox_key,
    inbox_key_of_time_key, seq_key, seq_of, seq_of_time_seq,
};
use crate::worker::{Worker, get_row, put_indexed};

impl Worker {
    pub(crate) fn stats(&self) -> Result<StoreStats> {
        let now = self.now();
        let mut s = StoreStats::default();
        for item in self.all[PENDING].iter() {
            let (_, v) = item.map_err(|e| map("scan pending", e))?;
            let p = decode_pending(&v)?;
            s.pending += 1;
            if p.leased_at(now) {
                s.in_flight += 1;
            }
            s.oldest_pending_at = Some(s.oldest_pending_at.map_or(p.created_at, |o| o.min(p.created_at)));
        }
        s.dead = (self.all[DEAD].len() + self.all[SKIPPED].len()) as u64;
        // The `dead` index holds only the dead letters that park their
        // key, each with its ordering key as value.
        let mut parked = HashSet::new();
        for item in self.all[DEAD].iter().values() {
            parked.insert(item.map_err(|e| map("scan dead", e))?);
        }
        s.parked_keys = parked.len() as u64;
        s.delivered = self.all[DELIVERED].len() as u64;
        s.discarded = self.all[DISCARDED].len() as u64;
        Ok(s)
    }

    /// The event at the seq key `k`, named by an index.
    fn indexed_event(&self, k: &[u8]) -> Result<Envelope> {
        let b = self.all[EVENTS]
            .get(k)
            .map_err(|e| map("read event", e))?
            .ok_or_else(|| corrupt("index names a missing event"))?;
        Ok(decode_row(&b)?.env)
    }

    /// The first `limit` pending events, in commit order.
    pub(crate) fn list_pending(&self, limit: usize) -> Result<Vec<Envelope>> {
        let mut out = Vec::new();
        for item in self.all[PENDING].iter().take(limit) {
            let (k, _) = item.map_err(|e| map("scan pending", e))?;
            out.push(self.indexed_event(&k)?);
        }
        Ok(out)
    }

    /// The first `limit` dead events, skipped ones included, in commit
    /// order: the `dead` and `skipped` indexes merged.
    pub(crate) fn list_dead(&self, limit: usize) -> Result<Vec<Envelope>> {
        let mut parked = self.all[DEAD].iter().keys().peekable();
        let mut skipped = self.all[SKIPPED].iter().keys().peekable();
        let mut out = Vec::new();
        while out.len() < limit {
            let take_parked = match (parked.peek(), skipped.peek()) {
                (None, None) => break,
                (Some(Ok(a)), Some(Ok(b))) => a <= b,
                (Some(_), _) => true,
                (None, Some(_)) => false,
            };
            let next = if take_parked { parked.next() } else { skipped.next() };
            if let Some(k) = next {
                let k = k.map_err(|e| map("scan dead", e))?;
                out.push(self.indexed_event(&k)?);
            }
        }
        Ok(out)
    }

    /// The dead rows among `ids` (each once) that `pick` accepts, by seq.
    fn dead_rows(&self, ids: &[EventId], pick: impl Fn(&Row) -> bool) -> Result<Vec<(u64, Row)>> {
        let mut rows = Vec::new();
        let mut seen = HashSet::new();
        for id in ids {
            let Some(s) = self.all[IDS].get(id.to_bytes()).map_err(|e| map("read id", e))? else { continue };
            let seq = seq_of(&s)?;
            let Some(b) = self.all[EVENTS].get(&s).map_err(|e| map("read event", e))? else { continue };
            let row = decode_row(&b)?;
            if matches!(row.status, Status::Dead { .. }) && pick(&row) && seen.insert(seq) {
                rows.push((seq, row));
            }
        }
        Ok(rows)
    }

    /// Gives each of `rows` (dead, as read) its new status with `change`,
    /// in one transaction; says how many.
    fn change_dead(
        &self,
        what: &'static str,
        mut rows: Vec<(u64, Row)>,
        change: impl Fn(&mut Row),
    ) -> Result<u64> {
        let was: Vec<Status> = rows.iter().map(|(_, r)| r.status).collect();
        for (_, row) in &mut rows {
            change(row);
        }
        self.tx(what, |v| {
            for ((seq, row), was) in rows.iter().zip(&was) {
                put_indexed(v, *seq, *was, row)?;
            }
            Ok(())
        })?;
        Ok(rows.len() as u64)
    }

    /// Moves the dead events among `ids` (skipped ones included) back to
    /// pending, due now, attempts reset.
    pub(crate) fn requeue_dead(&self, ids: &[EventId]) -> Result<u64> {
        let now = self.now();
        self.change_dead("requeue", self.dead_rows(ids, |_| true)?, |row| {
            row.status = Status::Pending;
            row.env.attempts = 0;
            row.env.next_attempt_at = now;
            row.claimed_by = None;
            row.lease_until = None;
        })
    }

    /// Discards the dead events among `ids` (skipped ones included), now.
    pub(crate) fn discard_dead(&self, ids: &[EventId]) -> Result<u64> {
        let now = self.now();
        self.change_dead("discard", self.dead_rows(ids, |_| true)?, |row| {
            row.status = Status::Discarded(now);
            row.lease_until = None;
        })
    }

    /// Skips the dead events among `ids` that are not skipped yet.
    pub(crate) fn skip_dead(&self, ids: &[EventId]) -> Result<u64> {
        let rows = self.dead_rows(ids, |row| row.status == Status::DEAD)?;
        self.change_dead("skip", rows, |row| row.status = Status::Dead { skipped: true })
    }

    /// Deletes up to `limit` events delivered or discarded before `before`,
    /// oldest first: the `delivered` and `discarded` indexes merged.
    pub(crate) fn prune_delivered(&self, before: Timestamp, limit: usize) -> Result<u64> {
        let mut doomed: Vec<(sled::IVec, usize, u64)> = Vec::new();
        for index in [DELIVERED, DISCARDED] {
            for item in self.all[index].range(..time_bytes(before).to_vec()).take(limit) {
                let (k, _) = item.map_err(|e| map("scan settled", e))?;
                let seq = seq_of_time_seq(&k)?;
                doomed.push((k, index, seq));
            }
        }
        doomed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        doomed.truncate(limit);
        self.tx("prune delivered", |v| {
            for (k, index, seq) in &doomed {
                if let Some(row) = get_row(&v[EVENTS], *seq)? {
                    v[IDS].remove(&row.env.id.to_bytes())?;
                }
                v[EVENTS].remove(&seq_key(*seq))?;
                v[*index].remove(k)?;
            }
            Ok(())
        })?;
        Ok(doomed.len() as u64)
    }

    pub(crate) fn is_processed(&self, consumer: &ConsumerId, origin: &ActorId, id: EventId) -> Result<bool> {
        self.all[INBOX].contains_key(inbox_key(consumer, origin, id)).map_err(|e| map("read inbox", e))
    }

    pub(crate) fn prune_inbox(&self, before: Timestamp, limit: usize) -> Result<u64> {
        let mut doomed = Vec::new();
        for item in self.all[INBOX_TIME].range(..time_bytes(before).to_vec()).take(limit) {
            let (k, _) = item.map_err(|e| map("scan inbox", e))?;
            doomed.push(k);
        }
        self.tx("prune inbox", |v| {
            for k in &doomed {
                v[INBOX].remove(inbox_key_of_time_key(k))?;
                v[INBOX_TIME].remove(k)?;
            }
            Ok(())
        })?;
        Ok(doomed.len() as u64)
    }
}
