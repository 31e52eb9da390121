//! The IndexedDB store.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use indexed_db_futures::database::Database;
use indexed_db_futures::object_store::ObjectStore;
use indexed_db_futures::prelude::*;
use indexed_db_futures::transaction::{
    Transaction, TransactionDurability, TransactionMode, TransactionOptions,
};
use js_sys::{Array, Uint8Array};
use outbox_core::codec::{
    PendingEntry, Reader, Row, Status, Writer, corrupt, decode_pending, decode_row, encode_pending,
    encode_row,
};
use outbox_core::{
    ActorId, Capabilities, ClaimRequest, Commit, CommitReceipt, ConsumerId, DeliveryStore, DurableStore,
    Envelope, Epoch, Error, EventId, InboxStore, InspectStore, LeaderGrant, LeaderStore, LeadershipMode,
    Limits, OrderingKey, Result, SharedClock, StateSnapshot, StateStore, StoreStats, SystemClock, Timestamp,
    Version, async_trait,
};
use wasm_bindgen::{JsCast, JsValue};

use crate::error::{is, map, map_open};

/// The schema version this build writes: the IndexedDB database version.
/// A database at a higher version is refused with
/// [`Error::SchemaTooNew`] and left untouched.
pub const SCHEMA_VERSION: u32 = 1;

const META: &str = "meta";
const STATE: &str = "state";
const EVENTS: &str = "events";
const IDS: &str = "ids";
const PENDING: &str = "pending";
const DEAD: &str = "dead";
const DELIVERED: &str = "delivered";
const INBOX: &str = "inbox";
const INBOX_AT: &str = "inbox_at";
const ALL: [&str; 9] = [META, STATE, EVENTS, IDS, PENDING, DEAD, DELIVERED, INBOX, INBOX_AT];

const NEXT_SEQ: &str = "next_seq";
const LEADER: &str = "leader";
const LAST_EPOCH: &str = "last_epoch";

/// How hard a commit's transaction presses the data to disk: the
/// IndexedDB transaction durability hint.
///
/// - [`Durability::Strict`] (the default): the browser reports the
///   transaction complete only after the data is flushed to disk, so a
///   commit that returned `Ok` survives a power loss. Slower: one flush
///   per commit.
/// - [`Durability::Relaxed`]: complete once the browser has the data; it
///   survives the tab and the browser process crashing, not necessarily
///   an operating-system crash or power loss. Much faster.
/// - [`Durability::BrowserDefault`]: whatever the browser does without a
///   hint (Chromium: relaxed; Firefox: strict).
///
/// Browsers that do not know the hint ignore it (and behave as their
/// default).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// Flushed to disk before a commit returns.
    #[default]
    Strict,
    /// Handed to the browser before a commit returns.
    Relaxed,
    /// No hint.
    BrowserDefault,
}

/// How to open an [`IdbStore`].
pub struct IdbOptions {
    name: String,
    durability: Durability,
    clock: SharedClock,
    limits: Limits,
}

impl fmt::Debug for IdbOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdbOptions")
            .field("name", &self.name)
            .field("durability", &self.durability)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl IdbOptions {
    /// Options for the database `name` (one per application and origin;
    /// every tab opening the same name shares the outbox).
    pub fn new(name: impl Into<String>) -> Self {
        IdbOptions {
            name: name.into(),
            durability: Durability::default(),
            clock: SystemClock::shared(),
            limits: Limits::default(),
        }
    }

    /// Sets the durability hint of writing transactions.
    pub fn durability(mut self, d: Durability) -> Self {
        self.durability = d;
        self
    }

    /// Sets the clock the store reads (tests move a manual one).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Sets the limits commits are checked against.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Opens (creating or upgrading) the database.
    ///
    /// # Errors
    ///
    /// [`Error::SchemaTooNew`] when the database was written by a newer
    /// build; [`Error::Unsupported`] where there is no `indexedDB`;
    /// [`Error::PermissionDenied`] where storage is blocked;
    /// [`Error::Corrupted`] when a database of that name lacks the
    /// outbox's object stores.
    pub async fn open(self) -> Result<IdbStore> {
        let opened = Database::open(self.name.as_str())
            .with_version(SCHEMA_VERSION)
            .with_on_upgrade_needed(|ev, db| {
                // Version 0 -> 1: the first schema. Later versions add
                // steps here, each from the version before.
                if ev.old_version() < 1.0 {
                    for name in ALL {
                        db.create_object_store(name).build()?;
                    }
                }
                Ok(())
            })
            .await;
        let db = match opened {
            Ok(db) => db,
            Err(indexed_db_futures::error::OpenDbError::Base(e)) if is(&e, "VersionError") => {
                return Err(Error::SchemaTooNew {
                    found: stored_version(&self.name).await,
                    supported: SCHEMA_VERSION,
                });
            }
            Err(e) => return Err(map_open(e)),
        };
        let names: Vec<String> = db.object_store_names().collect();
        if let Some(missing) = ALL.iter().find(|n| !names.iter().any(|x| x == **n)) {
            return Err(Error::Corrupted {
                message: format!(
                    "indexeddb database \"{}\" (version {}) has no \"{missing}\" object store: not an outbox database",
                    self.name,
                    db.version()
                ),
                source: None,
            });
        }
        let persisted = crate::platform::storage_persisted().await;
        Ok(IdbStore {
            commits: crate::platform::Channel::open(&crate::leader::channel_name(&self.name)),
            db,
            name: self.name,
            durability: self.durability,
            clock: self.clock,
            limits: self.limits,
            persisted,
            granted: std::cell::Cell::new(0),
        })
    }
}

/// The version of the database `name` as stored (opened without asking
/// for a version, which never upgrades).
async fn stored_version(name: &str) -> u32 {
    match Database::open(name).await {
        Ok(db) => {
            let v = db.version() as u32;
            db.close();
            v
        }
        Err(_) => 0,
    }
}

/// The outbox in IndexedDB: state, events, inbox marks and leadership in
/// one database, each commit one `readwrite` transaction over the object
/// stores it touches.
///
/// Every request of a transaction is an IndexedDB request: values are
/// encoded before the transaction opens, so it never awaits anything else
/// (which would let the browser auto-commit it half done). On any request
/// error the transaction is dropped, which aborts it: nothing of a failed
/// commit is written.
pub struct IdbStore {
    db: Database,
    name: String,
    durability: Durability,
    clock: SharedClock,
    limits: Limits,
    persisted: Option<bool>,
    /// Where commits are announced to the leader tab.
    commits: Option<crate::platform::Channel>,
    /// The epoch of the last grant this handle made (0: none).
    granted: std::cell::Cell<u64>,
}

impl fmt::Debug for IdbStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdbStore")
            .field("name", &self.name)
            .field("durability", &self.durability)
            .field("persisted", &self.persisted)
            .finish_non_exhaustive()
    }
}

impl Drop for IdbStore {
    fn drop(&mut self) {
        // Close now (not when the JS object is collected), so a reopen or
        // an upgrade elsewhere is not blocked by this handle.
        self.db.clone().close();
    }
}

type Tx<'a> = Transaction<'a>;

fn num(n: f64) -> JsValue {
    JsValue::from_f64(n)
}

fn seq_js(seq: u64) -> JsValue {
    num(seq as f64)
}

fn bytes_js(b: &[u8]) -> JsValue {
    Uint8Array::from(b).into()
}

fn js_bytes(v: &JsValue, what: &str) -> Result<Vec<u8>> {
    v.dyn_ref::<Uint8Array>().map(Uint8Array::to_vec).ok_or_else(|| corrupt(what))
}

fn js_u64(v: &JsValue, what: &str) -> Result<u64> {
    match v.as_f64() {
        Some(f) if f >= 0.0 && f.fract() == 0.0 && f < 9_007_199_254_740_992.0 => Ok(f as u64),
        _ => Err(corrupt(what)),
    }
}

fn id_js(id: EventId) -> JsValue {
    bytes_js(&id.to_bytes())
}

/// `[at, seq]`: a key of the delivered index.
fn time_seq_js(at: Timestamp, seq: u64) -> JsValue {
    Array::of2(&num(at.as_millis() as f64), &seq_js(seq)).into()
}

/// `[consumer, origin, id]`: the key of an inbox mark.
fn inbox_js(consumer: &ConsumerId, origin: &ActorId, id: EventId) -> JsValue {
    Array::of3(&consumer.as_str().into(), &origin.as_str().into(), &id_js(id)).into()
}

fn encode_state(s: &StateSnapshot) -> Vec<u8> {
    let mut w = Writer::default();
    w.u64(s.version.0);
    w.time(s.updated_at);
    w.bytes(&s.bytes);
    w.0
}

fn decode_state(b: &[u8]) -> Result<StateSnapshot> {
    let mut r = Reader::new(b);
    let version = Version(r.u64()?);
    let updated_at = r.time()?;
    let bytes = r.bytes()?.to_vec();
    r.end()?;
    Ok(StateSnapshot { version, bytes, updated_at })
}

fn encode_grant(g: &LeaderGrant) -> Vec<u8> {
    let mut w = Writer::default();
    w.u64(g.epoch.0);
    w.time(g.expires_at);
    w.str(&g.holder);
    w.0
}

fn decode_grant(b: &[u8]) -> Result<LeaderGrant> {
    let mut r = Reader::new(b);
    let epoch = Epoch(r.u64()?);
    let expires_at = r.time()?;
    let holder = r.string()?;
    r.end()?;
    Ok(LeaderGrant { holder, epoch, expires_at })
}

async fn get(st: &ObjectStore<'_>, key: JsValue, what: &str) -> Result<Option<JsValue>> {
    let req = st.get::<JsValue, JsValue, JsValue>(key).primitive().map_err(|e| map(what, e))?;
    req.await.map_err(|e| map(what, e))
}

/// Issues a put (not awaited: requests of a transaction run in order, and
/// the transaction's commit reports the first failure).
fn put(st: &ObjectStore<'_>, key: JsValue, value: JsValue, what: &str) -> Result<()> {
    st.put(value).with_key(key).primitive().map_err(|e| map(what, e)).map(drop)
}

fn delete(st: &ObjectStore<'_>, key: JsValue, what: &str) -> Result<()> {
    st.delete::<JsValue, JsValue>(key).primitive().map_err(|e| map(what, e)).map(drop)
}

async fn get_all(st: &ObjectStore<'_>, what: &str) -> Result<Vec<JsValue>> {
    let it =
        st.get_all::<JsValue>().primitive().map_err(|e| map(what, e))?.await.map_err(|e| map(what, e))?;
    it.collect::<std::result::Result<Vec<_>, _>>().map_err(|e| map(what, e))
}

async fn get_all_keys(st: &ObjectStore<'_>, limit: Option<u32>, what: &str) -> Result<Vec<JsValue>> {
    let it = match limit {
        Some(n) => st.get_all_keys::<JsValue>().with_limit(n).primitive().map_err(|e| map(what, e))?.await,
        None => st.get_all_keys::<JsValue>().primitive().map_err(|e| map(what, e))?.await,
    }
    .map_err(|e| map(what, e))?;
    it.collect::<std::result::Result<Vec<_>, _>>().map_err(|e| map(what, e))
}

async fn count(st: &ObjectStore<'_>, what: &str) -> Result<u64> {
    let n = st.count().primitive().map_err(|e| map(what, e))?.await.map_err(|e| map(what, e))?;
    Ok(n as u64)
}

/// Every `(seq, entry)` of the pending index, in seq order.
async fn pending_entries(st: &ObjectStore<'_>) -> Result<Vec<(u64, PendingEntry)>> {
    pending_after(st, 0, u32::MAX).await
}

/// Up to `n` `(seq, entry)` of the pending index with a seq above
/// `after`, in seq order.
async fn pending_after(st: &ObjectStore<'_>, after: u64, n: u32) -> Result<Vec<(u64, PendingEntry)>> {
    let what = "scan pending";
    let range = || indexed_db_futures::KeyRange::LowerBound(seq_js(after), true);
    let keys = st.get_all_keys::<JsValue>().with_query::<JsValue, _>(range()).with_limit(n).primitive();
    let keys = keys.map_err(|e| map(what, e))?.await.map_err(|e| map(what, e))?;
    let keys = keys.collect::<std::result::Result<Vec<_>, _>>().map_err(|e| map(what, e))?;
    let values = st.get_all::<JsValue>().with_query::<JsValue, _>(range()).with_limit(n).primitive();
    let values = values.map_err(|e| map(what, e))?.await.map_err(|e| map(what, e))?;
    let values = values.collect::<std::result::Result<Vec<_>, _>>().map_err(|e| map(what, e))?;
    if keys.len() != values.len() {
        return Err(corrupt("pending index changed under a read"));
    }
    keys.iter()
        .zip(&values)
        .map(|(k, v)| Ok((js_u64(k, "pending key")?, decode_pending(&js_bytes(v, "pending entry")?)?)))
        .collect()
}

async fn read_row(st: &ObjectStore<'_>, seq: u64) -> Result<Option<Row>> {
    match get(st, seq_js(seq), "read event").await? {
        Some(v) => Ok(Some(decode_row(&js_bytes(&v, "event row")?)?)),
        None => Ok(None),
    }
}

impl IdbStore {
    /// Opens the database `name` with default options (strict durability,
    /// system clock).
    pub async fn open(name: &str) -> Result<IdbStore> {
        IdbOptions::new(name).open().await
    }

    /// Options for the database `name`.
    pub fn options(name: impl Into<String>) -> IdbOptions {
        IdbOptions::new(name)
    }

    /// The database name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The durability hint of writing transactions.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Whether the browser granted persistent storage
    /// (`navigator.storage.persisted()`) when the store was opened: `true`
    /// means the data is not evicted under storage pressure; `None` where
    /// the Storage API is missing. Ask for it with
    /// `navigator.storage.persist()` (a user-visible permission in some
    /// browsers).
    pub fn persisted(&self) -> Option<bool> {
        self.persisted
    }

    /// Deletes the database `name` (every tab must have closed it).
    pub async fn delete(name: &str) -> Result<()> {
        Database::delete_by_name(name).map_err(map_open)?.await.map_err(|e| map("delete database", e))
    }

    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    fn tx(&self, stores: &[&str], write: bool) -> Result<Tx<'_>> {
        let b = self.db.transaction(stores);
        let r = if write {
            let mut opts = TransactionOptions::new();
            match self.durability {
                Durability::Strict => {
                    opts.set_durability(TransactionDurability::Strict);
                }
                Durability::Relaxed => {
                    opts.set_durability(TransactionDurability::Relaxed);
                }
                Durability::BrowserDefault => {}
            }
            b.with_mode(TransactionMode::Readwrite).with_options(opts).build()
        } else {
            b.build()
        };
        r.map_err(|e| map("begin transaction", e))
    }

    /// Commits `tx`, mapping a failure (a quota abort shows up here).
    async fn finish(tx: Tx<'_>, what: &str) -> Result<()> {
        tx.commit().await.map_err(|e| map(what, e))
    }

    /// The exclusive leader's fence, checked inside the transaction that
    /// writes under it.
    async fn check_fence(meta: &ObjectStore<'_>, grant: &LeaderGrant) -> Result<()> {
        let current = match get(meta, LEADER.into(), "read leader").await? {
            Some(v) => Some(decode_grant(&js_bytes(&v, "leader")?)?.epoch),
            None => None,
        };
        if current != Some(grant.epoch) {
            return Err(Error::Fenced { epoch: grant.epoch, current });
        }
        Ok(())
    }

    /// The rows `grant` may settle (read inside `tx`); `Fenced` if any id
    /// is held by another claim. Delivered, dead and unknown ids are
    /// skipped.
    async fn settleable(tx: &Tx<'_>, grant: &LeaderGrant, ids: &[EventId]) -> Result<Vec<(u64, Row)>> {
        let meta = tx.object_store(META).map_err(|e| map("settle", e))?;
        Self::check_fence(&meta, grant).await?;
        let id_st = tx.object_store(IDS).map_err(|e| map("settle", e))?;
        let ev = tx.object_store(EVENTS).map_err(|e| map("settle", e))?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(s) = get(&id_st, id_js(*id), "read id").await? else { continue };
            let seq = js_u64(&s, "id index")?;
            let Some(row) = read_row(&ev, seq).await? else { continue };
            if row.status != Status::Pending {
                continue;
            }
            if row.claimed_by != Some(grant.epoch.0) {
                return Err(Error::Fenced { epoch: grant.epoch, current: row.claimed_by.map(Epoch) });
            }
            out.push((seq, row));
        }
        Ok(out)
    }

    /// Writes back settled rows (in `tx`) and commits.
    async fn write_settled(tx: Tx<'_>, what: &str, rows: &[(u64, Row)]) -> Result<()> {
        let st = |n: &str| tx.object_store(n).map_err(|e| map(what, e));
        let (ev, pending, dead, delivered) = (st(EVENTS)?, st(PENDING)?, st(DEAD)?, st(DELIVERED)?);
        for (seq, row) in rows {
            put(&ev, seq_js(*seq), bytes_js(&encode_row(row)), what)?;
            match row.status {
                Status::Pending => {
                    put(&pending, seq_js(*seq), bytes_js(&encode_pending(&PendingEntry::of(row))), what)?
                }
                Status::Dead => {
                    delete(&pending, seq_js(*seq), what)?;
                    put(&dead, seq_js(*seq), row.env.key.as_str().into(), what)?;
                }
                Status::Delivered(at) => {
                    delete(&pending, seq_js(*seq), what)?;
                    put(&delivered, time_seq_js(at, *seq), seq_js(*seq), what)?;
                }
            }
        }
        Self::finish(tx, what).await
    }

    async fn settle(
        &self,
        what: &str,
        grant: &LeaderGrant,
        ids: &[EventId],
        change: impl Fn(&mut Row),
    ) -> Result<()> {
        let tx = self.tx(&[META, IDS, EVENTS, PENDING, DEAD, DELIVERED], true)?;
        let mut rows = Self::settleable(&tx, grant, ids).await?;
        for (_, row) in &mut rows {
            change(row);
        }
        Self::write_settled(tx, what, &rows).await
    }

    async fn list(&self, dead: bool, limit: usize) -> Result<Vec<Envelope>> {
        let tx = self.tx(&[PENDING, DEAD, EVENTS], false)?;
        let st = |n: &str| tx.object_store(n).map_err(|e| map("list", e));
        let seqs: Vec<u64> = if dead {
            get_all_keys(&st(DEAD)?, None, "scan dead")
                .await?
                .iter()
                .map(|k| js_u64(k, "dead key"))
                .collect::<Result<_>>()?
        } else {
            pending_entries(&st(PENDING)?).await?.into_iter().map(|(s, _)| s).collect()
        };
        let ev = st(EVENTS)?;
        let mut out = Vec::new();
        for seq in seqs.into_iter().take(limit) {
            if let Some(row) = read_row(&ev, seq).await? {
                out.push(row.env);
            }
        }
        Ok(out)
    }
}

#[async_trait(?Send)]
impl StateStore for IdbStore {
    async fn put_state_and_events(&self, commit: Commit) -> Result<CommitReceipt> {
        commit.validate(&self.limits)?;
        let now = self.now();
        // Everything is encoded before the transaction opens.
        let state = commit.state.as_ref().map(|s| {
            let version = s.expected_version.next();
            let snap = StateSnapshot { version, bytes: s.snapshot.clone(), updated_at: now };
            (s.actor.clone(), s.expected_version, version, bytes_js(&encode_state(&snap)))
        });
        let events: Vec<(EventId, JsValue, JsValue)> = commit
            .events
            .iter()
            .map(|e| {
                let env = Envelope::committed(e.clone(), now);
                let row = Row { env, status: Status::Pending, claimed_by: None, lease_until: None };
                (e.id, bytes_js(&encode_row(&row)), bytes_js(&encode_pending(&PendingEntry::of(&row))))
            })
            .collect();
        let marks: Vec<(&outbox_core::InboxMark, JsValue)> =
            commit.inbox.iter().map(|m| (m, inbox_js(&m.consumer, &m.origin, m.event_id))).collect();
        let at = num(now.as_millis() as f64);

        let what = "commit";
        let tx = self.tx(&[META, STATE, EVENTS, IDS, PENDING, INBOX, INBOX_AT], true)?;
        let st = |n: &str| tx.object_store(n).map_err(|e| map(what, e));
        let (meta, state_st, ev, ids, pending) = (st(META)?, st(STATE)?, st(EVENTS)?, st(IDS)?, st(PENDING)?);
        let (inbox, inbox_at) = (st(INBOX)?, st(INBOX_AT)?);

        // Reads first: the version check, the next seq.
        let next = match get(&meta, NEXT_SEQ.into(), "read next seq").await? {
            Some(v) => js_u64(&v, "next seq")?,
            None => 1,
        };
        if let Some((actor, expected, _, _)) = &state {
            let actual = match get(&state_st, actor.as_str().into(), "read state").await? {
                Some(v) => decode_state(&js_bytes(&v, "state")?)?.version,
                None => Version::NONE,
            };
            if actual != *expected {
                // Dropping the transaction aborts it.
                return Err(Error::Conflict { actor: actor.clone(), expected: *expected, actual });
            }
        }
        // Then the writes. A duplicate id or inbox mark fails its `add`
        // request: the error is returned and the dropped transaction
        // aborts, taking every earlier write of this commit with it.
        if let Some((actor, _, _, bytes)) = &state {
            put(&state_st, actor.as_str().into(), bytes.clone(), what)?;
        }
        let mut adds = Vec::with_capacity(events.len() + marks.len());
        for (i, (id, row, entry)) in events.iter().enumerate() {
            let seq = seq_js(next + i as u64);
            let add = ids.add(seq.clone()).with_key(id_js(*id)).primitive().map_err(|e| map(what, e))?;
            adds.push((Some(*id), None, add));
            put(&ev, seq.clone(), row.clone(), what)?;
            put(&pending, seq, entry.clone(), what)?;
        }
        for (m, key) in &marks {
            let add = inbox.add(at.clone()).with_key(key.clone()).primitive().map_err(|e| map(what, e))?;
            adds.push((None, Some(*m), add));
            let by_time: JsValue =
                Array::of4(&at, &m.consumer.as_str().into(), &m.origin.as_str().into(), &id_js(m.event_id))
                    .into();
            put(&inbox_at, by_time, num(0.0), what)?;
        }
        if !events.is_empty() {
            put(&meta, NEXT_SEQ.into(), seq_js(next + events.len() as u64), what)?;
        }
        for (id, mark, add) in adds {
            match add.await {
                Ok(_) => {}
                Err(e) if is(&e, "ConstraintError") => {
                    return Err(match (id, mark) {
                        (Some(id), _) => Error::DuplicateEvent { id },
                        (None, Some(m)) => Error::AlreadyProcessed {
                            consumer: m.consumer.clone(),
                            origin: m.origin.clone(),
                            id: m.event_id,
                        },
                        (None, None) => map(what, e),
                    });
                }
                Err(e) => return Err(map(what, e)),
            }
        }
        Self::finish(tx, what).await?;
        if !events.is_empty()
            && let Some(c) = &self.commits
        {
            c.post("commit");
        }
        Ok(CommitReceipt { version: state.map(|(_, _, v, _)| v), committed_at: now })
    }

    async fn load_state(&self, actor: &ActorId) -> Result<Option<StateSnapshot>> {
        let tx = self.tx(&[STATE], false)?;
        let st = tx.object_store(STATE).map_err(|e| map("load state", e))?;
        match get(&st, actor.as_str().into(), "load state").await? {
            Some(v) => Ok(Some(decode_state(&js_bytes(&v, "state")?)?)),
            None => Ok(None),
        }
    }
}

#[async_trait(?Send)]
impl LeaderStore for IdbStore {
    async fn acquire_leadership(&self, holder: &str, ttl: Duration) -> Result<Option<LeaderGrant>> {
        if ttl.is_zero() {
            return Err(Error::invalid_input("leadership ttl must be positive"));
        }
        let what = "acquire leadership";
        let now = self.now();
        let tx = self.tx(&[META, PENDING, EVENTS], true)?;
        let st = |n: &str| tx.object_store(n).map_err(|e| map(what, e));
        let meta = st(META)?;
        if let Some(v) = get(&meta, LEADER.into(), "read leader").await? {
            let cur = decode_grant(&js_bytes(&v, "leader")?)?;
            if cur.holder != holder && cur.expires_at > now {
                return Ok(None);
            }
            // An unreleased grant under the same holder name made by
            // another handle: with Web Locks the name is the lock's, and
            // holding the lock means its previous holder is gone (a tab
            // closed or crashed mid-batch). The leases of the rows it
            // claimed are voided, so the batch it had in flight is
            // claimable at once, not after the lease; the lost attempt
            // stays counted. Released grants' leases stand.
            if cur.holder == holder && cur.epoch.0 != self.granted.get() {
                let (pending, ev) = (st(PENDING)?, st(EVENTS)?);
                for (seq, entry) in pending_entries(&pending).await? {
                    if entry.lease_until.is_none() {
                        continue;
                    }
                    let mut row = read_row(&ev, seq)
                        .await?
                        .ok_or_else(|| corrupt("pending index names a missing event"))?;
                    if row.claimed_by != Some(cur.epoch.0) {
                        continue;
                    }
                    row.lease_until = None;
                    put(&ev, seq_js(seq), bytes_js(&encode_row(&row)), what)?;
                    let entry = PendingEntry { lease_until: None, ..entry };
                    put(&pending, seq_js(seq), bytes_js(&encode_pending(&entry)), what)?;
                }
            }
        }
        let last = match get(&meta, LAST_EPOCH.into(), "read epoch").await? {
            Some(v) => js_u64(&v, "last epoch")?,
            None => 0,
        };
        let grant = LeaderGrant {
            holder: holder.to_owned(),
            epoch: Epoch(last + 1),
            expires_at: now.saturating_add(ttl),
        };
        put(&meta, LAST_EPOCH.into(), seq_js(last + 1), what)?;
        put(&meta, LEADER.into(), bytes_js(&encode_grant(&grant)), what)?;
        Self::finish(tx, what).await?;
        self.granted.set(last + 1);
        Ok(Some(grant))
    }

    async fn renew_leadership(&self, grant: &LeaderGrant, ttl: Duration) -> Result<LeaderGrant> {
        if ttl.is_zero() {
            return Err(Error::invalid_input("leadership ttl must be positive"));
        }
        let now = self.now();
        let tx = self.tx(&[META], true)?;
        let meta = tx.object_store(META).map_err(|e| map("renew leadership", e))?;
        Self::check_fence(&meta, grant).await?;
        let renewed = LeaderGrant { expires_at: now.saturating_add(ttl), ..grant.clone() };
        put(&meta, LEADER.into(), bytes_js(&encode_grant(&renewed)), "renew leadership")?;
        Self::finish(tx, "renew leadership").await?;
        Ok(renewed)
    }

    async fn release_leadership(&self, grant: &LeaderGrant) -> Result<()> {
        let tx = self.tx(&[META], true)?;
        let meta = tx.object_store(META).map_err(|e| map("release leadership", e))?;
        if Self::check_fence(&meta, grant).await.is_ok() {
            delete(&meta, LEADER.into(), "release leadership")?;
        }
        Self::finish(tx, "release leadership").await
    }
}

#[async_trait(?Send)]
impl DeliveryStore for IdbStore {
    async fn claim(&self, grant: &LeaderGrant, request: ClaimRequest) -> Result<Vec<Envelope>> {
        if request.lease.is_zero() {
            return Err(Error::invalid_input("claim lease must be positive"));
        }
        let what = "claim";
        let now = self.now();
        let tx = self.tx(&[META, PENDING, DEAD, EVENTS], true)?;
        let st = |n: &str| tx.object_store(n).map_err(|e| map(what, e));
        let (meta, pending, dead, ev) = (st(META)?, st(PENDING)?, st(DEAD)?, st(EVENTS)?);
        Self::check_fence(&meta, grant).await?;
        if request.limit == 0 {
            return Ok(Vec::new());
        }
        // Per key, the seq from which its events are held back: its
        // first dead event (when parking), or a head that is leased or
        // not yet due. One map for both keeps one hash table in the
        // browser bundle.
        let mut held_from: HashMap<OrderingKey, u64> = HashMap::new();
        if request.park_dead_keys {
            let keys = get_all_keys(&dead, None, "scan dead").await?;
            let values = get_all(&dead, "scan dead").await?;
            for (k, v) in keys.iter().zip(&values) {
                let seq = js_u64(k, "dead key")?;
                let key = v
                    .as_string()
                    .and_then(|s| OrderingKey::new(s).ok())
                    .ok_or_else(|| corrupt("dead index key is invalid"))?;
                held_from.entry(key).and_modify(|s| *s = (*s).min(seq)).or_insert(seq);
            }
        }
        // The pending index in seq order, read in chunks until the batch
        // is full: a claim reads about what it takes, not the backlog.
        let chunk = u32::try_from(request.limit.clamp(64, 4096)).unwrap_or(4096);
        let mut picked: Vec<(u64, PendingEntry)> = Vec::new();
        let mut after = 0;
        'scan: loop {
            let entries = pending_after(&pending, after, chunk).await?;
            let last_chunk = entries.len() < chunk as usize;
            for (seq, entry) in entries {
                if picked.len() >= request.limit {
                    break 'scan;
                }
                after = seq;
                if held_from.get(&entry.key).is_some_and(|&d| d < seq) {
                    continue;
                }
                if entry.leased_at(now) || entry.next_attempt_at > now {
                    held_from.insert(entry.key, seq);
                    continue;
                }
                picked.push((seq, entry));
            }
            if last_chunk || picked.len() >= request.limit {
                break;
            }
        }
        let lease_until = now.saturating_add(request.lease);
        let mut out = Vec::with_capacity(picked.len());
        for (seq, entry) in picked {
            let mut row =
                read_row(&ev, seq).await?.ok_or_else(|| corrupt("pending index names a missing event"))?;
            row.env.attempts = row.env.attempts.saturating_add(1);
            row.claimed_by = Some(grant.epoch.0);
            row.lease_until = Some(lease_until);
            let entry = PendingEntry { lease_until: Some(lease_until), ..entry };
            put(&ev, seq_js(seq), bytes_js(&encode_row(&row)), what)?;
            put(&pending, seq_js(seq), bytes_js(&encode_pending(&entry)), what)?;
            out.push(row.env);
        }
        Self::finish(tx, what).await?;
        Ok(out)
    }

    async fn ack(&self, grant: &LeaderGrant, ids: &[EventId]) -> Result<()> {
        let now = self.now();
        self.settle("ack", grant, ids, |row| {
            row.status = Status::Delivered(now);
            row.lease_until = None;
        })
        .await
    }

    async fn release(&self, grant: &LeaderGrant, ids: &[EventId]) -> Result<()> {
        self.settle("release", grant, ids, |row| {
            if row.lease_until.is_some() {
                row.env.attempts = row.env.attempts.saturating_sub(1);
                row.lease_until = None;
            }
        })
        .await
    }

    async fn retry_later(&self, grant: &LeaderGrant, id: EventId, at: Timestamp, error: &str) -> Result<()> {
        self.settle("retry later", grant, &[id], |row| {
            row.env.next_attempt_at = at;
            row.env.last_error = Some(error.to_owned());
            row.lease_until = None;
        })
        .await
    }

    async fn dead_letter(&self, grant: &LeaderGrant, id: EventId, error: &str) -> Result<()> {
        self.settle("dead letter", grant, &[id], |row| {
            row.status = Status::Dead;
            row.env.last_error = Some(error.to_owned());
            row.lease_until = None;
        })
        .await
    }
}

#[async_trait(?Send)]
impl InspectStore for IdbStore {
    async fn stats(&self) -> Result<StoreStats> {
        let now = self.now();
        let tx = self.tx(&[PENDING, DEAD, DELIVERED], false)?;
        let st = |n: &str| tx.object_store(n).map_err(|e| map("stats", e));
        let mut s = StoreStats::default();
        for (_, e) in pending_entries(&st(PENDING)?).await? {
            s.pending += 1;
            if e.leased_at(now) {
                s.in_flight += 1;
            }
            s.oldest_pending_at = Some(s.oldest_pending_at.map_or(e.created_at, |o| o.min(e.created_at)));
        }
        s.dead = count(&st(DEAD)?, "count dead").await?;
        s.delivered = count(&st(DELIVERED)?, "count delivered").await?;
        Ok(s)
    }

    async fn list_pending(&self, limit: usize) -> Result<Vec<Envelope>> {
        self.list(false, limit).await
    }

    async fn list_dead(&self, limit: usize) -> Result<Vec<Envelope>> {
        self.list(true, limit).await
    }

    async fn requeue_dead(&self, ids: &[EventId]) -> Result<u64> {
        let what = "requeue";
        let now = self.now();
        let tx = self.tx(&[IDS, EVENTS, PENDING, DEAD], true)?;
        let st = |n: &str| tx.object_store(n).map_err(|e| map(what, e));
        let (id_st, ev, pending, dead) = (st(IDS)?, st(EVENTS)?, st(PENDING)?, st(DEAD)?);
        let mut moved = 0;
        let mut seen = HashSet::new();
        for id in ids {
            if !seen.insert(*id) {
                continue;
            }
            let Some(s) = get(&id_st, id_js(*id), "read id").await? else { continue };
            let seq = js_u64(&s, "id index")?;
            let Some(mut row) = read_row(&ev, seq).await? else { continue };
            if row.status != Status::Dead {
                continue;
            }
            row.status = Status::Pending;
            row.env.attempts = 0;
            row.env.next_attempt_at = now;
            row.claimed_by = None;
            row.lease_until = None;
            put(&ev, seq_js(seq), bytes_js(&encode_row(&row)), what)?;
            delete(&dead, seq_js(seq), what)?;
            put(&pending, seq_js(seq), bytes_js(&encode_pending(&PendingEntry::of(&row))), what)?;
            moved += 1;
        }
        Self::finish(tx, what).await?;
        Ok(moved)
    }

    async fn prune_delivered(&self, before: Timestamp, limit: usize) -> Result<u64> {
        let what = "prune delivered";
        let tx = self.tx(&[DELIVERED, EVENTS, IDS], true)?;
        let st = |n: &str| tx.object_store(n).map_err(|e| map(what, e));
        let (delivered, ev, ids) = (st(DELIVERED)?, st(EVENTS)?, st(IDS)?);
        let cap = u32::try_from(limit).unwrap_or(u32::MAX);
        let mut n = 0;
        for k in get_all_keys(&delivered, Some(cap), what).await? {
            let parts: Array = k.clone().dyn_into().map_err(|_| corrupt("delivered key"))?;
            let at = parts.get(0).as_f64().ok_or_else(|| corrupt("delivered key time"))?;
            if at >= before.as_millis() as f64 {
                break;
            }
            let seq = js_u64(&parts.get(1), "delivered key seq")?;
            if let Some(row) = read_row(&ev, seq).await? {
                delete(&ids, id_js(row.env.id), what)?;
            }
            delete(&ev, seq_js(seq), what)?;
            delete(&delivered, k, what)?;
            n += 1;
        }
        Self::finish(tx, what).await?;
        Ok(n)
    }
}

#[async_trait(?Send)]
impl InboxStore for IdbStore {
    async fn is_processed(&self, consumer: &ConsumerId, origin: &ActorId, id: EventId) -> Result<bool> {
        let tx = self.tx(&[INBOX], false)?;
        let st = tx.object_store(INBOX).map_err(|e| map("read inbox", e))?;
        Ok(get(&st, inbox_js(consumer, origin, id), "read inbox").await?.is_some())
    }

    async fn prune_inbox(&self, before: Timestamp, limit: usize) -> Result<u64> {
        let what = "prune inbox";
        let tx = self.tx(&[INBOX, INBOX_AT], true)?;
        let st = |n: &str| tx.object_store(n).map_err(|e| map(what, e));
        let (inbox, inbox_at) = (st(INBOX)?, st(INBOX_AT)?);
        let cap = u32::try_from(limit).unwrap_or(u32::MAX);
        let mut n = 0;
        for k in get_all_keys(&inbox_at, Some(cap), what).await? {
            let parts: Array = k.clone().dyn_into().map_err(|_| corrupt("inbox time key"))?;
            let at = parts.get(0).as_f64().ok_or_else(|| corrupt("inbox time key"))?;
            if at >= before.as_millis() as f64 {
                break;
            }
            let mark: JsValue = Array::of3(&parts.get(1), &parts.get(2), &parts.get(3)).into();
            delete(&inbox, mark, what)?;
            delete(&inbox_at, k, what)?;
            n += 1;
        }
        Self::finish(tx, what).await?;
        Ok(n)
    }
}

impl DurableStore for IdbStore {
    fn capabilities(&self) -> Capabilities {
        Capabilities::new("indexeddb", true)
            .leadership(LeadershipMode::Exclusive)
            .limits(self.limits)
            .persistent(self.persisted)
    }
}
