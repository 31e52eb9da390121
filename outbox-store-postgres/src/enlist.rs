//! Enlisting in the application's own transaction:
//! [`PostgresStore::enlist`] writes a commit through a transaction the
//! application opened, so its tables and the outbox commit (or roll back)
//! together. The wake-up is a `NOTIFY` inside that transaction, which
//! PostgreSQL delivers only if and when it commits.

use outbox_core::{Commit, CommitReceipt, Error, EventId, Result, Version};
use tokio_postgres::Transaction;
use uuid::Uuid;

use crate::error::{is_duplicate_id, map};
use crate::notify::COMMIT_CHANNEL;
use crate::pool::quote_ident;
use crate::rows::{EventColumns, millis, uuid};
use crate::store::PostgresStore;

/// The commit's statements with the store's tables named by schema (the
/// application's session has its own `search_path`).
struct Sql {
    insert_state: String,
    update_state: String,
    read_version: String,
    insert_events: String,
    find_ids: String,
    insert_mark: String,
}

impl Sql {
    fn new(schema: &str) -> Sql {
        let s = quote_ident(schema);
        Sql {
            insert_state: format!(
                "INSERT INTO {s}.outbox_state (actor, version, snapshot, updated_at) VALUES ($1, 1, $2, $3)
                 ON CONFLICT (actor) DO NOTHING"
            ),
            update_state: format!(
                "UPDATE {s}.outbox_state SET version = $4, snapshot = $2, updated_at = $3
                 WHERE actor = $1 AND version = $5"
            ),
            read_version: format!("SELECT version FROM {s}.outbox_state WHERE actor = $1"),
            // As `queries::SQL_INSERT_EVENTS`, the key locks namespaced by
            // the store's schema ($11) rather than the session's.
            insert_events: format!(
                "INSERT INTO {s}.outbox_events (id, origin, key, event_type, payload_kind, payload, headers,
                                                 schema_version, created_at, next_attempt_at)
                 SELECT id, origin, key, event_type, kind, payload, headers, sv, $9, due
                 FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[],
                             $7::text[], $8::int4[], $10::int8[])
                      WITH ORDINALITY AS t(id, origin, key, event_type, kind, payload, headers, sv, due, n)
                 WHERE (SELECT count(pg_advisory_xact_lock(hashtext($11::text), h))
                        FROM (SELECT DISTINCT hashtext(k) AS h FROM unnest($3::text[]) AS k ORDER BY 1) AS s) >= 0
                 ORDER BY n"
            ),
            find_ids: format!("SELECT id FROM {s}.outbox_events WHERE id = ANY($1) LIMIT 1"),
            insert_mark: format!(
                "INSERT INTO {s}.outbox_inbox (consumer, origin, event_id, processed_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT DO NOTHING"
            ),
        }
    }
}

impl PostgresStore {
    /// Writes `commit` (the actor's state, if any, its events and inbox
    /// marks) through the application's open transaction `tx`, next to
    /// whatever the application wrote in it: the two commit or roll back
    /// together. `tx` is on the store's database (any connection,
    /// opened by the application: its `search_path` does not matter, the
    /// store's tables are named by schema).
    ///
    /// The forwarders [listening](PostgresStore::listen) are woken by a
    /// `NOTIFY` sent in `tx`: PostgreSQL delivers it when `tx` commits,
    /// and drops it if `tx` rolls back. (A `NOTIFY` holds PostgreSQL's
    /// notification lock from the commit until its WAL flush, so many
    /// concurrent enlisted commits serialize there; the store's own
    /// commits notify after the commit instead.)
    ///
    /// The events' ordering keys are locked until `tx` ends (as the
    /// store's own commits lock them), so per key the events are
    /// delivered in the order their transactions committed; keep `tx`
    /// short, since a claim passes over a key a transaction holds.
    ///
    /// The outbox's writes run in a savepoint: if they fail, they are
    /// rolled back and `tx` is left as it was, still usable. The call as a
    /// whole is bounded by the store's statement and connect timeouts;
    /// past them it fails with `Unavailable`, and `tx` should be rolled
    /// back. The receipt holds once `tx` has committed.
    ///
    /// # Errors
    ///
    /// What [`put_state_and_events`](outbox_core::StateStore::put_state_and_events)
    /// returns (`Conflict`, `DuplicateEvent`, `AlreadyProcessed`, invalid
    /// input), and the server's failures, as the store maps them.
    pub async fn enlist(&self, tx: &mut Transaction<'_>, commit: Commit) -> Result<CommitReceipt> {
        self.inner.pool.bounded("enlist", self.enlist_unbounded(tx, commit)).await
    }

    async fn enlist_unbounded(&self, tx: &mut Transaction<'_>, commit: Commit) -> Result<CommitReceipt> {
        commit.validate(&self.inner.limits)?;
        let now = self.inner.clock.now();
        let at = millis(now);
        let schema = self.inner.schema.as_str();
        let sql = Sql::new(schema);
        let cols = EventColumns::of(&commit.events, at)?;

        let sp = tx.savepoint("outbox_enlist").await.map_err(|e| map("enlist savepoint", e))?;
        let mut version = None;
        if let Some(s) = &commit.state {
            let expected = s.expected_version.0 as i64;
            let n = if expected == 0 {
                sp.execute(sql.insert_state.as_str(), &[&s.actor.as_str(), &s.snapshot, &at]).await
            } else {
                sp.execute(
                    sql.update_state.as_str(),
                    &[&s.actor.as_str(), &s.snapshot, &at, &(expected + 1), &expected],
                )
                .await
            }
            .map_err(|e| map("write state", e))?;
            if n == 0 {
                let actual = sp
                    .query_opt(sql.read_version.as_str(), &[&s.actor.as_str()])
                    .await
                    .map_err(|e| map("read state version", e))?
                    .map_or(Version::NONE, |r| Version(r.get::<_, i64>(0) as u64));
                sp.rollback().await.map_err(|e| map("roll back the enlisted writes", e))?;
                return Err(Error::Conflict { actor: s.actor.clone(), expected: s.expected_version, actual });
            }
            version = Some(s.expected_version.next());
        }
        if !commit.events.is_empty() {
            let inserted =
                sp.execute(sql.insert_events.as_str(), &[&cols.params()[..], &[&schema]].concat()).await;
            if let Err(e) = inserted {
                sp.rollback().await.map_err(|e| map("roll back the enlisted writes", e))?;
                if !is_duplicate_id(&e) {
                    return Err(map("insert events", e));
                }
                let stored = tx
                    .query_opt(sql.find_ids.as_str(), &[&cols.ids])
                    .await
                    .map_err(|e| map("find duplicate id", e))?;
                let id = stored.map(|r| EventId::from_bytes(*r.get::<_, Uuid>(0).as_bytes())).unwrap_or_else(
                    || {
                        let mut seen = std::collections::HashSet::new();
                        commit
                            .events
                            .iter()
                            .map(|e| e.id)
                            .find(|id| !seen.insert(*id))
                            .unwrap_or(commit.events[0].id)
                    },
                );
                return Err(Error::DuplicateEvent { id });
            }
        }
        for m in &commit.inbox {
            let n = sp
                .execute(
                    sql.insert_mark.as_str(),
                    &[&m.consumer.as_str(), &m.origin.as_str(), &uuid(m.event_id), &at],
                )
                .await
                .map_err(|e| map("insert inbox mark", e))?;
            if n == 0 {
                sp.rollback().await.map_err(|e| map("roll back the enlisted writes", e))?;
                return Err(Error::AlreadyProcessed {
                    consumer: m.consumer.clone(),
                    origin: m.origin.clone(),
                    id: m.event_id,
                });
            }
        }
        if !commit.events.is_empty() {
            sp.execute("SELECT pg_notify($1, $2)", &[&COMMIT_CHANNEL, &schema])
                .await
                .map_err(|e| map("notify", e))?;
        }
        sp.commit().await.map_err(|e| map("release the enlist savepoint", e))?;
        Ok(CommitReceipt { version, committed_at: now, durable: true })
    }
}
