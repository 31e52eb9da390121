//! Exactly-once effects from at-least-once delivery.
#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is the test failing

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox_consumer::{
    Delivery, Handler, HandlerError, IdempotencyKey, InboxConfig, Tx, async_trait, once_per_event,
};
use outbox_core::prelude::*;
use outbox_core::{
    ActorId, Clock, Commit, ConsumerId, Envelope, EventId, ManualClock, NewEvent, RetryPolicy, SharedClock,
    SystemClock, Timestamp, Version,
};
use outbox_forwarder::{ChannelSink, Forwarder, ForwarderConfig, Outcome, Sink};
use outbox_store_memory::MemoryStore;
use outbox_testkit::{FaultMode, FaultyStore};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

/// The consumer's own state: a total and, per key, the values in the order
/// they were applied.
#[derive(Default, Serialize, Deserialize, PartialEq, Debug, Clone)]
struct Ledger {
    total: i64,
    applied: u64,
    per_key: BTreeMap<String, Vec<i64>>,
}

/// Adds each event's `x` to the ledger and emits a receipt event.
struct Accumulate {
    me: ActorId,
    yield_inside: bool,
}

#[async_trait]
impl Handler for Accumulate {
    async fn handle(&self, event: &Envelope, tx: &mut Tx<'_>) -> Result<(), HandlerError> {
        if event.event_type != "ADD" {
            return Ok(()); // not ours: marked, no effect
        }
        let body: serde_json::Value = event.payload.decode_json().map_err(HandlerError::Store)?;
        let x = body["x"].as_i64().ok_or_else(|| HandlerError::NonRetriable("no x".into()))?;
        let mut ledger: Ledger = tx.load(&self.me).await?;
        if self.yield_inside {
            tokio::task::yield_now().await;
        }
        ledger.total += x;
        ledger.applied += 1;
        ledger.per_key.entry(event.key.to_string()).or_default().push(x);
        tx.save(&ledger)?;
        tx.emit(NewEvent::json(self.me.clone(), "RECEIPT", &x).map_err(HandlerError::Store)?);
        Ok(())
    }
}

fn ledger_of(store: &Arc<dyn DurableStore>, me: &ActorId) -> Ledger {
    let s = futures::executor::block_on(store.load_state(me)).unwrap();
    s.map(|s| serde_json::from_slice(&s.bytes).unwrap()).unwrap_or_default()
}

fn envelope(key: &str, x: i64) -> Envelope {
    let e = NewEvent::json(ActorId::new(key).unwrap(), "ADD", &serde_json::json!({ "x": x })).unwrap();
    Envelope::committed(e, Timestamp::EPOCH)
}

fn consumer_id() -> ConsumerId {
    ConsumerId::new("ledger").unwrap()
}

#[tokio::test]
async fn duplicates_are_applied_once() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let _g = metrics::set_default_local_recorder(&recorder);

    let store: Arc<dyn DurableStore> = Arc::new(MemoryStore::new());
    let me = ActorId::new("ledger-state").unwrap();
    let c = once_per_event(store.clone(), consumer_id(), Accumulate { me: me.clone(), yield_inside: false });
    let events: Vec<Envelope> = (1..=5).map(|x| envelope("k", x)).collect();
    // Each delivered 1..=3 times, interleaved with the others.
    let order = [0, 1, 0, 2, 1, 3, 0, 4, 3, 4, 4, 2];
    let mut results = Vec::new();
    for i in order {
        results.push(c.deliver(&events[i]).await.unwrap());
    }
    assert_eq!(results.iter().filter(|r| **r == Delivery::Applied).count(), 5);
    assert_eq!(results.iter().filter(|r| **r == Delivery::Duplicate).count(), 7);
    let l = ledger_of(&store, &me);
    assert_eq!((l.total, l.applied), (15, 5));
    assert_eq!(l.per_key["k"], vec![1, 2, 3, 4, 5]);
    assert_eq!(store.stats().await.unwrap().pending, 5, "one receipt per applied event");
    // A snapshot drains the counters: one for all.
    let values = snap.snapshot().into_vec();
    let counter = |name: &str| values.iter().find(|(k, ..)| k.key().name() == name).map(|(.., v)| v);
    let dups = counter(outbox_consumer::DUPLICATES);
    assert!(matches!(dups, Some(DebugValue::Counter(7))), "{dups:?}");
    let applied = counter(outbox_consumer::APPLIED);
    assert!(matches!(applied, Some(DebugValue::Counter(5))), "{applied:?}");
    let expired = counter(outbox_consumer::EXPIRED);
    assert!(matches!(expired, Some(DebugValue::Counter(0))), "present at 0: {expired:?}");
}

/// Claims what `store` has pending (the events a consumer emitted).
async fn pending_events(store: &Arc<dyn DurableStore>) -> Vec<Envelope> {
    let grant = store.acquire_leadership("test", Duration::from_secs(10)).await.unwrap().unwrap();
    store.claim(&grant, outbox_core::ClaimRequest::new(100, Duration::from_secs(10))).await.unwrap()
}

#[tokio::test]
async fn emitted_events_continue_the_handled_events_trace() {
    use outbox_core::event::{TRACEPARENT, TraceParent};
    let store: Arc<dyn DurableStore> = Arc::new(MemoryStore::new());
    let me = ActorId::new("ledger-state").unwrap();
    let c = once_per_event(store.clone(), consumer_id(), Accumulate { me: me.clone(), yield_inside: true });
    let parent = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
    let mut traced = envelope("k", 1);
    traced.headers.insert(TRACEPARENT.into(), parent.to_string());
    let mut malformed = envelope("k", 2);
    malformed.headers.insert(TRACEPARENT.into(), "00-not-a-trace-01".into());
    assert_eq!(c.deliver(&traced).await.unwrap(), Delivery::Applied);
    assert_eq!(c.deliver(&malformed).await.unwrap(), Delivery::Applied);
    let receipts = pending_events(&store).await;
    assert_eq!(receipts.len(), 2);
    let first = receipts[0].trace_parent().expect("a receipt carries a traceparent");
    assert_eq!(first.trace_id(), parent.trace_id(), "the same trace as the handled event");
    assert_ne!(first.span_id(), parent.span_id(), "a span of its own");
    let second = receipts[1].trace_parent().expect("a receipt carries a traceparent");
    assert_ne!(second.trace_id(), parent.trace_id(), "a malformed header: a new trace");
    assert_eq!(TraceParent::current(), None, "set only while the handler runs");
}

#[tokio::test]
async fn racing_deliveries_of_one_event_apply_it_once() {
    let store: Arc<dyn DurableStore> = Arc::new(MemoryStore::new());
    let me = ActorId::new("ledger-state").unwrap();
    let c = once_per_event(store.clone(), consumer_id(), Accumulate { me: me.clone(), yield_inside: true });
    let e = envelope("k", 7);
    // Both pass the inbox check before either commits; the commit decides.
    let (a, b) = tokio::join!(c.deliver(&e), c.deliver(&e));
    let mut got = vec![a.unwrap(), b.unwrap()];
    got.sort_by_key(|d| format!("{d:?}"));
    assert_eq!(got, vec![Delivery::Applied, Delivery::Duplicate]);
    assert_eq!(ledger_of(&store, &me).total, 7);
}

#[tokio::test]
async fn a_failed_commit_leaves_neither_effect_nor_mark() {
    let inner: Arc<dyn DurableStore> = Arc::new(MemoryStore::new());
    let faulty = FaultyStore::new(inner.clone());
    let me = ActorId::new("ledger-state").unwrap();
    let store: Arc<dyn DurableStore> = faulty.clone();
    let c = once_per_event(store, consumer_id(), Accumulate { me: me.clone(), yield_inside: false });
    let e = envelope("k", 3);
    // Ops: is_processed, the watermark read, the handler's load, then the
    // commit (4th), which fails.
    faulty.fail_nth(4, FaultMode::Before);
    assert!(matches!(c.deliver(&e).await, Err(HandlerError::Store(_))));
    assert_eq!(ledger_of(&inner, &me), Ledger::default(), "no state change");
    assert!(!inner.is_processed(&consumer_id(), &e.origin, e.id).await.unwrap(), "no mark");
    assert_eq!(inner.stats().await.unwrap().pending, 0, "no emitted event");
    assert_eq!(c.deliver(&e).await.unwrap(), Delivery::Applied, "redelivery applies it");
    assert_eq!(c.deliver(&e).await.unwrap(), Delivery::Duplicate);
    assert_eq!(ledger_of(&inner, &me).total, 3);
}

/// A "remote system" that deduplicates on the idempotency key.
#[derive(Default)]
struct Remote {
    calls: Mutex<Vec<IdempotencyKey>>,
}

struct CallRemote(Arc<Remote>);

#[async_trait]
impl Handler for CallRemote {
    async fn handle(&self, _event: &Envelope, tx: &mut Tx<'_>) -> Result<(), HandlerError> {
        self.0.calls.lock().unwrap().push(tx.idempotency_key().clone());
        Ok(())
    }
}

#[tokio::test]
async fn outside_effects_are_at_least_once_with_a_stable_idempotency_key() {
    let inner: Arc<dyn DurableStore> = Arc::new(MemoryStore::new());
    let faulty = FaultyStore::new(inner.clone());
    let store: Arc<dyn DurableStore> = faulty.clone();
    let remote = Arc::new(Remote::default());
    let c = once_per_event(store, consumer_id(), CallRemote(remote.clone()));
    let e = envelope("k", 1);
    // The call happens, then the mark's commit (op 3, after is_processed
    // and the watermark read) fails, as if the process died in between:
    // the weaker, honest guarantee.
    faulty.fail_nth(3, FaultMode::Before);
    assert!(c.deliver(&e).await.is_err());
    assert_eq!(c.deliver(&e).await.unwrap(), Delivery::Applied);
    assert_eq!(c.deliver(&e).await.unwrap(), Delivery::Duplicate, "once marked, never again");
    let calls = remote.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2, "the outside effect ran twice (at least once)...");
    assert_eq!(calls[0], calls[1], "...with the same key both times, for the remote to deduplicate");
    assert_eq!(calls[0].to_string(), format!("k/{}", e.id));
}

#[test]
fn retention_is_derived_from_the_forwarder_config() {
    let fwd = ForwarderConfig::default();
    let inbox = InboxConfig::for_delivery(&fwd.retry, fwd.lease, fwd.retention);
    assert_eq!(inbox.retention, Duration::MAX, "retries without bound: marks are kept for ever");
    let bounded = ForwarderConfig::default().retry(RetryPolicy::default().max_attempts(10));
    let horizon = bounded.retry.horizon(bounded.lease).unwrap();
    assert_eq!(
        InboxConfig::for_delivery(&bounded.retry, bounded.lease, bounded.retention).retention,
        horizon + bounded.retention.unwrap()
    );
    let short = bounded.retention(None);
    assert_eq!(InboxConfig::for_delivery(&short.retry, short.lease, short.retention).retention, horizon);
    assert!(horizon >= short.lease * 10);
}

fn id_at(t: Timestamp) -> EventId {
    let ms = t.as_millis() as u64;
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, ms / 1000, ((ms % 1000) * 1_000_000) as u32);
    EventId::from_uuid(uuid::Uuid::new_v7(ts))
}

#[tokio::test]
async fn an_event_older_than_the_pruned_inbox_is_reported_not_reapplied() {
    let clock = ManualClock::new(SystemClock.now());
    let shared: SharedClock = clock.clone();
    let store: Arc<dyn DurableStore> = Arc::new(MemoryStore::with_clock(shared.clone()));
    let me = ActorId::new("ledger-state").unwrap();
    let cfg = InboxConfig { retention: Duration::from_secs(3600), ..InboxConfig::default() };
    let c = once_per_event(store.clone(), consumer_id(), Accumulate { me: me.clone(), yield_inside: false })
        .with_config(cfg)
        .with_clock(shared);
    let old = envelope("k", 1);
    assert_eq!(c.deliver(&old).await.unwrap(), Delivery::Applied);
    assert_eq!(c.prune().await.unwrap(), 0, "too young to prune");

    clock.advance(Duration::from_secs(2 * 3600));
    assert_eq!(c.prune().await.unwrap(), 1);
    assert!(!store.is_processed(&consumer_id(), &old.origin, old.id).await.unwrap(), "the mark is gone");
    assert_eq!(c.deliver(&old).await.unwrap(), Delivery::Expired, "reported, not re-applied");
    assert_eq!(ledger_of(&store, &me).total, 1);

    // Through the sink interface it becomes a dead letter with the reason.
    let outcome = c.publish(std::slice::from_ref(&old)).await;
    assert!(matches!(&outcome[0], Outcome::NonRetriable(_)), "{outcome:?}");

    // An event made now is unaffected by the watermark.
    let mut fresh = envelope("k", 5);
    fresh.id = id_at(clock.now());
    assert_eq!(c.deliver(&fresh).await.unwrap(), Delivery::Applied);
    assert_eq!(ledger_of(&store, &me).total, 6);
}

#[tokio::test]
async fn the_consumer_is_a_sink_for_the_forwarder_over_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn DurableStore> =
        Arc::new(outbox_store_sqlite::SqliteStore::open(dir.path().join("c.db")).unwrap());
    for i in 0..50 {
        let a = ActorId::new(format!("p{}", i % 5)).unwrap();
        let e = NewEvent::json(a, "ADD", &serde_json::json!({ "x": i })).unwrap();
        store.put_state_and_events(Commit::events_only().event(e)).await.unwrap();
    }
    let me = ActorId::new("ledger-state").unwrap();
    let consumer = Arc::new(once_per_event(
        store.clone(),
        consumer_id(),
        Accumulate { me: me.clone(), yield_inside: false },
    ));
    let (_, _) = ChannelSink::new();
    let sink: Arc<dyn Sink> = consumer;
    let mut f = Forwarder::new(store.clone(), sink, ForwarderConfig::default());
    for _ in 0..20 {
        f.run_once().await.unwrap();
    }
    let l = ledger_of(&store, &me);
    assert_eq!((l.applied, l.total), (50, (0..50).sum::<i64>()), "each ADD once");
    let s = store.stats().await.unwrap();
    assert_eq!(
        (s.pending, s.dead, s.delivered),
        (0, 0, 100),
        "the 50 events and the 50 receipts they caused"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random streams: per-key order kept, keys interleaved arbitrarily,
    /// any event repeated any number of times (a repeat may come after later
    /// events of its key: a redelivery). The ledger equals applying each
    /// event exactly once, in per-key order.
    #[test]
    fn random_duplicates_and_reorderings_apply_each_event_once(
        per_key in prop::collection::vec(1usize..8, 1..5),
        picks in prop::collection::vec((any::<u8>(), any::<bool>()), 0..120),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let keys: Vec<Vec<Envelope>> = per_key.iter().enumerate()
                .map(|(k, n)| (0..*n).map(|i| envelope(&format!("key{k}"), (k * 100 + i) as i64)).collect())
                .collect();
            let store: Arc<dyn DurableStore> = Arc::new(MemoryStore::new());
            let me = ActorId::new("ledger-state").unwrap();
            let c = once_per_event(store.clone(), consumer_id(), Accumulate { me: me.clone(), yield_inside: false });
            let mut next = vec![0usize; keys.len()];
            // Interleave keys (each key in order), with redeliveries of
            // anything already sent.
            for (p, redeliver) in picks {
                let k = p as usize % keys.len();
                if redeliver && next[k] > 0 {
                    let i = (p as usize / keys.len()) % next[k];
                    prop_assert_eq!(c.deliver(&keys[k][i]).await.unwrap(), Delivery::Duplicate);
                } else if next[k] < keys[k].len() {
                    prop_assert_eq!(c.deliver(&keys[k][next[k]]).await.unwrap(), Delivery::Applied);
                    next[k] += 1;
                }
            }
            // Then the rest, each twice.
            for (k, evs) in keys.iter().enumerate() {
                for e in &evs[next[k]..] {
                    c.deliver(e).await.unwrap();
                    prop_assert_eq!(c.deliver(e).await.unwrap(), Delivery::Duplicate);
                }
            }
            let l = ledger_of(&store, &me);
            let want: BTreeMap<String, Vec<i64>> = keys.iter().enumerate()
                .map(|(k, evs)| (format!("key{k}"), evs.iter().map(|e| e.payload.decode_json::<serde_json::Value>().unwrap()["x"].as_i64().unwrap()).collect()))
                .collect();
            prop_assert_eq!(l.applied as usize, per_key.iter().sum::<usize>());
            prop_assert_eq!(&l.per_key, &want);
            Ok(())
        })?;
    }
}

#[test]
fn version_type_is_reexported_for_handlers() {
    assert_eq!(Version::NONE.next(), Version(1));
}
