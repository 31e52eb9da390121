//! The PostgreSQL store: options, the store traits, commit wake-ups.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use outbox_core::{
    ActorId, Capabilities, ClaimRequest, Commit, CommitReceipt, ConsumerId, DeliveryStore, DurableStore,
    Envelope, Epoch, Error, EventId, Headers, InboxStore, InspectStore, LeaderGrant, LeaderStore,
    LeadershipMode, Limits, OrderingKey, Payload, PayloadKind, Result, SharedClock, StateSnapshot,
    StateStore, StoreStats, SystemClock, Timestamp, Version, async_trait,
};
use tokio_postgres::{AsyncMessage, Config, NoTls, Row, Transaction};
use uuid::Uuid;

use crate::error::map;
use crate::notify::Notifier;
use crate::pool::{Pool, quote_ident};
use crate::schema;

/// The NOTIFY channel a commit with events signals on.
pub const COMMIT_CHANNEL: &str = "outbox_commit";

const STATUS_PENDING: i16 = 0;
const STATUS_DEAD: i16 = 1;

const SQL_INSERT_STATE: &str =
    "INSERT INTO outbox_state (actor, version, snapshot, updated_at) VALUES ($1, 1, $2, $3)
     ON CONFLICT (actor) DO NOTHING";
const SQL_UPDATE_STATE: &str = "UPDATE outbox_state SET version = $4, snapshot = $2, updated_at = $3
     WHERE actor = $1 AND version = $5";
const SQL_FIND_IDS: &str = "SELECT id FROM outbox_events WHERE id = ANY($1) LIMIT 1";
/// Inserts the commit's events, their ordering keys locked first.
///
/// The keys are locked with a transaction-level advisory lock each
/// (namespaced by schema), taken in one fixed order so two commits never
/// deadlock, by the `WHERE` clause's subquery: it runs once, before the
/// first row (and its sequence number) is made. Commits sharing a key
/// serialize here, so its sequence numbers follow commit order, and a
/// claimer skips a key with a commit in flight. (Schema 1 upserted a row
/// per key instead: a new row version per commit, about 20% of the
/// commit's cost.) An id already stored (or given twice) fails the insert
/// on the id's unique index (see [`is_duplicate_id`]); a plain insert, as
/// `ON CONFLICT DO NOTHING` costs a speculative insertion and an extra WAL
/// record per event.
const SQL_INSERT_EVENTS: &str =
    "INSERT INTO outbox_events (id, origin, key, event_type, payload_kind, payload, headers,
                                 schema_version, created_at, next_attempt_at)
     SELECT id, origin, key, event_type, kind, payload, headers, sv, $9, due
     FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[],
                 $7::text[], $8::int4[], $10::int8[])
          WITH ORDINALITY AS t(id, origin, key, event_type, kind, payload, headers, sv, due, n)
     WHERE (SELECT count(pg_advisory_xact_lock(hashtext(current_schema()), h))
            FROM (SELECT DISTINCT hashtext(k) AS h FROM unnest($3::text[]) AS k ORDER BY 1) AS s) >= 0
     ORDER BY n";
const SQL_INSERT_MARK: &str =
    "INSERT INTO outbox_inbox (consumer, origin, event_id, processed_at) VALUES ($1, $2, $3, $4)
     ON CONFLICT DO NOTHING";

const SQL_GRANT_LIVE: &str = "SELECT 1 FROM outbox_leaders WHERE epoch = $1 AND NOT released";
// Statements that pick rows by id test `status + 0`, not `status`: a bare
// `status = 0` matches the pending partial index, and with statistics gone
// stale (a backlog that grew since the last ANALYZE) the planner reads the
// whole backlog through it (measured: 18,746 rows for a 256-id ack) instead
// of looking the ids up in their unique index.
const SQL_LOCK_EVENTS: &str = "SELECT id, claimed_epoch FROM outbox_events WHERE id = ANY($1) AND status + 0 = 0 ORDER BY seq FOR UPDATE";
const SQL_ACK: &str = "UPDATE outbox_events SET status = 2, delivered_at = $2, lease_until = NULL
     WHERE id = ANY($1) AND status + 0 = 0 AND claimed_epoch = $3";
/// The first `$2` claimable key heads (a key's first not-done event, due
/// and not leased), in commit order, their keys' advisory locks taken (the
/// `CASE` makes the lock the last test, so only heads are locked); keys
/// held by another claim or a commit in flight are skipped and the scan
/// goes on.
///
/// "Is `e` its key's head" is a scalar subquery (`LIMIT 1` on the by-key
/// index), not `NOT EXISTS`, and the claim runs under [`SQL_CLAIM_PLAN`]:
/// with statistics gone stale (a backlog that grew since the last ANALYZE)
/// the planner otherwise reads the whole backlog through a bitmap scan or
/// a hash anti-join and sorts it, measured at 100-170 ms per claim against
/// 2-3 ms for walking the pending index in order and stopping at `$2`.
///
/// Each head comes with its id and the sequence number of its key's next
/// not-done event (`NULL` if none), which tells [`PostgresStore::claim`]
/// whether a key can add more than its head to the batch.
const SQL_CLAIM_KEYS: &str = "SELECT e.key, e.seq, e.id,
            (SELECT p.seq FROM outbox_events p WHERE p.key = e.key AND p.status <> 2 AND p.seq > e.seq
             ORDER BY p.key, p.seq LIMIT 1)
     FROM outbox_events e
     WHERE e.status = 0
       AND CASE WHEN e.next_attempt_at <= $1 AND (e.lease_until IS NULL OR e.lease_until <= $1)
                     AND e.seq = (SELECT p.seq FROM outbox_events p
                                  WHERE p.key = e.key AND p.status <> 2 AND (p.status = 0 OR $3)
                                  ORDER BY p.key, p.seq LIMIT 1)
                THEN pg_try_advisory_xact_lock(hashtext(current_schema()), hashtext(e.key))
                ELSE false END
     ORDER BY e.seq LIMIT $2";
/// Transaction-local planner settings for the claim: no sorting or bitmap
/// scans where an ordered index walk exists (see [`SQL_CLAIM_KEYS`]).
///
/// It also commits the claim without waiting for its WAL flush
/// (`synchronous_commit = off`): a claim is a lease, and one lost in a
/// database crash leaves its events claimable again, which at-least-once
/// delivery allows (the broker's dedup window and the consumers' inbox
/// absorb the repeat). Acks and commits stay synchronous.
///
/// And it turns JIT compilation off: the heads walk's estimated cost
/// (the planner cannot know it stops at `$2`) is over `jit_above_cost`,
/// and compiling its expressions took 12 ms of a claim that runs in 2-4.
const SQL_CLAIM_PLAN: &str =
    "SELECT set_config('enable_sort', 'off', true), set_config('enable_bitmapscan', 'off', true),
            set_config('synchronous_commit', 'off', true), set_config('jit', 'off', true)";
/// Back to the planner defaults (the pool's connections run with them)
/// for the rest of the claim.
const SQL_CLAIM_REPLAN: &str =
    "SELECT set_config('enable_sort', 'on', true), set_config('enable_bitmapscan', 'on', true)";
static SQL_CLAIM: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH open AS (
             SELECT o.seq, o.id, o.key, o.ok
             FROM unnest($2::text[]) AS k(key)
             CROSS JOIN LATERAL (
                 SELECT seq, id, key,
                        (status = 0 AND next_attempt_at <= $1 AND (lease_until IS NULL OR lease_until <= $1)) AS ok
                 FROM outbox_events
                 WHERE key = k.key AND status <> 2 AND (status = 0 OR ($3 AND status = 1)) AND seq <= $7
                 ORDER BY seq LIMIT $4) o),
         runs AS (
             SELECT seq, id, sum(CASE WHEN ok THEN 0 ELSE 1 END) OVER (PARTITION BY key ORDER BY seq) AS bad
             FROM open),
         pick AS (SELECT id FROM runs WHERE bad = 0 ORDER BY seq LIMIT $4)
         UPDATE outbox_events e
         SET attempts = e.attempts + 1, claimed_epoch = $5, lease_until = $6
         FROM pick WHERE e.id = pick.id
         RETURNING e.seq, {}",
        returned_cols()
    )
});
/// The claim when no locked key has more than its head among the first
/// `limit` claimable events: the heads are leased by id, each checked
/// again in this statement's fresh snapshot (a head another claim leased
/// and committed after the heads walk's snapshot was taken is left out).
static SQL_CLAIM_HEADS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "UPDATE outbox_events e
         SET attempts = e.attempts + 1, claimed_epoch = $2, lease_until = $3
         WHERE e.id = ANY($4) AND e.status + 0 = 0 AND e.next_attempt_at <= $1
           AND (e.lease_until IS NULL OR e.lease_until <= $1)
         RETURNING e.seq, {}",
        returned_cols()
    )
});

fn returned_cols() -> String {
    ENVELOPE_COLS.split(", ").map(|c| format!("e.{c}")).collect::<Vec<_>>().join(", ")
}
const ENVELOPE_COLS: &str = "id, origin, key, event_type, payload_kind, payload, headers, schema_version, created_at, attempts, next_attempt_at, last_error";

/// How to open a [`PostgresStore`].
#[derive(Clone)]
pub struct PostgresOptions {
    url: String,
    schema: String,
    pool_size: usize,
    clock: SharedClock,
    limits: Limits,
}

impl fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl PostgresOptions {
    /// Defaults for the database at `url` (a libpq connection string or a
    /// `postgresql://` URL): schema `public`, 8 pooled connections, system
    /// clock.
    pub fn new(url: impl Into<String>) -> Self {
        PostgresOptions {
            url: url.into(),
            schema: "public".into(),
            pool_size: 8,
            clock: SystemClock::shared(),
            limits: Limits::default(),
        }
    }

    /// Puts the outbox tables in `schema` (created if missing).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Most connections open at once (at least 1).
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n.max(1);
        self
    }

    /// Reads time from `clock` (every time the store writes comes from
    /// it, not from the server's `now()`).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Sets the limits commits are checked against.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Connects, creates the schema if needed and migrates it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a malformed URL, [`Error::Unavailable`]
    /// when the server cannot be reached, [`Error::SchemaTooNew`] for a
    /// schema written by a newer version (left untouched).
    pub async fn open(self) -> Result<PostgresStore> {
        let config = Config::from_str(&self.url)
            .map_err(|e| Error::invalid_input(format!("not a PostgreSQL connection string: {e}")))?;
        let pool = Pool::new(config.clone(), &self.schema, self.pool_size);
        {
            let mut first = pool.connect().await?;
            if self.schema != "public" {
                first
                    .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(&self.schema)))
                    .await
                    .map_err(|e| map("create schema", e))?;
            }
            schema::migrate(&mut first, &self.schema).await?;
        }
        Ok(PostgresStore {
            inner: Arc::new(Inner {
                pool,
                notifier: Notifier::start(config.clone(), self.schema.clone()),
                config,
                schema: self.schema,
                clock: self.clock,
                limits: self.limits,
            }),
        })
    }
}

/// The outbox store on PostgreSQL, for many processes sharing one
/// database.
///
/// - A commit is one transaction: the state row with an optimistic version
///   check, the events and the inbox marks; after it, a `NOTIFY` on
///   [`COMMIT_CHANNEL`] that forwarders [listen](PostgresStore::listen)
///   for.
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
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    config: Config,
    schema: String,
    clock: SharedClock,
    limits: Limits,
    notifier: Notifier,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore").field("schema", &self.inner.schema).finish_non_exhaustive()
    }
}

/// A running `LISTEN` on [`COMMIT_CHANNEL`]; dropping it stops listening.
#[derive(Debug)]
pub struct CommitListener {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CommitListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn uuid(id: EventId) -> Uuid {
    Uuid::from_bytes(id.to_bytes())
}

fn millis(t: Timestamp) -> i64 {
    t.as_millis()
}

fn limit_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn envelope(r: &Row) -> Result<Envelope> {
    envelope_at(r, 0)
}

impl PostgresStore {
    /// Opens the store at `url` with default options.
    pub async fn open(url: &str) -> Result<Self> {
        PostgresOptions::new(url).open().await
    }

    /// Options for the database at `url`.
    pub fn options(url: impl Into<String>) -> PostgresOptions {
        PostgresOptions::new(url)
    }

    /// The `DuplicateEvent` for a commit whose insert skipped an id: one
    /// already stored, or one given twice in the commit.
    async fn duplicate(&self, conn: &mut crate::pool::Conn<'_>, commit: &Commit, ids: &[Uuid]) -> Error {
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

    /// Listens for commits (any process's, to this store's schema) on a
    /// dedicated connection and calls `on_commit` for each; for waking a
    /// forwarder (`forwarder.waker().wake()`).
    ///
    /// The first connection's failure is returned. A connection lost later
    /// is reopened in the background (backing off up to 5 s), and
    /// `on_commit` is called once after every reconnect, since commits may
    /// have been missed meanwhile; the forwarder's polling covers the gap.
    pub async fn listen(&self, on_commit: impl Fn() + Send + Sync + 'static) -> Result<CommitListener> {
        let on_commit: Arc<dyn Fn() + Send + Sync> = Arc::new(on_commit);
        let config = self.inner.config.clone();
        let schema = self.inner.schema.clone();
        let first = listen_once(&config).await?;
        let task = tokio::spawn(async move {
            let mut conn = Some(first);
            let mut delay = Duration::from_millis(50);
            loop {
                if let Some((client, messages)) = conn.take() {
                    delay = Duration::from_millis(50);
                    relay(client, messages, &schema, &*on_commit).await;
                    tracing::warn!(target: "outbox", "postgres LISTEN connection lost; reconnecting");
                }
                tokio::time::sleep(delay).await;
                match listen_once(&config).await {
                    Ok(c) => {
                        conn = Some(c);
                        on_commit();
                    }
                    Err(e) => {
                        tracing::warn!(target: "outbox", error = %e, "postgres LISTEN reconnect failed");
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
        Ok(CommitListener { task })
    }

    fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }
}

type Notifications = std::pin::Pin<
    Box<dyn futures::Stream<Item = std::result::Result<AsyncMessage, tokio_postgres::Error>> + Send>,
>;

/// Opens a connection and runs `LISTEN` on it; the connection's messages
/// are returned as a stream (which drives the connection).
async fn listen_once(config: &Config) -> Result<(tokio_postgres::Client, Notifications)> {
    let (client, mut connection) = config.connect(NoTls).await.map_err(|e| map("connect the listener", e))?;
    let mut messages: Notifications =
        Box::pin(futures::stream::poll_fn(move |cx| connection.poll_message(cx)));
    let sql = format!("LISTEN {COMMIT_CHANNEL}");
    {
        let listen = client.batch_execute(&sql);
        tokio::pin!(listen);
        // The LISTEN needs the connection driven while it runs.
        loop {
            tokio::select! {
                r = &mut listen => {
                    r.map_err(|e| map("listen", e))?;
                    break;
                }
                m = messages.next() => match m {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(map("listen", e)),
                    None => {
                        let message = "postgres LISTEN connection closed".into();
                        return Err(Error::Unavailable { message, source: None });
                    }
                }
            }
        }
    }
    Ok((client, messages))
}

/// Calls `on_commit` for each notification about `schema` until the
/// connection ends.
async fn relay(
    _client: tokio_postgres::Client,
    mut messages: Notifications,
    schema: &str,
    on_commit: &(dyn Fn() + Send + Sync),
) {
    while let Some(m) = messages.next().await {
        match m {
            Ok(AsyncMessage::Notification(n)) if n.payload() == schema => on_commit(),
            Ok(_) => {}
            Err(_) => break,
        }
    }
}

/// Whether `e` is an insert refused by the event id's unique index.
fn is_duplicate_id(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|d| {
        *d.code() == tokio_postgres::error::SqlState::UNIQUE_VIOLATION
            && d.constraint() == Some("outbox_events_id_key")
    })
}

/// `Fenced` unless `grant`'s epoch is live (granted and not released).
async fn check_grant(tx: &Transaction<'_>, grant: &LeaderGrant) -> Result<()> {
    let epoch = grant.epoch.0 as i64;
    let live = tx
        .query_opt("SELECT 1 FROM outbox_leaders WHERE epoch = $1 AND NOT released", &[&epoch])
        .await
        .map_err(|e| map("check grant", e))?;
    if live.is_none() {
        return Err(Error::Fenced { epoch: grant.epoch, current: None });
    }
    Ok(())
}

/// Locks the pending rows of `ids` and checks that `grant` may settle each:
/// `Fenced` if one is held by another claim. Returns the ids to settle.
async fn settleable(tx: &Transaction<'_>, grant: &LeaderGrant, ids: &[EventId]) -> Result<Vec<Uuid>> {
    check_grant(tx, grant).await?;
    let ids: Vec<Uuid> = ids.iter().map(|i| uuid(*i)).collect();
    let rows = tx.query(SQL_LOCK_EVENTS, &[&ids]).await.map_err(|e| map("lock events", e))?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let claimed: Option<i64> = r.get(1);
        if claimed != Some(grant.epoch.0 as i64) {
            return Err(Error::Fenced { epoch: grant.epoch, current: claimed.map(|e| Epoch(e as u64)) });
        }
        out.push(r.get(0));
    }
    Ok(out)
}

#[async_trait]
impl StateStore for PostgresStore {
    async fn put_state_and_events(&self, commit: Commit) -> Result<CommitReceipt> {
        commit.validate(&self.inner.limits)?;
        let now = self.now();
        let at = millis(now);
        // Everything is encoded before the transaction opens.
        let ids: Vec<Uuid> = commit.events.iter().map(|e| uuid(e.id)).collect();
        let origins: Vec<&str> = commit.events.iter().map(|e| e.origin.as_str()).collect();
        let ekeys: Vec<&str> = commit.events.iter().map(|e| e.key.as_str()).collect();
        let types: Vec<&str> = commit.events.iter().map(|e| e.event_type.as_str()).collect();
        let kinds: Vec<&str> = commit.events.iter().map(|e| e.payload.kind().as_str()).collect();
        let payloads: Vec<&[u8]> = commit.events.iter().map(|e| e.payload.as_bytes()).collect();
        let headers = commit
            .events
            .iter()
            .map(|e| serde_json::to_string(&e.headers))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let versions: Vec<i32> = commit.events.iter().map(|e| e.schema_version as i32).collect();
        let due: Vec<i64> =
            commit.events.iter().map(|e| e.not_before.map_or(at, |t| millis(t).max(at))).collect();
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
                    tx.execute(
                        &insert_events,
                        &[&ids, &origins, &ekeys, &types, &kinds, &payloads, &headers, &versions, &at, &due],
                    )
                    .await
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
            return Err(self.duplicate(&mut conn, &commit, &ids).await);
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
        Ok(CommitReceipt { version, committed_at: now })
    }

    async fn load_state(&self, actor: &ActorId) -> Result<Option<StateSnapshot>> {
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
    }
}

#[async_trait]
impl LeaderStore for PostgresStore {
    async fn acquire_leadership(&self, holder: &str, ttl: Duration) -> Result<Option<LeaderGrant>> {
        if ttl.is_zero() {
            return Err(Error::invalid_input("leadership ttl must be positive"));
        }
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
    }

    async fn renew_leadership(&self, grant: &LeaderGrant, ttl: Duration) -> Result<LeaderGrant> {
        if ttl.is_zero() {
            return Err(Error::invalid_input("leadership ttl must be positive"));
        }
        let expires_at = self.now().saturating_add(ttl);
        let mut conn = self.inner.pool.get().await?;
        let n = conn
            .client()
            .execute(
                "UPDATE outbox_leaders SET expires_at = $2 WHERE epoch = $1 AND NOT released",
                &[&(grant.epoch.0 as i64), &millis(expires_at)],
            )
            .await
            .map_err(|e| map("renew", e))?;
        if n == 0 {
            return Err(Error::Fenced { epoch: grant.epoch, current: None });
        }
        Ok(LeaderGrant { expires_at, ..grant.clone() })
    }

    async fn release_leadership(&self, grant: &LeaderGrant) -> Result<()> {
        let mut conn = self.inner.pool.get().await?;
        conn.client()
            .execute("UPDATE outbox_leaders SET released = true WHERE epoch = $1", &[&(grant.epoch.0 as i64)])
            .await
            .map_err(|e| map("release", e))?;
        Ok(())
    }
}

#[async_trait]
impl DeliveryStore for PostgresStore {
    async fn claim(&self, grant: &LeaderGrant, request: ClaimRequest) -> Result<Vec<Envelope>> {
        if request.lease.is_zero() {
            return Err(Error::invalid_input("claim lease must be positive"));
        }
        if request.limit == 0 {
            return Ok(Vec::new());
        }
        let now = millis(self.now());
        let until = millis(self.now().saturating_add(request.lease));
        let limit = limit_i64(request.limit);
        let epoch = grant.epoch.0 as i64;
        let mut conn = self.inner.pool.get().await?;
        let [grant_live, plan, claim_keys, replan, claim, heads] = conn
            .prepare([
                SQL_GRANT_LIVE,
                SQL_CLAIM_PLAN,
                SQL_CLAIM_KEYS,
                SQL_CLAIM_REPLAN,
                SQL_CLAIM.as_str(),
                SQL_CLAIM_HEADS.as_str(),
            ])
            .await?;
        let tx = conn.client().transaction().await.map_err(|e| map("begin", e))?;
        // 1. (pipelined with the grant check) The keys of the first `limit`
        //    claimable key heads, in commit order, locked; keys another
        //    forwarder (or a commit in flight) holds, or whose head is
        //    leased or not yet due, are passed over.
        let (live, planned, rows, replanned) = tokio::join!(
            biased;
            async { tx.query_opt(&grant_live, &[&epoch]).await },
            async { tx.query_one(&plan, &[]).await },
            async { tx.query(&claim_keys, &[&now, &limit, &request.park_dead_keys]).await },
            async { tx.query_one(&replan, &[]).await },
        );
        planned.map_err(|e| map("set claim plan", e))?;
        replanned.map_err(|e| map("reset claim plan", e))?;
        if live.map_err(|e| map("check grant", e))?.is_none() {
            return Err(Error::Fenced { epoch: grant.epoch, current: None });
        }
        let rows = rows.map_err(|e| map("lock keys", e))?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        // With `limit` heads in hand (each claimable), nothing past the
        // last of them can be among the `limit` first claimable events.
        let bound: i64 = if rows.len() as i64 >= limit {
            rows.iter().map(|r| r.get::<_, i64>(1)).max().unwrap_or(i64::MAX)
        } else {
            i64::MAX
        };
        // 2. A fresh snapshot (READ COMMITTED). If no locked key has a
        //    second not-done event within the bound, the batch is the
        //    heads; otherwise, within the locked keys, the prefix of each
        //    key's not-done events that is claimable now. (A key's later
        //    commits take sequence numbers after its earlier ones, since
        //    committers hold the key's lock, so an event committed since the
        //    heads walk can only extend a key's run, never precede its head.)
        let heads_only = rows.iter().all(|r| r.get::<_, Option<i64>>(3).is_none_or(|next| next > bound));
        let rows = if heads_only {
            let ids: Vec<Uuid> = rows.iter().map(|r| r.get(2)).collect();
            tx.query(&heads, &[&now, &epoch, &until, &ids]).await
        } else {
            let keys: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            tx.query(&claim, &[&now, &keys, &request.park_dead_keys, &limit, &epoch, &until, &bound]).await
        }
        .map_err(|e| map("claim", e))?;
        tx.commit().await.map_err(|e| map("commit claim", e))?;
        let mut out: Vec<(i64, Envelope)> = Vec::with_capacity(rows.len());
        for r in &rows {
            let seq: i64 = r.get(0);
            out.push((seq, envelope_at(r, 1)?));
        }
        out.sort_by_key(|(seq, _)| *seq);
        Ok(out.into_iter().map(|(_, e)| e).collect())
    }

    async fn ack(&self, grant: &LeaderGrant, ids: &[EventId]) -> Result<()> {
        let now = millis(self.now());
        let epoch = grant.epoch.0 as i64;
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
        if live.map_err(|e| map("check grant", e))?.is_none() {
            return Err(Error::Fenced { epoch: grant.epoch, current: None });
        }
        let acked = acked.map_err(|e| map("ack", e))?;
        if acked < ids.len() as u64 {
            // Some ids were not ours to ack: already settled (acking is
            // idempotent), or pending under another claim (`Fenced`, and
            // nothing is acked).
            for r in tx.query(SQL_LOCK_EVENTS, &[&ids]).await.map_err(|e| map("lock events", e))? {
                let claimed: Option<i64> = r.get(1);
                if claimed != Some(epoch) {
                    return Err(Error::Fenced {
                        epoch: grant.epoch,
                        current: claimed.map(|e| Epoch(e as u64)),
                    });
                }
            }
        }
        tx.commit().await.map_err(|e| map("commit ack", e))
    }

    async fn release(&self, grant: &LeaderGrant, ids: &[EventId]) -> Result<()> {
        let mut conn = self.inner.pool.get().await?;
        let tx = conn.client().transaction().await.map_err(|e| map("begin", e))?;
        let ids = settleable(&tx, grant, ids).await?;
        tx.execute(
            "UPDATE outbox_events SET attempts = greatest(attempts - 1, 0), lease_until = NULL
             WHERE id = ANY($1) AND lease_until IS NOT NULL",
            &[&ids],
        )
        .await
        .map_err(|e| map("release", e))?;
        tx.commit().await.map_err(|e| map("commit release", e))
    }

    async fn retry_later(&self, grant: &LeaderGrant, id: EventId, at: Timestamp, error: &str) -> Result<()> {
        let mut conn = self.inner.pool.get().await?;
        let tx = conn.client().transaction().await.map_err(|e| map("begin", e))?;
        let ids = settleable(&tx, grant, &[id]).await?;
        tx.execute(
            "UPDATE outbox_events SET next_attempt_at = $2, last_error = $3, lease_until = NULL WHERE id = ANY($1)",
            &[&ids, &millis(at), &error],
        )
        .await
        .map_err(|e| map("retry later", e))?;
        tx.commit().await.map_err(|e| map("commit retry", e))
    }

    async fn dead_letter(&self, grant: &LeaderGrant, id: EventId, error: &str) -> Result<()> {
        let mut conn = self.inner.pool.get().await?;
        let tx = conn.client().transaction().await.map_err(|e| map("begin", e))?;
        let ids = settleable(&tx, grant, &[id]).await?;
        tx.execute(
            "UPDATE outbox_events SET status = 1, last_error = $2, lease_until = NULL WHERE id = ANY($1)",
            &[&ids, &error],
        )
        .await
        .map_err(|e| map("dead letter", e))?;
        tx.commit().await.map_err(|e| map("commit dead letter", e))
    }
}

/// Decodes [`ENVELOPE_COLS`] starting at column `at`.
fn envelope_at(r: &Row, at: usize) -> Result<Envelope> {
    let bad = |what: &str| Error::Corrupted { message: format!("postgres outbox row: {what}"), source: None };
    let get_s = |i: usize| r.try_get::<_, String>(at + i).map_err(|e| map("read column", e));
    let id: Uuid = r.try_get(at).map_err(|e| map("read id", e))?;
    let headers: Headers =
        serde_json::from_str(&get_s(6)?).map_err(|e| Error::corrupted("stored headers", e))?;
    Ok(Envelope {
        id: EventId::from_bytes(*id.as_bytes()),
        origin: ActorId::new(get_s(1)?).map_err(|_| bad("origin"))?,
        key: OrderingKey::new(get_s(2)?).map_err(|_| bad("key"))?,
        event_type: get_s(3)?,
        payload: Payload::from_stored(
            PayloadKind::parse(&get_s(4)?)?,
            r.try_get(at + 5).map_err(|e| map("read payload", e))?,
        )?,
        headers,
        schema_version: r.try_get::<_, i32>(at + 7).map_err(|e| map("read schema version", e))? as u32,
        created_at: Timestamp::from_millis(r.try_get(at + 8).map_err(|e| map("read created_at", e))?),
        attempts: r.try_get::<_, i32>(at + 9).map_err(|e| map("read attempts", e))? as u32,
        next_attempt_at: Timestamp::from_millis(
            r.try_get(at + 10).map_err(|e| map("read next_attempt_at", e))?,
        ),
        last_error: r.try_get(at + 11).map_err(|e| map("read last_error", e))?,
    })
}

#[async_trait]
impl InspectStore for PostgresStore {
    async fn stats(&self) -> Result<StoreStats> {
        let now = millis(self.now());
        let mut conn = self.inner.pool.get().await?;
        let r = conn
            .client()
            .query_one(
                "SELECT count(*) FILTER (WHERE status = 0),
                        count(*) FILTER (WHERE status = 0 AND lease_until > $1),
                        count(*) FILTER (WHERE status = 1),
                        count(*) FILTER (WHERE status = 2),
                        min(created_at) FILTER (WHERE status = 0)
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
            oldest_pending_at: r.get::<_, Option<i64>>(4).map(Timestamp::from_millis),
        })
    }

    async fn list_pending(&self, limit: usize) -> Result<Vec<Envelope>> {
        self.list(STATUS_PENDING, limit).await
    }

    async fn list_dead(&self, limit: usize) -> Result<Vec<Envelope>> {
        self.list(STATUS_DEAD, limit).await
    }

    async fn requeue_dead(&self, ids: &[EventId]) -> Result<u64> {
        let now = millis(self.now());
        let ids: Vec<Uuid> = ids.iter().map(|i| uuid(*i)).collect();
        let mut conn = self.inner.pool.get().await?;
        conn.client()
            .execute(
                "UPDATE outbox_events SET status = 0, attempts = 0, next_attempt_at = $2, claimed_epoch = NULL,
                 lease_until = NULL WHERE id = ANY($1) AND status + 0 = 1",
                &[&ids, &now],
            )
            .await
            .map_err(|e| map("requeue", e))
    }

    async fn prune_delivered(&self, before: Timestamp, limit: usize) -> Result<u64> {
        let mut conn = self.inner.pool.get().await?;
        conn.client()
            .execute(
                // No index on the delivered time (an ack would write to
                // it): the inner scan walks the table, where the oldest
                // rows, the first delivered, come first.
                "DELETE FROM outbox_events WHERE id = ANY(ARRAY(
                     SELECT id FROM outbox_events WHERE status = 2 AND delivered_at < $1 LIMIT $2))",
                &[&millis(before), &limit_i64(limit)],
            )
            .await
            .map_err(|e| map("prune delivered", e))
    }
}

impl PostgresStore {
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
        rows.iter().map(envelope).collect()
    }
}

#[async_trait]
impl InboxStore for PostgresStore {
    async fn is_processed(&self, consumer: &ConsumerId, origin: &ActorId, id: EventId) -> Result<bool> {
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
    }

    async fn prune_inbox(&self, before: Timestamp, limit: usize) -> Result<u64> {
        let mut conn = self.inner.pool.get().await?;
        conn.client()
            .execute(
                "DELETE FROM outbox_inbox WHERE ctid IN (
                     SELECT ctid FROM outbox_inbox WHERE processed_at < $1 ORDER BY processed_at LIMIT $2)",
                &[&millis(before), &limit_i64(limit)],
            )
            .await
            .map_err(|e| map("prune inbox", e))
    }
}

impl DurableStore for PostgresStore {
    fn capabilities(&self) -> Capabilities {
        Capabilities::new("postgres", true)
            .multi_process(true)
            .leadership(LeadershipMode::Shared)
            .limits(self.inner.limits)
    }
}
