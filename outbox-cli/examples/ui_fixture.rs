//! The web view's browser test (`scripts/ui-e2e.sh`) runs this: a live
//! application on a SQLite file whose forwarder delivers to a sink that
//! refuses the first attempt of every `PAYMENT_CAPTURED` event for good
//! (`NonRetriable`: dead-lettered, its key parked) and accepts everything
//! else, so an event requeued from `outbox ui` is delivered.
//!
//! Usage: `cargo run -p outbox-cli --example ui_fixture -- FILE`. Commits
//! the events, waits until they settled (three delivered, one dead, one
//! parked behind it, two scheduled an hour ahead), prints `ready`, and
//! keeps delivering until killed.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox::{
    ActorId, Envelope, EventId, ForwarderConfig, OutboxConfig, Outcome, Sink, StoreChoice, configure_outbox,
};
use outbox_core::{Clock, Commit, NewEvent, SystemClock};

/// Refuses each `PAYMENT_CAPTURED` event once.
#[derive(Debug, Default)]
struct RefuseFirstPayment {
    refused: Mutex<HashSet<EventId>>,
}

#[outbox::consumer::async_trait]
impl Sink for RefuseFirstPayment {
    async fn publish(&self, batch: &[Envelope]) -> Vec<Outcome> {
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        batch
            .iter()
            .map(|e| {
                if e.event_type == "PAYMENT_CAPTURED" && refused.insert(e.id) {
                    Outcome::NonRetriable(
                        "422 Unprocessable Entity: card_declined (the provider refused it)".into(),
                    )
                } else {
                    Outcome::Ok
                }
            })
            .collect()
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: ui_fixture FILE")?;
    let config = OutboxConfig::default()
        .store(StoreChoice::Sqlite(path.into()))
        .forwarder(ForwarderConfig::default())
        .flush_interval(Duration::from_millis(50));
    let outbox = configure_outbox(config, Arc::new(RefuseFirstPayment::default())).await?;
    let store = outbox.store();
    let actor = |s: &str| ActorId::new(s);
    let later = SystemClock.now().saturating_add(Duration::from_secs(3600));
    let events = vec![
        NewEvent::json(actor("cart-3")?, "ORDER_PLACED", &serde_json::json!({ "cart": 3, "total": 42.5 }))?,
        NewEvent::json(actor("cart-5")?, "ORDER_PLACED", &serde_json::json!({ "cart": 5, "total": 18 }))?,
        NewEvent::json(actor("mailer")?, "EMAIL_REQUESTED", &serde_json::json!({ "to": "ada@example.com" }))?,
        NewEvent::json(
            actor("cart-7")?,
            "PAYMENT_CAPTURED",
            &serde_json::json!({ "cart": 7, "amount": 99.9 }),
        )?,
        NewEvent::json(
            actor("cart-7")?,
            "ORDER_SHIPPED",
            &serde_json::json!({ "cart": 7, "carrier": "DHL" }),
        )?,
        NewEvent::json(actor("report")?, "REPORT_DUE", &serde_json::json!({ "week": 49 }))?.not_before(later),
        NewEvent::json(actor("report")?, "REPORT_SENT", &serde_json::json!({ "week": 49 }))?
            .not_before(later),
    ];
    store.put_state_and_events(Commit::events_only().events(events)).await?;
    outbox.notify_online();
    for _ in 0..600 {
        let s = store.stats().await?;
        if (s.delivered, s.dead, s.pending) == (3, 1, 3) {
            println!("ready");
            loop {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("the events did not settle within 30 s".into())
}
