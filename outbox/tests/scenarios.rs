//! The required scenarios, with real child processes killed by SIGKILL on
//! a real SQLite file.
//!
//! 1. Save while the sink is offline, kill the process, restart with the
//!    sink online: the actor's state is "saved" and `FORM_SAVED` reaches
//!    every listener's effect exactly once.
//! 2. Kill the process in the middle of a handler (draft changed, event
//!    emitted, not committed): after restart neither exists; sending the
//!    message again produces both, once.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use outbox::consumer::{Handler, HandlerError, Tx, once_per_event};
use outbox::prelude::*;
use outbox::{
    Actor, ActorId, Bus, ConsumerId, Context, Envelope, ForwarderConfig, OutboxConfig, Outcome, Sink,
    StoreChoice, Topic, configure_outbox,
};
use outbox_testkit::crash;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
enum Form {
    #[default]
    Editing,
    Saved,
}

struct FormActor {
    /// Hang inside the handler after changing the draft and emitting.
    hang: bool,
}

#[outbox::async_trait]
impl Actor for FormActor {
    type State = Form;
    type Message = ();
    type Error = std::convert::Infallible;

    async fn handle(&mut self, state: &mut Form, _msg: (), ctx: &mut Context) -> Result<(), Self::Error> {
        *state = Form::Saved;
        let form = ctx.actor_id().as_str().to_owned();
        ctx.emit("FORM_SAVED", &serde_json::json!({ "form": form }));
        if self.hang {
            println!("IN_HANDLER");
            loop {
                std::thread::park();
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct OfflineSink;

#[outbox::consumer::async_trait]
impl Sink for OfflineSink {
    async fn publish(&self, batch: &[Envelope]) -> Vec<Outcome> {
        batch.iter().map(|_| Outcome::Retriable("offline".into())).collect()
    }
}

fn form_id() -> ActorId {
    ActorId::new("form-1").expect("id")
}

/// A kill can land while the child's forwarder holds the event under a
/// lease; the restarted forwarder gets it once that lease ends. A 2 s lease
/// (the default is 30 s) keeps that wait well inside the tests' timeouts.
fn forwarder() -> ForwarderConfig {
    ForwarderConfig::default().lease(Duration::from_secs(2))
}

fn config(path: &Path) -> OutboxConfig {
    OutboxConfig::default().forwarder(forwarder()).store(StoreChoice::Sqlite(path.to_owned()))
}

/// Child: `save-offline` saves with the sink offline and waits to be
/// killed; `hang` hangs inside the handler.
fn child(mode: &str, path: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    rt.block_on(async {
        let outbox = configure_outbox(config(path), Arc::new(OfflineSink)).await.expect("outbox");
        let form = outbox.spawn_actor(form_id(), FormActor { hang: mode == "hang" }).await.expect("actor");
        if mode == "save-offline" {
            form.send(()).await.expect("saved");
            println!("SAVED");
        } else {
            let _ = form.send(()).await;
        }
        std::future::pending::<()>().await;
    });
}

fn run_child_until(mode: &str, path: &Path, line: &str) {
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .env("OUTBOX_SCENARIO_CHILD", format!("{mode}:{}", path.display()))
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut got = String::new();
    out.read_line(&mut got).expect("read");
    assert_eq!(got.trim(), line, "the child reached its point");
    child.kill().expect("SIGKILL");
    assert!(child.wait().expect("wait").code().is_none(), "killed, not exited");
}

struct Listener(Arc<AtomicUsize>);

#[outbox::consumer::async_trait]
impl Handler for Listener {
    async fn handle(&self, _e: &Envelope, _tx: &mut Tx<'_>) -> Result<(), HandlerError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

async fn save_offline_kill_restart_online() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("form.db");
    run_child_until("save-offline", &path, "SAVED");

    let bus = Bus::new();
    let listeners: Vec<_> = ["mailer", "search"]
        .into_iter()
        .map(|name| {
            let effects = Arc::new(AtomicUsize::new(0));
            let store: Arc<dyn DurableStore> = Arc::new(outbox::MemoryStore::new());
            let c = once_per_event(store, ConsumerId::new(name).expect("id"), Listener(effects.clone()));
            (bus.subscribe(Topic::EventType("FORM_SAVED".into())), c, effects)
        })
        .collect();
    let outbox = configure_outbox(config(&path), Arc::new(bus.sink())).await.expect("restart");
    let form = outbox.spawn_actor(form_id(), FormActor { hang: false }).await.expect("actor");
    assert_eq!(*form.state(), Form::Saved, "the state survived the kill");
    outbox.notify_online();
    for (mut sub, consumer, effects) in listeners {
        let e =
            tokio::time::timeout(Duration::from_secs(30), sub.recv()).await.expect("delivered").expect("bus");
        assert_eq!(e.event_type, "FORM_SAVED");
        consumer.deliver(&e).await.expect("handled");
        // A redelivery (what a crash before the ack causes) has no effect.
        consumer.deliver(&e).await.expect("handled");
        assert_eq!(effects.load(Ordering::SeqCst), 1, "{}: effect exactly once", consumer.id());
    }
    // The bus has it before the forwarder's ack is written: wait (bounded)
    // for the ack.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let s = loop {
        let s = outbox.store().stats().await.expect("stats");
        if s.delivered > 0 || tokio::time::Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!((s.pending, s.delivered), (0, 1), "one FORM_SAVED, delivered");
    outbox.shutdown().await;
}

async fn kill_mid_handler_leaves_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("form.db");
    run_child_until("hang", &path, "IN_HANDLER");

    let outbox = configure_outbox(config(&path), Arc::new(Bus::new().sink())).await.expect("restart");
    let store = outbox.store();
    assert_eq!(store.load_state(&form_id()).await.expect("load"), None, "no state change");
    assert_eq!(store.stats().await.expect("stats").pending, 0, "no event");
    outbox.shutdown().await;

    let bus = Bus::new();
    let mut saved = bus.subscribe(Topic::EventType("FORM_SAVED".into()));
    let outbox = configure_outbox(config(&path), Arc::new(bus.sink())).await.expect("restart");
    let form = outbox.spawn_actor(form_id(), FormActor { hang: false }).await.expect("actor");
    form.send(()).await.expect("saved this time");
    assert_eq!(*form.state(), Form::Saved);
    tokio::time::timeout(Duration::from_secs(30), saved.recv()).await.expect("delivered").expect("bus");
    assert!(saved.try_recv().is_none(), "once");
    let s = outbox.store().stats().await.expect("stats");
    assert_eq!(s.pending + s.delivered, 1, "exactly one FORM_SAVED in the outbox");
    outbox.shutdown().await;
}

const NAME: &str = "scenarios";

fn main() {
    match crash::role(NAME, "OUTBOX_SCENARIO_CHILD") {
        crash::Role::Child(spec) => {
            let (mode, path) = spec.split_once(':').expect("mode:path");
            child(mode, Path::new(path));
        }
        crash::Role::Skip => {}
        crash::Role::Parent => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("rt");
            rt.block_on(save_offline_kill_restart_online());
            println!("save_offline_kill_restart_online ... ok");
            rt.block_on(kill_mid_handler_leaves_nothing());
            println!("kill_mid_handler_leaves_nothing ... ok");
            println!("{NAME}: 2 passed, 0 failed");
        }
    }
}
