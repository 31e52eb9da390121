//! A small connection pool: up to `size` connections, opened on demand,
//! each with the store's `search_path` and `statement_timeout`, handed
//! back unless closed or left behind by a call that ran out of time.
//!
//! Every wait on the network is bounded ([`Timeouts`]): opening a
//! connection by the connect timeout, each statement by the server's
//! `statement_timeout`, and a whole store call (its wait for a pooled
//! connection, a new connection if needed, and its statements) by
//! [`Pool::bounded`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use outbox_core::{Error, Result};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::{Client, Config, Statement};

use crate::error::{PgError, map, map_connect};
use crate::tls::MakeTls;

/// How long the store waits on the server.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    /// Opening a connection: socket, TLS negotiation, startup,
    /// authentication and the session's settings, together.
    pub(crate) connect: Duration,
    /// One statement, enforced by the server (`statement_timeout`).
    pub(crate) statement: Duration,
}

impl Timeouts {
    /// A whole store call: a connection (pooled or new) and its
    /// statements. The server cancels a statement running past the
    /// statement timeout; this bound covers a server or network that
    /// stops answering altogether.
    pub(crate) fn call(&self) -> Duration {
        self.connect.saturating_add(self.statement)
    }

    /// `SET statement_timeout` for a new session.
    pub(crate) fn session_sql(&self) -> String {
        format!("SET statement_timeout TO {}", self.statement.as_millis().max(1))
    }
}

tokio::task_local! {
    /// The deadline of the store call running on this task (set by
    /// [`Pool::bounded`]).
    static DEADLINE: Instant;
}

/// Runs `f`, the work of one store call (`what`), giving up with
/// `Unavailable` once `limit` has passed. A pooled connection the call
/// holds when it gives up is closed, not handed back: it may still wait
/// for the server.
pub(crate) async fn bounded<T>(
    what: &'static str,
    limit: Duration,
    f: impl Future<Output = Result<T>>,
) -> Result<T> {
    let deadline = Instant::now() + limit;
    match tokio::time::timeout_at(deadline, DEADLINE.scope(deadline, f)).await {
        Ok(r) => r,
        Err(_) => Err(PgError::TimedOut { what, after: limit }.into()),
    }
}

/// An open connection and the task driving it. Dropping it closes the
/// connection at once, whatever it is waiting for (dropping only the
/// client would let the driver wait for the answers to requests already
/// sent, without bound if the server stopped answering). The server
/// takes a closed idle connection silently and rolls back an open
/// transaction.
pub(crate) struct Connection {
    pub(crate) client: Client,
    driver: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Opens a connection for `what` and runs `setup` on it, all within
/// `timeout`.
pub(crate) async fn connect(
    config: &Config,
    tls: &MakeTls,
    what: &'static str,
    setup: &str,
    timeout: Duration,
) -> Result<Connection> {
    let open = async {
        let (client, connection) = config.connect(tls.clone()).await.map_err(|e| map_connect(what, e))?;
        let driver = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(target: "outbox", error = %e, "outbox: postgres connection ended");
            }
        });
        let conn = Connection { client, driver };
        conn.client.batch_execute(setup).await.map_err(|e| map("set up the session", e))?;
        Ok(conn)
    };
    match tokio::time::timeout(timeout, open).await {
        Ok(r) => r,
        Err(_) => Err(PgError::TimedOut { what, after: timeout }.into()),
    }
}

pub(crate) struct Pool {
    config: Config,
    tls: MakeTls,
    setup: String,
    timeouts: Timeouts,
    idle: Mutex<Vec<Pooled>>,
    permits: Semaphore,
    size: usize,
}

/// A connection and the statements prepared on it, by SQL text.
struct Pooled {
    conn: Connection,
    statements: HashMap<&'static str, Statement>,
}

pub(crate) struct Conn<'a> {
    client: Option<Pooled>,
    pool: &'a Pool,
    /// Past it, the call holding this connection has given up (or is
    /// about to), and the connection is closed instead of pooled.
    deadline: Instant,
    _permit: SemaphorePermit<'a>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `name` as a quoted SQL identifier.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl Pool {
    pub(crate) fn new(config: Config, tls: MakeTls, schema: &str, size: usize, timeouts: Timeouts) -> Self {
        Pool {
            config,
            tls,
            setup: format!("SET search_path TO {}; {}", quote_ident(schema), timeouts.session_sql()),
            timeouts,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(size.max(1)),
            size: size.max(1),
        }
    }

    pub(crate) fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Runs `f`, one store call (`what`), within [`Timeouts::call`].
    pub(crate) async fn bounded<T>(
        &self,
        what: &'static str,
        f: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        bounded(what, self.timeouts.call(), f).await
    }

    /// A new connection with the store's session settings, its driver
    /// task spawned on the current runtime.
    pub(crate) async fn connect(&self) -> Result<Connection> {
        connect(&self.config, &self.tls, "connect", &self.setup, self.timeouts.connect).await
    }

    /// A connection: an idle one, or a new one while fewer than `size`
    /// are open. Waits for one to be handed back at most until the
    /// current call's deadline.
    pub(crate) async fn get(&self) -> Result<Conn<'_>> {
        let deadline = DEADLINE.try_with(|d| *d).unwrap_or_else(|_| Instant::now() + self.timeouts.call());
        let permit = match tokio::time::timeout_at(deadline, self.permits.acquire()).await {
            Ok(p) => p.map_err(|_| Error::from(PgError::PoolClosed))?,
            Err(_) => {
                return Err(Error::Unavailable {
                    message: format!(
                        "postgres: all {} pooled connections stayed busy for {} ms",
                        self.size,
                        self.timeouts.call().as_millis()
                    ),
                    source: None,
                });
            }
        };
        let idle = {
            let mut idle = lock(&self.idle);
            loop {
                match idle.pop() {
                    Some(c) if c.conn.client.is_closed() => continue,
                    other => break other,
                }
            }
        };
        let client = match idle {
            Some(c) => c,
            None => Pooled { conn: self.connect().await?, statements: HashMap::new() },
        };
        Ok(Conn { client: Some(client), pool: self, deadline, _permit: permit })
    }
}

impl Conn<'_> {
    fn pooled(&mut self) -> &mut Pooled {
        // Present until drop.
        self.client.as_mut().unwrap_or_else(|| unreachable!("a pooled connection is taken only on drop"))
    }

    pub(crate) fn client(&mut self) -> &mut Client {
        &mut self.pooled().conn.client
    }

    /// `sqls` prepared on this connection: cached ones at once, the rest
    /// prepared together (pipelined) and kept for the connection's life.
    pub(crate) async fn prepare<const N: usize>(
        &mut self,
        sqls: [&'static str; N],
    ) -> Result<[Statement; N]> {
        let pooled = self.pooled();
        let missing: Vec<&'static str> =
            sqls.iter().copied().filter(|s| !pooled.statements.contains_key(s)).collect();
        if !missing.is_empty() {
            let client = &pooled.conn.client;
            let prepared = futures::future::join_all(missing.iter().map(|s| client.prepare(s))).await;
            for (sql, st) in missing.into_iter().zip(prepared) {
                pooled.statements.insert(sql, st.map_err(|e| map("prepare", e))?);
            }
        }
        Ok(sqls.map(|s| pooled.statements[s].clone()))
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        // Past the deadline, the call holding it ran out of time, maybe
        // mid-statement: the connection is dropped (closed), not pooled.
        if let Some(c) = self.client.take()
            && Instant::now() < self.deadline
            && !c.conn.client.is_closed()
        {
            lock(&self.pool.idle).push(c);
        }
    }
}
