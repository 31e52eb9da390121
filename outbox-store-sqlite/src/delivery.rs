//! The delivery side's writes: claiming, settling (ack, release, retry,
//! dead-letter) and requeueing, each one fenced transaction.

use std::collections::HashSet;

use outbox_core::rules::{ClaimEntry, ClaimPlan, check_claim_holder, check_fence};
use outbox_core::{ClaimRequest, Envelope, Epoch, EventId, LeaderGrant, Result, Timestamp};
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
/// undelivered rows feeds each to the core's [`ClaimPlan`].
fn plan_claim(c: &Connection, req: &ClaimRequest, now: i64) -> Result<Vec<i64>> {
    let mut plan = ClaimPlan::<String>::new(req, Timestamp::from_millis(now));
    let mut seqs = Vec::new();
    if plan.is_full() {
        return Ok(seqs);
    }
    let mut st = c
        .prepare_cached(
            "SELECT seq, key, status, lease_until, next_attempt_at FROM outbox_events
             WHERE status <> 'delivered' ORDER BY seq",
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
            "dead" => ClaimEntry::Dead,
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

    /// Schedules event `id` for another attempt at `at`.
    pub(crate) fn retry_later(
        &mut self,
        grant: &LeaderGrant,
        id: EventId,
        at: Timestamp,
        error: &str,
    ) -> Result<()> {
        self.settle(
            grant,
            id,
            "UPDATE outbox_events SET next_attempt_at = ?3, last_error = ?2, lease_until = NULL WHERE seq = ?1",
            Some(at.as_millis()),
            error,
        )
    }

    /// Dead-letters event `id`.
    pub(crate) fn dead_letter(&mut self, grant: &LeaderGrant, id: EventId, error: &str) -> Result<()> {
        self.settle(
            grant,
            id,
            "UPDATE outbox_events SET status = 'dead', last_error = ?2, lease_until = NULL WHERE seq = ?1",
            None,
            error,
        )
    }

    /// Runs `sql` (`?1` seq, `?2` error, `?3` `at` if given) on event `id`
    /// if `grant` may settle it.
    fn settle(
        &mut self,
        grant: &LeaderGrant,
        id: EventId,
        sql: &str,
        at: Option<i64>,
        error: &str,
    ) -> Result<()> {
        let tx = self.write_tx()?;
        check_fence(grant, current_epoch(&tx)?)?;
        if let Some(seq) = settleable(&tx, grant, id)? {
            tx.prepare_cached(sql)
                .and_then(|mut st| match at {
                    Some(at) => st.execute(params![seq, error, at]),
                    None => st.execute(params![seq, error]),
                })
                .map_err(|e| map("settle", e))?;
        }
        tx.commit().map_err(|e| map("commit settle", e))
    }

    /// Moves the dead events among `ids` back to pending, due now; says how
    /// many moved.
    pub(crate) fn requeue_dead(&mut self, ids: &[EventId]) -> Result<u64> {
        let now = self.now();
        let tx = self.write_tx()?;
        let mut moved = 0;
        for id in ids {
            moved += tx
                .prepare_cached(
                    "UPDATE outbox_events SET status = 'pending', attempts = 0, next_attempt_at = ?2,
                     claimed_epoch = NULL, lease_until = NULL WHERE id = ?1 AND status = 'dead'",
                )
                .and_then(|mut st| st.execute(params![&id.to_bytes()[..], now]))
                .map_err(|e| map("requeue", e))? as u64;
        }
        tx.commit().map_err(|e| map("commit requeue", e))?;
        Ok(moved)
    }
}
