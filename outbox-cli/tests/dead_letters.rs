//! `outbox requeue | discard | skip FILE ID`: dead letters handled one by
//! one through the command, on a real SQLite file, with per-key order kept.
#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is the test failing

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use outbox::prelude::*;
use outbox::{ActorId, Commit, EventId, NewEvent, SqliteStore};
use outbox_core::ClaimRequest;

fn outbox(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_outbox")).args(args).output().unwrap()
}

/// A file where key `a` has events a1 (dead), a2, a3 and key `b` has b1
/// (dead): returns the ids [a1, a2, a3, b1].
async fn file_with_dead_letters(path: &Path) -> Vec<EventId> {
    let store = SqliteStore::open(path).unwrap();
    let (a, b) = (ActorId::new("a").unwrap(), ActorId::new("b").unwrap());
    let evs: Vec<NewEvent> = vec![
        NewEvent::json(a.clone(), "T", &1).unwrap(),
        NewEvent::json(a.clone(), "T", &2).unwrap(),
        NewEvent::json(a, "T", &3).unwrap(),
        NewEvent::json(b, "T", &1).unwrap(),
    ];
    let ids: Vec<EventId> = evs.iter().map(|e| e.id).collect();
    store.put_state_and_events(Commit::events_only().events(evs)).await.unwrap();
    let g = store.acquire_leadership("test", Duration::from_secs(30)).await.unwrap().unwrap();
    let park = ClaimRequest::new(10, Duration::from_secs(30)).park_dead_keys(true);
    let first = store.claim(&g, ClaimRequest::new(1, Duration::from_secs(30))).await.unwrap();
    assert_eq!(first[0].id, ids[0]);
    store.dead_letter(&g, ids[0], "422").await.unwrap();
    let next = store.claim(&g, park).await.unwrap();
    assert_eq!(next.iter().map(|e| e.id).collect::<Vec<_>>(), vec![ids[3]], "a is parked");
    store.dead_letter(&g, ids[3], "422").await.unwrap();
    store.release_leadership(&g).await.unwrap();
    ids
}

async fn claimable(path: &Path) -> Vec<EventId> {
    let store = SqliteStore::open(path).unwrap();
    let g = store.acquire_leadership("check", Duration::from_secs(30)).await.unwrap().unwrap();
    let park = ClaimRequest::new(10, Duration::from_secs(30)).park_dead_keys(true);
    let got: Vec<EventId> = store.claim(&g, park).await.unwrap().iter().map(|e| e.id).collect();
    store.release(&g, &got).await.unwrap();
    store.release_leadership(&g).await.unwrap();
    got
}

#[tokio::test]
async fn requeue_one_discard_one_and_skip_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let file = path.to_str().unwrap();

    // requeue one: a1 goes first, a2 and a3 wait behind it; b1 stays dead.
    let ids = file_with_dead_letters(&path).await;
    let out = outbox(&["requeue", file, &ids[0].to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(claimable(&path).await, ids[..3].to_vec(), "the requeued event first, then its key, in order");
    let s = SqliteStore::open(&path).unwrap().stats().await.unwrap();
    assert_eq!(s.dead, 1, "b1 is still dead");

    // discard one: b1 is discarded, kept for audit, not claimable.
    let out = outbox(&["discard", file, &ids[3].to_string()]);
    assert!(out.status.success());
    let s = SqliteStore::open(&path).unwrap().stats().await.unwrap();
    assert_eq!((s.dead, s.discarded), (0, 1));
    assert_eq!(outbox(&["discard", file, &ids[3].to_string()]).status.code(), Some(4), "no longer dead");

    // skip: a fresh file; a2 and a3 flow past the dead a1, which stays dead.
    let path2 = dir.path().join("skip.db");
    let ids = file_with_dead_letters(&path2).await;
    let out = outbox(&["skip", path2.to_str().unwrap(), &ids[0].to_string()]);
    assert!(out.status.success());
    assert_eq!(claimable(&path2).await, vec![ids[1], ids[2]], "a flows past its dead head, in order");
    let dead: Vec<EventId> =
        SqliteStore::open(&path2).unwrap().list_dead(10).await.unwrap().iter().map(|e| e.id).collect();
    assert_eq!(dead, vec![ids[0], ids[3]], "the skipped event stays a dead letter");

    // Neither an id nor --all: a usage error, nothing changed.
    assert_eq!(outbox(&["requeue", path2.to_str().unwrap()]).status.code(), Some(2));
    let out = outbox(&["requeue", path2.to_str().unwrap(), "--all"]);
    assert!(out.status.success());
    assert_eq!(SqliteStore::open(&path2).unwrap().stats().await.unwrap().dead, 0);
}
