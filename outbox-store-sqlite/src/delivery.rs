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
use crate::rows::{CORRUPTED, Corrupt, ROW_COLS, RawRow, derived_seq, json_list, scan_key, scan_time};
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
///
/// The scan reads its columns whatever their type: a row whose due time is
/// not an integer counts as due (the claim then meets it, finds it does not
/// decode and quarantines it), one whose lease is not an integer as not
/// leased.
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
        let key = scan_key(r, 1).map_err(|e| map("claim scan", e))?;
        let status: String = r.get(2).map_err(|e| map("claim scan", e))?;
        let entry = match status.as_str() {
            "pending" => ClaimEntry::Pending {
                lease_until: scan_time(r, 3).map_err(|e| map("claim scan", e))?.map(Timestamp::from_millis),
                next_attempt_at: Timestamp::from_millis(
                    scan_time(r, 4).map_err(|e| map("claim scan", e))?.unwrap_or(i64::MIN),
                ),
            },
            "dead" => match scan_time(r, 5).map_err(|e| map("claim scan", e))? {
                Some(0) | None => ClaimEntry::Dead,
                Some(_) => ClaimEntry::Skipped,
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

/// The rows `seqs`, each decoded or found corrupt, in commit order.
fn read_rows(c: &Connection, seqs: &[i64]) -> Result<Vec<std::result::Result<Envelope, Box<Corrupt>>>> {
    let mut st = c
        .prepare_cached(&format!(
            "SELECT {ROW_COLS} FROM outbox_events WHERE seq IN (SELECT value FROM json_each(?1)) ORDER BY seq"
        ))
        .map_err(|e| map("prepare claim read", e))?;
    let rows =
        st.query_map([json_list(seqs.iter())], |r| RawRow::read(r, 0)).map_err(|e| map("claim read", e))?;
    let mut out = Vec::with_capacity(seqs.len());
    for row in rows {
        out.push(row.map_err(|e| map("claim read", e))?.decode());
    }
    Ok(out)
}

/// Moves the rows that do not decode to the dead letters, with why in
/// `last_error` (`corrupted: ...`); their stored values stay as they are.
fn quarantine(c: &Connection, bad: &[Box<Corrupt>]) -> Result<()> {
    let mut st = c
        .prepare_cached(
            "UPDATE outbox_events SET status = 'dead', skipped = 0, lease_until = NULL, last_error = ?2
             WHERE seq = ?1",
        )
        .map_err(|e| map("prepare quarantine", e))?;
    for b in bad {
        tracing::warn!(seq = b.row.seq, reason = %b.reason, "outbox row does not decode: quarantined as a dead letter");
        st.execute(params![b.row.seq, format!("{CORRUPTED}{}", b.reason)])
            .map_err(|e| map("quarantine", e))?;
    }
    Ok(())
}

impl Worker {
    /// Claims the due events `req` takes under `grant`, leasing them.
    ///
    /// A planned row that does not decode is quarantined (moved to the dead
    /// letters, `last_error` saying why) in the same transaction, and the
    /// claim is planned again without it: with dead keys parked, its key's
    /// later events wait behind it as behind any dead letter; every other
    /// key flows.
    pub(crate) fn claim(&mut self, grant: &LeaderGrant, req: ClaimRequest) -> Result<Vec<Envelope>> {
        let now = self.now();
        let tx = self.write_tx()?;
        check_fence(grant, current_epoch(&tx)?)?;
        let lease_until = Timestamp::from_millis(now).saturating_add(req.lease).as_millis();
        // Each round that meets a row that does not decode quarantines it,
        // and no later plan takes it: the loop ends.
        let out = loop {
            let seqs = plan_claim(&tx, &req, now)?;
            if seqs.is_empty() {
                break Vec::new();
            }
            let (good, bad): (Vec<_>, Vec<_>) = read_rows(&tx, &seqs)?.into_iter().partition(|r| r.is_ok());
            if !bad.is_empty() {
                let bad: Vec<Box<Corrupt>> = bad.into_iter().filter_map(|r| r.err()).collect();
                quarantine(&tx, &bad)?;
                continue;
            }
            // One statement for the whole batch: the seqs go in as a JSON array.
            tx.prepare_cached(
                "UPDATE outbox_events SET attempts = min(attempts + 1, 4294967295), lease_until = ?2,
                        claimed_epoch = ?3
                 WHERE seq IN (SELECT value FROM json_each(?1))",
            )
            .and_then(|mut st| st.execute(params![json_list(seqs.iter()), lease_until, grant.epoch.0 as i64]))
            .map_err(|e| map("claim", e))?;
            break good
                .into_iter()
                .filter_map(|r| r.ok())
                .map(|mut e| {
                    e.attempts = e.attempts.saturating_add(1);
                    e
                })
                .collect();
        };
        tx.commit().map_err(|e| map("commit claim", e))?;
        Ok(out)
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
            "UPDATE outbox_events SET status = 'pending', skipped = 0, attempts = 0, next_attempt_at = ?3,
             claimed_epoch = NULL, lease_until = NULL WHERE {ROW} AND status = 'dead'",
            true,
        )
    }

    /// Discards the dead events among `ids` (skipped ones included): status
    /// `discarded`, settled now (`delivered_at`); says how many.
    pub(crate) fn discard_dead(&mut self, ids: &[EventId]) -> Result<u64> {
        self.each_dead(
            ids,
            "discard",
            "UPDATE outbox_events SET status = 'discarded', skipped = 0, delivered_at = ?3,
             lease_until = NULL WHERE {ROW} AND status = 'dead'",
            true,
        )
    }

    /// Marks the dead events among `ids` that are not skipped yet skipped;
    /// says how many.
    pub(crate) fn skip_dead(&mut self, ids: &[EventId]) -> Result<u64> {
        self.each_dead(
            ids,
            "skip",
            "UPDATE outbox_events SET skipped = 1 WHERE {ROW} AND status = 'dead' AND skipped = 0",
            false,
        )
    }

    /// Runs `sql` once per id of `ids` in one transaction, `{ROW}` in it
    /// replaced by the match of the id's row (`?1` the id, `?2` the seq of
    /// an id derived from a seq, see [`crate::rows::derived_id`]) and `?3`
    /// now if `with_now`; says how many rows it changed.
    fn each_dead(&mut self, ids: &[EventId], what: &'static str, sql: &str, with_now: bool) -> Result<u64> {
        let now = self.now();
        let tx = self.write_tx()?;
        let mut changed = 0;
        {
            let sql = sql.replace("{ROW}", ROW_OF_ID);
            let mut st = tx.prepare_cached(&sql).map_err(|e| map(what, e))?;
            for id in ids {
                let (bytes, seq) = (id.to_bytes(), derived_seq(*id));
                let n = if with_now {
                    st.execute(params![&bytes[..], seq, now])
                } else {
                    st.execute(params![&bytes[..], seq])
                };
                changed += n.map_err(|e| map(what, e))? as u64;
            }
        }
        tx.commit().map_err(|e| map(what, e))?;
        Ok(changed)
    }
}

/// The row of an id (`?1`), or of a seq (`?2`) when the row's stored id is
/// not 16 bytes and it is listed under an id derived from its seq.
const ROW_OF_ID: &str = "(id = ?1 OR (seq = ?2 AND NOT (typeof(id) = 'blob' AND length(id) = 16)))";
