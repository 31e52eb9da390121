//! The store traits on PostgreSQL: [`PostgresStore`] and its `StateStore`,
//! `LeaderStore`, `DeliveryStore`, `InspectStore`, `InboxStore` and
//! `DurableStore` impls. Opening is in `options.rs`, the claim's two steps
//! in `claim.rs`, the fencing checks in `fence.rs`, the SQL in `queries.rs`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use outbox_core::rules::{check_lease, check_ttl};
use outbox_core::{
    ActorId, Attempt, Capabilities, ClaimRequest, Commit, CommitReceipt, ConsumerId, DeliveryStore,
    DurableStore, Envelope, Epoch, Error, EventId, InboxStore, InspectStore, LeaderGrant, LeaderStore,
    LeadershipMode, Limits, OrderingKey, Result, SharedClock, StateSnapshot, StateStore, StoreStats,
    Timestamp, Version, async_trait,
};
use tokio_postgres::Config;
use uuid::Uuid;

use crate::claim;
use crate::error::{is_duplicate_id, map};
use crate::fence;
use crate::notify::{self, CommitListener, Notifier};
use crate::pool::{Conn, Pool};
use crate::queries::{
    ENVELOPE_COLS, SQL_ACK, SQL_FIND_IDS, SQL_GRANT_LIVE, SQL_INSERT_EVENTS, SQL_INSERT_MARK,
    SQL_INSERT_STATE, SQL_LOCK_EVENTS, SQL_UPDATE_STATE, STATUS_DEAD, STATUS_PENDING,
};
use crate::rows::{Decoded, EventColumns, decode_at, limit_i64, millis, uuid};

/// Claim transactions one `claim` call runs while each finds only rows to
/// quarantine.
const QUARANTINE_ROUNDS: usize = 4;

/// The outbox store on PostgreSQL, for many processes sharing one
/// database.
///
/// - A commit is one transaction: the state row with an optimistic version
///   check, the events and the inbox marks; after it, a `NOTIFY` on
///   [`COMMIT_CHANNEL`](crate::COMMIT_CHANNEL) that forwarders
///   [listen](PostgresStore::listen) for.
/// - Leadership is shared: every forwarder gets its own epoch, and fencing
///   is per claimed event (an ack from an epoch that did not claim the
///   event, or whose grant was released, is `Fenced`).
/// - Commits take a transaction-level advisory lock per ordering key (in
///   a fixed order), so a key's sequence follows its commit order. Claims
///   try-lock the keys of the first claimable key heads
///   (`pg_try_advisory_xact_lock`, skipping keys held elsewhere), so two
///   forwarders never claim from one key at once and spread over the keys,
///   and lease their events; a key whose head is leased or waiting for a
///   retry is not claimed. Claims commit with `synchronous_commit = off`:
///   a claim lost in a crash only makes its events claimable again.
#[derive(Clone)]
pub struct PostgresStore {
    pub(crate) inner: Arc<Inner>,
}

/// What a store's handles share.
pub(crate) struct Inner {
    pub(crate) pool: Pool,
    /// For connections of their own (the listener, the notifier).
    pub(crate) config: Config,
    /// Their TLS, as the URL asks (`tls.rs`).
    pub(crate) tls: crate::tls::MakeTls,
    pub(crate) schema: String,
    pub(crate) clock: SharedClock,
    pub(crate) limits: Limits,
    pub(crate) notifier: Notifier,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore").field("schema", &self.inner.schema).finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// [`DeliveryStore::claim`], or with `keys_of`
    /// [`DeliveryStore::claim_heads_of`].
    async fn claim_where(
        &self,
        grant: &LeaderGrant,
        request: ClaimRequest,
        keys_of: Option<&[OrderingKey]>,
    ) -> Result<Vec<Envelope>> {
        self.inner
            .pool
            .bounded("claim", async {
                check_lease(&request)?;
                if request.limit == 0 || keys_of.is_some_and(|k| k.is_empty()) {
                    return Ok(Vec::new());
                }
                let mut conn = self.inner.pool.get().await?;
                // A batch of quarantined rows only is no sign the backlog is
                // empty: claim again (a few times; polling covers the rest).
                for _ in 0..QUARANTINE_ROUNDS {
                    let now = self.now();
                    let until = now.saturating_add(request.lease);
                    let claimed = claim::claim(&mut conn, grant, &request, keys_of, now, until).await?;
                    if !claimed.events.is_empty() || claimed.quarantined == 0 {
                        return Ok(claimed.events);
                    }
                }
                Ok(Vec::new())
            })
            .await
    }

    pub(crate) fn new(inner: Inner) -> Self {
        PostgresStore { inner: Arc::new(inner) }
    }

    /// Listens for commits (any process's, to this store's schema) on a
    /// dedicated connection and calls `on_commit` for each; for waking a
    /// forwarder (`forwarder.waker().wake()`).
    ///
    /// The first connection's failure is returned. A connection lost later
    /// is reopened in the background (backing off up to 5 s), and
    /// `on_commit` is called once after every reconnect, since commits may
    /// have been missed meanwhile; the forwarder's polling covers the gap.
    pub async fn listen(&self, on_commit: impl Fn() + Send + Sync + 'static) -> Result<CommitListener> {
        notify::listen(
            self.inner.config.clone(),
            self.inner.tls.clone(),
            self.inner.schema.clone(),
            self.inner.pool.timeouts(),
            Arc::new(on_commit),
        )
        .await
    }

    fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    /// The `DuplicateEvent` for a commit whose insert skipped an id: one
    /// already stored, or one given twice in the commit.
    async fn duplicate(&self, conn: &mut Conn<'_>, commit: &Commit, ids: &[Uuid]) -> Error {
        let stored = match conn.client().query_opt(SQL_FIND_IDS, &[&ids]).await {
            Ok(r) => r.map(|r| r.get::<_, Uuid>(0)),
            Err(e) => return map("find duplicate id", e),
        };
        let id = stored.map(|u| EventId::from_bytes(*u.as_bytes())).unwrap_or_else(|| {
            let mut seen = std::collections::HashSet::new();
            commit.events.iter().map(|e| e.id).find(|id| !seen.insert(*id)).unwrap_or(commit.events[0].id)
        });
        Error::DuplicateEvent { id }
    }

    async fn list(&self, status: i16, limit: usize) -> Result<Vec<Envelope>> {
        let mut conn = self.inner.pool.get().await?;
        let rows = conn
            .client()
            .query(
                &format!("SELECT {ENVELOPE_COLS} FROM outbox_events WHERE status = $1 ORDER BY seq LIMIT $2"),
                &[&status, &limit_i64(limit)],
            )
            .await
            .map_err(|e| map("list", e))?;
        // A row that breaks the envelope's rules is listed as its
        // quarantine will store it.
        rows.iter().map(|r| decode_at(r, 0).map(Decoded::envelope)).collect()
    }

    /// `put_state_and_events`, without its time bound.
    async fn commit(&self, commit: Commit) -> Result<CommitReceipt> {
        commit.validate(&self.inner.limits)?;
        let now = self.now();
        let at = millis(now);
        // Everything is encoded before the transaction opens.
        let cols = EventColumns::of(&commit.events, at)?;
        let state = commit.state.as_ref().map(|s| {
            let expected = s.expected_version.0 as i64;
            (s, expected, expected + 1)
        });

        let mut conn = self.inner.pool.get().await?;
        let [insert_state, update_state, insert_events, insert_mark] =
            conn.prepare([SQL_INSERT_STATE, SQL_UPDATE_STATE, SQL_INSERT_EVENTS, SQL_INSERT_MARK]).await?;
        let tx = conn.client().transaction().await.map_err(|e| map("begin", e))?;
        // One round trip for the writes: the statements are pipelined and
        // run in this order, the state row first, then the events with
        // their keys locked (see `SQL_INSERT_EVENTS`). Every commit takes
        // its locks in that order (state row, then sorted keys).
        let has_events = !commit.events.is_empty();
        let (wrote, inserted) = tokio::join!(
            biased;
            async {
                match &state {
                    Some((s, 0, _)) => tx.execute(&insert_state, &[&s.actor.as_str(), &s.snapshot, &at]).await.map(Some),
                    Some((s, expected, next)) => {
                        tx.execute(&update_state, &[&s.actor.as_str(), &s.snapshot, &at, next, expected]).await.map(Some)
                    }
                    None => Ok(None),
                }
            },
            async {
                if has_events {
                    tx.execute(&insert_events, &cols.params()).await
                } else {
                    Ok(0)
                }
            },
        );
        // The first failure in statement order is the cause; later ones
        // only say the transaction was aborted.
        let wrote = wrote.map_err(|e| map("write state", e))?;
        if let Err(e) = &inserted
            && is_duplicate_id(e)
        {
            drop(tx);
            return Err(self.duplicate(&mut conn, &commit, &cols.ids).await);
        }
        inserted.map_err(|e| map("insert events", e))?;
        let mut version = None;
        if let (Some((s, _, _)), Some(n)) = (&state, wrote) {
            if n == 0 {
                drop(tx);
                let actual = conn
                    .client()
                    .query_opt("SELECT version FROM outbox_state WHERE actor = $1", &[&s.actor.as_str()])
                    .await
                    .map_err(|e| map("read state version", e))?
                    .map_or(Version::NONE, |r| Version(r.get::<_, i64>(0) as u64));
                return Err(Error::Conflict { actor: s.actor.clone(), expected: s.expected_version, actual });
            }
            version = Some(s.expected_version.next());
        }
        for m in &commit.inbox {
            let r = tx
                .execute(&insert_mark, &[&m.consumer.as_str(), &m.origin.as_str(), &uuid(m.event_id), &at])
                .await
                .map_err(|e| map("insert inbox mark", e))?;
            if r == 0 {
                return Err(Error::AlreadyProcessed {
                    consumer: m.consumer.clone(),
                    origin: m.origin.clone(),
                    id: m.event_id,
                });
            }
        }
        tx.commit().await.map_err(|e| map("commit", e))?;
        if has_events {
            self.inner.notifier.notify();
        }
        Ok(CommitReceipt { version, committed_at: now, durable: true })
    }
}

#[async_trait]
impl StateStore for PostgresStore {
    async fn put_state_and_events(&self, commit: Commit) -> Result<CommitReceipt> {
        self.inner.pool.bounded("commit", self.commit(commit)).await
    }

    async fn load_state(&self, actor: &ActorId) -> Result<Option<StateSnapshot>> {
        self.inner
            .pool
            .bounded("load state", async {
                let mut conn = self.inner.pool.get().await?;
                let row = conn
                    .client()
                    .query_opt(
                        "SELECT version, snapshot, updated_at FROM outbox_state WHERE actor = $1",
                        &[&actor.as_str()],
                    )
                    .await
                    .map_err(|e| map("load state", e))?;
                Ok(row.map(|r| StateSnapshot {
                    version: Version(r.get::<_, i64>(0) as u64),
                    bytes: r.get(1),
                    updated_at: Timestamp::from_millis(r.get(2)),
                }))
            })
            .await
    }
}

#[async_trait]
impl LeaderStore for PostgresStore {
    async fn acquire_leadership(&self, holder: &str, ttl: Duration) -> Result<Option<LeaderGrant>> {
        self.inner.pool.bounded("acquire leadership", async {
            check_ttl(ttl)?;
            let expires_at = self.now().saturating_add(ttl);
            let mut conn = self.inner.pool.get().await?;
            let tx = conn.client().transaction().await.map_err(|e| map("begin", e))?;
            tx.execute(
                "UPDATE outbox_leaders SET released = true WHERE holder = $1 AND NOT released",
                &[&holder],
            )
            .await
            .map_err(|e| map("fence earlier grants", e))?;
            let epoch: i64 = tx
                .query_one(
                    "INSERT INTO outbox_leaders (epoch, holder, expires_at) VALUES (nextval('outbox_epochs'), $1, $2)
                     RETURNING epoch",
                    &[&holder, &millis(expires_at)],
                )
                .await
                .map_err(|e| map("grant", e))?
                .get(0);
            tx.commit().await.map_err(|e| map("commit grant", e))?;
            Ok(Some(LeaderGrant { holder: holder.to_owned(), epoch: Epoch(epoch as u64), expires_at }))
        })
        .await
    }

    async fn renew_leadership(&self, grant: &LeaderGrant, ttl: Duration) -> Result<LeaderGrant> {
        self.inner
            .pool
            .bounded("renew leadership", async {
                check_ttl(ttl)?;
                let expires_at = self.now().saturating_add(ttl);
                let mut conn = self.inner.pool.get().await?;
                let n = conn
                    .client()
                    .execute(
                        "UPDATE outbox_leaders SET expires_at = $2 WHERE epoch = $1 AND NOT released",
                        &[&fence::epoch(grant), &millis(expires_at)],
                    )
                    .await
                    .map_err(|e| map("renew", e))?;
                if n == 0 {
                    return Err(Error::Fenced { epoch: grant.epoch, current: None });
                }
                Ok(LeaderGrant { expires_at, ..grant.clone() })
            })
            .await
    }

    async fn release_leadership(&self, grant: &LeaderGrant) -> Result<()> {
        self.inner
            .pool
            .bounded("release leadership", async {
                let mut conn = self.inner.pool.get().await?;
                conn.client()
                    .execute(
                        "UPDATE outbox_leaders SET released = true WHERE epoch = $1",
                        &[&fence::epoch(grant)],
                    )
                    .await
                    .map_err(|e| map("release", e))?;
                Ok(())
            })
            .await
    }
}

#[async_trait]
impl DeliveryStore for PostgresStore {
    async fn claim(&self, grant: &LeaderGrant, request: ClaimRequest) -> Result<Vec<Envelope>> {
        self.claim_where(grant, request, None).await
    }

    async fn claim_heads_of(
        &self,
        grant: &LeaderGrant,
        request: ClaimRequest,
        keys: &[OrderingKey],
    ) -> Result<Vec<Envelope>> {
        self.claim_where(grant, request, Some(keys)).await
    }

    async fn ack(&self, grant: &LeaderGrant, ids: &[EventId]) -> Result<()> {
        self.inner
            .pool
            .bounded("ack", async {
                let now = millis(self.now());
                let epoch = fence::epoch(grant);
                let ids: Vec<Uuid> = ids.iter().map(|i| uuid(*i)).collect();
                let mut conn = self.inner.pool.get().await?;
                let [grant_live, ack] = conn.prepare([SQL_GRANT_LIVE, SQL_ACK]).await?;
                let tx = conn.client().transaction().await.map_err(|e| map("begin", e))?;
                // Pipelined: the grant check and the update of the ids still
                // leased to this epoch; rolled back (the transaction dropped)
                // unless the grant is live.
                let (live, acked) = tokio::join!(
                    biased;
                    async { tx.query_opt(&grant_live, &[&epoch]).await },
                    async { tx.execute(&ack, &[&ids, &now, &epoch]).await },
                );
                fence::require_live(grant, live.map_err(|e| map("check grant", e))?)?;
                let acked = acked.map_err(|e| map("ack", e))?;
                if acked < ids.len() as u64 {
                    // Some ids were not ours to ack: already settled (acking is
                    // idempotent), or pending under another claim (`Fenced`, and
                    // nothing is acked).
                    let rows = tx.query(SQL_LOCK_EVENTS, &[&ids]).await.map_err(|e| map("lock events", e))?;
                    fence::check_holders(grant, &rows)?;
                }
                tx.commit().await.map_err(|e| map("commit ack", e))
            })
            .await
    }

    async fn release(&self, grant: &LeaderGrant, ids: &[EventId]) -> Result<()> {
        self.inner
            .pool
            .bounded("release", async {
                let mut conn = self.inner.pool.get().await?;
                let tx = conn.client().transaction().await.map_err(|e| map("begin", e))?;
                let ids = fence::settleable(&tx, grant, ids).await?;
                tx.execute(
                    "UPDATE outbox_events SET attempts = greatest(attempts - 1, 0), lease_until = NULL
                 WHERE id = ANY($1) AND lease_until IS NOT NULL",
                    &[&ids],
                )
                .await
                .map_err(|e| map("release", e))?;
                tx.commit().await.map_err(|e| map("commit release", e))
            })
            .await
    }

    async fn retry_later(
        &self,
        grant: &LeaderGrant,
        id: EventId,
        at: Timestamp,
        error: &str,
        attempt: Attempt,
    ) -> Result<()> {
        self.inner
            .pool
            .bounded("retry later", async {
                let uncounted = attempt == Attempt::Uncounted;
                let mut conn = self.inner.pool.get().await?;
                let tx = conn.client().transaction().await.map_err(|e| map("begin", e))?;
                let ids = fence::settleable(&tx, grant, &[id]).await?;
                // An uncounted attempt takes back what the claim counted, as
                // `release` does: only for an event under a lease.
                tx.execute(
                    "UPDATE outbox_events SET next_attempt_at = $2, last_error = $3, lease_until = NULL,
                        attempts = CASE WHEN $4 AND lease_until IS NOT NULL THEN greatest(attempts - 1, 0)
                                        ELSE attempts END
                 WHERE id = ANY($1)",
                    &[&ids, &millis(at), &error, &uncounted],
                )
                .await
                .map_err(|e| map("retry later", e))?;
                tx.commit().await.map_err(|e| map("commit retry", e))
            })
            .await
    }

    async fn retry_now(&self, grant: &LeaderGrant) -> Result<u64> {
        self.inner
            .pool
            .bounded("retry now", async {
                let now = millis(self.now());
                let mut conn = self.inner.pool.get().await?;
                let tx = conn.client().transaction().await.map_err(|e| map("begin", e))?;
                // Shared leadership: any live grant may (the events are not the
                // grant's own, and the update takes no lease).
                fence::check_grant(&tx, grant).await?;
                let n = tx
                    .execute(
                        "UPDATE outbox_events SET next_attempt_at = $1
                     WHERE status = 0 AND last_error IS NOT NULL AND next_attempt_at > $1",
                        &[&now],
                    )
                    .await
                    .map_err(|e| map("retry now", e))?;
                tx.commit().await.map_err(|e| map("commit retry now", e))?;
                if n > 0 {
                    // Due now for every forwarder, not only the caller.
                    self.inner.notifier.notify();
                }
                Ok(n)
            })
            .await
    }

    async fn dead_letter(&self, grant: &LeaderGrant, id: EventId, error: &str) -> Result<()> {
        self.inner
            .pool
            .bounded("dead letter", async {
                let mut conn = self.inner.pool.get().await?;
                let tx = conn.client().transaction().await.map_err(|e| map("begin", e))?;
                let ids = fence::settleable(&tx, grant, &[id]).await?;
                tx.execute(
                "UPDATE outbox_events SET status = 1, last_error = $2, lease_until = NULL WHERE id = ANY($1)",
                &[&ids, &error],
            )
            .await
            .map_err(|e| map("dead letter", e))?;
                tx.commit().await.map_err(|e| map("commit dead letter", e))
            })
            .await
    }
}

#[async_trait]
impl InspectStore for PostgresStore {
    async fn stats(&self) -> Result<StoreStats> {
        self.inner
            .pool
            .bounded("stats", async {
                let now = millis(self.now());
                let mut conn = self.inner.pool.get().await?;
                let r = conn
                    .client()
                    .query_one(
                        "SELECT count(*) FILTER (WHERE status = 0),
                            count(*) FILTER (WHERE status = 0 AND lease_until > $1),
                            count(*) FILTER (WHERE status = 1),
                            count(*) FILTER (WHERE status = 2),
                            count(*) FILTER (WHERE status = 3),
                            min(created_at) FILTER (WHERE status = 0),
                            count(DISTINCT key) FILTER (WHERE status = 1 AND NOT skipped)
                     FROM outbox_events",
                        &[&now],
                    )
                    .await
                    .map_err(|e| map("stats", e))?;
                Ok(StoreStats {
                    pending: r.get::<_, i64>(0) as u64,
                    in_flight: r.get::<_, i64>(1) as u64,
                    dead: r.get::<_, i64>(2) as u64,
                    delivered: r.get::<_, i64>(3) as u64,
                    discarded: r.get::<_, i64>(4) as u64,
                    oldest_pending_at: r.get::<_, Option<i64>>(5).map(Timestamp::from_millis),
                    parked_keys: r.get::<_, i64>(6) as u64,
                })
            })
            .await
    }

    async fn list_pending(&self, limit: usize) -> Result<Vec<Envelope>> {
        self.inner.pool.bounded("list pending", async { self.list(STATUS_PENDING, limit).await }).await
    }

    async fn list_dead(&self, limit: usize) -> Result<Vec<Envelope>> {
        self.inner.pool.bounded("list dead", async { self.list(STATUS_DEAD, limit).await }).await
    }

    async fn delivery_info(&self, id: EventId) -> Result<Option<outbox_core::DeliveryInfo>> {
        self.inner
            .pool
            .bounded("delivery info", async {
                let mut conn = self.inner.pool.get().await?;
                let row = conn
                    .client()
                    .query_opt(
                        "SELECT lease_until, claimed_epoch, skipped FROM outbox_events WHERE id = $1",
                        &[&uuid(id)],
                    )
                    .await
                    .map_err(|e| map("delivery info", e))?;
                let Some(r) = row else { return Ok(None) };
                let lease: Option<i64> = r.try_get(0).map_err(|e| map("delivery info", e))?;
                let epoch: Option<i64> = r.try_get(1).map_err(|e| map("delivery info", e))?;
                let skipped: bool = r.try_get(2).map_err(|e| map("delivery info", e))?;
                Ok(Some(outbox_core::DeliveryInfo::new(
                    lease.map(Timestamp::from_millis),
                    epoch.map(|e| outbox_core::Epoch(e as u64)),
                    skipped,
                )))
            })
            .await
    }

    async fn list_by_status(&self, status: outbox_core::EventStatus, limit: usize) -> Result<Vec<Envelope>> {
        // The `status` column: 0 pending, 1 dead, 2 delivered, 3 discarded.
        let code = match status {
            outbox_core::EventStatus::Pending => STATUS_PENDING,
            outbox_core::EventStatus::Dead => STATUS_DEAD,
            outbox_core::EventStatus::Delivered => 2,
            _ => 3,
        };
        self.inner.pool.bounded("list by status", async { self.list(code, limit).await }).await
    }

    async fn requeue_dead(&self, ids: &[EventId]) -> Result<u64> {
        self.inner.pool.bounded("requeue", async {
            let now = millis(self.now());
            let ids: Vec<Uuid> = ids.iter().map(|i| uuid(*i)).collect();
            let mut conn = self.inner.pool.get().await?;
            conn.client()
                .execute(
                    "UPDATE outbox_events SET status = 0, attempts = 0, next_attempt_at = $2, claimed_epoch = NULL,
                     lease_until = NULL, skipped = false WHERE id = ANY($1) AND status + 0 = 1",
                    &[&ids, &now],
                )
                .await
                .map_err(|e| map("requeue", e))
        })
        .await
    }

    async fn discard_dead(&self, ids: &[EventId]) -> Result<u64> {
        self.inner.pool.bounded("discard", async {
            let now = millis(self.now());
            let ids: Vec<Uuid> = ids.iter().map(|i| uuid(*i)).collect();
            let mut conn = self.inner.pool.get().await?;
            conn.client()
                .execute(
                    // Status 3, the discard time where an ack puts its time.
                    "UPDATE outbox_events SET status = 3, delivered_at = $2, skipped = false, lease_until = NULL
                     WHERE id = ANY($1) AND status + 0 = 1",
                    &[&ids, &now],
                )
                .await
                .map_err(|e| map("discard", e))
        })
        .await
    }

    async fn skip_dead(&self, ids: &[EventId]) -> Result<u64> {
        self.inner.pool.bounded("skip", async {
            let ids: Vec<Uuid> = ids.iter().map(|i| uuid(*i)).collect();
            let mut conn = self.inner.pool.get().await?;
            conn.client()
                .execute(
                    "UPDATE outbox_events SET skipped = true WHERE id = ANY($1) AND status + 0 = 1 AND NOT skipped",
                    &[&ids],
                )
                .await
                .map_err(|e| map("skip", e))
        })
        .await
    }

    async fn prune_delivered(&self, before: Timestamp, limit: usize) -> Result<u64> {
        self.inner.pool.bounded("prune delivered", async {
            let mut conn = self.inner.pool.get().await?;
            conn.client()
                .execute(
                    // No index on the settled time (an ack would write to
                    // it): the inner scan walks the table, where the oldest
                    // rows, the first settled, come first. Delivered (2) and
                    // discarded (3) events, by ack or discard time.
                    "DELETE FROM outbox_events WHERE id = ANY(ARRAY(
                         SELECT id FROM outbox_events WHERE status IN (2, 3) AND delivered_at < $1 LIMIT $2))",
                    &[&millis(before), &limit_i64(limit)],
                )
                .await
                .map_err(|e| map("prune delivered", e))
        })
        .await
    }
}

#[async_trait]
impl InboxStore for PostgresStore {
    async fn is_processed(&self, consumer: &ConsumerId, origin: &ActorId, id: EventId) -> Result<bool> {
        self.inner
            .pool
            .bounded("read inbox", async {
                let mut conn = self.inner.pool.get().await?;
                Ok(conn
                    .client()
                    .query_opt(
                        "SELECT 1 FROM outbox_inbox WHERE consumer = $1 AND origin = $2 AND event_id = $3",
                        &[&consumer.as_str(), &origin.as_str(), &uuid(id)],
                    )
                    .await
                    .map_err(|e| map("read inbox", e))?
                    .is_some())
            })
            .await
    }

    async fn prune_inbox(&self, before: Timestamp, limit: usize) -> Result<u64> {
        self.inner.pool.bounded("prune inbox", async {
            let mut conn = self.inner.pool.get().await?;
            conn.client()
                .execute(
                    "DELETE FROM outbox_inbox WHERE ctid IN (
                         SELECT ctid FROM outbox_inbox WHERE processed_at < $1 ORDER BY processed_at LIMIT $2)",
                    &[&millis(before), &limit_i64(limit)],
                )
                .await
                .map_err(|e| map("prune inbox", e))
        })
        .await
    }
}

impl DurableStore for PostgresStore {
    fn capabilities(&self) -> Capabilities {
        Capabilities::new("postgres", true)
            .multi_process(true)
            .leadership(LeadershipMode::Shared)
            .limits(self.inner.limits)
            .delivery_info(true)
    }
}
