//! SQLite-specific behaviour: group commit, bad files, full disk,
//! read-only locations, leadership across handles.
#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is the test failing

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::executor::block_on;
use futures::future::join_all;
use outbox_core::prelude::*;
use outbox_core::{
    ActorId, ClaimRequest, Commit, ConsumerId, Envelope, ErrorKind, EventId, NewEvent, Payload, Result,
    Timestamp, Version,
};
use outbox_store_sqlite::{SqliteStore, Synchronous};

fn actor(s: &str) -> ActorId {
    ActorId::new(s).unwrap()
}

fn event(a: &ActorId, n: u64) -> NewEvent {
    NewEvent::json(a.clone(), "T", &n).unwrap()
}

fn temp() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    (dir, path)
}

fn kind<T: std::fmt::Debug>(r: Result<T>) -> ErrorKind {
    r.expect_err("expected an error").kind()
}

#[test]
fn group_commit_coalesces_concurrent_commits() {
    let (_d, path) = temp();
    let store = SqliteStore::open(&path).unwrap();
    let commits: Vec<_> = (0..64)
        .map(|i| {
            let a = actor(&format!("a{i}"));
            Commit::state(a.clone(), Version::NONE, vec![i as u8]).event(event(&a, i))
        })
        .collect();
    let results = block_on(join_all(commits.into_iter().map(|c| store.put_state_and_events(c))));
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    let stats = store.group_commit_stats();
    assert_eq!(stats.commits, 64);
    assert!(stats.transactions < 64, "64 concurrent commits took {} transactions", stats.transactions);
    assert_eq!(block_on(store.stats()).unwrap().pending, 64);
}

#[test]
fn failing_member_does_not_spoil_the_batch() {
    let (_d, path) = temp();
    let store = SqliteStore::open(&path).unwrap();
    let seen = Envelope::committed(event(&actor("p"), 0), Timestamp::EPOCH);
    let consumer = ConsumerId::new("c").unwrap();
    let existing = event(&actor("x"), 0);
    block_on(store.put_state_and_events(
        Commit::events_only().event(existing.clone()).mark_processed(consumer.clone(), &seen),
    ))
    .unwrap();

    let mut commits = Vec::new();
    let mut expect = Vec::new();
    for i in 0..60u64 {
        let a = actor(&format!("a{i}"));
        let c = Commit::state(a.clone(), Version::NONE, b"ok".to_vec()).event(event(&a, i));
        let (c, want) = match i % 6 {
            1 => (
                Commit {
                    state: Some(outbox_core::StateWrite {
                        expected_version: Version(3),
                        ..c.state.clone().unwrap()
                    }),
                    ..c
                },
                Some(ErrorKind::Conflict),
            ),
            3 => (c.event(existing.clone()), Some(ErrorKind::DuplicateEvent)),
            5 => (c.mark_processed(consumer.clone(), &seen), Some(ErrorKind::AlreadyProcessed)),
            _ => (c, None),
        };
        commits.push(c);
        expect.push(want);
    }
    let results = block_on(join_all(commits.into_iter().map(|c| store.put_state_and_events(c))));
    for (i, (r, want)) in results.iter().zip(&expect).enumerate() {
        assert_eq!(r.as_ref().err().map(|e| e.kind()), *want, "commit {i}");
        let state = block_on(store.load_state(&actor(&format!("a{i}")))).unwrap();
        assert_eq!(state.is_some(), want.is_none(), "state of commit {i} written iff it succeeded");
    }
    assert_eq!(block_on(store.stats()).unwrap().pending, 1 + 30, "events of the good commits only");
    let stats = store.group_commit_stats();
    assert!(stats.transactions < stats.commits, "the failures shared transactions with successes: {stats:?}");
}

#[test]
fn a_file_that_is_not_sqlite_is_corrupted_and_left_alone() {
    let (_d, path) = temp();
    let junk = b"this is a text file, not a database\n".repeat(200);
    std::fs::write(&path, &junk).unwrap();
    assert_eq!(kind(SqliteStore::open(&path)), ErrorKind::Corrupted);
    assert_eq!(std::fs::read(&path).unwrap(), junk, "the file was not altered");
}

fn store_with_events(path: &Path, n: u64) {
    let store = SqliteStore::open(path).unwrap();
    let a = actor("a");
    let events: Vec<_> =
        (0..n).map(|i| NewEvent::new(a.clone(), "T", Payload::bytes(vec![i as u8; 900]))).collect();
    block_on(store.put_state_and_events(Commit::state(a, Version::NONE, b"s".to_vec()).events(events)))
        .unwrap();
}

#[test]
fn a_damaged_file_gives_typed_errors_not_panics() {
    let (_d, path) = temp();
    store_with_events(&path, 300);
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 64 * 1024);
    for b in &mut bytes[8192..] {
        *b = 0xA5;
    }
    std::fs::write(&path, &bytes).unwrap();
    let store = match SqliteStore::open(&path) {
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Corrupted);
            return;
        }
        Ok(s) => s,
    };
    let kinds = [
        block_on(store.stats()).err().map(|e| e.kind()),
        block_on(store.list_pending(1000)).err().map(|e| e.kind()),
        block_on(store.load_state(&actor("a"))).err().map(|e| e.kind()),
    ];
    assert!(kinds.iter().flatten().all(|k| *k == ErrorKind::Corrupted), "{kinds:?}");
    assert!(kinds.iter().any(|k| k.is_some()), "reading a damaged file reports it");
}

#[test]
fn a_damaged_header_is_refused_at_open() {
    let (_d, path) = temp();
    store_with_events(&path, 10);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[..100].fill(0x5A);
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(kind(SqliteStore::open(&path)), ErrorKind::Corrupted);
}

#[test]
fn a_newer_schema_is_refused_and_not_altered() {
    let (_d, path) = temp();
    store_with_events(&path, 3);
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let err = SqliteStore::open(&path).expect_err("newer schema");
    assert!(
        matches!(
            err,
            outbox_core::Error::SchemaTooNew {
                found: 99,
                supported: outbox_store_sqlite::schema::SCHEMA_VERSION
            }
        ),
        "{err:?}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), before, "the file was not altered");
}

#[test]
fn a_foreign_sqlite_file_is_refused() {
    let (_d, path) = temp();
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE app (x); PRAGMA user_version = 1;").unwrap();
    }
    assert_eq!(kind(SqliteStore::open(&path)), ErrorKind::Corrupted);
}

#[test]
fn a_full_disk_is_quota_exceeded_and_keeps_what_was_committed() {
    let (_d, path) = temp();
    let store = SqliteStore::options(&path).max_size_bytes(256 * 1024).open().unwrap();
    let a = actor("a");
    let mut version = Version::NONE;
    let mut committed = 0u64;
    let err = loop {
        let e = NewEvent::new(a.clone(), "BIG", Payload::bytes(vec![7; 8 * 1024]));
        match block_on(store.put_state_and_events(Commit::state(a.clone(), version, vec![1; 512]).event(e))) {
            Ok(r) => {
                version = r.version.unwrap();
                committed += 1;
            }
            Err(e) => break e,
        }
        assert!(committed < 1000, "the size cap never hit");
    };
    assert_eq!(err.kind(), ErrorKind::QuotaExceeded);
    assert!(committed > 5);
    assert_eq!(block_on(store.stats()).unwrap().pending, committed, "everything committed before is there");
    assert_eq!(
        block_on(store.load_state(&a)).unwrap().unwrap().version,
        version,
        "the failed commit wrote nothing"
    );

    // Delivering and pruning frees space; commits go through again.
    let g = block_on(store.acquire_leadership("l", Duration::from_secs(30))).unwrap().unwrap();
    loop {
        let batch = block_on(store.claim(&g, ClaimRequest::new(100, Duration::from_secs(30)))).unwrap();
        if batch.is_empty() {
            break;
        }
        block_on(store.ack(&g, &batch.iter().map(|e| e.id).collect::<Vec<_>>())).unwrap();
    }
    let far = Timestamp::from_millis(i64::MAX);
    assert_eq!(block_on(store.prune_delivered(far, usize::MAX)).unwrap(), committed);
    let e = NewEvent::new(a.clone(), "BIG", Payload::bytes(vec![7; 8 * 1024]));
    block_on(store.put_state_and_events(Commit::state(a, version, vec![1; 512]).event(e))).unwrap();
}

#[test]
fn a_missing_directory_is_a_typed_error() {
    let (_d, path) = temp();
    let path = path.join("no/such/dir/outbox.db");
    assert_eq!(kind(SqliteStore::open(&path)), ErrorKind::PermissionDenied);
}

/// The check of `a_read_only_directory_is_permission_denied`, run as a user
/// that the directory's permissions apply to.
#[test]
#[ignore = "run by a_read_only_directory_is_permission_denied"]
fn read_only_probe() {
    let dir = PathBuf::from(std::env::var("OUTBOX_RO_DIR").expect("OUTBOX_RO_DIR"));
    let r = SqliteStore::open(dir.join("outbox.db"));
    assert_eq!(kind(r), ErrorKind::PermissionDenied);
}

#[test]
fn a_read_only_directory_is_permission_denied() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    if !root {
        let r = SqliteStore::open(dir.path().join("outbox.db"));
        assert_eq!(kind(r), ErrorKind::PermissionDenied);
        return;
    }
    // Root ignores directory permissions: run the probe as `nobody`.
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(&exe)
        .args(["--exact", "read_only_probe", "--ignored", "--test-threads=1"])
        .env("OUTBOX_RO_DIR", dir.path())
        .output()
        .expect("runuser");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "probe as nobody failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_second_handle_commits_but_cannot_lead_while_the_lock_is_held() {
    let (_d, path) = temp();
    let a = SqliteStore::open(&path).unwrap();
    let b = SqliteStore::open(&path).unwrap();
    let ttl = Duration::from_secs(30);
    let ga = block_on(a.acquire_leadership("a", ttl)).unwrap().expect("a leads");
    assert_eq!(block_on(b.acquire_leadership("b", ttl)).unwrap(), None, "b waits for the file lock");

    let x = actor("x");
    let e = event(&x, 1);
    block_on(b.put_state_and_events(Commit::state(x, Version::NONE, b"s".to_vec()).event(e.clone())))
        .unwrap();
    let claimed = block_on(a.claim(&ga, ClaimRequest::new(10, ttl))).unwrap();
    assert_eq!(claimed.iter().map(|e| e.id).collect::<Vec<_>>(), vec![e.id], "the leader sees b's commit");
    block_on(a.ack(&ga, &[e.id])).unwrap();

    block_on(a.release_leadership(&ga)).unwrap();
    let gb = block_on(b.acquire_leadership("b", ttl)).unwrap().expect("b leads after release");
    assert!(gb.epoch > ga.epoch);

    // A leader that dies without releasing (handle dropped, as a killed
    // process) frees the role at once, ttl or not; its grant is fenced.
    drop(b);
    let gc = block_on(a.acquire_leadership("c", ttl)).unwrap().expect("c leads after b died");
    assert!(gc.epoch > gb.epoch);
    assert_eq!(kind(block_on(a.ack(&gb, &[EventId::new(), e.id]))), ErrorKind::Fenced);
}

#[test]
fn a_leader_killed_mid_batch_leaves_no_lease_for_the_next_to_wait_out() {
    let (_d, path) = temp();
    let (ttl, lease) = (Duration::from_secs(30), Duration::from_secs(3600));
    let x = actor("x");
    let e = event(&x, 1);
    let a = SqliteStore::open(&path).unwrap();
    block_on(a.put_state_and_events(Commit::events_only().event(e.clone()))).unwrap();
    let ga = block_on(a.acquire_leadership("a", ttl)).unwrap().expect("a leads");
    assert_eq!(block_on(a.claim(&ga, ClaimRequest::new(10, lease))).unwrap().len(), 1);
    drop(a); // killed with the batch at the sink: no ack, no release

    let b = SqliteStore::open(&path).unwrap();
    let gb = block_on(b.acquire_leadership("b", ttl)).unwrap().expect("b leads");
    let again = block_on(b.claim(&gb, ClaimRequest::new(10, lease))).unwrap();
    assert_eq!(
        again.iter().map(|e| (e.id, e.attempts)).collect::<Vec<_>>(),
        vec![(e.id, 2)],
        "claimable at once, not in an hour; the lost attempt is counted"
    );
    // Re-taking leadership on the handle that made the last grant voids
    // nothing: its claims may still be at the sink.
    let gb2 = block_on(b.acquire_leadership("b", ttl)).unwrap().expect("b again");
    assert!(gb2.epoch > gb.epoch);
    assert!(block_on(b.claim(&gb2, ClaimRequest::new(10, lease))).unwrap().is_empty(), "b's lease holds");
}

#[test]
fn normal_synchronous_mode_commits_and_reopens() {
    let (_d, path) = temp();
    {
        let store = SqliteStore::options(&path).synchronous(Synchronous::Normal).open().unwrap();
        let a = actor("a");
        block_on(store.put_state_and_events(
            Commit::state(a, Version::NONE, b"n".to_vec()).event(event(&actor("a"), 1)),
        ))
        .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(block_on(store.load_state(&actor("a"))).unwrap().unwrap().bytes, b"n");
    assert_eq!(block_on(store.stats()).unwrap().pending, 1);
    let _: Arc<dyn DurableStore> = Arc::new(store);
}

/// One of the processes of `twenty_processes_create_one_file`: waits for
/// the go (a line on stdin), then opens the store at `OUTBOX_CREATE_PATH`.
#[test]
#[ignore = "run by twenty_processes_create_one_file"]
fn create_probe() {
    let path = PathBuf::from(std::env::var("OUTBOX_CREATE_PATH").expect("OUTBOX_CREATE_PATH"));
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).unwrap();
    let store = SqliteStore::open(&path).unwrap_or_else(|e| panic!("open failed: {:?}: {e}", e.kind()));
    block_on(store.put_state_and_events(Commit::events_only().event(event(&actor("p"), 1)))).unwrap();
}

/// Twenty processes open one new file at the same moment (ten times, on
/// ten files: the race is not lost every time): every open succeeds, the
/// file gets one schema.
#[test]
fn twenty_processes_create_one_file() {
    for _ in 0..10 {
        twenty_open_one_new_file();
    }
}

fn twenty_open_one_new_file() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let (_d, path) = temp();
    let exe = std::env::current_exe().unwrap();
    let mut children: Vec<_> = (0..20)
        .map(|_| {
            Command::new(&exe)
                .args(["--exact", "create_probe", "--ignored", "--test-threads=1"])
                .env("OUTBOX_CREATE_PATH", &path)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Every process is up and waiting: let them all open at once.
    for c in &mut children {
        c.stdin.take().unwrap().write_all(b"go\n").unwrap();
    }
    let failures: Vec<String> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .filter(|o| !(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("1 passed")))
        .map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
        .collect();
    assert!(failures.is_empty(), "{} of 20 opens failed:\n{}", failures.len(), failures.join("\n---\n"));

    // One schema, made once; every process's commit is in it.
    let c = rusqlite::Connection::open(&path).unwrap();
    let version: u32 = c.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    assert_eq!(version, outbox_store_sqlite::schema::SCHEMA_VERSION);
    let tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name LIKE 'outbox%' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(tables, ["outbox_events", "outbox_inbox", "outbox_leader", "outbox_state"]);
    let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok");
    drop(c);
    assert_eq!(block_on(SqliteStore::open(&path).unwrap().stats()).unwrap().pending, 20);
}

/// The bytes of the file at `path` and of its `-wal`, `-shm` and
/// `-journal` siblings (`None` for a sibling that does not exist, and for
/// the `-shm`, SQLite's shared-memory index, only whether it exists).
fn snapshot(path: &Path) -> Vec<(String, Option<Vec<u8>>)> {
    let sibling = |suffix: &str| {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    };
    let mut files = vec![("main".to_owned(), std::fs::read(path).ok())];
    for suffix in ["-wal", "-journal"] {
        files.push((suffix.to_owned(), std::fs::read(sibling(suffix)).ok()));
    }
    files.push(("-shm".to_owned(), sibling("-shm").exists().then(Vec::new)));
    files
}

/// Opening a SQLite file that is not an outbox file, or an outbox file of
/// a newer schema, is refused, and leaves the file (and its WAL) exactly
/// as it was: no table added, no `application_id`, no switch to WAL, no
/// checkpoint of a WAL another program left, no sibling file created or
/// removed.
#[test]
fn a_foreign_sqlite_file_is_refused_untouched() {
    use rusqlite::Connection;
    use rusqlite::config::DbConfig;
    type Make = fn(&Path);
    let cases: [(&str, Make, ErrorKind); 6] = [
        (
            "user_version 0 with tables of its own",
            |p| {
                let c = Connection::open(p).unwrap();
                c.execute_batch("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('mine');")
                    .unwrap();
            },
            ErrorKind::Corrupted,
        ),
        (
            "in WAL mode, closed cleanly",
            |p| {
                let c = Connection::open(p).unwrap();
                c.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0)).unwrap();
                c.execute_batch("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('mine');")
                    .unwrap();
            },
            ErrorKind::Corrupted,
        ),
        (
            "another application_id, nothing else",
            |p| Connection::open(p).unwrap().pragma_update(None, "application_id", 0x1234).unwrap(),
            ErrorKind::Corrupted,
        ),
        (
            "a user_version of its own",
            |p| Connection::open(p).unwrap().pragma_update(None, "user_version", 2).unwrap(),
            ErrorKind::Corrupted,
        ),
        (
            "its tables only in the WAL it left behind",
            |p| {
                let c = Connection::open(p).unwrap();
                c.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0)).unwrap();
                c.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true).unwrap();
                c.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
                c.execute_batch("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('mine');")
                    .unwrap();
            },
            ErrorKind::Corrupted,
        ),
        (
            "an outbox file of a newer schema",
            |p| {
                drop(SqliteStore::open(p).unwrap());
                Connection::open(p).unwrap().pragma_update(None, "user_version", 99).unwrap();
            },
            ErrorKind::SchemaTooNew,
        ),
    ];
    for (what, make, want) in cases {
        let (_d, path) = temp();
        make(&path);
        let before = snapshot(&path);
        assert_eq!(kind(SqliteStore::open(&path)), want, "{what}");
        assert_eq!(snapshot(&path), before, "{what}: the files changed");
    }
    // The WAL-only case really had its tables in the WAL only.
    let (_d, path) = temp();
    cases[4].1(&path);
    assert!(std::fs::metadata(wal_of(&path)).unwrap().len() > 0);

    // Nothing at all, an empty file and a SQLite file with nothing in it
    // are ours to create.
    let (_d, path) = temp();
    std::fs::write(&path, b"").unwrap();
    drop(SqliteStore::open(&path).unwrap());
    let (_d, path) = temp();
    {
        let c = Connection::open(&path).unwrap();
        c.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0)).unwrap();
    }
    assert!(std::fs::metadata(&path).unwrap().len() > 0);
    let store = SqliteStore::open(&path).unwrap();
    block_on(store.put_state_and_events(Commit::events_only().event(event(&actor("a"), 1)))).unwrap();
}

fn wal_of(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push("-wal");
    PathBuf::from(p)
}

/// The process of `one_leader_through_a_symlink`: opens the store at
/// `OUTBOX_LEADER_PATH`, tries to lead and says `PROBE LEADS` or `PROBE
/// WAITS`, then holds on (leading, if it leads) until its stdin closes.
#[test]
#[ignore = "run by one_leader_through_a_symlink"]
fn leader_probe() {
    use std::io::{Read, Write};
    let path = PathBuf::from(std::env::var("OUTBOX_LEADER_PATH").expect("OUTBOX_LEADER_PATH"));
    let store = SqliteStore::open(&path).unwrap();
    let grant = block_on(store.acquire_leadership("probe", Duration::from_secs(30))).unwrap();
    let mut out = std::io::stdout();
    writeln!(out, "PROBE {}", if grant.is_some() { "LEADS" } else { "WAITS" }).unwrap();
    out.flush().unwrap();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

/// A `leader_probe` process on `path`.
struct Probe {
    child: std::process::Child,
    said: std::sync::mpsc::Receiver<String>,
}

impl Probe {
    fn start(path: &Path) -> Probe {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "leader_probe", "--ignored", "--nocapture", "--test-threads=1"])
            .env("OUTBOX_LEADER_PATH", path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, said) = std::sync::mpsc::channel();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(|l| l.ok()) {
                // (libtest writes the test's name on the same line.)
                if let Some((_, word)) = line.split_once("PROBE ") {
                    let _ = tx.send(word.trim().to_owned());
                }
            }
        });
        Probe { child, said }
    }

    /// Whether the process leads (it says so within a bounded time).
    fn leads(&self) -> bool {
        match self.said.recv_timeout(Duration::from_secs(60)).expect("the probe answers").as_str() {
            "LEADS" => true,
            "WAITS" => false,
            other => panic!("probe said {other}"),
        }
    }

    /// Lets the process end, and waits for it.
    fn stop(mut self) {
        drop(self.child.stdin.take());
        assert!(self.child.wait().unwrap().success());
    }

    /// `leads()`, then `stop()`.
    fn leads_then_stop(self) -> bool {
        let leads = self.leads();
        self.stop();
        leads
    }
}

/// One database file, many paths to it (a symbolic link to the file, a
/// symbolic link to its directory, a hard link): one leader at a time,
/// among the stores of one process and among processes.
#[test]
fn one_leader_through_a_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let link = dir.path().join("link.db");
    let alias = dir.path().join("alias");
    let hard = dir.path().join("hard.db");
    let ttl = Duration::from_secs(30);

    let a = SqliteStore::open(&path).unwrap();
    let e = event(&actor("x"), 1);
    block_on(a.put_state_and_events(Commit::events_only().event(e.clone()))).unwrap();
    std::os::unix::fs::symlink(&path, &link).unwrap();
    std::os::unix::fs::symlink(dir.path(), &alias).unwrap();
    std::fs::hard_link(&path, &hard).unwrap();
    // SQLite keeps a WAL beside each path it is given (after resolving
    // symbolic links): a process opening the hard link reads the main file
    // alone, so it is brought up to date first.
    let checkpoint = || {
        rusqlite::Connection::open(&path)
            .unwrap()
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get::<_, i64>(0))
            .unwrap()
    };
    assert_eq!(checkpoint(), 0);

    // In this process: a leads, b (through the symlink) waits.
    let b = SqliteStore::open(&link).unwrap();
    let ga = block_on(a.acquire_leadership("a", ttl)).unwrap().expect("a leads");
    assert_eq!(block_on(b.acquire_leadership("b", ttl)).unwrap(), None, "b waits: a leads the same file");
    let claimed = block_on(a.claim(&ga, ClaimRequest::new(10, ttl))).unwrap();
    assert_eq!(claimed.iter().map(|e| e.id).collect::<Vec<_>>(), vec![e.id]);

    // Other processes wait too, whatever the path.
    for p in [&path, &link, &alias.join("outbox.db"), &hard] {
        assert!(!Probe::start(p).leads_then_stop(), "a process through {p:?} leads while a does");
    }

    // a lets go: b takes over; a, and processes, wait for b.
    block_on(a.release_leadership(&ga)).unwrap();
    let gb = block_on(b.acquire_leadership("b", ttl)).unwrap().expect("b leads after a let go");
    assert!(gb.epoch > ga.epoch);
    assert_eq!(block_on(a.acquire_leadership("a", ttl)).unwrap(), None);
    assert_eq!(checkpoint(), 0);
    assert!(!Probe::start(&hard).leads_then_stop(), "a process through the hard link leads while b does");

    // b goes: a process through the symlink leads, and while it does
    // neither a nor a process through the hard link does.
    drop(b);
    let p = Probe::start(&link);
    assert!(p.leads(), "the process through the symlink takes over at once");
    assert_eq!(block_on(a.acquire_leadership("a", ttl)).unwrap(), None, "a waits for the process");
    assert_eq!(checkpoint(), 0);
    assert!(!Probe::start(&hard).leads_then_stop(), "two processes lead");
    p.stop();
    assert!(block_on(a.acquire_leadership("a", ttl)).unwrap().is_some(), "a takes over when it ends");
}

#[test]
fn a_missing_leader_row_is_corrupted_not_internal() {
    let (_d, path) = temp();
    drop(SqliteStore::open(&path).unwrap());
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute("DELETE FROM outbox_leader", []).unwrap();
    drop(c);
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(kind(block_on(store.acquire_leadership("h", Duration::from_secs(5)))), ErrorKind::Corrupted);
}

/// The names in the directory `dir`, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn open_read_only(path: &Path) -> Result<SqliteStore> {
    SqliteStore::options(path).read_only(true).open()
}

/// A read-only open refuses, by kind and with nothing created or changed,
/// what it cannot read: a missing path, a directory, a file that is not
/// an outbox file, and an outbox file of another schema version (newer,
/// or older, which would need a migration).
#[test]
fn a_read_only_open_refuses_what_it_cannot_read_untouched() {
    use rusqlite::Connection;
    let (dir, path) = temp();
    assert_eq!(kind(open_read_only(&path)), ErrorKind::InvalidInput, "a missing file");
    assert_eq!(kind(open_read_only(&dir.path().join("no/such/dir/x.db"))), ErrorKind::InvalidInput);
    assert!(names_in(dir.path()).is_empty(), "nothing was created");
    assert_eq!(kind(open_read_only(dir.path())), ErrorKind::InvalidInput, "a directory");

    type Make = fn(&Path);
    let cases: [(&str, Make, ErrorKind); 6] = [
        ("an empty file", |p| std::fs::write(p, b"").unwrap(), ErrorKind::Corrupted),
        ("not SQLite", |p| std::fs::write(p, vec![7u8; 8192]).unwrap(), ErrorKind::Corrupted),
        (
            "another program's database",
            |p| {
                let c = Connection::open(p).unwrap();
                c.execute_batch("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('mine');")
                    .unwrap();
            },
            ErrorKind::Corrupted,
        ),
        (
            "a SQLite database with nothing in it",
            |p| drop(Connection::open(p).unwrap().pragma_update(None, "page_size", 4096)),
            ErrorKind::Corrupted,
        ),
        (
            "an outbox file of a newer schema",
            |p| {
                store_with_events(p, 2);
                Connection::open(p).unwrap().pragma_update(None, "user_version", 99).unwrap();
            },
            ErrorKind::SchemaTooNew,
        ),
        (
            "an outbox file of an older schema",
            |p| {
                store_with_events(p, 2);
                let v = outbox_store_sqlite::schema::SCHEMA_VERSION - 1;
                Connection::open(p).unwrap().pragma_update(None, "user_version", v).unwrap();
            },
            ErrorKind::InvalidInput,
        ),
    ];
    for (what, make, want) in cases {
        let (dir, path) = temp();
        make(&path);
        let (before, names) = (snapshot(&path), names_in(dir.path()));
        assert_eq!(kind(open_read_only(&path)), want, "{what}");
        assert_eq!(snapshot(&path), before, "{what}: the files changed");
        assert_eq!(names_in(dir.path()), names, "{what}: a file was created or removed");
    }
}

/// A cleanly closed outbox file opens read-only: it reads what the file
/// holds, refuses every write with `PermissionDenied`, and leaves the
/// directory as it was (no `-wal`, `-shm` or lock file created, the file's
/// bytes and mtime unchanged).
#[test]
fn a_read_only_store_reads_a_closed_file_and_refuses_writes() {
    let (dir, path) = temp();
    store_with_events(&path, 3);
    let (before, names) = (snapshot(&path), names_in(dir.path()));
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    {
        let store = open_read_only(&path).unwrap();
        assert!(store.is_read_only());
        assert_eq!(block_on(store.stats()).unwrap().pending, 3);
        assert_eq!(block_on(store.list_pending(10)).unwrap().len(), 3);
        let a = actor("a");
        let commit = Commit::events_only().event(event(&a, 1));
        assert_eq!(kind(block_on(store.put_state_and_events(commit))), ErrorKind::PermissionDenied);
        let ttl = Duration::from_secs(30);
        assert_eq!(kind(block_on(store.acquire_leadership("l", ttl))), ErrorKind::PermissionDenied);
        assert_eq!(kind(block_on(store.requeue_dead(&[EventId::new()]))), ErrorKind::PermissionDenied);
        assert_eq!(kind(block_on(store.discard_dead(&[EventId::new()]))), ErrorKind::PermissionDenied);
        assert_eq!(kind(block_on(store.skip_dead(&[EventId::new()]))), ErrorKind::PermissionDenied);
        let now = Timestamp::from_millis(i64::MAX / 2);
        assert_eq!(kind(block_on(store.prune_delivered(now, 10))), ErrorKind::PermissionDenied);
        assert_eq!(kind(block_on(store.prune_inbox(now, 10))), ErrorKind::PermissionDenied);
    }
    assert_eq!(snapshot(&path), before, "the files changed");
    assert_eq!(names_in(dir.path()), names, "a file was created or removed");
    assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), mtime);
    // The writable store still opens it as before.
    assert_eq!(block_on(SqliteStore::open(&path).unwrap().stats()).unwrap().pending, 3);
}

/// With a writer open on the file, a read-only store reads through its
/// WAL: it sees what the writer committed, before and after it opened,
/// and its own writes are refused.
#[test]
fn a_read_only_store_reads_a_file_with_a_live_writer() {
    let (_d, path) = temp();
    let writer = SqliteStore::open(&path).unwrap();
    let a = actor("a");
    block_on(writer.put_state_and_events(Commit::events_only().event(event(&a, 1)))).unwrap();
    assert!(wal_of(&path).exists());
    let reader = open_read_only(&path).unwrap();
    assert_eq!(block_on(reader.stats()).unwrap().pending, 1);
    block_on(writer.put_state_and_events(Commit::events_only().event(event(&a, 2)))).unwrap();
    assert_eq!(block_on(reader.stats()).unwrap().pending, 2, "a later commit is seen");
    let commit = Commit::events_only().event(event(&a, 3));
    assert_eq!(kind(block_on(reader.put_state_and_events(commit))), ErrorKind::PermissionDenied);
    drop(reader);
    block_on(writer.put_state_and_events(Commit::events_only().event(event(&a, 4)))).unwrap();
    assert_eq!(block_on(writer.stats()).unwrap().pending, 3);
}
