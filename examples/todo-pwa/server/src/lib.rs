//! The Todo PWA's sync server: a small HTTP/1.1 server (plain `hyper`)
//! on 127.0.0.1 that
//!
//! - applies each event the app's forwarder POSTs to `/events` **exactly
//!   once**, with [`once_per_event`](outbox::consumer::once_per_event)
//!   on its own SQLite file: the effect (the server's copy of the lists)
//!   and the inbox mark are one commit; a redelivered event is dropped
//!   and counted;
//! - reports what it applied as JSON at `GET /state` ([`StateReport`]);
//! - can be told to fail for a while (`POST /admin/fail`), for tests of
//!   an unreachable server;
//! - serves the app's static files (the built `dist/` directory) with the
//!   right MIME types (`application/wasm` for the module).
//!
//! Start it with [`start`] (tests do, in-process) or run the
//! `todo-pwa-server` program; see the example's README for the endpoints.
#![cfg(not(target_arch = "wasm32"))]

mod apply;
mod http;
mod static_files;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use apply::{Applied, LogEntry};
pub use http::{FailReport, StateReport};

/// How to start the server.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where to listen (port 0: any free port).
    pub addr: SocketAddr,
    /// The server's SQLite file (created, with its directory, if missing).
    pub db: PathBuf,
    /// The directory of the app's static files (`index.html`, `pkg/`, ...);
    /// `None` serves none.
    pub static_dir: Option<PathBuf>,
    /// Print a line on stderr for each event handled.
    pub verbose: bool,
}

impl Config {
    /// A server on 127.0.0.1, port `port`, over the SQLite file `db`.
    pub fn new(port: u16, db: impl Into<PathBuf>) -> Self {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            db: db.into(),
            static_dir: None,
            verbose: false,
        }
    }

    /// Serves the static files of `dir`.
    pub fn static_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.static_dir = Some(dir.into());
        self
    }

    /// Prints a line on stderr for each event handled.
    pub fn verbose(mut self, yes: bool) -> Self {
        self.verbose = yes;
        self
    }
}

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    /// The SQLite store did not open.
    Store(outbox::Error),
    /// The address could not be bound, or the database's directory made.
    Io(std::io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Store(e) => write!(f, "opening the server's store: {e}"),
            StartError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// A running server: its address; [`Running::stop`] stops it.
#[derive(Debug)]
pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// `http://ADDR` (no trailing slash).
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    /// Stops accepting connections and waits for the accept loop to end
    /// (requests in progress are dropped). The store is closed once the
    /// last connection is gone.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Opens the store, binds `config.addr` and serves until stopped. Must be
/// called on a Tokio runtime.
pub async fn start(config: Config) -> Result<Running, StartError> {
    if let Some(dir) = config.db.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(StartError::Io)?;
    }
    let store = outbox::SqliteStore::open(&config.db).map_err(StartError::Store)?;
    let shared = Arc::new(http::Shared::new(Arc::new(store), config.static_dir.clone(), config.verbose)?);
    let listener = TcpListener::bind(config.addr).await.map_err(StartError::Io)?;
    let addr = listener.local_addr().map_err(StartError::Io)?;
    let (stop_tx, stop_rx) = oneshot::channel();
    let task = tokio::spawn(http::serve(listener, shared, stop_rx));
    Ok(Running { addr, url: format!("http://{addr}"), stop: Some(stop_tx), task })
}
