//! Making a memory store: empty, over a reopenable backing, with a clock
//! and limits.

use std::sync::{Arc, Mutex, MutexGuard};

use outbox_core::{ActorId, Limits, SharedClock, StateSnapshot, SystemClock};

use crate::schema::{Inner, MemoryBacking};

/// The full store contract, in memory.
///
/// Not durable: everything is gone when the value is dropped. It reports
/// `durable: false` in its [`Capabilities`](outbox_core::Capabilities) and logs a warning when made.
/// Cloning is not offered; share it with `Arc`.
#[derive(Debug)]
pub struct MemoryStore {
    pub(crate) inner: Arc<Mutex<Inner>>,
    /// Opened over a [`MemoryBacking`] that outlives it.
    pub(crate) reopenable: bool,
    pub(crate) clock: SharedClock,
    pub(crate) limits: Limits,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store on the system clock, with default limits.
    pub fn new() -> Self {
        Self::with_clock(SystemClock::shared())
    }

    /// An empty store reading time from `clock`.
    pub fn with_clock(clock: SharedClock) -> Self {
        tracing::warn!(
            target: "outbox",
            "outbox: using the in-memory store; committed events are lost when the process exits (outbox.durable = 0)"
        );
        MemoryStore { inner: Arc::default(), reopenable: false, clock, limits: Limits::default() }
    }

    /// An empty store that does not log the not-durable warning: for
    /// wrappers that report durability themselves (a quota fallback).
    pub fn unannounced(clock: SharedClock) -> Self {
        MemoryStore { inner: Arc::default(), reopenable: false, clock, limits: Limits::default() }
    }

    /// Puts `actor`'s state in as `snapshot` (a copy of state committed
    /// elsewhere, so commits here continue its versions). Replaces any
    /// state the actor has here.
    pub fn seed_state(&self, actor: ActorId, snapshot: StateSnapshot) {
        self.lock().states.insert(actor, snapshot);
    }

    /// A store over `backing`: reopening (another `open` on the same
    /// backing) keeps what was committed, within this process.
    pub fn open(backing: &MemoryBacking, clock: SharedClock) -> Self {
        MemoryStore { inner: backing.0.clone(), reopenable: true, ..Self::with_clock(clock) }
    }

    /// Sets the limits commits are checked against.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied change:
        // every mutation below validates first and then applies infallibly.
        self.inner.lock().unwrap_or_else(|poison| poison.into_inner())
    }
}
