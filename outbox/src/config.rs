//! The outbox's configuration: where commits go ([`Durability`],
//! [`StoreChoice`]) and how they are delivered (the forwarder's settings),
//! in one builder, [`OutboxConfig`]. Each setting lives in one place: the
//! flush interval, the error callback and the clock are the forwarder's,
//! and the store uses the same clock.

use std::fmt;
#[cfg(any(store_sqlite, store_sled))]
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use outbox_core::{DurableStore, Envelope, Error, SharedClock};
use outbox_forwarder::ForwarderConfig;

/// How durable commits must be.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[non_exhaustive]
pub enum Durability {
    /// The store named by [`StoreChoice`]; for [`StoreChoice::Auto`],
    /// natively a SQLite file in the platform's data directory
    /// (`default_sqlite_path`) with the `sqlite` feature, in a browser
    /// (wasm32) the IndexedDB database named after the app
    /// (`OutboxConfig::app_name`, default `"outbox"`) with the `idb`
    /// feature (both default features), and the in-memory store with a
    /// warning when no durable store is compiled in.
    #[default]
    Auto,
    /// In memory only: lost when the process ends. Reported as
    /// `outbox.durable = 0` with a warning.
    Memory,
    /// No outbox: events go straight to the sink, and are lost if it is
    /// down. For development only.
    Off,
}

/// What a commit does when the durable store is full (reports
/// `QuotaExceeded`: a full disk, an exhausted browser quota).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[non_exhaustive]
pub enum OnQuota {
    /// Degrade gracefully: the commit, and every later one, is held in
    /// memory (`Ok`, with a receipt that says `durable: false`), the
    /// outbox reports itself not durable (`outbox.durable = 0`,
    /// `Outbox::is_durable`) and calls `on_error` (once per fallback); the held commits
    /// are moved back to the durable store, in order, as soon as it takes
    /// writes again (tried every 2 s and before every commit), and then it
    /// is durable again.
    ///
    /// The loss window: a restart (or crash) while space is still missing
    /// loses the commits memory holds, exactly those whose receipts said
    /// `durable: false` and that were not moved back yet; nothing else.
    #[default]
    Fallback,
    /// Refuse: the commit fails with the store's `QuotaExceeded` error, so
    /// nothing is acknowledged that is not durable.
    Fail,
}

/// Which store to use. A variant exists only when its feature is on and
/// the target runs it (`sqlite`, `sled`, `postgres` natively; `idb` on
/// wasm32), so naming a store that is not compiled in fails to compile
/// rather than at run time.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum StoreChoice {
    /// Chosen by [`Durability`] and the compiled-in stores.
    #[default]
    Auto,
    /// A SQLite file (feature `sqlite`).
    #[cfg(store_sqlite)]
    Sqlite(PathBuf),
    /// A sled database directory (feature `sled`).
    #[cfg(store_sled)]
    Sled(PathBuf),
    /// A PostgreSQL database, by connection URL (feature `postgres`), with
    /// the store's default options (tables in the `public` schema); for
    /// other options open a `PostgresStore` and pass it as `Custom`.
    #[cfg(store_postgres)]
    Postgres(String),
    /// An IndexedDB database of this name (feature `idb`, wasm32): one per
    /// application and origin; every tab of the origin shares it.
    #[cfg(store_idb)]
    IndexedDb(String),
    /// The in-memory store.
    Memory,
    /// A store of your own.
    Custom(Arc<dyn DurableStore>),
}

impl fmt::Debug for StoreChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreChoice::Auto => f.write_str("Auto"),
            #[cfg(store_sqlite)]
            StoreChoice::Sqlite(p) => f.debug_tuple("Sqlite").field(p).finish(),
            #[cfg(store_sled)]
            StoreChoice::Sled(p) => f.debug_tuple("Sled").field(p).finish(),
            // The URL may carry a password: show only that it is set.
            #[cfg(store_postgres)]
            StoreChoice::Postgres(_) => f.write_str("Postgres(..)"),
            #[cfg(store_idb)]
            StoreChoice::IndexedDb(name) => f.debug_tuple("IndexedDb").field(name).finish(),
            StoreChoice::Memory => f.write_str("Memory"),
            StoreChoice::Custom(s) => f.debug_tuple("Custom").field(s).finish(),
        }
    }
}

/// Everything [`configure_outbox`](crate::configure_outbox) needs but the
/// sink: the durability, the store, and the forwarder's settings.
///
/// ```
/// use std::time::Duration;
/// use outbox::{Durability, ForwarderConfig, OutboxConfig};
///
/// let config = OutboxConfig::default()
///     .durability(Durability::Memory)
///     .flush_interval(Duration::from_millis(50))
///     .on_error(|event, error| eprintln!("outbox: {error} ({:?})", event.map(|e| e.id)));
/// assert_eq!(config.forwarder.flush_interval, Duration::from_millis(50));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct OutboxConfig {
    /// How durable commits must be.
    pub durability: Durability,
    /// Which store.
    pub store: StoreChoice,
    /// The forwarder's settings (flush interval, error callback, clock,
    /// retries, ...).
    pub forwarder: ForwarderConfig,
    /// The application's name: where [`StoreChoice::Auto`] keeps its data
    /// (natively `<data dir>/<app name>/outbox.db`, `None` meaning the
    /// executable's name; in a browser the IndexedDB database of that
    /// name, `None` meaning `"outbox"`).
    pub app_name: Option<String>,
    /// How many times an actor handles a message again after a version
    /// conflict (another writer committed the actor in between) before
    /// reporting it.
    pub conflict_retries: u32,
    /// What a commit does when the durable store is full: held in memory
    /// until it has room again (the default), or refused.
    pub on_quota: OnQuota,
}

impl Default for OutboxConfig {
    /// Durability and store `Auto`, the forwarder's defaults, no app name,
    /// 3 conflict retries, [`OnQuota::Fallback`].
    fn default() -> Self {
        OutboxConfig {
            durability: Durability::Auto,
            store: StoreChoice::Auto,
            forwarder: ForwarderConfig::default(),
            app_name: None,
            conflict_retries: 3,
            on_quota: OnQuota::Fallback,
        }
    }
}

impl OutboxConfig {
    /// Sets the application's name (where [`StoreChoice::Auto`] keeps its
    /// file: `<data dir>/<name>/outbox.db`).
    pub fn app_name(mut self, name: impl Into<String>) -> Self {
        self.app_name = Some(name.into());
        self
    }

    /// Sets how many times an actor handles a message again after a
    /// version conflict.
    pub fn conflict_retries(mut self, n: u32) -> Self {
        self.conflict_retries = n;
        self
    }

    /// Sets the forwarder's retry policy (the default retries transient
    /// failures until delivered; limits are opt-in).
    pub fn retry(mut self, policy: outbox_core::RetryPolicy) -> Self {
        self.forwarder.retry = policy;
        self
    }

    /// Sets what a commit does when the durable store is full.
    pub fn on_quota(mut self, on_quota: OnQuota) -> Self {
        self.on_quota = on_quota;
        self
    }

    /// Sets the durability.
    pub fn durability(mut self, d: Durability) -> Self {
        self.durability = d;
        self
    }

    /// Sets the store.
    pub fn store(mut self, s: StoreChoice) -> Self {
        self.store = s;
        self
    }

    /// Replaces every forwarder setting with `fwd` (including the flush
    /// interval, the error callback and the clock set before).
    pub fn forwarder(mut self, fwd: ForwarderConfig) -> Self {
        self.forwarder = fwd;
        self
    }

    /// Sets how often the forwarder looks for due events when nothing
    /// wakes it (the forwarder's [`ForwarderConfig::flush_interval`]).
    pub fn flush_interval(mut self, d: Duration) -> Self {
        self.forwarder.flush_interval = d;
        self
    }

    /// Sets where "now" comes from, for the store and the forwarder.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.forwarder.clock = clock;
        self
    }

    /// Sets the error callback: called with the event concerned (if any)
    /// and the error when the outbox handles an error itself (a dead
    /// letter, a fallback to memory, a commit memory holds that cannot be
    /// moved back to the durable store as it was).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn on_error(mut self, f: impl Fn(Option<&Envelope>, &Error) + Send + Sync + 'static) -> Self {
        self.forwarder.on_error = Some(Arc::new(f));
        self
    }

    /// Sets the error callback: called with the event concerned (if any)
    /// and the error when the outbox handles an error itself (a dead
    /// letter, a fallback to memory, a commit memory holds that cannot be
    /// moved back to the durable store as it was).
    #[cfg(target_arch = "wasm32")]
    pub fn on_error(mut self, f: impl Fn(Option<&Envelope>, &Error) + 'static) -> Self {
        self.forwarder.on_error = Some(Arc::new(f));
        self
    }

    /// The consumer inbox settings that match this outbox's delivery: its
    /// marks are kept as long as a redelivery can come
    /// ([`InboxConfig::for_delivery`](outbox_consumer::InboxConfig::for_delivery)
    /// of the forwarder's retry policy, lease and retention).
    pub fn inbox_config(&self) -> outbox_consumer::InboxConfig {
        let f = &self.forwarder;
        outbox_consumer::InboxConfig::for_delivery(&f.retry, f.lease, f.retention)
    }
}

impl fmt::Debug for OutboxConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxConfig")
            .field("durability", &self.durability)
            .field("store", &self.store)
            .field("forwarder", &self.forwarder)
            .field("app_name", &self.app_name)
            .field("conflict_retries", &self.conflict_retries)
            .field("on_quota", &self.on_quota)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn builder_sets_each_field_once_and_the_callback_runs() {
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let c = OutboxConfig::default()
            .durability(Durability::Memory)
            .store(StoreChoice::Memory)
            .flush_interval(Duration::from_millis(5))
            .on_error(move |_, _| {
                h.fetch_add(1, Ordering::SeqCst);
            });
        assert_eq!(c.durability, Durability::Memory);
        assert!(matches!(c.store, StoreChoice::Memory));
        assert_eq!(c.on_quota, OnQuota::Fallback, "graceful degradation by default");
        assert_eq!(c.clone().on_quota(OnQuota::Fail).on_quota, OnQuota::Fail);
        assert_eq!(c.forwarder.flush_interval, Duration::from_millis(5));
        (c.forwarder.on_error.as_ref().expect("set"))(None, &Error::internal("x"));
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        // Replacing the forwarder settings replaces the callback too: one place per setting.
        let c = c.forwarder(ForwarderConfig::default());
        assert!(c.forwarder.on_error.is_none());
        assert_eq!(c.forwarder.flush_interval, ForwarderConfig::default().flush_interval);
    }

    #[test]
    fn the_default_inbox_matches_the_default_forwarder() {
        assert_eq!(OutboxConfig::default().inbox_config(), outbox_consumer::InboxConfig::default());
    }
}
