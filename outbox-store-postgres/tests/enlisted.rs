//! Commits enlisted in the application's own transaction
//! ([`PostgresStore::enlist`]) on a real server: the application's table
//! and the outbox roll back together, commit together (waking listening
//! forwarders only then) and are delivered per key in commit order and
//! acked, a refused enlisted commit leaves the application's transaction
//! usable, and a process killed (SIGKILL) before or after its commit
//! leaves both or neither.
//!
//! Needs `OUTBOX_PG_URL` (`scripts/servers.sh start`); without it each
//! test says SKIPPED and passes.
#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is the test failing

use std::io::{BufRead, Read, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use outbox_core::prelude::*;
use outbox_core::{ActorId, ClaimRequest, Commit, ErrorKind, NewEvent, Version};
use outbox_store_postgres::PostgresStore;
use outbox_store_postgres::tokio_postgres::{self, Client, NoTls};

fn url(test: &str) -> Option<String> {
    outbox_testkit::required(Some("OUTBOX_PG_URL"), test).then(|| std::env::var("OUTBOX_PG_URL").unwrap())
}

static NEXT: AtomicU64 = AtomicU64::new(0);

fn schema(tag: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{tag}_{}_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed), nanos % 1_000_000_007)
}

/// The store in `schema`, and the application's own connection with its
/// table `orders` in the same schema.
async fn open(url: &str, schema: &str) -> (PostgresStore, Client) {
    let store = PostgresStore::options(url).schema(schema).open().await.unwrap();
    let (app, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(conn);
    app.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS \"{schema}\".orders (id text PRIMARY KEY, total int NOT NULL)"
    ))
    .await
    .unwrap();
    (store, app)
}

async fn orders(app: &Client, schema: &str) -> Vec<String> {
    let rows = app.query(&format!("SELECT id FROM \"{schema}\".orders ORDER BY id"), &[]).await.unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

fn placed(order: &str, n: u64) -> NewEvent {
    NewEvent::json(ActorId::new(order).unwrap(), "ORDER_PLACED", &n).unwrap()
}

#[tokio::test]
async fn enlisted_rollback_discards_app_rows_and_events() {
    let Some(url) = url("enlisted_rollback_discards_app_rows_and_events") else { return };
    let s = schema("enl_rb");
    let (store, mut app) = open(&url, &s).await;
    let order = ActorId::new("o1").unwrap();
    let mut tx = app.transaction().await.unwrap();
    tx.execute(&format!("INSERT INTO \"{s}\".orders VALUES ('o1', 42)"), &[]).await.unwrap();
    let receipt = store
        .enlist(&mut tx, Commit::state(order.clone(), Version::NONE, b"{}".to_vec()).event(placed("o1", 1)))
        .await
        .unwrap();
    assert_eq!(receipt.version, Some(Version(1)));
    tx.rollback().await.unwrap();

    assert!(orders(&app, &s).await.is_empty());
    assert_eq!(store.stats().await.unwrap().pending, 0);
    assert!(store.load_state(&order).await.unwrap().is_none());
}

#[tokio::test]
async fn enlisted_commit_delivers_in_key_order_and_acks() {
    let Some(url) = url("enlisted_commit_delivers_in_key_order_and_acks") else { return };
    let s = schema("enl_ok");
    let (store, mut app) = open(&url, &s).await;
    let wakes = Arc::new(tokio::sync::Notify::new());
    let _listener = {
        let wakes = wakes.clone();
        store.listen(move || wakes.notify_one()).await.unwrap()
    };

    let mut expected = Vec::new();
    for (order, n, enlisted) in [("o1", 1, true), ("o1", 2, false), ("o2", 3, true), ("o1", 4, true)] {
        let e = placed(order, n);
        expected.push(e.id);
        if enlisted {
            let mut tx = app.transaction().await.unwrap();
            tx.execute(
                &format!("INSERT INTO \"{s}\".orders VALUES ($1, 1) ON CONFLICT (id) DO UPDATE SET total = orders.total + 1"),
                &[&order],
            )
            .await
            .unwrap();
            store.enlist(&mut tx, Commit::events_only().event(e)).await.unwrap();
            tx.commit().await.unwrap();
            // The transaction's NOTIFY reached the listener.
            tokio::time::timeout(Duration::from_secs(10), wakes.notified())
                .await
                .expect("woken after the commit");
        } else {
            store.put_state_and_events(Commit::events_only().event(e)).await.unwrap();
        }
    }
    assert_eq!(orders(&app, &s).await, ["o1", "o2"]);

    let grant = store.acquire_leadership("t", Duration::from_secs(30)).await.unwrap().unwrap();
    let mut got = Vec::new();
    // One key's run at a time may come per claim: claim and ack until empty.
    loop {
        let batch = store.claim(&grant, ClaimRequest::new(10, Duration::from_secs(30))).await.unwrap();
        if batch.is_empty() {
            break;
        }
        let ids: Vec<_> = batch.iter().map(|e| e.id).collect();
        got.extend(batch.iter().map(|e| (e.key.as_str().to_owned(), e.id)));
        store.ack(&grant, &ids).await.unwrap();
    }
    let per_key = |k: &str, from: &[(String, outbox_core::EventId)]| -> Vec<_> {
        from.iter().filter(|(key, _)| key == k).map(|(_, id)| *id).collect()
    };
    let want: Vec<(String, _)> =
        ["o1", "o1", "o2", "o1"].iter().zip(&expected).map(|(k, id)| ((*k).to_owned(), *id)).collect();
    assert_eq!(per_key("o1", &got), per_key("o1", &want), "key o1 in commit order");
    assert_eq!(per_key("o2", &got), per_key("o2", &want));
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.pending, stats.delivered), (0, 4));
}

/// A refused enlisted commit (a duplicate event, a version conflict)
/// writes nothing of its own and leaves the application's transaction
/// open and usable.
#[tokio::test]
async fn enlisted_failure_keeps_the_app_transaction() {
    let Some(url) = url("enlisted_failure_keeps_the_app_transaction") else { return };
    let s = schema("enl_fail");
    let (store, mut app) = open(&url, &s).await;
    let order = ActorId::new("o1").unwrap();
    let first = placed("o1", 1);
    store
        .put_state_and_events(Commit::state(order.clone(), Version::NONE, b"1".to_vec()).event(first.clone()))
        .await
        .unwrap();

    let mut tx = app.transaction().await.unwrap();
    tx.execute(&format!("INSERT INTO \"{s}\".orders VALUES ('o1', 1)"), &[]).await.unwrap();
    let dup = Commit::state(order.clone(), Version(1), b"2".to_vec()).event(placed("o1", 2)).event(first);
    assert_eq!(store.enlist(&mut tx, dup).await.unwrap_err().kind(), ErrorKind::DuplicateEvent);
    let stale = Commit::state(order.clone(), Version::NONE, b"3".to_vec()).event(placed("o1", 3));
    assert_eq!(store.enlist(&mut tx, stale).await.unwrap_err().kind(), ErrorKind::Conflict);
    tx.commit().await.unwrap();

    assert_eq!(orders(&app, &s).await, ["o1"]);
    let state = store.load_state(&order).await.unwrap().unwrap();
    assert_eq!((state.version, state.bytes), (Version(1), b"1".to_vec()));
    assert_eq!(store.stats().await.unwrap().pending, 1);
}

/// A process that enlisted a commit is killed (SIGKILL) before its
/// transaction commits, and another after: the first leaves neither the
/// application's row nor the events, the second both, delivered.
#[tokio::test]
async fn enlisted_sigkill_leaves_both_or_neither() {
    let Some(url) = url("enlisted_sigkill_leaves_both_or_neither") else { return };
    for commit in [false, true] {
        let s = schema("enl_kill");
        let (store, app) = open(&url, &s).await;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "enlist_probe", "--ignored", "--nocapture", "--test-threads=1"])
            .env("OUTBOX_ENLIST_SCHEMA", &s)
            .env("OUTBOX_ENLIST_COMMIT", if commit { "1" } else { "0" })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let written = tokio::task::spawn_blocking(move || {
            stdout.lines().map_while(|l| l.ok()).any(|l| l.contains("ENLIST WRITTEN"))
        });
        let written =
            tokio::time::timeout(Duration::from_secs(60), written).await.expect("the child answers");
        assert!(written.unwrap(), "the child wrote inside its transaction");
        child.kill().unwrap();
        child.wait().unwrap();

        // Wait (on the server) for the child's transaction to end: its
        // key lock is granted to us once the server has rolled it back or
        // after it committed.
        let mut lock_tx = admin(&url).await;
        let tx = lock_tx.transaction().await.unwrap();
        tx.batch_execute("SET LOCAL lock_timeout = '30s'").await.unwrap();
        tx.execute("SELECT pg_advisory_xact_lock(hashtext($1::text), hashtext('o1'))", &[&s]).await.unwrap();
        tx.commit().await.unwrap();

        let rows = orders(&app, &s).await;
        let stats = store.stats().await.unwrap();
        if commit {
            assert_eq!((rows.len(), stats.pending), (1, 3), "committed: the row and its events");
            let grant = store.acquire_leadership("t", Duration::from_secs(30)).await.unwrap().unwrap();
            let batch = store.claim(&grant, ClaimRequest::new(10, Duration::from_secs(30))).await.unwrap();
            let ids: Vec<_> = batch.iter().map(|e| e.id).collect();
            assert_eq!(ids.len(), 3);
            store.ack(&grant, &ids).await.unwrap();
            assert_eq!(store.stats().await.unwrap().delivered, 3);
        } else {
            assert_eq!((rows.len(), stats.pending), (0, 0), "killed mid-transaction: neither");
        }
    }
}

async fn admin(url: &str) -> Client {
    let (c, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(conn);
    c
}

/// The child of `enlisted_sigkill_leaves_both_or_neither`: enlists three
/// events next to an application row, commits if told to, says so, and
/// waits to be killed.
#[tokio::test]
#[ignore = "a child process of enlisted_sigkill_leaves_both_or_neither"]
async fn enlist_probe() {
    let (Ok(url), Ok(s)) = (std::env::var("OUTBOX_PG_URL"), std::env::var("OUTBOX_ENLIST_SCHEMA")) else {
        return;
    };
    let commit = std::env::var("OUTBOX_ENLIST_COMMIT").as_deref() == Ok("1");
    let (store, mut app) = open(&url, &s).await;
    let mut tx = app.transaction().await.unwrap();
    tx.execute(&format!("INSERT INTO \"{s}\".orders VALUES ('o1', 42)"), &[]).await.unwrap();
    store.enlist(&mut tx, Commit::events_only().events((1..=3).map(|n| placed("o1", n)))).await.unwrap();
    let _open = if commit {
        tx.commit().await.unwrap();
        None
    } else {
        Some(tx)
    };
    let mut out = std::io::stdout();
    writeln!(out, "ENLIST WRITTEN").unwrap();
    out.flush().unwrap();
    tokio::task::spawn_blocking(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
    })
    .await
    .unwrap();
}
