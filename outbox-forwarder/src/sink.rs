//! The in-process sinks ([`Bus`], [`ChannelSink`]); the [`Sink`] trait and
//! its [`Outcome`] live in `outbox-core`.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use outbox_core::{Envelope, EventId, Outcome, Sink, async_trait};
use tokio::sync::mpsc;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Which events a [`Bus`] subscription receives.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Topic {
    /// Every event.
    All,
    /// Events of one type.
    EventType(String),
}

impl Topic {
    fn matches(&self, e: &Envelope) -> bool {
        match self {
            Topic::All => true,
            Topic::EventType(t) => *t == e.event_type,
        }
    }
}

#[derive(Debug)]
struct Subscriber {
    topic: Topic,
    tx: mpsc::Sender<Envelope>,
}

/// An in-process event bus: every subscriber gets every delivered event
/// of its topic. A slow subscriber slows delivery (bounded queues, no
/// drops); a dropped subscription is forgotten.
#[derive(Clone, Debug, Default)]
pub struct Bus {
    subscribers: Arc<Mutex<Vec<Subscriber>>>,
}

/// A [`Bus`] subscription: receive with [`Subscription::recv`].
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<Envelope>,
}

impl Subscription {
    /// The next event, or `None` when the bus is gone.
    pub async fn recv(&mut self) -> Option<Envelope> {
        self.rx.recv().await
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<Envelope> {
        self.rx.try_recv().ok()
    }
}

impl Bus {
    /// Queue depth of each subscription.
    pub const CAPACITY: usize = 1024;

    /// A bus with no subscribers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Subscribes to `topic`.
    pub fn subscribe(&self, topic: Topic) -> Subscription {
        let (tx, rx) = mpsc::channel(Self::CAPACITY);
        lock(&self.subscribers).push(Subscriber { topic, tx });
        Subscription { rx }
    }

    /// The sink that publishes to this bus.
    pub fn sink(&self) -> BusSink {
        BusSink { bus: self.clone() }
    }

    /// Number of live subscriptions.
    pub fn subscribers(&self) -> usize {
        let mut subs = lock(&self.subscribers);
        subs.retain(|s| !s.tx.is_closed());
        subs.len()
    }
}

/// The [`Sink`] of a [`Bus`].
#[derive(Clone, Debug)]
pub struct BusSink {
    bus: Bus,
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl Sink for BusSink {
    fn name(&self) -> &str {
        "bus"
    }

    async fn publish(&self, batch: &[Envelope]) -> Vec<Outcome> {
        let targets: Vec<(Topic, mpsc::Sender<Envelope>)> =
            lock(&self.bus.subscribers).iter().map(|s| (s.topic.clone(), s.tx.clone())).collect();
        for e in batch {
            for (topic, tx) in &targets {
                if topic.matches(e) {
                    // A closed subscription is gone: nothing to deliver to.
                    let _ = tx.send(e.clone()).await;
                }
            }
        }
        batch.iter().map(|_| Outcome::Ok).collect()
    }
}

type Script = Box<dyn Fn(&Envelope) -> Outcome + Send + Sync>;

/// A sink for tests: an optional script decides each outcome (default:
/// all `Ok`); every attempt is logged, and delivered events go to a
/// channel.
pub struct ChannelSink {
    script: Mutex<Option<Script>>,
    tx: mpsc::UnboundedSender<Envelope>,
    attempts: Mutex<Vec<(EventId, Outcome)>>,
    calls: Mutex<Vec<usize>>,
}

impl fmt::Debug for ChannelSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelSink").field("attempts", &lock(&self.attempts).len()).finish()
    }
}

impl ChannelSink {
    /// A sink that accepts everything, and the receiver of what it
    /// delivered.
    pub fn new() -> (Arc<Self>, mpsc::UnboundedReceiver<Envelope>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let sink = ChannelSink {
            script: Mutex::new(None),
            tx,
            attempts: Mutex::new(Vec::new()),
            calls: Mutex::new(Vec::new()),
        };
        (Arc::new(sink), rx)
    }

    /// Decides each outcome with `f` from now on.
    pub fn script(&self, f: impl Fn(&Envelope) -> Outcome + Send + Sync + 'static) {
        *lock(&self.script) = Some(Box::new(f));
    }

    /// Accepts everything again.
    pub fn unscript(&self) {
        *lock(&self.script) = None;
    }

    /// Every attempt so far, in order, with its outcome.
    pub fn attempts(&self) -> Vec<(EventId, Outcome)> {
        lock(&self.attempts).clone()
    }

    /// The size of each `publish` call so far.
    pub fn calls(&self) -> Vec<usize> {
        lock(&self.calls).clone()
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl Sink for ChannelSink {
    fn name(&self) -> &str {
        "channel"
    }

    async fn publish(&self, batch: &[Envelope]) -> Vec<Outcome> {
        lock(&self.calls).push(batch.len());
        let script = lock(&self.script);
        let outcomes: Vec<Outcome> =
            batch.iter().map(|e| script.as_ref().map_or(Outcome::Ok, |f| f(e))).collect();
        drop(script);
        let mut log = lock(&self.attempts);
        for (e, o) in batch.iter().zip(&outcomes) {
            log.push((e.id, o.clone()));
            if o.is_ok() {
                let _ = self.tx.send(e.clone());
            }
        }
        outcomes
    }
}
