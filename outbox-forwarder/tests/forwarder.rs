//! Forwarder behaviour, deterministic: a manual clock shared by store and
//! forwarder with stepped cycles, or paused Tokio time for the timer.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is the test failing

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox_core::prelude::*;
use outbox_core::{
    ActorId, Backoff, Clock, Commit, Envelope, ErrorKind, EventId, ManualClock, NewEvent, OrderingKey,
    RetryPolicy, SharedClock, SplitMix64, Timestamp,
};
use outbox_forwarder::{
    BreakerConfig, BreakerState, ChannelSink, DeadLetterPolicy, Forwarder, ForwarderConfig, Outcome, Sink,
};
use outbox_store_memory::MemoryStore;
use outbox_testkit::{FaultMode, FaultyStore};
use tokio::sync::mpsc::UnboundedReceiver;

const T0: Timestamp = Timestamp::from_millis(1_767_225_600_000);

struct Rig {
    clock: Arc<ManualClock>,
    store: Arc<dyn DurableStore>,
    sink: Arc<ChannelSink>,
    rx: UnboundedReceiver<Envelope>,
}

impl Rig {
    fn new() -> Self {
        let clock = ManualClock::new(T0);
        let store: Arc<dyn DurableStore> = Arc::new(MemoryStore::with_clock(clock.clone()));
        let (sink, rx) = ChannelSink::new();
        Rig { clock, store, sink, rx }
    }

    fn config(&self) -> ForwarderConfig {
        let clock: SharedClock = self.clock.clone();
        ForwarderConfig::default().clock(clock).seed(42)
    }

    fn forwarder(&self, cfg: ForwarderConfig) -> Forwarder {
        let sink: Arc<dyn Sink> = self.sink.clone();
        Forwarder::new(self.store.clone(), sink, cfg)
    }

    /// Commits `per_key` events for each of `keys` keys, interleaved, one
    /// commit per event; returns them in commit order.
    async fn commit(&self, keys: usize, per_key: usize) -> Vec<NewEvent> {
        let mut all = Vec::new();
        for i in 0..per_key {
            for k in 0..keys {
                let a = ActorId::new(format!("k{k}")).unwrap();
                let e = NewEvent::json(a, "T", &serde_json::json!({ "k": k, "i": i })).unwrap();
                self.store.put_state_and_events(Commit::events_only().event(e.clone())).await.unwrap();
                all.push(e);
            }
        }
        all
    }

    fn delivered(&mut self) -> Vec<Envelope> {
        let mut out = Vec::new();
        while let Ok(e) = self.rx.try_recv() {
            out.push(e);
        }
        out
    }

    async fn pending(&self) -> u64 {
        self.store.stats().await.unwrap().pending
    }
}

fn by_key(events: &[Envelope]) -> HashMap<OrderingKey, Vec<EventId>> {
    let mut m: HashMap<OrderingKey, Vec<EventId>> = HashMap::new();
    for e in events {
        m.entry(e.key.clone()).or_default().push(e.id);
    }
    m
}

fn by_key_new(events: &[NewEvent]) -> HashMap<OrderingKey, Vec<EventId>> {
    let mut m: HashMap<OrderingKey, Vec<EventId>> = HashMap::new();
    for e in events {
        m.entry(e.key.clone()).or_default().push(e.id);
    }
    m
}

#[tokio::test]
async fn delivers_per_key_in_commit_order_with_bounded_concurrency() {
    let mut rig = Rig::new();
    let committed = rig.commit(10, 20).await;
    let mut f = rig.forwarder(rig.config().batch_size(50).max_concurrency(4));
    for _ in 0..100 {
        if rig.pending().await == 0 {
            break;
        }
        f.run_once().await.unwrap();
    }
    assert_eq!(rig.pending().await, 0);
    let delivered = rig.delivered();
    assert_eq!(delivered.len(), committed.len(), "each event exactly once");
    assert_eq!(by_key(&delivered), by_key_new(&committed), "per-key commit order");
    let calls = rig.sink.calls();
    assert!(calls.iter().all(|n| *n <= 4), "at most max_concurrency per round: {calls:?}");
    assert!(calls.contains(&4), "keys run in parallel: {calls:?}");
}

#[tokio::test]
async fn first_batch_ramps_up_and_starts_small_after_idle() {
    let mut rig = Rig::new();
    rig.commit(20, 1).await;
    let mut f = rig.forwarder(rig.config().batch_size(8).max_concurrency(8).first_batch(Some(2)));
    let mut limits = Vec::new();
    loop {
        let r = f.run_once().await.unwrap();
        limits.push((r.limit, r.claimed));
        if r.claimed == 0 {
            break;
        }
    }
    assert_eq!(limits, vec![(2, 2), (4, 4), (8, 8), (8, 6), (2, 0)], "doubling up to batch_size");
    rig.commit(5, 1).await;
    let r = f.run_once().await.unwrap();
    assert_eq!((r.limit, r.claimed), (2, 2), "small again after an idle cycle");
    assert_eq!(rig.delivered().len(), 22);
}

#[tokio::test]
async fn backoff_schedule_is_full_jitter_with_a_cap() {
    let rig = Rig::new();
    let committed = rig.commit(1, 1).await;
    let id = committed[0].id;
    rig.sink.script(|_| Outcome::Retriable("down".into()));
    let backoff = Backoff { base: Duration::from_millis(100), cap: Duration::from_millis(400) };
    let cfg = rig
        .config()
        .retry(RetryPolicy::new(backoff).max_attempts(100))
        .breaker(BreakerConfig { failure_threshold: 1000, ..BreakerConfig::default() });
    let mut f = rig.forwarder(cfg);
    let mut rng = SplitMix64::new(42);
    for attempt in 1..=8u32 {
        let now = rig.clock.now();
        let r = f.run_once().await.unwrap();
        assert_eq!(r.retried, 1, "attempt {attempt}");
        let e = rig.store.list_pending(1).await.unwrap().remove(0);
        assert_eq!((e.id, e.attempts), (id, attempt));
        let want = backoff.delay(attempt, rng.next_unit());
        assert_eq!(e.next_attempt_at, now.saturating_add(want), "attempt {attempt}: seeded full jitter");
        assert!(want <= backoff.ceiling(attempt) && want <= backoff.cap);
        // Not before it is due...
        if !want.is_zero() {
            rig.clock.set(e.next_attempt_at.saturating_sub(Duration::from_millis(1)));
            assert_eq!(f.run_once().await.unwrap().claimed, 0, "attempt {attempt}: not early");
        }
        rig.clock.set(e.next_attempt_at);
    }
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let mut rig = Rig::new();
    rig.commit(1, 1).await;
    let first = Arc::new(AtomicUsize::new(0));
    let f1 = first.clone();
    rig.sink.script(move |_| {
        if f1.fetch_add(1, Ordering::SeqCst) == 0 {
            Outcome::RetryAfter(Duration::from_secs(7), "429".into())
        } else {
            Outcome::Ok
        }
    });
    let mut f = rig.forwarder(rig.config());
    assert_eq!(f.run_once().await.unwrap().retried, 1);
    let e = rig.store.list_pending(1).await.unwrap().remove(0);
    assert_eq!(e.next_attempt_at, T0.saturating_add(Duration::from_secs(7)));
    rig.clock.advance(Duration::from_millis(6_999));
    assert_eq!(f.run_once().await.unwrap().claimed, 0);
    rig.clock.advance(Duration::from_millis(1));
    assert_eq!(f.run_once().await.unwrap().delivered, 1);
    assert_eq!(rig.delivered().len(), 1);
}

fn poison(key: &'static str) -> impl Fn(&Envelope) -> Outcome + Send + Sync {
    move |e: &Envelope| {
        if e.key.as_str() == key { Outcome::Retriable("poison".into()) } else { Outcome::Ok }
    }
}

#[tokio::test]
async fn max_attempts_dead_letters_and_parks_the_key_only() {
    let mut rig = Rig::new();
    let committed = rig.commit(2, 3).await; // k0 and k1, 3 each
    rig.sink.script(poison("k0"));
    let cfg = rig
        .config()
        .retry(
            RetryPolicy::new(Backoff { base: Duration::from_millis(10), cap: Duration::from_millis(10) })
                .max_attempts(3),
        )
        .breaker(BreakerConfig { failure_threshold: 100, ..BreakerConfig::default() });
    let mut f = rig.forwarder(cfg);
    let mut dead = 0;
    for _ in 0..10 {
        let r = f.run_once().await.unwrap();
        dead += r.dead_lettered;
        rig.clock.advance(Duration::from_millis(20));
    }
    assert_eq!(dead, 1, "k0's head dead-lettered after max attempts");
    let k0: Vec<EventId> = committed.iter().filter(|e| e.key.as_str() == "k0").map(|e| e.id).collect();
    let dead_list = rig.store.list_dead(10).await.unwrap();
    assert_eq!(dead_list.iter().map(|e| e.id).collect::<Vec<_>>(), vec![k0[0]]);
    assert_eq!(dead_list[0].attempts, 3);
    let delivered = rig.delivered();
    assert!(delivered.iter().all(|e| e.key.as_str() == "k1"), "k0 is parked");
    assert_eq!(delivered.len(), 3, "k1 flowed");
    let pending = rig.store.list_pending(10).await.unwrap();
    assert_eq!(pending.iter().map(|e| e.id).collect::<Vec<_>>(), k0[1..].to_vec());
    assert!(pending.iter().all(|e| e.attempts == 0), "parked events were never attempted");

    // Requeue once the sink is fixed: k0 flows, in order.
    rig.sink.unscript();
    rig.store.requeue_dead(&[k0[0]]).await.unwrap();
    f.run_once().await.unwrap();
    assert_eq!(rig.delivered().iter().map(|e| e.id).collect::<Vec<_>>(), k0);
}

#[tokio::test]
async fn a_failed_retry_write_still_acks_what_was_delivered_before_it() {
    let mut rig = Rig::new();
    let committed = rig.commit(2, 1).await; // k0, then k1: one round
    rig.sink.script(poison("k1"));
    let faulty = FaultyStore::new(rig.store.clone());
    let sink: Arc<dyn Sink> = rig.sink.clone();
    let mut f = Forwarder::new(faulty.clone(), sink, rig.config());
    // Operations: 1 acquires leadership, 2 claims, 3 writes k1's retry.
    faulty.fail_nth(3, FaultMode::Before);
    let err = f.run_once().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "the failed retry write is reported");
    let delivered: Vec<EventId> = rig.delivered().iter().map(|e| e.id).collect();
    assert_eq!(delivered, vec![committed[0].id], "the sink took k0 and refused k1");
    let pending: Vec<EventId> = rig.store.list_pending(10).await.unwrap().iter().map(|e| e.id).collect();
    assert_eq!(pending, vec![committed[1].id], "k0's ack was written; only k1 is still pending");
}

#[tokio::test]
async fn skip_policy_lets_the_key_flow_past_a_dead_letter() {
    let mut rig = Rig::new();
    let committed = rig.commit(1, 3).await;
    let bad = committed[0].id;
    rig.sink
        .script(move |e| if e.id == bad { Outcome::NonRetriable("rejected".into()) } else { Outcome::Ok });
    let mut f = rig.forwarder(rig.config().dead_letters(DeadLetterPolicy::Skip));
    let r = f.run_once().await.unwrap();
    assert_eq!((r.dead_lettered, r.delivered, r.retried), (1, 2, 0), "non-retriable: dead at once");
    assert_eq!(
        rig.delivered().iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![committed[1].id, committed[2].id]
    );
}

#[tokio::test]
async fn circuit_breaker_opens_probes_and_closes() {
    let mut rig = Rig::new();
    rig.commit(10, 1).await;
    rig.sink.script(|_| Outcome::Retriable("down".into()));
    let breaker = BreakerConfig {
        failure_threshold: 3,
        open_for: Duration::from_secs(1),
        max_open_for: Duration::from_secs(8),
        slow_call: Duration::from_secs(60),
    };
    let retry = RetryPolicy::new(Backoff { base: Duration::from_millis(1), cap: Duration::from_millis(1) })
        .max_attempts(100);
    let mut f = rig.forwarder(rig.config().breaker(breaker).retry(retry).max_concurrency(10));
    let r = f.run_once().await.unwrap();
    assert_eq!(r.circuit, BreakerState::Open { until: T0.saturating_add(Duration::from_secs(1)) });
    assert_eq!(r.retried, 10, "the round in flight is settled");

    rig.clock.advance(Duration::from_millis(500));
    let r = f.run_once().await.unwrap();
    assert_eq!((r.claimed, r.limit), (0, 0), "open: nothing claimed");

    rig.clock.advance(Duration::from_millis(500));
    let r = f.run_once().await.unwrap();
    assert_eq!((r.limit, r.claimed, r.retried), (1, 1, 1), "half-open: one probe");
    assert_eq!(
        r.circuit,
        BreakerState::Open { until: T0.saturating_add(Duration::from_secs(3)) },
        "failed probe: open 2 s"
    );

    rig.sink.unscript();
    f.waker().notify_online();
    let r = f.run_once().await.unwrap();
    assert_eq!((r.limit, r.delivered), (1, 1), "online: probe at once");
    assert_eq!(r.circuit, BreakerState::Closed);
    let r = f.run_once().await.unwrap();
    assert_eq!(r.delivered, 9, "closed: full batches again");
    assert_eq!(rig.delivered().len(), 10);
}

#[tokio::test]
async fn after_an_outage_notify_online_delivers_without_waiting_for_backoffs() {
    let mut rig = Rig::new();
    rig.commit(50, 4).await;
    rig.sink.script(|_| Outcome::Retriable("offline".into()));
    let breaker =
        BreakerConfig { failure_threshold: 3, open_for: Duration::from_secs(60), ..BreakerConfig::default() };
    let retry = RetryPolicy::new(Backoff { base: Duration::from_secs(10), cap: Duration::from_secs(30) })
        .max_attempts(100);
    let mut f = rig.forwarder(rig.config().breaker(breaker).retry(retry));
    let r = f.run_once().await.unwrap();
    assert!(matches!(r.circuit, BreakerState::Open { .. }));
    // Only the failures before the circuit opened wait for a backoff.
    let waiting =
        rig.store.list_pending(1000).await.unwrap().iter().filter(|e| e.next_attempt_at > T0).count();
    assert_eq!(waiting, 2, "failures 1 and 2 back off; from the 3rd the sink is known down");
    rig.sink.unscript();
    f.waker().notify_online();
    // No time passes: the backed-off events are made due at once.
    for _ in 0..3 {
        f.run_once().await.unwrap();
    }
    assert_eq!(rig.pending().await, 0, "the backlog went out right after the sink came back");
    assert_eq!(rig.delivered().len(), 200);
}

#[tokio::test]
async fn transient_failures_never_dead_letter_by_default() {
    let mut rig = Rig::new();
    let committed = rig.commit(3, 2).await;
    rig.sink.script(|_| Outcome::Retriable("connection refused".into()));
    let mut f = rig.forwarder(rig.config());
    // A day of failures, a cycle a minute (the default backoff cap).
    for _ in 0..1_440 {
        let r = f.run_once().await.unwrap();
        assert_eq!(r.dead_lettered, 0);
        rig.clock.advance(Duration::from_secs(60));
    }
    assert_eq!(rig.store.stats().await.unwrap().dead, 0);
    rig.sink.unscript();
    for _ in 0..10 {
        f.run_once().await.unwrap();
        rig.clock.advance(Duration::from_secs(60));
    }
    assert_eq!(by_key(&rig.delivered()), by_key_new(&committed), "everything, once, in order");
}

#[tokio::test]
async fn attempts_while_the_circuit_is_open_or_offline_do_not_count() {
    let rig = Rig::new();
    rig.commit(4, 1).await;
    rig.sink.script(|_| Outcome::Retriable("down".into()));
    let breaker = BreakerConfig {
        failure_threshold: 2,
        open_for: Duration::from_secs(1),
        max_open_for: Duration::from_secs(1),
        ..BreakerConfig::default()
    };
    let retry = RetryPolicy::new(Backoff { base: Duration::from_millis(1), cap: Duration::from_millis(1) })
        .max_attempts(3);
    let mut f = rig.forwarder(rig.config().breaker(breaker).retry(retry).max_concurrency(1));
    // Two counted failures open the circuit; then only probes, uncounted.
    for _ in 0..200 {
        f.run_once().await.unwrap();
        rig.clock.advance(Duration::from_millis(500));
    }
    let s = rig.store.stats().await.unwrap();
    assert_eq!(s.dead, 0, "probes of an open circuit never used up an event's attempts");
    let attempts: u32 = rig.store.list_pending(10).await.unwrap().iter().map(|e| e.attempts).sum();
    assert!(attempts <= 2, "only the failures before the circuit opened count: {attempts}");

    // Offline: a closed circuit's failures do not count either.
    let rig = Rig::new();
    rig.commit(1, 1).await;
    rig.sink.script(|_| Outcome::Retriable("offline".into()));
    let never_opens = BreakerConfig { failure_threshold: 1_000_000, ..BreakerConfig::default() };
    let retry = RetryPolicy::new(Backoff { base: Duration::from_millis(1), cap: Duration::from_millis(1) })
        .max_attempts(3);
    let mut f = rig.forwarder(rig.config().breaker(never_opens).retry(retry));
    f.waker().notify_offline();
    for _ in 0..50 {
        f.run_once().await.unwrap();
        rig.clock.advance(Duration::from_millis(5));
    }
    assert_eq!(rig.store.stats().await.unwrap().dead, 0);
    assert_eq!(rig.store.list_pending(1).await.unwrap()[0].attempts, 0, "offline attempts are uncounted");
    f.waker().notify_online();
    for _ in 0..3 {
        f.run_once().await.unwrap();
        rig.clock.advance(Duration::from_millis(5));
    }
    assert_eq!(rig.store.stats().await.unwrap().dead, 1, "online again: 3 counted failures give up");
}

#[tokio::test]
async fn max_age_per_event_type_expires_only_that_type() {
    let mut rig = Rig::new();
    let a = ActorId::new("a").unwrap();
    let typing = NewEvent::json(a.clone(), "TYPING", &1).unwrap().with_key(OrderingKey::new("t").unwrap());
    let order = NewEvent::json(a, "ORDER_PLACED", &2).unwrap();
    rig.store
        .put_state_and_events(Commit::events_only().event(typing.clone()).event(order.clone()))
        .await
        .unwrap();
    rig.sink.script(|_| Outcome::Retriable("down".into()));
    let retry = RetryPolicy::default()
        .for_type("TYPING", outbox_core::RetryLimits::default().max_age(Duration::from_secs(60)));
    let mut f = rig.forwarder(rig.config().retry(retry));
    for _ in 0..120 {
        f.run_once().await.unwrap();
        rig.clock.advance(Duration::from_secs(5));
    }
    let dead = rig.store.list_dead(10).await.unwrap();
    assert_eq!(dead.iter().map(|e| e.id).collect::<Vec<_>>(), vec![typing.id], "only the expiring type");
    rig.sink.unscript();
    for _ in 0..30 {
        f.run_once().await.unwrap();
        rig.clock.advance(Duration::from_secs(5));
    }
    assert_eq!(rig.delivered().iter().map(|e| e.id).collect::<Vec<_>>(), vec![order.id]);
}

/// A sink whose first call waits at a gate: a leader paused mid-batch.
#[derive(Debug)]
struct GatedSink {
    inner: Arc<ChannelSink>,
    gate: Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
    entered: tokio::sync::Notify,
}

#[outbox_core::async_trait]
impl Sink for GatedSink {
    async fn publish(&self, batch: &[Envelope]) -> Vec<Outcome> {
        let gate = self.gate.lock().unwrap().take();
        if let Some(g) = gate {
            self.entered.notify_one();
            let _ = g.await;
        }
        self.inner.publish(batch).await
    }
}

#[tokio::test]
async fn leader_handover_never_redelivers_acked_events() {
    let mut rig = Rig::new();
    let committed = rig.commit(5, 4).await;
    let (tx, gate) = tokio::sync::oneshot::channel();
    let gated = Arc::new(GatedSink {
        inner: rig.sink.clone(),
        gate: Mutex::new(Some(gate)),
        entered: Default::default(),
    });
    let cfg = rig.config().batch_size(5).lease(Duration::from_secs(10)).leader_ttl(Duration::from_secs(10));
    let mut old = Forwarder::new(rig.store.clone(), gated.clone(), cfg.clone().holder("old"));
    let mut new = rig.forwarder(cfg.holder("new"));

    // The old leader claims 5 and stalls inside the sink.
    let stalled = tokio::spawn(async move {
        let r = old.run_once().await;
        (old, r)
    });
    gated.entered.notified().await;
    assert_eq!(rig.store.stats().await.unwrap().in_flight, 5);

    // Past its lease and ttl, the new leader takes over and drains all.
    rig.clock.advance(Duration::from_secs(11));
    for _ in 0..10 {
        new.run_once().await.unwrap();
    }
    assert!(new.grant().is_some());
    assert_eq!(rig.pending().await, 0);
    let after_new: Vec<EventId> = rig.delivered().iter().map(|e| e.id).collect();
    assert_eq!(after_new.len(), 20, "everything delivered once by the new leader");

    // The old leader wakes up: its sink delivers (at least once), its ack
    // is fenced, and it steps down.
    tx.send(()).unwrap();
    let (mut old, r) = stalled.await.unwrap();
    let r = r.unwrap();
    assert!(r.fenced && !r.leader, "{r:?}");
    assert_eq!(r.delivered, 0, "the stale ack did not count");
    let stale: Vec<Envelope> = rig.delivered();
    assert_eq!(stale.len(), 5, "the paused leader's in-flight batch reached its sink");
    let again = old.run_once().await.unwrap();
    assert!(!again.leader, "the old leader cannot come back while the new one holds the role");
    for _ in 0..3 {
        new.run_once().await.unwrap();
    }
    assert!(rig.delivered().is_empty(), "no acked event is ever delivered again");
    assert_eq!(by_key_new(&committed).values().map(Vec::len).sum::<usize>(), 20);
}

#[tokio::test]
async fn random_30_percent_failures_still_deliver_everything_in_order() {
    let mut rig = Rig::new();
    let committed = rig.commit(20, 25).await;
    let rng = Mutex::new(SplitMix64::new(7));
    rig.sink.script(move |_| {
        if rng.lock().unwrap().next_unit() < 0.3 { Outcome::Retriable("flaky".into()) } else { Outcome::Ok }
    });
    let cfg = rig
        .config()
        .retry(
            RetryPolicy::new(Backoff { base: Duration::from_millis(50), cap: Duration::from_millis(200) })
                .max_attempts(1000),
        )
        .breaker(BreakerConfig { failure_threshold: 10_000, ..BreakerConfig::default() })
        .batch_size(64)
        .max_concurrency(8);
    let mut f = rig.forwarder(cfg);
    let mut cycles = 0;
    while rig.pending().await > 0 {
        f.run_once().await.unwrap();
        rig.clock.advance(Duration::from_millis(250));
        cycles += 1;
        assert!(cycles < 10_000, "did not converge");
    }
    let delivered = rig.delivered();
    let failures = rig.sink.attempts().iter().filter(|(_, o)| !o.is_ok()).count();
    assert!(failures > 100, "the sink did fail often: {failures}");
    assert_eq!(delivered.len(), committed.len(), "every event, exactly once (no lease expired)");
    assert_eq!(by_key(&delivered), by_key_new(&committed), "per-key order held through the failures");
}

/// A forwarder that starts on a backlog delivers before it counts it for
/// the gauges: the first read waits for an idle cycle or `stats_every`.
#[cfg(feature = "metrics")]
#[tokio::test]
async fn the_first_gauge_read_waits_while_a_backlog_is_delivered() {
    let mut rig = Rig::new();
    let faulty = FaultyStore::new(rig.store.clone());
    rig.store = faulty.clone();
    let stats = || faulty.calls().iter().filter(|c| **c == "stats").count();
    rig.commit(8, 1).await;
    let mut f = rig.forwarder(rig.config().batch_size(4).stats_every(Duration::from_secs(1)));
    f.run_once().await.unwrap();
    f.run_once().await.unwrap();
    assert_eq!(stats(), 0, "busy cycles deliver without counting the backlog");
    assert_eq!(f.run_once().await.unwrap().claimed, 0);
    assert_eq!(stats(), 1, "the first idle cycle reads the gauges");

    let mut rig = Rig::new();
    let faulty = FaultyStore::new(rig.store.clone());
    rig.store = faulty.clone();
    let stats = || faulty.calls().iter().filter(|c| **c == "stats").count();
    rig.commit(8, 2).await;
    let mut f = rig.forwarder(rig.config().batch_size(4).stats_every(Duration::from_secs(1)));
    f.run_once().await.unwrap();
    rig.clock.advance(Duration::from_secs(1));
    f.run_once().await.unwrap();
    assert_eq!(stats(), 1, "or `stats_every` after the first cycle, busy or not");
}

#[cfg(feature = "metrics")]
#[tokio::test]
async fn metrics_are_reported() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let rig = Rig::new();
    let committed = rig.commit(3, 2).await; // k0, k1, k2
    rig.sink.script(poison("k0"));
    let cfg = rig
        .config()
        .retry(
            RetryPolicy::new(Backoff { base: Duration::from_millis(1), cap: Duration::from_millis(1) })
                .max_attempts(2),
        )
        .breaker(BreakerConfig { failure_threshold: 100, ..BreakerConfig::default() })
        .stats_every(Duration::ZERO);
    let mut f = rig.forwarder(cfg);
    for _ in 0..4 {
        f.run_once().await.unwrap();
        rig.clock.advance(Duration::from_millis(10));
    }
    // Series by name (a counter has one per label set: `sink` alone, at
    // 0 from the start, and `sink` + `event_type`).
    type Labels = Vec<(String, String)>;
    let mut values: HashMap<String, Vec<(Labels, DebugValue)>> = HashMap::new();
    for (k, _, _, v) in snapshotter.snapshot().into_vec() {
        let labels = k.key().labels().map(|l| (l.key().to_owned(), l.value().to_owned())).collect();
        values.entry(k.key().name().to_owned()).or_default().push((labels, v));
    }
    let series = |n: &str| values.get(n).unwrap_or_else(|| panic!("{n} not reported"));
    let counter = |n: &str| -> u64 {
        series(n)
            .iter()
            .map(|(_, v)| match v {
                DebugValue::Counter(c) => *c,
                other => panic!("{n}: {other:?}"),
            })
            .sum()
    };
    let gauge = |n: &str| match series(n).as_slice() {
        [(_, DebugValue::Gauge(g))] => g.into_inner(),
        other => panic!("{n}: {other:?}"),
    };
    let label = |l: &[(String, String)], k: &str| l.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(counter("outbox.delivered.total"), 4, "k1 and k2");
    assert_eq!(counter("outbox.failed.total"), 2, "k0's head, twice");
    assert_eq!(counter("outbox.dead_lettered.total"), 1);
    for name in outbox_forwarder::metrics::COUNTERS {
        let s = series(name);
        assert!(
            s.iter().any(|(l, v)| l.len() == 1 && label(l, "sink").is_some() && *v == DebugValue::Counter(0)),
            "{name} registered at 0 with its sink label: {s:?}"
        );
        assert!(
            s.iter().any(|(l, _)| label(l, "event_type").as_deref() == Some("T")),
            "{name} labelled with the event type: {s:?}"
        );
    }
    assert_eq!(gauge("outbox.pending"), 1.0, "k0's second event, parked");
    assert_eq!(gauge("outbox.blocked_keys"), 1.0);
    assert_eq!(gauge("outbox.durable"), 0.0, "memory store");
    assert_eq!(gauge("outbox.circuit_open"), 0.0);
    let lag = gauge("outbox.lag.seconds");
    assert!((0.03..1.0).contains(&lag), "lag of the parked event: {lag}");
    assert!(
        matches!(series("outbox.flush.seconds").as_slice(), [(_, DebugValue::Histogram(h))] if !h.is_empty()),
        "the flush duration, in seconds"
    );
    assert_eq!(committed.len(), 6);
}

/// A busy forwarder goes on with the keys it just delivered
/// (`claim_heads_of`) and claims in commit order again once `fairness` has
/// passed since its last such claim, or when its last batch held fewer
/// than half a batch of keys; with `fairness(None)` it always claims in
/// commit order. Each key is still delivered in commit order.
#[tokio::test(start_paused = true)]
async fn a_busy_forwarder_goes_on_with_its_keys_and_claims_in_commit_order_every_fairness() {
    let mut rig = Rig::new();
    let faulty = FaultyStore::new(rig.store.clone());
    rig.store = faulty.clone();
    let committed = rig.commit(8, 3).await;
    let claims =
        || -> Vec<&'static str> { faulty.calls().into_iter().filter(|c| c.starts_with("claim")).collect() };
    let cfg = rig.config().batch_size(4).max_concurrency(4).fairness(Some(Duration::from_millis(100)));
    let mut fwd = rig.forwarder(cfg);
    for _ in 0..3 {
        fwd.run_once().await.unwrap();
    }
    assert_eq!(claims(), ["claim", "claim_heads_of", "claim_heads_of"], "goes on with its 4 keys");
    tokio::time::advance(Duration::from_millis(100)).await;
    fwd.run_once().await.unwrap();
    fwd.run_once().await.unwrap();
    assert_eq!(claims()[3..], ["claim", "claim_heads_of"], "commit order once `fairness` has passed");
    while fwd.run_once().await.unwrap().claimed > 0 {}
    let got = rig.delivered();
    assert_eq!(by_key(&got), by_key_new(&committed), "every event once, each key in commit order");
    assert_eq!(got.len(), committed.len());

    // A batch of one key is less than half a batch: commit order.
    let before = claims().len();
    rig.commit(1, 1).await;
    fwd.run_once().await.unwrap();
    fwd.run_once().await.unwrap();
    assert_eq!(claims()[before..], ["claim", "claim"], "one key does not fill half a batch");

    // Never, with `fairness(None)`.
    fwd.step_down().await;
    rig.delivered();
    let before = claims().len();
    rig.commit(8, 2).await;
    let mut fwd = rig.forwarder(rig.config().batch_size(4).max_concurrency(4).fairness(None));
    while fwd.run_once().await.unwrap().claimed > 0 {}
    assert_eq!(rig.delivered().len(), 16, "all delivered");
    assert!(claims()[before..].iter().all(|c| *c == "claim"), "{:?}", &claims()[before..]);
}

/// Going on with the delivered keys that finds less than half of them
/// claimable (they had few events left) fills the batch in commit order,
/// and is not tried again for `fairness`.
#[tokio::test(start_paused = true)]
async fn going_on_that_gives_less_than_half_a_batch_pauses_for_fairness() {
    let mut rig = Rig::new();
    let faulty = FaultyStore::new(rig.store.clone());
    rig.store = faulty.clone();
    let claims =
        || -> Vec<&'static str> { faulty.calls().into_iter().filter(|c| c.starts_with("claim")).collect() };
    let cfg = rig.config().batch_size(4).max_concurrency(4).fairness(Some(Duration::from_millis(100)));
    let mut fwd = rig.forwarder(cfg);
    rig.commit(5, 1).await;
    fwd.run_once().await.unwrap();
    assert_eq!(fwd.run_once().await.unwrap().claimed, 1, "one event left, of another key");
    assert_eq!(
        claims(),
        ["claim", "claim_heads_of", "claim"],
        "its keys had nothing left: the rest of the batch in commit order"
    );
    tokio::time::advance(Duration::from_millis(60)).await;
    rig.commit(8, 1).await;
    fwd.run_once().await.unwrap();
    fwd.run_once().await.unwrap();
    assert_eq!(claims()[3..], ["claim", "claim"], "paused, though 4 keys were delivered");
    tokio::time::advance(Duration::from_millis(50)).await;
    rig.commit(8, 1).await;
    assert_eq!(fwd.run_once().await.unwrap().claimed, 4);
    assert_eq!(claims()[5..], ["claim_heads_of"], "going on again once `fairness` has passed");
    while fwd.run_once().await.unwrap().claimed > 0 {}
    assert_eq!(rig.delivered().len(), 21, "everything delivered once");
}

#[tokio::test(start_paused = true)]
async fn a_commit_wakes_an_idle_forwarder_without_waiting_for_the_timer() {
    let mut rig = Rig::new();
    let cfg =
        rig.config().flush_interval(Duration::from_millis(100)).max_idle_interval(Duration::from_secs(5));
    let handle = rig.forwarder(cfg).spawn();
    // Let it go idle: the tick backs off to 5 s.
    tokio::time::sleep(Duration::from_secs(30)).await;
    rig.commit(1, 1).await;
    handle.waker().wake();
    let t = tokio::time::Instant::now();
    let e = rig.rx.recv().await.expect("delivered");
    assert_eq!(t.elapsed(), Duration::ZERO, "delivered on wake-up, no timer wait");
    assert_eq!(e.key.as_str(), "k0");

    // Without a wake-up, the idle tick finds it within max_idle_interval
    // (once it has gone idle again).
    tokio::time::sleep(Duration::from_secs(30)).await;
    rig.commit(1, 1).await;
    let t = tokio::time::Instant::now();
    rig.rx.recv().await.expect("delivered by the tick");
    assert!(t.elapsed() <= Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(t.elapsed() > Duration::ZERO, "this one did wait for the timer");
    handle.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_releases_leadership_for_the_next_forwarder() {
    let rig = Rig::new();
    let handle = rig.forwarder(rig.config().holder("first")).spawn();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        rig.store.acquire_leadership("second", Duration::from_secs(1)).await.unwrap(),
        None,
        "first leads"
    );
    handle.shutdown().await;
    assert!(rig.store.acquire_leadership("second", Duration::from_secs(1)).await.unwrap().is_some());
}

#[tokio::test]
async fn a_follower_waits_and_takes_over_when_the_leader_goes_away() {
    let mut rig = Rig::new();
    rig.commit(2, 2).await;
    let cfg = rig.config();
    let mut a = rig.forwarder(cfg.clone().holder("a"));
    let mut b = rig.forwarder(cfg.holder("b"));
    assert!(a.run_once().await.unwrap().leader);
    let r = b.run_once().await.unwrap();
    assert!(!r.leader && r.claimed == 0, "b follows");
    rig.commit(1, 1).await;
    a.step_down().await;
    let r = b.run_once().await.unwrap();
    assert!(r.leader && r.delivered == 1, "b took over at once after a stepped down");
    assert_eq!(rig.delivered().len(), 5);
}

#[tokio::test]
async fn the_leader_prunes_delivered_events_past_retention_in_small_batches() {
    let rig = Rig::new();
    rig.commit(5, 2).await;
    let cfg = rig
        .config()
        .retention(Some(Duration::from_secs(3600)))
        .prune_batch(4)
        .prune_every(Duration::ZERO)
        .leader_ttl(Duration::from_secs(6 * 3600));
    let mut leader = rig.forwarder(cfg.clone().holder("leader"));
    let mut follower = rig.forwarder(cfg.holder("follower"));
    assert_eq!(leader.run_once().await.unwrap().delivered, 10);
    let delivered = || async { rig.store.stats().await.unwrap().delivered };
    assert_eq!(delivered().await, 10, "nothing is old enough yet");
    rig.clock.advance(Duration::from_secs(2 * 3600));
    assert!(!follower.run_once().await.unwrap().leader);
    assert_eq!(delivered().await, 10, "a follower never prunes");
    let mut left = Vec::new();
    for _ in 0..4 {
        leader.run_once().await.unwrap();
        left.push(delivered().await);
    }
    assert_eq!(left, vec![6, 2, 0, 0], "pruned 4 at a time by the leader");
}

#[tokio::test]
async fn works_over_a_real_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let shared: SharedClock = clock.clone();
    let store: Arc<dyn DurableStore> = Arc::new(
        outbox_store_sqlite::SqliteStore::options(dir.path().join("f.db"))
            .clock(shared.clone())
            .open()
            .unwrap(),
    );
    let mut committed = Vec::new();
    for i in 0..200u64 {
        let a = ActorId::new(format!("k{}", i % 7)).unwrap();
        let e = NewEvent::json(a, "T", &i).unwrap();
        store.put_state_and_events(Commit::events_only().event(e.clone())).await.unwrap();
        committed.push(e);
    }
    let (sink, mut rx) = ChannelSink::new();
    let mut f = Forwarder::new(store.clone(), sink, ForwarderConfig::default().clock(shared).batch_size(32));
    while store.stats().await.unwrap().pending > 0 {
        f.run_once().await.unwrap();
    }
    let mut got = Vec::new();
    while let Ok(e) = rx.try_recv() {
        got.push(e);
    }
    assert_eq!(by_key(&got), by_key_new(&committed));
}

/// A sink that reports each batch and holds it until the test lets it go.
struct GateSink {
    gate: tokio::sync::Semaphore,
    entered: tokio::sync::mpsc::UnboundedSender<usize>,
    seen: Mutex<Vec<Envelope>>,
}

#[outbox_core::async_trait]
impl Sink for GateSink {
    async fn publish(&self, batch: &[Envelope]) -> Vec<Outcome> {
        let _ = self.entered.send(batch.len());
        self.gate.acquire().await.expect("gate open").forget();
        self.seen.lock().unwrap().extend(batch.iter().cloned());
        batch.iter().map(|_| Outcome::Ok).collect()
    }
}

impl std::fmt::Debug for GateSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GateSink")
    }
}

/// With `prefetch`, the next batch is claimed while one is at the sink;
/// per-key order still holds and a batch claimed ahead is handed back at
/// shutdown. Returns the events in flight while the first batch was held.
async fn run_gated(prefetch: bool) -> u64 {
    let rig = Rig::new();
    // 100 keys, two events each: the first batch (50) holds keys k0..k49,
    // whose second events wait for it; a prefetch can take k50..k99.
    let committed = rig.commit(100, 2).await;
    let (entered, mut entries) = tokio::sync::mpsc::unbounded_channel();
    let sink =
        Arc::new(GateSink { gate: tokio::sync::Semaphore::new(0), entered, seen: Mutex::new(Vec::new()) });
    let cfg = rig.config().batch_size(50).max_concurrency(50).prefetch(Some(prefetch));
    let handle = Forwarder::new(rig.store.clone(), sink.clone(), cfg).spawn();
    let mut entered_total = entries.recv().await.expect("a first batch");
    assert_eq!(entered_total, 50);
    let mut in_flight = 0;
    for _ in 0..1000 {
        in_flight = rig.store.stats().await.unwrap().in_flight;
        if in_flight > 50 {
            break;
        }
        tokio::task::yield_now().await;
    }
    // Let everything through, one batch at a time.
    sink.gate.add_permits(1);
    while entered_total < committed.len() {
        entered_total += entries.recv().await.expect("another batch");
        sink.gate.add_permits(1);
    }
    handle.shutdown().await;
    let seen = sink.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), committed.len(), "each event once");
    assert_eq!(by_key(&seen), by_key_new(&committed), "per-key commit order");
    assert_eq!(rig.store.stats().await.unwrap().in_flight, 0, "nothing left leased");
    in_flight
}

#[tokio::test]
async fn prefetch_claims_the_next_batch_while_one_is_at_the_sink() {
    assert_eq!(run_gated(true).await, 100, "the held batch and a prefetched one");
    assert_eq!(run_gated(false).await, 50, "only the held batch");
}

#[tokio::test]
async fn a_prefetched_batch_is_handed_back_at_shutdown() {
    let rig = Rig::new();
    rig.commit(100, 1).await;
    let (entered, mut entries) = tokio::sync::mpsc::unbounded_channel();
    let sink =
        Arc::new(GateSink { gate: tokio::sync::Semaphore::new(0), entered, seen: Mutex::new(Vec::new()) });
    let cfg = rig.config().batch_size(50).max_concurrency(50).prefetch(Some(true));
    let handle = Forwarder::new(rig.store.clone(), sink.clone(), cfg).spawn();
    assert_eq!(entries.recv().await, Some(50));
    while rig.store.stats().await.unwrap().in_flight < 100 {
        tokio::task::yield_now().await;
    }
    // Stop while the second batch is prefetched: the first is delivered
    // and acked, the second goes back unattempted.
    let stop = tokio::spawn(handle.shutdown());
    sink.gate.add_permits(1);
    stop.await.unwrap();
    let stats = rig.store.stats().await.unwrap();
    assert_eq!((stats.delivered, stats.pending, stats.in_flight), (50, 50, 0));
    let left = rig.store.list_pending(100).await.unwrap();
    assert!(left.iter().all(|e| e.attempts == 0), "handed back, not attempted");
}
