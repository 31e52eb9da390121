//! [`IdbOptions`]: how to open an [`IdbStore`], and the [`Durability`]
//! hint of its writing transactions.

use std::fmt;

use outbox_core::{Limits, Result, SharedClock, SystemClock};

use crate::store::IdbStore;

/// How hard a commit's transaction presses the data to disk: the
/// IndexedDB transaction durability hint.
///
/// - [`Durability::Relaxed`] (the default): complete once the browser has
///   the data. A commit that returned `Ok` survives the tab closing or
///   crashing and the browser process crashing, which is what a web app
///   meets; an operating-system crash or a power loss may lose the last
///   moments of commits. Chromium's own default, at a fraction of strict's
///   latency.
/// - [`Durability::Strict`]: the browser reports the transaction complete
///   only after the data is flushed to disk, so a commit that returned
///   `Ok` also survives a power loss. One flush per commit.
/// - [`Durability::BrowserDefault`]: whatever the browser does without a
///   hint (Chromium: relaxed; Firefox: strict).
///
/// Browsers that do not know the hint ignore it (and behave as their
/// default).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// Flushed to disk before a commit returns.
    Strict,
    /// Handed to the browser before a commit returns.
    #[default]
    Relaxed,
    /// No hint.
    BrowserDefault,
}

/// How to open an [`IdbStore`].
pub struct IdbOptions {
    pub(crate) name: String,
    pub(crate) durability: Durability,
    pub(crate) clock: SharedClock,
    pub(crate) limits: Limits,
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
    /// [`Error::SchemaTooNew`](outbox_core::Error::SchemaTooNew) when the
    /// database was written by a newer build;
    /// [`Error::Unsupported`](outbox_core::Error::Unsupported) where there
    /// is no `indexedDB`;
    /// [`Error::PermissionDenied`](outbox_core::Error::PermissionDenied)
    /// where storage is blocked;
    /// [`Error::Corrupted`](outbox_core::Error::Corrupted) when a database
    /// of that name lacks the outbox's object stores.
    pub async fn open(self) -> Result<IdbStore> {
        let db = crate::schema::open(&self.name).await?;
        let persisted = crate::platform::storage_persisted().await;
        Ok(IdbStore::new(db, self, persisted))
    }
}
