//! Reading the outbox for operators (counts, listings) and pruning what
//! is done with (delivered and discarded events, old inbox marks).

use outbox_core::{Envelope, Result, StoreStats, Timestamp};
use rusqlite::params;

use crate::error::{corrupt, map};
use crate::rows::{ROW_COLS, RawRow, limit_i64, scan_time};
use crate::worker::Worker;

/// Per unsettled status: the count, the oldest commit time, how many are
/// leased at `?1`, and the distinct keys of the unskipped dead rows. Its
/// scan runs on the partial index of unsettled rows.
const UNSETTLED_STATS: &str = "SELECT status, COUNT(*), MIN(created_at),
            SUM(CASE WHEN lease_until > ?1 THEN 1 ELSE 0 END),
            COUNT(DISTINCT CASE WHEN status = 'dead' AND skipped = 0 THEN key END)
     FROM outbox_events WHERE status IN ('pending', 'dead') GROUP BY status";

impl Worker {
    /// Counts by status, the oldest pending event, how many are leased,
    /// and the keys parked by a dead letter.
    pub(crate) fn stats(&mut self) -> Result<StoreStats> {
        let now = self.now();
        let mut s = StoreStats::default();
        // Settled rows (delivered, discarded) are counted on their partial
        // index, which holds the status (no table scan); the unsettled
        // ones are read in full, in one pass that also counts the distinct
        // keys of the unskipped dead rows (the parked keys).
        {
            let mut st = self
                .conn
                .prepare_cached(
                    "SELECT status, COUNT(*) FROM outbox_events
                     WHERE status IN ('delivered', 'discarded') GROUP BY status",
                )
                .map_err(|e| map("prepare stats", e))?;
            let mut rows = st.query([]).map_err(|e| map("stats", e))?;
            while let Some(r) = rows.next().map_err(|e| map("stats", e))? {
                let status: String = r.get(0).map_err(|e| map("stats", e))?;
                let count = r.get::<_, i64>(1).map_err(|e| map("stats", e))? as u64;
                match status.as_str() {
                    "delivered" => s.delivered = count,
                    "discarded" => s.discarded = count,
                    other => return Err(corrupt(format!("unknown event status {other:?}"))),
                }
            }
        }
        let mut st = self.conn.prepare_cached(UNSETTLED_STATS).map_err(|e| map("prepare stats", e))?;
        let mut rows = st.query([now]).map_err(|e| map("stats", e))?;
        while let Some(r) = rows.next().map_err(|e| map("stats", e))? {
            let status: String = r.get(0).map_err(|e| map("stats", e))?;
            let count: i64 = r.get(1).map_err(|e| map("stats", e))?;
            match status.as_str() {
                "pending" => {
                    s.pending = count as u64;
                    // Read whatever its type: a row written with a REAL
                    // time still counts (a TEXT one, not a time, does not).
                    s.oldest_pending_at =
                        scan_time(r, 2).map_err(|e| map("stats", e))?.map(Timestamp::from_millis);
                    s.in_flight =
                        r.get::<_, Option<i64>>(3).map_err(|e| map("stats", e))?.unwrap_or(0) as u64;
                }
                "dead" => {
                    s.dead = count as u64;
                    s.parked_keys = r.get::<_, i64>(4).map_err(|e| map("stats", e))? as u64;
                }
                other => return Err(corrupt(format!("unknown event status {other:?}"))),
            }
        }
        Ok(s)
    }

    /// The first `limit` events with `status`, in commit order. A row
    /// that does not decode is listed as well as it can be (see
    /// [`Corrupt::envelope`](crate::rows::Corrupt::envelope)): its raw
    /// payload, and why it is corrupted in `last_error`.
    pub(crate) fn list(&mut self, status: &str, limit: usize) -> Result<Vec<Envelope>> {
        let mut st = self
            .conn
            .prepare_cached(&format!(
                "SELECT {ROW_COLS} FROM outbox_events WHERE status = ?1 ORDER BY seq LIMIT ?2"
            ))
            .map_err(|e| map("prepare list", e))?;
        let rows = st
            .query_map(params![status, limit_i64(limit)], |r| RawRow::read(r, 0))
            .map_err(|e| map("list", e))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(match r.map_err(|e| map("list", e))?.decode() {
                Ok(e) => e,
                Err(bad) => bad.envelope()?,
            });
        }
        Ok(out)
    }

    /// The lease, claiming epoch and skip flag of the event `id`.
    pub(crate) fn delivery_info(
        &mut self,
        id: outbox_core::EventId,
    ) -> Result<Option<outbox_core::DeliveryInfo>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT lease_until, claimed_epoch, skipped FROM outbox_events WHERE id = ?1")
            .map_err(|e| map("prepare delivery info", e))?;
        let mut rows = st.query(params![&id.to_bytes()[..]]).map_err(|e| map("delivery info", e))?;
        let Some(r) = rows.next().map_err(|e| map("delivery info", e))? else { return Ok(None) };
        let lease: Option<i64> = r.get(0).map_err(|e| map("delivery info", e))?;
        let epoch: Option<i64> = r.get(1).map_err(|e| map("delivery info", e))?;
        let skipped: i64 = r.get(2).map_err(|e| map("delivery info", e))?;
        Ok(Some(outbox_core::DeliveryInfo::new(
            lease.map(Timestamp::from_millis),
            epoch.map(|e| outbox_core::Epoch(e as u64)),
            skipped != 0,
        )))
    }

    /// Deletes up to `limit` events delivered or discarded before `before`,
    /// oldest first.
    pub(crate) fn prune_delivered(&mut self, before: Timestamp, limit: usize) -> Result<u64> {
        self.cap(false)?;
        let n = self
            .conn
            .execute(
                "DELETE FROM outbox_events WHERE seq IN (
                     SELECT seq FROM outbox_events
                     WHERE status IN ('delivered', 'discarded') AND delivered_at < ?1
                     ORDER BY delivered_at LIMIT ?2)",
                params![before.as_millis(), limit_i64(limit)],
            )
            .map_err(|e| map("prune delivered", e))?;
        Ok(n as u64)
    }

    /// Deletes up to `limit` inbox marks made before `before`, oldest first.
    pub(crate) fn prune_inbox(&mut self, before: Timestamp, limit: usize) -> Result<u64> {
        self.cap(false)?;
        let n = self
            .conn
            .execute(
                "DELETE FROM outbox_inbox WHERE rowid IN (
                     SELECT rowid FROM outbox_inbox WHERE processed_at < ?1 ORDER BY processed_at LIMIT ?2)",
                params![before.as_millis(), limit_i64(limit)],
            )
            .map_err(|e| map("prune inbox", e))?;
        Ok(n as u64)
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::UNSETTLED_STATS;
    use crate::schema::migrate;

    /// The stats scan (parked keys included) reads the unsettled rows
    /// through their partial index, not the whole table.
    #[test]
    fn unsettled_stats_scan_the_unsettled_index() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        let mut st = conn.prepare(&format!("EXPLAIN QUERY PLAN {UNSETTLED_STATS}")).unwrap();
        let details: Vec<String> = st.query_map([0_i64], |r| r.get(3)).unwrap().map(|d| d.unwrap()).collect();
        let scans: Vec<&String> = details.iter().filter(|d| d.contains("outbox_events")).collect();
        assert!(!scans.is_empty(), "{details:?}");
        assert!(scans.iter().all(|d| d.contains("USING INDEX outbox_events_unsettled")), "{details:?}");
    }
}
