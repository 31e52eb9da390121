//! The downstream service the HTTP sink posts to: it applies each event
//! once (`once_per_event`) to an activity count kept in its own SQLite
//! file, in the same commit as its inbox mark.

use std::collections::BTreeMap;
use std::sync::Arc;

use outbox::consumer::{Consumer, Delivery, Handler, HandlerError, Tx, once_per_event};
use outbox::{
    ActorId, ConsumerId, DurableStore, Envelope, EventId, NewEvent, OrderingKey, Payload, Timestamp,
    async_trait,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// What the receiver keeps: how many todos were added and completed.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Activity {
    pub(crate) added: u64,
    pub(crate) completed: u64,
}

/// The handler `once_per_event` wraps: its effect (the new count) commits
/// with the inbox mark, so a redelivered event changes nothing.
struct CountActivity(ActorId);

#[async_trait]
impl Handler for CountActivity {
    async fn handle(&self, event: &Envelope, tx: &mut Tx<'_>) -> Result<(), HandlerError> {
        let mut activity: Activity = tx.load(&self.0).await?;
        match event.event_type.as_str() {
            "TODO_ADDED" => activity.added += 1,
            "TODO_COMPLETED" => activity.completed += 1,
            other => return Err(HandlerError::NonRetriable(format!("unknown event type {other:?}"))),
        }
        tx.save(&activity)
    }
}

/// The receiver: the consumer, its store, and a count of applied events.
pub(crate) struct Receiver {
    consumer: Consumer<CountActivity>,
    store: Arc<dyn DurableStore>,
    activity_id: ActorId,
    applied: watch::Sender<u64>,
}

impl Receiver {
    pub(crate) fn new(store: Arc<dyn DurableStore>) -> outbox::Result<Self> {
        let activity_id = ActorId::new("activity")?;
        let consumer = once_per_event(
            store.clone(),
            ConsumerId::new("activity-feed")?,
            CountActivity(activity_id.clone()),
        );
        Ok(Receiver { consumer, store, activity_id, applied: watch::Sender::new(0) })
    }

    /// Events applied (not duplicates) since this process started.
    pub(crate) fn applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    pub(crate) async fn activity(&self) -> outbox::Result<Activity> {
        let snapshot = self.store.load_state(&self.activity_id).await?;
        Ok(snapshot.and_then(|s| serde_json::from_slice(&s.bytes).ok()).unwrap_or_default())
    }

    pub(crate) async fn deliver(&self, event: &Envelope) -> Result<Delivery, HandlerError> {
        let delivery = self.consumer.deliver(event).await?;
        if delivery == Delivery::Applied {
            self.applied.send_modify(|n| *n += 1);
        }
        Ok(delivery)
    }
}

/// One event as the HTTP sink posts it.
#[derive(Deserialize)]
pub(crate) struct WireEvent {
    id: String,
    origin: String,
    key: Option<String>,
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default = "one")]
    schema_version: u32,
    #[serde(default)]
    created_at: i64,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    payload: serde_json::Value,
}

fn one() -> u32 {
    1
}

impl WireEvent {
    pub(crate) fn into_envelope(self) -> outbox::Result<Envelope> {
        let origin = ActorId::new(self.origin)?;
        let mut e = NewEvent::new(origin, self.event_type, Payload::json(&self.payload)?)
            .with_id(self.id.parse::<EventId>()?)
            .with_schema_version(self.schema_version);
        if let Some(k) = self.key {
            e = e.with_key(OrderingKey::new(k)?);
        }
        e.headers = self.headers;
        Ok(Envelope::committed(e, Timestamp::from_millis(self.created_at)))
    }
}
