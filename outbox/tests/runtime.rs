//! The actor runtime and the outbox modes, on a real SQLite file.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox::consumer::{Delivery, Handler, HandlerError, Tx, once_per_event};
use outbox::prelude::*;
use outbox::{
    Actor, ActorError, ActorId, Bus, ConsumerId, Context, Durability, Envelope, ErrorKind, OutboxConfig,
    SqliteStore, StoreChoice, Topic, Version, configure_outbox,
};
use outbox_testkit::{FaultMode, FaultyStore};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
enum Form {
    #[default]
    Empty,
    Draft {
        title: String,
    },
    Saved {
        title: String,
    },
}

#[derive(Clone)]
enum Msg {
    Edit(String),
    Save,
    /// Changes the draft and emits, then fails.
    Broken,
}

/// The handler's own errors.
#[derive(Debug, thiserror::Error)]
enum FormError {
    #[error("nothing to save")]
    NothingToSave,
    #[error("broken on purpose")]
    Broken(#[source] std::io::Error),
}

struct FormActor;

#[outbox::async_trait]
impl Actor for FormActor {
    type State = Form;
    type Message = Msg;
    type Error = FormError;

    async fn handle(&mut self, state: &mut Form, msg: Msg, ctx: &mut Context) -> Result<(), FormError> {
        match msg {
            Msg::Edit(title) => {
                *state = Form::Draft { title: title.clone() };
                ctx.emit("FORM_EDITED", &title);
                Ok(())
            }
            Msg::Save => {
                let Form::Draft { title } = state.clone() else { return Err(FormError::NothingToSave) };
                // An async handler: the draft is committed when it returns.
                tokio::task::yield_now().await;
                *state = Form::Saved { title: title.clone() };
                ctx.emit("FORM_SAVED", &title);
                ctx.emit("FORM_AUDIT", &"saved");
                Ok(())
            }
            Msg::Broken => {
                *state = Form::Saved { title: "never".into() };
                ctx.emit("FORM_SAVED", &"never");
                Err(FormError::Broken(std::io::Error::other("disk on fire")))
            }
        }
    }
}

fn sqlite(dir: &tempfile::TempDir) -> OutboxConfig {
    OutboxConfig::default().store(StoreChoice::Sqlite(dir.path().join("app.db")))
}

async fn next(sub: &mut outbox::Subscription) -> Envelope {
    tokio::time::timeout(Duration::from_secs(30), sub.recv())
        .await
        .expect("delivered in time")
        .expect("bus open")
}

#[tokio::test]
async fn commits_atomically_and_publishes_only_committed_state() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::new();
    let mut all = bus.subscribe(Topic::All);
    let outbox = configure_outbox(sqlite(&dir), Arc::new(bus.sink())).await.unwrap();
    assert!(outbox.is_durable());
    let form = outbox.spawn_actor(ActorId::new("form-1").unwrap(), FormActor).await.unwrap();
    let mut watch = form.watch();
    assert_eq!(*form.state(), Form::Empty);

    let sent = form.send(Msg::Edit("Hi".into())).await.unwrap();
    assert_eq!((sent.version, sent.durable), (Version(1), true), "committed to SQLite: durable");
    assert!(watch.has_changed().unwrap());
    assert_eq!(**watch.borrow_and_update(), Form::Draft { title: "Hi".into() });

    // A failing handler: the draft and its event are discarded, watchers
    // see nothing.
    let err = form.send(Msg::Broken).await.unwrap_err();
    assert!(matches!(err, ActorError::Handler(FormError::Broken(_))), "the handler's own typed error");
    let source = std::error::Error::source(&err).expect("the handler's error is the source");
    assert!(source.downcast_ref::<FormError>().is_some());
    assert!(!watch.has_changed().unwrap(), "no uncommitted state published");
    assert_eq!(*form.state(), Form::Draft { title: "Hi".into() });

    assert_eq!(form.send(Msg::Save).await.unwrap().version, Version(2));
    assert_eq!(**watch.borrow_and_update(), Form::Saved { title: "Hi".into() });
    let types: Vec<String> = vec![next(&mut all).await, next(&mut all).await, next(&mut all).await]
        .into_iter()
        .map(|e| e.event_type)
        .collect();
    assert_eq!(types, vec!["FORM_EDITED", "FORM_SAVED", "FORM_AUDIT"], "emitted events, in order");
    let stored = outbox.store().load_state(&ActorId::new("form-1").unwrap()).await.unwrap().unwrap();
    assert_eq!(stored.version, Version(2));
    outbox.shutdown().await;
}

#[tokio::test]
async fn a_failed_commit_discards_the_draft_and_the_events() {
    let inner: Arc<dyn DurableStore> = Arc::new(outbox::MemoryStore::new());
    let faulty = FaultyStore::new(inner.clone());
    let store: Arc<dyn DurableStore> = faulty.clone();
    let outbox = configure_outbox(
        OutboxConfig::default().store(StoreChoice::Custom(store)),
        Arc::new(Bus::new().sink()),
    )
    .await
    .unwrap();
    let form = outbox.spawn_actor(ActorId::new("f").unwrap(), FormActor).await.unwrap();
    let watch = form.watch();
    faulty.fail_from(1, FaultMode::Before);
    let err = form.send(Msg::Edit("x".into())).await.unwrap_err();
    assert_eq!(err.store_kind(), Some(ErrorKind::Unavailable));
    faulty.disarm();
    assert!(!watch.has_changed().unwrap());
    assert_eq!(*form.state(), Form::Empty);
    assert_eq!(inner.stats().await.unwrap().pending, 0, "no event of the failed commit");
    assert_eq!(
        form.send(Msg::Edit("y".into())).await.unwrap().version,
        Version(1),
        "the next message starts from the committed state"
    );
    outbox.shutdown().await;
}

/// What a "pending events" panel reads, through the facade: counts,
/// pending events, dead letters and the backend, without `store()`.
#[tokio::test]
async fn the_facade_lists_and_counts_what_is_pending() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = configure_outbox(sqlite(&dir), Arc::new(Bus::new().sink())).await.unwrap();
    // No forwarder: what is committed stays pending.
    outbox.shutdown().await;
    let form = outbox.spawn_actor(ActorId::new("form-1").unwrap(), FormActor).await.unwrap();
    form.send(Msg::Edit("a".into())).await.unwrap();
    form.send(Msg::Save).await.unwrap();
    let stats = outbox.stats().await.unwrap();
    assert_eq!((stats.pending, stats.dead, stats.delivered), (3, 0, 0), "{stats:?}");
    let pending = outbox.pending(2).await.unwrap();
    let types: Vec<&str> = pending.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, vec!["FORM_EDITED", "FORM_SAVED"], "oldest first, at most the limit");
    assert!(outbox.dead_letters(10).await.unwrap().is_empty());
    assert_eq!(outbox.capabilities().backend, "sqlite");
}

#[tokio::test]
async fn restart_restores_the_last_committed_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    {
        let outbox = configure_outbox(sqlite(&dir), Arc::new(Bus::new().sink())).await.unwrap();
        let form = outbox.spawn_actor(ActorId::new("form-1").unwrap(), FormActor).await.unwrap();
        form.send(Msg::Edit("kept".into())).await.unwrap();
        form.send(Msg::Save).await.unwrap();
        let _ = form.send(Msg::Broken).await;
        outbox.shutdown().await;
    }
    let outbox = configure_outbox(sqlite(&dir), Arc::new(Bus::new().sink())).await.unwrap();
    let form = outbox.spawn_actor(ActorId::new("form-1").unwrap(), FormActor).await.unwrap();
    assert_eq!(*form.state(), Form::Saved { title: "kept".into() });
    outbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_actors_run_concurrently_one_message_at_a_time_each() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::new();
    let mut all = bus.subscribe(Topic::All);
    let outbox = configure_outbox(sqlite(&dir), Arc::new(bus.sink())).await.unwrap();
    let mut tasks = Vec::new();
    for a in 0..40 {
        let form = outbox.spawn_actor(ActorId::new(format!("form-{a}")).unwrap(), FormActor).await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut last = Version::NONE;
            for i in 0..10 {
                last = form.send(Msg::Edit(format!("{i}"))).await.unwrap().version;
            }
            last
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), Version(10));
    }
    let mut per_actor: std::collections::HashMap<String, Vec<String>> = Default::default();
    for _ in 0..400 {
        let e = next(&mut all).await;
        per_actor.entry(e.origin.to_string()).or_default().push(e.payload.decode_json::<String>().unwrap());
    }
    assert_eq!(per_actor.len(), 40);
    for (a, titles) in per_actor {
        assert_eq!(titles, (0..10).map(|i| i.to_string()).collect::<Vec<_>>(), "{a}: delivered in order");
    }
    outbox.shutdown().await;
}

/// A listener whose effect must happen once per event.
struct CountEffect(Arc<AtomicUsize>);

#[outbox::consumer::async_trait]
impl Handler for CountEffect {
    async fn handle(&self, _e: &Envelope, _tx: &mut Tx<'_>) -> Result<(), HandlerError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test]
async fn the_same_event_delivered_twice_reaches_the_listener_effect_once() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::new();
    let mut saved = bus.subscribe(Topic::EventType("FORM_SAVED".into()));
    let outbox = configure_outbox(sqlite(&dir), Arc::new(bus.sink())).await.unwrap();
    let form = outbox.spawn_actor(ActorId::new("form-1").unwrap(), FormActor).await.unwrap();
    form.send(Msg::Edit("t".into())).await.unwrap();
    form.send(Msg::Save).await.unwrap();
    let e = next(&mut saved).await;
    let effects = Arc::new(AtomicUsize::new(0));
    let listener_store: Arc<dyn DurableStore> = Arc::new(outbox::MemoryStore::new());
    let listener =
        once_per_event(listener_store, ConsumerId::new("mailer").unwrap(), CountEffect(effects.clone()));
    assert_eq!(listener.deliver(&e).await.unwrap(), Delivery::Applied);
    assert_eq!(listener.deliver(&e).await.unwrap(), Delivery::Duplicate);
    assert_eq!(effects.load(Ordering::SeqCst), 1);
    outbox.shutdown().await;
}

#[tokio::test]
async fn off_sends_events_straight_to_the_sink() {
    let bus = Bus::new();
    let mut all = bus.subscribe(Topic::All);
    let outbox = configure_outbox(OutboxConfig::default().durability(Durability::Off), Arc::new(bus.sink()))
        .await
        .unwrap();
    assert!(!outbox.is_durable());
    let form = outbox.spawn_actor(ActorId::new("form-1").unwrap(), FormActor).await.unwrap();
    assert!(!form.send(Msg::Edit("now".into())).await.unwrap().durable, "Off keeps nothing: not durable");
    let e = all.try_recv().expect("published during the commit, no forwarder involved");
    assert_eq!(e.event_type, "FORM_EDITED");
    assert_eq!(outbox.store().stats().await.unwrap().pending, 0, "Off keeps nothing of the events");
}

/// The quota fallback with the forwarder running: what memory holds is
/// delivered from memory while the store is full (the durable backlog
/// first), then moved back once it has room, nothing twice. (The real full
/// file system is `tests/full_disk.rs`; here the store refuses commits as
/// a full disk does, so each step is certain.)
#[tokio::test]
async fn a_full_disk_falls_back_to_memory_and_keeps_delivering() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite: Arc<dyn DurableStore> =
        Arc::new(SqliteStore::options(dir.path().join("small.db")).open().unwrap());
    let full = FaultyStore::new(sqlite.clone());
    let errors: Arc<Mutex<Vec<ErrorKind>>> = Arc::default();
    let e2 = errors.clone();
    let config = OutboxConfig::default()
        .store(StoreChoice::Custom(full.clone()))
        .on_error(move |_, e| e2.lock().unwrap().push(e.kind()));
    let bus = Bus::new();
    let mut all = bus.subscribe(Topic::All);
    let outbox = configure_outbox(config, Arc::new(bus.sink())).await.unwrap();
    let mut durable = outbox.watch_durable();
    let id = ActorId::new("big").unwrap();
    let form = outbox.spawn_actor(id.clone(), FormActor).await.unwrap();
    for i in 0..3 {
        assert!(form.send(Msg::Edit(format!("before-{i}"))).await.unwrap().durable);
    }
    full.fill_up();
    for i in 0..5 {
        let s = form.send(Msg::Edit(format!("after-{i}"))).await.expect("commits go to memory now");
        assert!(!s.durable, "held in memory, and the caller can tell");
        assert_eq!(s.version, Version(4 + i), "versions carry on across the switch");
    }
    assert!(!outbox.is_durable() && !*durable.borrow_and_update());
    assert!(!outbox.store().capabilities().durable);
    assert_eq!(*errors.lock().unwrap(), vec![ErrorKind::QuotaExceeded], "on_error called once");
    // Delivered while the store is full: the durable backlog first, then
    // memory's, in order.
    let mut titles = Vec::new();
    for _ in 0..8 {
        titles.push(next(&mut all).await.payload.decode_json::<String>().unwrap());
    }
    let expected: Vec<String> =
        (0..3).map(|i| format!("before-{i}")).chain((0..5).map(|i| format!("after-{i}"))).collect();
    assert_eq!(titles, expected);

    // Room again: the held commits move back (before the next commit, or
    // by the background step if memory's deliveries are still settling).
    full.disarm();
    let saved = form.send(Msg::Save).await.unwrap();
    assert_eq!(saved.version, Version(9));
    tokio::time::timeout(Duration::from_secs(30), durable.wait_for(|d| *d))
        .await
        .expect("durable again in time")
        .unwrap();
    assert!(outbox.is_durable());
    assert_eq!(sqlite.load_state(&id).await.unwrap().unwrap().version, Version(9), "every state in SQLite");
    let types: Vec<String> =
        vec![next(&mut all).await, next(&mut all).await].into_iter().map(|e| e.event_type).collect();
    assert_eq!(types, vec!["FORM_SAVED", "FORM_AUDIT"]);
    outbox.shutdown().await;
    assert!(all.try_recv().is_none(), "nothing delivered twice");
    let s = sqlite.stats().await.unwrap();
    assert_eq!((s.pending, s.dead), (0, 0), "nothing left behind");
    assert_eq!(*errors.lock().unwrap(), vec![ErrorKind::QuotaExceeded]);
}

#[cfg(feature = "sled")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_runs_on_sled_and_restores_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = || OutboxConfig::default().store(StoreChoice::Sled(dir.path().join("app.sled")));
    let bus = Bus::new();
    let mut sub = bus.subscribe(Topic::All);
    {
        let outbox = configure_outbox(config(), Arc::new(bus.sink())).await.unwrap();
        assert!(outbox.is_durable());
        assert_eq!(outbox.store().capabilities().backend, "sled");
        let form = outbox.spawn_actor(ActorId::new("form-1").unwrap(), FormActor).await.unwrap();
        form.send(Msg::Edit("kept".into())).await.unwrap();
        form.send(Msg::Save).await.unwrap();
        assert_eq!(next(&mut sub).await.event_type, "FORM_EDITED", "delivered from sled, in order");
        assert_eq!(next(&mut sub).await.event_type, "FORM_SAVED");
        outbox.shutdown().await;
        // The actor task lets go of the store once `form` is gone; the
        // reopen below waits for sled's directory lock (lock_timeout).
    }
    let outbox = configure_outbox(config(), Arc::new(Bus::new().sink())).await.unwrap();
    let form = outbox.spawn_actor(ActorId::new("form-1").unwrap(), FormActor).await.unwrap();
    assert_eq!(*form.state(), Form::Saved { title: "kept".into() });
    outbox.shutdown().await;
}

/// `StoreChoice::Postgres` through the facade, on the real server
/// `scripts/servers.sh` starts (`OUTBOX_PG_URL`); says it was skipped
/// without one.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_runs_on_postgres() {
    let Ok(url) = std::env::var("OUTBOX_PG_URL") else {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED the_runtime_runs_on_postgres: OUTBOX_PG_URL is not set (start the servers: scripts/servers.sh start)"
        );
        return;
    };
    let bus = Bus::new();
    let mut sub = bus.subscribe(Topic::All);
    let outbox =
        configure_outbox(OutboxConfig::default().store(StoreChoice::Postgres(url)), Arc::new(bus.sink()))
            .await
            .unwrap();
    assert!(outbox.is_durable());
    assert_eq!(outbox.store().capabilities().backend, "postgres");
    // A fresh actor name per run: the default schema outlives the test.
    let name = format!("form-{}", outbox::EventId::new());
    let form = outbox.spawn_actor(ActorId::new(name.clone()).unwrap(), FormActor).await.unwrap();
    form.send(Msg::Edit("on postgres".into())).await.unwrap();
    loop {
        let e = next(&mut sub).await;
        if e.origin.as_str() == name {
            assert_eq!(e.event_type, "FORM_EDITED");
            break;
        }
    }
    outbox.shutdown().await;
}

#[tokio::test]
async fn a_conflict_reloads_the_state_and_handles_the_message_again() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::new();
    let mut all = bus.subscribe(Topic::All);
    let outbox = configure_outbox(sqlite(&dir), Arc::new(bus.sink())).await.unwrap();
    let id = ActorId::new("form-c").unwrap();
    let form = outbox.spawn_actor(id.clone(), FormActor).await.unwrap();
    form.send(Msg::Edit("mine".into())).await.unwrap();
    // Another writer (another process, say) commits the same actor.
    let theirs = serde_json::to_vec(&Form::Draft { title: "theirs".into() }).unwrap();
    outbox.commit(outbox::Commit::state(id.clone(), Version(1), theirs)).await.unwrap();
    // Save runs on the stale draft, conflicts, reloads "theirs", runs again.
    assert_eq!(form.send(Msg::Save).await.unwrap().version, Version(3));
    assert_eq!(*form.state(), Form::Saved { title: "theirs".into() });
    let saved: Vec<Envelope> = vec![next(&mut all).await, next(&mut all).await, next(&mut all).await];
    assert_eq!(saved[1].event_type, "FORM_SAVED");
    assert_eq!(saved[1].payload.decode_json::<String>().unwrap(), "theirs", "only the rerun's events commit");
    outbox.shutdown().await;

    // With no retries the conflict is reported, and the state reloaded.
    let outbox =
        configure_outbox(sqlite(&dir).conflict_retries(0), Arc::new(Bus::new().sink())).await.unwrap();
    let form = outbox.spawn_actor(id.clone(), FormActor).await.unwrap();
    let newer = serde_json::to_vec(&Form::Draft { title: "newer".into() }).unwrap();
    outbox.commit(outbox::Commit::state(id.clone(), Version(3), newer)).await.unwrap();
    let err = form.send(Msg::Edit("lost".into())).await.unwrap_err();
    assert_eq!(err.store_kind(), Some(ErrorKind::Conflict));
    assert_eq!(*form.state(), Form::Draft { title: "newer".into() }, "reloaded for the next message");
    assert_eq!(form.send(Msg::Save).await.unwrap().version, Version(5));
    outbox.shutdown().await;
}

#[tokio::test]
async fn durability_off_keeps_no_events_in_memory() {
    let bus = Bus::new();
    let mut all = bus.subscribe(Topic::All);
    let outbox = configure_outbox(OutboxConfig::default().durability(Durability::Off), Arc::new(bus.sink()))
        .await
        .unwrap();
    let form = outbox.spawn_actor(ActorId::new("off").unwrap(), FormActor).await.unwrap();
    for i in 0..200 {
        form.send(Msg::Edit(format!("{i}"))).await.unwrap();
    }
    for _ in 0..200 {
        next(&mut all).await;
    }
    let s = outbox.store().stats().await.unwrap();
    assert_eq!((s.pending, s.delivered, s.dead), (0, 0, 0), "nothing kept of the events");
    assert_eq!(form.state().as_ref(), &Form::Draft { title: "199".into() });
}

#[test]
fn auto_keeps_its_file_in_the_platform_data_directory() {
    let Some(path) = outbox::default_sqlite_path(Some("todo-app")) else {
        panic!("this machine has a home directory, so a data directory");
    };
    assert!(path.is_absolute(), "{}", path.display());
    assert!(path.ends_with("todo-app/outbox.db"));
    assert_ne!(path.parent().and_then(|p| p.parent()), Some(std::env::current_dir().unwrap().as_path()));
    let by_exe = outbox::default_sqlite_path(None).unwrap();
    assert!(by_exe.ends_with("outbox.db") && by_exe.is_absolute());
}
