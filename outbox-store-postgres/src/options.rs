//! How to open a [`PostgresStore`]: [`PostgresOptions`] and its `open`.

use std::fmt;
use std::str::FromStr;

use outbox_core::{Error, Limits, Result, SharedClock, SystemClock};
use tokio_postgres::Config;

use crate::error::map;
use crate::notify::Notifier;
use crate::pool::{Pool, quote_ident};
use crate::schema;
use crate::store::{Inner, PostgresStore};

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
        Ok(PostgresStore::new(Inner {
            pool,
            notifier: Notifier::start(config.clone(), self.schema.clone()),
            config,
            schema: self.schema,
            clock: self.clock,
            limits: self.limits,
        }))
    }
}

// The store's constructors live with the options they build (`store.rs`
// holds the trait impls and does not name the options).
impl PostgresStore {
    /// Opens the store at `url` with default options.
    pub async fn open(url: &str) -> Result<Self> {
        PostgresOptions::new(url).open().await
    }

    /// Options for the database at `url`.
    pub fn options(url: impl Into<String>) -> PostgresOptions {
        PostgresOptions::new(url)
    }
}
