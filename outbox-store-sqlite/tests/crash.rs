//! Real crash test: a child process commits state + events from several
//! threads and runs a forwarder (claim + ack) while the parent SIGKILLs it
//! at random moments, over and over, on one SQLite file. After every kill
//! the parent reopens the file and checks:
//!
//! - every commit the child reported as done is there, with all its events;
//! - no state without its events, no events without their state;
//! - every event the child reported as acked is delivered, and no acked
//!   event was ever claimed again;
//! - the file passes `PRAGMA integrity_check`.
//!
//! `OUTBOX_CRASH_KILLS` sets the number of kills (default 200);
//! `OUTBOX_CRASH_SEED` replays a run.

use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::executor::block_on;
use outbox_core::prelude::*;
use outbox_core::{ActorId, ClaimRequest, Commit, NewEvent, SplitMix64, Version};
use outbox_store_sqlite::SqliteStore;
use outbox_testkit::crash;

const THREADS: usize = 4;
const ACTORS_PER_THREAD: usize = 3;
const NAME: &str = "sigkill_crash_keeps_every_reported_commit";

fn main() {
    match crash::role(NAME, "OUTBOX_CRASH_CHILD") {
        crash::Role::Child(path) => child(Path::new(&path)),
        crash::Role::Parent => parent(),
        crash::Role::Skip => {}
    }
}

// ------------------------------------------------------------------ child

fn child(path: &Path) {
    let seed: u64 = std::env::var("OUTBOX_CRASH_CHILD_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let store = Arc::new(SqliteStore::open(path).expect("child opens the store"));
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let say = |out: &Mutex<std::io::Stdout>, line: String| {
        let mut o = out.lock().unwrap();
        writeln!(o, "{line}").unwrap();
        o.flush().unwrap();
    };
    let mut threads = Vec::new();
    for t in 0..THREADS {
        let (store, out) = (store.clone(), out.clone());
        threads.push(std::thread::spawn(move || {
            let mut rng = SplitMix64::new(seed ^ ((t as u64 + 1) * 0x9E37));
            let actors: Vec<ActorId> =
                (0..ACTORS_PER_THREAD).map(|j| ActorId::new(format!("t{t}-a{j}")).unwrap()).collect();
            let mut versions: Vec<Version> = actors
                .iter()
                .map(|a| block_on(store.current_version(a)).expect("child reads its version"))
                .collect();
            loop {
                let j = (rng.next_u64() % actors.len() as u64) as usize;
                let a = &actors[j];
                let next = versions[j].next();
                let count = 1 + rng.next_u64() % 3;
                let events: Vec<NewEvent> = (0..count)
                    .map(|n| {
                        let body = serde_json::json!({ "actor": a.as_str(), "version": next.0, "n": n, "count": count });
                        NewEvent::json(a.clone(), "CRASH", &body).unwrap()
                    })
                    .collect();
                let snapshot = format!("{}@{}", a, next.0).into_bytes();
                match block_on(store.put_state_and_events(Commit::state(a.clone(), versions[j], snapshot).events(events))) {
                    Ok(_) => {
                        versions[j] = next;
                        say(&out, format!("C {} {} {}", a, next.0, count));
                    }
                    Err(e) => panic!("child commit failed: {e}"),
                }
            }
        }));
    }
    // The forwarder.
    let grant = loop {
        if let Some(g) = block_on(store.acquire_leadership("crash-child", Duration::from_secs(3600))).unwrap()
        {
            break g;
        }
    };
    loop {
        let batch = block_on(store.claim(&grant, ClaimRequest::new(16, Duration::from_millis(500)))).unwrap();
        if batch.is_empty() {
            std::thread::yield_now();
            continue;
        }
        let ids: Vec<_> = batch.iter().map(|e| e.id).collect();
        say(&out, format!("K {}", ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(" ")));
        block_on(store.ack(&grant, &ids)).unwrap();
        say(&out, format!("A {}", ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(" ")));
    }
}

// ----------------------------------------------------------------- parent

#[derive(Default)]
struct Ledger {
    /// actor -> highest version the child reported committed.
    reported: HashMap<String, u64>,
    /// ids the child reported acked.
    acked: HashSet<String>,
    commits: u64,
}

fn parent() {
    let kills: u64 = std::env::var("OUTBOX_CRASH_KILLS").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    let seed: u64 =
        std::env::var("OUTBOX_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(7)
        });
    println!("{NAME}: {kills} kills, OUTBOX_CRASH_SEED={seed}");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("crash.db");
    let exe = std::env::current_exe().expect("current exe");
    let mut rng = SplitMix64::new(seed);
    let mut ledger = Ledger::default();
    let mut killed_before_first_line = 0;
    for k in 0..kills {
        // 1 in 8 runs is killed as soon as it starts (during open/migration).
        let wait_lines = if rng.next_u64().is_multiple_of(8) { 0 } else { rng.next_u64() % 80 };
        let mut child = Command::new(&exe)
            .env("OUTBOX_CRASH_CHILD", &path)
            .env("OUTBOX_CRASH_CHILD_SEED", rng.next_u64().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn child");
        let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
        let mut lines = Vec::new();
        while (lines.len() as u64) < wait_lines {
            match crash::complete_line(&mut reader) {
                Some(line) => lines.push(line),
                None => break,
            }
        }
        // Kill at a random moment, not right after a report line (written
        // at an operation boundary): up to 2 ms later.
        std::thread::sleep(Duration::from_micros(rng.next_u64() % 2000));
        child.kill().expect("SIGKILL the child");
        let status = child.wait().expect("wait for the child");
        // Lines the child wrote before it died were reported as done.
        lines.extend(std::iter::from_fn(|| crash::complete_line(&mut reader)));
        if status.success() || status.code().is_some() {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err);
            panic!("kill {k}: the child exited by itself ({status}) instead of being killed:\n{err}");
        }
        if lines.is_empty() {
            killed_before_first_line += 1;
        }
        for line in &lines {
            let mut parts = line.split(' ');
            match parts.next() {
                Some("C") => {
                    let actor = parts.next().expect("actor").to_owned();
                    let version: u64 = parts.next().expect("version").parse().expect("version number");
                    let e = ledger.reported.entry(actor).or_default();
                    *e = (*e).max(version);
                    ledger.commits += 1;
                }
                Some("K") => {
                    for id in parts {
                        assert!(!ledger.acked.contains(id), "kill {k}: acked event {id} was claimed again");
                    }
                }
                Some("A") => ledger.acked.extend(parts.map(str::to_owned)),
                _ => panic!("kill {k}: unexpected line {line:?}"),
            }
        }
        verify(&path, &ledger, k);
    }
    println!(
        "{NAME}: ok: {kills} kills ({killed_before_first_line} before the first report), {} reported commits, {} acked events verified",
        ledger.commits,
        ledger.acked.len()
    );
    println!("{NAME}: 1 passed, 0 failed");
}

fn verify(path: &Path, ledger: &Ledger, k: u64) {
    // Open through the store first: recovery + migration checks run.
    let store = SqliteStore::open(path).unwrap_or_else(|e| panic!("kill {k}: reopen failed: {e}"));
    for (actor, reported) in &ledger.reported {
        let a = ActorId::new(actor.clone()).unwrap();
        let v = block_on(store.current_version(&a)).unwrap();
        assert!(v.0 >= *reported, "kill {k}: {actor} is at {v}, but v{reported} was reported committed");
    }
    drop(store);
    let c = rusqlite::Connection::open(path).unwrap();
    let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok", "kill {k}: integrity check");
    let mut versions: HashMap<String, u64> = HashMap::new();
    let mut st = c.prepare("SELECT actor, version, snapshot FROM outbox_state").unwrap();
    for row in st
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, Vec<u8>>(2)?)))
        .unwrap()
    {
        let (actor, v, snapshot) = row.unwrap();
        assert_eq!(snapshot, format!("{actor}@{v}").into_bytes(), "kill {k}: snapshot matches its version");
        versions.insert(actor, v as u64);
    }
    // (actor, version) -> (events seen, count each claims)
    let mut events: HashMap<(String, u64), (u64, u64)> = HashMap::new();
    let mut statuses: HashMap<String, String> = HashMap::new();
    let mut st = c.prepare("SELECT id, payload, status FROM outbox_events").unwrap();
    for row in st
        .query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, String>(2)?)))
        .unwrap()
    {
        let (id, payload, status) = row.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        let key = (body["actor"].as_str().unwrap().to_owned(), body["version"].as_u64().unwrap());
        let e = events.entry(key).or_insert((0, body["count"].as_u64().unwrap()));
        e.0 += 1;
        let id = uuid::Uuid::from_slice(&id).unwrap().to_string();
        statuses.insert(id, status);
    }
    for ((actor, version), (seen, count)) in &events {
        let v = versions.get(actor).copied().unwrap_or(0);
        assert!(*version <= v, "kill {k}: events of {actor} v{version} exist but its state is only v{v}");
        assert_eq!(seen, count, "kill {k}: {actor} v{version} has {seen} of its {count} events");
    }
    for (actor, v) in &versions {
        for version in 1..=*v {
            assert!(
                events.contains_key(&(actor.clone(), version)),
                "kill {k}: {actor} v{version} has no events"
            );
        }
    }
    for id in &ledger.acked {
        assert_eq!(statuses.get(id).map(String::as_str), Some("delivered"), "kill {k}: acked event {id}");
    }
}
