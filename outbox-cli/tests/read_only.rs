//! Safe by construction: whatever a command is pointed at that is not a
//! usable outbox (a missing path, a plain SQLite file, a directory, a
//! newer schema or layout, a sled database of somebody else's, an
//! unreachable server), every command (the writing ones too) fails with a
//! non-zero exit and leaves it byte-for-byte as it was, creating nothing.
#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is the test failing

mod common;

use std::path::Path;

use common::{Backend, checksum, outbox, with_dead_letters};

const ID: &str = "01a235f2-986e-705a-b394-1b734e022bba";

/// Every command, with what follows STORE: the read-only ones, the
/// dry runs, the writing ones.
const COMMANDS: &[&[&str]] = &[
    &["stats"],
    &["inspect"],
    &["list"],
    &["list", "--status", "dead", "--json"],
    &["show", ID],
    &["state", "form"],
    &["inbox", "mailer"],
    &["watch", "--max-events", "1"],
    &["ui", "--port", "0"],
    &["requeue", ID, "--dry-run"],
    &["discard", ID, "--dry-run"],
    &["skip", ID, "--dry-run"],
    &["prune", "--dry-run"],
    &["requeue", ID],
    &["requeue", "--all"],
    &["discard", ID],
    &["skip", ID],
    &["prune", "--older-than", "0s"],
];

/// Runs every command on `store`, expecting `code`; `extra` goes last.
fn every_command_fails(store: &str, code: i32, extra: &[&str]) {
    for cmd in COMMANDS {
        let mut args = vec![cmd[0], store];
        args.extend_from_slice(&cmd[1..]);
        args.extend_from_slice(extra);
        let out = outbox(&args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "outbox {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.stderr.is_empty(), "outbox {args:?}: says why");
    }
}

/// Every command on `path` fails with exit 1, and `dir` (holding it) is
/// byte-for-byte unchanged, with no file added or removed.
fn refused_unchanged(path: &Path, dir: &Path) {
    let before = checksum(dir);
    every_command_fails(path.to_str().unwrap(), 1, &[]);
    assert!(checksum(dir) == before, "{} changed", dir.display());
}

#[test]
fn a_missing_path_is_refused_and_nothing_is_created() {
    let dir = tempfile::tempdir().unwrap();
    for path in ["typo.db", "no/such/dir/outbox.db"] {
        every_command_fails(dir.path().join(path).to_str().unwrap(), 1, &[]);
    }
    every_command_fails(&format!("sled:{}", dir.path().join("missing.sled").display()), 1, &[]);
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none(), "nothing was created");
}

#[test]
fn a_plain_sqlite_file_is_refused_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('mine');").unwrap();
    }
    refused_unchanged(&path, dir.path());
}

#[test]
fn a_directory_that_is_not_a_store_is_refused_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    refused_unchanged(&empty, dir.path());
    let docs = dir.path().join("docs");
    std::fs::create_dir(&docs).unwrap();
    std::fs::write(docs.join("readme.txt"), "mine").unwrap();
    std::fs::write(docs.join("db"), "not sled").unwrap();
    refused_unchanged(&docs, dir.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_newer_sqlite_schema_is_refused_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("future.db");
    let b = Backend::Sqlite(path.clone());
    {
        let store = b.open().await;
        with_dead_letters(store.as_ref()).await;
    }
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("PRAGMA user_version = 999;").unwrap();
    }
    refused_unchanged(&path, dir.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_newer_sled_layout_is_refused_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("future.sled");
    let b = Backend::Sled(path.clone());
    {
        let store = b.open().await;
        with_dead_letters(store.as_ref()).await;
    }
    {
        let db = sled::open(&path).unwrap();
        db.open_tree("outbox.meta").unwrap().insert("layout", &99u32.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    refused_unchanged(&path, dir.path());
}

#[test]
fn a_sled_database_that_is_not_an_outbox_is_refused_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.sled");
    {
        let db = sled::open(&path).unwrap();
        db.open_tree("users").unwrap().insert("ada", "admin").unwrap();
        db.flush().unwrap();
    }
    refused_unchanged(&path, dir.path());
}

#[test]
fn an_unreachable_postgres_fails_fast_as_unavailable() {
    // A loopback port nothing listens on: bound, then let go.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    every_command_fails(&format!("postgres://outbox@127.0.0.1:{port}/outbox"), 3, &[]);
}

/// Read-only against PostgreSQL: a schema without the outbox is not
/// created (not even by a writing command), one of a newer version is
/// refused and keeps its version.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_read_only_creates_and_changes_nothing() {
    let Some(b) = Backend::postgres("postgres_read_only_creates_and_changes_nothing") else { return };
    let Backend::Postgres { url, schema } = &b else { unreachable!() };
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    let driver = tokio::spawn(conn);
    every_command_fails(url, 1, &["--schema", schema]);
    let schemas: i64 = client
        .query_one("SELECT count(*) FROM pg_namespace WHERE nspname = $1", &[schema])
        .await
        .unwrap()
        .get(0);
    assert_eq!(schemas, 0, "no schema was created");

    {
        let store = b.open().await;
        with_dead_letters(store.as_ref()).await;
    }
    let q = |t: &str| format!("SET search_path TO \"{schema}\"; {t}");
    client.batch_execute(&q("UPDATE outbox_schema SET version = 99")).await.unwrap();
    let snapshot = format!(
        "SELECT (SELECT version FROM \"{schema}\".outbox_schema),
                (SELECT string_agg(id::text || status::text || attempts::text, ',' ORDER BY seq) FROM \"{schema}\".outbox_events)"
    );
    let before = client.query_one(&snapshot, &[]).await.unwrap();
    let before: (i32, String) = (before.get(0), before.get(1));
    every_command_fails(url, 1, &["--schema", schema]);
    let after = client.query_one(&snapshot, &[]).await.unwrap();
    assert_eq!((after.get::<_, i32>(0), after.get::<_, String>(1)), before, "nothing changed");
    drop(client);
    let _ = driver.await;
    b.cleanup().await;
}
