//! The sink on a real nats-server with JetStream: headers and subjects,
//! broker-side dedup of a redelivered batch, typed outcomes, typed connect
//! errors. (A forwarder draining a store into a stream is tested through
//! the facade: `outbox/tests/nats_forwarding.rs`.)
//!
//! Needs `OUTBOX_NATS_URL` (`scripts/servers.sh start`); without it each
//! test says SKIPPED and passes.
#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is the test failing

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{nats_url, read_all, unique};
use outbox_core::{ActorId, Envelope, ErrorKind, NewEvent, OrderingKey, Payload, Timestamp};
use outbox_core::{Outcome, Sink};
use outbox_sink_nats::{NatsSink, NatsSinkOptions, Subjects};

fn envelope(event_type: &str, key: &str, n: u32) -> Envelope {
    let e = NewEvent::json(ActorId::new("order-1").unwrap(), event_type, &serde_json::json!({ "n": n }))
        .unwrap()
        .with_key(OrderingKey::new(key).unwrap())
        .with_header("trace", "abc");
    Envelope::committed(e, Timestamp::from_millis(1_700_000_000_000))
}

async fn sink(url: &str, prefix: &str) -> NatsSink {
    let opts = NatsSinkOptions { subjects: Subjects::Prefix(prefix.into()), ..Default::default() };
    NatsSink::connect(url, opts).await.unwrap()
}

#[tokio::test]
async fn publishes_with_msg_id_and_the_broker_drops_a_redelivery() {
    let Some(url) = nats_url("publishes_with_msg_id_and_the_broker_drops_a_redelivery") else { return };
    let name = unique("dedup");
    let sink = sink(&url, &name).await;
    let mut stream =
        sink.ensure_stream(&name, vec![format!("{name}.>")], Duration::from_secs(60)).await.unwrap();
    let batch: Vec<Envelope> = (0..50).map(|n| envelope("order.placed", &format!("k{}", n % 5), n)).collect();
    assert!(sink.publish(&batch).await.iter().all(Outcome::is_ok));
    // A crash between publish and ack: the forwarder publishes again.
    assert!(sink.publish(&batch).await.iter().all(Outcome::is_ok));
    let stored = read_all(&mut stream).await;
    assert_eq!(stored.len(), 50, "the redelivered batch must be dropped by the broker");
    for (m, e) in stored.iter().zip(&batch) {
        assert_eq!(m.msg_id, e.id.to_string());
        assert_eq!(m.subject, format!("{name}.order.placed"));
        assert_eq!(m.key, e.key.as_str());
        assert_eq!(m.payload, e.payload.as_bytes());
    }
    let raw = stream.get_raw_message(stored[0].seq).await.unwrap();
    assert_eq!(raw.headers.get("trace").unwrap().as_str(), "abc");
    assert_eq!(raw.headers.get("Outbox-Origin").unwrap().as_str(), "order-1");
    assert_eq!(raw.headers.get("Outbox-Type").unwrap().as_str(), "order.placed");
    assert_eq!(raw.headers.get("Outbox-Created-At").unwrap().as_str(), "1700000000000");
    sink.jetstream().delete_stream(&name).await.unwrap();
}

#[tokio::test]
async fn outcomes_are_typed() {
    let Some(url) = nats_url("outcomes_are_typed") else { return };
    let name = unique("typed");
    let sink = sink(&url, &name).await;
    let stream_cfg = async_nats::jetstream::stream::Config {
        name: name.clone(),
        subjects: vec![format!("{name}.>")],
        max_message_size: 4096,
        ..Default::default()
    };
    sink.jetstream().create_stream(stream_cfg).await.unwrap();
    let ok = envelope("a", "k", 1);
    // Over the stream's message size: the stream refuses it, forever.
    let mut too_big_for_stream = envelope("a", "k2", 2);
    too_big_for_stream.payload = Payload::bytes(vec![7u8; 8 * 1024]);
    // Over the server's max_payload (1 MiB by default): refused before sending.
    let mut too_big_for_server = envelope("a", "k3", 3);
    too_big_for_server.payload = Payload::bytes(vec![7u8; 2 * 1024 * 1024]);
    // A header value a NATS header cannot hold.
    let mut bad_header = envelope("a", "k4", 4);
    bad_header.headers.insert("x".into(), "line\nbreak".into());
    let out = sink.publish(&[ok, too_big_for_stream, too_big_for_server, bad_header]).await;
    assert!(out[0].is_ok(), "{:?}", out[0]);
    for o in &out[1..] {
        assert!(matches!(o, Outcome::NonRetriable(_)), "{o:?}");
    }

    // No stream takes the subject (yet): retriable, an operator can add it.
    let other = NatsSink::connect(
        &url,
        NatsSinkOptions {
            subjects: Subjects::Prefix(unique("nostream")),
            ack_timeout: Duration::from_secs(2),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let out = other.publish(&[envelope("a", "k", 1)]).await;
    assert!(matches!(out[0], Outcome::Retriable(_)), "{:?}", out[0]);

    // A custom subject that is not a valid publish subject.
    let custom = NatsSink::connect(
        &url,
        NatsSinkOptions {
            subjects: Subjects::Custom(Arc::new(|_| "bad.*.subject".into())),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let out = custom.publish(&[envelope("a", "k", 1)]).await;
    assert!(matches!(out[0], Outcome::NonRetriable(_)), "{:?}", out[0]);
    sink.jetstream().delete_stream(&name).await.unwrap();
}

#[tokio::test]
async fn bad_urls_are_typed_errors() {
    // No server needed: nothing listens on port 1.
    let e = NatsSink::connect("nats://127.0.0.1:1", NatsSinkOptions::default()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    let e = NatsSink::connect("nats://[::1", NatsSinkOptions::default()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
}
