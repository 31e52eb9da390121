//! The delivery side's writes: claiming, settling (ack, release, retry,
//! dead-letter), making backed-off events due, and the operator's
//! handling of dead letters (requeue, discard, skip), each one
//! transaction (fenced, for the leader's writes).

use std::collections::HashSet;

use outbox_core::rules::{ClaimEntry, ClaimPlan, check_claim_holder, check_fence};
use outbox_core::{Attempt, ClaimRequest, Envelope, Epoch, EventId, LeaderGrant, Result, Timestamp};
use rusqlite::{Connection, OptionalExtension, params};

use crate::error::{corrupt, map};
use crate::leader::current_epoch;
use crate::rows::{ENVELOPE_COLS, envelope_at, json_list};
use crate::worker::Worker;

/// The seq of a pending event `grant` may settle; `None` if the id is
/// unknown, delivered or dead; `Fenced` if it is held by another claim.
fn settleable(c: &Connection, grant: &LeaderGrant, id: EventId) -> Result<Option<i64>> {
    let row: Option<(i64, String, Option<i64>)> = c
        .prepare_cached("SELECT seq, status, claimed_epoch FROM outbox_events WHERE id = ?1")
        .and_then(|mut st| {
            st.query_row([&id.to_bytes()[..]], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional()
        })
        .map_err(|e| map("read event", e))?;
    match row {
        Some((seq, status, claimed)) if status == "pending" => {
            check_claim_holder(grant, claimed.map(|e| Epoch(e as u64)))?;
            Ok(Some(seq))
        }
        _ => Ok(None),
    }
}

/// The seqs of the events `req` takes, in commit order: the scan over the
/// unsettled rows (pending and dead, on their partial index) feeds each to
/// the core's [`ClaimPlan`]; a skipped dead event is
/// [`ClaimEntry::Skipped`].
fn plan_claim(c: &Connection, req: &ClaimRequest, now: i64) -> Result<Vec<i64>> {
    let mut plan = ClaimPlan::<String>::new(req, Timestamp::from_millis(now));
    let mut seqs = Vec::new();
    if plan.is_full() {
        return Ok(seqs);
    }
    let mut st = c
        .prepare_cached(
            "SELECT seq, key, status, lease_until, next_attempt_at, skipped FROM outbox_events
             WHERE status IN ('pending', 'dead') ORDER BY seq",
        )
        .map_err(|e| map("prepare claim scan", e))?;
    let mut rows = st.query([]).map_err(|e| map("claim scan", e))?;
    while let Some(r) = rows.next().map_err(|e| map("claim scan", e))? {
        let seq: i64 = r.get(0).map_err(|e| map("claim scan", e))?;
        let key: String = r.get(1).map_err(|e| map("claim scan", e))?;
        let status: String = r.get(2).map_err(|e| map("claim scan", e))?;
        let entry = match status.as_str() {
            "pending" => ClaimEntry::Pending {
                lease_until: r
                    .get::<_, Option<i64>>(3)
                    .map_err(|e| map("claim scan", e))?
                    .map(Timestamp::from_millis),
                next_attempt_at: Timestamp::from_millis(r.get(4).map_err(|e| map("claim scan", e))?),
            },
            "dead" => match r.get::<_, i64>(5).map_err(|e| map("claim scan", e))? {
                0 => ClaimEntry::Dead,
                _ => ClaimEntry::Skipped,
            },
            other => return Err(corrupt(format!("unknown event status {other:?}"))),
        };
        if plan.offer(&key, seq as u64, entry) {
            seqs.push(seq);
            if plan.is_full() {
                break;
            }
        }
    }
    Ok(seqs)
}

impl Worker {
    /// Claims the due events `req` takes under `grant`, leasing them.
    pub(crate) fn claim(&mut self, grant: &LeaderGrant, req: ClaimRequest) -> Result<Vec<Envelope>> {
        let now = self.now();
        let tx = self.write_tx()?;
        check_fence(grant, current_epoch(&tx)?)?;
        let seqs = plan_claim(&tx, &req, now)?;
        let lease_until = Timestamp::from_millis(now).saturating_add(req.lease).as_millis();
        let mut out: Vec<(i64, Envelope)> = Vec::with_capacity(seqs.len());
        if !seqs.is_empty() {
            // One statement for the whole batch: the seqs go in as a JSON array.
            let mut st = tx
                .prepare_cached(&format!(
                    "UPDATE outbox_events SET attempts = attempts + 1, lease_until = ?2, claimed_epoch = ?3
                     WHERE seq IN (SELECT value FROM json_each(?1)) RETURNING seq, {ENVELOPE_COLS}"
                ))
                .map_err(|e| map("prepare claim", e))?;
            let rows = st
                .query_map(params![json_list(seqs.iter()), lease_until, grant.epoch.0 as i64], |r| {
                    Ok((r.get::<_, i64>(0)?, envelope_at(r, 1)?))
                })
                .map_err(|e| map("claim", e))?;
            for row in rows {
                let (seq, env) = row.map_err(|e| map("claim", e))?;
                out.push((seq, env?));
            }
        }
        tx.commit().map_err(|e| map("commit claim", e))?;
        // RETURNING gives no order: put the batch back in commit order.
        out.sort_unstable_by_key(|(seq, _)| *seq);
        Ok(out.into_iter().map(|(_, e)| e).collect())
    }

    /// Marks `ids` delivered; all or nothing.
    pub(crate) fn ack(&mut self, grant: &LeaderGrant, ids: &[EventId]) -> Result<()> {
        let now = self.now();
        let tx = self.write_tx()?;
        check_fence(grant, current_epoch(&tx)?)?;
        if !ids.is_empty() {
            // One statement for the whole batch: the ids go in as a JSON
            // array of hex strings.
            let mut acked = HashSet::with_capacity(ids.len());
            {
                let mut st = tx
                    .prepare_cached(
                        "UPDATE outbox_events SET status = 'delivered', delivered_at = ?3, lease_until = NULL
                         WHERE id IN (SELECT unhex(value) FROM json_each(?1))
                           AND status = 'pending' AND claimed_epoch = ?2
                         RETURNING id",
                    )
                    .map_err(|e| map("prepare ack", e))?;
                let hex = json_list(ids.iter().map(|id| format!("\"{}\"", id.as_uuid().simple())));
                let rows = st
                    .query_map(params![hex, grant.epoch.0 as i64, now], |r| r.get::<_, Vec<u8>>(0))
                    .map_err(|e| map("ack", e))?;
                for row in rows {
                    acked.insert(row.map_err(|e| map("ack", e))?);
                }
            }
            // Not acked: delivered, dead or unknown (a no-op), or held by
            // another claim (fenced: the whole ack rolls back).
            for id in ids {
                if !acked.contains(&id.to_bytes()[..]) {
                    settleable(&tx, grant, *id)?;
                }
            }
        }
        tx.commit().map_err(|e| map("commit ack", e))
    }

    /// Gives the leases on `ids` back without counting the attempt.
    pub(crate) fn release_events(&mut self, grant: &LeaderGrant, ids: &[EventId]) -> Result<()> {
        let tx = self.write_tx()?;
        check_fence(grant, current_epoch(&tx)?)?;
        for id in ids {
            if let Some(seq) = settleable(&tx, grant, *id)? {
                tx.prepare_cached(
                    "UPDATE outbox_events SET attempts = max(attempts - 1, 0), lease_until = NULL
                     WHERE seq = ?1 AND lease_until IS NOT NULL",
                )
                .and_then(|mut st| st.execute([seq]))
                .map_err(|e| map("release", e))?;
            }
        }
        tx.commit().map_err(|e| map("commit release", e))
    }

    /// Schedules event `id` for another attempt at `at`; an
    /// [`Attempt::Uncounted`] takes back the attempt its claim counted (if
    /// it is leased, as [`Worker::release_events`] does).
    pub(crate) fn retry_later(
        &mut self,
        grant: &LeaderGrant,
        id: EventId,
        at: Timestamp,
        error: &str,
        attempt: Attempt,
    ) -> Result<()> {
        let uncounted = attempt == Attempt::Uncounted;
        self.settle(grant, id, |c, seq| {
            c.prepare_cached(
                "UPDATE outbox_events SET next_attempt_at = ?3, last_error = ?2,
                     attempts = CASE WHEN ?4 AND lease_until IS NOT NULL THEN max(attempts - 1, 0)
                                     ELSE attempts END,
                     lease_until = NULL
                 WHERE seq = ?1",
            )?
            .execute(params![seq, error, at.as_millis(), uncounted])
        })
    }

    /// Dead-letters event `id`.
    pub(crate) fn dead_letter(&mut self, grant: &LeaderGrant, id: EventId, error: &str) -> Result<()> {
        self.settle(grant, id, |c, seq| {
            c.prepare_cached(
                "UPDATE outbox_events SET status = 'dead', skipped = 0, last_error = ?2, lease_until = NULL
                 WHERE seq = ?1",
            )?
            .execute(params![seq, error])
        })
    }

    /// Runs `write` on the row (`seq`) of event `id` if `grant` may settle
    /// it.
    fn settle(
        &mut self,
        grant: &LeaderGrant,
        id: EventId,
        write: impl FnOnce(&Connection, i64) -> rusqlite::Result<usize>,
    ) -> Result<()> {
        let tx = self.write_tx()?;
        check_fence(grant, current_epoch(&tx)?)?;
        if let Some(seq) = settleable(&tx, grant, id)? {
            write(&tx, seq).map_err(|e| map("settle", e))?;
        }
        tx.commit().map_err(|e| map("commit settle", e))
    }

    /// Makes every pending event that failed and waits for a later retry
    /// due now; says how many. Leases are left alone.
    pub(crate) fn retry_now(&mut self, grant: &LeaderGrant) -> Result<u64> {
        let now = self.now();
        let tx = self.write_tx()?;
        check_fence(grant, current_epoch(&tx)?)?;
        // `status IN (...)` is the partial index's own term: the scan stays
        // on the unsettled rows.
        let n = tx
            .prepare_cached(
                "UPDATE outbox_events SET next_attempt_at = ?1
                 WHERE status IN ('pending', 'dead') AND status = 'pending'
                   AND last_error IS NOT NULL AND next_attempt_at > ?1",
            )
            .and_then(|mut st| st.execute([now]))
            .map_err(|e| map("retry now", e))?;
        tx.commit().map_err(|e| map("commit retry now", e))?;
        Ok(n as u64)
    }

    /// Moves the dead events among `ids` (skipped ones included) back to
    /// pending, due now; says how many moved.
    pub(crate) fn requeue_dead(&mut self, ids: &[EventId]) -> Result<u64> {
        self.each_dead(
            ids,
            "requeue",
            "UPDATE outbox_events SET status = 'pending', skipped = 0, attempts = 0, next_attempt_at = ?2,
             claimed_epoch = NULL, lease_until = NULL WHERE id = ?1 AND status = 'dead'",
            true,
        )
    }

    /// Discards the dead events among `ids` (skipped ones included): status
    /// `discarded`, settled now (`delivered_at`); says how many.
    pub(crate) fn discard_dead(&mut self, ids: &[EventId]) -> Result<u64> {
        self.each_dead(
            ids,
            "discard",
            "UPDATE outbox_events SET status = 'discarded', skipped = 0, delivered_at = ?2,
             lease_until = NULL WHERE id = ?1 AND status = 'dead'",
            true,
        )
    }

    /// Marks the dead events among `ids` that are not skipped yet skipped;
    /// says how many.
    pub(crate) fn skip_dead(&mut self, ids: &[EventId]) -> Result<u64> {
        self.each_dead(
            ids,
            "skip",
            "UPDATE outbox_events SET skipped = 1 WHERE id = ?1 AND status = 'dead' AND skipped = 0",
            false,
        )
    }

    /// Runs `sql` (`?1` an id, and `?2` now if `with_now`) once per id of
    /// `ids` in one transaction; says how many rows it changed.
    fn each_dead(&mut self, ids: &[EventId], what: &'static str, sql: &str, with_now: bool) -> Result<u64> {
        let now = self.now();
        let tx = self.write_tx()?;
        let mut changed = 0;
        {
            let mut st = tx.prepare_cached(sql).map_err(|e| map(what, e))?;
            for id in ids {
                let n = if with_now {
                    st.execute(params![&id.to_bytes()[..], now])
                } else {
                    st.execute([&id.to_bytes()[..]])
                };
                changed += n.map_err(|e| map(what, e))? as u64;
            }
        }
        tx.commit().map_err(|e| map(what, e))?;
        Ok(changed)
    }
}
