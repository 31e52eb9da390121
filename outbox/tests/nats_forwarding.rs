//! A forwarder draining a store into a real JetStream stream through the
//! NATS sink, in commit order per key, each event once.
//!
//! Needs `OUTBOX_NATS_URL` (`scripts/servers.sh start`); without it the
//! test says SKIPPED.
#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is the test failing

#[path = "../../outbox-sink-nats/tests/common/mod.rs"]
mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::{nats_url, read_all, unique};
use outbox::prelude::*;
use outbox::{ActorId, Commit, ForwarderConfig, NatsSink, NewEvent};
use outbox_core::OrderingKey;
use outbox_forwarder::Forwarder;
use outbox_sink_nats::{NatsSinkOptions, Subjects};

async fn sink(url: &str, prefix: &str) -> NatsSink {
    let opts = NatsSinkOptions { subjects: Subjects::Prefix(prefix.into()), ..Default::default() };
    NatsSink::connect(url, opts).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarder_drains_a_store_into_the_stream() {
    let Some(url) = nats_url("a_forwarder_drains_a_store_into_the_stream") else { return };
    let name = unique("drain");
    let sink = sink(&url, &name).await;
    let mut stream =
        sink.ensure_stream(&name, vec![format!("{name}.>")], Duration::from_secs(60)).await.unwrap();
    let store = Arc::new(outbox_store_memory::MemoryStore::new());
    let mut ids = Vec::new();
    for c in 0..20u32 {
        let events: Vec<NewEvent> = (0..25u32)
            .map(|i| {
                NewEvent::json(ActorId::new("a").unwrap(), "evt", &(c * 25 + i))
                    .unwrap()
                    .with_key(OrderingKey::new(format!("k{}", i % 7)).unwrap())
            })
            .collect();
        ids.extend(events.iter().map(|e| e.id.to_string()));
        store.put_state_and_events(Commit::events_only().events(events)).await.unwrap();
    }
    let mut fwd = Forwarder::new(store.clone(), Arc::new(sink.clone()), ForwarderConfig::default());
    let mut delivered = 0;
    while delivered < ids.len() {
        let r = fwd.run_once().await.unwrap();
        assert!(r.claimed > 0, "the forwarder stalled at {delivered} of {}", ids.len());
        delivered += r.delivered;
    }
    let stored = read_all(&mut stream).await;
    let got: Vec<String> = stored.iter().map(|m| m.msg_id.clone()).collect();
    assert_eq!(got.len(), ids.len());
    assert_eq!(got.iter().collect::<HashSet<_>>().len(), ids.len(), "no event twice");
    // Per key, the stream holds the events in commit order.
    for k in 0..7 {
        let key = format!("k{k}");
        let committed: Vec<&String> =
            ids.iter().enumerate().filter(|(n, _)| n % 25 % 7 == k).map(|(_, id)| id).collect();
        let in_stream: Vec<&String> = stored.iter().filter(|m| m.key == key).map(|m| &m.msg_id).collect();
        assert_eq!(in_stream, committed, "key {key} out of order");
    }
    sink.jetstream().delete_stream(&name).await.unwrap();
}
