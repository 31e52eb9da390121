//! Rows the store did not write: a row that does not decode is quarantined
//! and stops nothing; the schema's `CHECK`s refuse a wrongly typed row at
//! its `INSERT`; a program in another language writing by the README's
//! rules gets its events delivered in key order.
#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is the test failing

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::executor::block_on;
use outbox_core::prelude::*;
use outbox_core::{
    ActorId, ClaimRequest, Commit, Envelope, EventId, LeaderGrant, ManualClock, NewEvent, Payload,
    PayloadKind, Timestamp,
};
use outbox_store_sqlite::SqliteStore;
use rusqlite::types::Value;
use rusqlite::{Connection, ErrorCode};

const T0: Timestamp = Timestamp::from_millis(1_700_000_000_000);

fn temp() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    (dir, path)
}

fn event(key: &str, n: u64) -> NewEvent {
    NewEvent::json(ActorId::new(key).unwrap(), "T", &n).unwrap()
}

fn commit(store: &SqliteStore, e: &NewEvent) {
    block_on(store.put_state_and_events(Commit::events_only().event(e.clone()))).unwrap();
}

fn ids(envs: &[Envelope]) -> Vec<EventId> {
    envs.iter().map(|e| e.id).collect()
}

/// The columns a writer sets, as `INSERT` values; `with` replaces some.
fn row(key: &str, with: &[(&str, Value)]) -> Vec<(&'static str, Value)> {
    let mut cols: Vec<(&'static str, Value)> = vec![
        ("id", Value::Blob(EventId::new().to_bytes().to_vec())),
        ("origin", Value::Text(key.into())),
        ("key", Value::Text(key.into())),
        ("event_type", Value::Text("T".into())),
        ("payload_kind", Value::Text("json".into())),
        ("payload", Value::Blob(b"1".to_vec())),
        ("headers", Value::Text("{}".into())),
        ("schema_version", Value::Integer(1)),
        ("created_at", Value::Integer(T0.as_millis())),
        ("next_attempt_at", Value::Integer(T0.as_millis())),
    ];
    for (name, v) in with {
        cols.iter_mut().find(|(c, _)| c == name).unwrap().1 = v.clone();
    }
    cols
}

/// Inserts `cols` into `outbox_events`; returns the row's seq.
fn insert(c: &Connection, cols: &[(&str, Value)]) -> rusqlite::Result<i64> {
    let names: Vec<&str> = cols.iter().map(|(n, _)| *n).collect();
    let marks = vec!["?"; cols.len()].join(", ");
    let sql = format!("INSERT INTO outbox_events ({}) VALUES ({marks})", names.join(", "));
    c.execute(&sql, rusqlite::params_from_iter(cols.iter().map(|(_, v)| v)))?;
    Ok(c.last_insert_rowid())
}

/// The id a row whose stored id is not 16 bytes is listed under.
fn derived_id(seq: i64) -> EventId {
    format!("00000000-0000-8000-8000-{seq:012x}").parse().unwrap()
}

fn id_at(c: &Connection, seq: i64) -> EventId {
    let b: Vec<u8> = c.query_row("SELECT id FROM outbox_events WHERE seq = ?1", [seq], |r| r.get(0)).unwrap();
    EventId::from_bytes(b.try_into().unwrap())
}

fn claim(store: &SqliteStore, g: &LeaderGrant, park: bool) -> Vec<Envelope> {
    block_on(store.claim(g, ClaimRequest::new(100, Duration::from_secs(30)).park_dead_keys(park))).unwrap()
}

/// Rows that do not decode (written with the checks off, as a version-2
/// file or another program could have them, or breaking a rule the checks
/// cannot see) do not fail the claim: each is moved to the dead letters
/// with a `corrupted: ` reason, its stored bytes untouched, listed with
/// its raw payload (and an id derived from its seq when its own is not 16
/// bytes); every other key keeps flowing, and the operator can skip,
/// requeue or discard them.
#[test]
fn a_poison_row_is_quarantined() {
    let (_d, path) = temp();
    let clock = ManualClock::new(T0);
    let store = SqliteStore::options(&path).clock(clock.clone()).open().unwrap();
    let [a1, b1, c1] = [event("a", 1), event("b", 1), event("c", 1)];
    for e in [&a1, &b1, &c1] {
        commit(&store, e);
    }
    let c = Connection::open(&path).unwrap();
    // What a writer in another language gets wrong, which version 2 let
    // through (here past the checks, which refuse them now).
    c.pragma_update(None, "ignore_check_constraints", true).unwrap();
    let text_payload = insert(&c, &row("a", &[("payload", Value::Text(r#"{"x":1}"#.into()))])).unwrap();
    let real_times = insert(
        &c,
        &row(
            "b",
            &[
                ("created_at", Value::Real(T0.as_millis() as f64 + 0.5)),
                ("next_attempt_at", Value::Real(0.5)),
            ],
        ),
    )
    .unwrap();
    let short_id = insert(&c, &row("d", &[("id", Value::Text("not sixteen".into()))])).unwrap();
    let bad_kind = insert(&c, &row("f", &[("payload_kind", Value::Text("xml".into()))])).unwrap();
    let bad_json = insert(&c, &row("g", &[("payload", Value::Blob(b"{".to_vec()))])).unwrap();
    c.pragma_update(None, "ignore_check_constraints", false).unwrap();
    // One the checks cannot see: a header value that is not a string.
    let bad_header = insert(&c, &row("e", &[("headers", Value::Text(r#"{"h":1}"#.into()))])).unwrap();
    let [a2, b2, e2, h1] = [event("a", 2), event("b", 2), event("e", 2), event("h", 1)];
    for e in [&a2, &b2, &e2, &h1] {
        commit(&store, e);
    }
    let bad = [text_payload, real_times, short_id, bad_kind, bad_json, bad_header];

    // Inspecting works before any claim: the bad rows are listed as they are.
    let s = block_on(store.stats()).unwrap();
    assert_eq!((s.pending, s.dead), (13, 0));
    let pending = block_on(store.list_pending(100)).unwrap();
    assert_eq!(pending.len(), 13);
    let listed = pending.iter().find(|e| e.key.as_str() == "a" && e.id != a1.id && e.id != a2.id).unwrap();
    assert_eq!(listed.payload, Payload::bytes(br#"{"x":1}"#.to_vec()), "the raw payload, as bytes");
    assert!(listed.last_error.as_deref().unwrap().starts_with("corrupted: "));
    assert!(pending.iter().any(|e| e.id == derived_id(short_id)));

    // The claim takes every key's due events but those parked behind a bad row.
    let g = block_on(store.acquire_leadership("f", Duration::from_secs(30))).unwrap().unwrap();
    let got = claim(&store, &g, true);
    assert_eq!(ids(&got), vec![a1.id, b1.id, c1.id, h1.id]);
    assert_eq!(got[0].attempts, 1);
    block_on(store.ack(&g, &ids(&got))).unwrap();

    // The bad rows are dead letters now, saying why, their bytes kept.
    let dead = block_on(store.list_dead(100)).unwrap();
    let want: Vec<EventId> =
        bad.iter().map(|&seq| if seq == short_id { derived_id(seq) } else { id_at(&c, seq) }).collect();
    assert!(bad.is_sorted());
    assert_eq!(ids(&dead), want, "in seq order");
    for e in &dead {
        let why = e.last_error.as_deref().unwrap();
        assert!(why.starts_with("corrupted: "), "{why}");
        assert_eq!(e.payload.kind(), PayloadKind::Bytes);
    }
    assert!(dead[2].last_error.as_deref().unwrap().contains(&derived_id(short_id).to_string()));
    assert_eq!(dead[0].payload.as_bytes(), br#"{"x":1}"#);
    let (kind, payload): (String, String) = c
        .query_row("SELECT typeof(payload), payload FROM outbox_events WHERE seq = ?1", [text_payload], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((kind.as_str(), payload.as_str()), ("text", r#"{"x":1}"#), "stored as it was");
    let s = block_on(store.stats()).unwrap();
    assert_eq!((s.pending, s.dead, s.parked_keys, s.delivered), (3, 6, 6, 4));

    // The operator's tools work on them, the derived id included.
    assert_eq!(block_on(store.skip_dead(&[id_at(&c, text_payload)])).unwrap(), 1);
    assert_eq!(ids(&claim(&store, &g, true)), vec![a2.id], "a flows past its skipped bad row");
    block_on(store.ack(&g, &[a2.id])).unwrap();
    assert_eq!(block_on(store.discard_dead(&[derived_id(short_id)])).unwrap(), 1);
    assert_eq!(block_on(store.requeue_dead(&[id_at(&c, bad_header)])).unwrap(), 1);
    assert!(claim(&store, &g, true).is_empty(), "the requeued bad row is quarantined again, e2 waits");
    assert!(ids(&block_on(store.list_dead(100)).unwrap()).contains(&id_at(&c, bad_header)));
    assert_eq!(ids(&claim(&store, &g, false)), vec![b2.id, e2.id], "without parking, past the dead letters");
    let s = block_on(store.stats()).unwrap();
    assert_eq!((s.dead, s.discarded), (5, 1));
}

/// The `CHECK`s refuse, at the `INSERT`, every mistake a writer in another
/// language is likely to make; a correct row goes in.
#[test]
fn a_foreign_writers_mistakes_fail_at_their_insert() {
    let (_d, path) = temp();
    drop(SqliteStore::open(&path).unwrap());
    let c = Connection::open(&path).unwrap();
    let long = "x".repeat(257);
    let mistakes: Vec<(&str, Value)> = vec![
        ("payload", Value::Text(r#"{"x":1}"#.into())),
        ("payload", Value::Blob(b"{".to_vec())),
        ("created_at", Value::Real(1.7e9 + 0.25)), // seconds, as Python's time.time()
        ("created_at", Value::Text("yesterday".into())),
        ("next_attempt_at", Value::Real(0.5)),
        ("id", Value::Blob(vec![1; 15])),
        ("id", Value::Text(EventId::new().to_string())),
        ("headers", Value::Text("not json".into())),
        ("headers", Value::Text("[]".into())),
        ("headers", Value::Blob(b"{}".to_vec())),
        ("payload_kind", Value::Text("xml".into())),
        ("origin", Value::Text(String::new())),
        ("origin", Value::Text(long.clone())),
        ("key", Value::Text(long)),
        ("key", Value::Blob(b"a".to_vec())),
        ("event_type", Value::Text(String::new())),
        ("schema_version", Value::Integer(-1)),
        ("schema_version", Value::Real(1.5)),
    ];
    for (col, v) in mistakes {
        let err = insert(&c, &row("a", &[(col, v.clone())])).expect_err(col);
        assert_eq!(err.sqlite_error_code(), Some(ErrorCode::ConstraintViolation), "{col} = {v:?}: {err}");
    }
    insert(
        &c,
        &row("a", &[("payload_kind", Value::Text("bytes".into())), ("payload", Value::Blob(vec![0xff]))]),
    )
    .unwrap();
    insert(&c, &row("a", &[("headers", Value::Text(r#"{"h":"v"}"#.into()))])).unwrap();
    assert_eq!(block_on(SqliteStore::open(&path).unwrap().stats()).unwrap().pending, 2);
}

/// The first ```` ```python ```` block of the README.
fn readme_python() -> &'static str {
    let readme = include_str!("../README.md");
    let start = readme.find("```python\n").expect("the README has a python example") + "```python\n".len();
    let len = readme[start..].find("```").unwrap();
    &readme[start..start + len]
}

/// Runs `python3` on `script` with `args`; `None` if there is no python3.
fn python(dir: &Path, script: &str, args: &[&Path]) -> Option<std::process::Output> {
    let file = dir.join("writer.py");
    std::fs::write(&file, script).unwrap();
    match std::process::Command::new("python3").arg(&file).args(args).output() {
        Ok(out) => Some(out),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("python3: {e}"),
    }
}

/// A Python program writes events with its built-in `sqlite3` module,
/// exactly as the README's example does (the example is run as it is),
/// while a store has the file open: they are claimed in key order with
/// their payloads and headers. The mistake the README warns about (a JSON
/// payload as a `str`) fails at its `INSERT` in Python too.
#[test]
fn a_foreign_writer_following_the_readme_is_delivered_in_key_order() {
    let (dir, path) = temp();
    let store = SqliteStore::open(&path).unwrap();
    let g = block_on(store.acquire_leadership("f", Duration::from_secs(30))).unwrap().unwrap();
    let Some(out) = python(dir.path(), readme_python(), &[&path]) else {
        eprintln!(
            "SKIPPED a_foreign_writer_following_the_readme_is_delivered_in_key_order: no python3 on PATH"
        );
        return;
    };
    assert!(out.status.success(), "the README's example failed:\n{}", String::from_utf8_lossy(&out.stderr));

    let got = block_on(store.claim(&g, ClaimRequest::new(100, Duration::from_secs(30)))).unwrap();
    let steps: Vec<(String, u64)> = got
        .iter()
        .map(|e| {
            let v: serde_json::Value = e.payload.decode_json().unwrap();
            assert_eq!((e.origin.as_str(), e.event_type.as_str()), ("billing", "ORDER_STEP"));
            assert_eq!(e.headers.get("source").map(String::as_str), Some("billing.py"));
            assert_eq!(v["order"].as_str(), Some(e.key.as_str()));
            (e.key.as_str().to_owned(), v["step"].as_u64().unwrap())
        })
        .collect();
    let of = |key: &str| steps.iter().filter(|(k, _)| k == key).map(|(_, s)| *s).collect::<Vec<_>>();
    assert_eq!(steps.len(), 5);
    assert_eq!(of("order-1"), [1, 2, 3], "in commit order");
    assert_eq!(of("order-2"), [1, 2], "in commit order");
    block_on(store.ack(&g, &ids(&got))).unwrap();

    let mistake = r#"
import json, sqlite3, sys, time, uuid
db = sqlite3.connect(sys.argv[1], timeout=5.0, isolation_level=None)
db.execute("BEGIN IMMEDIATE")
now = int(time.time() * 1000)
try:
    db.execute(
        "INSERT INTO outbox_events (id, origin, key, event_type, payload_kind, payload, created_at,"
        " next_attempt_at) VALUES (?, 'billing', 'order-3', 'ORDER_STEP', 'json', ?, ?, ?)",
        (uuid.uuid4().bytes, json.dumps({"step": 1}), now, now),
    )
except sqlite3.IntegrityError:
    db.execute("ROLLBACK")
    sys.exit(0)
sys.exit(3)
"#;
    let out = python(dir.path(), mistake, &[&path]).unwrap();
    assert!(out.status.success(), "a str payload was not refused:\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(block_on(store.stats()).unwrap().pending, 0);
}
