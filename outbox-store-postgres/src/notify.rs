//! Commit wake-ups: the `NOTIFY` a commit sends ([`Notifier`]) and the
//! `LISTEN` that receives it ([`listen`]).
//!
//! Notifications go out after the commit, coalesced, off the commit path.
//! A `NOTIFY` inside the commit's transaction would take PostgreSQL's
//! global notification lock from the commit until its WAL flush, so
//! concurrent committers could no longer share an fsync. Instead a commit
//! with events asks this notifier to signal; one task per store handle
//! sends the signals on its own connection with `synchronous_commit = off`
//! (a notification carries no data to make durable). Signals asked for
//! while one is being sent are merged into the next. A process that dies
//! between its commit and the signal leaves the forwarders' polling to
//! find the events.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use outbox_core::Result;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, Config, Statement};

use crate::error::{PgError, map, map_connect};
use crate::pool::{self, Connection, Timeouts};
use crate::tls::MakeTls;

/// The NOTIFY channel a commit with events signals on.
pub const COMMIT_CHANNEL: &str = "outbox_commit";

/// The sending half: one task per store handle that signals
/// [`COMMIT_CHANNEL`] when asked.
#[derive(Debug)]
pub(crate) struct Notifier {
    tx: mpsc::Sender<()>,
}

impl Notifier {
    /// Starts the notifying task for `schema` (it ends when the notifier
    /// is dropped). Each signal waits at most the statement timeout (a
    /// new connection first, the connect timeout more).
    pub(crate) fn start(config: Config, tls: MakeTls, schema: String, timeouts: Timeouts) -> Self {
        let (tx, mut rx) = mpsc::channel::<()>(1);
        tokio::spawn(async move {
            let mut conn: Option<(Connection, Statement)> = None;
            while rx.recv().await.is_some() {
                if conn.as_ref().is_none_or(|(c, _)| c.client.is_closed()) {
                    conn = connect(&config, &tls, timeouts).await;
                }
                let Some((c, notify)) = &conn else { continue };
                let sent = tokio::time::timeout(
                    timeouts.statement,
                    c.client.execute(notify, &[&COMMIT_CHANNEL, &schema]),
                )
                .await;
                if !matches!(sent, Ok(Ok(_))) {
                    tracing::debug!(target: "outbox", result = ?sent.map(|r| r.map(|_| ())), "outbox: commit notification failed");
                    // Dropping the connection closes it.
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
async fn connect(config: &Config, tls: &MakeTls, timeouts: Timeouts) -> Option<(Connection, Statement)> {
    let setup = format!("SET synchronous_commit TO off; {}", timeouts.session_sql());
    let conn = match pool::connect(config, tls, "connect the notifier", &setup, timeouts.connect).await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(target: "outbox", error = %e, "outbox: notifier connection failed");
            return None;
        }
    };
    let notify = tokio::time::timeout(timeouts.statement, conn.client.prepare("SELECT pg_notify($1, $2)"))
        .await
        .ok()?
        .ok()?;
    Some((conn, notify))
}

/// A running `LISTEN` on [`COMMIT_CHANNEL`]; dropping it stops listening.
#[derive(Debug)]
pub struct CommitListener {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CommitListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Listens on a connection of its own for commits to `schema` and calls
/// `on_commit` for each (for `PostgresStore::listen`).
///
/// The first connection's failure is returned. A connection lost later is
/// reopened in the background (backing off up to 5 s), and `on_commit` is
/// called once after every reconnect, since commits may have been missed
/// meanwhile.
pub(crate) async fn listen(
    config: Config,
    tls: MakeTls,
    schema: String,
    timeouts: Timeouts,
    on_commit: Arc<dyn Fn() + Send + Sync>,
) -> Result<CommitListener> {
    let first = listen_once(&config, &tls, timeouts).await?;
    let task = tokio::spawn(async move {
        let mut conn = Some(first);
        let mut delay = Duration::from_millis(50);
        loop {
            if let Some((client, messages)) = conn.take() {
                delay = Duration::from_millis(50);
                relay(client, messages, &schema, &*on_commit).await;
                tracing::warn!(target: "outbox", "postgres LISTEN connection lost; reconnecting");
            }
            tokio::time::sleep(delay).await;
            match listen_once(&config, &tls, timeouts).await {
                Ok(c) => {
                    conn = Some(c);
                    on_commit();
                }
                Err(e) => {
                    tracing::warn!(target: "outbox", error = %e, "postgres LISTEN reconnect failed");
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    });
    Ok(CommitListener { task })
}

type Notifications = std::pin::Pin<
    Box<dyn futures::Stream<Item = std::result::Result<AsyncMessage, tokio_postgres::Error>> + Send>,
>;

/// Opens a connection and runs `LISTEN` on it, within the connect timeout
/// plus the statement timeout; the connection's messages are returned as
/// a stream (which drives the connection).
async fn listen_once(config: &Config, tls: &MakeTls, timeouts: Timeouts) -> Result<(Client, Notifications)> {
    // Dropped on timeout: the connection is not spawned, so dropping it
    // closes it.
    pool::bounded("listen", timeouts.call(), listen_unbounded(config, tls)).await
}

async fn listen_unbounded(config: &Config, tls: &MakeTls) -> Result<(Client, Notifications)> {
    let (client, mut connection) =
        config.connect(tls.clone()).await.map_err(|e| map_connect("connect the listener", e))?;
    let mut messages: Notifications =
        Box::pin(futures::stream::poll_fn(move |cx| connection.poll_message(cx)));
    let sql = format!("LISTEN {COMMIT_CHANNEL}");
    {
        let listen = client.batch_execute(&sql);
        tokio::pin!(listen);
        // The LISTEN needs the connection driven while it runs.
        loop {
            tokio::select! {
                r = &mut listen => {
                    r.map_err(|e| map("listen", e))?;
                    break;
                }
                m = messages.next() => match m {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(map("listen", e)),
                    None => return Err(PgError::ListenerClosed.into()),
                }
            }
        }
    }
    Ok((client, messages))
}

/// Calls `on_commit` for each notification about `schema` until the
/// connection ends.
async fn relay(
    _client: Client,
    mut messages: Notifications,
    schema: &str,
    on_commit: &(dyn Fn() + Send + Sync),
) {
    while let Some(m) = messages.next().await {
        match m {
            Ok(AsyncMessage::Notification(n)) if n.payload() == schema => on_commit(),
            Ok(_) => {}
            Err(_) => break,
        }
    }
}
