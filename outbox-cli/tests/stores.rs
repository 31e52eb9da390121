//! Every command on every store, through the one code path: `list
//! --json` (filters, cursor), `show`, `state`, `inbox`, `stats`, `watch`
//! (the current events, then a live commit), `requeue`, `discard`, `skip`
//! (each with `--dry-run` first, which changes nothing) and `prune`, on
//! SQLite, sled and PostgreSQL (skipped, saying so, without
//! `OUTBOX_PG_URL`).
#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is the test failing

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use common::{BOUND, Backend, Fixture, ids_of, json_lines, with_dead_letters};
use outbox_core::{ActorId, Commit, EventStatus, NewEvent};
use serde_json::Value;

fn s(id: outbox_core::EventId) -> String {
    id.to_string()
}

/// The ids the store lists under `status`, read through the library.
async fn listed(b: &Backend, status: EventStatus) -> Vec<String> {
    let store = b.open().await;
    let ids =
        store.list_by_status(status, usize::MAX).await.unwrap().iter().map(|e| e.id.to_string()).collect();
    drop(store);
    ids
}

async fn exercise(b: Backend) {
    let f: Fixture = {
        let store = b.open().await;
        with_dead_letters(store.as_ref()).await
    };

    // list --json: each status, in commit order, with the dead letters'
    // errors and what they hold back.
    let dead = json_lines(&b.ok("list", &["--status", "dead", "--json"]));
    assert_eq!(ids_of(&dead), vec![s(f.a1), s(f.b1), s(f.d1)]);
    assert_eq!(dead[0]["last_error"], "422 unprocessable");
    assert_eq!(dead[0]["holds_back"], 2, "a1 parks a2 and a3");
    assert_eq!(dead[0]["payload"]["n"], 1);
    assert_eq!(ids_of(&json_lines(&b.ok("list", &["--json"]))), vec![s(f.a2), s(f.a3), s(f.d2)], "pending");
    assert_eq!(ids_of(&json_lines(&b.ok("list", &["--status", "delivered", "--json"]))), vec![s(f.c1)]);
    assert_eq!(
        ids_of(&json_lines(&b.ok("list", &["--key", "a", "--type", "ORDER_SHIPPED", "--json"]))),
        vec![s(f.a3)],
        "filters"
    );
    assert!(b.ok("list", &["--origin", "nobody", "--json"]).is_empty());
    // Paging: a page of one, the "more" line, the next page by cursor.
    let first = json_lines(&b.ok("list", &["--limit", "1", "--json"]));
    assert_eq!(ids_of(&first), vec![s(f.a2)]);
    assert_eq!(first[1]["more"], 2);
    let cursor = first[1]["next_cursor"].as_str().unwrap().to_owned();
    let second = json_lines(&b.ok("list", &["--limit", "1", "--after", &cursor, "--json"]));
    assert_eq!(ids_of(&second), vec![s(f.a3)]);
    assert!(b.ok("list", &["--limit", "1"]).contains("2 more"), "the human page says what is left");

    // show, state, inbox, stats.
    let shown = json_lines(&b.ok("show", &[&s(f.a1), "--json"]));
    assert_eq!((shown[0]["status"].as_str(), shown[0]["key"].as_str()), (Some("dead"), Some("a")));
    assert_eq!(shown[0]["attempts"], 1);
    assert_eq!(shown[0]["holds_back"], 2);
    assert_eq!((shown[0]["skipped"].as_bool(), shown[0]["parks_key"].as_bool()), (Some(false), Some(true)));
    assert!(shown[0]["claimed_epoch"].is_u64(), "the epoch of the claim that dead-lettered it: {}", shown[0]);
    let a2 = json_lines(&b.ok("show", &[&s(f.a2), "--json"]));
    assert!(a2[0].get("lease_until").is_some_and(Value::is_null), "never claimed: no lease");
    assert_eq!((a2[0]["leased"].as_bool(), a2[0]["waits_behind_dead"].as_u64()), (Some(false), Some(1)));
    let human = b.ok("show", &[&s(f.a2)]);
    assert!(human.contains("ORDER_PAID") && human.contains("\"n\": 2"), "{human}");
    assert_eq!(b.run("show", &[&s(outbox_core::EventId::new())]).status.code(), Some(4), "an unknown id");
    let state = json_lines(&b.ok("state", &["form", "--json"]));
    assert_eq!(
        (state[0]["version"].as_u64(), &state[0]["snapshot"]["title"]),
        (Some(1), &Value::from("Quarterly report"))
    );
    assert_eq!(b.run("state", &["nobody"]).status.code(), Some(4));
    assert_eq!(ids_of(&json_lines(&b.ok("inbox", &["mailer", "--json"]))), vec![s(f.c1)]);
    let stats = json_lines(&b.ok("stats", &["--json"]));
    assert_eq!((stats[0]["pending"].as_u64(), stats[0]["dead"].as_u64()), (Some(3), Some(3)));
    assert_eq!(stats[0]["parked_keys"], 3);

    // watch: the current events first (every status), bounded.
    let watched = json_lines(&b.ok("watch", &["--json", "--max-events", "7", "--interval", "10ms"]));
    let mut got = ids_of(&watched);
    got.sort();
    let mut all = vec![s(f.a1), s(f.a2), s(f.a3), s(f.b1), s(f.c1), s(f.d1), s(f.d2)];
    all.sort();
    assert_eq!(got, all);
    // ... then live: a commit made while it runs is its next line.
    live_watch(&b).await;

    // requeue: --dry-run says what and changes nothing; then a1 goes back
    // before a2 and a3.
    let files = b.files();
    let plan = b.ok("requeue", &[&s(f.a1), "--dry-run"]);
    assert!(plan.contains(&s(f.a1)) && plan.contains("nothing changed"), "{plan}");
    assert_eq!(b.files(), files, "a dry run leaves the store byte-for-byte as it was");
    assert_eq!(listed(&b, EventStatus::Dead).await, vec![s(f.a1), s(f.b1), s(f.d1)]);
    let done = json_lines(&b.ok("requeue", &[&s(f.a1), "--json"]));
    assert_eq!(done.last().unwrap()["changed"], 1);
    let pending = listed(&b, EventStatus::Pending).await;
    assert_eq!(pending[..3].to_vec(), vec![s(f.a1), s(f.a2), s(f.a3)], "a1 first, then its key, in order");

    // discard: kept as discarded; a second discard finds it not dead
    // (exit 4), as does a pending id; nothing changes then.
    b.ok("discard", &[&s(f.b1)]);
    assert_eq!(listed(&b, EventStatus::Discarded).await, vec![s(f.b1)]);
    assert_eq!(b.run("discard", &[&s(f.b1)]).status.code(), Some(4));
    assert_eq!(b.run("discard", &[&s(f.d1), &s(f.a2)]).status.code(), Some(4), "one id is pending");
    assert_eq!(listed(&b, EventStatus::Dead).await, vec![s(f.d1)], "d1 was not discarded either");

    // skip: d1 stays dead but no longer parks d; --dry-run first.
    let files = b.files();
    b.ok("skip", &[&s(f.d1), "--dry-run"]);
    assert_eq!(b.files(), files);
    assert_eq!(json_lines(&b.ok("stats", &["--json"]))[0]["parked_keys"], 1);
    b.ok("skip", &[&s(f.d1)]);
    let d1 = json_lines(&b.ok("show", &[&s(f.d1), "--json"]));
    assert_eq!(
        (d1[0]["skipped"].as_bool(), d1[0]["parks_key"].as_bool(), d1[0]["holds_back"].as_u64()),
        (Some(true), Some(false), Some(0)),
        "skipped: parks nothing"
    );
    assert_eq!(json_lines(&b.ok("stats", &["--json"]))[0]["parked_keys"], 0, "d flows");
    assert_eq!(listed(&b, EventStatus::Dead).await, vec![s(f.d1)], "a skipped event stays dead");

    // requeue --all, then prune what is settled.
    b.ok("requeue", &["--all"]);
    assert!(listed(&b, EventStatus::Dead).await.is_empty());
    let files = b.files();
    b.ok("prune", &["--older-than", "0s", "--dry-run"]);
    assert_eq!(b.files(), files);
    let pruned = json_lines(&b.ok("prune", &["--older-than", "0s", "--inbox", "--json"]));
    assert_eq!(pruned[0]["deleted_events"], 2, "c1 delivered, b1 discarded");
    assert_eq!(pruned[0]["deleted_inbox_marks"], 1);
    b.cleanup().await;
}

/// `watch --status pending --max-events N`, with N one more than the
/// pending events: it prints them, then the event committed while it
/// runs, then ends. Reads its lines as they come (bounded wait).
async fn live_watch(b: &Backend) {
    let before = listed(b, EventStatus::Pending).await.len();
    let max = (before + 1).to_string();
    let args =
        b.args("watch", &["--json", "--status", "pending", "--interval", "20ms", "--max-events", &max]);
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_outbox"))
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = mpsc::channel();
    let out = child.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    for _ in 0..before {
        rx.recv_timeout(BOUND).expect("the current pending events");
    }
    let late = NewEvent::json(ActorId::new("late").unwrap(), "LATE", &serde_json::json!({ "n": 9 })).unwrap();
    let late_id = late.id.to_string();
    {
        let store = b.open().await;
        store.put_state_and_events(Commit::events_only().event(late)).await.unwrap();
    }
    let line = rx.recv_timeout(BOUND).expect("the live commit");
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!((v["id"].as_str(), v["change"].as_str()), (Some(late_id.as_str()), Some("new")));
    assert!(child.0.wait().unwrap().success(), "watch ends after --max-events");
}

/// A child process killed when the test ends, failed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_list_show_watch_requeue_discard_skip() {
    let dir = tempfile::tempdir().unwrap();
    exercise(Backend::Sqlite(dir.path().join("app.db"))).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sled_list_show_watch_requeue_discard_skip() {
    let dir = tempfile::tempdir().unwrap();
    exercise(Backend::Sled(dir.path().join("app.sled"))).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_list_show_watch_requeue_discard_skip() {
    let Some(b) = Backend::postgres("postgres_list_show_watch_requeue_discard_skip") else { return };
    exercise(b).await;
}

/// `OUTBOX_DATABASE_URL` stands for the store: omitted, or `-`.
#[tokio::test(flavor = "multi_thread")]
async fn the_store_can_come_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::Sqlite(dir.path().join("env.db"));
    let f = {
        let store = b.open().await;
        with_dead_letters(store.as_ref()).await
    };
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_outbox"))
            .args(args)
            .env("OUTBOX_DATABASE_URL", b.arg())
            .output()
            .unwrap()
    };
    let out = run(&["list", "--status", "dead", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(ids_of(&json_lines(&String::from_utf8(out.stdout).unwrap())).len(), 3);
    let out = run(&["show", "-", &f.a1.to_string(), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
