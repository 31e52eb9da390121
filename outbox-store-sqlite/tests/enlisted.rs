//! Commits enlisted in the application's own transaction
//! ([`SqliteStore::enlist`]): the application's table and the outbox
//! roll back together, commit together and are delivered (per key in
//! commit order, acked), and a process killed (SIGKILL) before or after
//! the commit leaves both or neither.
#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is the test failing

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::executor::block_on;
use outbox_core::prelude::*;
use outbox_core::{ActorId, ClaimRequest, Commit, ErrorKind, NewEvent, Version};
use outbox_store_sqlite::SqliteStore;
use outbox_store_sqlite::rusqlite::{Connection, TransactionBehavior};

fn temp() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    (dir, path)
}

/// The store on `path`, and the application's connection to the same
/// file with its own table.
fn open(path: &Path) -> (SqliteStore, Connection) {
    let store = SqliteStore::open(path).unwrap();
    let app = Connection::open(path).unwrap();
    app.busy_timeout(Duration::from_secs(10)).unwrap();
    app.execute_batch("CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, total INTEGER NOT NULL)")
        .unwrap();
    (store, app)
}

fn orders(app: &Connection) -> Vec<String> {
    let mut st = app.prepare("SELECT id FROM orders ORDER BY id").unwrap();
    st.query_map([], |r| r.get(0)).unwrap().map(|r| r.unwrap()).collect()
}

fn placed(order: &str, n: u64) -> NewEvent {
    NewEvent::json(ActorId::new(order).unwrap(), "ORDER_PLACED", &n).unwrap()
}

#[test]
fn enlisted_rollback_discards_app_rows_and_events() {
    let (_d, path) = temp();
    let (store, mut app) = open(&path);
    let tx = app.transaction_with_behavior(TransactionBehavior::Immediate).unwrap();
    tx.execute("INSERT INTO orders VALUES ('o1', 42)", []).unwrap();
    let order = ActorId::new("o1").unwrap();
    let enlisted = store
        .enlist(
            &tx,
            Commit::state(order.clone(), Version::NONE, b"{\"total\":42}".to_vec()).event(placed("o1", 1)),
        )
        .unwrap();
    assert_eq!(enlisted.receipt().version, Some(Version(1)));
    tx.rollback().unwrap();
    drop(enlisted);

    assert!(orders(&app).is_empty());
    let stats = block_on(store.stats()).unwrap();
    assert_eq!(stats.pending, 0);
    assert!(block_on(store.load_state(&order)).unwrap().is_none());
}

#[test]
fn enlisted_commit_delivers_in_key_order_and_acks() {
    let (_d, path) = temp();
    let (store, mut app) = open(&path);
    let woken = Arc::new(AtomicUsize::new(0));
    let listener = {
        let woken = woken.clone();
        store.listen(move || {
            woken.fetch_add(1, Ordering::SeqCst);
        })
    };
    // Key "o1": an enlisted commit, one by the store itself, another
    // enlisted one; key "o2" enlisted in between.
    let mut expected = Vec::new();
    let enlist = |app: &mut Connection, order: &str, total: i64, n: u64| {
        let tx = app.transaction_with_behavior(TransactionBehavior::Immediate).unwrap();
        tx.execute("INSERT OR REPLACE INTO orders VALUES (?1, ?2)", (order, total)).unwrap();
        let e = placed(order, n);
        let id = e.id;
        let enlisted = store.enlist(&tx, Commit::events_only().events([e])).unwrap();
        enlisted.commit(tx).unwrap();
        id
    };
    expected.push(enlist(&mut app, "o1", 1, 1));
    let e = placed("o1", 2);
    expected.push(e.id);
    block_on(store.put_state_and_events(Commit::events_only().events([e]))).unwrap();
    expected.push(enlist(&mut app, "o2", 2, 3));
    expected.push(enlist(&mut app, "o1", 3, 4));
    assert_eq!(woken.load(Ordering::SeqCst), 3, "one wake-up per enlisted commit");
    assert_eq!(orders(&app), ["o1", "o2"]);

    let grant = block_on(store.acquire_leadership("t", Duration::from_secs(30))).unwrap().unwrap();
    let claimed = block_on(store.claim(&grant, ClaimRequest::new(10, Duration::from_secs(30)))).unwrap();
    assert_eq!(
        claimed.iter().map(|e| e.id).collect::<Vec<_>>(),
        expected,
        "commit order, per key and overall"
    );
    let ids: Vec<_> = claimed.iter().map(|e| e.id).collect();
    block_on(store.ack(&grant, &ids)).unwrap();
    let stats = block_on(store.stats()).unwrap();
    assert_eq!((stats.pending, stats.delivered), (0, 4));

    // Committed without the guard: `notify_committed` wakes the listeners.
    let tx = app.transaction().unwrap();
    let _enlisted = store.enlist(&tx, Commit::events_only().events([placed("o3", 5)])).unwrap();
    tx.commit().unwrap();
    store.notify_committed();
    assert_eq!(woken.load(Ordering::SeqCst), 4);
    drop(listener);
    store.notify_committed();
    assert_eq!(woken.load(Ordering::SeqCst), 4, "a dropped listener is not called");
}

/// A refused enlisted commit (a duplicate event, a version conflict)
/// writes nothing of its own and leaves the application's transaction
/// open and usable.
#[test]
fn enlisted_failure_keeps_the_app_transaction() {
    let (_d, path) = temp();
    let (store, mut app) = open(&path);
    let order = ActorId::new("o1").unwrap();
    let first = placed("o1", 1);
    block_on(store.put_state_and_events(
        Commit::state(order.clone(), Version::NONE, b"1".to_vec()).event(first.clone()),
    ))
    .unwrap();

    let tx = app.transaction_with_behavior(TransactionBehavior::Immediate).unwrap();
    tx.execute("INSERT INTO orders VALUES ('o1', 1)", []).unwrap();
    // The state is written before the duplicate is met: both roll back.
    let dup = Commit::state(order.clone(), Version(1), b"2".to_vec()).event(placed("o1", 2)).event(first);
    assert_eq!(store.enlist(&tx, dup).unwrap_err().kind(), ErrorKind::DuplicateEvent);
    let stale = Commit::state(order.clone(), Version::NONE, b"3".to_vec()).event(placed("o1", 3));
    assert_eq!(store.enlist(&tx, stale).unwrap_err().kind(), ErrorKind::Conflict);
    tx.commit().unwrap();

    assert_eq!(orders(&app), ["o1"]);
    let state = block_on(store.load_state(&order)).unwrap().unwrap();
    assert_eq!((state.version, state.bytes), (Version(1), b"1".to_vec()));
    assert_eq!(block_on(store.stats()).unwrap().pending, 1);

    // Outside a transaction, or on another file: refused.
    assert_eq!(
        store.enlist(&app, Commit::events_only().events([placed("o1", 4)])).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    let (_d2, other) = temp();
    let (_other_store, mut other_app) = open(&other);
    let tx = other_app.transaction().unwrap();
    assert_eq!(
        store.enlist(&tx, Commit::events_only().events([placed("o1", 5)])).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

/// A process that enlisted a commit is killed (SIGKILL) before its
/// transaction commits, and another after: the first leaves neither the
/// application's row nor the events, the second both.
#[test]
fn enlisted_sigkill_leaves_both_or_neither() {
    for commit in [false, true] {
        let (_d, path) = temp();
        drop(open(&path));
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "enlist_probe", "--ignored", "--nocapture", "--test-threads=1"])
            .env("OUTBOX_ENLIST_PATH", &path)
            .env("OUTBOX_ENLIST_COMMIT", if commit { "1" } else { "0" })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (said, heard) = std::sync::mpsc::channel();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(|l| l.ok()) {
                if line.contains("ENLIST WRITTEN") {
                    let _ = said.send(());
                }
            }
        });
        heard.recv_timeout(Duration::from_secs(60)).expect("the child wrote inside its transaction");
        child.kill().unwrap();
        child.wait().unwrap();

        let (store, app) = open(&path);
        let stats = block_on(store.stats()).unwrap();
        let rows = orders(&app);
        if commit {
            assert_eq!((rows.len(), stats.pending), (1, 3), "committed: the row and its events");
        } else {
            assert_eq!((rows.len(), stats.pending), (0, 0), "killed mid-transaction: neither");
        }
    }
}

/// The child of `enlisted_sigkill_leaves_both_or_neither`: enlists three
/// events next to an application row, commits if told to, says so, and
/// waits to be killed.
#[test]
#[ignore = "a child process of enlisted_sigkill_leaves_both_or_neither"]
fn enlist_probe() {
    let Some(path) = std::env::var_os("OUTBOX_ENLIST_PATH") else { return };
    let commit = std::env::var("OUTBOX_ENLIST_COMMIT").as_deref() == Ok("1");
    let (store, mut app) = open(Path::new(&path));
    let tx = app.transaction_with_behavior(TransactionBehavior::Immediate).unwrap();
    tx.execute("INSERT INTO orders VALUES ('o1', 42)", []).unwrap();
    let enlisted = store.enlist(&tx, Commit::events_only().events((1..=3).map(|n| placed("o1", n)))).unwrap();
    let _open = if commit {
        enlisted.commit(tx).unwrap();
        None
    } else {
        Some(tx)
    };
    let mut out = std::io::stdout();
    writeln!(out, "ENLIST WRITTEN").unwrap();
    out.flush().unwrap();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}
