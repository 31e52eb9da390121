//! sled-specific behaviour: group flush, layout versions, foreign and
//! damaged databases, the directory lock, the size cap, leadership across
//! reopen, the interval flush policy.
#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is the test failing

use std::path::PathBuf;
use std::time::Duration;

use futures::executor::block_on;
use futures::future::join_all;
use outbox_core::prelude::*;
use outbox_core::{
    ActorId, ClaimRequest, Commit, ConsumerId, Envelope, ErrorKind, NewEvent, Payload, Result, Timestamp,
    Version,
};
use outbox_store_sled::{FlushPolicy, LAYOUT_VERSION, SledStore};

fn actor(s: &str) -> ActorId {
    ActorId::new(s).unwrap()
}

fn event(a: &ActorId, n: u64) -> NewEvent {
    NewEvent::json(a.clone(), "T", &n).unwrap()
}

fn temp() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.sled");
    (dir, path)
}

/// Opens the directory with sled itself, first waiting (blocked on the
/// OS lock sled takes on its `db` file) for the lock a just dropped
/// store's background threads may still hold for a moment.
fn raw_open(path: &std::path::Path) -> sled::Db {
    if let Ok(file) = std::fs::File::open(path.join("db")) {
        file.lock().expect("wait for sled's lock");
    } // closed: the lock is let go
    sled::open(path).expect("raw open")
}

fn kind<T: std::fmt::Debug>(r: Result<T>) -> ErrorKind {
    r.expect_err("expected an error").kind()
}

fn commit_n(store: &SledStore, a: &ActorId, n: u64) -> Version {
    let mut v = block_on(store.current_version(a)).unwrap();
    for i in 0..n {
        v = block_on(store.put_state_and_events(Commit::state(a.clone(), v, vec![1]).event(event(a, i))))
            .unwrap()
            .version
            .unwrap();
    }
    v
}

#[test]
fn group_flush_coalesces_concurrent_commits() {
    let (_d, path) = temp();
    let store = SledStore::open(&path).unwrap();
    let commits: Vec<_> = (0..64)
        .map(|i| {
            let a = actor(&format!("a{i}"));
            Commit::state(a.clone(), Version::NONE, vec![i as u8]).event(event(&a, i))
        })
        .collect();
    let results = block_on(join_all(commits.into_iter().map(|c| store.put_state_and_events(c))));
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    let stats = store.flush_stats();
    assert_eq!(stats.commits, 64);
    assert!(stats.flushes < 64, "64 concurrent commits took {} flushes", stats.flushes);
    assert_eq!(block_on(store.stats()).unwrap().pending, 64);
}

#[test]
fn failing_members_do_not_spoil_the_group() {
    let (_d, path) = temp();
    let store = SledStore::open(&path).unwrap();
    let seen = Envelope::committed(event(&actor("p"), 0), Timestamp::EPOCH);
    let fresh_seen = Envelope::committed(event(&actor("q"), 0), Timestamp::EPOCH);
    let consumer = ConsumerId::new("c").unwrap();
    let existing = event(&actor("x"), 0);
    block_on(store.put_state_and_events(
        Commit::events_only().event(existing.clone()).mark_processed(consumer.clone(), &seen),
    ))
    .unwrap();
    let shared = event(&actor("y"), 0);

    // Against the stored data: every 6th member fails a different way.
    let mut commits = Vec::new();
    let mut expect = Vec::new();
    for i in 0..60u64 {
        let a = actor(&format!("a{i}"));
        let c = Commit::state(a.clone(), Version::NONE, b"ok".to_vec()).event(event(&a, i));
        let (c, want) = match i % 6 {
            1 => (
                Commit::state(a.clone(), Version(3), b"ok".to_vec()).event(event(&a, i)),
                Some(ErrorKind::Conflict),
            ),
            3 => (c.event(existing.clone()), Some(ErrorKind::DuplicateEvent)),
            5 => (c.mark_processed(consumer.clone(), &seen), Some(ErrorKind::AlreadyProcessed)),
            _ => (c, None),
        };
        commits.push(c);
        expect.push(want);
    }
    // Against earlier members of the same group: the first wins.
    let b = actor("b");
    commits.push(Commit::state(b.clone(), Version::NONE, b"first".to_vec()).event(shared.clone()));
    expect.push(None);
    commits.push(Commit::state(b.clone(), Version::NONE, b"second".to_vec()));
    expect.push(Some(ErrorKind::Conflict));
    commits.push(Commit::events_only().event(shared.clone()));
    expect.push(Some(ErrorKind::DuplicateEvent));
    commits.push(Commit::events_only().mark_processed(consumer.clone(), &fresh_seen));
    expect.push(None);
    commits.push(Commit::events_only().mark_processed(consumer.clone(), &fresh_seen));
    expect.push(Some(ErrorKind::AlreadyProcessed));

    let results = block_on(join_all(commits.into_iter().map(|c| store.put_state_and_events(c))));
    for (i, (r, want)) in results.iter().zip(&expect).enumerate() {
        assert_eq!(r.as_ref().err().map(|e| e.kind()), *want, "commit {i}");
        if i < 60 {
            let state = block_on(store.load_state(&actor(&format!("a{i}")))).unwrap();
            assert_eq!(state.is_some(), want.is_none(), "state of commit {i} written iff it succeeded");
        }
    }
    assert_eq!(block_on(store.load_state(&b)).unwrap().unwrap().bytes, b"first");
    assert_eq!(block_on(store.stats()).unwrap().pending, 1 + 30 + 1, "events of the good commits only");
    let stats = store.flush_stats();
    assert!(stats.flushes < stats.commits, "the failures shared flushes with successes: {stats:?}");
    drop(store);
    let dump = outbox_store_sled::debug::dump(&path).unwrap();
    assert_eq!(dump.events.len(), 32, "indexes agree with the rows after reopen");
}

#[test]
fn a_newer_layout_is_refused_and_not_altered() {
    let (_d, path) = temp();
    commit_n(&SledStore::open(&path).unwrap(), &actor("a"), 1);
    {
        let db = raw_open(&path);
        db.open_tree("outbox.meta").unwrap().insert("layout", &(LAYOUT_VERSION + 1).to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    let err = SledStore::open(&path).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SchemaTooNew);
    let db = raw_open(&path);
    let v = db.open_tree("outbox.meta").unwrap().get("layout").unwrap().unwrap();
    assert_eq!(v.as_ref(), &(LAYOUT_VERSION + 1).to_be_bytes(), "the layout mark was not rewritten");
    assert_eq!(db.open_tree("outbox.events").unwrap().len(), 1, "the events are untouched");
}

#[test]
fn a_foreign_sled_database_is_refused_and_left_alone() {
    let (_d, path) = temp();
    {
        let db = raw_open(&path);
        db.insert("app", "data").unwrap();
        db.open_tree("users").unwrap().insert("u1", "x").unwrap();
        db.flush().unwrap();
    }
    assert_eq!(kind(SledStore::open(&path)), ErrorKind::Corrupted);
    let db = raw_open(&path);
    let names: Vec<_> =
        db.tree_names().into_iter().map(|n| String::from_utf8_lossy(&n).into_owned()).collect();
    assert!(names.iter().all(|n| !n.starts_with("outbox.")), "no outbox tree was created: {names:?}");
}

#[test]
fn a_file_that_is_not_sled_is_a_typed_error_not_a_panic() {
    let (_d, path) = temp();
    // A plain file where the database directory should be.
    std::fs::write(&path, b"not a directory").unwrap();
    let k = kind(SledStore::open(&path));
    assert!(
        matches!(k, ErrorKind::Corrupted | ErrorKind::Unavailable | ErrorKind::PermissionDenied),
        "{k:?}"
    );
}

#[test]
fn a_damaged_database_gives_typed_errors_not_panics() {
    let (_d, path) = temp();
    {
        let store = SledStore::open(&path).unwrap();
        let a = actor("a");
        let events: Vec<_> =
            (0..300).map(|i| NewEvent::new(a.clone(), "T", Payload::bytes(vec![i as u8; 900]))).collect();
        block_on(store.put_state_and_events(Commit::state(a, Version::NONE, b"s".to_vec()).events(events)))
            .unwrap();
    }
    let file = path.join("db");
    let mut bytes = std::fs::read(&file).unwrap();
    assert!(bytes.len() > 64 * 1024, "{}", bytes.len());
    for b in &mut bytes[4096..] {
        *b = 0xA5;
    }
    std::fs::write(&file, &bytes).unwrap();
    // sled treats a damaged log like a torn write and recovers what comes
    // before it; the store notices that committed events are missing.
    assert_eq!(kind(SledStore::open(&path)), ErrorKind::Corrupted);
}

/// A row damaged while the store was closed (cut in half) is quarantined
/// by the first read that meets it, not a failure of every read; `dump`,
/// the strict raw reader, reports a damaged row it finds unquarantined as
/// `Corrupted` (a typed error, not a panic).
#[test]
fn a_damaged_row_is_corrupted_not_a_panic() {
    let (_d, path) = temp();
    commit_n(&SledStore::open(&path).unwrap(), &actor("a"), 3);
    let cut_first_row = || {
        let db = raw_open(&path);
        let events = db.open_tree("outbox.events").unwrap();
        let (k, v) = events.first().unwrap().unwrap();
        events.insert(k, &v[..v.len() / 2]).unwrap();
        db.flush().unwrap();
    };
    cut_first_row();
    assert_eq!(kind(outbox_store_sled::debug::dump(&path)), ErrorKind::Corrupted);
    let store = SledStore::open(&path).unwrap();
    assert_eq!(block_on(store.list_pending(10)).unwrap().len(), 2, "the damaged row is quarantined");
    let g = block_on(store.acquire_leadership("l", Duration::from_secs(30))).unwrap().unwrap();
    let request = ClaimRequest::new(10, Duration::from_secs(30)).park_dead_keys(true);
    assert!(block_on(store.claim(&g, request)).unwrap().is_empty(), "parked behind it");
    assert_eq!(
        kind(outbox_store_sled::debug::dump(&path)),
        ErrorKind::Unavailable,
        "the store holds the lock"
    );
    drop(store);
    let dump = outbox_store_sled::debug::dump(&path).unwrap();
    assert_eq!(dump.events.len(), 3, "the quarantined row agrees with the indexes");
}

/// What a test does to one committed event's stored row or index entries.
#[derive(Clone, Copy, Debug)]
enum Poison {
    /// Garbage bytes in place of the row.
    Garbage,
    /// The row cut short.
    Truncated,
    /// A status tag no layout has.
    UnknownStatus,
    /// A JSON payload that is not JSON.
    BadJson,
    /// An origin that is not UTF-8: an id that does not parse.
    BadOrigin,
    /// No row, while the pending index names it.
    Missing,
    /// A good row whose pending entry is garbage.
    BadPendingEntry,
    /// Garbage row, garbage pending entry, no id index entry: nothing says
    /// its id or its key.
    Unknowable,
}

fn replace(bytes: &mut [u8], from: &[u8], to: &[u8]) {
    let at = bytes.windows(from.len()).position(|w| w == from).expect("pattern in the row");
    bytes[at..at + to.len()].copy_from_slice(to);
}

/// Applies `poison` to the stored event `id` of the closed database.
fn poison(db: &sled::Db, id: outbox_core::EventId, poison: Poison) {
    let tree = |n: &str| db.open_tree(n).unwrap();
    let (events, pending, ids) = (tree("outbox.events"), tree("outbox.pending"), tree("outbox.ids"));
    let k = ids.get(id.to_bytes()).unwrap().expect("the event's seq");
    let mut row = events.get(&k).unwrap().expect("the event's row").to_vec();
    let garbage = b"\xde\xad\xbe\xef not a row".to_vec();
    match poison {
        Poison::Garbage => row = garbage,
        Poison::Truncated => row.truncate(row.len() / 2),
        Poison::UnknownStatus => row[0] = 9,
        Poison::BadJson => replace(&mut row, b"\"xyzzy\"", b"{\"nope\""),
        Poison::BadOrigin => replace(&mut row, b"\x00\x00\x00\x04uuuu", b"\x00\x00\x00\x04\xff\xff\xff\xff"),
        Poison::Missing => {
            events.remove(&k).unwrap();
            return;
        }
        Poison::BadPendingEntry => {
            pending.insert(&k, garbage).unwrap();
            return;
        }
        Poison::Unknowable => {
            pending.insert(&k, garbage.clone()).unwrap();
            ids.remove(id.to_bytes()).unwrap();
            row = garbage;
        }
    }
    events.insert(&k, row).unwrap();
}

/// Rows that do not decode (garbage, truncated, an unknown status, a JSON
/// payload that is not JSON, an origin that does not parse, a missing row
/// the index names) are quarantined: moved to the dead letters with a
/// `last_error` starting `corrupted:`, their bytes kept as they were,
/// while every other event flows in per-key order. A bad index entry of a
/// good row is rebuilt from the row. A poison row at the head of its key
/// parks the key like any dead letter; one whose key is unknowable parks
/// nothing, and one whose id is unknowable is listed under an id derived
/// from its seq. Claims, listings and counts never fail.
#[test]
fn a_poison_row_is_quarantined() {
    let (_d, path) = temp();
    let ttl = Duration::from_secs(30);
    let store = SledStore::open(&path).unwrap();
    let mk = |key: &str| NewEvent::json(actor(key), "T", &"xyzzy").unwrap();
    let cases = [
        ("p", Poison::Garbage),
        ("q", Poison::Truncated),
        ("r", Poison::UnknownStatus),
        ("s", Poison::BadJson),
        ("uuuu", Poison::BadOrigin),
        ("t", Poison::Missing),
        ("v", Poison::BadPendingEntry),
        ("w", Poison::Unknowable),
    ];
    let bad: Vec<NewEvent> = cases.iter().map(|(key, _)| mk(key)).collect();
    // Each poisoned event has a good follower on its key.
    let next: Vec<NewEvent> = cases.iter().map(|(key, _)| mk(key)).collect();
    for e in bad.iter().chain(&next) {
        block_on(store.put_state_and_events(Commit::events_only().event(e.clone()))).unwrap();
    }
    drop(store);
    let raw_rows = {
        let db = raw_open(&path);
        for (e, (_, p)) in bad.iter().zip(&cases) {
            poison(&db, e.id, *p);
        }
        db.flush().unwrap();
        let events = db.open_tree("outbox.events").unwrap();
        let rows: Vec<_> = events.iter().map(|r| r.unwrap()).collect();
        rows
    };

    let store = SledStore::open(&path).unwrap();
    // Good events on two keys, after the poison.
    let (a, b) = (actor("a"), actor("b"));
    let good = [event(&a, 0), event(&b, 0), event(&a, 1), event(&b, 1)];
    block_on(store.put_state_and_events(Commit::events_only().events(good.to_vec()))).unwrap();

    let g = block_on(store.acquire_leadership("l", ttl)).unwrap().unwrap();
    // Settling a poisoned id is a no-op, not an error.
    block_on(store.ack(&g, &[bad[2].id])).unwrap();
    let park = || ClaimRequest::new(100, ttl).park_dead_keys(true);
    let got = block_on(store.claim(&g, park())).unwrap();
    let ids = |envs: &[Envelope]| envs.iter().map(|e| e.id).collect::<Vec<_>>();
    // v's row was good (its index entry is rebuilt): v flows, both events;
    // w's poison parks nothing (its key is unknowable): its follower
    // flows; every other poisoned key is parked behind its poison.
    let want = vec![bad[6].id, next[6].id, next[7].id, good[0].id, good[1].id, good[2].id, good[3].id];
    assert_eq!(ids(&got), want);
    assert!(block_on(store.list_pending(100)).is_ok());
    let s = block_on(store.stats()).unwrap();
    assert_eq!((s.pending, s.in_flight, s.dead, s.parked_keys), (6 + 7, 7, 7, 6));
    block_on(store.ack(&g, &ids(&got))).unwrap();
    assert!(block_on(store.claim(&g, park())).unwrap().is_empty(), "the parked keys stay parked");

    // Listed dead, in commit order, with what could be read.
    let dead = block_on(store.list_dead(100)).unwrap();
    assert_eq!(dead.len(), 7);
    for d in &dead {
        let e = d.last_error.as_deref().unwrap_or_default();
        assert!(e.starts_with("corrupted:"), "{e}");
    }
    let quarantined = [0, 1, 2, 3, 4, 5, 7];
    assert_eq!(ids(&dead[..6]), quarantined[..6].iter().map(|&i| bad[i].id).collect::<Vec<_>>());
    let keys: Vec<&str> = dead.iter().map(|d| d.key.as_str()).collect();
    assert_eq!(keys, ["p", "q", "r", "s", "uuuu", "t", "outbox.corrupted"]);
    // The raw bytes, as stored.
    for (d, i) in dead.iter().zip(quarantined) {
        let seq = i as u64;
        let stored = raw_rows.iter().find(|(k, _)| k.as_ref() == seq.to_be_bytes()).map(|(_, v)| v.to_vec());
        assert_eq!(d.payload.as_bytes(), stored.unwrap_or_default().as_slice(), "{:?}", cases[i].1);
    }
    // Nothing said w's id: it is listed under one derived from its seq.
    let w = &dead[6];
    assert_ne!(w.id, bad[7].id);
    assert!(w.last_error.as_deref().unwrap().contains(&w.id.to_string()));
    let s = block_on(store.stats()).unwrap();
    assert_eq!((s.pending, s.in_flight, s.dead, s.delivered, s.parked_keys), (6, 0, 7, 7, 6));

    // Like any dead letter: skipped, its key flows; discarded, then pruned;
    // not requeued (no event to deliver).
    assert_eq!(block_on(store.skip_dead(&[bad[0].id])).unwrap(), 1);
    assert_eq!(ids(&block_on(store.claim(&g, park())).unwrap()), vec![next[0].id]);
    assert_eq!(block_on(store.requeue_dead(&[bad[1].id])).unwrap(), 0);
    assert_eq!(block_on(store.discard_dead(&[bad[1].id, w.id])).unwrap(), 2);
    let s = block_on(store.stats()).unwrap();
    assert_eq!((s.dead, s.discarded, s.parked_keys), (5, 2, 4));
    assert_eq!(ids(&block_on(store.claim(&g, park())).unwrap()), vec![next[1].id], "q flows on");
    let far = Timestamp::from_millis(i64::MAX);
    block_on(store.ack(&g, &[next[0].id, next[1].id])).unwrap();
    assert_eq!(block_on(store.prune_delivered(far, 100)).unwrap(), 9 + 2);
    drop(store);

    // The indexes agree with the rows; the quarantined bytes are untouched.
    let dump = outbox_store_sled::debug::dump(&path).unwrap();
    assert_eq!(dump.events.len(), 5 + 4, "five quarantined, four parked followers");
    let db = raw_open(&path);
    let events = db.open_tree("outbox.events").unwrap();
    for (k, v) in &raw_rows {
        if let Some(now) = events.get(k).unwrap() {
            assert_eq!(&now, v, "a row is never rewritten once quarantined");
        }
    }
}

#[test]
fn a_second_open_while_held_is_unavailable() {
    let (_d, path) = temp();
    let first = SledStore::open(&path).unwrap();
    let err = SledStore::options(&path).lock_timeout(Duration::ZERO).open().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(err.is_retryable());
    // An opener that waits gets the database once the holder closes it.
    let waiter = std::thread::spawn({
        let path = path.clone();
        move || SledStore::options(&path).lock_timeout(Duration::from_secs(30)).open().map(drop)
    });
    drop(first);
    waiter.join().unwrap().expect("opens once the first handle is closed");
}

#[test]
fn the_size_cap_is_quota_exceeded_and_keeps_what_was_committed() {
    let (_d, path) = temp();
    let store = SledStore::options(&path).max_size_bytes(4 * 1024 * 1024).open().unwrap();
    let a = actor("a");
    let mut version = Version::NONE;
    let mut committed = 0u64;
    let err = loop {
        let e = NewEvent::new(a.clone(), "BIG", Payload::bytes(vec![7; 32 * 1024]));
        match block_on(store.put_state_and_events(Commit::state(a.clone(), version, vec![1; 512]).event(e))) {
            Ok(r) => {
                version = r.version.unwrap();
                committed += 1;
            }
            Err(e) => break e,
        }
        assert!(committed < 10_000, "the size cap never hit");
    };
    assert_eq!(err.kind(), ErrorKind::QuotaExceeded);
    assert!(committed > 5);
    assert_eq!(block_on(store.stats()).unwrap().pending, committed, "everything committed before is there");
    assert_eq!(
        block_on(store.load_state(&a)).unwrap().unwrap().version,
        version,
        "the failed commit wrote nothing"
    );

    // A full outbox still drains.
    let g = block_on(store.acquire_leadership("l", Duration::from_secs(30))).unwrap().unwrap();
    let mut drained = 0;
    loop {
        let batch = block_on(store.claim(&g, ClaimRequest::new(100, Duration::from_secs(30)))).unwrap();
        if batch.is_empty() {
            break;
        }
        drained += batch.len() as u64;
        block_on(store.ack(&g, &batch.iter().map(|e| e.id).collect::<Vec<_>>())).unwrap();
    }
    assert_eq!(drained, committed);
    let far = Timestamp::from_millis(i64::MAX);
    assert_eq!(block_on(store.prune_delivered(far, usize::MAX)).unwrap(), committed);
}

#[test]
fn epochs_grow_across_reopen_and_old_grants_are_fenced() {
    let (_d, path) = temp();
    let ttl = Duration::from_secs(3600);
    let store = SledStore::open(&path).unwrap();
    let a = actor("a");
    commit_n(&store, &a, 2);
    let g1 = block_on(store.acquire_leadership("one", ttl)).unwrap().unwrap();
    let claimed = block_on(store.claim(&g1, ClaimRequest::new(1, Duration::from_millis(1)))).unwrap();
    assert_eq!(claimed.len(), 1);
    drop(store);

    // A new opener is not blocked by the dead holder's unexpired grant.
    let store = SledStore::open(&path).unwrap();
    let g2 = block_on(store.acquire_leadership("two", ttl)).unwrap().expect("no leader after reopen");
    assert!(g2.epoch > g1.epoch);
    assert_eq!(kind(block_on(store.ack(&g1, &[claimed[0].id]))), ErrorKind::Fenced);
    assert_eq!(kind(block_on(store.ack(&g2, &[claimed[0].id]))), ErrorKind::Fenced, "g2 never claimed it");
}

#[test]
fn a_leader_killed_mid_batch_leaves_no_lease_for_the_next_to_wait_out() {
    let (_d, path) = temp();
    let (ttl, lease) = (Duration::from_secs(30), Duration::from_secs(3600));
    let x = actor("x");
    let e = event(&x, 1);
    let a = SledStore::open(&path).unwrap();
    block_on(a.put_state_and_events(Commit::events_only().event(e.clone()))).unwrap();
    let ga = block_on(a.acquire_leadership("a", ttl)).unwrap().expect("a leads");
    assert_eq!(block_on(a.claim(&ga, ClaimRequest::new(10, lease))).unwrap().len(), 1);
    drop(a); // killed with the batch at the sink: no ack, no release

    let b = SledStore::open(&path).unwrap();
    assert_eq!(block_on(b.stats()).unwrap().in_flight, 0, "the dead holder's lease is void");
    let gb = block_on(b.acquire_leadership("b", ttl)).unwrap().expect("b leads");
    let again = block_on(b.claim(&gb, ClaimRequest::new(10, lease))).unwrap();
    assert_eq!(
        again.iter().map(|e| (e.id, e.attempts)).collect::<Vec<_>>(),
        vec![(e.id, 2)],
        "claimable at once, not in an hour; the lost attempt is counted"
    );
    // A released grant's leases stand across a reopen: the batch may
    // still be at the sink of whoever took it.
    block_on(b.release_leadership(&gb)).unwrap();
    drop(b);
    let c = SledStore::open(&path).unwrap();
    assert_eq!(block_on(c.stats()).unwrap().in_flight, 1);
    let gc = block_on(c.acquire_leadership("c", ttl)).unwrap().expect("c leads");
    assert!(block_on(c.claim(&gc, ClaimRequest::new(10, lease))).unwrap().is_empty(), "b's lease holds");
}

#[test]
fn the_interval_policy_reports_not_durable_and_still_reopens() {
    let (_d, path) = temp();
    let a = actor("a");
    {
        let store = SledStore::options(&path)
            .flush(FlushPolicy::Interval(Duration::from_millis(500)))
            .open()
            .unwrap();
        assert!(!store.capabilities().durable);
        commit_n(&store, &a, 3);
        assert_eq!(store.flush_stats().flushes, 0, "no flush per write");
    }
    let store = SledStore::open(&path).unwrap();
    assert!(store.capabilities().durable);
    assert_eq!(block_on(store.current_version(&a)).unwrap(), Version(3), "closing flushed everything");
}
