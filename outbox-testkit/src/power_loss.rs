//! Power-loss testing, ALICE-style ("All File Systems Are Not Created
//! Equal", OSDI '14), native Linux only.
//!
//! [`run`] re-runs the calling test as a child process under `strace`,
//! which records every file operation the store makes while it commits and
//! acks (a fixed, deterministic workload: [`COMMITS`] commits on three
//! keys, acks in between, a close and reopen, one group commit). The child
//! notes each call that returned `Ok` in a marks file (outside the store's
//! directory); those notes are in the trace too, so every point of the
//! trace knows what had been acknowledged by then.
//!
//! From the trace the harness builds the crash states a power loss could
//! leave, under this model of the file system:
//!
//! - A file's data operations (writes, truncates) are durable once an
//!   `fsync`/`fdatasync` of that file completed after them; later ones may
//!   each be lost, in any combination. `sync_file_range` is not a
//!   durability point (it writes no metadata, such as a file's new size,
//!   and flushes no disk cache: sync_file_range(2)), nor is anything but
//!   `fsync`, `fdatasync`, `sync` and `syncfs`.
//! - Namespace operations (create, mkdir, rename, unlink) are durable once
//!   an `fsync` of their directory completed after them (or, for a file
//!   created or renamed into place, an `fsync` of the file itself, as Linux
//!   journaling file systems give); they persist in order (metadata
//!   journaling), so the unsynced ones survive as a prefix.
//! - A write longer than a sector (512 bytes) may be torn at a sector
//!   boundary; an unsynced write may reach the disk as zeros (its size
//!   did, its data did not).
//! - A write still in progress at the crash point counts as not issued.
//! - Writes through a shared `mmap` are not recorded: only SQLite's `-shm`
//!   index may be mapped (the first connection after a crash rebuilds it
//!   from the WAL), any other mapping fails the test as unmodelled, as do
//!   `writev`-style calls, `dup`s and links on the store's files.
//!
//! At each point of the trace (before each file operation, and at the
//! end) it generates: only the durable state; everything issued; every
//! prefix of each file's unsynced operations (with the other files'
//! unsynced operations all kept, or all lost: reordering across files);
//! every unsynced operation left out alone, the later ones kept
//! (reordering within a file); every unsynced write as zeros; each
//! unsynced write longer than a sector torn (only its first sector, or all
//! but its first); every prefix of the unsynced namespace operations.
//! Identical states are checked once, with the most acknowledgements any
//! point producing them had.
//!
//! Each state is written to a fresh directory, opened with the real store,
//! and checked: it opens without error (every state is one a file system
//! can produce, so any error, `Corrupted` included, fails); every
//! acknowledged commit is there (state version at least the acknowledged
//! one, snapshot matching its version, every event of every version up to
//! it present: nothing half-applied); every acknowledged ack is delivered;
//! and a drain under a new leader claims every other event exactly once,
//! each key's events in commit order, up to the key's last committed
//! event.
//!
//! `OUTBOX_POWER_LOSS_STATES` sets how many distinct states are checked
//! (default [`DEFAULT_STATES`]; `all` or `0` checks every one): an equal
//! share of each kind, chosen by a shuffle seeded with
//! `OUTBOX_POWER_LOSS_SEED` (default fixed). A failing state's directory
//! is kept and its path printed; `OUTBOX_POWER_LOSS_VERBOSE` prints the
//! trace and every failure. Needs `strace` (Debian package `strace`).

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::executor::block_on;
use outbox_core::prelude::*;
use outbox_core::{ActorId, ClaimRequest, Commit, NewEvent, OrderingKey, Result, SplitMix64, Version};

/// Commits the workload makes.
pub const COMMITS: u64 = 27;

/// Distinct crash states checked when `OUTBOX_POWER_LOSS_STATES` is unset.
pub const DEFAULT_STATES: usize = 1000;

/// The keys (actors) the workload commits on.
const KEYS: usize = 3;

/// Sector size for torn writes.
const SECTOR: u64 = 512;

/// How long the traced child may take.
const CHILD_TIMEOUT: Duration = Duration::from_secs(300);

const CHILD_ENV: &str = "OUTBOX_POWER_LOSS_CHILD";
const MARKS_ENV: &str = "OUTBOX_POWER_LOSS_MARKS";

/// One store under the power-loss test.
#[derive(Debug, Clone, Copy)]
pub struct PowerLossTarget {
    /// The name of the `#[test]` function calling [`run`]: the child is
    /// that test run again (`--exact`).
    pub test_name: &'static str,
    /// The file or directory name the store lives at, in a directory that
    /// starts empty.
    pub file_name: &'static str,
    /// Opens the store at a path (creating it if missing).
    pub open: fn(&Path) -> Result<Arc<dyn DurableStore>>,
}

/// The power-loss test, called from the `#[test]` named
/// [`PowerLossTarget::test_name`]: as the child (under `strace`) it runs
/// the workload; as the parent it traces the child, builds the crash
/// states and checks them (see the module docs). Panics with every failed
/// state's description.
pub fn run(target: PowerLossTarget) {
    if let Ok(root) = std::env::var(CHILD_ENV) {
        let marks = std::env::var(MARKS_ENV).expect("the marks file's path");
        workload(&target, Path::new(&root), Path::new(&marks));
        return;
    }
    let name = target.test_name;
    let work = tempfile::tempdir().expect("a temp dir");
    let base = work.path().canonicalize().expect("canonical temp dir");
    let root = base.join("store");
    std::fs::create_dir(&root).expect("create the store dir");
    let marks = base.join("marks");
    let trace_path = base.join("trace");
    let started = Instant::now();
    trace_child(&root, &marks, &trace_path, name);
    let text = std::fs::read_to_string(&trace_path).expect("read the trace");
    let trace = Trace::parse(&text, &root, &marks).unwrap_or_else(|e| {
        let keep = std::env::temp_dir().join(format!("outbox-power-loss-{}.trace", std::process::id()));
        let _ = std::fs::copy(&trace_path, &keep);
        panic!("{name}: trace (kept at {keep:?}): {e}")
    });
    drop(text);
    let last = trace.acks_at(trace.events.len());
    assert_eq!(
        last.committed.iter().sum::<u64>(),
        COMMITS,
        "{name}: the trace shows every commit of the workload acknowledged"
    );
    let traced = started.elapsed();
    let verbose = std::env::var_os("OUTBOX_POWER_LOSS_VERBOSE").is_some();
    if verbose {
        for (g, _) in trace.events.iter().enumerate() {
            println!("{g:5} {}", trace.describe_event(g));
        }
    }
    let states = trace.crash_states();
    let budget = match std::env::var("OUTBOX_POWER_LOSS_STATES").ok().as_deref() {
        Some("all") | Some("0") => usize::MAX,
        Some(n) => n.parse().unwrap_or(DEFAULT_STATES),
        None => DEFAULT_STATES,
    };
    let seed = std::env::var("OUTBOX_POWER_LOSS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(22);
    let chosen = sample(&states, budget, seed);
    let checks = tempfile::tempdir().expect("a temp dir for the crash states");
    let mut failures = Vec::new();
    let mut kept_dir = None;
    let mut classes: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_kind: BTreeMap<&'static str, usize> = BTreeMap::new();
    for (i, state) in chosen.iter().enumerate() {
        *by_kind.entry(state.spec.kind()).or_default() += 1;
        let dir = checks.path().join(format!("s{i}"));
        trace.materialize(&state.spec, state.point, &dir);
        let acks = trace.acks_at(state.point);
        if let Err(e) = check(&target, &dir, &acks) {
            if kept_dir.is_none() {
                let keep = std::env::temp_dir().join(format!("outbox-power-loss-{}-{i}", std::process::id()));
                let _ = std::fs::remove_dir_all(&keep);
                if copy_dir(&dir, &keep).is_ok() {
                    kept_dir = Some(keep);
                }
            }
            if verbose {
                println!(
                    "FAILED state {i}: {} at point {}: {e}",
                    state.spec.describe(&trace, state.point),
                    state.point
                );
            }
            let class = e.split([':', '(']).next().unwrap_or("").trim().to_owned();
            *classes.entry(class.clone()).or_default() += 1;
            failures.push((
                class,
                format!(
                    "{} at trace point {} of {} ({}; acknowledged: {}): {e}",
                    state.spec.describe(&trace, state.point),
                    state.point,
                    trace.events.len(),
                    trace.point_context(state.point),
                    acks
                ),
            ));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    let kinds: Vec<String> = by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!(
        "{name}: trace of {} file operations ({} syncs, {} of them of a directory; {} sync_file_range, not durability points), {} crash points, {} distinct crash states, {} checked ({}), traced in {:.1?}, checked in {:.1?}",
        trace.events.iter().filter(|e| !matches!(e, Ev::Mark(_))).count(),
        trace.events.iter().filter(|e| matches!(e, Ev::Sync(_))).count(),
        trace.events.iter().filter(|e| matches!(e, Ev::Sync(Node::Dir(_)))).count(),
        trace.range_syncs,
        trace.crash_points().len(),
        states.len(),
        chosen.len(),
        kinds.join(", "),
        traced,
        started.elapsed() - traced,
    );
    if !failures.is_empty() {
        // The first few of each kind of failure.
        let mut shown: Vec<&String> = Vec::new();
        for class in classes.keys() {
            shown.extend(failures.iter().filter(|(c, _)| c == class).take(4).map(|(_, f)| f));
        }
        let classes: Vec<String> = classes.iter().map(|(c, n)| format!("{c}: {n}")).collect();
        panic!(
            "{name}: {} of {} crash states lost acknowledged work or failed to open ({}; first state kept at {:?}):\n{}",
            failures.len(),
            chosen.len(),
            classes.join(", "),
            kept_dir,
            shown.iter().map(|s| format!("- {s}")).collect::<Vec<_>>().join("\n")
        );
    }
}

/// Runs the test binary again as the child, under `strace`.
fn trace_child(root: &Path, marks: &Path, trace: &Path, name: &str) {
    match Command::new("strace").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(s) if s.success() => {}
        _ => panic!("{name}: needs strace (Debian package `strace`: apt-get install strace)"),
    }
    let exe = std::env::current_exe().expect("the test binary");
    let mut child = Command::new("strace")
        .args(["-f", "-qq", "-e", "signal=none", "-xx", "-y", "-s", "33554432", "-o"])
        .arg(trace)
        .args(["-e", &format!("trace={}", TRACED.join(","))])
        .arg("--")
        .arg(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1", "--include-ignored"])
        .env(CHILD_ENV, root)
        .env(MARKS_ENV, marks)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn strace");
    let stderr = child.stderr.take().expect("the child's stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(&mut { stderr }, &mut err);
        let _ = tx.send(err);
    });
    // The reader ends when the child (and strace) close stderr: at exit.
    let err = match rx.recv_timeout(CHILD_TIMEOUT) {
        Ok(err) => err,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name}: the traced workload did not finish within {CHILD_TIMEOUT:?}");
        }
    };
    let status = child.wait().expect("wait for strace");
    assert!(status.success(), "{name}: the traced workload failed ({status}):\n{err}");
}

/// The system calls traced: every one that can change a file, and the ones
/// needed to follow descriptors. Unmodelled ones on the store's files fail
/// the parse rather than pass unseen.
const TRACED: &[&str] = &[
    "open",
    "openat",
    "creat",
    "close",
    "write",
    "pwrite64",
    "writev",
    "pwritev",
    "pwritev2",
    "lseek",
    "ftruncate",
    "truncate",
    "fallocate",
    "fsync",
    "fdatasync",
    "sync_file_range",
    "sync",
    "syncfs",
    "rename",
    "renameat",
    "renameat2",
    "unlink",
    "unlinkat",
    "mkdir",
    "mkdirat",
    "rmdir",
    "link",
    "linkat",
    "symlink",
    "symlinkat",
    "dup",
    "dup2",
    "dup3",
    "mmap",
    "copy_file_range",
    "sendfile",
];

// ---------------------------------------------------------------------------
// The workload (the child).

fn actor(j: usize) -> ActorId {
    ActorId::new(format!("pl-a{j}")).expect("a valid actor id")
}

/// Events the commit of version `v` of key `j` carries.
fn count(j: usize, v: u64) -> u64 {
    1 + (j as u64 + v) % 3
}

fn snapshot(j: usize, v: u64) -> Vec<u8> {
    format!("pl-a{j}@{v}").into_bytes()
}

fn commit_for(j: usize, v: u64) -> Commit {
    let events: Vec<NewEvent> = (0..count(j, v))
        .map(|n| {
            let body = serde_json::json!({ "j": j, "v": v, "n": n });
            NewEvent::json(actor(j), "POWER", &body).expect("a JSON event")
        })
        .collect();
    Commit::state(actor(j), Version(v - 1), snapshot(j, v)).events(events)
}

/// (key, version, index in its commit) of an event the workload made.
type EventRef = (usize, u64, u64);

fn event_ref(e: &outbox_core::Envelope) -> std::result::Result<EventRef, String> {
    let body: serde_json::Value =
        serde_json::from_slice(e.payload.as_bytes()).map_err(|x| format!("payload is not JSON: {x}"))?;
    match (body["j"].as_u64(), body["v"].as_u64(), body["n"].as_u64()) {
        (Some(j), Some(v), Some(n)) if (j as usize) < KEYS => Ok((j as usize, v, n)),
        _ => Err(format!("unexpected payload {body}")),
    }
}

struct Marks(std::fs::File);

impl Marks {
    /// One line, in one `write` (the trace sees it whole).
    fn note(&mut self, line: String) {
        self.0.write_all(format!("{line}\n").as_bytes()).expect("write a mark");
    }
}

/// The child: commits and acks, noting each call that returned `Ok`.
fn workload(target: &PowerLossTarget, root: &Path, marks: &Path) {
    let path = root.join(target.file_name);
    let mut marks = Marks(
        std::fs::OpenOptions::new().create(true).append(true).open(marks).expect("open the marks file"),
    );
    let mut versions = [0u64; KEYS];
    let mut made = 0u64;
    for session in 0..2 {
        let store = (target.open)(&path).expect("the child opens the store");
        let grant = block_on(store.acquire_leadership("power-loss-child", Duration::from_secs(3600)))
            .expect("acquire leadership")
            .expect("the child leads");
        let until = if session == 0 { 15 } else { COMMITS - 3 };
        while made < until {
            let j = (made % KEYS as u64) as usize;
            let v = versions[j] + 1;
            block_on(store.put_state_and_events(commit_for(j, v))).expect("the child commits");
            versions[j] = v;
            made += 1;
            marks.note(format!("C {j} {v}"));
            if made.is_multiple_of(6) {
                ack_round(&*store, &grant, &mut marks);
            }
        }
        if session == 1 {
            // A group commit: three commits in flight at once.
            let commits: Vec<_> = (0..KEYS)
                .map(|j| {
                    versions[j] += 1;
                    (j, versions[j])
                })
                .collect();
            let results = block_on(futures::future::join_all(
                commits.iter().map(|&(j, v)| store.put_state_and_events(commit_for(j, v))),
            ));
            for (&(j, v), r) in commits.iter().zip(results) {
                r.expect("the child's group commit");
                made += 1;
                marks.note(format!("C {j} {v}"));
            }
            ack_round(&*store, &grant, &mut marks);
        }
        // Closing checkpoints (SQLite) or flushes (sled); reopening
        // recovers.
        drop(store);
    }
}

fn ack_round(store: &dyn DurableStore, grant: &outbox_core::LeaderGrant, marks: &mut Marks) {
    let batch = block_on(store.claim(grant, ClaimRequest::new(5, Duration::from_secs(600)))).expect("claim");
    if batch.is_empty() {
        return;
    }
    let ids: Vec<_> = batch.iter().map(|e| e.id).collect();
    block_on(store.ack(grant, &ids)).expect("ack");
    let refs: Vec<String> = batch
        .iter()
        .map(|e| {
            let (j, v, n) = event_ref(e).expect("the workload's event");
            format!("{j}:{v}:{n}")
        })
        .collect();
    marks.note(format!("A {}", refs.join(" ")));
}

// ---------------------------------------------------------------------------
// Checking one crash state.

/// What had been acknowledged at a point of the trace.
#[derive(Debug, Default, Clone)]
struct Acks {
    /// Per key, the highest version whose commit returned `Ok`.
    committed: [u64; KEYS],
    /// Events whose ack returned `Ok`.
    acked: HashSet<EventRef>,
}

impl fmt::Display for Acks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "versions {:?}, {} acked events", self.committed, self.acked.len())
    }
}

fn successor(j: usize, (v, n): (u64, u64)) -> (u64, u64) {
    if n + 1 < count(j, v) { (v, n + 1) } else { (v + 1, 0) }
}

/// Opens the store in `dir` and checks it against `acks`.
fn check(target: &PowerLossTarget, dir: &Path, acks: &Acks) -> std::result::Result<(), String> {
    let path = dir.join(target.file_name);
    let store = (target.open)(&path).map_err(|e| format!("open failed ({:?}): {e}", e.kind()))?;
    let store = &*store;
    let err = |what: &str, e: outbox_core::Error| format!("{what} failed ({:?}): {e}", e.kind());
    let mut found = [0u64; KEYS];
    let mut expected_events = 0;
    for (j, found) in found.iter_mut().enumerate() {
        let snap = block_on(store.load_state(&actor(j))).map_err(|e| err("load_state", e))?;
        if let Some(s) = snap {
            if s.bytes != snapshot(j, s.version.0) {
                return Err(format!("key {j}: the snapshot does not match its version {}", s.version.0));
            }
            *found = s.version.0;
        }
        if *found < acks.committed[j] {
            return Err(format!(
                "LOST: key {j} is at version {found}, but version {} was acknowledged",
                acks.committed[j]
            ));
        }
        expected_events += (1..=*found).map(|v| count(j, v)).sum::<u64>();
    }
    let stats = block_on(store.stats()).map_err(|e| err("stats", e))?;
    if stats.pending + stats.delivered != expected_events || stats.dead != 0 {
        return Err(format!(
            "the states (versions {found:?}) carry {expected_events} events, but the store counts {} pending, {} delivered, {} dead",
            stats.pending, stats.delivered, stats.dead
        ));
    }
    let grant = block_on(store.acquire_leadership("power-loss-check", Duration::from_secs(3600)))
        .map_err(|e| err("acquire_leadership", e))?
        .ok_or("no leadership for the check")?;
    // Drain: every pending event once, each key in commit order, to its end.
    let mut first: [Option<(u64, u64)>; KEYS] = [None; KEYS];
    let mut last: [Option<(u64, u64)>; KEYS] = [None; KEYS];
    let mut drained = 0u64;
    let mut rounds = 0;
    loop {
        rounds += 1;
        if rounds > 1000 {
            return Err("the drain does not end".into());
        }
        let batch = block_on(store.claim(&grant, ClaimRequest::new(64, Duration::from_secs(600))))
            .map_err(|e| err("claim", e))?;
        if batch.is_empty() {
            break;
        }
        for e in &batch {
            let (j, v, n) = event_ref(e)?;
            if e.key != OrderingKey::from(&actor(j)) {
                return Err(format!("event {j}:{v}:{n} has key {:?}", e.key));
            }
            if acks.acked.contains(&(j, v, n)) {
                return Err(format!("LOST ACK: event {j}:{v}:{n} was acked, but is claimed again"));
            }
            match last[j] {
                Some(prev) if successor(j, prev) != (v, n) => {
                    return Err(format!("ORDER: key {j}: event {v}:{n} claimed after {}:{}", prev.0, prev.1));
                }
                Some(_) => {}
                None => first[j] = Some((v, n)),
            }
            last[j] = Some((v, n));
            drained += 1;
        }
        let ids: Vec<_> = batch.iter().map(|e| e.id).collect();
        block_on(store.ack(&grant, &ids)).map_err(|e| err("ack", e))?;
    }
    for j in 0..KEYS {
        if let Some((v, n)) = last[j]
            && (v, n + 1) != (found[j], count(j, found[j]))
        {
            return Err(format!(
                "key {j}: the drain stopped at {v}:{n}, before the end of version {}",
                found[j]
            ));
        }
        if let Some(f) = first[j] {
            for &(aj, av, an) in &acks.acked {
                if aj == j && (av, an) >= f {
                    return Err(format!("LOST ACK: event {aj}:{av}:{an} acked but not delivered"));
                }
            }
        }
    }
    if drained != stats.pending {
        return Err(format!("{} events pending, {drained} drained", stats.pending));
    }
    let after = block_on(store.stats()).map_err(|e| err("stats", e))?;
    if after.pending != 0 || after.delivered != expected_events {
        return Err(format!("after the drain: {after:?}, {expected_events} events expected delivered"));
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), dest)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The trace.

/// A file (inode) or a directory (by path, relative to the store's root).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Node {
    File(usize),
    Dir(String),
}

#[derive(Debug, Clone)]
enum Ns {
    /// `path` is a new file, `inode`.
    Create {
        path: String,
        inode: usize,
    },
    Mkdir {
        path: String,
    },
    /// `inode` is the file moved (if it is one).
    Rename {
        from: String,
        to: String,
        inode: Option<usize>,
    },
    Remove {
        path: String,
    },
}

impl Ns {
    /// The directories whose `fsync` makes this operation durable.
    fn dirs(&self) -> Vec<String> {
        match self {
            Ns::Create { path, .. } | Ns::Mkdir { path } | Ns::Remove { path } => vec![parent(path)],
            Ns::Rename { from, to, .. } => vec![parent(from), parent(to)],
        }
    }

    /// The file whose own `fsync` also makes it durable.
    fn inode(&self) -> Option<usize> {
        match self {
            Ns::Create { inode, .. } => Some(*inode),
            Ns::Rename { inode, .. } => *inode,
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
enum Data {
    /// Bytes `data` (a range of the trace's arena) at `off`.
    Write { off: u64, start: usize, len: usize },
    /// Sets the length.
    Truncate(u64),
    /// Grows to at least this length (`fallocate`).
    Extend(u64),
}

#[derive(Debug, Clone)]
enum Mark {
    Committed(usize, u64),
    Acked(Vec<EventRef>),
}

#[derive(Debug, Clone)]
enum Ev {
    Ns(Ns),
    Data(usize, Data),
    Sync(Node),
    SyncAll,
    Mark(Mark),
}

fn parent(path: &str) -> String {
    match path.rfind('/') {
        Some(i) => path[..i].to_owned(),
        None => String::new(),
    }
}

/// The store's file operations and the child's marks, in order.
#[derive(Debug, Default)]
struct Trace {
    events: Vec<Ev>,
    arena: Vec<u8>,
    inodes: usize,
    /// `sync_file_range` calls on the store's files (no durability).
    range_syncs: usize,
}

#[derive(Debug, Clone)]
enum Entry {
    File(usize),
    Dir,
}

#[derive(Debug, Clone)]
struct Fd {
    node: Node,
    offset: u64,
    append: bool,
    marks: bool,
}

/// The parser's view of the live file system while it reads the trace.
#[derive(Default)]
struct Live {
    names: BTreeMap<String, Entry>,
    sizes: Vec<u64>,
    fds: HashMap<i64, Fd>,
}

fn unhex(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len() / 4);
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1] == b'x'
            && let Ok(v) = u8::from_str_radix(&s[i + 2..i + 4], 16)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Where a completed call's argument list ends (its `)`) and its ` = `
/// starts.
fn result_split(call: &str) -> Option<(usize, usize)> {
    let mut end = call.len();
    while let Some(eq) = call[..end].rfind(" = ") {
        let before = call[..eq].trim_end();
        if before.ends_with(')') {
            return Some((before.len() - 1, eq));
        }
        end = eq;
    }
    None
}

/// Splits a syscall's argument list at its top-level commas.
fn split_args(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut quoted, mut start) = (0i32, false, 0);
    let b = s.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'"' => quoted = !quoted,
            b'<' | b'[' | b'{' | b'(' if !quoted => depth += 1,
            b'>' | b']' | b'}' | b')' if !quoted => depth -= 1,
            b',' if !quoted && depth == 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < s.len() {
        out.push(s[start..].trim());
    }
    out
}

/// `3</path>` or `AT_FDCWD</cwd>`: the number (`AT_FDCWD` is -100) and
/// the decoded path, if shown.
fn fd_arg(s: &str) -> std::result::Result<(i64, Option<String>), String> {
    let (num, path) = match s.find('<') {
        Some(i) => (&s[..i], Some(&s[i + 1..s.len() - 1])),
        None => (s, None),
    };
    let fd =
        if num == "AT_FDCWD" { -100 } else { num.parse().map_err(|_| format!("not a descriptor: {s}"))? };
    let path = path.map(|p| {
        let p = p.strip_suffix(" (deleted)").unwrap_or(p);
        String::from_utf8_lossy(&unhex(p)).into_owned()
    });
    Ok((fd, path))
}

fn str_arg(s: &str) -> std::result::Result<Vec<u8>, String> {
    if s.len() < 2 || !s.starts_with('"') || !s.ends_with('"') {
        return Err(format!("a string argument was cut short (raise strace -s): {:.80}", s));
    }
    Ok(unhex(&s[1..s.len() - 1]))
}

fn int_arg(s: &str) -> std::result::Result<i64, String> {
    s.parse().map_err(|_| format!("not a number: {s}"))
}

impl Trace {
    /// Reads an `strace -f -xx -y` log: the operations on files under
    /// `root` and the lines written to `marks`.
    fn parse(text: &str, root: &Path, marks: &Path) -> std::result::Result<Trace, String> {
        let root = root.to_string_lossy().into_owned();
        let marks = marks.to_string_lossy().into_owned();
        let mut t = Trace::default();
        let mut live = Live::default();
        let mut unfinished: HashMap<String, (usize, String)> = HashMap::new();
        // (order, event): marks are ordered by when their write started,
        // file operations by when they completed.
        let mut ordered: Vec<(usize, Ev)> = Vec::new();
        for (lineno, line) in text.lines().enumerate() {
            let (pid, rest) = match line.split_once(' ') {
                Some((p, r)) if p.chars().all(|c| c.is_ascii_digit()) => (p.to_owned(), r.trim_start()),
                _ => (String::new(), line),
            };
            if rest.starts_with("+++") || rest.starts_with("---") {
                continue;
            }
            let (started, call) = if let Some(head) = rest.strip_suffix(" <unfinished ...>") {
                unfinished.insert(pid, (lineno, head.to_owned()));
                continue;
            } else if rest.starts_with("<... ") {
                let (start, head) = unfinished
                    .remove(&pid)
                    .ok_or_else(|| format!("line {lineno}: resumed without a start"))?;
                let tail = rest.split_once("resumed>").map(|x| x.1).unwrap_or("");
                (start, format!("{head}{tail}"))
            } else {
                (lineno, rest.to_owned())
            };
            let evs = t
                .syscall(&call, &mut live, &root, &marks)
                .map_err(|e| format!("line {lineno}: {e}: {:.200}", call))?;
            for ev in evs {
                let order = if matches!(ev, Ev::Mark(_)) { started } else { lineno };
                ordered.push((order, ev));
            }
        }
        ordered.sort_by_key(|(order, _)| *order);
        t.events = ordered.into_iter().map(|(_, ev)| ev).collect();
        Ok(t)
    }

    /// The store-relative path of `path`, if it is under `root`.
    fn rel(root: &str, path: &str) -> Option<String> {
        if path == root {
            Some(String::new())
        } else {
            path.strip_prefix(root).and_then(|r| r.strip_prefix('/')).map(str::to_owned)
        }
    }

    fn resolve(dirfd: &str, path: &[u8]) -> std::result::Result<String, String> {
        let path = String::from_utf8_lossy(path).into_owned();
        if path.starts_with('/') {
            return Ok(path);
        }
        let (_, base) = fd_arg(dirfd)?;
        let base = base.ok_or_else(|| format!("no path for {dirfd}"))?;
        let path = path.trim_start_matches("./");
        Ok(format!("{base}/{path}"))
    }

    fn new_inode(&mut self, live: &mut Live) -> usize {
        self.inodes += 1;
        live.sizes.push(0);
        self.inodes - 1
    }

    fn syscall(
        &mut self,
        call: &str,
        live: &mut Live,
        root: &str,
        marks: &str,
    ) -> std::result::Result<Vec<Ev>, String> {
        let open = call.find('(').ok_or("no call")?;
        let name = &call[..open];
        // `args) = result`, with spaces before `=` when strace aligns it.
        let (close, eq) = result_split(call).ok_or("no result")?;
        let args = split_args(&call[open + 1..close]);
        let result = call[eq + 3..].trim();
        let ret: i64 = match result.split(['<', ' ']).next().and_then(|r| r.parse().ok()) {
            Some(r) => r,
            None => return Ok(vec![]),
        };
        if ret < 0 && !matches!(name, "lseek") {
            return Ok(vec![]);
        }
        let fd_of = |i: usize| -> std::result::Result<i64, String> {
            fd_arg(args.get(i).ok_or("missing argument")?).map(|x| x.0)
        };
        let mut evs = Vec::new();
        match name {
            "open" | "openat" | "creat" => {
                let (path, flags) = match name {
                    "openat" => (Self::resolve(args[0], &str_arg(args[1])?)?, args[2]),
                    "open" => (Self::resolve("AT_FDCWD", &str_arg(args[0])?)?, args[1]),
                    _ => (Self::resolve("AT_FDCWD", &str_arg(args[0])?)?, "O_CREAT|O_TRUNC"),
                };
                live.fds.remove(&ret);
                if path == marks {
                    live.fds.insert(
                        ret,
                        Fd { node: Node::Dir(String::new()), offset: 0, append: true, marks: true },
                    );
                    return Ok(evs);
                }
                let Some(rel) = Self::rel(root, &path) else { return Ok(evs) };
                let node = match live.names.get(&rel).cloned() {
                    _ if rel.is_empty() => Node::Dir(rel.clone()),
                    Some(Entry::Dir) => Node::Dir(rel.clone()),
                    Some(Entry::File(i)) => {
                        if flags.contains("O_TRUNC") && live.sizes[i] != 0 {
                            live.sizes[i] = 0;
                            evs.push(Ev::Data(i, Data::Truncate(0)));
                        }
                        Node::File(i)
                    }
                    None => {
                        if !flags.contains("O_CREAT") {
                            return Err(format!("opened {rel}, which the trace never created"));
                        }
                        let i = self.new_inode(live);
                        live.names.insert(rel.clone(), Entry::File(i));
                        evs.push(Ev::Ns(Ns::Create { path: rel.clone(), inode: i }));
                        Node::File(i)
                    }
                };
                let append = flags.contains("O_APPEND");
                live.fds.insert(ret, Fd { node, offset: 0, append, marks: false });
            }
            "close" => {
                live.fds.remove(&fd_of(0)?);
            }
            "write" | "pwrite64" => {
                let fd = fd_of(0)?;
                let Some(f) = live.fds.get_mut(&fd) else { return Ok(evs) };
                let data = str_arg(args[1])?;
                let n = (ret as usize).min(data.len());
                if f.marks {
                    for line in String::from_utf8_lossy(&data[..n]).lines() {
                        evs.push(Ev::Mark(parse_mark(line)?));
                    }
                    return Ok(evs);
                }
                let Node::File(i) = f.node else { return Err("a write to a directory".into()) };
                let off = if name == "pwrite64" {
                    int_arg(args[3])? as u64
                } else if f.append {
                    live.sizes[i]
                } else {
                    f.offset
                };
                if name == "write" {
                    f.offset = off + n as u64;
                }
                let start = self.arena.len();
                self.arena.extend_from_slice(&data[..n]);
                live.sizes[i] = live.sizes[i].max(off + n as u64);
                evs.push(Ev::Data(i, Data::Write { off, start, len: n }));
            }
            "lseek" => {
                let fd = fd_of(0)?;
                if let Some(f) = live.fds.get_mut(&fd)
                    && ret >= 0
                {
                    f.offset = ret as u64;
                }
            }
            "ftruncate" => {
                if let Some(Fd { node: Node::File(i), .. }) = live.fds.get(&fd_of(0)?) {
                    let len = int_arg(args[1])? as u64;
                    live.sizes[*i] = len;
                    evs.push(Ev::Data(*i, Data::Truncate(len)));
                }
            }
            "truncate" => {
                let path = Self::resolve("AT_FDCWD", &str_arg(args[0])?)?;
                if let Some(rel) = Self::rel(root, &path) {
                    let Some(Entry::File(i)) = live.names.get(&rel).cloned() else {
                        return Err(format!("truncate of unknown {rel}"));
                    };
                    let len = int_arg(args[1])? as u64;
                    live.sizes[i] = len;
                    evs.push(Ev::Data(i, Data::Truncate(len)));
                }
            }
            "fallocate" => {
                if let Some(Fd { node: Node::File(i), .. }) = live.fds.get(&fd_of(0)?) {
                    if args[1] != "0" {
                        return Err(format!("fallocate mode {} is not modelled", args[1]));
                    }
                    let end = (int_arg(args[2])? + int_arg(args[3])?) as u64;
                    live.sizes[*i] = live.sizes[*i].max(end);
                    evs.push(Ev::Data(*i, Data::Extend(end)));
                }
            }
            "fsync" | "fdatasync" => {
                if let Some(f) = live.fds.get(&fd_of(0)?)
                    && !f.marks
                {
                    evs.push(Ev::Sync(f.node.clone()));
                }
            }
            "sync" => evs.push(Ev::SyncAll),
            "syncfs" if live.fds.get(&fd_of(0)?).is_some_and(|f| !f.marks) => evs.push(Ev::SyncAll),
            // Not a durability point: it writes no metadata (a file's
            // size, its blocks' allocation) and flushes no disk cache
            // (sync_file_range(2)). Counted, to be reported.
            "sync_file_range" if live.fds.get(&fd_of(0)?).is_some_and(|f| !f.marks) => {
                self.range_syncs += 1;
            }
            "rename" | "renameat" | "renameat2" => {
                let (from, to) = if name == "rename" {
                    (
                        Self::resolve("AT_FDCWD", &str_arg(args[0])?)?,
                        Self::resolve("AT_FDCWD", &str_arg(args[1])?)?,
                    )
                } else {
                    (Self::resolve(args[0], &str_arg(args[1])?)?, Self::resolve(args[2], &str_arg(args[3])?)?)
                };
                match (Self::rel(root, &from), Self::rel(root, &to)) {
                    (Some(from), Some(to)) => {
                        let inode = match live.names.get(&from) {
                            Some(Entry::File(i)) => Some(*i),
                            _ => None,
                        };
                        rename_in(&mut live.names, &from, &to);
                        evs.push(Ev::Ns(Ns::Rename { from, to, inode }));
                    }
                    (None, None) => {}
                    _ => return Err("a rename into or out of the store's directory".into()),
                }
            }
            "unlink" | "unlinkat" | "rmdir" => {
                let path = if name == "unlinkat" {
                    Self::resolve(args[0], &str_arg(args[1])?)?
                } else {
                    Self::resolve("AT_FDCWD", &str_arg(args[0])?)?
                };
                if let Some(rel) = Self::rel(root, &path) {
                    live.names.remove(&rel);
                    evs.push(Ev::Ns(Ns::Remove { path: rel }));
                }
            }
            "mkdir" | "mkdirat" => {
                let path = if name == "mkdirat" {
                    Self::resolve(args[0], &str_arg(args[1])?)?
                } else {
                    Self::resolve("AT_FDCWD", &str_arg(args[0])?)?
                };
                if let Some(rel) = Self::rel(root, &path) {
                    live.names.insert(rel.clone(), Entry::Dir);
                    evs.push(Ev::Ns(Ns::Mkdir { path: rel }));
                }
            }
            "mmap" => {
                if let Ok(fd) = fd_of(4)
                    && let Some(Fd { node: Node::File(i), .. }) = live.fds.get(&fd)
                    && args[3].contains("MAP_SHARED")
                    && args[2].contains("PROT_WRITE")
                {
                    let shm = live
                        .names
                        .iter()
                        .any(|(p, e)| matches!(e, Entry::File(j) if j == i) && p.ends_with("-shm"));
                    if !shm {
                        return Err("a shared writable mapping of a store file is not modelled".into());
                    }
                }
            }
            "dup" | "dup2" | "dup3" | "writev" | "pwritev" | "pwritev2" | "copy_file_range" | "sendfile" => {
                let tracked = args.iter().take(3).filter_map(|a| fd_arg(a).ok()).any(|(fd, path)| {
                    live.fds.get(&fd).is_some_and(|f| !f.marks)
                        || path.is_some_and(|p| Self::rel(root, &p).is_some())
                });
                if tracked {
                    return Err(format!("{name} on a store file is not modelled"));
                }
            }
            "link" | "linkat" | "symlink" | "symlinkat"
                if args.iter().any(|a| {
                    str_arg(a).is_ok_and(|p| Self::rel(root, &String::from_utf8_lossy(&p)).is_some())
                }) =>
            {
                return Err(format!("{name} in the store's directory is not modelled"));
            }
            _ => {}
        }
        Ok(evs)
    }

    /// What was acknowledged by the time the first `point` events ran.
    fn acks_at(&self, point: usize) -> Acks {
        let mut acks = Acks::default();
        for ev in &self.events[..point] {
            match ev {
                Ev::Mark(Mark::Committed(j, v)) => acks.committed[*j] = acks.committed[*j].max(*v),
                Ev::Mark(Mark::Acked(refs)) => acks.acked.extend(refs.iter().copied()),
                _ => {}
            }
        }
        acks
    }

    /// The points a crash can be placed at: before each file operation
    /// (after every mark before it) and at the end.
    fn crash_points(&self) -> Vec<usize> {
        let mut points: Vec<usize> =
            (0..self.events.len()).filter(|&i| !matches!(self.events[i], Ev::Mark(_))).collect();
        points.push(self.events.len());
        points
    }

    /// Which operations issued before `point` are durable, and which are
    /// not yet.
    fn window(&self, point: usize) -> Window {
        let evs = &self.events[..point];
        let mut w = Window::default();
        // The last completed sync of each node.
        let mut last_sync: HashMap<Node, usize> = HashMap::new();
        let mut last_all = None;
        for (g, ev) in evs.iter().enumerate() {
            match ev {
                Ev::Sync(n) => {
                    last_sync.insert(n.clone(), g);
                }
                Ev::SyncAll => last_all = Some(g),
                _ => {}
            }
        }
        let synced_after =
            |g: usize, n: &Node| last_sync.get(n).is_some_and(|&s| s > g) || last_all.is_some_and(|s| s > g);
        for (g, ev) in evs.iter().enumerate() {
            match ev {
                Ev::Ns(op) => {
                    w.ns += 1;
                    let synced = op.dirs().iter().all(|d| synced_after(g, &Node::Dir(d.clone())))
                        || op.inode().is_some_and(|i| synced_after(g, &Node::File(i)));
                    if synced {
                        w.durable_ns = w.ns;
                    }
                }
                Ev::Data(i, _) => {
                    if synced_after(g, &Node::File(*i)) {
                        w.durable_cut.insert(*i, g + 1);
                    } else {
                        w.pending.push((g, *i));
                    }
                }
                _ => {}
            }
        }
        w
    }

    /// Every distinct crash state, each with the last point producing it.
    fn crash_states(&self) -> Vec<State> {
        let mut seen: HashMap<u64, usize> = HashMap::new();
        let mut states: Vec<State> = Vec::new();
        for point in self.crash_points() {
            let w = self.window(point);
            let mut specs = vec![
                Spec { ns: w.durable_ns, keep: Keep::None },
                Spec { ns: w.ns, keep: Keep::None },
                Spec { ns: w.ns, keep: Keep::All },
            ];
            for k in w.durable_ns..w.ns {
                specs.push(Spec { ns: k, keep: Keep::All });
            }
            let mut files: Vec<usize> = w.pending.iter().map(|&(_, i)| i).collect();
            files.sort_unstable();
            files.dedup();
            for &f in &files {
                let mine: Vec<usize> = w.pending.iter().filter(|&&(_, i)| i == f).map(|&(g, _)| g).collect();
                for k in 0..mine.len() {
                    for others in [false, true] {
                        specs.push(Spec { ns: w.ns, keep: Keep::FilePrefix { inode: f, k, others } });
                    }
                }
                for (k, &g) in mine.iter().enumerate() {
                    if let Ev::Data(_, Data::Write { off, len, .. }) = self.events[g]
                        && split_at(off, len as u64).is_some()
                    {
                        for cut in [Cut::FirstSector, Cut::AllButFirstSector] {
                            specs.push(Spec { ns: w.ns, keep: Keep::Torn { inode: f, k, cut } });
                        }
                    }
                }
            }
            for &(g, _) in &w.pending {
                specs.push(Spec { ns: w.ns, keep: Keep::OmitOne(g) });
                if matches!(self.events[g], Ev::Data(_, Data::Write { .. })) {
                    specs.push(Spec { ns: w.ns, keep: Keep::Zeroed(g) });
                }
            }
            for spec in specs {
                let resolved = spec.resolve(&w);
                let key = resolved.key();
                let state = State { spec: resolved, point };
                match seen.get(&key) {
                    Some(&at) => states[at] = state,
                    None => {
                        seen.insert(key, states.len());
                        states.push(state);
                    }
                }
            }
        }
        states
    }

    /// Writes the files of the crash state into `dir`.
    fn materialize(&self, spec: &Resolved, point: usize, dir: &Path) {
        let mut names: BTreeMap<String, Entry> = BTreeMap::new();
        let ns_ops = self.events[..point].iter().filter_map(|e| match e {
            Ev::Ns(op) => Some(op),
            _ => None,
        });
        for op in ns_ops.take(spec.ns) {
            match op {
                Ns::Create { path, inode } => {
                    names.insert(path.clone(), Entry::File(*inode));
                }
                Ns::Mkdir { path } => {
                    names.insert(path.clone(), Entry::Dir);
                }
                Ns::Rename { from, to, .. } => rename_in(&mut names, from, to),
                Ns::Remove { path } => {
                    names.remove(path);
                }
            }
        }
        let mut contents: HashMap<usize, Vec<u8>> = HashMap::new();
        let kept: HashSet<usize> = spec.kept.iter().copied().collect();
        for (g, ev) in self.events[..point].iter().enumerate() {
            let Ev::Data(i, op) = ev else { continue };
            let torn = spec.torn.filter(|(t, _)| *t == g);
            let durable = spec.durable_cut.get(i).is_some_and(|&cut| g < cut);
            if !durable && !kept.contains(&g) && torn.is_none() {
                continue;
            }
            let file = contents.entry(*i).or_default();
            match op {
                Data::Write { off, start, len } => {
                    let zeros = vec![0; if matches!(torn, Some((_, Cut::Zeros))) { *len } else { 0 }];
                    let (mut off, mut bytes) = (*off, &self.arena[*start..*start + *len]);
                    match torn {
                        Some((_, Cut::Zeros)) => bytes = &zeros,
                        Some((_, c)) => {
                            if let Some(at) = split_at(off, *len as u64) {
                                let at = (at - off) as usize;
                                if c == Cut::FirstSector {
                                    bytes = &bytes[..at];
                                } else {
                                    bytes = &bytes[at..];
                                    off += at as u64;
                                }
                            }
                        }
                        None => {}
                    }
                    let end = off as usize + bytes.len();
                    if file.len() < end {
                        file.resize(end, 0);
                    }
                    file[off as usize..end].copy_from_slice(bytes);
                }
                Data::Truncate(len) => file.resize(*len as usize, 0),
                Data::Extend(len) => {
                    if file.len() < *len as usize {
                        file.resize(*len as usize, 0);
                    }
                }
            }
        }
        std::fs::create_dir_all(dir).expect("create a crash state dir");
        for (path, entry) in &names {
            let p = dir.join(path);
            match entry {
                Entry::Dir => std::fs::create_dir_all(&p).expect("create a dir of the crash state"),
                Entry::File(i) => {
                    if let Some(parent) = p.parent() {
                        std::fs::create_dir_all(parent).expect("create a dir of the crash state");
                    }
                    let empty = Vec::new();
                    std::fs::write(&p, contents.get(i).unwrap_or(&empty)).expect("write a crash state file");
                }
            }
        }
    }

    /// Event `g`, in words.
    fn describe_event(&self, g: usize) -> String {
        let names = self.names_at(g + 1);
        match &self.events[g] {
            Ev::Data(i, Data::Write { off, len, .. }) => {
                format!("write {} @{off}+{len}", name_of(&names, *i))
            }
            Ev::Data(i, Data::Truncate(l)) => format!("truncate {} to {l}", name_of(&names, *i)),
            Ev::Data(i, Data::Extend(l)) => format!("extend {} to {l}", name_of(&names, *i)),
            Ev::Sync(Node::File(i)) => format!("fsync {}", name_of(&names, *i)),
            Ev::Sync(Node::Dir(d)) => format!("fsync dir {d:?}"),
            Ev::SyncAll => "sync".into(),
            Ev::Ns(op) => format!("{op:?}"),
            Ev::Mark(m) => format!("mark {m:?}"),
        }
    }

    /// What happened just before `point`: the last few operations, named.
    fn point_context(&self, point: usize) -> String {
        let recent: Vec<String> = (0..point)
            .rev()
            .filter(|&g| !matches!(self.events[g], Ev::Mark(_)))
            .take(3)
            .map(|g| self.describe_event(g))
            .collect();
        format!("last: {}", recent.join(" <- "))
    }

    /// The live names at `point` (for messages).
    fn names_at(&self, point: usize) -> BTreeMap<String, Entry> {
        let mut names = BTreeMap::new();
        for ev in &self.events[..point] {
            if let Ev::Ns(op) = ev {
                match op {
                    Ns::Create { path, inode } => {
                        names.insert(path.clone(), Entry::File(*inode));
                    }
                    Ns::Mkdir { path } => {
                        names.insert(path.clone(), Entry::Dir);
                    }
                    Ns::Rename { from, to, .. } => rename_in(&mut names, from, to),
                    Ns::Remove { path } => {
                        names.remove(path);
                    }
                }
            }
        }
        names
    }
}

fn name_of(names: &BTreeMap<String, Entry>, inode: usize) -> String {
    names
        .iter()
        .find(|(_, e)| matches!(e, Entry::File(i) if *i == inode))
        .map(|(p, _)| p.clone())
        .unwrap_or_else(|| format!("(unlinked file {inode})"))
}

fn rename_in(names: &mut BTreeMap<String, Entry>, from: &str, to: &str) {
    let moved: Vec<(String, Entry)> = names
        .iter()
        .filter(|(p, _)| *p == from || p.starts_with(&format!("{from}/")))
        .map(|(p, e)| (p.clone(), e.clone()))
        .collect();
    names.retain(|p, _| !(p == to || p.starts_with(&format!("{to}/"))));
    for (p, e) in moved {
        names.remove(&p);
        names.insert(format!("{to}{}", &p[from.len()..]), e);
    }
}

/// The first sector boundary strictly inside a write at `off` of `len`
/// bytes, if the write spans one.
fn split_at(off: u64, len: u64) -> Option<u64> {
    let cut = (off / SECTOR + 1) * SECTOR;
    (cut < off + len).then_some(cut)
}

fn parse_mark(line: &str) -> std::result::Result<Mark, String> {
    let mut parts = line.split(' ');
    let bad = || format!("bad mark {line:?}");
    match parts.next() {
        Some("C") => {
            let j = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
            let v = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
            Ok(Mark::Committed(j, v))
        }
        Some("A") => parts
            .map(|r| {
                let mut f = r.split(':').map(|x| x.parse::<u64>());
                match (f.next(), f.next(), f.next()) {
                    (Some(Ok(j)), Some(Ok(v)), Some(Ok(n))) => Ok((j as usize, v, n)),
                    _ => Err(bad()),
                }
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map(Mark::Acked),
        _ => Err(bad()),
    }
}

/// Operations issued before a crash point: how many namespace operations
/// (and how many of them are durable), per file the end of its durable
/// data operations, and the data operations not yet durable.
#[derive(Debug, Default)]
struct Window {
    ns: usize,
    durable_ns: usize,
    durable_cut: BTreeMap<usize, usize>,
    /// (event index, inode)
    pending: Vec<(usize, usize)>,
}

/// How much of a write reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Cut {
    /// Up to the first sector boundary inside it.
    FirstSector,
    /// From the first sector boundary inside it on.
    AllButFirstSector,
    /// Its length, as zeros.
    Zeros,
}

/// Which unsynced data operations a crash state keeps.
#[derive(Debug, Clone, Copy)]
enum Keep {
    None,
    All,
    /// The first `k` of `inode`'s unsynced operations; the other files'
    /// all (`others`) or none.
    FilePrefix {
        inode: usize,
        k: usize,
        others: bool,
    },
    /// `inode`'s first `k` unsynced operations, then its next one (a
    /// write) torn (`cut`); the other files' all.
    Torn {
        inode: usize,
        k: usize,
        cut: Cut,
    },
    /// Every unsynced operation but this one.
    OmitOne(usize),
    /// Every unsynced operation, this write's bytes as zeros (its size
    /// reached the disk, its data did not).
    Zeroed(usize),
}

#[derive(Debug, Clone, Copy)]
struct Spec {
    /// How many namespace operations survive (a prefix).
    ns: usize,
    keep: Keep,
}

impl Spec {
    fn resolve(&self, w: &Window) -> Resolved {
        let mut kept = Vec::new();
        let mut torn = None;
        let mut nth: HashMap<usize, usize> = HashMap::new();
        for &(g, inode) in &w.pending {
            let p = nth.entry(inode).or_default();
            let pos = *p;
            *p += 1;
            let keep = match self.keep {
                Keep::None => false,
                Keep::All => true,
                Keep::FilePrefix { inode: f, k, others } => {
                    if inode == f {
                        pos < k
                    } else {
                        others
                    }
                }
                Keep::Torn { inode: f, k, cut } => {
                    if inode == f && pos == k {
                        torn = Some((g, cut));
                    }
                    inode != f || pos < k
                }
                Keep::OmitOne(o) => g != o,
                Keep::Zeroed(z) => {
                    if g == z {
                        torn = Some((g, Cut::Zeros));
                    }
                    g != z
                }
            };
            if keep {
                kept.push(g);
            }
        }
        Resolved {
            kind: self.keep,
            ns: self.ns,
            ns_dropped: w.ns - self.ns,
            durable_cut: w.durable_cut.clone(),
            kept,
            torn,
        }
    }
}

/// A crash state, spelled out: the namespace operations applied (a
/// prefix), per file the end of its durable data operations, the unsynced
/// data operations kept whole, and the one torn (if any).
#[derive(Debug, Clone)]
struct Resolved {
    kind: Keep,
    ns: usize,
    ns_dropped: usize,
    durable_cut: BTreeMap<usize, usize>,
    kept: Vec<usize>,
    torn: Option<(usize, Cut)>,
}

impl Resolved {
    /// What the state is made of (equal keys, equal files).
    fn key(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.ns.hash(&mut h);
        self.durable_cut.hash(&mut h);
        self.kept.hash(&mut h);
        self.torn.hash(&mut h);
        h.finish()
    }

    fn kind(&self) -> &'static str {
        match self.kind {
            Keep::None => "synced only",
            Keep::All if self.ns_dropped > 0 => "namespace prefix",
            Keep::All => "everything issued",
            Keep::FilePrefix { .. } => "file prefix",
            Keep::Torn { .. } => "torn write",
            Keep::OmitOne(_) => "one write reordered out",
            Keep::Zeroed(_) => "one write zeroed",
        }
    }

    fn describe(&self, t: &Trace, point: usize) -> String {
        let names = t.names_at(point);
        let what = match self.kind {
            Keep::None => "only synced data kept".to_owned(),
            Keep::All => "all issued data kept".to_owned(),
            Keep::FilePrefix { inode, k, others } => format!(
                "first {k} unsynced operations of {} kept, other files' unsynced operations {}",
                name_of(&names, inode),
                if others { "kept" } else { "lost" }
            ),
            Keep::Torn { inode, k, cut } => format!(
                "{} keeps {k} unsynced operations, then a write torn ({cut:?})",
                name_of(&names, inode),
            ),
            Keep::OmitOne(g) => format!("every unsynced operation kept but #{g} ({})", t.describe_event(g)),
            Keep::Zeroed(g) => {
                format!("every unsynced operation kept, #{g} ({}) as zeros", t.describe_event(g))
            }
        };
        format!("{} [{what}; {} unsynced namespace operations lost]", self.kind(), self.ns_dropped)
    }
}

/// A distinct crash state and the last trace point that produces it.
#[derive(Debug, Clone)]
struct State {
    spec: Resolved,
    point: usize,
}

/// Up to `budget` states, in trace order: each kind of state gets an
/// equal share (a kind with fewer states gives its rest to the others),
/// chosen by a shuffle seeded with `seed`.
fn sample(states: &[State], budget: usize, seed: u64) -> Vec<State> {
    if states.len() <= budget {
        return states.to_vec();
    }
    let mut rng = SplitMix64::new(seed);
    let mut kinds: BTreeMap<&'static str, Vec<usize>> = BTreeMap::new();
    for (i, s) in states.iter().enumerate() {
        kinds.entry(s.spec.kind()).or_default().push(i);
    }
    for idx in kinds.values_mut() {
        for i in (1..idx.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            idx.swap(i, j);
        }
        idx.reverse();
    }
    let mut chosen = Vec::with_capacity(budget);
    while chosen.len() < budget {
        for idx in kinds.values_mut() {
            if chosen.len() < budget
                && let Some(i) = idx.pop()
            {
                chosen.push(i);
            }
        }
    }
    chosen.sort_unstable();
    chosen.into_iter().map(|i| states[i].clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> String {
        s.bytes().map(|b| format!("\\x{b:02x}")).collect()
    }

    #[test]
    fn parses_writes_syncs_and_marks() {
        let root = "/t/store";
        let db = format!("{root}/db");
        let text = [
            format!(
                "1 openat(AT_FDCWD<{}>, \"{}\", O_RDWR|O_CREAT, 0644) = 3<{}>",
                hex("/"),
                hex(&db),
                hex(&db)
            ),
            format!(
                "1 openat(AT_FDCWD<{}>, \"{}\", O_WRONLY|O_CREAT|O_APPEND, 0644) = 4<{}>",
                hex("/"),
                hex("/t/marks"),
                hex("/t/marks")
            ),
            format!("1 pwrite64(3<{}>, \"{}\", 4, 0) = 4", hex(&db), hex("abcd")),
            format!("2 fsync(3<{}> <unfinished ...>", hex(&db)),
            format!("1 write(4<{}>, \"{}\", 6) = 6", hex("/t/marks"), hex("C 0 1\n")),
            "2 <... fsync resumed>) = 0".to_owned(),
            format!("1 pwrite64(3<{}>, \"{}\", 1024, 1000) = 1024", hex(&db), hex(&"x".repeat(1024))),
        ]
        .join("\n");
        let t = Trace::parse(&text, Path::new(root), Path::new("/t/marks")).unwrap();
        // The mark started before the fsync completed: it comes first.
        assert!(matches!(t.events[0], Ev::Ns(Ns::Create { .. })));
        assert!(matches!(t.events[1], Ev::Data(0, Data::Write { off: 0, len: 4, .. })));
        assert!(matches!(t.events[2], Ev::Mark(Mark::Committed(0, 1))));
        assert!(matches!(t.events[3], Ev::Sync(Node::File(0))));
        assert!(matches!(t.events[4], Ev::Data(0, Data::Write { off: 1000, len: 1024, .. })));
        let w = t.window(5);
        assert_eq!(w.pending, vec![(4, 0)]);
        // The create is durable through the file's own fsync.
        assert_eq!(w.durable_ns, 1);
        let states = t.crash_states();
        // Torn: the last write crosses sector boundaries 1024.
        assert!(states.iter().any(|s| s.spec.torn.is_some()));
        let dir = tempfile::tempdir().unwrap();
        let torn_first = states.iter().find(|s| matches!(s.spec.torn, Some((4, Cut::FirstSector)))).unwrap();
        t.materialize(&torn_first.spec, torn_first.point, dir.path());
        let bytes = std::fs::read(dir.path().join("db")).unwrap();
        assert_eq!(bytes.len(), 1024);
        assert_eq!(&bytes[..4], b"abcd");
        assert!(bytes[1000..].iter().all(|&b| b == b'x'));
    }

    #[test]
    fn unsynced_creates_may_vanish() {
        let root = "/t/store";
        let a = format!("{root}/a");
        let text = [
            format!(
                "1 openat(AT_FDCWD<{}>, \"{}\", O_RDWR|O_CREAT, 0644) = 3<{}>",
                hex("/"),
                hex(&a),
                hex(&a)
            ),
            format!("1 write(3<{}>, \"{}\", 2) = 2", hex(&a), hex("hi")),
        ]
        .join("\n");
        let t = Trace::parse(&text, Path::new(root), Path::new("/t/marks")).unwrap();
        let states = t.crash_states();
        let dir = tempfile::tempdir().unwrap();
        let mut seen = HashSet::new();
        for (n, s) in states.iter().enumerate() {
            let d = dir.path().join(n.to_string());
            t.materialize(&s.spec, s.point, &d);
            seen.insert(std::fs::read(d.join("a")).ok());
        }
        assert!(seen.contains(&None), "the file may be missing");
        assert!(seen.contains(&Some(Vec::new())), "or empty");
        assert!(seen.contains(&Some(b"hi".to_vec())), "or written");
        assert!(seen.contains(&Some(vec![0, 0])), "or its size without its data");
    }
}
