//! The PostgreSQL store against servers that misbehave: one that accepts
//! connections and never answers, a network that stops carrying data
//! mid-session, refusals whose reason must reach the caller, and a server
//! killed and restarted under a drain.
//!
//! `postgres_open_times_out` needs no server. The others need
//! `OUTBOX_PG_URL` (`scripts/servers.sh start`); without it each says
//! SKIPPED and passes. The restart test runs a PostgreSQL server of its
//! own (its own data directory and port, through `scripts/servers.sh`),
//! so the shared server is never stopped.
#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is the test failing

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outbox_core::prelude::*;
use outbox_core::{ActorId, ClaimRequest, Commit, ErrorKind, EventId, NewEvent, OrderingKey};
use outbox_store_postgres::PostgresStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn url(test: &str) -> Option<String> {
    outbox_testkit::required(Some("OUTBOX_PG_URL"), test).then(|| std::env::var("OUTBOX_PG_URL").unwrap())
}

static NEXT: AtomicU64 = AtomicU64::new(0);

fn schema(tag: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{tag}_{}_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed), nanos % 1_000_000_007)
}

fn event(key: &str, n: u64) -> NewEvent {
    NewEvent::json(ActorId::new("src").unwrap(), "E", &n).unwrap().with_key(OrderingKey::new(key).unwrap())
}

/// A server that accepts connections and never says a word: opening the
/// store fails with `Unavailable` once the connect timeout has passed, not
/// later and never not at all. A closed port fails at once.
#[tokio::test]
async fn postgres_open_times_out() {
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    // Accepts and holds every connection, reading nothing.
    let _held = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            held.push(silent.accept().await.unwrap().0);
        }
    });
    let limit = Duration::from_millis(300);
    let url = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
    let started = Instant::now();
    let opened = tokio::time::timeout(
        Duration::from_secs(20),
        PostgresStore::options(&url).connect_timeout(limit).open(),
    )
    .await
    .expect("opening against a silent server must not hang");
    let took = started.elapsed();
    let err = opened.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.is_retryable());
    assert!(took >= limit, "gave up after {took:?}, before the {limit:?} timeout");
    assert!(took < limit + Duration::from_secs(5), "gave up after {took:?}, long past the {limit:?} timeout");

    // The URL's connect_timeout applies when the options set none.
    let with_url_timeout = format!("{url} connect_timeout=1");
    let started = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(20), PostgresStore::open(&with_url_timeout))
        .await
        .expect("opening against a silent server must not hang")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(started.elapsed() < Duration::from_secs(6), "{:?}", started.elapsed());

    // A port nobody listens on: refused at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let url = format!("host=127.0.0.1 port={closed_port} user=postgres dbname=postgres");
    let started = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(20), PostgresStore::open(&url))
        .await
        .expect("opening against a closed port must not hang")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}

/// A TCP proxy to `upstream` that can stop carrying data: once frozen,
/// the connections open through it go silent for good (bytes are read
/// and dropped); connections opened after a thaw carry data again.
async fn freezable_proxy(upstream: SocketAddr) -> (u16, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let frozen = Arc::new(AtomicBool::new(false));
    let f = frozen.clone();
    tokio::spawn(async move {
        loop {
            let (client, _) = listener.accept().await.unwrap();
            let server = TcpStream::connect(upstream).await.unwrap();
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(pipe(cr, sw, f.clone()));
            tokio::spawn(pipe(sr, cw, f.clone()));
        }
    });
    (port, frozen)
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut silent = false;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        silent |= frozen.load(Ordering::SeqCst);
        if !silent && to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// The server's address from a libpq URL of the form the servers script
/// prints (`host=... port=...`).
fn server_addr(url: &str) -> SocketAddr {
    let config: tokio_postgres::Config = url.parse().unwrap();
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        tokio_postgres::config::Host::Unix(_) => panic!("the tests need a TCP server"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port)).unwrap().next().unwrap()
}

/// `url`'s password, role and database at 127.0.0.1:`port`, the role or
/// database replaced when given.
fn url_at(url: &str, port: u16, user: Option<&str>, db: Option<&str>) -> String {
    let config: tokio_postgres::Config = url.parse().unwrap();
    let user = user.unwrap_or(config.get_user().unwrap_or("postgres"));
    let db = db.unwrap_or(config.get_dbname().unwrap_or(user));
    let password = config.get_password().map_or(String::new(), |p| {
        format!(" password='{}'", String::from_utf8_lossy(p).replace('\\', "\\\\").replace('\'', "\\'"))
    });
    format!("host=127.0.0.1 port={port} user={user} dbname={db}{password}")
}

/// A network that stops carrying data mid-session: every store call gives
/// up with `Unavailable` within the connect plus the statement timeout,
/// and the connection it was waiting on is not handed to the next call
/// (which would wait on it again): once the network carries data again,
/// the next call works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_calls_time_out_when_the_server_stops_answering() {
    let Some(url) = url("postgres_calls_time_out_when_the_server_stops_answering") else { return };
    let (port, frozen) = freezable_proxy(server_addr(&url)).await;
    let (connect, statement) = (Duration::from_millis(500), Duration::from_millis(500));
    let store = PostgresStore::options(url_at(&url, port, None, None))
        .schema(schema("frozen"))
        .pool_size(1)
        .connect_timeout(connect)
        .statement_timeout(statement)
        .open()
        .await
        .unwrap();
    store.put_state_and_events(Commit::events_only().event(event("k", 0))).await.unwrap();
    let grant = store.acquire_leadership("f", Duration::from_secs(60)).await.unwrap().unwrap();

    frozen.store(true, Ordering::SeqCst);
    for round in 0..2 {
        let started = Instant::now();
        let committed = tokio::time::timeout(
            Duration::from_secs(20),
            store.put_state_and_events(Commit::events_only().event(event("k", 1))),
        )
        .await
        .expect("a commit on a silent connection must not hang");
        let err = committed.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "round {round}: {err}");
        let took = started.elapsed();
        assert!(took < connect + statement + Duration::from_secs(5), "round {round}: {took:?}");
        let claimed = tokio::time::timeout(
            Duration::from_secs(20),
            store.claim(&grant, ClaimRequest::new(10, Duration::from_secs(30))),
        )
        .await
        .expect("a claim on a silent network must not hang");
        assert_eq!(claimed.unwrap_err().kind(), ErrorKind::Unavailable, "round {round}");
    }

    frozen.store(false, Ordering::SeqCst);
    let claimed = tokio::time::timeout(
        Duration::from_secs(20),
        store.claim(&grant, ClaimRequest::new(10, Duration::from_secs(30))),
    )
    .await
    .expect("a call after the network came back must not hang")
    .expect("a new connection once the network carries data again");
    assert!(!claimed.is_empty());
}

/// A statement the server runs past the statement timeout (here a commit
/// waiting on a row another session holds locked) is cancelled by the
/// server: `Unavailable`, and the store works on.
#[tokio::test]
async fn postgres_statements_time_out_on_the_server() {
    let Some(url) = url("postgres_statements_time_out_on_the_server") else { return };
    let schema = schema("stmt");
    let store = PostgresStore::options(&url)
        .schema(&schema)
        .statement_timeout(Duration::from_millis(300))
        .open()
        .await
        .unwrap();
    let actor = ActorId::new("a").unwrap();
    store
        .put_state_and_events(Commit::state(actor.clone(), outbox_core::Version::NONE, b"1".to_vec()))
        .await
        .unwrap();
    let (mut admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let tx = admin.transaction().await.unwrap();
    tx.batch_execute(&format!("SELECT * FROM \"{schema}\".outbox_state FOR UPDATE")).await.unwrap();
    let started = Instant::now();
    let err = tokio::time::timeout(
        Duration::from_secs(20),
        store.put_state_and_events(Commit::state(actor.clone(), outbox_core::Version(1), b"2".to_vec())),
    )
    .await
    .expect("a commit waiting on a lock must not wait past the statement timeout")
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains("57014"), "the server's cancel: {err}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    tx.rollback().await.unwrap();
    store.put_state_and_events(Commit::state(actor, outbox_core::Version(1), b"2".to_vec())).await.unwrap();
}

/// The server's SQLSTATE and message, from the driver error in `e`'s
/// sources.
fn server_reason(e: &outbox_core::Error) -> Option<(String, String)> {
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(db) = c.downcast_ref::<tokio_postgres::Error>().and_then(|p| p.as_db_error()) {
            return Some((db.code().code().to_owned(), db.message().to_owned()));
        }
        cause = c.source();
    }
    None
}

/// What the server says to a plain connection to `url`.
async fn refusal(url: &str) -> (String, String) {
    let e = tokio_postgres::connect(url, tokio_postgres::NoTls).await.err().expect("the server refuses");
    let db = e.as_db_error().expect("a refusal from the server");
    (db.code().code().to_owned(), db.message().to_owned())
}

/// Asserts `err`'s message names `code` and carries the server's
/// `message`, each exactly once.
fn assert_reason_once(err: &outbox_core::Error, code: &str, message: &str) {
    let text = err.to_string();
    assert_eq!(text.matches(code).count(), 1, "SQLSTATE {code} once in: {text}");
    assert_eq!(text.matches(message).count(), 1, "the server's message once in: {text}");
}

/// Refusals reach the caller with the right kind and the server's reason
/// (its SQLSTATE and message, once): an unknown role and a database that
/// does not exist are final (not retryable), a role without the right to
/// create the schema is `PermissionDenied`, and a URL whose TLS settings
/// cannot work (a CA file that is not there) is refused before
/// connecting, not retried.
#[tokio::test]
async fn postgres_errors_carry_the_server_reason() {
    let Some(url) = url("postgres_errors_carry_the_server_reason") else { return };
    let port = server_addr(&url).port();

    // An unknown role (the test server trusts every host, and still
    // refuses a role it does not know): 28000.
    let nobody = url_at(&url, port, Some("outbox_no_such_role"), None);
    let err = PostgresStore::open(&nobody).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(!err.is_retryable());
    let (code, message) = refusal(&nobody).await;
    assert_eq!(code, "28000");
    assert_reason_once(&err, &code, &message);
    assert_eq!(server_reason(&err), Some((code, message)));

    // A database that does not exist: 3D000, the caller's to fix.
    let missing = url_at(&url, port, None, Some("outbox_no_such_database"));
    let err = PostgresStore::open(&missing).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(!err.is_retryable());
    let (code, message) = refusal(&missing).await;
    assert_eq!(code, "3D000");
    assert_reason_once(&err, &code, &message);

    // A role that may log in but not create the schema: 42501.
    let role = format!("outbox_no_create_{}", std::process::id());
    let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    admin.batch_execute(&format!("DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN")).await.unwrap();
    let limited = url_at(&url, port, Some(&role), None);
    let opened = PostgresStore::options(&limited).schema(schema("denied")).open().await;
    admin.batch_execute(&format!("DROP ROLE {role}")).await.unwrap();
    let err = opened.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(!err.is_retryable());
    let (code, message) = server_reason(&err).expect("the server's refusal is the source");
    assert_eq!(code, "42501");
    assert_reason_once(&err, &code, &message);

    // TLS verified against a CA file that is not there: the same URL can
    // never work (a server requiring TLS through pg_hba.conf refuses a
    // plain connection with 28000, final too).
    let tls = format!(
        "{} sslmode=verify-full sslrootcert=/nonexistent/outbox-ca.pem",
        url_at(&url, port, None, None)
    );
    let err = PostgresStore::open(&tls).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(!err.is_retryable());
}

/// A PostgreSQL server of the test's own, run through
/// `scripts/servers.sh` with its own data directory and port; stopped and
/// removed when dropped.
struct OwnServer {
    dir: PathBuf,
    port: u16,
}

impl OwnServer {
    const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/servers.sh");

    /// Starts one; `None` (the test skips) when PostgreSQL is not
    /// installed.
    fn start(test: &str) -> Option<OwnServer> {
        let dir =
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("pg-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let server = OwnServer { dir, port };
        let status = server.script("pg-start");
        if status.code() == Some(3) {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIPPED {test}: the PostgreSQL binaries are not installed");
            return None;
        }
        assert!(status.success(), "{} pg-start failed: {status}", Self::SCRIPT);
        Some(server)
    }

    fn script(&self, cmd: &str) -> std::process::ExitStatus {
        Command::new("bash")
            .arg(Self::SCRIPT)
            .arg(cmd)
            .env("OUTBOX_SERVERS_DIR", &self.dir)
            .env("OUTBOX_PG_PORT", self.port.to_string())
            .status()
            .unwrap()
    }

    /// Runs `cmd` off the runtime's threads.
    async fn run(self: &Arc<Self>, cmd: &'static str) {
        let me = self.clone();
        let status = tokio::task::spawn_blocking(move || me.script(cmd)).await.unwrap();
        assert!(status.success(), "{} {cmd} failed: {status}", Self::SCRIPT);
    }

    fn url(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname=postgres", self.port)
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = self.script("stop");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the drain saw.
#[derive(Default)]
struct Drained {
    /// Every delivery, in order: (key, id).
    deliveries: Vec<(String, EventId)>,
    /// Ids whose ack returned Ok.
    acked: HashSet<EventId>,
    /// Ids delivered again after their ack returned Ok.
    after_ack: Vec<EventId>,
    /// Calls that failed (retryable) while the server was away.
    errors: u64,
}

/// The PostgreSQL server is killed (as a crash would: no shutdown
/// checkpoint) while a forwarder drains and an application commits, and
/// started again on its data: every commit that returned Ok is delivered,
/// in commit order per key, and no event whose ack returned Ok comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_mid_drain_loses_nothing() {
    const TEST: &str = "a_postgres_restart_mid_drain_loses_nothing";
    if url(TEST).is_none() {
        return;
    }
    let Some(server) = OwnServer::start("restart") else { return };
    let server = Arc::new(server);
    let open = || {
        PostgresStore::options(server.url())
            .pool_size(4)
            .connect_timeout(Duration::from_secs(2))
            .statement_timeout(Duration::from_secs(5))
            .open()
    };
    let store = open().await.unwrap();
    // Per key, the ids in commit order, and how many batches went in.
    let committed: Arc<Mutex<HashMap<String, Vec<EventId>>>> = Arc::default();
    let batches = Arc::new(AtomicU64::new(0));
    let drained = Arc::new(Mutex::new(Drained::default()));
    let stop_committing = Arc::new(AtomicBool::new(false));
    let committing_done = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(tokio::sync::Notify::new());
    let backoff = || tokio::time::sleep(Duration::from_millis(20));

    // The application: commits batches of 50 events over 10 keys until
    // told to stop, each until it is known committed (Ok, or
    // DuplicateEvent for a retry of a commit that went through before its
    // answer was lost).
    let committer = {
        let (store, committed, batches, stop, done, drained, progress) = (
            store.clone(),
            committed.clone(),
            batches.clone(),
            stop_committing.clone(),
            committing_done.clone(),
            drained.clone(),
            progress.clone(),
        );
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let events: Vec<NewEvent> = (0..50)
                    .map(|_| {
                        n += 1;
                        event(&format!("k{}", n % 10), n)
                    })
                    .collect();
                loop {
                    match store.put_state_and_events(Commit::events_only().events(events.clone())).await {
                        Ok(_) => break,
                        Err(e) if e.kind() == ErrorKind::DuplicateEvent => break,
                        Err(e) => {
                            assert!(e.is_retryable(), "commit: {e}");
                            drained.lock().unwrap().errors += 1;
                            progress.notify_one();
                            backoff().await;
                        }
                    }
                }
                {
                    let mut c = committed.lock().unwrap();
                    for e in &events {
                        c.entry(e.key.as_str().to_owned()).or_default().push(e.id);
                    }
                }
                batches.fetch_add(1, Ordering::SeqCst);
                progress.notify_one();
            }
            done.store(true, Ordering::SeqCst);
        })
    };

    // The forwarder: claims, records, acks; retryable failures back off.
    let drainer = {
        let (store, done, drained, progress) =
            (store.clone(), committing_done.clone(), drained.clone(), progress.clone());
        tokio::spawn(async move {
            let mut grant = None;
            loop {
                let g = match &grant {
                    Some(g) => g,
                    None => match store.acquire_leadership("drain", Duration::from_secs(600)).await {
                        Ok(g) => grant.insert(g.unwrap()),
                        Err(e) => {
                            assert!(e.is_retryable(), "acquire: {e}");
                            drained.lock().unwrap().errors += 1;
                            progress.notify_one();
                            backoff().await;
                            continue;
                        }
                    },
                };
                let batch = match store.claim(g, ClaimRequest::new(100, Duration::from_secs(2))).await {
                    Ok(b) => b,
                    Err(e) => {
                        assert!(e.is_retryable(), "claim: {e}");
                        drained.lock().unwrap().errors += 1;
                        progress.notify_one();
                        backoff().await;
                        continue;
                    }
                };
                if batch.is_empty() {
                    // Done once nothing is pending after the last commit
                    // (an ack that failed may still have gone through).
                    if done.load(Ordering::SeqCst) && store.stats().await.is_ok_and(|s| s.pending == 0) {
                        return;
                    }
                    // Events under the lease of a claim whose ack was lost
                    // come back when their lease ends.
                    backoff().await;
                    continue;
                }
                {
                    let mut d = drained.lock().unwrap();
                    for e in &batch {
                        if d.acked.contains(&e.id) {
                            d.after_ack.push(e.id);
                        }
                        d.deliveries.push((e.key.as_str().to_owned(), e.id));
                    }
                }
                let ids: Vec<EventId> = batch.iter().map(|e| e.id).collect();
                match store.ack(g, &ids).await {
                    Ok(()) => drained.lock().unwrap().acked.extend(ids),
                    Err(e) => {
                        assert!(e.is_retryable(), "ack: {e}");
                        drained.lock().unwrap().errors += 1;
                    }
                }
                progress.notify_one();
            }
        })
    };

    // Kill the server once the drain is under way, then start it again.
    tokio::time::timeout(Duration::from_secs(60), async {
        while drained.lock().unwrap().acked.len() < 500 {
            progress.notified().await;
        }
    })
    .await
    .expect("the drain made progress");
    server.run("pg-kill").await;
    let errors_before = drained.lock().unwrap().errors;
    // The outage is seen by the drain or the application.
    tokio::time::timeout(Duration::from_secs(60), async {
        while drained.lock().unwrap().errors == errors_before {
            progress.notified().await;
        }
    })
    .await
    .expect("the outage was noticed");
    server.run("pg-start").await;
    // The application commits on after the restart, then stops.
    let restarted_at = batches.load(Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(60), async {
        while batches.load(Ordering::SeqCst) < restarted_at + 10 {
            progress.notified().await;
        }
    })
    .await
    .expect("commits went on after the restart");
    stop_committing.store(true, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(120), async {
        committer.await.unwrap();
        drainer.await.unwrap();
    })
    .await
    .expect("everything committed was drained after the restart");

    let committed = committed.lock().unwrap().clone();
    let d = std::mem::take(&mut *drained.lock().unwrap());
    let total: usize = committed.values().map(Vec::len).sum();
    assert!(total >= 1_000, "{total} events committed");
    eprintln!(
        "{TEST}: {} deliveries of {total} events, {} failed calls during the outage",
        d.deliveries.len(),
        d.errors
    );
    assert!(d.errors > 0);
    assert!(d.after_ack.is_empty(), "{} acked events delivered again", d.after_ack.len());
    // Per key, first deliveries in commit order, and every event.
    let mut first: HashMap<String, Vec<EventId>> = HashMap::new();
    let mut seen = HashSet::new();
    for (k, id) in &d.deliveries {
        if seen.insert(*id) {
            first.entry(k.clone()).or_default().push(*id);
        }
    }
    assert_eq!(first, committed, "every committed event delivered, per key in commit order");
    // And the restarted server holds them all as delivered.
    let reopened = open().await.unwrap();
    let stats = reopened.stats().await.unwrap();
    assert_eq!((stats.pending, stats.delivered), (0, total as u64));
}
