//! A commit's rows: writing state, events and inbox marks, and reading
//! state and inbox marks back.

use outbox_core::{ActorId, Commit, ConsumerId, Error, EventId, Result, StateSnapshot, Timestamp, Version};
use rusqlite::{Connection, OptionalExtension, params};

use crate::error::{is_unique_violation, map};
use crate::rows::to_i64;
use crate::worker::{Member, Worker};

/// Writes one commit; on `Err` the caller rolls back.
pub(crate) fn apply(c: &Connection, m: &Member, now: i64) -> Result<Option<Version>> {
    write(c, &m.commit, &m.headers, now)
}

/// Writes `commit` (its events' headers encoded as JSON in `headers`) on
/// `c`, in the transaction open there; on `Err` the caller rolls back.
pub(crate) fn write(
    c: &Connection,
    commit: &Commit,
    headers: &[String],
    now: i64,
) -> Result<Option<Version>> {
    let mut version = None;
    if let Some(s) = &commit.state {
        let new = s.expected_version.next();
        let (new_v, expected_v) = (to_i64(new.0, "version")?, to_i64(s.expected_version.0, "version")?);
        let changed = if s.expected_version == Version::NONE {
            c.prepare_cached(
                "INSERT INTO outbox_state (actor, version, snapshot, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (actor) DO NOTHING",
            )
            .and_then(|mut st| st.execute(params![s.actor.as_str(), new_v, s.snapshot, now]))
        } else {
            c.prepare_cached(
                "UPDATE outbox_state SET version = ?2, snapshot = ?3, updated_at = ?4 WHERE actor = ?1 AND version = ?5",
            )
            .and_then(|mut st| {
                st.execute(params![s.actor.as_str(), new_v, s.snapshot, now, expected_v])
            })
        }
        .map_err(|e| map("write state", e))?;
        if changed == 0 {
            let actual: Option<i64> = c
                .prepare_cached("SELECT version FROM outbox_state WHERE actor = ?1")
                .and_then(|mut st| st.query_row([s.actor.as_str()], |r| r.get(0)).optional())
                .map_err(|e| map("read version", e))?;
            return Err(Error::Conflict {
                actor: s.actor.clone(),
                expected: s.expected_version,
                actual: Version(actual.unwrap_or(0) as u64),
            });
        }
        version = Some(new);
    }
    if !commit.events.is_empty() {
        let mut st = c
            .prepare_cached(
                "INSERT INTO outbox_events (id, origin, key, event_type, payload_kind, payload, headers,
                                            schema_version, created_at, next_attempt_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .map_err(|e| map("prepare event insert", e))?;
        for (e, headers) in commit.events.iter().zip(headers) {
            let due = e.not_before.map_or(now, |t| t.as_millis().max(now));
            st.execute(params![
                &e.id.to_bytes()[..],
                e.origin.as_str(),
                e.key.as_str(),
                e.event_type,
                e.payload.kind().as_str(),
                e.payload.as_bytes(),
                headers,
                e.schema_version,
                now,
                due
            ])
            .map_err(|err| {
                if is_unique_violation(&err) {
                    Error::DuplicateEvent { id: e.id }
                } else {
                    map("insert event", err)
                }
            })?;
        }
    }
    if !commit.inbox.is_empty() {
        let mut st = c
            .prepare_cached(
                "INSERT INTO outbox_inbox (consumer, origin, event_id, processed_at) VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(|e| map("prepare inbox insert", e))?;
        for mark in &commit.inbox {
            st.execute(params![
                mark.consumer.as_str(),
                mark.origin.as_str(),
                &mark.event_id.to_bytes()[..],
                now
            ])
            .map_err(|err| {
                if is_unique_violation(&err) {
                    Error::AlreadyProcessed {
                        consumer: mark.consumer.clone(),
                        origin: mark.origin.clone(),
                        id: mark.event_id,
                    }
                } else {
                    map("insert inbox mark", err)
                }
            })?;
        }
    }
    Ok(version)
}

impl Worker {
    /// The actor's last committed state.
    pub(crate) fn load_state(&mut self, actor: &ActorId) -> Result<Option<StateSnapshot>> {
        let row: Option<(i64, Vec<u8>, i64)> = self
            .conn
            .prepare_cached("SELECT version, snapshot, updated_at FROM outbox_state WHERE actor = ?1")
            .and_then(|mut st| {
                st.query_row([actor.as_str()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional()
            })
            .map_err(|e| map("load state", e))?;
        Ok(row.map(|(v, bytes, at)| StateSnapshot {
            version: Version(v as u64),
            bytes,
            updated_at: Timestamp::from_millis(at),
        }))
    }

    /// Whether `consumer` has an inbox mark for `origin`'s event `id`.
    pub(crate) fn is_processed(
        &mut self,
        consumer: &ConsumerId,
        origin: &ActorId,
        id: EventId,
    ) -> Result<bool> {
        self.conn
            .prepare_cached(
                "SELECT 1 FROM outbox_inbox WHERE consumer = ?1 AND origin = ?2 AND event_id = ?3",
            )
            .and_then(|mut st| st.exists(params![consumer.as_str(), origin.as_str(), &id.to_bytes()[..]]))
            .map_err(|e| map("read inbox", e))
    }
}
