//! `configure_outbox` and the [`Outbox`] handle.

use std::fmt;
use std::sync::{Arc, Mutex, Once};

use outbox_core::{
    Commit, CommitReceipt, DurableStore, Envelope, Error, Outcome, Result, SharedClock, Sink, SystemClock,
};
use outbox_forwarder::{ErrorCallback, Forwarder, ForwarderHandle, Wake};
use outbox_store_memory::MemoryStore;

use crate::config::{Durability, OutboxConfig, StoreChoice};
use crate::fallback::FallbackStore;

static MEMORY_WARNING: Once = Once::new();
static OFF_WARNING: Once = Once::new();

/// The default SQLite file when [`StoreChoice::Auto`] picks SQLite:
/// `outbox.db` in the working directory.
pub const DEFAULT_SQLITE_PATH: &str = "outbox.db";

struct Inner {
    store: Arc<dyn DurableStore>,
    fallback: Option<Arc<FallbackStore>>,
    forwarder: Mutex<Option<ForwarderHandle>>,
    wake: Option<Wake>,
    sink: Arc<dyn Sink>,
    durability: Durability,
    on_error: Option<ErrorCallback>,
}

/// A running outbox: a store, a forwarder delivering to a sink, and the
/// actors committing to it. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

impl fmt::Debug for Outbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox")
            .field("store", &self.inner.store)
            .field("durability", &self.inner.durability)
            .field("durable", &self.is_durable())
            .finish_non_exhaustive()
    }
}

async fn open_durable(choice: &StoreChoice, clock: &SharedClock) -> Result<Arc<dyn DurableStore>> {
    match choice {
        StoreChoice::Custom(s) => Ok(s.clone()),
        StoreChoice::Memory => Ok(Arc::new(MemoryStore::unannounced(clock.clone()))),
        #[cfg(feature = "sqlite")]
        StoreChoice::Auto => open_sqlite(std::path::Path::new(DEFAULT_SQLITE_PATH), clock),
        #[cfg(not(feature = "sqlite"))]
        StoreChoice::Auto => Ok(Arc::new(MemoryStore::unannounced(clock.clone()))),
        #[cfg(feature = "sqlite")]
        StoreChoice::Sqlite(path) => open_sqlite(path, clock),
        #[cfg(feature = "sled")]
        StoreChoice::Sled(path) => {
            Ok(Arc::new(outbox_store_sled::SledStore::options(path).clock(clock.clone()).open()?))
        }
        #[cfg(feature = "postgres")]
        StoreChoice::Postgres(url) => Ok(Arc::new(
            outbox_store_postgres::PostgresStore::options(url.clone()).clock(clock.clone()).open().await?,
        )),
    }
}

#[cfg(feature = "sqlite")]
fn open_sqlite(path: &std::path::Path, clock: &SharedClock) -> Result<Arc<dyn DurableStore>> {
    Ok(Arc::new(outbox_store_sqlite::SqliteStore::options(path).clock(clock.clone()).open()?))
}

/// Starts an outbox that delivers to `sink`, as `config` says:
///
/// - [`Durability::Auto`]: the store named by `config.store`; for
///   [`StoreChoice::Auto`], SQLite (`outbox.db` in the working directory)
///   when the `sqlite` feature is on (the default), memory (with a warning)
///   otherwise. A durable store that fills up falls back to memory for new
///   commits (`outbox.durable` drops to 0, `on_error` is called once).
/// - [`Durability::Memory`]: the in-memory store, whatever `config.store`
///   says; warns once, `outbox.durable = 0`.
/// - [`Durability::Off`]: no outbox. State is kept in memory and events go
///   straight to the sink as they are committed; an event the sink refuses
///   is lost (reported to `on_error`). Warns once. Development only.
///
/// A forwarder with `config.forwarder`'s settings is started on the
/// current Tokio runtime (not for `Off`); the store reads time from the
/// same clock.
pub async fn configure_outbox(config: OutboxConfig, sink: Arc<dyn Sink>) -> Result<Outbox> {
    let (durability, store_choice, fwd) = config.into_parts();
    let clock = fwd.clock.clone();
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
            let primary = open_durable(&store_choice, &clock).await?;
            if !primary.capabilities().durable {
                warn_memory();
                (primary, None)
            } else {
                let on_error = fwd.on_error.clone();
                let hook = Box::new(move |e: &Error| {
                    if let Some(cb) = &on_error {
                        cb(None, e);
                    }
                });
                let fb = Arc::new(FallbackStore::new(primary, clock.clone(), hook));
                (fb.clone(), Some(fb))
            }
        }
    };
    metrics::gauge!(outbox_forwarder::metrics::DURABLE).set(if store.capabilities().durable {
        1.0
    } else {
        0.0
    });
    let on_error = fwd.on_error.clone();
    let (forwarder, wake) = if durability == Durability::Off {
        (None, None)
    } else {
        let f = Forwarder::new(store.clone(), sink.clone(), fwd);
        let wake = f.waker();
        (Some(f.spawn()), Some(wake))
    };
    Ok(Outbox {
        inner: Arc::new(Inner {
            store,
            fallback,
            forwarder: Mutex::new(forwarder),
            wake,
            sink,
            durability,
            on_error,
        }),
    })
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
    pub async fn commit(&self, commit: Commit) -> Result<CommitReceipt> {
        if self.inner.durability == Durability::Off {
            let events: Vec<_> = commit.events.clone();
            let receipt = self.inner.store.put_state_and_events(commit).await?;
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
            return Ok(receipt);
        }
        let receipt = self.inner.store.put_state_and_events(commit).await?;
        if let Some(w) = &self.inner.wake {
            w.wake();
        }
        Ok(receipt)
    }

    /// The store (for inspection, consumers, custom use).
    pub fn store(&self) -> Arc<dyn DurableStore> {
        self.inner.store.clone()
    }

    /// Whether new commits are durable right now (false for memory, off,
    /// and after a quota fallback).
    pub fn is_durable(&self) -> bool {
        self.inner.durability != Durability::Off
            && self.inner.fallback.as_ref().is_none_or(|f| !f.is_fallen())
            && self.inner.store.capabilities().durable
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
            h.shutdown().await;
        }
    }
}

/// The system clock, for callers building a [`ForwarderConfig`](outbox_forwarder::ForwarderConfig).
pub fn system_clock() -> SharedClock {
    SystemClock::shared()
}
