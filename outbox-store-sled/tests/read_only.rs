//! `SledOptions::read_only`: reads an existing outbox through a private
//! copy, refuses every write, and leaves the directory it was given
//! byte-for-byte as it was, whatever it holds.
#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is the test failing

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::executor::block_on;
use outbox_core::prelude::*;
use outbox_core::{ActorId, Commit, ErrorKind, NewEvent};
use outbox_store_sled::{SledOptions, SledStore};

/// Every file and directory under `path`, with the files' bytes.
fn contents(path: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    fn walk(p: &Path, root: &Path, all: &mut BTreeMap<PathBuf, Option<Vec<u8>>>) {
        let rel = p.strip_prefix(root).unwrap().to_path_buf();
        if p.is_dir() {
            all.insert(rel, None);
            for e in std::fs::read_dir(p).unwrap() {
                walk(&e.unwrap().path(), root, all);
            }
        } else {
            all.insert(rel, Some(std::fs::read(p).unwrap()));
        }
    }
    let mut all = BTreeMap::new();
    if path.exists() {
        walk(path, path, &mut all);
    }
    all
}

/// This process's scratch copies in the temporary directory.
fn scratch_copies() -> usize {
    let prefix = format!("outbox-sled-read-only-{}-", std::process::id());
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with(&prefix))
        .count()
}

fn kind_of<T: std::fmt::Debug>(r: outbox_core::Result<T>) -> ErrorKind {
    r.unwrap_err().kind()
}

#[test]
fn read_only_reads_refuses_writes_and_changes_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let a = ActorId::new("a").unwrap();
    {
        let store = SledStore::open(&path).unwrap();
        let evs =
            vec![NewEvent::json(a.clone(), "T", &1).unwrap(), NewEvent::json(a.clone(), "T", &2).unwrap()];
        block_on(store.put_state_and_events(Commit::events_only().events(evs))).unwrap();
    }
    let before = contents(&path);
    let store = SledOptions::new(&path).read_only(true).open().unwrap();
    assert!(store.is_read_only());
    assert_eq!(store.path(), path, "the path given, not the copy");
    assert_eq!(block_on(store.list_pending(10)).unwrap().len(), 2);
    assert_eq!(block_on(store.stats()).unwrap().pending, 2);
    let commit = Commit::events_only().event(NewEvent::json(a, "T", &3).unwrap());
    assert_eq!(kind_of(block_on(store.put_state_and_events(commit))), ErrorKind::PermissionDenied);
    assert_eq!(
        kind_of(block_on(store.acquire_leadership("x", Duration::from_secs(5)))),
        ErrorKind::PermissionDenied
    );
    assert_eq!(kind_of(block_on(store.requeue_dead(&[]))), ErrorKind::PermissionDenied);
    assert_eq!(
        kind_of(block_on(store.prune_delivered(outbox_core::Timestamp::EPOCH, 1))),
        ErrorKind::PermissionDenied
    );
    assert!(scratch_copies() > 0);
    drop(store);
    assert_eq!(scratch_copies(), 0, "the copy is removed on drop");
    assert!(contents(&path) == before, "the database is byte-for-byte unchanged");

    // The original is not locked by a reader: a writer can open it meanwhile.
    let reader = SledOptions::new(&path).read_only(true).open().unwrap();
    drop(SledStore::open(&path).unwrap());
    drop(reader);
}

/// The tests count this process's scratch copies: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn read_only_refuses_what_is_not_an_outbox_untouched() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let open = |p: &Path| SledOptions::new(p).read_only(true).open().map(drop);

    assert_eq!(kind_of(open(&dir.path().join("missing"))), ErrorKind::InvalidInput);
    let file = dir.path().join("file");
    std::fs::write(&file, "mine").unwrap();
    assert_eq!(kind_of(open(&file)), ErrorKind::InvalidInput);
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert_eq!(kind_of(open(&empty)), ErrorKind::Corrupted);

    let foreign = dir.path().join("foreign");
    {
        let db = sled::open(&foreign).unwrap();
        db.open_tree("users").unwrap().insert("ada", "admin").unwrap();
        db.flush().unwrap();
    }
    let newer = dir.path().join("newer");
    {
        drop(SledStore::open(&newer).unwrap());
        let db = sled::open(&newer).unwrap();
        db.open_tree("outbox.meta").unwrap().insert("layout", &99u32.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    let before = contents(dir.path());
    assert_eq!(kind_of(open(&foreign)), ErrorKind::Corrupted);
    assert_eq!(kind_of(open(&newer)), ErrorKind::SchemaTooNew);
    assert!(contents(dir.path()) == before, "nothing changed, nothing created");
    assert_eq!(scratch_copies(), 0, "no copy left behind");
}
