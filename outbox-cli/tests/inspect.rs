//! `outbox inspect FILE` is read-only: it never creates, migrates or
//! changes what it inspects; and `outbox --version`.
#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is the test failing

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use outbox::prelude::*;
use outbox::{ActorId, Commit, NewEvent, SqliteStore};
use outbox_core::ClaimRequest;

fn outbox(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_outbox")).args(args).output().unwrap()
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn inspect_never_creates_a_file() {
    let dir = tempfile::tempdir().unwrap();
    for path in [dir.path().join("typo.db"), dir.path().join("no/such/dir/outbox.db")] {
        let out = outbox(&["inspect", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{path:?}");
        assert!(!out.stderr.is_empty(), "{path:?}: an error is printed");
    }
    let out = outbox(&["inspect", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "a directory");
    assert!(names_in(dir.path()).is_empty(), "nothing was created");
}

#[test]
fn inspect_leaves_a_foreign_file_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('mine');").unwrap();
    }
    let (before, names) = (std::fs::read(&path).unwrap(), names_in(dir.path()));
    let out = outbox(&["inspect", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read(&path).unwrap(), before, "the file is byte-for-byte unchanged");
    assert_eq!(names_in(dir.path()), names, "no file was created beside it");
}

#[tokio::test(flavor = "multi_thread")]
async fn inspect_reads_a_live_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let (dead, pending) = {
        let store = SqliteStore::open(&path).unwrap();
        let a = ActorId::new("a").unwrap();
        let evs =
            vec![NewEvent::json(a.clone(), "Dead", &1).unwrap(), NewEvent::json(a, "Pending", &2).unwrap()];
        let (dead, pending) = (evs[0].id, evs[1].id);
        store.put_state_and_events(Commit::events_only().events(evs)).await.unwrap();
        let ttl = Duration::from_secs(30);
        let g = store.acquire_leadership("test", ttl).await.unwrap().unwrap();
        let got = store.claim(&g, ClaimRequest::new(1, ttl)).await.unwrap();
        assert_eq!(got[0].id, dead);
        store.dead_letter(&g, dead, "422 unprocessable").await.unwrap();
        store.release_leadership(&g).await.unwrap();
        (dead, pending)
    };
    let (before, names) = (std::fs::read(&path).unwrap(), names_in(dir.path()));
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();

    let out = outbox(&["inspect", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains(&pending.to_string()), "{stdout}");
    assert!(stdout.contains(&dead.to_string()), "{stdout}");
    assert_eq!(std::fs::read(&path).unwrap(), before, "the file is byte-for-byte unchanged");
    assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), mtime);
    assert_eq!(names_in(dir.path()), names, "no file was created beside it");

    // With a writer open on it, inspect reads through the writer's WAL.
    let writer = SqliteStore::open(&path).unwrap();
    let late = NewEvent::json(ActorId::new("b").unwrap(), "Late", &3).unwrap();
    let late_id = late.id;
    writer.put_state_and_events(Commit::events_only().event(late)).await.unwrap();
    let out = outbox(&["inspect", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8(out.stdout).unwrap().contains(&late_id.to_string()));
    assert_eq!(writer.stats().await.unwrap().pending, 2);
}

#[test]
fn version_is_printed() {
    let out = outbox(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains(env!("CARGO_PKG_VERSION")), "{stdout}");
}
