//! The model test: random operation sequences run against a store and a
//! deliberately simple reference model, compared after every step.
//!
//! Use [`model_tests!`](crate::model_tests) to get it as a test.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use outbox_core::{
    ActorId, ClaimRequest, Commit, ConsumerId, DurableStore, Envelope, ErrorKind, EventId, InboxMark,
    LeaderGrant, ManualClock, NewEvent, OrderingKey, SharedClock, Timestamp, Version,
};
use proptest::prelude::*;
use proptest::test_runner::Config;

use crate::StoreFactory;
use crate::conformance::T0;

const ACTORS: u8 = 3;
const KEYS: u8 = 2;
const FOREIGN: u8 = 4;

/// One step of a model run.
#[derive(Clone, Debug)]
pub enum Op {
    /// Commit a state change of actor `actor` with `events` events (keyed
    /// by origin, or by shared key `keyed`), optionally an inbox mark for
    /// foreign event `mark`; `stale` bases it on a wrong version.
    Commit {
        /// Which actor.
        actor: u8,
        /// Base it on a wrong version.
        stale: bool,
        /// How many events.
        events: u8,
        /// A shared ordering key instead of the origin.
        keyed: Option<u8>,
        /// An inbox mark for one of a few foreign events.
        mark: Option<u8>,
    },
    /// Claim.
    Claim {
        /// Most events.
        limit: u8,
        /// Lease in ms.
        lease_ms: u32,
        /// Park dead keys.
        park: bool,
    },
    /// Ack some held events (and maybe an unknown id).
    Ack {
        /// Indexes into the held events.
        picks: Vec<u8>,
        /// Also ack an id the store never saw.
        unknown: bool,
    },
    /// Release some held events unattempted.
    Release {
        /// Indexes into the held events.
        picks: Vec<u8>,
    },
    /// Retry a held event later.
    Retry {
        /// Index into the held events.
        pick: u8,
        /// Delay in ms.
        delay_ms: u32,
    },
    /// Dead-letter a held event.
    DeadLetter {
        /// Index into the held events.
        pick: u8,
    },
    /// Requeue a dead event.
    Requeue {
        /// Index into the dead events.
        pick: u8,
    },
    /// Move the clock.
    Advance {
        /// Milliseconds.
        ms: u32,
    },
    /// Prune delivered events acked more than `age_ms` ago.
    Prune {
        /// Retention in ms.
        age_ms: u32,
    },
    /// Release leadership; a new holder takes it; the old grant is kept.
    TakeOver,
    /// Ack a pending event with the previous (stale) grant.
    StaleAck {
        /// Index into the pending events.
        pick: u8,
    },
}

/// Random operation sequences.
pub fn ops_strategy() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        6 => (0..ACTORS, prop::bool::weighted(0.15), 0u8..4, prop::option::weighted(0.3, 0..KEYS), prop::option::weighted(0.3, 0..FOREIGN))
            .prop_map(|(actor, stale, events, keyed, mark)| Op::Commit { actor, stale, events, keyed, mark }),
        5 => (0u8..6, 1u32..3_000, any::<bool>()).prop_map(|(limit, lease_ms, park)| Op::Claim { limit, lease_ms, park }),
        4 => (prop::collection::vec(any::<u8>(), 0..4), prop::bool::weighted(0.2)).prop_map(|(picks, unknown)| Op::Ack { picks, unknown }),
        2 => (any::<u8>(), 0u32..4_000).prop_map(|(pick, delay_ms)| Op::Retry { pick, delay_ms }),
        1 => prop::collection::vec(any::<u8>(), 1..3).prop_map(|picks| Op::Release { picks }),
        1 => any::<u8>().prop_map(|pick| Op::DeadLetter { pick }),
        1 => any::<u8>().prop_map(|pick| Op::Requeue { pick }),
        3 => (0u32..4_000).prop_map(|ms| Op::Advance { ms }),
        1 => (0u32..5_000).prop_map(|age_ms| Op::Prune { age_ms }),
        1 => Just(Op::TakeOver),
        1 => any::<u8>().prop_map(|pick| Op::StaleAck { pick }),
    ];
    prop::collection::vec(op, 1..60)
}

/// The proptest configuration: `cases` runs unless `PROPTEST_CASES` says
/// otherwise; failures are not persisted to files.
pub fn config(cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(cases);
    Config { cases, failure_persistence: None, ..Config::default() }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    Pending,
    Dead,
    Delivered(i64),
}

#[derive(Clone, Debug)]
struct MEvent {
    id: EventId,
    key: OrderingKey,
    st: St,
    claimed_by: Option<u64>,
    lease_until: Option<i64>,
    next_at: i64,
    attempts: u32,
    created: i64,
    last_error: Option<String>,
}

#[derive(Debug, Default)]
struct Model {
    now: i64,
    states: HashMap<u8, (u64, Vec<u8>)>,
    events: Vec<MEvent>,
    marks: HashSet<u8>,
}

impl Model {
    fn held(&self, epoch: u64) -> Vec<usize> {
        (0..self.events.len())
            .filter(|&i| self.events[i].st == St::Pending && self.events[i].claimed_by == Some(epoch))
            .collect()
    }

    fn with_status(&self, st: St) -> Vec<usize> {
        (0..self.events.len()).filter(|&i| self.events[i].st == st).collect()
    }

    fn claim(&mut self, epoch: u64, limit: usize, lease: i64, park: bool) -> Vec<usize> {
        let now = self.now;
        let mut blocked: HashSet<OrderingKey> = HashSet::new();
        let mut out = Vec::new();
        for (i, e) in self.events.iter_mut().enumerate() {
            if out.len() >= limit {
                break;
            }
            if blocked.contains(&e.key) {
                continue;
            }
            match e.st {
                St::Delivered(_) => continue,
                St::Dead => {
                    if park {
                        blocked.insert(e.key.clone());
                    }
                    continue;
                }
                St::Pending => {}
            }
            if e.lease_until.is_some_and(|t| t > now) || e.next_at > now {
                blocked.insert(e.key.clone());
                continue;
            }
            e.attempts += 1;
            e.claimed_by = Some(epoch);
            e.lease_until = Some(now + lease);
            out.push(i);
        }
        out
    }
}

fn actor_id(i: u8) -> ActorId {
    ActorId::new(format!("actor-{i}")).expect("valid")
}

fn foreign(i: u8) -> (ActorId, EventId) {
    // Fixed ids per index, so repeated marks collide.
    (actor_id(200), EventId::from_bytes([0x01, 0x8f, 0, 0, 0, 0, 0x70, 0, 0x80, 0, 0, 0, 0, 0, 0, i]))
}

fn consumer() -> ConsumerId {
    ConsumerId::new("model-consumer").expect("valid")
}

/// Runs `ops` against a fresh store from `factory` and the model; panics at
/// the first difference, naming the step.
pub async fn run<F: StoreFactory>(factory: &F, ops: Vec<Op>) {
    let location = factory.location().await;
    let clock = ManualClock::new(T0);
    let shared: SharedClock = clock.clone();
    let store: Arc<dyn DurableStore> = factory.open(&location, shared).await.expect("open");
    let mut m = Model { now: T0.as_millis(), ..Model::default() };
    let mut holder = 0u32;
    let mut grant = store
        .acquire_leadership("model-0", Duration::from_secs(3600 * 24))
        .await
        .expect("acquire")
        .expect("free store");
    let mut stale: Option<LeaderGrant> = None;

    for (step, op) in ops.iter().enumerate() {
        let ctx = format!("step {step}: {op:?}");
        match op.clone() {
            Op::Commit { actor, stale: is_stale, events, keyed, mark } => {
                let a = actor_id(actor);
                let current = m.states.get(&actor).map_or(0, |s| s.0);
                let expected = if is_stale { current + 1 } else { current };
                let snapshot = format!("{actor}@{step}").into_bytes();
                let mut commit = Commit::state(a.clone(), Version(expected), snapshot.clone());
                let mut new = Vec::new();
                for n in 0..events {
                    let mut e = NewEvent::json(a.clone(), "MODEL", &(step, n)).expect("json");
                    if let Some(k) = keyed {
                        e = e.with_key(OrderingKey::new(format!("shared-{k}")).expect("key"));
                    }
                    new.push(e.clone());
                    commit = commit.event(e);
                }
                if let Some(f) = mark {
                    let (origin, event_id) = foreign(f);
                    commit = commit.inbox_mark(InboxMark { consumer: consumer(), origin, event_id });
                }
                let mut allowed = Vec::new();
                if is_stale {
                    allowed.push(ErrorKind::Conflict);
                }
                if mark.is_some_and(|f| m.marks.contains(&f)) {
                    allowed.push(ErrorKind::AlreadyProcessed);
                }
                let r = store.put_state_and_events(commit).await;
                if allowed.is_empty() {
                    let receipt = r.unwrap_or_else(|e| panic!("{ctx}: commit failed: {e}"));
                    assert_eq!(receipt.version, Some(Version(expected + 1)), "{ctx}");
                    m.states.insert(actor, (expected + 1, snapshot));
                    if let Some(f) = mark {
                        m.marks.insert(f);
                    }
                    for e in new {
                        m.events.push(MEvent {
                            id: e.id,
                            key: e.key,
                            st: St::Pending,
                            claimed_by: None,
                            lease_until: None,
                            next_at: m.now,
                            attempts: 0,
                            created: m.now,
                            last_error: None,
                        });
                    }
                } else {
                    let k = r
                        .err()
                        .unwrap_or_else(|| panic!("{ctx}: commit should fail with one of {allowed:?}"))
                        .kind();
                    assert!(allowed.contains(&k), "{ctx}: got {k}, expected one of {allowed:?}");
                }
            }
            Op::Claim { limit, lease_ms, park } => {
                let req = ClaimRequest::new(limit as usize, Duration::from_millis(lease_ms as u64))
                    .park_dead_keys(park);
                let got = store.claim(&grant, req).await.unwrap_or_else(|e| panic!("{ctx}: claim: {e}"));
                let want = m.claim(grant.epoch.0, limit as usize, lease_ms as i64, park);
                let got_ids: Vec<_> = got.iter().map(|e| (e.id, e.attempts)).collect();
                let want_ids: Vec<_> = want.iter().map(|&i| (m.events[i].id, m.events[i].attempts)).collect();
                assert_eq!(got_ids, want_ids, "{ctx}: claimed (id, attempts)");
                for (g, &i) in got.iter().zip(&want) {
                    assert_eq!(g.last_error, m.events[i].last_error, "{ctx}: last_error");
                    assert_eq!(g.created_at.as_millis(), m.events[i].created, "{ctx}: created_at");
                }
            }
            Op::Ack { picks, unknown } => {
                let held = m.held(grant.epoch.0);
                let mut ids: Vec<EventId> = Vec::new();
                if !held.is_empty() {
                    for p in picks {
                        ids.push(m.events[held[p as usize % held.len()]].id);
                    }
                }
                if unknown {
                    ids.push(EventId::new());
                }
                store.ack(&grant, &ids).await.unwrap_or_else(|e| panic!("{ctx}: ack: {e}"));
                let now = m.now;
                for e in m.events.iter_mut().filter(|e| ids.contains(&e.id) && e.st == St::Pending) {
                    e.st = St::Delivered(now);
                    e.lease_until = None;
                }
            }
            Op::Release { picks } => {
                let held = m.held(grant.epoch.0);
                if held.is_empty() {
                    continue;
                }
                let mut chosen: Vec<usize> = picks.iter().map(|p| held[*p as usize % held.len()]).collect();
                chosen.dedup();
                let ids: Vec<EventId> = chosen.iter().map(|&i| m.events[i].id).collect();
                store.release(&grant, &ids).await.unwrap_or_else(|e| panic!("{ctx}: release: {e}"));
                let mut seen = HashSet::new();
                for i in chosen {
                    let e = &mut m.events[i];
                    if seen.insert(i) && e.lease_until.is_some() {
                        e.attempts = e.attempts.saturating_sub(1);
                        e.lease_until = None;
                    }
                }
            }
            Op::Retry { pick, delay_ms } => {
                let held = m.held(grant.epoch.0);
                if held.is_empty() {
                    continue;
                }
                let i = held[pick as usize % held.len()];
                let at = m.now + delay_ms as i64;
                store
                    .retry_later(
                        &grant,
                        m.events[i].id,
                        Timestamp::from_millis(at),
                        "model retry",
                        outbox_core::Attempt::Counted,
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: retry_later: {e}"));
                let e = &mut m.events[i];
                e.next_at = at;
                e.lease_until = None;
                e.last_error = Some("model retry".into());
            }
            Op::DeadLetter { pick } => {
                let held = m.held(grant.epoch.0);
                if held.is_empty() {
                    continue;
                }
                let i = held[pick as usize % held.len()];
                store
                    .dead_letter(&grant, m.events[i].id, "model dead")
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: dead_letter: {e}"));
                let e = &mut m.events[i];
                e.st = St::Dead;
                e.lease_until = None;
                e.last_error = Some("model dead".into());
            }
            Op::Requeue { pick } => {
                let dead = m.with_status(St::Dead);
                if dead.is_empty() {
                    continue;
                }
                let i = dead[pick as usize % dead.len()];
                let n = store
                    .requeue_dead(&[m.events[i].id])
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: requeue: {e}"));
                assert_eq!(n, 1, "{ctx}");
                let now = m.now;
                let e = &mut m.events[i];
                e.st = St::Pending;
                e.attempts = 0;
                e.next_at = now;
                e.claimed_by = None;
                e.lease_until = None;
            }
            Op::Advance { ms } => {
                clock.advance(Duration::from_millis(ms as u64));
                m.now += ms as i64;
            }
            Op::Prune { age_ms } => {
                let before = m.now - age_ms as i64;
                let n = store
                    .prune_delivered(Timestamp::from_millis(before), usize::MAX)
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: prune: {e}"));
                let len = m.events.len();
                m.events.retain(|e| !matches!(e.st, St::Delivered(at) if at < before));
                assert_eq!(n, (len - m.events.len()) as u64, "{ctx}: pruned count");
            }
            Op::TakeOver => {
                store.release_leadership(&grant).await.unwrap_or_else(|e| panic!("{ctx}: release: {e}"));
                holder += 1;
                let next = store
                    .acquire_leadership(&format!("model-{holder}"), Duration::from_secs(3600 * 24))
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: acquire: {e}"))
                    .unwrap_or_else(|| panic!("{ctx}: released leadership could not be taken"));
                assert!(next.epoch > grant.epoch, "{ctx}: epochs grow");
                stale = Some(std::mem::replace(&mut grant, next));
            }
            Op::StaleAck { pick } => {
                let (Some(old), pending) = (&stale, m.with_status(St::Pending)) else { continue };
                if pending.is_empty() {
                    continue;
                }
                let id = m.events[pending[pick as usize % pending.len()]].id;
                let r = store.ack(old, &[id]).await;
                assert_eq!(
                    r.err().map(|e| e.kind()),
                    Some(ErrorKind::Fenced),
                    "{ctx}: stale ack must be fenced"
                );
            }
        }
        check(&*store, &m, &ctx).await;
    }
}

async fn check(store: &dyn DurableStore, m: &Model, ctx: &str) {
    let s = store.stats().await.unwrap_or_else(|e| panic!("{ctx}: stats: {e}"));
    let pending = m.with_status(St::Pending);
    let in_flight = pending.iter().filter(|&&i| m.events[i].lease_until.is_some_and(|t| t > m.now)).count();
    let delivered = m.events.iter().filter(|e| matches!(e.st, St::Delivered(_))).count();
    let oldest = pending.iter().map(|&i| m.events[i].created).min().map(Timestamp::from_millis);
    assert_eq!(
        (s.pending, s.in_flight, s.dead, s.delivered, s.oldest_pending_at),
        (
            pending.len() as u64,
            in_flight as u64,
            m.with_status(St::Dead).len() as u64,
            delivered as u64,
            oldest
        ),
        "{ctx}: stats (pending, in_flight, dead, delivered, oldest)"
    );
    let listed: Vec<EventId> = store
        .list_pending(usize::MAX)
        .await
        .unwrap_or_else(|e| panic!("{ctx}: list: {e}"))
        .iter()
        .map(|e: &Envelope| e.id)
        .collect();
    let want: Vec<EventId> = pending.iter().map(|&i| m.events[i].id).collect();
    assert_eq!(listed, want, "{ctx}: pending in commit order");
    let dead: Vec<EventId> = store
        .list_dead(usize::MAX)
        .await
        .unwrap_or_else(|e| panic!("{ctx}: dead: {e}"))
        .iter()
        .map(|e| e.id)
        .collect();
    let want: Vec<EventId> = m.with_status(St::Dead).iter().map(|&i| m.events[i].id).collect();
    assert_eq!(dead, want, "{ctx}: dead in commit order");
    for a in 0..ACTORS {
        let got = store.load_state(&actor_id(a)).await.unwrap_or_else(|e| panic!("{ctx}: load: {e}"));
        let got = got.map(|s| (s.version.0, s.bytes));
        assert_eq!(got, m.states.get(&a).cloned(), "{ctx}: state of actor {a}");
    }
    for f in 0..FOREIGN {
        let (origin, id) = foreign(f);
        let got = store
            .is_processed(&consumer(), &origin, id)
            .await
            .unwrap_or_else(|e| panic!("{ctx}: inbox: {e}"));
        assert_eq!(got, m.marks.contains(&f), "{ctx}: inbox mark {f}");
    }
}
