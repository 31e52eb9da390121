//! Helpers for real-process crash tests (`harness = false` test binaries
//! that re-run themselves as a child and SIGKILL it), native only.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::executor::block_on;
use outbox_core::prelude::*;
use outbox_core::{
    ActorId, Attempt, ClaimRequest, Clock, Commit, Envelope, ErrorKind, EventId, LeaderGrant, NewEvent,
    Result, SplitMix64, SystemClock, Version,
};

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

/// Committing threads per child.
const THREADS: usize = 4;
/// Actors (each its own ordering key) per committing thread.
const ACTORS_PER_THREAD: usize = 3;
/// Most events a child claims at once.
const BATCH: usize = 16;
/// Event leases. Long: a killed leader's leases are voided when the next
/// handle takes leadership, so nothing waits for them to run out.
const LEASE: Duration = Duration::from_secs(30);
/// Leadership grants, renewed every [`RENEW_EVERY`].
const GRANT_TTL: Duration = Duration::from_secs(2);
/// How often a leading child renews its grant (so kills land in renewals).
const RENEW_EVERY: Duration = Duration::from_millis(10);
/// A limit larger than anything a campaign stores.
const LIST_ALL: usize = 1 << 20;
/// How long the parent waits for any report before calling a child hung.
const SILENCE: Duration = Duration::from_secs(60);
/// How long the survivor of a two-process run may take to take over.
const TAKEOVER: Duration = Duration::from_secs(30);
/// The backlog the committing threads keep: they wait while more events
/// than this are pending, so the forwarder keeps up and every kill finds
/// fresh work (and the store stays small enough to check after each kill).
const BACKLOG: u64 = 256;

/// The shared crash test, as the `main` of a `harness = false` test: child
/// processes commit state + events from several threads and run a claim +
/// ack forwarder with everything else a forwarder and an operator do, while
/// the parent SIGKILLs them at random moments, over and over, on one store.
///
/// The child's forwarder, between batches: renews its grant every 10 ms;
/// now and then requeues, skips or discards dead letters (its claims park
/// dead keys), prunes delivered events with a short retention, makes
/// retries due at once, or resigns leadership and takes it again. Its sink
/// fails some events retriably (`retry_later`) and some for good
/// (`dead_letter`), handing the rest of a failed key's batch back
/// (`release`), as the forwarder does. The committing threads keep
/// committing (holding about 256 events pending), so every kill lands on
/// new work. On a store several processes can share
/// ([`Capabilities::multi_process`](outbox_core::Capabilities)) a quarter
/// of the runs start two children that hand leadership to each other; one
/// of them (the leader, mostly) is killed, the survivor must take over
/// (its orphaned batch included) and is killed in turn.
///
/// Every report a child makes (a line on its stdout, written before the
/// operation it announces or after the one it reports) carries the time,
/// so the lines of two children merge into one history. A delivery is the
/// line the sink writes before anything is acked. From that history the
/// parent checks, after every kill:
///
/// - per key, every delivery comes after a successful delivery of each
///   earlier event of its key (in commit order), except the events that
///   were skipped or discarded before it (and not requeued before its
///   claim): at-least-once repeats are allowed, reordering is not;
/// - no acked or discarded event is claimed or delivered again; leadership
///   epochs only grow;
/// - every commit the child reported as done is there, with all its
///   events (or the ones pruned, which were delivered or discarded); no
///   state without its events, no events without their state;
/// - every acked event is delivered (or pruned), every discard stands, and
///   every event the store calls delivered or discarded was delivered by
///   the sink or discarded by the child;
/// - the files pass the target's integrity check ([`CrashTarget::dump`]).
///
/// At the end a final drain requeues every dead letter and claims and acks
/// until nothing is pending: every committed event was then delivered (in
/// key order) or discarded.
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

// ---------------------------------------------------------------------------
// The child.

/// Nanoseconds since the Unix epoch (one clock for every process of a run).
fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Reports on stdout: `<time> <line>`, one write per line, the time read
/// under the stdout lock (so one child's times never go down).
#[derive(Clone, Copy)]
struct Out;

impl Out {
    fn say(self, line: fmt::Arguments<'_>) -> u64 {
        let mut o = std::io::stdout().lock();
        let ts = now_ns();
        o.write_all(format!("{ts} {line}\n").as_bytes()).expect("report");
        o.flush().expect("report");
        ts
    }
}

/// Runs a store call again while it fails retryably (the other process
/// holds the write lock), a bounded number of times.
fn retrying<T>(mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let mut tries = 0;
    loop {
        match f() {
            Err(e) if e.is_retryable() && tries < 2000 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            r => return r,
        }
    }
}

/// An event as reports name it: `id,actor,version,n,count`.
fn entry(e: &Envelope) -> String {
    let body: serde_json::Value = e.payload.decode_json().expect("a crash event's payload is JSON");
    format!(
        "{},{},{},{},{}",
        e.id,
        body["actor"].as_str().expect("actor"),
        body["version"].as_u64().expect("version"),
        body["n"].as_u64().expect("n"),
        body["count"].as_u64().expect("count")
    )
}

fn ids(ids: &[EventId]) -> String {
    ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(" ")
}

fn child(target: &CrashTarget, path: &Path) {
    // A panic on any thread fails the run: the process exits with a code
    // (which the parent reports) instead of running on without the thread.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::exit(101);
    }));
    let seed = env_u64("OUTBOX_CRASH_CHILD_SEED", 1);
    let slot = env_u64("OUTBOX_CRASH_SLOT", 0);
    let pair = env_u64("OUTBOX_CRASH_PAIR", 0) == 1;
    let store = retrying(|| (target.open)(path)).expect("child opens the store");
    let open = Arc::new(AtomicBool::new(false));
    {
        let (store, open) = (store.clone(), open.clone());
        std::thread::spawn(move || {
            loop {
                let s = retrying(|| block_on(store.stats())).expect("child reads the stats");
                open.store(s.pending < BACKLOG, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        });
    }
    for t in 0..THREADS {
        let (store, open) = (store.clone(), open.clone());
        let seed = seed ^ ((t as u64 + 1) * 0x9E37);
        std::thread::spawn(move || produce(&*store, &open, seed, slot, t));
    }
    let mut rng = SplitMix64::new(seed);
    let holder = format!("crash-slot{slot}");
    loop {
        Out.say(format_args!("B acquire"));
        let grant = loop {
            match retrying(|| block_on(store.acquire_leadership(&holder, GRANT_TTL))) {
                Ok(Some(g)) => break g,
                Ok(None) => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => panic!("child acquire: {e}"),
            }
        };
        Out.say(format_args!("E acquire {}", grant.epoch.0));
        match lead(&*store, &mut rng, grant, pair) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Fenced => {
                Out.say(format_args!("E fenced"));
            }
            Err(e) => panic!("child forwarder: {e}"),
        }
        if pair {
            // Give the other process a chance to take over.
            std::thread::sleep(Duration::from_millis(1 + rng.next_u64() % 3));
        }
    }
}

/// Commits state + 1 to 3 events for random actors of its own, forever,
/// whenever `open` (the backlog is under [`BACKLOG`]).
fn produce(store: &dyn DurableStore, open: &AtomicBool, seed: u64, slot: u64, t: usize) {
    let mut rng = SplitMix64::new(seed);
    let actors: Vec<ActorId> =
        (0..ACTORS_PER_THREAD).map(|j| ActorId::new(format!("s{slot}t{t}a{j}")).expect("actor id")).collect();
    let mut versions: Vec<Version> = actors
        .iter()
        .map(|a| retrying(|| block_on(store.current_version(a))).expect("child reads its version"))
        .collect();
    loop {
        while !open.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let j = (rng.next_u64() % actors.len() as u64) as usize;
        let a = &actors[j];
        let next = versions[j].next();
        let count = 1 + rng.next_u64() % 3;
        let events: Vec<NewEvent> = (0..count)
            .map(|n| {
                let body =
                    serde_json::json!({ "actor": a.as_str(), "version": next.0, "n": n, "count": count });
                NewEvent::json(a.clone(), "CRASH", &body).expect("event")
            })
            .collect();
        let snapshot = format!("{}@{}", a, next.0).into_bytes();
        let commit = Commit::state(a.clone(), versions[j], snapshot).events(events);
        if let Err(e) = retrying(|| block_on(store.put_state_and_events(commit.clone()))) {
            // A try that failed retryably may have landed after all.
            let now = retrying(|| block_on(store.current_version(a)));
            if now.ok() != Some(next) {
                panic!("child commit failed: {e}");
            }
        }
        versions[j] = next;
        Out.say(format_args!("C {a} {} {count}", next.0));
    }
}

/// Leads until it resigns (`Ok`) or an operation fails (`Fenced` ends the
/// term; anything else is a failure).
fn lead(store: &dyn DurableStore, rng: &mut SplitMix64, mut grant: LeaderGrant, pair: bool) -> Result<()> {
    let mut renewed = Instant::now();
    loop {
        if renewed.elapsed() >= RENEW_EVERY {
            Out.say(format_args!("B renew"));
            grant = retrying(|| block_on(store.renew_leadership(&grant, GRANT_TTL)))?;
            renewed = Instant::now();
            Out.say(format_args!("E renew {}", grant.epoch.0));
        }
        match rng.next_u64() % 100 {
            0..25 => tend_dead(store, rng)?,
            25..40 => {
                Out.say(format_args!("B prune"));
                let before = SystemClock.now().saturating_sub(Duration::from_millis(rng.next_u64() % 100));
                let n = retrying(|| block_on(store.prune_delivered(before, 256)))?;
                Out.say(format_args!("E prune {n}"));
            }
            40..42 => {
                Out.say(format_args!("B retry_now"));
                let n = retrying(|| block_on(store.retry_now(&grant)))?;
                Out.say(format_args!("E retry_now {n}"));
            }
            _ => {}
        }
        if rng.next_u64() % 100 < if pair { 6 } else { 2 } {
            Out.say(format_args!("B resign"));
            retrying(|| block_on(store.release_leadership(&grant)))?;
            Out.say(format_args!("E resign"));
            return Ok(());
        }
        deliver(store, rng, &grant)?;
    }
}

/// The operator: requeues, skips or discards some of the dead letters.
fn tend_dead(store: &dyn DurableStore, rng: &mut SplitMix64) -> Result<()> {
    let dead = retrying(|| block_on(store.list_dead(BATCH)))?;
    let (mut requeue, mut skip, mut discard) = (Vec::new(), Vec::new(), Vec::new());
    for e in &dead {
        match rng.next_u64() % 10 {
            0..5 => requeue.push(e),
            5..7 => skip.push(e),
            7..9 => discard.push(e),
            _ => {}
        }
    }
    let entries = |es: &[&Envelope]| es.iter().map(|e| entry(e)).collect::<Vec<_>>().join(" ");
    let id_list = |es: &[&Envelope]| es.iter().map(|e| e.id).collect::<Vec<_>>();
    if !requeue.is_empty() {
        Out.say(format_args!("B requeue {}", entries(&requeue)));
        let list = id_list(&requeue);
        let n = retrying(|| block_on(store.requeue_dead(&list)))?;
        Out.say(format_args!("E requeue {n} {}", ids(&list)));
    }
    if !skip.is_empty() {
        Out.say(format_args!("B skip {}", entries(&skip)));
        let list = id_list(&skip);
        let n = retrying(|| block_on(store.skip_dead(&list)))?;
        Out.say(format_args!("E skip {n} {}", ids(&list)));
    }
    if !discard.is_empty() {
        Out.say(format_args!("B discard {}", entries(&discard)));
        let list = id_list(&discard);
        let n = retrying(|| block_on(store.discard_dead(&list)))?;
        Out.say(format_args!("E discard {n} {}", ids(&list)));
    }
    Ok(())
}

/// Claims a batch and settles it: most events delivered and acked, some
/// failed retriably or for good, and the later events of a failed key
/// handed back undelivered.
fn deliver(store: &dyn DurableStore, rng: &mut SplitMix64, grant: &LeaderGrant) -> Result<()> {
    let claim_ts = Out.say(format_args!("B claim"));
    let batch =
        retrying(|| block_on(store.claim(grant, ClaimRequest::new(BATCH, LEASE).park_dead_keys(true))))?;
    let claimed: Vec<EventId> = batch.iter().map(|e| e.id).collect();
    Out.say(format_args!("E claim {claim_ts} {}", ids(&claimed)));
    if batch.is_empty() {
        std::thread::sleep(Duration::from_millis(1));
        return Ok(());
    }
    let mut failed_keys = HashSet::new();
    let (mut ok, mut retry, mut dead, mut back) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut delivered = Vec::new();
    for e in &batch {
        if failed_keys.contains(&e.key) {
            back.push(e.id);
            continue;
        }
        let outcome = match rng.next_u64() % 100 {
            0..7 => {
                retry.push(e.id);
                "retry"
            }
            7..10 => {
                dead.push(e.id);
                "dead"
            }
            _ => {
                ok.push(e.id);
                "ok"
            }
        };
        if outcome != "ok" {
            failed_keys.insert(e.key.clone());
        }
        delivered.push(format!("{},{outcome}", entry(e)));
    }
    // The sink: what this line names was delivered (or attempted).
    Out.say(format_args!("D {claim_ts} {}", delivered.join(" ")));
    if !ok.is_empty() {
        Out.say(format_args!("B ack"));
        retrying(|| block_on(store.ack(grant, &ok)))?;
        Out.say(format_args!("E ack {}", ids(&ok)));
    }
    for id in retry {
        Out.say(format_args!("B retry"));
        let at = SystemClock.now().saturating_add(Duration::from_millis(rng.next_u64() % 20));
        let attempt = if rng.next_u64().is_multiple_of(4) { Attempt::Uncounted } else { Attempt::Counted };
        retrying(|| block_on(store.retry_later(grant, id, at, "crash test: retriable", attempt)))?;
        Out.say(format_args!("E retry {id}"));
    }
    for id in dead {
        Out.say(format_args!("B dead"));
        retrying(|| block_on(store.dead_letter(grant, id, "crash test: not retriable")))?;
        Out.say(format_args!("E dead {id}"));
    }
    if !back.is_empty() {
        Out.say(format_args!("B unclaim"));
        retrying(|| block_on(store.release(grant, &back)))?;
        Out.say(format_args!("E unclaim {}", ids(&back)));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The parent: running and killing children.

/// The lines children report, by slot, as they arrive.
struct Streams {
    rx: Receiver<(usize, Option<String>)>,
    lines: Vec<Vec<String>>,
    open: Vec<bool>,
}

impl Streams {
    fn new(rx: Receiver<(usize, Option<String>)>, children: usize) -> Self {
        Streams { rx, lines: vec![Vec::new(); children], open: vec![true; children] }
    }

    fn total(&self) -> usize {
        self.lines.iter().map(Vec::len).sum()
    }

    /// Takes one report; `false` once every child's output has ended.
    fn recv(&mut self, round: u64) -> bool {
        if !self.open.iter().any(|o| *o) {
            return false;
        }
        match self.rx.recv_timeout(SILENCE) {
            Ok((slot, Some(line))) => self.lines[slot].push(line),
            Ok((slot, None)) => self.open[slot] = false,
            Err(_) => panic!("round {round}: no report from any child for {SILENCE:?}: hung"),
        }
        true
    }

    /// Takes reports until `done` (or every output ended); panics after
    /// `within` (when given) saying `what` did not happen.
    fn wait_until(&mut self, round: u64, within: Option<(Duration, &str)>, done: impl Fn(&Self) -> bool) {
        let start = Instant::now();
        while !done(self) {
            if let Some((limit, what)) = within {
                assert!(start.elapsed() < limit, "round {round}: {what} did not happen within {limit:?}");
            }
            if !self.recv(round) {
                return;
            }
        }
    }

    /// Takes every report left.
    fn finish(&mut self, round: u64) {
        while self.recv(round) {}
    }
}

fn spawn(
    exe: &Path,
    path: &Path,
    slot: usize,
    pair: bool,
    seed: u64,
    tx: Sender<(usize, Option<String>)>,
) -> std::process::Child {
    let mut child = Command::new(exe)
        .env("OUTBOX_CRASH_CHILD", path)
        .env("OUTBOX_CRASH_CHILD_SEED", seed.to_string())
        .env("OUTBOX_CRASH_SLOT", slot.to_string())
        .env("OUTBOX_CRASH_PAIR", if pair { "1" } else { "0" })
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
    std::thread::spawn(move || {
        // A partial last line (a child killed mid-write) was never reported.
        while let Some(line) = complete_line(&mut reader) {
            if tx.send((slot, Some(line))).is_err() {
                return;
            }
        }
        let _ = tx.send((slot, None));
    });
    child
}

/// How many report lines to wait for before a kill: 1 run in 8 is killed
/// as soon as it starts (during open and recovery).
fn lines_before_kill(rng: &mut SplitMix64) -> usize {
    if rng.next_u64().is_multiple_of(8) { 0 } else { (rng.next_u64() % 160) as usize }
}

/// SIGKILLs `child` at a random moment, not right after a report line
/// (written at an operation boundary): up to 2 ms later.
fn kill(child: &mut std::process::Child, rng: &mut SplitMix64, round: u64) -> u64 {
    std::thread::sleep(Duration::from_micros(rng.next_u64() % 2000));
    let at = now_ns();
    child.kill().expect("SIGKILL the child");
    let status = child.wait().expect("wait for the child");
    assert!(
        status.code().is_none(),
        "round {round}: the child exited by itself ({status}) instead of being killed"
    );
    at
}

/// What a killed child was doing: the forwarder operation it had begun and
/// not finished, `sink` between a claim and its settling, `between` at an
/// operation boundary, `startup` before the forwarder reported anything.
fn landed(lines: &[String]) -> String {
    for line in lines.iter().rev() {
        let mut p = line.split(' ').skip(1);
        match (p.next(), p.next()) {
            (Some("B"), Some(op)) => return op.to_owned(),
            (Some("D"), _) => return "sink".to_owned(),
            (Some("E"), Some("claim")) => return "claimed".to_owned(),
            (Some("E"), _) => return "between".to_owned(),
            _ => {}
        }
    }
    "startup".to_owned()
}

/// Whether a child's lines end with it leading.
fn leads(lines: &[String]) -> bool {
    for line in lines.iter().rev() {
        let mut p = line.split(' ').skip(1);
        match (p.next(), p.next()) {
            (Some("E"), Some("acquire")) => return true,
            (Some("B"), Some("resign")) | (Some("E"), Some("fenced")) => return false,
            _ => {}
        }
    }
    false
}

fn time_of(line: &str) -> u64 {
    line.split(' ').next().and_then(|t| t.parse().ok()).unwrap_or(0)
}

/// One child, killed once.
fn run_single(exe: &Path, path: &Path, rng: &mut SplitMix64, n: &mut Counters, round: u64) -> Vec<String> {
    let (tx, rx) = channel();
    let mut child = spawn(exe, path, 0, false, rng.next_u64(), tx);
    let mut s = Streams::new(rx, 1);
    let wait = lines_before_kill(rng);
    s.wait_until(round, None, |s| s.total() >= wait);
    kill(&mut child, rng, round);
    s.finish(round);
    n.kills += 1;
    *n.landed.entry(landed(&s.lines[0])).or_default() += 1;
    s.lines.swap_remove(0)
}

/// Two children on one store: one (the leader, 3 times in 4) is killed,
/// the survivor must take over, then it is killed too. Their lines merged
/// by time.
fn run_pair(exe: &Path, path: &Path, rng: &mut SplitMix64, n: &mut Counters, round: u64) -> Vec<String> {
    let (tx, rx) = channel();
    let mut children = [
        spawn(exe, path, 0, true, rng.next_u64(), tx.clone()),
        spawn(exe, path, 1, true, rng.next_u64(), tx),
    ];
    let mut s = Streams::new(rx, 2);
    let wait = lines_before_kill(rng);
    s.wait_until(round, None, |s| s.total() >= wait);
    let victim = match (0..2).find(|&i| leads(&s.lines[i])) {
        Some(l) if !rng.next_u64().is_multiple_of(4) => l,
        _ => (rng.next_u64() % 2) as usize,
    };
    let survivor = 1 - victim;
    let killed_at = kill(&mut children[victim], rng, round);
    // Every line the victim wrote, to know whether it died leading.
    s.wait_until(round, None, |s| !s.open[victim]);
    if leads(&s.lines[victim]) {
        s.wait_until(round, Some((TAKEOVER, "the survivor's takeover")), |s| {
            s.lines[survivor].iter().rev().take_while(|l| time_of(l) > killed_at).any(|l| {
                let mut p = l.split(' ').skip(1);
                (p.next(), p.next()) == (Some("E"), Some("acquire"))
            })
        });
        n.takeovers += 1;
    }
    let mark = s.lines[survivor].len() + (rng.next_u64() % 80) as usize;
    s.wait_until(round, None, |s| s.lines[survivor].len() >= mark);
    kill(&mut children[survivor], rng, round);
    s.finish(round);
    n.kills += 2;
    n.pairs += 1;
    for lines in &s.lines {
        *n.landed.entry(landed(lines)).or_default() += 1;
    }
    // Merge by time (each child's own lines are in time order).
    let [a, b]: [Vec<String>; 2] = std::mem::take(&mut s.lines).try_into().expect("two children");
    let mut merged = Vec::with_capacity(a.len() + b.len());
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    loop {
        let take_a = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => time_of(x) <= time_of(y),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        merged.extend(if take_a { a.next() } else { b.next() });
    }
    merged
}

// ---------------------------------------------------------------------------
// The parent: what the history says and what the store holds.

/// Counts for the final report.
#[derive(Debug, Default)]
struct Counters {
    kills: u64,
    pairs: u64,
    takeovers: u64,
    /// Where kills landed (see [`landed`]).
    landed: BTreeMap<String, u64>,
    /// Operations the children finished (`E` lines), by name.
    done: BTreeMap<String, u64>,
    commits: u64,
    deliveries: u64,
    repeats: u64,
    acked: u64,
    requeued: u64,
    skipped: u64,
    discarded: u64,
    pruned: u64,
    drained: u64,
}

/// One event, as the history and the store describe it.
#[derive(Debug)]
struct Ev {
    actor: String,
    version: u64,
    n: u64,
    /// The sink took it successfully at least once.
    delivered: bool,
    /// A child reported it acked.
    acked: bool,
    /// A child asked for it to be discarded.
    discard_asked: bool,
    /// A child reported its discard done.
    discarded: bool,
    /// When a child last asked to skip or discard it.
    excused_at: Option<u64>,
    /// When a child last reported it requeued.
    requeued_at: Option<u64>,
}

impl Ev {
    /// Delivered or discarded: its key's later events may go.
    fn settled(&self) -> bool {
        self.delivered || self.discarded
    }

    /// Skipped or discarded (asked before `claim_ts`'s claim, the
    /// history being read in time order) and not requeued since, as a
    /// claim starting at `claim_ts` sees it: its key's later events may go.
    fn out_of_line(&self, claim_ts: u64) -> bool {
        self.excused_at.is_some_and(|x| !self.requeued_at.is_some_and(|r| r > x && r < claim_ts))
    }
}

/// One ordering key (an actor): its commits' event counts, its events by
/// (version, index), and how far every event is settled.
#[derive(Debug)]
struct Key {
    counts: BTreeMap<u64, u64>,
    slots: HashMap<(u64, u64), String>,
    /// Every event before this one (version, index) is settled.
    prefix: (u64, u64),
}

/// An event as a line names it.
struct Named<'a> {
    id: &'a str,
    actor: &'a str,
    version: u64,
    n: u64,
    count: u64,
}

fn num(s: Option<&str>) -> std::result::Result<u64, String> {
    s.and_then(|s| s.parse().ok()).ok_or_else(|| format!("expected a number, found {s:?}"))
}

impl<'a> Named<'a> {
    /// `id,actor,version,n,count[,outcome]`; the outcome, if any.
    fn parse(s: &'a str) -> std::result::Result<(Self, Option<&'a str>), String> {
        let mut p = s.split(',');
        let id = p.next().ok_or("no id")?;
        let actor = p.next().ok_or("no actor")?;
        let named = Named { id, actor, version: num(p.next())?, n: num(p.next())?, count: num(p.next())? };
        Ok((named, p.next()))
    }
}

#[derive(Default)]
struct Model {
    /// actor -> highest version a child reported committed.
    reported: HashMap<String, u64>,
    keys: HashMap<String, Key>,
    events: HashMap<String, Ev>,
    last_epoch: u64,
    n: Counters,
}

impl Model {
    fn key(&mut self, actor: &str) -> &mut Key {
        self.keys.entry(actor.to_owned()).or_insert_with(|| Key {
            counts: BTreeMap::new(),
            slots: HashMap::new(),
            prefix: (1, 0),
        })
    }

    fn learn_count(&mut self, actor: &str, version: u64, count: u64) -> std::result::Result<(), String> {
        let have = *self.key(actor).counts.entry(version).or_insert(count);
        if have != count {
            return Err(format!("{actor} v{version} has {have} events and {count}"));
        }
        Ok(())
    }

    /// Records what a line or the store says an event is.
    fn learn(&mut self, e: &Named<'_>) -> std::result::Result<(), String> {
        self.learn_count(e.actor, e.version, e.count)?;
        if e.n >= e.count {
            return Err(format!("{} is event {} of {} of {} v{}", e.id, e.n, e.count, e.actor, e.version));
        }
        let slot = self.key(e.actor).slots.entry((e.version, e.n)).or_insert_with(|| e.id.to_owned());
        if slot != e.id {
            return Err(format!("{} v{} event {} is both {slot} and {}", e.actor, e.version, e.n, e.id));
        }
        let ev = self.events.entry(e.id.to_owned()).or_insert_with(|| Ev {
            actor: e.actor.to_owned(),
            version: e.version,
            n: e.n,
            delivered: false,
            acked: false,
            discard_asked: false,
            discarded: false,
            excused_at: None,
            requeued_at: None,
        });
        if (ev.actor.as_str(), ev.version, ev.n) != (e.actor, e.version, e.n) {
            return Err(format!("{} changed its payload", e.id));
        }
        Ok(())
    }

    fn event(&mut self, id: &str) -> std::result::Result<&mut Ev, String> {
        self.events.get_mut(id).ok_or_else(|| format!("event {id} was never named before"))
    }

    /// The first event of `actor` before `upto` that a claim starting at
    /// `claim_ts` must not have passed: not settled and not skipped or
    /// discarded. A version whose events nobody named counts as one.
    fn first_unsettled(&self, actor: &str, upto: (u64, u64), claim_ts: u64) -> Option<(u64, u64)> {
        let key = self.keys.get(actor)?;
        let mut p = key.prefix;
        while p < upto {
            let Some(&count) = key.counts.get(&p.0) else { return Some(p) };
            if p.1 >= count {
                p = (p.0 + 1, 0);
                continue;
            }
            let ev = key.slots.get(&p).and_then(|id| self.events.get(id));
            if !ev.is_some_and(|ev| ev.settled() || ev.out_of_line(claim_ts)) {
                return Some(p);
            }
            p.1 += 1;
        }
        None
    }

    /// Moves `actor`'s settled prefix past every settled event.
    fn advance(&mut self, actor: &str) {
        let Some(key) = self.keys.get(actor) else { return };
        let mut p = key.prefix;
        while let Some(&count) = key.counts.get(&p.0) {
            if p.1 >= count {
                p = (p.0 + 1, 0);
                continue;
            }
            if !key.slots.get(&p).and_then(|id| self.events.get(id)).is_some_and(Ev::settled) {
                break;
            }
            p.1 += 1;
        }
        if let Some(key) = self.keys.get_mut(actor) {
            key.prefix = p;
        }
    }

    /// The sink took `e` (successfully if `ok`) from a claim that started
    /// at `claim_ts`: checks per-key order.
    fn deliver(&mut self, e: &Named<'_>, ok: bool, claim_ts: u64) -> std::result::Result<(), String> {
        self.learn(e)?;
        let ev = self.event(e.id)?;
        if ev.acked || ev.discarded {
            return Err(format!(
                "{} event {} was delivered again",
                if ev.acked { "acked" } else { "discarded" },
                e.id
            ));
        }
        if let Some((v, n)) = self.first_unsettled(e.actor, (e.version, e.n), claim_ts) {
            return Err(format!(
                "key {}: v{} event {} was delivered before v{v} event {n}, an earlier event of its key that was neither delivered, skipped nor discarded",
                e.actor, e.version, e.n
            ));
        }
        let ev = self.event(e.id)?;
        let again = ev.delivered;
        ev.delivered |= ok;
        self.n.deliveries += 1;
        self.n.repeats += u64::from(again);
        if ok {
            self.advance(e.actor);
        }
        Ok(())
    }

    /// A claim returned `id`.
    fn claimed(&mut self, id: &str) -> std::result::Result<(), String> {
        match self.events.get(id) {
            Some(ev) if ev.acked => Err(format!("acked event {id} was claimed again")),
            Some(ev) if ev.discarded => Err(format!("discarded event {id} was claimed")),
            _ => Ok(()),
        }
    }

    fn acked(&mut self, id: &str) -> std::result::Result<(), String> {
        let ev = self.event(id)?;
        if !ev.delivered {
            return Err(format!("{id} was acked but the sink never took it"));
        }
        ev.acked = true;
        self.n.acked += 1;
        Ok(())
    }

    fn requeued(&mut self, ids: &[&str], at: u64) -> std::result::Result<(), String> {
        for id in ids {
            self.event(id)?.requeued_at = Some(at);
        }
        self.n.requeued += ids.len() as u64;
        Ok(())
    }

    /// Reads one report line (history in time order).
    fn absorb(&mut self, line: &str) -> std::result::Result<(), String> {
        let mut p = line.split(' ');
        let ts = num(p.next())?;
        match p.next() {
            Some("C") => {
                let actor = p.next().ok_or("no actor")?;
                let (version, count) = (num(p.next())?, num(p.next())?);
                let r = self.reported.entry(actor.to_owned()).or_default();
                *r = (*r).max(version);
                self.n.commits += 1;
                self.learn_count(actor, version, count)?;
            }
            Some("B") => {
                let op = p.next().ok_or("no operation")?;
                for s in p {
                    let (e, _) = Named::parse(s)?;
                    self.learn(&e)?;
                    if op == "skip" || op == "discard" {
                        let ev = self.event(e.id)?;
                        ev.excused_at = Some(ts);
                        ev.discard_asked |= op == "discard";
                    }
                }
            }
            Some("E") => {
                let op = p.next().ok_or("no operation")?;
                *self.n.done.entry(op.to_owned()).or_default() += 1;
                match op {
                    "claim" => {
                        num(p.next())?;
                        for id in p {
                            self.claimed(id)?;
                        }
                    }
                    "ack" => {
                        for id in p {
                            self.acked(id)?;
                        }
                    }
                    "requeue" | "skip" | "discard" => {
                        let moved = num(p.next())?;
                        let ids: Vec<&str> = p.collect();
                        // Only when every one moved is it known which did.
                        let all = moved == ids.len() as u64;
                        match op {
                            "requeue" if all => self.requeued(&ids, ts)?,
                            "discard" if all => {
                                for id in &ids {
                                    let ev = self.event(id)?;
                                    ev.discarded = true;
                                    let actor = ev.actor.clone();
                                    self.advance(&actor);
                                }
                                self.n.discarded += moved;
                            }
                            "skip" => self.n.skipped += moved,
                            _ => {}
                        }
                    }
                    "acquire" => {
                        let epoch = num(p.next())?;
                        if epoch <= self.last_epoch {
                            return Err(format!("epoch {epoch} granted after epoch {}", self.last_epoch));
                        }
                        self.last_epoch = epoch;
                    }
                    "renew" => {
                        let epoch = num(p.next())?;
                        if epoch != self.last_epoch {
                            return Err(format!(
                                "epoch {epoch} renewed while {} is the last",
                                self.last_epoch
                            ));
                        }
                    }
                    "prune" => self.n.pruned += num(p.next())?,
                    _ => {}
                }
            }
            Some("D") => {
                let claim_ts = num(p.next())?;
                for s in p {
                    let (e, outcome) = Named::parse(s)?;
                    self.deliver(&e, outcome == Some("ok"), claim_ts)?;
                }
            }
            _ => return Err("unexpected line".to_owned()),
        }
        Ok(())
    }
}

fn parent(target: &CrashTarget) {
    let name = target.name;
    let kills = env_u64("OUTBOX_CRASH_KILLS", 200);
    let seed = seed();
    println!("{name}: {kills} kills, OUTBOX_CRASH_SEED={seed}");
    let dir = tempfile_dir();
    let path = dir.join(target.file_name);
    let exe = std::env::current_exe().expect("current exe");
    let shared = (target.open)(&path).unwrap_or_else(|e| panic!("create the store: {e}"));
    let pairs = shared.capabilities().multi_process;
    drop(shared);
    let mut rng = SplitMix64::new(seed);
    let mut model = Model::default();
    let mut round = 0;
    while model.n.kills < kills {
        let pair = pairs && kills - model.n.kills >= 2 && rng.next_u64().is_multiple_of(4);
        let lines = if pair {
            run_pair(&exe, &path, &mut rng, &mut model.n, round)
        } else {
            run_single(&exe, &path, &mut rng, &mut model.n, round)
        };
        for line in &lines {
            if let Err(e) = model.absorb(line) {
                panic!("round {round} (after {} kills): {e}\n  at report: {line}", model.n.kills);
            }
        }
        verify(target, &path, &mut model, round);
        round += 1;
    }
    drain(target, &path, &mut model);
    verify(target, &path, &mut model, round);
    let _ = std::fs::remove_dir_all(&dir);
    let n = &model.n;
    let landed: Vec<String> = n.landed.iter().map(|(op, k)| format!("{op} {k}")).collect();
    let done: Vec<String> = n.done.iter().map(|(op, k)| format!("{op} {k}")).collect();
    let runs = if pairs {
        format!("{} with two processes, {} takeovers of a killed leader", n.pairs, n.takeovers)
    } else {
        "one process at a time: the store is single-process".to_owned()
    };
    println!("{name}: ok: {} kills in {round} runs ({runs})", n.kills);
    println!("{name}: kills landed in: {}", landed.join(", "));
    println!("{name}: operations finished: {}", done.join(", "));
    println!(
        "{name}: {} reported commits; {} deliveries in key order ({} repeats), {} acks verified, {} requeued, {} skipped, {} discarded, {} pruned; the final drain delivered {} more: every committed event delivered or discarded",
        n.commits, n.deliveries, n.repeats, n.acked, n.requeued, n.skipped, n.discarded, n.pruned, n.drained
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

/// The ids `list` returns.
fn listed(list: Result<Vec<Envelope>>) -> HashSet<String> {
    list.expect("list events").into_iter().map(|e| e.id.to_string()).collect()
}

fn verify(target: &CrashTarget, path: &Path, model: &mut Model, round: u64) {
    let fail = |m: &Model, what: String| -> ! { panic!("round {round} (after {} kills): {what}", m.n.kills) };
    // Open through the store first: recovery and layout checks run.
    let store = (target.open)(path).unwrap_or_else(|e| fail(model, format!("reopen failed: {e}")));
    for (actor, reported) in &model.reported {
        let a = ActorId::new(actor.clone()).expect("actor id");
        let v = block_on(store.current_version(&a)).expect("read version");
        if v.0 < *reported {
            fail(model, format!("{actor} is at {v}, but v{reported} was reported committed"));
        }
    }
    let pending = listed(block_on(store.list_pending(LIST_ALL)));
    let dead = listed(block_on(store.list_dead(LIST_ALL)));
    drop(store);
    let dump = (target.dump)(path).unwrap_or_else(|e| fail(model, format!("integrity check: {e}")));
    let mut versions: HashMap<String, u64> = HashMap::new();
    for (actor, v, snapshot) in dump.states {
        if snapshot != format!("{actor}@{v}").into_bytes() {
            fail(model, format!("{actor}'s snapshot does not match its version {v}"));
        }
        versions.insert(actor, v);
    }
    let mut present: HashSet<String> = HashSet::new();
    for (id, payload, delivered) in &dump.events {
        let body: serde_json::Value = serde_json::from_slice(payload).expect("payload is JSON");
        let named = Named {
            id,
            actor: body["actor"].as_str().expect("actor"),
            version: body["version"].as_u64().expect("version"),
            n: body["n"].as_u64().expect("n"),
            count: body["count"].as_u64().expect("count"),
        };
        if let Err(e) = model.learn(&named) {
            fail(model, e);
        }
        let v = versions.get(named.actor).copied().unwrap_or(0);
        if named.version > v {
            fail(
                model,
                format!("events of {} v{} exist but its state is only v{v}", named.actor, named.version),
            );
        }
        present.insert(id.clone());
        let ev = &model.events[id.as_str()];
        let status = if *delivered {
            "delivered"
        } else if pending.contains(id) {
            "pending"
        } else if dead.contains(id) {
            "dead"
        } else {
            "discarded"
        };
        let wrong = match status {
            _ if ev.acked && status != "delivered" => Some("was acked"),
            _ if ev.discarded && status != "discarded" => Some("was discarded"),
            "delivered" if !ev.delivered => Some("never reached the sink"),
            "discarded" if !ev.discard_asked => Some("was never discarded by a child"),
            _ => None,
        };
        if let Some(why) = wrong {
            fail(model, format!("event {id} is {status} but {why}"));
        }
    }
    // Every committed event is there, or was pruned after its delivery or
    // discard (as every event before its key's settled prefix was).
    for (actor, v) in &versions {
        let Some(key) = model.keys.get(actor) else { fail(model, format!("{actor} has no events")) };
        for version in key.prefix.0..=*v {
            let Some(&count) = key.counts.get(&version) else {
                fail(model, format!("{actor} v{version} has no events, stored or delivered"))
            };
            let first = if version == key.prefix.0 { key.prefix.1 } else { 0 };
            for n in first..count {
                let id = key.slots.get(&(version, n));
                let ok = id.is_some_and(|id| {
                    present.contains(id)
                        || model.events.get(id).is_some_and(|ev| ev.delivered || ev.discard_asked)
                });
                if !ok {
                    fail(
                        model,
                        format!("{actor} v{version} event {n} ({id:?}) is lost: not stored, not delivered"),
                    );
                }
            }
        }
    }
}

/// The final drain: every dead letter requeued, claimed and acked until
/// nothing is pending or dead; then every event committed was delivered or
/// discarded.
fn drain(target: &CrashTarget, path: &Path, model: &mut Model) {
    let store = (target.open)(path).unwrap_or_else(|e| drain_failed(format!("reopen failed: {e}")));
    let grant = block_on(store.acquire_leadership("crash-drain", Duration::from_secs(3600)))
        .expect("acquire")
        .unwrap_or_else(|| drain_failed("no leadership with every child dead".to_owned()));
    if grant.epoch.0 <= model.last_epoch {
        drain_failed(format!("epoch {} granted after epoch {}", grant.epoch.0, model.last_epoch));
    }
    let mut idle = 0;
    loop {
        let dead = block_on(store.list_dead(LIST_ALL)).expect("list dead");
        if !dead.is_empty() {
            for e in &dead {
                let line = entry(e);
                let (named, _) = Named::parse(&line).expect("entry");
                model.learn(&named).unwrap_or_else(|e| drain_failed(e));
            }
            let list: Vec<EventId> = dead.iter().map(|e| e.id).collect();
            let moved = block_on(store.requeue_dead(&list)).expect("requeue");
            assert_eq!(moved, list.len() as u64, "final drain: every dead letter requeued");
            let ids: Vec<String> = list.iter().map(|i| i.to_string()).collect();
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            let at = now_ns();
            model.requeued(&ids, at).unwrap_or_else(|e| drain_failed(e));
        }
        block_on(store.retry_now(&grant)).expect("retry now");
        let claim_ts = now_ns();
        let batch = block_on(
            store.claim(&grant, ClaimRequest::new(256, Duration::from_secs(3600)).park_dead_keys(true)),
        )
        .expect("claim");
        if batch.is_empty() {
            let s = block_on(store.stats()).expect("stats");
            if s.pending == 0 && s.dead == 0 {
                break;
            }
            idle += 1;
            if idle > 3 {
                drain_failed(format!("events left that cannot be claimed: {s:?}"));
            }
            continue;
        }
        idle = 0;
        for e in &batch {
            let id = e.id.to_string();
            model.claimed(&id).unwrap_or_else(|e| drain_failed(e));
            let line = entry(e);
            let (named, _) = Named::parse(&line).expect("entry");
            model.deliver(&named, true, claim_ts).unwrap_or_else(|e| drain_failed(e));
            model.n.drained += 1;
        }
        let list: Vec<EventId> = batch.iter().map(|e| e.id).collect();
        block_on(store.ack(&grant, &list)).expect("ack");
        for id in &list {
            model.acked(&id.to_string()).unwrap_or_else(|e| drain_failed(e));
        }
    }
    block_on(store.release_leadership(&grant)).expect("release");
    drop(store);
    for (id, ev) in &model.events {
        if !ev.delivered && !ev.discard_asked {
            drain_failed(format!(
                "event {id} ({} v{} event {}) was never delivered",
                ev.actor, ev.version, ev.n
            ));
        }
    }
}

fn drain_failed(what: String) -> ! {
    panic!("final drain: {what}")
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
