//! Inspection, requeueing and pruning on the worker, and the inbox marks.

use std::collections::HashSet;

use outbox_core::{ActorId, ConsumerId, Envelope, EventId, Result, StoreStats, Timestamp};

use crate::codec::{PendingEntry, Status, corrupt, decode_pending, decode_row, encode_pending, time_bytes};
use crate::error::map;
use crate::schema::{
    DEAD, DELIVERED, EVENTS, IDS, INBOX, INBOX_TIME, PENDING, inbox_key, inbox_key_of_time_key, seq_key,
    seq_of, seq_of_time_seq,
};
use crate::worker::{Worker, get_row, put_row};

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
        s.dead = self.all[DEAD].len() as u64;
        s.delivered = self.all[DELIVERED].len() as u64;
        Ok(s)
    }

    /// The first `limit` events of the seq-keyed `index` (pending or dead).
    pub(crate) fn list(&self, index: usize, limit: usize) -> Result<Vec<Envelope>> {
        let mut out = Vec::new();
        for item in self.all[index].iter().take(limit) {
            let (k, _) = item.map_err(|e| map("scan index", e))?;
            let b = self.all[EVENTS]
                .get(&k)
                .map_err(|e| map("read event", e))?
                .ok_or_else(|| corrupt("index names a missing event"))?;
            out.push(decode_row(&b)?.env);
        }
        Ok(out)
    }

    pub(crate) fn requeue_dead(&self, ids: &[EventId]) -> Result<u64> {
        let now = self.now();
        let mut rows = Vec::new();
        let mut seen = HashSet::new();
        for id in ids {
            let Some(s) = self.all[IDS].get(id.to_bytes()).map_err(|e| map("read id", e))? else { continue };
            let seq = seq_of(&s)?;
            let Some(b) = self.all[EVENTS].get(&s).map_err(|e| map("read event", e))? else { continue };
            let mut row = decode_row(&b)?;
            if row.status != Status::Dead || !seen.insert(seq) {
                continue;
            }
            row.status = Status::Pending;
            row.env.attempts = 0;
            row.env.next_attempt_at = now;
            row.claimed_by = None;
            row.lease_until = None;
            rows.push((seq, row));
        }
        self.tx("requeue", |v| {
            for (seq, row) in &rows {
                put_row(v, *seq, row)?;
                v[DEAD].remove(&seq_key(*seq))?;
                v[PENDING].insert(&seq_key(*seq), encode_pending(&PendingEntry::of(row)))?;
            }
            Ok(())
        })?;
        Ok(rows.len() as u64)
    }

    pub(crate) fn prune_delivered(&self, before: Timestamp, limit: usize) -> Result<u64> {
        let mut doomed: Vec<(sled::IVec, u64)> = Vec::new();
        for item in self.all[DELIVERED].range(..time_bytes(before).to_vec()).take(limit) {
            let (k, _) = item.map_err(|e| map("scan delivered", e))?;
            let seq = seq_of_time_seq(&k)?;
            doomed.push((k, seq));
        }
        self.tx("prune delivered", |v| {
            for (k, seq) in &doomed {
                if let Some(row) = get_row(&v[EVENTS], *seq)? {
                    v[IDS].remove(&row.env.id.to_bytes())?;
                }
                v[EVENTS].remove(&seq_key(*seq))?;
                v[DELIVERED].remove(k)?;
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
