//! A small connection pool: up to `size` connections, opened on demand,
//! each with the store's `search_path`, handed back unless closed.

use std::sync::{Mutex, MutexGuard};

use outbox_core::{Error, Result};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_postgres::{Client, Config, NoTls};

use crate::error::map;

pub(crate) struct Pool {
    config: Config,
    search_path: String,
    idle: Mutex<Vec<Client>>,
    permits: Semaphore,
}

pub(crate) struct Conn<'a> {
    client: Option<Client>,
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
        let permit = self.permits.acquire().await.map_err(|_| Error::Unavailable {
            message: "the postgres pool is closed".into(),
            source: None,
        })?;
        let idle = {
            let mut idle = lock(&self.idle);
            loop {
                match idle.pop() {
                    Some(c) if c.is_closed() => continue,
                    other => break other,
                }
            }
        };
        let client = match idle {
            Some(c) => c,
            None => self.connect().await?,
        };
        Ok(Conn { client: Some(client), pool: self, _permit: permit })
    }
}

impl Conn<'_> {
    pub(crate) fn client(&mut self) -> &mut Client {
        // Present until drop.
        self.client.as_mut().unwrap_or_else(|| unreachable!("a pooled connection is taken only on drop"))
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.client.take()
            && !c.is_closed()
        {
            lock(&self.pool.idle).push(c);
        }
    }
}
