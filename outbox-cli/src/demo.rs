//! `outbox demo`: a form saved while the sink is offline, a crash, a
//! restart, and delivery exactly once in effect.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use outbox::consumer::{Delivery, Handler, HandlerError, Tx, once_per_event};
use outbox::prelude::*;
use outbox::{
    Actor, ActorId, Bus, ConsumerId, Context, Envelope, ForwarderConfig, OutboxConfig, Outcome, Sink,
    StoreChoice, Topic, configure_outbox,
};
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
enum FormMsg {
    Edit(String),
    Save,
}

/// The form's own refusal.
#[derive(Debug, thiserror::Error)]
#[error("nothing to save")]
struct NothingToSave;

struct FormActor;

#[outbox::async_trait]
impl Actor for FormActor {
    type State = Form;
    type Message = FormMsg;
    type Error = NothingToSave;

    async fn handle(
        &mut self,
        state: &mut Form,
        msg: FormMsg,
        ctx: &mut Context,
    ) -> Result<(), NothingToSave> {
        match msg {
            FormMsg::Edit(title) => {
                *state = Form::Draft { title };
                Ok(())
            }
            FormMsg::Save => {
                let Form::Draft { title } = state.clone() else { return Err(NothingToSave) };
                *state = Form::Saved { title: title.clone() };
                ctx.emit("FORM_SAVED", &serde_json::json!({ "title": title }));
                ctx.emit("EMAIL_REQUESTED", &serde_json::json!({ "to": "owner@example.com" }));
                Ok(())
            }
        }
    }
}

#[derive(Debug)]
struct OfflineSink;

#[outbox::consumer::async_trait]
impl Sink for OfflineSink {
    async fn publish(&self, batch: &[Envelope]) -> Vec<Outcome> {
        batch.iter().map(|_| Outcome::Retriable("network unreachable".into())).collect()
    }
}

/// A listener that prints what it does, once per event.
struct Print(&'static str);

#[outbox::consumer::async_trait]
impl Handler for Print {
    async fn handle(&self, e: &Envelope, tx: &mut Tx<'_>) -> Result<(), HandlerError> {
        println!("   {:<8} handled {:<16} id={} key={}", self.0, e.event_type, e.id, tx.idempotency_key());
        Ok(())
    }
}

fn form_id() -> ActorId {
    ActorId::new("form-42").expect("valid id")
}

/// A short lease: the offline child is aborted, possibly while its
/// forwarder holds the events leased, and the restart must not wait out
/// the 30 s default before redelivering them.
fn forwarder() -> ForwarderConfig {
    ForwarderConfig::default().lease(Duration::from_secs(2))
}

fn config(path: &Path) -> OutboxConfig {
    OutboxConfig::default()
        .forwarder(forwarder())
        .store(StoreChoice::Sqlite(path.to_owned()))
        .flush_interval(Duration::from_millis(50))
}

/// Runs in a child process: saves with the sink offline, shows what is
/// pending, then crashes.
pub(crate) async fn offline_phase(path: &Path) -> outbox::Result<()> {
    let outbox = configure_outbox(config(path), Arc::new(OfflineSink)).await?;
    let form = outbox.spawn_actor(form_id(), FormActor).await?;
    form.send(FormMsg::Edit("Quarterly report".into())).await.map_err(to_error)?;
    form.send(FormMsg::Save).await.map_err(to_error)?;
    println!("   state of {}: {:?}   (committed together with its events)", form.id(), form.state());
    let pending = outbox.store().list_pending(10).await?;
    println!("   pending in the outbox, the sink being offline:");
    for e in &pending {
        println!("     - {:<16} id={}", e.event_type, e.id);
    }
    println!("   ... and now the process crashes (abort, no clean shutdown)");
    std::process::abort();
}

fn to_error(e: outbox::ActorError<NothingToSave>) -> outbox::Error {
    match e {
        outbox::ActorError::Store(e) => e,
        other => outbox::Error::internal(other.to_string()),
    }
}

pub(crate) fn demo(rt: &tokio::runtime::Runtime, file: Option<PathBuf>) -> outbox::Result<()> {
    let tmp;
    let tmp_made = file.is_none();
    let path = match file {
        Some(p) => p,
        None => {
            tmp = std::env::temp_dir().join(format!("outbox-demo-{}", std::process::id()));
            std::fs::create_dir_all(&tmp).map_err(|e| outbox::Error::internal(e.to_string()))?;
            tmp.join("demo.db")
        }
    };
    println!("outbox demo: one atomic commit of state + events, delivered exactly once in effect.");
    println!("SQLite file: {}\n", path.display());

    println!("1. A form is saved while the network is down (in a child process):");
    let exe = std::env::current_exe().map_err(|e| outbox::Error::internal(e.to_string()))?;
    let status = Command::new(exe)
        .args(["demo", "--phase", "offline", "--file"])
        .arg(&path)
        .stdout(Stdio::inherit())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| outbox::Error::internal(e.to_string()))?;
    println!("   child process ended: {status}\n");

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    if metrics::set_global_recorder(recorder).is_err() {
        return Err(outbox::Error::internal("a metrics recorder is already installed"));
    }
    let result = rt.block_on(online_phase(&path, &snapshotter));
    if let Some(dir) = path.parent().filter(|_| tmp_made) {
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

async fn online_phase(path: &Path, snapshotter: &Snapshotter) -> outbox::Result<()> {
    println!("2. Restart, network back:");
    let bus = Bus::new();
    let mut subs = Vec::new();
    for name in ["mailer", "search"] {
        let store: Arc<dyn DurableStore> = Arc::new(outbox::MemoryStore::unannounced(outbox::system_clock()));
        let consumer = once_per_event(store, ConsumerId::new(name)?, Print(name));
        subs.push((bus.subscribe(Topic::All), consumer));
    }
    let outbox = configure_outbox(config(path), Arc::new(bus.sink())).await?;
    let form = outbox.spawn_actor(form_id(), FormActor).await?;
    println!("   state of {} restored from disk: {:?}", form.id(), form.state());
    outbox.notify_online();
    println!("   delivering; each listener handles each event once:");
    for (sub, consumer) in &mut subs {
        for _ in 0..2 {
            let e = tokio::time::timeout(Duration::from_secs(30), sub.recv())
                .await
                .map_err(|_| outbox::Error::internal("nothing delivered within 30 s"))?
                .ok_or_else(|| outbox::Error::internal("bus closed"))?;
            consumer.deliver(&e).await.map_err(|e| outbox::Error::internal(e.to_string()))?;
            // The same event again, as a lost ack would cause: no effect.
            let again = consumer.deliver(&e).await.map_err(|e| outbox::Error::internal(e.to_string()))?;
            assert_eq!(again, Delivery::Duplicate);
        }
    }
    println!(
        "   (each event was also redelivered once more on purpose: both listeners dropped the duplicate)\n"
    );
    let stats = outbox.store().stats().await?;
    outbox.shutdown().await;
    println!("3. Afterwards:");
    println!("   outbox: {} pending, {} delivered, {} dead", stats.pending, stats.delivered, stats.dead);
    println!("   metrics:");
    let mut lines: Vec<String> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, ..)| k.key().name().starts_with("outbox."))
        .map(|(k, _, _, v)| {
            let labels: Vec<String> =
                k.key().labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
            let name = if labels.is_empty() {
                k.key().name().to_owned()
            } else {
                format!("{}{{{}}}", k.key().name(), labels.join(","))
            };
            let v = match v {
                DebugValue::Counter(c) => c.to_string(),
                DebugValue::Gauge(g) => g.into_inner().to_string(),
                DebugValue::Histogram(h) => format!("{} samples", h.len()),
            };
            format!("     {name} = {v}")
        })
        .collect();
    lines.sort();
    lines.dedup();
    for l in lines {
        println!("{l}");
    }
    Ok(())
}
