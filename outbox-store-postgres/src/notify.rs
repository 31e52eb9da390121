//! Commit wake-ups sent after the commit, coalesced, off the commit path.
//!
//! A `NOTIFY` inside the commit's transaction would take PostgreSQL's
//! global notification lock from the commit until its WAL flush, so
//! concurrent committers could no longer share an fsync. Instead a commit
//! with events asks this notifier to signal; one task per store handle
//! sends the signals on its own connection with `synchronous_commit = off`
//! (a notification carries no data to make durable). Signals asked for
//! while one is being sent are merged into the next. A process that dies
//! between its commit and the signal leaves the forwarders' polling to
//! find the events.

use tokio::sync::mpsc;
use tokio_postgres::{Client, Config, NoTls, Statement};

use crate::store::COMMIT_CHANNEL;

#[derive(Debug)]
pub(crate) struct Notifier {
    tx: mpsc::Sender<()>,
}

impl Notifier {
    /// Starts the notifying task for `schema` (it ends when the notifier
    /// is dropped).
    pub(crate) fn start(config: Config, schema: String) -> Self {
        let (tx, mut rx) = mpsc::channel::<()>(1);
        tokio::spawn(async move {
            let mut conn: Option<(Client, Statement)> = None;
            while rx.recv().await.is_some() {
                if conn.as_ref().is_none_or(|(c, _)| c.is_closed()) {
                    conn = connect(&config).await;
                }
                let Some((c, notify)) = &conn else { continue };
                if let Err(e) = c.execute(notify, &[&COMMIT_CHANNEL, &schema]).await {
                    tracing::debug!(target: "outbox", error = %e, "outbox: commit notification failed");
                    conn = None;
                }
            }
        });
        Notifier { tx }
    }

    /// Asks for a signal; merged with one already waiting.
    pub(crate) fn notify(&self) {
        let _ = self.tx.try_send(());
    }
}

/// A connection for signalling, with its `pg_notify` statement prepared
/// (one round trip per signal instead of two).
async fn connect(config: &Config) -> Option<(Client, Statement)> {
    let (client, connection) = match config.connect(NoTls).await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(target: "outbox", error = %e, "outbox: notifier connection failed");
            return None;
        }
    };
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client.batch_execute("SET synchronous_commit TO off").await.ok()?;
    let notify = client.prepare("SELECT pg_notify($1, $2)").await.ok()?;
    Some((client, notify))
}
