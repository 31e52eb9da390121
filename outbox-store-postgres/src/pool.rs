//! A small connection pool: up to `size` connections, opened on demand,
//! each with the store's `search_path`, handed back unless closed.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use outbox_core::{Error, Result};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_postgres::{Client, Config, NoTls, Statement};

use crate::error::{PgError, map};

pub(crate) struct Pool {
    config: Config,
    search_path: String,
    idle: Mutex<Vec<Pooled>>,
    permits: Semaphore,
}

/// A connection and the statements prepared on it, by SQL text.
struct Pooled {
    client: Client,
    statements: HashMap<&'static str, Statement>,
}

pub(crate) struct Conn<'a> {
    client: Option<Pooled>,
    pool: &'a Pool,
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
    pub(crate) fn new(config: Config, schema: &str, size: usize) -> Self {
        Pool {
            config,
            search_path: format!("SET search_path TO {}", quote_ident(schema)),
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(size.max(1)),
        }
    }

    /// A new connection, its driver task spawned on the current runtime.
    pub(crate) async fn connect(&self) -> Result<Client> {
        let (client, connection) = self.config.connect(NoTls).await.map_err(|e| map("connect", e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(target: "outbox", error = %e, "outbox: postgres connection ended");
            }
        });
        client.batch_execute(&self.search_path).await.map_err(|e| map("set search_path", e))?;
        Ok(client)
    }

    pub(crate) async fn get(&self) -> Result<Conn<'_>> {
        let permit = self.permits.acquire().await.map_err(|_| Error::from(PgError::PoolClosed))?;
        let idle = {
            let mut idle = lock(&self.idle);
            loop {
                match idle.pop() {
                    Some(c) if c.client.is_closed() => continue,
                    other => break other,
                }
            }
        };
        let client = match idle {
            Some(c) => c,
            None => Pooled { client: self.connect().await?, statements: HashMap::new() },
        };
        Ok(Conn { client: Some(client), pool: self, _permit: permit })
    }
}

impl Conn<'_> {
    fn pooled(&mut self) -> &mut Pooled {
        // Present until drop.
        self.client.as_mut().unwrap_or_else(|| unreachable!("a pooled connection is taken only on drop"))
    }

    pub(crate) fn client(&mut self) -> &mut Client {
        &mut self.pooled().client
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
            let client = &pooled.client;
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
        if let Some(c) = self.client.take()
            && !c.client.is_closed()
        {
            lock(&self.pool.idle).push(c);
        }
    }
}
