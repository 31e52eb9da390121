//! How to open a [`PostgresStore`]: [`PostgresOptions`] and its `open`.

use std::fmt;
use std::time::Duration;

use outbox_core::{Limits, Result, SharedClock, SystemClock};

use crate::error::map;
use crate::notify::Notifier;
use crate::pool::{Pool, Timeouts, quote_ident};
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
    connect_timeout: Option<Duration>,
    statement_timeout: Duration,
    read_only: bool,
}

impl fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("limits", &self.limits)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .finish_non_exhaustive()
    }
}

impl PostgresOptions {
    /// The connect timeout unless the options or the URL set one.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    /// The statement timeout unless the options set one.
    pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

    /// Defaults for the database at `url` (a libpq connection string or a
    /// `postgresql://` URL): schema `public`, 8 pooled connections, system
    /// clock, the URL's `connect_timeout` or
    /// [`DEFAULT_CONNECT_TIMEOUT`](Self::DEFAULT_CONNECT_TIMEOUT),
    /// [`DEFAULT_STATEMENT_TIMEOUT`](Self::DEFAULT_STATEMENT_TIMEOUT).
    pub fn new(url: impl Into<String>) -> Self {
        PostgresOptions {
            url: url.into(),
            schema: "public".into(),
            pool_size: 8,
            clock: SystemClock::shared(),
            limits: Limits::default(),
            connect_timeout: None,
            statement_timeout: Self::DEFAULT_STATEMENT_TIMEOUT,
            read_only: false,
        }
    }

    /// Longest wait for a new connection (at least 1 ms): the socket,
    /// the startup and authentication exchange and the session's
    /// settings, together. Overrides the URL's `connect_timeout`. A server
    /// that accepts the connection and never answers fails the open (or
    /// the call that needed a connection) with `Unavailable` once it
    /// passes.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout.max(Duration::from_millis(1)));
        self
    }

    /// Longest a statement may run (at least 1 ms): the server cancels it
    /// past this (`statement_timeout`, SQLSTATE 57014: `Unavailable`).
    /// And a whole store call (waiting for a pooled connection, opening
    /// one, its statements, including the schema upgrade when opening)
    /// gives up with `Unavailable` when it has not finished within the
    /// connect timeout plus this, whatever the server or the network
    /// does. Raise it for an upgrade that rewrites a large events table.
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout.max(Duration::from_millis(1));
        self
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

    /// Opens the store for reading only: no schema is created or
    /// migrated, the schema's version is checked (none is `Corrupted`, a
    /// newer one `SchemaTooNew`, an older one `InvalidInput`), and every
    /// session runs with `default_transaction_read_only` on, so the
    /// server refuses any write through the store (`PermissionDenied`).
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Connects, creates the schema if needed and migrates it, within the
    /// connect timeout plus the statement timeout.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a malformed URL, a database that does
    /// not exist, or a login the driver cannot complete (a password the
    /// server asks for and the URL lacks), a CA file (`sslrootcert`) that
    /// cannot be read, a server that does not offer the TLS the URL
    /// requires; [`Error::PermissionDenied`] for a login or an action the
    /// server refuses (an unknown role, a wrong password, a host
    /// `pg_hba.conf` does not admit, no `CREATE` on the database or
    /// schema) and for a server certificate refused by `sslmode`
    /// `verify-ca` or `verify-full` (an unknown CA, another host name);
    /// [`Error::Unavailable`] when the server cannot be reached
    /// or does not answer in time; [`Error::SchemaTooNew`] for a schema
    /// written by a newer version (left untouched). The messages carry
    /// the server's reason and SQLSTATE.
    ///
    /// [`Error::InvalidInput`]: outbox_core::Error::InvalidInput
    /// [`Error::PermissionDenied`]: outbox_core::Error::PermissionDenied
    /// [`Error::Unavailable`]: outbox_core::Error::Unavailable
    /// [`Error::SchemaTooNew`]: outbox_core::Error::SchemaTooNew
    pub async fn open(self) -> Result<PostgresStore> {
        // `sslmode` and `sslrootcert` are read by `tls.rs`.
        let (mut config, tls) = crate::tls::parse(&self.url)?;
        let connect_timeout = self
            .connect_timeout
            .or_else(|| config.get_connect_timeout().copied())
            .unwrap_or(Self::DEFAULT_CONNECT_TIMEOUT)
            .max(Duration::from_millis(1));
        // Each socket attempt too (one per address of a host), so a host
        // that does not answer leaves time for the next.
        config.connect_timeout(connect_timeout);
        let timeouts = Timeouts { connect: connect_timeout, statement: self.statement_timeout };
        if self.read_only {
            crate::read_only::session(&mut config);
        }
        let pool = Pool::new(config.clone(), tls.clone(), &self.schema, self.pool_size, timeouts);
        pool.bounded("open", async {
            // Closed when dropped, not pooled.
            let mut first = pool.connect().await?;
            if self.read_only {
                return crate::read_only::check_schema(&mut first.client, &self.schema).await;
            }
            if self.schema != "public" {
                first
                    .client
                    .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(&self.schema)))
                    .await
                    .map_err(|e| map("create schema", e))?;
            }
            schema::migrate(&mut first.client, &self.schema).await
        })
        .await?;
        Ok(PostgresStore::new(Inner {
            pool,
            notifier: Notifier::start(config.clone(), tls.clone(), self.schema.clone(), timeouts),
            config,
            tls,
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
