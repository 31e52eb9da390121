//! Helpers for real-process crash tests (`harness = false` test binaries
//! that re-run themselves as a child and SIGKILL it), native only.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::executor::block_on;
use outbox_core::prelude::*;
use outbox_core::{ActorId, ClaimRequest, Commit, NewEvent, Result, SplitMix64, Version};

/// What this run of a crash-test binary is to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Role {
    /// Run as the child: the value of the child environment variable.
    Child(String),
    /// Run the test (as the parent).
    Parent,
    /// Do nothing: `--list`, or a filter that does not match `name`
    /// (already reported on stdout).
    Skip,
}

/// Decides the role from the environment variable `child_env` and the
/// arguments cargo passes: `--list` lists `name`, a name filter that does
/// not match skips (and says so).
pub fn role(name: &str, child_env: &str) -> Role {
    if let Ok(v) = std::env::var(child_env) {
        return Role::Child(v);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("{name}: test");
        return Role::Skip;
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
        println!("{name}: 0 passed, 0 failed, 1 skipped (filtered out)");
        return Role::Skip;
    }
    Role::Parent
}

/// The number in environment variable `var`, or `default`.
pub fn env_u64(var: &str, default: u64) -> u64 {
    std::env::var(var).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// The seed in `OUTBOX_CRASH_SEED`, or one from the clock (print it, so a
/// failing run can be replayed).
pub fn seed() -> u64 {
    std::env::var("OUTBOX_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(7)
    })
}

/// The next complete (newline-terminated) line, without its newline;
/// `None` at end of input or on a partial last line (a child killed
/// mid-write never reported it).
pub fn complete_line(reader: &mut impl BufRead) -> Option<String> {
    let mut buf = String::new();
    match reader.read_line(&mut buf) {
        Ok(n) if n > 0 && buf.ends_with('\n') => Some(buf.trim_end().to_owned()),
        _ => None,
    }
}

/// What a crash test reads back from a store's files, bypassing the store
/// (after checking the files' own integrity), so the harness can compare it
/// with what the child reported.
#[derive(Debug, Default)]
pub struct Dump {
    /// Every actor state: (actor, version, snapshot).
    pub states: Vec<(String, u64, Vec<u8>)>,
    /// Every stored event: (id as a UUID string, payload, delivered).
    pub events: Vec<(String, Vec<u8>, bool)>,
}

/// One embedded store under the shared SIGKILL crash test.
#[derive(Debug, Clone, Copy)]
pub struct CrashTarget {
    /// The test's name (filters and reports use it).
    pub name: &'static str,
    /// The file or directory name the store lives at, in a temp dir.
    pub file_name: &'static str,
    /// Opens the store at a path.
    pub open: fn(&Path) -> Result<Arc<dyn DurableStore>>,
    /// Reads everything back raw, after an integrity check of the files
    /// (`Err` describes a failed check).
    pub dump: fn(&Path) -> std::result::Result<Dump, String>,
}

const THREADS: usize = 4;
const ACTORS_PER_THREAD: usize = 3;

/// The shared crash test, as the `main` of a `harness = false` test: a
/// child process commits state + events from several threads and runs a
/// claim + ack forwarder while the parent SIGKILLs it at random moments,
/// over and over, on one store. After every kill the parent reopens the
/// store and checks:
///
/// - every commit the child reported as done is there, with all its
///   events; no state without its events, no events without their state;
/// - every event the child reported as acked is delivered, and no acked
///   event was ever claimed again;
/// - the files pass the target's integrity check ([`CrashTarget::dump`]).
///
/// `OUTBOX_CRASH_KILLS` sets the number of kills (default 200);
/// `OUTBOX_CRASH_SEED` replays a run.
pub fn commit_and_forward(target: CrashTarget) {
    match role(target.name, "OUTBOX_CRASH_CHILD") {
        Role::Child(path) => child(&target, Path::new(&path)),
        Role::Parent => parent(&target),
        Role::Skip => {}
    }
}

#[allow(clippy::unwrap_used)]
fn child(target: &CrashTarget, path: &Path) {
    let seed = env_u64("OUTBOX_CRASH_CHILD_SEED", 1);
    let store = (target.open)(path).expect("child opens the store");
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let say = |out: &Mutex<std::io::Stdout>, line: String| {
        let mut o = out.lock().unwrap();
        writeln!(o, "{line}").unwrap();
        o.flush().unwrap();
    };
    for t in 0..THREADS {
        let (store, out) = (store.clone(), out.clone());
        std::thread::spawn(move || {
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
                let commit = Commit::state(a.clone(), versions[j], snapshot).events(events);
                match block_on(store.put_state_and_events(commit)) {
                    Ok(_) => {
                        versions[j] = next;
                        say(&out, format!("C {} {} {}", a, next.0, count));
                    }
                    Err(e) => panic!("child commit failed: {e}"),
                }
            }
        });
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

#[derive(Default)]
struct Ledger {
    /// actor -> highest version the child reported committed.
    reported: HashMap<String, u64>,
    /// ids the child reported acked.
    acked: HashSet<String>,
    commits: u64,
}

fn parent(target: &CrashTarget) {
    let name = target.name;
    let kills = env_u64("OUTBOX_CRASH_KILLS", 200);
    let seed = seed();
    println!("{name}: {kills} kills, OUTBOX_CRASH_SEED={seed}");
    let dir = tempfile_dir();
    let path = dir.join(target.file_name);
    let exe = std::env::current_exe().expect("current exe");
    let mut rng = SplitMix64::new(seed);
    let mut ledger = Ledger::default();
    let mut killed_before_first_line = 0;
    for k in 0..kills {
        // 1 in 8 runs is killed as soon as it starts (during open/recovery).
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
            match complete_line(&mut reader) {
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
        lines.extend(std::iter::from_fn(|| complete_line(&mut reader)));
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
        verify(target, &path, &ledger, k);
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{name}: ok: {kills} kills ({killed_before_first_line} before the first report), {} reported commits, {} acked events verified",
        ledger.commits,
        ledger.acked.len()
    );
    println!("{name}: 1 passed, 0 failed");
}

/// A fresh directory under the system temp dir (removed at the end of a
/// passing run; kept for inspection when the test fails).
fn tempfile_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("outbox-crash-{}-{}", std::process::id(), seed()));
    std::fs::create_dir_all(&d).expect("create the crash test dir");
    d
}

fn verify(target: &CrashTarget, path: &Path, ledger: &Ledger, k: u64) {
    // Open through the store first: recovery and layout checks run.
    let store = (target.open)(path).unwrap_or_else(|e| panic!("kill {k}: reopen failed: {e}"));
    for (actor, reported) in &ledger.reported {
        let a = ActorId::new(actor.clone()).expect("actor id");
        let v = block_on(store.current_version(&a)).expect("read version");
        assert!(v.0 >= *reported, "kill {k}: {actor} is at {v}, but v{reported} was reported committed");
    }
    drop(store);
    let dump = (target.dump)(path).unwrap_or_else(|e| panic!("kill {k}: integrity check: {e}"));
    let mut versions: HashMap<String, u64> = HashMap::new();
    for (actor, v, snapshot) in dump.states {
        assert_eq!(snapshot, format!("{actor}@{v}").into_bytes(), "kill {k}: snapshot matches its version");
        versions.insert(actor, v);
    }
    // (actor, version) -> (events seen, count each claims)
    let mut events: HashMap<(String, u64), (u64, u64)> = HashMap::new();
    let mut delivered: HashMap<String, bool> = HashMap::new();
    for (id, payload, done) in dump.events {
        let body: serde_json::Value = serde_json::from_slice(&payload).expect("payload is JSON");
        let key =
            (body["actor"].as_str().expect("actor").to_owned(), body["version"].as_u64().expect("version"));
        let e = events.entry(key).or_insert((0, body["count"].as_u64().expect("count")));
        e.0 += 1;
        delivered.insert(id, done);
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
        assert_eq!(delivered.get(id), Some(&true), "kill {k}: acked event {id} is not delivered");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_lines_are_not_reports() {
        let mut r = std::io::Cursor::new(b"C a 1 2\nA x y\npartial".to_vec());
        assert_eq!(complete_line(&mut r).as_deref(), Some("C a 1 2"));
        assert_eq!(complete_line(&mut r).as_deref(), Some("A x y"));
        assert_eq!(complete_line(&mut r), None);
        assert_eq!(complete_line(&mut r), None);
    }
}
