//! Shared by the CLI's tests: running the binary with a bounded wait,
//! checksums of files and directories, the three backends behind one
//! interface, and a store with dead letters.
#![allow(dead_code, unreachable_pub)] // each test file uses part of it
#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is the test failing

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use outbox::SqliteStore;
use outbox_core::{ActorId, ClaimRequest, Commit, DurableStore, EventId, NewEvent};
use outbox_store_postgres::PostgresStore;
use outbox_store_sled::SledStore;
use serde_json::Value;

/// The longest any one command may take before the test fails (it would
/// otherwise hang).
pub const BOUND: Duration = Duration::from_secs(60);

/// Runs `outbox ARGS`, killing it and failing the test if it does not end
/// within [`BOUND`].
pub fn outbox(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_outbox"))
        .args(args)
        .env_remove("OUTBOX_DATABASE_URL")
        .env_remove("OUTBOX_PG_SCHEMA")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        out.read_to_end(&mut b).unwrap();
        b
    });
    let err_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        err.read_to_end(&mut b).unwrap();
        b
    });
    let deadline = Instant::now() + BOUND;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("outbox {args:?} did not finish within {BOUND:?}");
        }
        // Polling a child process's exit: not a timed assertion.
        std::thread::sleep(Duration::from_millis(5));
    };
    Output { status, stdout: reader.join().unwrap(), stderr: err_reader.join().unwrap() }
}

/// `outbox ARGS`, which must succeed; its stdout.
pub fn ok(args: &[&str]) -> String {
    let out = outbox(args);
    assert_eq!(out.status.code(), Some(0), "outbox {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The JSON objects of `--json` output, one per line.
pub fn json_lines(stdout: &str) -> Vec<Value> {
    stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

/// The event ids of JSON lines that are events.
pub fn ids_of(lines: &[Value]) -> Vec<String> {
    lines.iter().filter_map(|v| v.get("id").and_then(Value::as_str).map(str::to_owned)).collect()
}

/// Every file under `path` (or `path` itself) with its bytes, and every
/// directory (`None`).
pub fn checksum(path: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut all = BTreeMap::new();
    fn walk(p: &Path, root: &Path, all: &mut BTreeMap<PathBuf, Option<Vec<u8>>>) {
        let meta = std::fs::symlink_metadata(p).unwrap();
        let rel = p.strip_prefix(root).unwrap().to_path_buf();
        if meta.is_dir() {
            all.insert(rel, None);
            for e in std::fs::read_dir(p).unwrap() {
                walk(&e.unwrap().path(), root, all);
            }
        } else {
            all.insert(rel, Some(std::fs::read(p).unwrap()));
        }
    }
    if path.exists() {
        walk(path, path, &mut all);
    }
    all
}

/// A store under test and how the command line names it.
#[derive(Debug, Clone)]
pub enum Backend {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A sled directory.
    Sled(PathBuf),
    /// A PostgreSQL URL and a schema of the test's own.
    Postgres { url: String, schema: String },
}

impl Backend {
    /// The PostgreSQL backend, on a fresh schema, or `None` (and a loud
    /// SKIPPED line) without `OUTBOX_PG_URL`.
    pub fn postgres(test: &str) -> Option<Backend> {
        match std::env::var("OUTBOX_PG_URL") {
            Ok(url) => {
                let schema = format!("outbox_cli_{}", EventId::new().to_string().replace('-', ""));
                Some(Backend::Postgres { url, schema })
            }
            Err(_) => {
                {
                    // Straight to the stderr handle, past libtest's output capture,
                    // so a plain `cargo test` shows it.
                    use std::io::Write;
                    let _ = writeln!(
                        std::io::stderr(),
                        "SKIPPED {test}: OUTBOX_PG_URL is not set (start the servers: scripts/servers.sh start)"
                    );
                }
                None
            }
        }
    }

    /// The command's first argument.
    pub fn arg(&self) -> String {
        match self {
            Backend::Sqlite(p) | Backend::Sled(p) => p.to_str().unwrap().to_owned(),
            Backend::Postgres { url, .. } => url.clone(),
        }
    }

    /// `outbox CMD STORE REST… [--schema S]`.
    pub fn args(&self, cmd: &str, rest: &[&str]) -> Vec<String> {
        let mut a = vec![cmd.to_owned(), self.arg()];
        a.extend(rest.iter().map(|s| (*s).to_owned()));
        if let Backend::Postgres { schema, .. } = self {
            a.push("--schema".into());
            a.push(schema.clone());
        }
        a
    }

    /// Runs `outbox CMD STORE REST…`.
    pub fn run(&self, cmd: &str, rest: &[&str]) -> Output {
        let a = self.args(cmd, rest);
        outbox(&a.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// Runs `outbox CMD STORE REST…`, which must succeed; its stdout.
    pub fn ok(&self, cmd: &str, rest: &[&str]) -> String {
        let out = self.run(cmd, rest);
        assert_eq!(
            out.status.code(),
            Some(0),
            "outbox {cmd} {rest:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Opens the store read-write, creating it.
    pub async fn open(&self) -> Arc<dyn DurableStore> {
        match self {
            Backend::Sqlite(p) => Arc::new(SqliteStore::open(p).unwrap()),
            Backend::Sled(p) => {
                let p = p.clone();
                Arc::new(tokio::task::spawn_blocking(move || SledStore::open(p)).await.unwrap().unwrap())
            }
            Backend::Postgres { url, schema } => {
                Arc::new(PostgresStore::options(url.as_str()).schema(schema.as_str()).open().await.unwrap())
            }
        }
    }

    /// The files the store is made of, with their bytes (none for
    /// PostgreSQL).
    pub fn files(&self) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
        match self {
            Backend::Sqlite(p) | Backend::Sled(p) => checksum(p),
            Backend::Postgres { .. } => BTreeMap::new(),
        }
    }

    /// Drops the test's schema (PostgreSQL).
    pub async fn cleanup(&self) {
        if let Backend::Postgres { url, schema } = self {
            let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
            let driver = tokio::spawn(conn);
            client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await.unwrap();
            drop(client);
            let _ = driver.await;
        }
    }
}

/// The events of [`with_dead_letters`], by name.
#[derive(Debug, Clone, Copy)]
pub struct Fixture {
    /// Key `a`: dead, parking a2 and a3.
    pub a1: EventId,
    /// Key `a`, pending behind a1.
    pub a2: EventId,
    /// Key `a`, pending behind a2.
    pub a3: EventId,
    /// Key `b`: dead, alone.
    pub b1: EventId,
    /// Key `c`: delivered.
    pub c1: EventId,
    /// Key `d`: dead, parking d2.
    pub d1: EventId,
    /// Key `d`, pending behind d1.
    pub d2: EventId,
}

/// Fills `store`: a1, b1, d1 dead (error "422 unprocessable"); a2, a3, d2
/// pending behind them; c1 delivered. Actor `form` gets a state.
pub async fn with_dead_letters(store: &dyn DurableStore) -> Fixture {
    let actor = |n: &str| ActorId::new(n).unwrap();
    let ev =
        |key: &str, ty: &str, n: u32| NewEvent::json(actor(key), ty, &serde_json::json!({ "n": n })).unwrap();
    let evs = vec![
        ev("a", "ORDER_PLACED", 1),
        ev("b", "EMAIL_REQUESTED", 1),
        ev("c", "ORDER_PLACED", 1),
        ev("d", "ORDER_PLACED", 1),
        ev("a", "ORDER_PAID", 2),
        ev("a", "ORDER_SHIPPED", 3),
        ev("d", "ORDER_PAID", 2),
    ];
    let ids: Vec<EventId> = evs.iter().map(|e| e.id).collect();
    let form =
        Commit::state(actor("form"), outbox_core::Version::NONE, br#"{"title":"Quarterly report"}"#.to_vec());
    store.put_state_and_events(form.events(evs)).await.unwrap();
    let ttl = Duration::from_secs(30);
    let g = store.acquire_leadership("fixture", ttl).await.unwrap().unwrap();
    let heads = store.claim(&g, ClaimRequest::new(4, ttl)).await.unwrap();
    let heads: Vec<EventId> = heads.iter().map(|e| e.id).collect();
    assert_eq!(heads, ids[..4].to_vec(), "the heads of the four keys");
    store.dead_letter(&g, ids[0], "422 unprocessable").await.unwrap();
    store.dead_letter(&g, ids[1], "422 unprocessable").await.unwrap();
    store.ack(&g, &[ids[2]]).await.unwrap();
    store.dead_letter(&g, ids[3], "422 unprocessable").await.unwrap();
    store.release_leadership(&g).await.unwrap();
    let mark = outbox_core::InboxMark {
        consumer: outbox_core::ConsumerId::new("mailer").unwrap(),
        origin: actor("c"),
        event_id: ids[2],
    };
    store.put_state_and_events(Commit::events_only().inbox_mark(mark)).await.unwrap();
    Fixture { a1: ids[0], b1: ids[1], c1: ids[2], d1: ids[3], a2: ids[4], a3: ids[5], d2: ids[6] }
}
