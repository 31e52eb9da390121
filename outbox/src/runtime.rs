//! `configure_outbox` and the [`Outbox`] handle.

use std::fmt;
use std::sync::{Arc, Mutex, Once};

use tokio::sync::watch;

use outbox_core::{
    ActorId, Capabilities, Commit, CommitReceipt, DurableStore, Envelope, Error, EventId, Outcome, Result,
    SharedClock, Sink, StateSnapshot, StoreStats, SystemClock,
};
// The page's store is called by its concrete type.
#[cfg(all(target_arch = "wasm32", store_idb))]
use outbox_core::{InspectStore, StateStore};
#[cfg(not(target_arch = "wasm32"))]
use outbox_forwarder::Forwarder;
use outbox_forwarder::{ErrorCallback, ForwarderConfig, Wake};
use outbox_store_memory::MemoryStore;

use crate::config::{Durability, OnQuota, OutboxConfig, StoreChoice};
use crate::fallback::{FallbackStore, spawn_recommitter};

static MEMORY_WARNING: Once = Once::new();
static OFF_WARNING: Once = Once::new();

/// Where [`StoreChoice::Auto`] keeps its SQLite file:
/// `<data dir>/<app>/outbox.db`, with `app` the name given (or the
/// executable's name) and the data directory the platform's
/// (`$XDG_DATA_HOME` or `~/.local/share` on Linux and other Unix systems,
/// `~/Library/Application Support` on macOS, `%LOCALAPPDATA%` on Windows).
/// `None` when the platform names no data directory (no home directory).
#[cfg(not(target_arch = "wasm32"))]
pub fn default_sqlite_path(app: Option<&str>) -> Option<std::path::PathBuf> {
    let app = match app {
        Some(a) => a.to_owned(),
        None => std::env::current_exe()
            .ok()
            .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "outbox".to_owned()),
    };
    Some(data_dir()?.join(app).join("outbox.db"))
}

#[cfg(not(target_arch = "wasm32"))]
fn env_dir(var: &str) -> Option<std::path::PathBuf> {
    std::env::var_os(var).filter(|v| !v.is_empty()).map(std::path::PathBuf::from).filter(|p| p.is_absolute())
}

#[cfg(target_os = "windows")]
fn data_dir() -> Option<std::path::PathBuf> {
    env_dir("LOCALAPPDATA")
}

#[cfg(target_os = "macos")]
fn data_dir() -> Option<std::path::PathBuf> {
    Some(env_dir("HOME")?.join("Library").join("Application Support"))
}

#[cfg(not(any(target_os = "windows", target_os = "macos", target_arch = "wasm32")))]
fn data_dir() -> Option<std::path::PathBuf> {
    env_dir("XDG_DATA_HOME").or_else(|| Some(env_dir("HOME")?.join(".local").join("share")))
}

/// The running forwarder: a Tokio task natively; in a browser, the tab's
/// bid for the origin's forwarder role (a Web Lock).
#[cfg(not(target_arch = "wasm32"))]
pub(crate) type ForwarderTask = outbox_forwarder::ForwarderHandle;
#[cfg(target_arch = "wasm32")]
pub(crate) type ForwarderTask = outbox_forwarder::browser::TabForwarder;

/// The store the facade commits to.
pub(crate) enum Backend {
    /// Any store ([`configure_outbox`]), behind the quota fallback when
    /// there is one.
    Any { store: Arc<dyn DurableStore>, fallback: Option<Arc<FallbackStore>> },
    /// A page whose worker forwards (`browser::configure_page`): the
    /// IndexedDB store behind the quota fallback, called directly, not
    /// through `dyn DurableStore`, so that the page's bundle carries only
    /// the store methods the page calls (committing, loading state), not
    /// the forwarder's.
    #[cfg(all(target_arch = "wasm32", store_idb))]
    Page(Arc<FallbackStore<outbox_store_idb::IdbStore>>),
    /// The worker of such a page (`browser::serve_worker`): the IndexedDB
    /// store with no quota fallback, called directly by the facade and its
    /// forwarder, so that the worker's bundle carries only the store
    /// methods they call.
    #[cfg(all(target_arch = "wasm32", store_idb))]
    Worker(Arc<outbox_store_idb::IdbStore>),
}

/// `$body` with `$s` the backend's store (any kind).
macro_rules! with_store {
    ($backend:expr, $s:ident => $body:expr) => {
        match $backend {
            Backend::Any { store: $s, .. } => $body,
            #[cfg(all(target_arch = "wasm32", store_idb))]
            Backend::Page($s) => $body,
            #[cfg(all(target_arch = "wasm32", store_idb))]
            Backend::Worker($s) => $body,
        }
    };
}

impl Backend {
    fn fallback_is_fallen(&self) -> bool {
        match self {
            Backend::Any { fallback, .. } => fallback.as_ref().is_some_and(|f| f.is_fallen()),
            #[cfg(all(target_arch = "wasm32", store_idb))]
            Backend::Page(f) => f.is_fallen(),
            #[cfg(all(target_arch = "wasm32", store_idb))]
            Backend::Worker(_) => false,
        }
    }

    fn has_fallback(&self) -> bool {
        match self {
            Backend::Any { fallback, .. } => fallback.is_some(),
            #[cfg(all(target_arch = "wasm32", store_idb))]
            Backend::Page(_) => true,
            #[cfg(all(target_arch = "wasm32", store_idb))]
            Backend::Worker(_) => false,
        }
    }
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        with_store!(self, s => fmt::Debug::fmt(s, f))
    }
}

pub(crate) struct Inner {
    pub(crate) backend: Backend,
    pub(crate) conflict_retries: u32,
    /// What [`Outbox::watch_durable`] hands out, and (without a fallback,
    /// where it never changes) the sender that keeps it open.
    pub(crate) durable: (watch::Receiver<bool>, Option<watch::Sender<bool>>),
    pub(crate) forwarder: Mutex<Option<ForwarderTask>>,
    pub(crate) wake: Option<Wake>,
    pub(crate) sink: Arc<dyn Sink>,
    pub(crate) durability: Durability,
    pub(crate) on_error: Option<ErrorCallback>,
    /// A page whose forwarder runs in a worker: told of each commit.
    #[cfg_attr(not(all(target_arch = "wasm32", store_idb)), allow(dead_code))]
    pub(crate) page: Option<PageLink>,
}

/// A page whose forwarder runs in a worker (`outbox::browser`); nothing
/// off the browser.
#[cfg(all(target_arch = "wasm32", store_idb))]
pub(crate) type PageLink = std::rc::Rc<crate::browser::Page>;
#[cfg(not(all(target_arch = "wasm32", store_idb)))]
pub(crate) type PageLink = std::convert::Infallible;

/// A running outbox: a store, a forwarder delivering to a sink, and the
/// actors committing to it. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for Outbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox")
            .field("store", &self.inner.backend)
            .field("durability", &self.inner.durability)
            .field("durable", &self.is_durable())
            .finish_non_exhaustive()
    }
}

pub(crate) async fn open_durable(
    choice: &StoreChoice,
    app: Option<&str>,
    clock: &SharedClock,
) -> Result<Arc<dyn DurableStore>> {
    match choice {
        StoreChoice::Custom(s) => Ok(s.clone()),
        StoreChoice::Memory => Ok(Arc::new(MemoryStore::unannounced(clock.clone()))),
        #[cfg(store_sqlite)]
        StoreChoice::Auto => {
            let path = match default_sqlite_path(app) {
                Some(p) => p,
                None => {
                    tracing::warn!(target: "outbox",
                        "outbox: the platform names no data directory; using outbox.db in the working directory");
                    std::path::PathBuf::from("outbox.db")
                }
            };
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::unavailable(format!("creating {}", dir.display()), e))?;
            }
            tracing::info!(target: "outbox", path = %path.display(), "outbox: SQLite store");
            open_sqlite(&path, clock)
        }
        #[cfg(store_idb)]
        StoreChoice::Auto => open_idb(app.unwrap_or("outbox"), clock).await,
        #[cfg(not(any(store_sqlite, store_idb)))]
        StoreChoice::Auto => {
            let _ = app;
            Ok(Arc::new(MemoryStore::unannounced(clock.clone())))
        }
        #[cfg(store_sqlite)]
        StoreChoice::Sqlite(path) => open_sqlite(path, clock),
        #[cfg(store_sled)]
        StoreChoice::Sled(path) => {
            Ok(Arc::new(outbox_store_sled::SledStore::options(path).clock(clock.clone()).open()?))
        }
        #[cfg(store_postgres)]
        StoreChoice::Postgres(url) => Ok(Arc::new(
            outbox_store_postgres::PostgresStore::options(url.clone()).clock(clock.clone()).open().await?,
        )),
        #[cfg(store_idb)]
        StoreChoice::IndexedDb(name) => open_idb(name, clock).await,
    }
}

#[cfg(store_sqlite)]
fn open_sqlite(path: &std::path::Path, clock: &SharedClock) -> Result<Arc<dyn DurableStore>> {
    Ok(Arc::new(outbox_store_sqlite::SqliteStore::options(path).clock(clock.clone()).open()?))
}

#[cfg(store_idb)]
async fn open_idb(name: &str, clock: &SharedClock) -> Result<Arc<dyn DurableStore>> {
    Ok(Arc::new(outbox_store_idb::IdbOptions::new(name).clock(clock.clone()).open().await?))
}

/// The IndexedDB database a choice opens (its name keys the tab lock and
/// the commit channel), if any.
#[allow(unused_variables)]
fn database_name(choice: &StoreChoice, app: Option<&str>) -> Option<String> {
    match choice {
        #[cfg(store_idb)]
        StoreChoice::IndexedDb(name) => Some(name.clone()),
        #[cfg(store_idb)]
        StoreChoice::Auto => Some(app.unwrap_or("outbox").to_owned()),
        _ => None,
    }
}

/// Starts the forwarder: a Tokio task natively; in a browser, a
/// [`TabForwarder`](outbox_forwarder::browser::TabForwarder) that forwards
/// while this tab holds the origin's Web Lock for the database, woken by
/// commits in any tab.
#[cfg(not(target_arch = "wasm32"))]
fn start_forwarder(
    store: Arc<dyn DurableStore>,
    _name: Option<&str>,
    sink: Arc<dyn Sink>,
    fwd: ForwarderConfig,
) -> (ForwarderTask, Wake) {
    let f = Forwarder::new(store, sink, fwd);
    let wake = f.waker();
    (f.spawn(), wake)
}

#[cfg(target_arch = "wasm32")]
pub(crate) fn start_forwarder<S: DurableStore + ?Sized + 'static>(
    store: Arc<S>,
    name: Option<&str>,
    sink: Arc<dyn Sink>,
    fwd: ForwarderConfig,
) -> (ForwarderTask, Wake) {
    use outbox_forwarder::browser::{TabForwarder, lock_name};
    // A store that is not an origin's IndexedDB database (memory, custom)
    // is this tab's own: a lock and a channel no other tab shares.
    let own;
    let db = match name {
        Some(n) => n,
        None => {
            own = format!("outbox-tab-{}", outbox_core::EventId::new());
            own.as_str()
        }
    };
    #[cfg(store_idb)]
    let commits = outbox_store_idb::channel_name(db);
    #[cfg(not(store_idb))]
    let commits = format!("outbox-commits:{db}");
    let tab = TabForwarder::start(store, sink, fwd, &lock_name(db), &commits);
    let wake = tab.waker().clone();
    (tab, wake)
}

/// Starts an outbox that delivers to `sink`, as `config` says:
///
/// - [`Durability::Auto`]: the store named by `config.store`; for
///   [`StoreChoice::Auto`], natively SQLite (`<data dir>/<app>/outbox.db`,
///   see `default_sqlite_path`) with the `sqlite` feature, in a browser
///   the IndexedDB database named after the app with the `idb` feature
///   (both default), memory (with a warning) otherwise. When the durable
///   store is full, `config.on_quota` decides: [`OnQuota::Fallback`] (the
///   default) holds new commits in memory (their receipts say
///   `durable: false`, `outbox.durable` drops to 0, `on_error` is called
///   once per fallback) and moves them back, in order, as soon as the store has room;
///   [`OnQuota::Fail`] returns the `QuotaExceeded` error to the committer.
/// - [`Durability::Memory`]: the in-memory store, whatever `config.store`
///   says; warns once, `outbox.durable = 0`.
/// - [`Durability::Off`]: no outbox. State is kept in memory (one snapshot
///   per actor) and events go straight to the sink as they are committed,
///   and are not kept; an event the sink refuses is lost (reported to
///   `on_error`). Warns once. Development only.
///
/// A forwarder with `config.forwarder`'s settings is started (not for
/// `Off`): natively on the current Tokio runtime; in a browser as the
/// tab's bid for the origin's forwarder role (one tab forwards, every tab
/// commits durably, a commit in any tab wakes the forwarding one). The
/// store reads time from the same clock.
pub async fn configure_outbox(config: OutboxConfig, sink: Arc<dyn Sink>) -> Result<Outbox> {
    let OutboxConfig {
        durability,
        store: store_choice,
        forwarder: fwd,
        app_name,
        conflict_retries,
        on_quota,
        ..
    } = config;
    outbox_forwarder::metrics::describe();
    let clock = fwd.clock.clone();
    let mut db_name: Option<String> = None;
    let (store, fallback): (Arc<dyn DurableStore>, Option<Arc<FallbackStore>>) = match durability {
        Durability::Off => {
            OFF_WARNING.call_once(|| {
                tracing::warn!(target: "outbox",
                    "outbox: Durability::Off: events go straight to the sink and are lost if it is down (development only)")
            });
            (Arc::new(MemoryStore::unannounced(clock.clone())), None)
        }
        Durability::Memory => {
            warn_memory();
            (Arc::new(MemoryStore::unannounced(clock.clone())), None)
        }
        _ => {
            db_name = database_name(&store_choice, app_name.as_deref());
            let primary = open_durable(&store_choice, app_name.as_deref(), &clock).await?;
            if !primary.capabilities().durable {
                warn_memory();
                (primary, None)
            } else if on_quota == OnQuota::Fail {
                (primary, None)
            } else {
                let on_error = fwd.on_error.clone();
                let hook = Box::new(move |e: &Error| {
                    if let Some(cb) = &on_error {
                        cb(None, e);
                    }
                });
                let fb = Arc::new(FallbackStore::new(primary, clock.clone(), hook));
                spawn_recommitter(Arc::downgrade(&fb));
                (fb.clone(), Some(fb))
            }
        }
    };
    Ok(assemble(
        store,
        fallback,
        db_name.as_deref(),
        sink,
        Parts { durability, forwarder: fwd, conflict_retries },
    ))
}

/// What [`assemble`] and [`built`] take of an [`OutboxConfig`].
pub(crate) struct Parts {
    pub(crate) durability: Durability,
    pub(crate) forwarder: ForwarderConfig,
    pub(crate) conflict_retries: u32,
}

/// An outbox over `store` (behind `fallback` when it is one), its
/// forwarder started (not for [`Durability::Off`]); `db_name` names the
/// IndexedDB database whose lock and channel the browser's forwarder
/// shares.
pub(crate) fn assemble(
    store: Arc<dyn DurableStore>,
    fallback: Option<Arc<FallbackStore>>,
    db_name: Option<&str>,
    sink: Arc<dyn Sink>,
    parts: Parts,
) -> Outbox {
    let durable = store.capabilities().durable;
    let watch = fallback.as_ref().map(|fb| fb.watch_durable());
    let forwarded = store.clone();
    let start = |sink, fwd| start_forwarder(forwarded, db_name, sink, fwd);
    built(Backend::Any { store, fallback }, durable, watch, start, sink, parts)
}

/// An outbox over `backend`, whose store says it is `durable`: its
/// durability watched through `fallback_watch` when it has a quota
/// fallback, its forwarder started by `start` (not for
/// [`Durability::Off`]).
pub(crate) fn built(
    backend: Backend,
    durable: bool,
    fallback_watch: Option<watch::Receiver<bool>>,
    start: impl FnOnce(Arc<dyn Sink>, ForwarderConfig) -> (ForwarderTask, Wake),
    sink: Arc<dyn Sink>,
    parts: Parts,
) -> Outbox {
    let Parts { durability, forwarder: fwd, conflict_retries } = parts;
    metrics::gauge!(outbox_forwarder::metrics::DURABLE).set(if durable { 1.0 } else { 0.0 });
    let durable_watch = match fallback_watch {
        Some(rx) => (rx, None),
        None => {
            let (tx, rx) = watch::channel(durability != Durability::Off && durable);
            (rx, Some(tx))
        }
    };
    let on_error = fwd.on_error.clone();
    let (forwarder, wake) = if durability == Durability::Off {
        (None, None)
    } else {
        let (task, wake) = start(sink.clone(), fwd);
        (Some(task), Some(wake))
    };
    Outbox {
        inner: Arc::new(Inner {
            backend,
            conflict_retries,
            durable: durable_watch,
            forwarder: Mutex::new(forwarder),
            wake,
            sink,
            durability,
            on_error,
            page: None,
        }),
    }
}

fn warn_memory() {
    MEMORY_WARNING.call_once(|| {
        tracing::warn!(target: "outbox",
            "outbox: in-memory store; committed events are lost when the process exits (outbox.durable = 0)")
    });
}

impl Outbox {
    /// Commits state + events (+ inbox marks) atomically, then wakes the
    /// forwarder. With [`Durability::Off`] the events are published to the
    /// sink right after the commit instead.
    ///
    /// Each event without a `traceparent` header gets one: a child of the
    /// [current trace](crate::trace::current), or of a new trace started
    /// for this commit (see [`trace`](crate::trace)).
    ///
    /// The receipt's [`durable`](CommitReceipt::durable) says whether the
    /// commit is in the durable store: `false` for a commit held in memory
    /// while the durable store is full ([`OnQuota::Fallback`]; moved to
    /// the durable store once it has room, lost if the process ends
    /// before), and for every commit of an outbox that is not durable.
    pub async fn commit(&self, mut commit: Commit) -> Result<CommitReceipt> {
        crate::trace::stamp(&mut commit.events);
        if self.inner.durability == Durability::Off {
            // Nothing is kept of the events: they go to the sink now.
            commit.validate(&with_store!(&self.inner.backend, s => s.capabilities().limits))?;
            let events = std::mem::take(&mut commit.events);
            let receipt = with_store!(&self.inner.backend, s => s.put_state_and_events(commit).await?);
            let envelopes: Vec<Envelope> =
                events.into_iter().map(|e| Envelope::committed(e, receipt.committed_at)).collect();
            let outcomes = self.inner.sink.publish(&envelopes).await;
            for (e, o) in envelopes.iter().zip(outcomes) {
                if !o.is_ok() {
                    let reason = match o {
                        Outcome::Retriable(m) | Outcome::NonRetriable(m) | Outcome::RetryAfter(_, m) => m,
                        Outcome::Ok => String::new(),
                    };
                    tracing::warn!(target: "outbox", event = %e.id, "Durability::Off: the sink refused an event; it is lost");
                    if let Some(cb) = &self.inner.on_error {
                        cb(Some(e), &Error::DeadLettered { id: e.id, reason });
                    }
                }
            }
            return Ok(CommitReceipt { durable: false, ..receipt });
        }
        let mut receipt = with_store!(&self.inner.backend, s => s.put_state_and_events(commit).await?);
        if !self.inner.backend.has_fallback() {
            // A store that reports itself not durable (sled flushing on an
            // interval, memory) does not make a commit durable.
            receipt.durable &= with_store!(&self.inner.backend, s => s.capabilities().durable);
        }
        if let Some(w) = &self.inner.wake {
            w.wake();
        }
        #[cfg(all(target_arch = "wasm32", store_idb))]
        if let Some(p) = &self.inner.page {
            p.committed();
        }
        Ok(receipt)
    }

    /// Dead-lettered events (oldest first), at most `limit`, with their
    /// last error. Under the default [`DeadLetterPolicy::Park`](outbox_forwarder::DeadLetterPolicy)
    /// each parks its ordering key (by default its origin actor): the
    /// key's later events wait until it is requeued, discarded or skipped.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<Envelope>> {
        with_store!(&self.inner.backend, s => s.list_dead(limit).await)
    }

    /// Pending events (not delivered yet, claimed or not), oldest first,
    /// at most `limit`: for a "pending events" panel.
    pub async fn pending(&self, limit: usize) -> Result<Vec<Envelope>> {
        with_store!(&self.inner.backend, s => s.list_pending(limit).await)
    }

    /// Counts of the store's events by status.
    pub async fn stats(&self) -> Result<StoreStats> {
        with_store!(&self.inner.backend, s => s.stats().await)
    }

    /// What the store is and can do (its backend's name, its limits).
    pub fn capabilities(&self) -> Capabilities {
        with_store!(&self.inner.backend, s => s.capabilities())
    }

    /// An actor's last committed state.
    pub(crate) async fn load_state(&self, actor: &ActorId) -> Result<Option<StateSnapshot>> {
        with_store!(&self.inner.backend, s => s.load_state(actor).await)
    }

    /// Moves dead event `id` back to pending (attempts reset), to be
    /// delivered before its key's later events. Returns whether it was
    /// dead.
    pub async fn requeue(&self, id: EventId) -> Result<bool> {
        let moved = with_store!(&self.inner.backend, s => s.requeue_dead(&[id]).await?) > 0;
        self.wake();
        Ok(moved)
    }

    /// Requeues every dead event; returns how many.
    pub async fn requeue_all(&self) -> Result<u64> {
        let mut moved = 0;
        loop {
            let dead: Vec<EventId> = self.dead_letters(500).await?.iter().map(|e| e.id).collect();
            if dead.is_empty() {
                break;
            }
            let n = with_store!(&self.inner.backend, s => s.requeue_dead(&dead).await?);
            moved += n;
            if n == 0 {
                break;
            }
        }
        self.wake();
        Ok(moved)
    }

    /// Gives up on dead event `id`: it is kept as `discarded` (for audit,
    /// until retention prunes it) and never delivered; its key flows on.
    /// Returns whether it was dead.
    pub async fn discard(&self, id: EventId) -> Result<bool> {
        let moved = with_store!(&self.inner.backend, s => s.discard_dead(&[id]).await?) > 0;
        self.wake();
        Ok(moved)
    }

    /// Lets the key parked behind dead event `id` flow past it: the event
    /// stays dead (listed, requeueable) but no longer holds its key back.
    /// Returns whether it changed.
    pub async fn skip(&self, id: EventId) -> Result<bool> {
        let moved = with_store!(&self.inner.backend, s => s.skip_dead(&[id]).await?) > 0;
        self.wake();
        Ok(moved)
    }

    pub(crate) fn conflict_retries(&self) -> u32 {
        self.inner.conflict_retries
    }

    /// The store (for inspection, consumers, custom use). In a browser
    /// bundle this links every method of the store; a page of
    /// `browser::configure_page`'s kind (wasm32) that only shows counts
    /// and lists keeps its bundle small with [`Outbox::stats`],
    /// [`Outbox::pending`] and [`Outbox::dead_letters`].
    pub fn store(&self) -> Arc<dyn DurableStore> {
        match &self.inner.backend {
            Backend::Any { store, .. } => store.clone(),
            #[cfg(all(target_arch = "wasm32", store_idb))]
            Backend::Page(s) => s.clone(),
            #[cfg(all(target_arch = "wasm32", store_idb))]
            Backend::Worker(s) => s.clone(),
        }
    }

    /// Whether new commits are durable right now: false for memory and
    /// off, and while commits are held in memory because the durable store
    /// is full ([`OnQuota::Fallback`]); true again once they are all moved
    /// back to it.
    pub fn is_durable(&self) -> bool {
        self.inner.durability != Durability::Off
            && !self.inner.backend.fallback_is_fallen()
            && with_store!(&self.inner.backend, s => s.capabilities().durable)
    }

    /// A receiver that sees [`Outbox::is_durable`] change: false when the
    /// durable store is full and commits are held in memory, true again
    /// once they are all moved back (for a UI badge, or to wait for it).
    pub fn watch_durable(&self) -> watch::Receiver<bool> {
        self.inner.durable.0.clone()
    }

    /// The sink is reachable again (say, the browser's `online` event):
    /// deliver now.
    pub fn notify_online(&self) {
        if let Some(w) = &self.inner.wake {
            w.notify_online();
        }
    }

    /// Wakes the forwarder.
    pub fn wake(&self) {
        if let Some(w) = &self.inner.wake {
            w.wake();
        }
    }

    /// Stops the forwarder (the batch in flight finishes, leadership is
    /// released). Commits still work; nothing is delivered until restart.
    pub async fn shutdown(&self) {
        let handle = self.inner.forwarder.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            #[cfg(not(target_arch = "wasm32"))]
            h.shutdown().await;
            #[cfg(target_arch = "wasm32")]
            h.stop().await;
        }
    }

    /// The tab forwarder's role changes (wasm32), if it runs one.
    #[cfg(target_arch = "wasm32")]
    pub(crate) fn watch_role(
        &self,
    ) -> Option<tokio::sync::watch::Receiver<outbox_forwarder::browser::TabRole>> {
        self.inner.forwarder.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|t| t.watch_role())
    }

    /// Whether this tab forwards now (holds the origin's forwarder lock):
    /// for a UI that shows which tab delivers. Always `false` for
    /// [`Durability::Off`] and after [`Outbox::shutdown`].
    /// For a page whose forwarder runs in a worker
    /// ([`browser::configure_page`](crate::browser::configure_page)):
    /// whether this page's worker forwards now.
    #[cfg(target_arch = "wasm32")]
    pub fn is_forwarding(&self) -> bool {
        #[cfg(store_idb)]
        if let Some(p) = &self.inner.page {
            return p.is_forwarding();
        }
        self.inner
            .forwarder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|t| t.is_forwarding())
    }
}

/// The system clock, for callers building a [`ForwarderConfig`](outbox_forwarder::ForwarderConfig).
pub fn system_clock() -> SharedClock {
    SystemClock::shared()
}
