//! Configuration types shared by the facade and the forwarder.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::event::Envelope;
use crate::store::DurableStore;

/// How durable commits must be.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[non_exhaustive]
pub enum Durability {
    /// The best durable store compiled in: IndexedDB on `wasm32`, SQLite
    /// elsewhere.
    #[default]
    Auto,
    /// In memory only: lost when the process ends. Reported as
    /// `outbox.durable = 0` with a warning.
    Memory,
    /// No outbox: events go straight to the sink, and are lost if it is
    /// down. For development only.
    Off,
}

/// Which store to use.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum StoreChoice {
    /// Chosen by [`Durability`] and the compiled-in backends.
    #[default]
    Auto,
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A sled database directory.
    Sled(PathBuf),
    /// An IndexedDB database (browser), by name.
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
            StoreChoice::Sqlite(p) => f.debug_tuple("Sqlite").field(p).finish(),
            StoreChoice::Sled(p) => f.debug_tuple("Sled").field(p).finish(),
            StoreChoice::IndexedDb(n) => f.debug_tuple("IndexedDb").field(n).finish(),
            StoreChoice::Memory => f.write_str("Memory"),
            StoreChoice::Custom(s) => f.debug_tuple("Custom").field(s).finish(),
        }
    }
}

/// Called when the outbox hits an error it handles itself (a dead letter,
/// a fallback to memory): the event concerned, if any, and the error.
#[cfg(not(target_arch = "wasm32"))]
pub type ErrorCallback = Arc<dyn Fn(Option<&Envelope>, &Error) + Send + Sync>;

/// Called when the outbox hits an error it handles itself (a dead letter,
/// a fallback to memory): the event concerned, if any, and the error.
#[cfg(target_arch = "wasm32")]
pub type ErrorCallback = Arc<dyn Fn(Option<&Envelope>, &Error)>;

/// Outbox settings.
#[derive(Clone)]
pub struct OutboxConfig {
    /// How durable commits must be.
    pub durability: Durability,
    /// Which store.
    pub store: StoreChoice,
    /// How often the forwarder looks for due events when nothing wakes it.
    pub flush_interval: Duration,
    /// Error callback.
    pub on_error: Option<ErrorCallback>,
}

impl Default for OutboxConfig {
    /// `Auto` durability and store, 100 ms flush interval, no callback.
    fn default() -> Self {
        OutboxConfig {
            durability: Durability::Auto,
            store: StoreChoice::Auto,
            flush_interval: Duration::from_millis(100),
            on_error: None,
        }
    }
}

impl OutboxConfig {
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

    /// Sets the flush interval.
    pub fn flush_interval(mut self, d: Duration) -> Self {
        self.flush_interval = d;
        self
    }

    /// Sets the error callback.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn on_error(mut self, f: impl Fn(Option<&Envelope>, &Error) + Send + Sync + 'static) -> Self {
        self.on_error = Some(Arc::new(f));
        self
    }

    /// Sets the error callback.
    #[cfg(target_arch = "wasm32")]
    pub fn on_error(mut self, f: impl Fn(Option<&Envelope>, &Error) + 'static) -> Self {
        self.on_error = Some(Arc::new(f));
        self
    }
}

impl fmt::Debug for OutboxConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxConfig")
            .field("durability", &self.durability)
            .field("store", &self.store)
            .field("flush_interval", &self.flush_interval)
            .field("on_error", &self.on_error.as_ref().map(|_| "Fn"))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn builder_sets_fields_and_callback_runs() {
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let c = OutboxConfig::default()
            .durability(Durability::Memory)
            .store(StoreChoice::Sqlite("x.db".into()))
            .flush_interval(Duration::from_millis(5))
            .on_error(move |_, _| {
                h.fetch_add(1, Ordering::SeqCst);
            });
        assert_eq!(c.durability, Durability::Memory);
        assert!(matches!(c.store, StoreChoice::Sqlite(_)));
        (c.on_error.as_ref().unwrap())(None, &Error::internal("x"));
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        assert!(format!("{c:?}").contains("Sqlite"));
    }
}
