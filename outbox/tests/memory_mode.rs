//! `Durability::Memory`: works, warns once through `tracing`, reports
//! `outbox.durable = 0`. (Its own test binary: the warning is once per
//! process.)

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use outbox::{Bus, Durability, OutboxConfig, Topic, configure_outbox};
use outbox_core::{ActorId, Commit, NewEvent, Version};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};

struct CountWarnings(Arc<AtomicUsize>);

impl<S: tracing::Subscriber> Layer<S> for CountWarnings {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        if *event.metadata().level() == tracing::Level::WARN && event.metadata().target() == "outbox" {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn memory_works_warns_once_and_reports_not_durable() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _m = metrics::set_default_local_recorder(&recorder);
    let warnings = Arc::new(AtomicUsize::new(0));
    let _t = tracing::subscriber::set_default(
        tracing_subscriber::registry().with(CountWarnings(warnings.clone())),
    );

    let bus = Bus::new();
    let mut all = bus.subscribe(Topic::All);
    let a = configure_outbox(OutboxConfig::default().durability(Durability::Memory), Arc::new(bus.sink()))
        .await
        .unwrap();
    let b =
        configure_outbox(OutboxConfig::default().durability(Durability::Memory), Arc::new(Bus::new().sink()))
            .await
            .unwrap();
    assert_eq!(warnings.load(Ordering::SeqCst), 1, "warned once, not per outbox");
    assert!(!a.is_durable() && !b.is_durable());

    let actor = ActorId::new("m").unwrap();
    let e = NewEvent::json(actor.clone(), "T", &1).unwrap();
    a.commit(Commit::state(actor, Version::NONE, b"s".to_vec()).event(e.clone())).await.unwrap();
    assert_eq!(all.recv().await.unwrap().id, e.id, "it works: committed and delivered");
    let durable =
        snapshotter.snapshot().into_vec().into_iter().find(|(k, ..)| k.key().name() == "outbox.durable");
    assert!(matches!(durable, Some((_, _, _, DebugValue::Gauge(g))) if g.into_inner() == 0.0), "{durable:?}");
    a.shutdown().await;
    b.shutdown().await;
}
