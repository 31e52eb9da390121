//! Inspection, the operator's handling of dead letters (requeue, discard,
//! skip), pruning, and the inbox marks.

use std::collections::HashSet;

use outbox_core::{
    ActorId, ConsumerId, DeliveryInfo, Envelope, Epoch, EventId, Result, StoreStats, Timestamp,
};

use crate::codec::{Row, Status, decode_row, quarantined_envelope, salvage, time_bytes};
use crate::error::map;
use crate::quarantine::Found;
use crate::schema::{
    DEAD, DELIVERED, DISCARDED, EVENTS, IDS, INBOX, INBOX_TIME, PENDING, QUARANTINE, SKIPPED, inbox_key,
    inbox_key_of_time_key, seq_key, seq_of, seq_of_time_seq,
};
use crate::worker::{Worker, index_key, put_indexed};

/// The dead events an operator's call names.
#[derive(Default)]
struct DeadRows {
    /// Rows that decode, by seq.
    rows: Vec<(u64, Row)>,
    /// Quarantined rows: seq, and whether skipped.
    quarantined: Vec<(u64, bool)>,
}

impl Worker {
    pub(crate) fn stats(&self) -> Result<StoreStats> {
        let now = self.now();
        let mut s = self.healing(|w| {
            let mut s = StoreStats::default();
            for item in w.all[PENDING].iter() {
                let (k, v) = item.map_err(|e| map("scan pending", e))?;
                let p = Self::pending_entry(seq_of(&k)?, &v)?;
                s.pending += 1;
                if p.leased_at(now) {
                    s.in_flight += 1;
                }
                s.oldest_pending_at = Some(s.oldest_pending_at.map_or(p.created_at, |o| o.min(p.created_at)));
            }
            Ok(s)
        })?;
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

    /// The first `limit` pending events, in commit order.
    pub(crate) fn list_pending(&self, limit: usize) -> Result<Vec<Envelope>> {
        self.healing(|w| {
            let mut out = Vec::new();
            for item in w.all[PENDING].iter().take(limit) {
                let (k, _) = item.map_err(|e| map("scan pending", e))?;
                out.push(w.pending_row(seq_of(&k)?)?.env);
            }
            Ok(out)
        })
    }

    /// The first `limit` dead events, skipped ones included, in commit
    /// order: the `dead` and `skipped` indexes merged. A quarantined row
    /// is listed as [`quarantined_envelope`] says.
    pub(crate) fn list_dead(&self, limit: usize) -> Result<Vec<Envelope>> {
        self.healing(|w| {
            let mut parked = w.all[DEAD].iter().keys().peekable();
            let mut skipped = w.all[SKIPPED].iter().keys().peekable();
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
                    out.push(match w.found(seq_of(&k)?)? {
                        Found::Row(row) => row.env,
                        Found::Quarantined(q, raw) => quarantined_envelope(&q, raw.as_deref()),
                    });
                }
            }
            Ok(out)
        })
    }

    /// The lease, claiming epoch and skip flag of the event `id` (of a
    /// quarantined one: whether its index entry is a skipped one).
    pub(crate) fn delivery_info(&self, id: EventId) -> Result<Option<DeliveryInfo>> {
        self.healing(|w| {
            let Some(seq) = w.seq_of_id(id)? else { return Ok(None) };
            Ok(Some(match w.found(seq)? {
                Found::Row(row) => DeliveryInfo::new(
                    row.lease_until,
                    row.claimed_by.map(Epoch),
                    matches!(row.status, Status::Dead { skipped: true }),
                ),
                Found::Quarantined(..) => {
                    let skipped =
                        w.all[SKIPPED].contains_key(seq_key(seq)).map_err(|e| map("read skipped", e))?;
                    DeliveryInfo::new(None, None, skipped)
                }
            }))
        })
    }

    /// The first `limit` events of the settled index `tree` ([`DELIVERED`]
    /// or [`DISCARDED`], keyed by settle time), in commit order. A
    /// quarantined row is listed as [`quarantined_envelope`] says.
    pub(crate) fn list_settled(&self, tree: usize, limit: usize) -> Result<Vec<Envelope>> {
        self.healing(|w| {
            let mut seqs = Vec::new();
            for k in w.all[tree].iter().keys() {
                seqs.push(seq_of_time_seq(&k.map_err(|e| map("scan settled", e))?)?);
            }
            seqs.sort_unstable();
            let mut out = Vec::new();
            for seq in seqs.into_iter().take(limit) {
                out.push(match w.found(seq)? {
                    Found::Row(row) => row.env,
                    Found::Quarantined(q, raw) => quarantined_envelope(&q, raw.as_deref()),
                });
            }
            Ok(out)
        })
    }

    /// The dead events among `ids` (each once), by seq: the rows that
    /// `pick` accepts, and the quarantined ones with whether they are
    /// skipped.
    fn dead_rows(&self, ids: &[EventId], pick: impl Fn(&Row) -> bool) -> Result<DeadRows> {
        self.healing(|w| {
            let mut d = DeadRows::default();
            let mut seen = HashSet::new();
            for id in ids {
                let Some(seq) = w.seq_of_id(*id)? else { continue };
                if !seen.insert(seq) {
                    continue;
                }
                if w.quarantined(seq)?.is_some() {
                    let k = seq_key(seq);
                    if w.all[DEAD].contains_key(k).map_err(|e| map("read dead", e))? {
                        d.quarantined.push((seq, false));
                    } else if w.all[SKIPPED].contains_key(k).map_err(|e| map("read dead", e))? {
                        d.quarantined.push((seq, true));
                    }
                    continue;
                }
                let Some(row) = w.row_by_id(seq)? else { continue };
                if matches!(row.status, Status::Dead { .. }) && pick(&row) {
                    d.rows.push((seq, row));
                }
            }
            Ok(d)
        })
    }

    /// Gives each of `rows` (dead, as read) its new status with `change`,
    /// and moves each of `quarantined` (seq, whether skipped) from its
    /// dead index entry to the index of `to` (skipped: a `skipped` entry
    /// of its key; discarded: a `discarded` entry), in one transaction;
    /// says how many.
    fn change_dead(
        &self,
        what: &'static str,
        mut rows: Vec<(u64, Row)>,
        change: impl Fn(&mut Row),
        quarantined: &[(u64, bool)],
        to: Status,
    ) -> Result<u64> {
        let was: Vec<Status> = rows.iter().map(|(_, r)| r.status).collect();
        for (_, row) in &mut rows {
            change(row);
        }
        let moved: Vec<(u64, bool, Vec<u8>)> = quarantined
            .iter()
            .map(|&(seq, skipped)| {
                let from = if skipped { SKIPPED } else { DEAD };
                let value = self.all[from].get(seq_key(seq)).map_err(|e| map("read dead", e))?;
                Ok((seq, skipped, value.map(|v| v.to_vec()).unwrap_or_default()))
            })
            .collect::<Result<_>>()?;
        self.tx(what, |v| {
            for ((seq, row), was) in rows.iter().zip(&was) {
                put_indexed(v, *seq, *was, row)?;
            }
            for (seq, skipped, key) in &moved {
                let k = seq_key(*seq);
                v[if *skipped { SKIPPED } else { DEAD }].remove(&k)?;
                let (tree, index_key) = index_key(*seq, to);
                let value: &[u8] = if tree == SKIPPED { key } else { &[] };
                v[tree].insert(index_key, value)?;
            }
            Ok(())
        })?;
        Ok((rows.len() + moved.len()) as u64)
    }

    /// Moves the dead events among `ids` (skipped ones included) back to
    /// pending, due now, attempts reset. A quarantined row is not
    /// requeued: there is no event to deliver.
    pub(crate) fn requeue_dead(&self, ids: &[EventId]) -> Result<u64> {
        let now = self.now();
        let d = self.dead_rows(ids, |_| true)?;
        self.change_dead(
            "requeue",
            d.rows,
            |row| {
                row.status = Status::Pending;
                row.env.attempts = 0;
                row.env.next_attempt_at = now;
                row.claimed_by = None;
                row.lease_until = None;
            },
            &[],
            Status::Pending,
        )
    }

    /// Discards the dead events among `ids` (skipped and quarantined ones
    /// included), now.
    pub(crate) fn discard_dead(&self, ids: &[EventId]) -> Result<u64> {
        let now = self.now();
        let d = self.dead_rows(ids, |_| true)?;
        let discarded = Status::Discarded(now);
        self.change_dead(
            "discard",
            d.rows,
            |row| {
                row.status = discarded;
                row.lease_until = None;
            },
            &d.quarantined,
            discarded,
        )
    }

    /// Skips the dead events among `ids` (quarantined ones included) that
    /// are not skipped yet.
    pub(crate) fn skip_dead(&self, ids: &[EventId]) -> Result<u64> {
        let d = self.dead_rows(ids, |row| row.status == Status::DEAD)?;
        let parking: Vec<(u64, bool)> = d.quarantined.into_iter().filter(|(_, skipped)| !skipped).collect();
        let skipped = Status::Dead { skipped: true };
        self.change_dead("skip", d.rows, |row| row.status = skipped, &parking, skipped)
    }

    /// Deletes up to `limit` events delivered or discarded before `before`,
    /// oldest first: the `delivered` and `discarded` indexes merged. A
    /// row that does not decode (a quarantined one, or one that went bad
    /// once settled) goes too, with its id index entry and quarantine
    /// record.
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
        // Read outside, write inside: every write runs on this thread.
        let mut ids = Vec::with_capacity(doomed.len());
        for (_, _, seq) in &doomed {
            let id = match self.quarantined(*seq)? {
                Some(q) => Some(q.id),
                None => match self.all[EVENTS].get(seq_key(*seq)).map_err(|e| map("read event", e))? {
                    Some(b) => decode_row(&b).ok().map(|row| row.env.id).or(salvage(&b).id),
                    None => None,
                },
            };
            ids.push(id);
        }
        self.tx("prune delivered", |v| {
            for ((k, index, seq), id) in doomed.iter().zip(&ids) {
                let sk = seq_key(*seq);
                if let Some(id) = id
                    && v[IDS].get(id.to_bytes())?.as_deref() == Some(&sk[..])
                {
                    v[IDS].remove(&id.to_bytes())?;
                }
                v[EVENTS].remove(&sk)?;
                v[QUARANTINE].remove(&sk)?;
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
