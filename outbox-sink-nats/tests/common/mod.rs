//! Helpers shared by the NATS tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::jetstream::stream::Stream;

/// `OUTBOX_NATS_URL`, or `None` after saying SKIPPED.
pub fn nats_url(test: &str) -> Option<String> {
    outbox_testkit::required(Some("OUTBOX_NATS_URL"), test).then(|| std::env::var("OUTBOX_NATS_URL").unwrap())
}

/// `OUTBOX_PG_URL`, or `None` after saying SKIPPED.
pub fn pg_url(test: &str) -> Option<String> {
    outbox_testkit::required(Some("OUTBOX_PG_URL"), test).then(|| std::env::var("OUTBOX_PG_URL").unwrap())
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A name no other test run uses (letters, digits, `_`).
pub fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{tag}_{}_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed), nanos % 1_000_000_007)
}

/// One stored message: stream sequence, subject, `Nats-Msg-Id`, `Outbox-Key`, payload.
#[derive(Debug, Clone)]
pub struct Stored {
    pub seq: u64,
    pub subject: String,
    pub msg_id: String,
    pub key: String,
    pub payload: Vec<u8>,
}

/// Every message in `stream`, in stream order.
pub async fn read_all(stream: &mut Stream) -> Vec<Stored> {
    let info = stream.info().await.unwrap().clone();
    let mut out = Vec::new();
    for seq in info.state.first_sequence..=info.state.last_sequence {
        if info.state.messages == 0 {
            break;
        }
        let m = stream.get_raw_message(seq).await.unwrap();
        let h = |n: &str| m.headers.get(n).map(|v| v.as_str().to_owned()).unwrap_or_default();
        out.push(Stored {
            seq: m.sequence,
            subject: m.subject.to_string(),
            msg_id: h("Nats-Msg-Id"),
            key: h("Outbox-Key"),
            payload: m.payload.to_vec(),
        });
    }
    out
}
