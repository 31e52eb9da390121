//! The defaults keep the promise through an outage: a sink down for an
//! hour (simulated: Tokio's paused time, and a clock that follows it) and
//! every event is delivered once when it comes back, with nothing dead
//! and no key parked.
#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is the test failing

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox::{
    Actor, ActorId, Context, Envelope, EventId, OutboxConfig, Outcome, SharedClock, Sink, StoreChoice,
    Timestamp, async_trait, configure_outbox,
};
use outbox_core::Clock;

const T0: Timestamp = Timestamp::from_millis(1_767_225_600_000);
const HOUR: Duration = Duration::from_secs(3600);

/// Wall time that follows Tokio's (paused) clock.
#[derive(Debug)]
struct TokioClock {
    start: tokio::time::Instant,
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        T0.saturating_add(self.start.elapsed())
    }
}

/// A webhook that refuses connections until `up_at`.
#[derive(Debug)]
struct Webhook {
    clock: SharedClock,
    up_at: Timestamp,
    calls: AtomicUsize,
    delivered: Mutex<Vec<(Timestamp, Envelope)>>,
}

#[async_trait]
impl Sink for Webhook {
    async fn publish(&self, batch: &[Envelope]) -> Vec<Outcome> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.clock.now();
        if now < self.up_at {
            return batch.iter().map(|_| Outcome::Retriable("connection refused".into())).collect();
        }
        let mut d = self.delivered.lock().unwrap();
        d.extend(batch.iter().map(|e| (now, e.clone())));
        batch.iter().map(|_| Outcome::Ok).collect()
    }
}

struct Counter;

#[async_trait]
impl Actor for Counter {
    type State = u32;
    type Message = ();
    type Error = std::convert::Infallible;

    async fn handle(&mut self, n: &mut u32, _: (), ctx: &mut Context) -> Result<(), Self::Error> {
        *n += 1;
        ctx.emit("COUNTED", &*n);
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn an_hour_long_outage_loses_nothing() {
    let clock: SharedClock = Arc::new(TokioClock { start: tokio::time::Instant::now() });
    let sink = Arc::new(Webhook {
        clock: clock.clone(),
        up_at: T0.saturating_add(HOUR),
        calls: AtomicUsize::new(0),
        delivered: Mutex::new(Vec::new()),
    });
    let errors = Arc::new(AtomicUsize::new(0));
    let e = errors.clone();
    // Every delivery setting is the default; only the clock (and a store
    // that needs no thread of its own, for paused time) are chosen.
    let config =
        OutboxConfig::default().store(StoreChoice::Memory).clock(clock.clone()).on_error(move |_, _| {
            e.fetch_add(1, Ordering::SeqCst);
        });
    let outbox = configure_outbox(config, sink.clone()).await.unwrap();
    let actors: Vec<_> = spawn_counters(&outbox).await;

    // Commits through the hour: 5 actors, 12 messages each, one every 5 min.
    let mut committed: HashMap<String, Vec<u32>> = HashMap::new();
    for round in 0..12u32 {
        for a in &actors {
            a.send(()).await.unwrap();
            committed.entry(a.id().to_string()).or_default().push(round + 1);
        }
        tokio::time::sleep(Duration::from_secs(300)).await;
    }
    assert!(clock.now() >= T0.saturating_add(HOUR), "an hour has passed");
    assert!(sink.delivered.lock().unwrap().is_empty(), "nothing got through while the sink was down");
    assert!(sink.calls.load(Ordering::SeqCst) > 10, "the forwarder kept trying");

    // The sink is back: wait (simulated) until everything is delivered.
    let total: usize = committed.values().map(Vec::len).sum();
    for _ in 0..600 {
        if sink.delivered.lock().unwrap().len() >= total {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let delivered = sink.delivered.lock().unwrap().clone();
    let ids: HashSet<EventId> = delivered.iter().map(|(_, e)| e.id).collect();
    assert_eq!(delivered.len(), total, "every committed event delivered");
    assert_eq!(ids.len(), total, "each once");
    let mut per_actor: HashMap<String, Vec<u32>> = HashMap::new();
    for (_, e) in &delivered {
        per_actor.entry(e.origin.to_string()).or_default().push(e.payload.decode_json().unwrap());
    }
    assert_eq!(per_actor, committed, "in commit order per actor");
    let last = delivered.iter().map(|(t, _)| *t).max().unwrap();
    assert!(
        last.duration_since(T0.saturating_add(HOUR)) <= Duration::from_secs(61),
        "delivered within the backoff cap after the sink returned"
    );

    let s = outbox.store().stats().await.unwrap();
    assert_eq!((s.pending, s.dead), (0, 0), "nothing dead, nothing left");
    assert!(outbox.dead_letters(10).await.unwrap().is_empty(), "no key parked");
    assert_eq!(errors.load(Ordering::SeqCst), 0, "nothing was given up on");
    outbox.shutdown().await;
}

async fn spawn_counters(outbox: &outbox::Outbox) -> Vec<outbox::ActorRef<Counter>> {
    let mut v = Vec::new();
    for i in 0..5 {
        v.push(outbox.spawn_actor(ActorId::new(format!("counter-{i}")).unwrap(), Counter).await.unwrap());
    }
    v
}

/// Refuses (`NonRetriable`) events whose payload is in `refused`, takes
/// the rest.
#[derive(Debug, Default)]
struct Picky {
    refused: Mutex<HashSet<u32>>,
    took: Mutex<Vec<u32>>,
}

#[async_trait]
impl Sink for Picky {
    async fn publish(&self, batch: &[Envelope]) -> Vec<Outcome> {
        batch
            .iter()
            .map(|e| {
                let n: u32 = e.payload.decode_json().unwrap();
                if self.refused.lock().unwrap().contains(&n) {
                    Outcome::NonRetriable("422: refused".into())
                } else {
                    self.took.lock().unwrap().push(n);
                    Outcome::Ok
                }
            })
            .collect()
    }
}

async fn settle() {
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn dead_letters_one_by_one_through_the_outbox_api() {
    let clock: SharedClock = Arc::new(TokioClock { start: tokio::time::Instant::now() });
    let sink = Arc::new(Picky::default());
    sink.refused.lock().unwrap().extend([1, 4]);
    let parked = Arc::new(AtomicUsize::new(0));
    let p = parked.clone();
    let config = OutboxConfig::default().store(StoreChoice::Memory).clock(clock).on_error(move |_, _| {
        p.fetch_add(1, Ordering::SeqCst);
    });
    let outbox = configure_outbox(config, sink.clone()).await.unwrap();
    let counter = outbox.spawn_actor(ActorId::new("c").unwrap(), Counter).await.unwrap();
    for _ in 0..3 {
        counter.send(()).await.unwrap();
    }
    settle().await;
    // Event 1 is refused: it parks the actor's key; 2 and 3 wait behind it.
    let dead = outbox.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(parked.load(Ordering::SeqCst), 1, "on_error was told");
    assert!(sink.took.lock().unwrap().is_empty(), "the key is parked");
    assert_eq!(outbox.store().stats().await.unwrap().parked_keys, 1);

    // Skip: 2 and 3 flow past it, in order; it stays a dead letter.
    assert!(outbox.skip(dead[0].id).await.unwrap());
    settle().await;
    assert_eq!(*sink.took.lock().unwrap(), vec![2, 3]);
    assert_eq!(outbox.dead_letters(10).await.unwrap().len(), 1);

    // Requeue it once the receiver accepts it: delivered.
    sink.refused.lock().unwrap().remove(&1);
    assert!(outbox.requeue(dead[0].id).await.unwrap());
    settle().await;
    assert_eq!(*sink.took.lock().unwrap(), vec![2, 3, 1]);

    // Discard: event 4 is refused, discarded, and 5 flows on.
    counter.send(()).await.unwrap();
    settle().await;
    let dead = outbox.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    counter.send(()).await.unwrap();
    settle().await;
    assert_eq!(*sink.took.lock().unwrap(), vec![2, 3, 1], "5 waits behind the dead 4");
    assert!(outbox.discard(dead[0].id).await.unwrap());
    settle().await;
    assert_eq!(*sink.took.lock().unwrap(), vec![2, 3, 1, 5]);
    let s = outbox.store().stats().await.unwrap();
    assert_eq!((s.dead, s.discarded, s.pending, s.parked_keys), (0, 1, 0, 0));
    assert!(!outbox.discard(dead[0].id).await.unwrap(), "discarded is final");
    outbox.shutdown().await;
}
