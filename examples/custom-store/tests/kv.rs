//! The backend's own promises, beyond the store contract: foreign and
//! newer files are refused untouched, a torn last record is cut off, and
//! a second open of the same file is refused while the first is open.

use std::io::Write;
use std::path::Path;

use outbox_core::prelude::*;
use outbox_core::{ActorId, Commit, ErrorKind, NewEvent, SystemClock};
use outbox_example_custom_store::KvStore;

fn open(path: &Path) -> outbox_core::Result<KvStore> {
    KvStore::open(path, SystemClock::shared())
}

fn event(n: u64) -> NewEvent {
    NewEvent::json(ActorId::new("a").expect("id"), "E", &n).expect("json")
}

#[test]
fn foreign_file_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("outbox.kv");
    std::fs::write(&path, b"a file of another program").expect("write");
    let err = open(&path).expect_err("a foreign file");
    assert_eq!(err.kind(), ErrorKind::Corrupted);
    assert_eq!(std::fs::read(&path).expect("read"), b"a file of another program");
}

#[test]
fn newer_format_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("outbox.kv");
    let mut newer = b"OUTBOXKV".to_vec();
    newer.extend_from_slice(&(outbox_example_custom_store::kv::FORMAT_VERSION + 1).to_be_bytes());
    std::fs::write(&path, &newer).expect("write");
    let err = open(&path).expect_err("a newer format");
    assert_eq!(err.kind(), ErrorKind::SchemaTooNew);
    assert_eq!(std::fs::read(&path).expect("read"), newer);
}

#[test]
fn torn_last_record_is_cut_off_and_writes_go_on() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("outbox.kv");
    block_on(async {
        let store = open(&path).expect("open");
        store.put_state_and_events(Commit::events_only().event(event(1))).await.expect("commit");
        drop(store);
        // A crash in the middle of an append: a record header and part of
        // its bytes.
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).expect("append");
        f.write_all(&[0, 0, 1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]).expect("torn");
        drop(f);

        let store = open(&path).expect("reopen");
        assert_eq!(store.stats().await.expect("stats").pending, 1, "the acknowledged commit is kept");
        store.put_state_and_events(Commit::events_only().event(event(2))).await.expect("commit");
        drop(store);
        let store = open(&path).expect("reopen");
        assert_eq!(store.stats().await.expect("stats").pending, 2, "the commit after the cut is kept");
    });
}

#[test]
fn second_open_is_refused_while_open() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("outbox.kv");
    let first = open(&path).expect("open");
    assert_eq!(open(&path).expect_err("already open").kind(), ErrorKind::Unavailable);
    drop(first);
    open(&path).expect("open again once closed");
}

/// Runs `f` on a current-thread Tokio runtime.
fn block_on(f: impl std::future::Future<Output = ()>) {
    tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(f);
}
