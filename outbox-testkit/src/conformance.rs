//! The conformance suite: one `pub async fn` per property of the store
//! contract, each over a [`StoreFactory`].
//!
//! Use [`conformance_tests!`](crate::conformance_tests) to get one named
//! test per property. Every function panics with a message naming what
//! broke; none sleeps: time is a [`ManualClock`] the suite moves.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use outbox_core::{
    ActorId, Attempt, ClaimRequest, Commit, ConsumerId, DeliveryInfo, DurableStore, DurableStoreExt,
    Envelope, ErrorKind, EventId, EventStatus, InboxMark, LeaderGrant, LeadershipMode, ManualClock, NewEvent,
    OrderingKey, Payload, Result, SharedClock, StoreStats, Timestamp, Version,
};

use crate::StoreFactory;
use crate::faulty::{FaultMode, FaultyStore};
use outbox_core::Clock;
use outbox_core::prelude::*;

/// Where the suite's clock starts: 2026-01-01T00:00:00Z.
pub const T0: Timestamp = Timestamp::from_millis(1_767_225_600_000);
/// The lease the suite claims with.
pub const LEASE: Duration = Duration::from_secs(10);
/// The leadership ttl the suite uses.
pub const TTL: Duration = Duration::from_secs(30);

/// One store under test, with its location and clock.
#[derive(Debug)]
pub struct Ctx<'f, F: StoreFactory> {
    factory: &'f F,
    location: F::Location,
    /// The clock the store reads.
    pub clock: Arc<ManualClock>,
    /// The store.
    pub store: Arc<dyn DurableStore>,
}

impl<'f, F: StoreFactory> Ctx<'f, F> {
    /// A fresh, empty store at [`T0`].
    pub async fn fresh(factory: &'f F) -> Self {
        let location = factory.location().await;
        let clock = ManualClock::new(T0);
        let shared: SharedClock = clock.clone();
        let store = factory.open(&location, shared).await.expect("opening a fresh store");
        Ctx { factory, location, clock, store }
    }

    /// Drops the store handle and opens the same location again.
    pub async fn reopen(self) -> Self {
        let Ctx { factory, location, clock, store } = self;
        drop(store);
        let shared: SharedClock = clock.clone();
        let store = factory.open(&location, shared).await.expect("reopening the store");
        Ctx { factory, location, clock, store }
    }

    /// Moves the clock forward.
    pub fn advance(&self, d: Duration) {
        self.clock.advance(d);
    }

    /// Acquires leadership as `holder`.
    pub async fn lead(&self, holder: &str) -> LeaderGrant {
        self.store
            .acquire_leadership(holder, TTL)
            .await
            .expect("acquire_leadership")
            .unwrap_or_else(|| panic!("{holder} could not acquire leadership of a free store"))
    }

    /// Claims with the suite's lease, skipping dead keys.
    pub async fn claim(&self, grant: &LeaderGrant, limit: usize) -> Vec<Envelope> {
        self.store.claim(grant, ClaimRequest::new(limit, LEASE)).await.expect("claim")
    }

    /// Commits `events` with no state change.
    pub async fn commit_events(&self, events: Vec<NewEvent>) {
        self.store.put_state_and_events(Commit::events_only().events(events)).await.expect("commit");
    }

    /// Counts by status.
    pub async fn stats(&self) -> StoreStats {
        self.store.stats().await.expect("stats")
    }

    /// Ids of the pending events, in commit order.
    pub async fn pending_ids(&self) -> Vec<EventId> {
        ids(&self.store.list_pending(usize::MAX).await.expect("list_pending"))
    }
}

/// An actor id (panics on an invalid one: test input).
pub fn actor(name: &str) -> ActorId {
    ActorId::new(name).expect("valid actor id")
}

/// An event from `origin` with JSON payload `{"n": n}`.
pub fn event(origin: &ActorId, n: u64) -> NewEvent {
    NewEvent::json(origin.clone(), "TEST_EVENT", &serde_json::json!({ "n": n })).expect("json payload")
}

/// The ids of `envs`, in order.
pub fn ids(envs: &[Envelope]) -> Vec<EventId> {
    envs.iter().map(|e| e.id).collect()
}

/// The error kind of `r`; panics if it is `Ok`.
#[track_caller]
pub fn kind_of<T: std::fmt::Debug>(r: Result<T>) -> ErrorKind {
    match r {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => e.kind(),
    }
}

fn n_of(e: &Envelope) -> u64 {
    let v: serde_json::Value = e.payload.decode_json().expect("payload decodes");
    v["n"].as_u64().expect("payload has n")
}

// ---------------------------------------------------------------- state

/// A commit's state and events are there afterwards, exactly as written.
pub async fn commit_then_load<F: StoreFactory>(factory: &F) {
    let ctx = Ctx::fresh(factory).await;
    let a = actor("form-1");
    assert_eq!(ctx.store.load_state(&a).await.expect("load"), None, "fresh store has no state");

    let e1 = event(&a, 1).with_header("trace", "t-1").with_schema_version(3);
    let e2 = NewEvent::new(a.clone(), "BINARY", Payload::bytes(vec![0, 159, 255]));
    let r = ctx
        .store
        .put_state_and_events(
            Commit::state(a.clone(), Version::NONE, b"draft".to_vec()).event(e1.clone()).event(e2.clone()),
        )
        .await
        .expect("first commit");
    assert_eq!(r.version, Some(Version(1)));
    assert_eq!(r.committed_at, T0);

    let s = ctx.store.load_state(&a).await.expect("load").expect("state after commit");
    assert_eq!((s.version, s.bytes.as_slice(), s.updated_at), (Version(1), &b"draft"[..], T0));

    ctx.advance(Duration::from_secs(1));
    let r = ctx
        .store
        .put_state_and_events(Commit::state(a.clone(), Version(1), b"saved".to_vec()))
        .await
        .expect("second commit");
    assert_eq!(r.version, Some(Version(2)));
    let s = ctx.store.load_state(&a).await.expect("load").expect("state");
    assert_eq!((s.version, s.bytes.as_slice()), (Version(2), &b"saved"[..]));

    let pending = ctx.store.list_pending(10).await.expect("list_pending");
    assert_eq!(ids(&pending), vec![e1.id, e2.id]);
    let p1 = &pending[0];
    assert_eq!(
        (&p1.origin, p1.key.as_str(), p1.event_type.as_str(), p1.schema_version),
        (&a, "form-1", "TEST_EVENT", 3)
    );
    assert_eq!(p1.headers.get("trace").map(String::as_str), Some("t-1"));
    assert_eq!(p1.payload, e1.payload);
    assert_eq!((p1.created_at, p1.next_attempt_at, p1.attempts, p1.last_error.as_deref()), (T0, T0, 0, None));
    assert_eq!(pending[1].payload, e2.payload, "byte payloads round-trip exactly");
}

/// A commit based on a stale version fails with `Conflict` and writes
/// neither its state nor its events nor its inbox marks.
pub async fn version_conflict_writes_nothing<F: StoreFactory>(factory: &F) {
    let ctx = Ctx::fresh(factory).await;
    let a = actor("a");
    ctx.store
        .put_state_and_events(Commit::state(a.clone(), Version::NONE, b"one".to_vec()).event(event(&a, 1)))
        .await
        .expect("commit");
    let before = ctx.stats().await;

    let stale = event(&a, 2);
    let mark = InboxMark {
        consumer: ConsumerId::new("c").expect("id"),
        origin: actor("x"),
        event_id: EventId::new(),
    };
    for expected in [Version::NONE, Version(2), Version(7)] {
        let c =
            Commit::state(a.clone(), expected, b"two".to_vec()).event(stale.clone()).inbox_mark(mark.clone());
        assert_eq!(
            kind_of(ctx.store.put_state_and_events(c).await),
            ErrorKind::Conflict,
            "expected {expected}"
        );
    }
    let s = ctx.store.load_state(&a).await.expect("load").expect("state");
    assert_eq!((s.version, s.bytes.as_slice()), (Version(1), &b"one"[..]));
    assert_eq!(ctx.stats().await, before, "no event written by a conflicting commit");
    assert!(!ctx.pending_ids().await.contains(&stale.id));
    assert!(
        !ctx.store.is_processed(&mark.consumer, &mark.origin, mark.event_id).await.expect("is_processed")
    );
}

/// A commit that fails part-way (its last event's id is already stored, so
/// a backend writing in order fails after the state and earlier events)
/// leaves nothing behind.
pub async fn commit_is_atomic_under_mid_commit_failure<F: StoreFactory>(factory: &F) {
    let ctx = Ctx::fresh(factory).await;
    let a = actor("a");
    let existing = event(&a, 1);
    ctx.store
        .put_state_and_events(Commit::state(a.clone(), Version::NONE, b"v1".to_vec()).event(existing.clone()))
        .await
        .expect("commit");
    let before = ctx.stats().await;

    let fresh1 = event(&a, 2);
    let fresh2 = event(&actor("b"), 3);
    let clash = existing.clone().with_key(OrderingKey::new("other").expect("key"));
    let mark = InboxMark {
        consumer: ConsumerId::new("c").expect("id"),
        origin: actor("z"),
        event_id: EventId::new(),
    };
    let c = Commit::state(a.clone(), Version(1), b"v2".to_vec())
        .inbox_mark(mark.clone())
        .event(fresh1.clone())
        .event(fresh2.clone())
        .event(clash);
    assert_eq!(kind_of(ctx.store.put_state_and_events(c).await), ErrorKind::DuplicateEvent);

    let s = ctx.store.load_state(&a).await.expect("load").expect("state");
    assert_eq!((s.version, s.bytes.as_slice()), (Version(1), &b"v1"[..]), "state rolled back");
    assert_eq!(ctx.stats().await, before, "no event of the failed commit stored");
    assert_eq!(ctx.pending_ids().await, vec![existing.id]);
    assert!(
        !ctx.store.is_processed(&mark.consumer, &mark.origin, mark.event_id).await.expect("is_processed")
    );

    // The same commit without the clash goes through: the failure left no
    // lock, no reserved id, no half-state behind.
    let c = Commit::state(a.clone(), Version(1), b"v2".to_vec())
        .inbox_mark(mark.clone())
        .event(fresh1.clone())
        .event(fresh2.clone());
    ctx.store.put_state_and_events(c).await.expect("retry without the clash");
    assert_eq!(ctx.pending_ids().await, vec![existing.id, fresh1.id, fresh2.id]);
}

/// Many concurrent commits based on the same version: exactly one wins,
/// the rest fail with `Conflict`, and only the winner's events are stored.
pub async fn concurrent_commits_on_one_version_admit_one<F: StoreFactory>(factory: &F) {
    let ctx = Ctx::fresh(factory).await;
    let a = actor("contended");
    let attempts: Vec<_> = (0..16u64)
        .map(|i| {
            let ev = event(&a, i);
            let id = ev.id;
            (id, Commit::state(a.clone(), Version::NONE, format!("writer-{i}").into_bytes()).event(ev))
        })
        .collect();
    let store = &ctx.store;
    let results =
        futures::future::join_all(attempts.iter().map(|(_, c)| store.put_state_and_events(c.clone()))).await;
    let winners: Vec<usize> = results.iter().enumerate().filter(|(_, r)| r.is_ok()).map(|(i, _)| i).collect();
    assert_eq!(winners.len(), 1, "exactly one of 16 racing commits wins, got {winners:?}");
    for r in &results {
        if let Err(e) = r {
            assert_eq!(e.kind(), ErrorKind::Conflict);
        }
    }
    let w = winners[0];
    let s = ctx.store.load_state(&a).await.expect("load").expect("state");
    assert_eq!(s.bytes, format!("writer-{w}").into_bytes());
    assert_eq!(ctx.pending_ids().await, vec![attempts[w].0], "only the winner's event is stored");
}

/// Bad input is refused with `InvalidInput` and writes nothing.
pub async fn bad_input_rejected_and_nothing_written<F: StoreFactory>(factory: &F) {
    let ctx = Ctx::fresh(factory).await;
    let limits = ctx.store.capabilities().limits;
    let a = actor("a");
    let ok = event(&a, 0);
    let bad: Vec<(&str, Commit)> = vec![
        ("empty commit", Commit::events_only()),
        (
            "oversized payload",
            Commit::state(a.clone(), Version::NONE, b"s".to_vec()).event(ok.clone()).event(NewEvent::new(
                a.clone(),
                "BIG",
                Payload::bytes(vec![7; limits.max_payload_bytes + 1]),
            )),
        ),
        (
            "oversized snapshot",
            Commit::state(a.clone(), Version::NONE, vec![1; limits.max_snapshot_bytes + 1]),
        ),
        (
            "empty event type",
            Commit::events_only().event(ok.clone()).event(NewEvent::json(a.clone(), "", &1).expect("json")),
        ),
        ("id repeated in one commit", Commit::events_only().event(ok.clone()).event(ok.clone())),
        (
            "too many events",
            Commit::events_only().events((0..=limits.max_events_per_commit as u64).map(|i| event(&a, i))),
        ),
    ];
    for (what, c) in bad {
        assert_eq!(kind_of(ctx.store.put_state_and_events(c).await), ErrorKind::InvalidInput, "{what}");
    }
    assert_eq!(ctx.store.load_state(&a).await.expect("load"), None, "no state written");
    assert_eq!(ctx.stats().await, StoreStats::default(), "no event written");

    let g = ctx.lead("l").await;
    assert_eq!(
        kind_of(ctx.store.claim(&g, ClaimRequest::new(1, Duration::ZERO)).await),
        ErrorKind::InvalidInput,
        "zero lease"
    );
    assert_eq!(
        kind_of(ctx.store.acquire_leadership("m", Duration::ZERO).await),
        ErrorKind::InvalidInput,
        "zero ttl"
    );
    assert!(ctx.claim(&g, 0).await.is_empty(), "limit 0 claims nothing");
}

// ------------------------------------------------------------- delivery

/// Events of one key come out of claims in commit order, across commits
/// and interleaved with other keys, both in one big claim and one by one.
pub async fn events_of_one_key_claimed_in_commit_order<F: StoreFactory>(factory: &F) {
    let ctx = Ctx::fresh(factory).await;
    let (a, b) = (actor("a"), actor("b"));
    let shared = OrderingKey::new("shared").expect("key");
    let mut committed: Vec<NewEvent> = Vec::new();
    for i in 0..12u64 {
        let origin = if i % 2 == 0 { &a } else { &b };
        let mut batch = vec![event(origin, i * 10), event(origin, i * 10 + 1)];
        if i % 3 == 0 {
            batch.push(event(origin, i * 10 + 2).with_key(shared.clone()));
        }
        committed.extend(batch.iter().cloned());
        ctx.commit_events(batch).await;
        ctx.advance(Duration::from_millis(1));
    }
    let g = ctx.lead("l").await;
    let all = ctx.claim(&g, 1000).await;
    assert_eq!(ids(&all), ids_of_new(&committed), "one big claim returns everything in commit order");
    assert!(all.iter().all(|e| e.attempts == 1), "a claim counts an attempt");

    // One by one, acking each: the same order.
    let ctx = Ctx::fresh(factory).await;
    for e in &committed {
        ctx.commit_events(vec![e.clone()]).await;
    }
    let g = ctx.lead("l").await;
    let mut seen: HashMap<OrderingKey, Vec<u64>> = HashMap::new();
    loop {
        let batch = ctx.claim(&g, 1).await;
        let Some(e) = batch.first() else { break };
        seen.entry(e.key.clone()).or_default().push(n_of(e));
        ctx.store.ack(&g, &[e.id]).await.expect("ack");
    }
    let mut want: HashMap<OrderingKey, Vec<u64>> = HashMap::new();
    for e in &committed {
        want.entry(e.key.clone()).or_default().push(n_of_new(e));
    }
    assert_eq!(seen, want, "per-key order holds one at a time");
}

fn ids_of_new(events: &[NewEvent]) -> Vec<EventId> {
    events.iter().map(|e| e.id).collect()
}

fn n_of_new(e: &NewEvent) -> u64 {
    let v: serde_json::Value = e.payload.decode_json().expect("payload");
    v["n"].as_u64().expect("n")
}

/// An event is not claimed while an earlier event of its key is leased or
/// waiting for a retry; other keys are not held up.
pub async fn key_waits_for_its_leased_or_retrying_predecessor<F: StoreFactory>(factory: &F) {
    let ctx = Ctx::fresh(factory).await;
    let (a, b) = (actor("a"), actor("b"));
    let (a1, a2, b1) = (event(&a, 1), event(&a, 2), event(&b, 1));
    ctx.commit_events(vec![a1.clone(), a2.clone()]).await;
    ctx.commit_events(vec![b1.clone()]).await;
    let g = ctx.lead("l").await;

    assert_eq!(ids(&ctx.claim(&g, 1).await), vec![a1.id]);
    assert_eq!(ids(&ctx.claim(&g, 10).await), vec![b1.id], "a2 waits behind leased a1; b is not held up");
    ctx.store.ack(&g, &[b1.id]).await.expect("ack b1");

    ctx.store
        .retry_later(&g, a1.id, T0.saturating_add(Duration::from_secs(60)), "sink down", Attempt::Counted)
        .await
        .expect("retry_later");
    ctx.advance(Duration::from_secs(30));
    assert!(ctx.claim(&g, 10).await.is_empty(), "a1 not due, a2 behind it");

    ctx.advance(Duration::from_secs(30));
    assert_eq!(ids(&ctx.claim(&g, 10).await), vec![a1.id, a2.id], "once a1 is due both come, in order");
}

/// `claim_heads_of` keeps per-key order: a key whose first undelivered
/// event is leased gives nothing (not its next event), a key's next event
/// comes once the first is acked, and dead letters park the key when
/// asked. It holds for a store that finds the heads of given keys and for
/// one that claims in commit order instead (the provided method).
pub async fn claim_heads_of_keeps_key_order<F: StoreFactory>(factory: &F) {
    let ctx = Ctx::fresh(factory).await;
    let (a, b) = (actor("a"), actor("b"));
    let (a1, a2, b1) = (event(&a, 1), event(&a, 2), event(&b, 1));
    ctx.commit_events(vec![a1.clone(), b1.clone(), a2.clone()]).await;
    let g = ctx.lead("l").await;
    let key_a = [a1.key.clone()];
    let heads_of = |limit: usize, park: bool| {
        let request = ClaimRequest::new(limit, LEASE).park_dead_keys(park);
        let store = ctx.store.clone();
        let (g, keys) = (g.clone(), key_a.clone());
        async move { store.claim_heads_of(&g, request, &keys).await.expect("claim_heads_of") }
    };

    let first = heads_of(1, false).await;
    assert_eq!(ids(&first), vec![a1.id], "a's head");
    assert!(first.iter().all(|e| e.attempts == 1), "a claim counts an attempt");
    let second = heads_of(10, false).await;
    assert!(
        !ids(&second).contains(&a2.id) && !ids(&second).contains(&a1.id),
        "a2 waits behind leased a1, and a1 is not claimed twice: {second:?}"
    );
    ctx.store.ack(&g, &[a1.id]).await.expect("ack a1");
    assert_eq!(ids(&heads_of(10, false).await), vec![a2.id], "a's next event once a1 is acked");

    // a2 dead: parked, a's later event waits; skipped past otherwise.
    let a3 = event(&a, 3);
    ctx.commit_events(vec![a3.clone()]).await;
    ctx.store.dead_letter(&g, a2.id, "poison").await.expect("dead_letter a2");
    assert!(heads_of(10, true).await.is_empty(), "a dead letter parks its key when asked");
    assert_eq!(ids(&heads_of(10, false).await), vec![a3.id], "and is passed over otherwise");

    // Several keys: the limit, commit order, and a head waiting for a
    // retry holds its key.
    let (c, d) = (actor("c"), actor("d"));
    let (d1, c1, c2, d2) = (event(&d, 1), event(&c, 1), event(&c, 2), event(&d, 2));
    ctx.commit_events(vec![d1.clone(), c1.clone(), c2.clone(), d2.clone()]).await;
    let keys = [c1.key.clone(), d1.key.clone()];
    let heads_of = |limit: usize| {
        let store = ctx.store.clone();
        let (g, keys) = (g.clone(), keys.clone());
        async move {
            store.claim_heads_of(&g, ClaimRequest::new(limit, LEASE), &keys).await.expect("claim_heads_of")
        }
    };
    assert_eq!(ids(&heads_of(1).await), vec![d1.id], "the oldest head first, one at the limit of 1");
    let got = ids(&heads_of(10).await);
    assert!(got.first() == Some(&c1.id) && !got.contains(&d2.id), "c1 next, d2 behind leased d1: {got:?}");
    let later = ctx.clock.now().saturating_add(Duration::from_secs(60));
    ctx.store.retry_later(&g, c1.id, later, "sink down", Attempt::Counted).await.expect("retry_later c1");
    let got = ids(&heads_of(10).await);
    assert!(!got.contains(&c1.id) && !got.contains(&c2.id), "c waits for its retry: {got:?}");
}

/// A leased event is not claimed again, by anyone, until its lease ends.
pub async fn claims_exclusive_while_leased<F: StoreFactory>(factory: &F) {
    let ctx = Ctx::fresh(factory).await;
    let evs: Vec<_> = (0..5).map(|i| event(&actor(&format!("k{i}")), i)).collect();
    ctx.commit_events(evs.clone()).await;
    let g = ctx.lead("l").await;
    let first = ctx.claim(&g, 3).await;
    assert_eq!(ids(&first), ids_of_new(&evs[..3]));
    let second = ctx.claim(&g, 10).await;
    assert_eq!(ids(&second), ids_of_new(&evs[3..]), "only the unleased ones");
    ctx.advance(LEASE - Duration::from_millis(1));
    assert!(ctx.claim(&g, 10).await.is_empty(), "all leased until the lease ends");
    assert_eq!(ctx.stats().await.in_flight, 5);
}

/// A lease that expires makes the event claimable again (a crashed
/// claimer loses nothing), with its attempt count up.
pub async fn expired_lease_claimable_again<F: StoreFactory>(factory: &F) {
    let ctx = Ctx::fresh(factory).await;
    let a = actor("a");
    let evs = vec![event(&a, 1), event(&a, 2)];
    ctx.commit_events(evs.clone()).await;
    let g = ctx.lead("l").await;
    assert_eq!(ids(&ctx.claim(&g, 10).await), ids_of_new(&evs));
    ctx.advance(LEASE);
    let again = ctx.claim(&g, 10).await;
    assert_eq!(ids(&again), ids_of_new(&evs), "claimable again at lease end, in order");
    assert!(again.iter().all(|e| e.attempts == 2));
    assert_eq!(ctx.stats().await.pending, 2);
}

/// Acking is idempotent; an acked event is never claimed again.
pub async fn ack_is_idempotent<F: StoreFactory>(factory: &F) {
    let ctx = Ctx::fresh(factory).await;
    let a = actor("a");
    let evs: Vec<_> = (0..3).map(|i| event(&a, i)).collect();
    ctx.commit_events(evs.clone()).await;
    let g = ctx.lead("l").await;
    let claimed = ids(&ctx.claim(&g, 10).await);
    ctx.store.ack(&g, &claimed).await.expect("ack");
    ctx.store.ack(&g, &claimed).await.expect("second ack of the same ids");
    ctx.store.ack(&g, &[EventId::new()]).await.expect("ack of an unknown id");
    ctx.store.ack(&g, &[]).await.expect("empty ack");
    let s = ctx.stats().await;
    assert_eq!((s.pending, s.delivered, s.in_flight), (0, 3, 0));
    ctx.advance(LEASE * 10);
    assert!(ctx.claim(&g, 10).await.is_empty(), "delivered events never come back");
    assert!(ctx.pending_ids().await.is_empty());
}

/// `release` hands claims back unattempted: claimable again at once, with
/// the attempt count as before; a stale grant's release is fenced.
pub async fn release_returns_claims_unattempted<F: StoreFactory>(factory: &F) {
    let ctx = Ctx::fresh(factory).await;
    let a = actor("a");
    let evs = vec![event(&a, 1), event(&a, 2), event(&a, 3)];
    ctx.commit_events(evs.clone()).await;
    let g = ctx.lead("l").await;
    assert_eq!(ctx.claim(&g, 10).await.len(), 3);
    ctx.store.release(&g, &[evs[1].id, evs[2].id]).await.expect("release");
    assert_eq!(ctx.stats().await.in_flight, 1, "released events are no longer leased");
    ctx.store.ack(&g, &[evs[0].id]).await.expect("ack");
    let again = ctx.claim(&g, 10).await;
    assert_eq!(ids(&again), vec![evs[1].id, evs[2].id], "claimable again at once");
    assert!(again.iter().all(|e| e.attempts == 1), "the released claim was not counted as an attempt");
    ctx.store.release(&g, &[evs[0].id, EventId::new()]).await.expect("delivered and unknown ids are skipped");

    ctx.advance(TTL.max(LEASE) + Duration::from_secs(1));
    let g2 = ctx.lead("m").await;
    assert_eq!(ids(&ctx.claim(&g2, 10).await), vec![evs[1].id, evs[2].id]);
    assert_eq!(kind_of(ctx.store.release(&g, &[evs[1].id]).await), ErrorKind::Fenced);
    assert_eq!(ctx.stats().await.in_flight, 2, "the stale release changed nothing");
}

/// `retry_later` ends the lease and hides the event until its time, with
/// the error recorded.
pub async fn retry_later_not_claimable_before_its_time<F: StoreFactory>(factory: &F) {
    let ctx = Ctx::fresh(factory).await;
    let a = actor("a");
    let e = event(&a, 1);
    ctx.commit_events(vec![e.clone()]).await;
    let g = ctx.lead("l").await;
    assert_eq!(ids(&ctx.claim(&g, 1).await), vec![e.id]);
    let at = T0.saturating_add(Duration::from_secs(5));
    ctx.store.retry_later(&g, e.id, at, "503 from sink", Attempt::Counted).await.expect("retry_later");
    assert_eq!(ctx.stats().await.in_flight, 0, "retry_later ends the lease");
    ctx.advance(Duration::from_millis(4_999));
    assert!(ctx.claim(&g, 1).await.is_empty(), "not before its time");
    ctx.advance(Duration::from_millis(1));
    let back = ctx.claim(&g, 1).await;
    assert_eq!(ids(&back), vec![e.id]);
    assert_eq!((back[0].attempts, back[0].last_error.as_deref()), (2, Some("503 from sink")));
    assert_eq!(back[0].next_attempt_at, at);
}

/// `retry_later` with [`Attempt::Uncounted`] (the sink was down, not the
/// event) takes back the attempt the claim counted, and still records the
/// error and the time.
pub async fn retry_later_uncounted_takes_the_attempt_back<F: StoreFactory>(factory: &F) {
    let ctx = Ctx::fresh(factory).await;
    let e = event(&actor("a"), 1);
    ctx.commit_events(vec![e.clone()]).await;
    let g = ctx.lead("l").await;
    assert_eq!(ctx.claim(&g, 1).await[0].attempts, 1);
    let at = T0.saturating_add(Duration::from_secs(1));
    ctx.store.retry_later(&g, e.id, at, "circuit open", Attempt::Uncounted).await.expect("retry_later");
    assert!(ctx.claim(&g, 1).await.is_empty(), "not before its time");
    ctx.advance(Duration::from_secs(1));
    let back = ctx.claim(&g, 1).await;
    assert_eq!(back[0].attempts, 1, "the uncounted attempt was taken back");
    assert_eq!(back[0].last_error.as_deref(), Some("circuit open"));
    ctx.store.retry_later(&g, e.id, at, "500", Attempt::Counted).await.expect("retry_later");
    assert_eq!(ctx.claim(&g, 1).await[0].attempts, 2, "a counted attempt stays counted");
}

/// `retry_now` makes events waiting for a retry due at once, and leaves
/// events scheduled with `not_before` (that never failed) alone.
pub async fn retry_now_makes_backed_off_events_due<F: StoreFactory>(factory: &F) {
    let ctx = Ctx::fresh(factory).await;
    let (a, b, c) = (actor("a"), actor("b"), actor("c"));
    let (a1, b1) = (event(&a, 1), event(&b, 1));
    let c1 = event(&c, 1).not_before(T0.saturating_add(Duration::from_secs(600)));
    ctx.commit_events(vec![a1.clone(), b1.clone(), c1.clone()]).await;
    let g = ctx.lead("l").await;
    assert_eq!(ids(&ctx.claim(&g, 10).await), vec![a1.id, b1.id]);
    let hour = T0.saturating_add(Duration::from_secs(3600));
    ctx.store.retry_later(&g, a1.id, hour, "offline", Attempt::Counted).await.expect("retry_later");
    ctx.store.retry_later(&g, b1.id, hour, "offline", Attempt::Uncounted).await.expect("retry_later");
    assert!(ctx.claim(&g, 10).await.is_empty());
    assert_eq!(ctx.store.retry_now(&g).await.expect("retry_now"), 2, "the two backed-off events");
    let due = ctx.claim(&g, 10).await;
    assert_eq!(ids(&due), vec![a1.id, b1.id], "due at once; the scheduled event still waits");
    assert!(due.iter().all(|e| e.next_attempt_at <= T0));
    assert_eq!(ctx.store.retry_now(&g).await.expect("retry_now"), 0, "leased events are not due later");
    ctx.advance(TTL.max(LEASE) + Duration::from_secs(1));
    let g2 = ctx.lead("m").await;
    if ctx.store.capabilities().leadership == LeadershipMode::Exclusive {
        assert_eq!(kind_of(ctx.store.retry_now(&g).await), ErrorKind::Fenced, "a stale grant is fenced");
    }
    assert_eq!(ctx.store.retry_now(&g2).await.expect("retry_now"), 0);
}

/// Dead-letters `a1` of `a1, a2, a3` (one key) and `b1`, under park: the
/// start of the one-by-one dead letter properties.
async fn one_dead_parks<F: StoreFactory>(ctx: &Ctx<'_, F>) -> (LeaderGrant, Vec<NewEvent>, NewEvent) {
    let (a, b) = (actor("a"), actor("b"));
    let evs: Vec<_> = (1..=3).map(|i| event(&a, i)).collect();
    let b1 = event(&b, 1);
    let mut all = evs.clone();
    all.push(b1.clone());
    ctx.commit_events(all).await;
    let g = ctx.lead("l").await;
    assert_eq!(ids(&ctx.store.claim(&g, ClaimRequest::new(1, LEASE)).await.expect("claim")), vec![evs[0].id]);
    ctx.store.dead_letter(&g, evs[0].id, "NonRetriable: 422").await.expect("dead_letter");
    let park = ClaimRequest::new(10, LEASE).park_dead_keys(true);
    let got = ctx.store.claim(&g, park).await.expect("claim");
    assert_eq!(ids(&got), vec![b1.id], "a is parked behind its dead letter, b flows");
    ctx.store.ack(&g, &[b1.id]).await.expect("ack");
    (g, evs, b1)
}

fn park(limit: usize) -> ClaimRequest {
    ClaimRequest::new(limit, LEASE).park_dead_keys(true)
}

/// Requeueing one dead event: it is delivered first, then its key's later
/// events, in commit order; the other dead letters stay dead.
pub async fn requeue_one_keeps_key_order<F: StoreFactory>(factory: &F) {
    let ctx = Ctx::fresh(factory).await;
    let (g, evs, _) = one_dead_parks(&ctx).await;
    let c1 = event(&actor("c"), 1);
    ctx.commit_events(vec![c1.clone()]).await;
    assert_eq!(ids(&ctx.store.claim(&g, park(1)).await.expect("claim")), vec![c1.id]);
    ctx.store.dead_letter(&g, c1.id, "other").await.expect("dead_letter");
    assert_eq!(ctx.store.requeue_dead(&[evs[0].id]).await.expect("requeue"), 1, "one moved");
    assert_eq!(ids(&ctx.store.list_dead(10).await.expect("list_dead")), vec![c1.id], "the other stays dead");
    let first = ctx.store.claim(&g, park(1)).await.expect("claim");
    assert_eq!(ids(&first), vec![evs[0].id], "the requeued event goes first");
    assert!(ctx.store.claim(&g, park(10)).await.expect("claim").is_empty(), "its key waits for it");
    ctx.store.ack(&g, &[evs[0].id]).await.expect("ack");
    assert_eq!(ids(&ctx.store.claim(&g, park(10)).await.expect("claim")), vec![evs[1].id, evs[2].id]);
    assert_eq!(
        ctx.store.requeue_dead(&[evs[0].id]).await.expect("requeue"),
        0,
        "a delivered event is not dead"
    );
}

/// Discarding one dead event: it is never delivered, its key flows on in
/// order, it is kept as `discarded` (not dead, not pending) until pruning
/// removes it by discard time, and it cannot be requeued.
pub async fn discard_one_lets_its_key_flow<F: StoreFactory>(factory: &F) {
    let ctx = Ctx::fresh(factory).await;
    let (g, evs, _) = one_dead_parks(&ctx).await;
    ctx.advance(Duration::from_secs(60));
    assert_eq!(ctx.store.discard_dead(&[evs[0].id, evs[1].id, EventId::new()]).await.expect("discard"), 1);
    let s = ctx.stats().await;
    assert_eq!((s.dead, s.discarded, s.pending, s.delivered), (0, 1, 2, 1));
    assert!(ctx.store.list_dead(10).await.expect("list_dead").is_empty(), "no longer a dead letter");
    assert_eq!(ids(&ctx.store.claim(&g, park(10)).await.expect("claim")), vec![evs[1].id, evs[2].id]);
    assert_eq!(ctx.store.requeue_dead(&[evs[0].id]).await.expect("requeue"), 0, "discarded is final");
    ctx.advance(Duration::from_secs(10));
    ctx.store.ack(&g, &[evs[1].id, evs[2].id]).await.expect("ack");
    let discarded_at = T0.saturating_add(Duration::from_secs(60));
    assert_eq!(ctx.store.prune_delivered(discarded_at, 100).await.expect("prune"), 1, "b1, acked at T0");
    assert_eq!(ctx.stats().await.discarded, 1, "kept until retention passes its discard time");
    let later = discarded_at.saturating_add(Duration::from_millis(1));
    assert_eq!(ctx.store.prune_delivered(later, 100).await.expect("prune"), 1, "the discarded event only");
    let s = ctx.stats().await;
    assert_eq!((s.discarded, s.delivered), (0, 2));
}

/// Skipping one dead event: its key flows on in order while it stays dead
/// (listed, counted, requeueable).
pub async fn skip_one_lets_its_key_flow_and_stays_dead<F: StoreFactory>(factory: &F) {
    let ctx = Ctx::fresh(factory).await;
    let (g, evs, _) = one_dead_parks(&ctx).await;
    assert_eq!(ctx.store.skip_dead(&[evs[0].id, evs[1].id]).await.expect("skip"), 1, "only dead ids");
    assert_eq!(ctx.store.skip_dead(&[evs[0].id]).await.expect("skip"), 0, "already skipped");
    let got = ctx.store.claim(&g, park(1)).await.expect("claim");
    assert_eq!(ids(&got), vec![evs[1].id], "the key flows, in order");
    ctx.store.ack(&g, &[evs[1].id]).await.expect("ack");
    assert_eq!(ids(&ctx.store.claim(&g, park(10)).await.expect("claim")), vec![evs[2].id]);
    ctx.store.ack(&g, &[evs[2].id]).await.expect("ack");
    let dead = ctx.store.list_dead(10).await.expect("list_dead");
    assert_eq!(ids(&dead), vec![evs[0].id], "still a dead letter");
    assert_eq!(ctx.stats().await.dead, 1);
    assert_eq!(ctx.store.requeue_dead(&[evs[0].id]).await.expect("requeue"), 1, "still requeueable");
    assert_eq!(ids(&ctx.store.claim(&g, park(10)).await.expect("claim")), vec![evs[0].id]);
}

/// Stats count the keys parked by a dead letter that is not skipped: a
/// key once however many of its dead letters park it; a skipped,
/// discarded or requeued dead letter parks nothing.
pub async fn parked_keys_count_unskipped_dead_keys<F: StoreFactory>(factory: &F) {
    let ctx = Ctx::fresh(factory).await;
    let (a, b, c) = (actor("a"), actor("b"), actor("c"));
    let (a1, a2, b1, c1) = (event(&a, 1), event(&a, 2), event(&b, 1), event(&c, 1));
    ctx.commit_events(vec![a1.clone(), a2.clone(), b1.clone(), c1.clone()]).await;
    let g = ctx.lead("l").await;
    assert_eq!(ids(&ctx.claim(&g, 10).await), vec![a1.id, a2.id, b1.id, c1.id]);
    assert_eq!(ctx.stats().await.parked_keys, 0, "no dead letter yet");
    for e in [&a1, &a2, &b1] {
        ctx.store.dead_letter(&g, e.id, "NonRetriable: 422").await.expect("dead_letter");
    }
    let s = ctx.stats().await;
    assert_eq!((s.dead, s.pending, s.parked_keys), (3, 1, 2), "a (twice dead) and b; c is pending");
    assert_eq!(ctx.store.skip_dead(&[b1.id]).await.expect("skip"), 1);
    let s = ctx.stats().await;
    assert_eq!((s.dead, s.parked_keys), (3, 1), "a skipped dead letter parks nothing");
    assert_eq!(ctx.store.discard_dead(&[a1.id]).await.expect("discard"), 1);
    let s = ctx.stats().await;
    assert_eq!((s.dead, s.discarded, s.parked_keys), (2, 1, 1), "a2 still parks a");
    assert_eq!(ctx.store.requeue_dead(&[a2.id]).await.expect("requeue"), 1);
    let s = ctx.stats().await;
    assert_eq!((s.dead, s.pending, s.parked_keys), (1, 2, 0), "only the skipped b1 is dead");
}

/// An event committed with `not_before` is not delivered before then.
pub async fn not_before_delays_first_delivery<F: StoreFactory>(factory: &F) {
    let ctx = Ctx::fresh(factory).await;
    let a = actor("a");
    let later = event(&a, 1).not_before(T0.saturating_add(Duration::from_secs(60)));
    ctx.commit_events(vec![later.clone()]).await;
    let g = ctx.lead("l").await;
    assert!(ctx.claim(&g, 10).await.is_empty());
    ctx.advance(Duration::from_secs(60));
    assert_eq!(ids(&ctx.claim(&g, 10).await), vec![later.id]);
}

/// Dead letters are never claimed, are listed with their error, and a
/// requeue makes them claimable again with a fresh attempt count.
pub async fn dead_letters_never_claimed_listed_and_requeueable<F: StoreFactory>(factory: &F) {
    let ctx = Ctx::fresh(factory).await;
    let (a, b) = (actor("a"), actor("b"));
    let (a1, a2, b1) = (event(&a, 1), event(&a, 2), event(&b, 1));
    ctx.commit_events(vec![a1.clone(), a2.clone(), b1.clone()]).await;
    let g = ctx.lead("l").await;
    assert_eq!(ids(&ctx.claim(&g, 1).await), vec![a1.id]);
    ctx.store.dead_letter(&g, a1.id, "schema rejected").await.expect("dead_letter");

    let next = ctx.claim(&g, 10).await;
    assert_eq!(ids(&next), vec![a2.id, b1.id], "skip policy: the key flows on past its dead letter");
    ctx.store.ack(&g, &ids(&next)).await.expect("ack");
    ctx.advance(LEASE * 100);
    assert!(ctx.claim(&g, 10).await.is_empty(), "a dead letter is never claimed");

    let dead = ctx.store.list_dead(10).await.expect("list_dead");
    assert_eq!(ids(&dead), vec![a1.id]);
    assert_eq!(dead[0].last_error.as_deref(), Some("schema rejected"));
    let s = ctx.stats().await;
    assert_eq!((s.dead, s.pending, s.delivered), (1, 0, 2));
    assert!(ctx.pending_ids().await.is_empty(), "dead letters are not pending");

    assert_eq!(
        ctx.store.requeue_dead(&[a1.id, a2.id, EventId::new()]).await.expect("requeue"),
        1,
        "only dead ids move"
    );
    let back = ctx.claim(&g, 10).await;
    assert_eq!(ids(&back), vec![a1.id]);
    assert_eq!(back[0].attempts, 1, "requeue resets attempts");
    assert!(ctx.store.list_dead(10).await.expect("list_dead").is_empty());
}

/// With `park_dead_keys`, a dead letter holds back the later events of its
/// key (and only its key) until it is requeued.
pub async fn dead_letter_parks_its_key_when_asked<F: StoreFactory>(factory: &F) {
    let ctx = Ctx::fresh(factory).await;
    let (a, b) = (actor("a"), actor("b"));
    let (a1, a2, b1) = (event(&a, 1), event(&a, 2), event(&b, 1));
    ctx.commit_events(vec![a1.clone(), a2.clone(), b1.clone()]).await;
    let g = ctx.lead("l").await;
    let park = ClaimRequest::new(10, LEASE).park_dead_keys(true);
    assert_eq!(ids(&ctx.store.claim(&g, ClaimRequest::new(1, LEASE)).await.expect("claim")), vec![a1.id]);
    ctx.store.dead_letter(&g, a1.id, "poison").await.expect("dead_letter");
    assert_eq!(ids(&ctx.store.claim(&g, park).await.expect("claim")), vec![b1.id], "a is parked, b flows");
    ctx.advance(LEASE);
    assert_eq!(
        ids(&ctx.store.claim(&g, park).await.expect("claim")),
        vec![b1.id],
        "still parked after time passes"
    );
    ctx.store.requeue_dead(&[a1.id]).await.expect("requeue");
    ctx.advance(LEASE);
    assert_eq!(ids(&ctx.store.claim(&g, park).await.expect("claim")), vec![a1.id, a2.id, b1.id]);
}

/// Pruning deletes delivered events acked before the cut-off, never
/// pending or dead ones, and at most `limit` at a time.
pub async fn prune_removes_only_delivered_past_retention<F: StoreFactory>(factory: &F) {
    let ctx = Ctx::fresh(factory).await;
    let a = |i: u64| actor(&format!("k{i}"));
    let evs: Vec<_> = (0..6).map(|i| event(&a(i), i)).collect();
    ctx.commit_events(evs.clone()).await;
    let g = ctx.lead("l").await;
    let claimed = ctx.claim(&g, 10).await;
    assert_eq!(claimed.len(), 6);
    // 0,1,2 acked at T0; 3 acked at T0+1h; 4 dead; 5 pending.
    ctx.store.ack(&g, &[evs[0].id, evs[1].id, evs[2].id]).await.expect("ack");
    ctx.advance(Duration::from_secs(3600));
    ctx.store.ack(&g, &[evs[3].id]).await.expect("ack");
    ctx.store.dead_letter(&g, evs[4].id, "x").await.expect("dead");
    ctx.advance(Duration::from_secs(3600));

    let cut = T0.saturating_add(Duration::from_secs(1800));
    assert_eq!(ctx.store.prune_delivered(cut, 2).await.expect("prune"), 2, "limit respected");
    assert_eq!(ctx.store.prune_delivered(cut, 100).await.expect("prune"), 1);
    assert_eq!(ctx.store.prune_delivered(cut, 100).await.expect("prune"), 0, "the later ack is kept");
    let s = ctx.stats().await;
    assert_eq!((s.delivered, s.dead, s.pending), (1, 1, 1));
    assert_eq!(ctx.pending_ids().await, vec![evs[5].id]);
    assert_eq!(ids(&ctx.store.list_dead(10).await.expect("dead")), vec![evs[4].id]);
}

/// Stats count pending, in-flight, dead and delivered events, and the
/// oldest pending commit time.
pub async fn stats_count_by_status<F: StoreFactory>(factory: &F) {
    let ctx = Ctx::fresh(factory).await;
    assert_eq!(ctx.stats().await, StoreStats::default());
    let a = |i: u64| actor(&format!("k{i}"));
    ctx.commit_events(vec![event(&a(0), 0), event(&a(1), 1)]).await;
    ctx.advance(Duration::from_secs(5));
    ctx.commit_events(vec![event(&a(2), 2), event(&a(3), 3)]).await;
    let g = ctx.lead("l").await;
    let c = ctx.claim(&g, 3).await;
    ctx.store.ack(&g, &[c[0].id]).await.expect("ack");
    ctx.store.dead_letter(&g, c[1].id, "x").await.expect("dead");
    let s = ctx.stats().await;
    assert_eq!(
        s,
        StoreStats {
            pending: 2,
            in_flight: 1,
            dead: 1,
            delivered: 1,
            discarded: 0,
            parked_keys: 1,
            oldest_pending_at: Some(T0.saturating_add(Duration::from_secs(5)))
        }
    );
    ctx.advance(Duration::from_secs(5));
    assert_eq!(ctx.store.pending_count().await.expect("count"), 2);
    assert_eq!(
        ctx.store.oldest_pending_age(ctx.clock.now()).await.expect("age"),
        Some(Duration::from_secs(5))
    );
}

/// `list_by_status` lists each status's events, in commit order, each
/// under one status only, as many as the stats count; a limit is kept;
/// pruned events are no longer listed.
pub async fn list_by_status_lists_each_status<F: StoreFactory>(factory: &F) {
    let ctx = Ctx::fresh(factory).await;
    let a = |i: u64| actor(&format!("k{i}"));
    // Six keys, committed in order: 0 and 3 delivered, 1 dead, 2
    // discarded, 4 and 5 pending (5 never claimed).
    let evs: Vec<_> = (0..6).map(|i| event(&a(i), i)).collect();
    ctx.commit_events(evs.clone()).await;
    let g = ctx.lead("l").await;
    assert_eq!(ctx.claim(&g, 5).await.len(), 5);
    ctx.store.ack(&g, &[evs[3].id, evs[0].id]).await.expect("ack");
    ctx.store.dead_letter(&g, evs[1].id, "x").await.expect("dead");
    ctx.store.dead_letter(&g, evs[2].id, "x").await.expect("dead");
    assert_eq!(ctx.store.discard_dead(&[evs[2].id]).await.expect("discard"), 1);
    let list = |status| {
        let store = ctx.store.clone();
        async move { ids(&store.list_by_status(status, usize::MAX).await.expect("list_by_status")) }
    };
    assert_eq!(list(EventStatus::Pending).await, vec![evs[4].id, evs[5].id], "pending");
    assert_eq!(list(EventStatus::Dead).await, vec![evs[1].id], "dead");
    assert_eq!(list(EventStatus::Delivered).await, vec![evs[0].id, evs[3].id], "delivered, in commit order");
    assert_eq!(list(EventStatus::Discarded).await, vec![evs[2].id], "discarded");
    let one = ctx.store.list_by_status(EventStatus::Delivered, 1).await.expect("list_by_status");
    assert_eq!(ids(&one), vec![evs[0].id], "the limit is kept");
    assert_eq!(one[0].payload, evs[0].payload, "the event as committed");
    let s = ctx.stats().await;
    assert_eq!((s.pending, s.dead, s.delivered, s.discarded), (2, 1, 2, 1));
    ctx.advance(Duration::from_secs(1));
    assert_eq!(ctx.store.prune_delivered(ctx.clock.now(), 100).await.expect("prune"), 3);
    assert!(list(EventStatus::Delivered).await.is_empty(), "pruned");
    assert!(list(EventStatus::Discarded).await.is_empty(), "pruned");
    let found = ctx.store.find_event(evs[1].id).await.expect("find_event");
    assert_eq!(found.map(|(st, e)| (st, e.id)), Some((EventStatus::Dead, evs[1].id)));
    assert!(ctx.store.find_event(evs[0].id).await.expect("find_event").is_none(), "pruned");
}

/// `delivery_info` gives, per event, the lease and epoch of its last
/// claim (kept after the lease expires) and whether a dead letter is
/// skipped; `None` for an unknown id. A store whose capabilities say it
/// does not keep these answers `Unsupported`.
pub async fn delivery_info_shows_lease_epoch_and_skip<F: StoreFactory>(factory: &F) {
    let ctx = Ctx::fresh(factory).await;
    let evs: Vec<_> = (0..3).map(|i| event(&actor(&format!("k{i}")), i)).collect();
    ctx.commit_events(evs.clone()).await;
    let info = |id| {
        let store = ctx.store.clone();
        async move { store.delivery_info(id).await }
    };
    if !ctx.store.capabilities().delivery_info {
        assert_eq!(kind_of(info(evs[0].id).await), ErrorKind::Unsupported, "as the capabilities say");
        return;
    }
    let unclaimed = Some(DeliveryInfo::default());
    assert_eq!(info(evs[0].id).await.expect("delivery_info"), unclaimed, "never claimed");
    let g = ctx.lead("l").await;
    assert_eq!(ids(&ctx.claim(&g, 2).await), vec![evs[0].id, evs[1].id]);
    let leased = Some(DeliveryInfo::new(Some(T0.saturating_add(LEASE)), Some(g.epoch), false));
    assert_eq!(info(evs[0].id).await.expect("delivery_info"), leased, "the claim's lease and epoch");
    assert_eq!(info(evs[2].id).await.expect("delivery_info"), unclaimed, "not claimed");
    ctx.store.dead_letter(&g, evs[1].id, "x").await.expect("dead");
    assert!(!info(evs[1].id).await.expect("delivery_info").expect("known").skipped);
    assert_eq!(ctx.store.skip_dead(&[evs[1].id]).await.expect("skip"), 1);
    assert!(info(evs[1].id).await.expect("delivery_info").expect("known").skipped, "skipped");
    assert_eq!(ctx.store.requeue_dead(&[evs[1].id]).await.expect("requeue"), 1);
    assert!(!info(evs[1].id).await.expect("delivery_info").expect("known").skipped, "requeued");
    ctx.advance(LEASE * 2);
    assert_eq!(info(evs[0].id).await.expect("delivery_info"), leased, "kept after the lease expired");
    assert_eq!(info(EventId::new()).await.expect("delivery_info"), None, "an unknown id");
}

// ---------------------------------------------------------------- inbox

/// An inbox mark commits with the consumer's state change and events, or
/// not at all.
pub async fn inbox_mark_atomic_with_state<F: StoreFactory>(factory: &F) {
    let ctx = Ctx::fresh(factory).await;
    let producer = actor("producer");
    let consumer = ConsumerId::new("billing").expect("id");
    let me = actor("billing-state");
    let incoming = Envelope::committed(event(&producer, 1), T0);

    // A conflicting state change takes its inbox mark and events down with it.
    let follow_up = event(&me, 100);
    let bad = Commit::state(me.clone(), Version(5), b"x".to_vec())
        .mark_processed(consumer.clone(), &incoming)
        .event(follow_up.clone());
    assert_eq!(kind_of(ctx.store.put_state_and_events(bad).await), ErrorKind::Conflict);
    assert!(!ctx.store.is_processed(&consumer, &producer, incoming.id).await.expect("is_processed"));
    assert!(ctx.pending_ids().await.is_empty());

    let good = Commit::state(me.clone(), Version::NONE, b"charged".to_vec())
        .mark_processed(consumer.clone(), &incoming)
        .event(follow_up.clone());
    ctx.store.put_state_and_events(good).await.expect("commit");
    assert!(ctx.store.is_processed(&consumer, &producer, incoming.id).await.expect("is_processed"));
    assert_eq!(ctx.store.load_state(&me).await.expect("load").map(|s| s.bytes), Some(b"charged".to_vec()));
    assert_eq!(ctx.pending_ids().await, vec![follow_up.id]);
    let other = ConsumerId::new("shipping").expect("id");
    assert!(
        !ctx.store.is_processed(&other, &producer, incoming.id).await.expect("is_processed"),
        "marks are per consumer"
    );
}

/// A second commit carrying the same inbox mark fails with
/// `AlreadyProcessed` and writes nothing: the dedup is atomic even when
/// two deliveries race.
pub async fn duplicate_inbox_mark_detected<F: StoreFactory>(factory: &F) {
    let ctx = Ctx::fresh(factory).await;
    let producer = actor("producer");
    let consumer = ConsumerId::new("billing").expect("id");
    let me = actor("billing-state");
    let incoming = Envelope::committed(event(&producer, 1), T0);
    ctx.store
        .put_state_and_events(
            Commit::state(me.clone(), Version::NONE, b"1".to_vec())
                .mark_processed(consumer.clone(), &incoming),
        )
        .await
        .expect("first");
    let again = Commit::state(me.clone(), Version(1), b"2".to_vec())
        .mark_processed(consumer.clone(), &incoming)
        .event(event(&me, 5));
    assert_eq!(kind_of(ctx.store.put_state_and_events(again).await), ErrorKind::AlreadyProcessed);
    assert_eq!(ctx.store.current_version(&me).await.expect("version"), Version(1), "state not applied twice");
    assert!(ctx.pending_ids().await.is_empty());
    // A mark-only commit is detected too.
    let only = Commit::events_only().mark_processed(consumer, &incoming);
    assert_eq!(kind_of(ctx.store.put_state_and_events(only).await), ErrorKind::AlreadyProcessed);
}

/// Inbox pruning removes marks written before the cut-off only.
pub async fn inbox_prune_removes_only_old_marks<F: StoreFactory>(factory: &F) {
    let ctx = Ctx::fresh(factory).await;
    let p = actor("p");
    let c = ConsumerId::new("c").expect("id");
    let old = Envelope::committed(event(&p, 1), T0);
    let new = Envelope::committed(event(&p, 2), T0);
    ctx.store
        .put_state_and_events(Commit::events_only().mark_processed(c.clone(), &old))
        .await
        .expect("mark");
    ctx.advance(Duration::from_secs(100));
    ctx.store
        .put_state_and_events(Commit::events_only().mark_processed(c.clone(), &new))
        .await
        .expect("mark");
    assert_eq!(
        ctx.store.prune_inbox(T0.saturating_add(Duration::from_secs(50)), 10).await.expect("prune"),
        1
    );
    assert!(!ctx.store.is_processed(&c, &p, old.id).await.expect("q"));
    assert!(ctx.store.is_processed(&c, &p, new.id).await.expect("q"));
}

// ----------------------------------------------------------- leadership

/// After leadership and leases move on, the old leader's ack, retry and
/// dead-letter are rejected with `Fenced` and change nothing; the new
/// leader's are accepted.
pub async fn stale_leader_ack_rejected<F: StoreFactory>(factory: &F) {
    let ctx = Ctx::fresh(factory).await;
    let a = actor("a");
    let evs = vec![event(&a, 1), event(&a, 2)];
    ctx.commit_events(evs.clone()).await;
    let old = ctx.lead("old").await;
    assert_eq!(ctx.claim(&old, 10).await.len(), 2);

    // The old leader pauses past its ttl and lease; a new one takes over.
    ctx.advance(TTL.max(LEASE) + Duration::from_secs(1));
    let new = ctx.lead("new").await;
    assert!(new.epoch > old.epoch, "a new grant has a larger epoch");
    let reclaimed = ctx.claim(&new, 10).await;
    assert_eq!(ids(&reclaimed), ids_of_new(&evs));

    let id0 = evs[0].id;
    assert_eq!(kind_of(ctx.store.ack(&old, &[id0]).await), ErrorKind::Fenced, "stale ack");
    let later = ctx.clock.now().saturating_add(Duration::from_secs(999));
    assert_eq!(
        kind_of(ctx.store.retry_later(&old, id0, later, "x", Attempt::Counted).await),
        ErrorKind::Fenced,
        "stale retry"
    );
    assert_eq!(kind_of(ctx.store.dead_letter(&old, id0, "x").await), ErrorKind::Fenced, "stale dead-letter");
    let s = ctx.stats().await;
    assert_eq!(
        (s.pending, s.in_flight, s.dead, s.delivered),
        (2, 2, 0, 0),
        "the stale calls changed nothing"
    );
    if ctx.store.capabilities().leadership == LeadershipMode::Exclusive {
        assert_eq!(
            kind_of(ctx.store.claim(&old, ClaimRequest::new(10, LEASE)).await),
            ErrorKind::Fenced,
            "stale claim"
        );
        assert_eq!(kind_of(ctx.store.renew_leadership(&old, TTL).await), ErrorKind::Fenced, "stale renew");
    }
    ctx.store.release_leadership(&old).await.expect("releasing a stale grant is harmless");
    ctx.store.ack(&new, &ids(&reclaimed)).await.expect("new leader's ack");
    assert_eq!(ctx.stats().await.delivered, 2);
}

/// The store's [`Capabilities`](outbox_core::Capabilities) are what its
/// `conformance_tests!` call declared: the properties a declared lack
/// rules out are ignored, so a wrong declaration must not pass unseen.
pub async fn capabilities_are_as_declared<F: StoreFactory>(
    factory: &F,
    leadership: LeadershipMode,
    survives_reopen: bool,
) {
    let ctx = Ctx::fresh(factory).await;
    let caps = ctx.store.capabilities();
    assert_eq!(caps.leadership, leadership, "leadership as declared (`leadership = ...`)");
    assert_eq!(caps.survives_reopen, survives_reopen, "reopen as declared (`reopen = ...`)");
}

/// In an exclusive store, one holder at a time: others wait until the
/// grant is released or expires; renewal keeps the epoch.
pub async fn leadership_is_exclusive<F: StoreFactory>(factory: &F) {
    let ctx = Ctx::fresh(factory).await;
    assert_eq!(
        ctx.store.capabilities().leadership,
        LeadershipMode::Exclusive,
        "a store with shared leadership declares `leadership = shared` in conformance_tests!"
    );
    let a = ctx.lead("a").await;
    assert_eq!(ctx.store.acquire_leadership("b", TTL).await.expect("acquire"), None, "held by a");
    ctx.advance(TTL - Duration::from_secs(1));
    let a = ctx.store.renew_leadership(&a, TTL).await.expect("renew");
    ctx.advance(TTL - Duration::from_secs(1));
    assert_eq!(
        ctx.store.acquire_leadership("b", TTL).await.expect("acquire"),
        None,
        "renewal extended the grant"
    );
    ctx.store.release_leadership(&a).await.expect("release");
    let b = ctx.lead("b").await;
    assert!(b.epoch > a.epoch);
    ctx.advance(TTL);
    let c = ctx.lead("c").await;
    assert!(c.epoch > b.epoch, "an expired grant can be taken over");
    assert_eq!(kind_of(ctx.store.renew_leadership(&b, TTL).await), ErrorKind::Fenced);
}

// --------------------------------------------------------------- reopen

/// Everything committed (state, pending, dead, delivered, inbox marks,
/// leadership epochs) is there after the store is closed and reopened.
pub async fn reopen_keeps_everything_committed<F: StoreFactory>(factory: &F) {
    let ctx = Ctx::fresh(factory).await;
    assert!(
        ctx.store.capabilities().survives_reopen,
        "a store that does not survive a reopen declares `reopen = no` in conformance_tests!"
    );
    let a = actor("a");
    let evs: Vec<_> = (0..4).map(|i| event(&actor(&format!("k{i}")), i)).collect();
    ctx.store
        .put_state_and_events(Commit::state(a.clone(), Version::NONE, b"s1".to_vec()).events(evs.clone()))
        .await
        .expect("commit");
    let c = ConsumerId::new("c").expect("id");
    let seen = Envelope::committed(event(&actor("p"), 9), T0);
    ctx.store
        .put_state_and_events(Commit::events_only().mark_processed(c.clone(), &seen))
        .await
        .expect("mark");
    let g = ctx.lead("l").await;
    let claimed = ctx.claim(&g, 3).await;
    ctx.store.ack(&g, &[claimed[0].id]).await.expect("ack");
    ctx.store.dead_letter(&g, claimed[1].id, "bad").await.expect("dead");
    ctx.store.release_leadership(&g).await.expect("release");
    let before = ctx.stats().await;

    let ctx = ctx.reopen().await;
    let s = ctx.store.load_state(&a).await.expect("load").expect("state survives");
    assert_eq!((s.version, s.bytes.as_slice()), (Version(1), &b"s1"[..]));
    assert_eq!(ctx.stats().await, before);
    assert_eq!(ctx.pending_ids().await, vec![evs[2].id, evs[3].id]);
    assert_eq!(ids(&ctx.store.list_dead(10).await.expect("dead")), vec![evs[1].id]);
    assert!(ctx.store.is_processed(&c, &seen.origin, seen.id).await.expect("inbox survives"));
    let g2 = ctx.lead("l2").await;
    assert!(g2.epoch > g.epoch, "epochs keep growing across reopen");
    ctx.advance(LEASE);
    assert_eq!(ids(&ctx.claim(&g2, 10).await), vec![evs[2].id, evs[3].id], "acked event not redelivered");
    assert_eq!(
        kind_of(ctx.store.put_state_and_events(Commit::state(a.clone(), Version::NONE, b"x".to_vec())).await),
        ErrorKind::Conflict,
        "versions survive reopen"
    );
}

// ------------------------------------------------------- fault wrapper

/// The fault-injecting wrapper is transparent until armed; a fault before
/// the store writes nothing, a fault after it reports an error for a write
/// that happened (and a retry of that commit is refused as a duplicate).
pub async fn fault_wrapper_passes_through_and_fails_on_cue<F: StoreFactory>(factory: &F) {
    let ctx = Ctx::fresh(factory).await;
    let faulty = FaultyStore::new(ctx.store.clone());
    let a = actor("a");
    let e1 = event(&a, 1);
    faulty.fail_nth(1, FaultMode::Before);
    let c1 = Commit::state(a.clone(), Version::NONE, b"1".to_vec()).event(e1.clone());
    let err = faulty.put_state_and_events(c1.clone()).await.expect_err("injected");
    assert!(err.is_retryable());
    assert_eq!(ctx.store.load_state(&a).await.expect("load"), None, "fault before: nothing written");

    faulty.put_state_and_events(c1.clone()).await.expect("passes through once the fault fired");

    let e2 = event(&a, 2);
    let c2 = Commit::state(a.clone(), Version(1), b"2".to_vec()).event(e2.clone());
    faulty.fail_nth(1, FaultMode::After);
    assert_eq!(kind_of(faulty.put_state_and_events(c2.clone()).await), ErrorKind::Unavailable);
    assert_eq!(
        ctx.store.current_version(&a).await.expect("version"),
        Version(2),
        "fault after: the write happened"
    );
    let retry = faulty.put_state_and_events(c2).await;
    assert!(
        matches!(kind_of(retry), ErrorKind::Conflict | ErrorKind::DuplicateEvent),
        "a blind retry is refused, not duplicated"
    );
    assert_eq!(ctx.pending_ids().await, vec![e1.id, e2.id]);

    faulty.fail_from(2, FaultMode::Before);
    faulty.stats().await.expect("first op passes");
    assert_eq!(kind_of(faulty.stats().await), ErrorKind::Unavailable);
    assert_eq!(kind_of(faulty.load_state(&a).await), ErrorKind::Unavailable, "sticky");
    faulty.disarm();
    faulty.stats().await.expect("disarmed");
    assert_eq!(faulty.faults(), 4);
}

/// Claims marked [`ClaimRequest::exclusive`] (the claimer holds an
/// exclusive lock and settles through this handle) keep the contract,
/// whether the store writes leases or keeps them in memory: a claimed
/// event is not claimed again while claimed and holds its key back, an
/// ack delivers, a release hands back unattempted, an uncounted retry
/// takes its attempt back and a counted one keeps it, and a newer grant
/// takes over what an older one held (which is then fenced).
pub async fn exclusive_claims_keep_the_contract<F: StoreFactory>(factory: &F) {
    let ctx = Ctx::fresh(factory).await;
    let (a, b) = (actor("a"), actor("b"));
    let (a1, a2, b1) = (event(&a, 1), event(&a, 2), event(&b, 1));
    ctx.commit_events(vec![a1.clone(), a2.clone(), b1.clone()]).await;
    let g = ctx.lead("l").await;
    let x = |limit: usize| ClaimRequest::new(limit, LEASE).exclusive(true);
    let first = ctx.store.claim(&g, x(1)).await.expect("claim");
    assert_eq!(ids(&first), vec![a1.id]);
    assert_eq!(first[0].attempts, 1, "the claim counts an attempt");
    let next = ctx.store.claim(&g, x(10)).await.expect("claim");
    assert_eq!(ids(&next), vec![b1.id], "a1 is claimed, so a2 waits");
    assert!(ctx.store.claim(&g, x(10)).await.expect("claim").is_empty(), "nothing claimed twice");
    ctx.store.release(&g, &[b1.id]).await.expect("release");
    ctx.store.ack(&g, &[a1.id]).await.expect("ack");
    let more = ctx.store.claim(&g, x(10)).await.expect("claim");
    assert_eq!(ids(&more), vec![a2.id, b1.id], "a2 after a1's ack, and b1 released");
    assert_eq!(more[1].attempts, 1, "the release took b1's attempt back");
    ctx.store.retry_later(&g, b1.id, T0, "down", Attempt::Uncounted).await.expect("retry_later");
    ctx.store.retry_later(&g, a2.id, T0, "500", Attempt::Counted).await.expect("retry_later");
    let again = ctx.store.claim(&g, x(10)).await.expect("claim");
    assert_eq!(ids(&again), vec![a2.id, b1.id]);
    assert_eq!((again[0].attempts, again[1].attempts), (2, 1), "counted kept, uncounted taken back");
    assert_eq!(again[0].last_error.as_deref(), Some("500"));
    ctx.advance(TTL.max(LEASE) + Duration::from_secs(1));
    let g2 = ctx.lead("m").await;
    let taken = ctx.store.claim(&g2, x(10)).await.expect("claim");
    assert_eq!(ids(&taken), vec![a2.id, b1.id], "a newer grant takes over the lapsed claims");
    if ctx.store.capabilities().leadership == LeadershipMode::Exclusive {
        assert_eq!(kind_of(ctx.store.ack(&g, &[a2.id]).await), ErrorKind::Fenced, "the old grant is fenced");
    }
    ctx.store.ack(&g2, &[a2.id, b1.id]).await.expect("ack");
    let s = ctx.stats().await;
    assert_eq!((s.pending, s.delivered), (0, 3), "every event delivered once: {s:?}");
}

/// Acking a batch settles exactly its events: pending events committed
/// between them (another key's, waiting for a retry) stay pending and are
/// delivered later, none lost.
pub async fn ack_leaves_interleaved_events_pending<F: StoreFactory>(factory: &F) {
    let ctx = Ctx::fresh(factory).await;
    let (a, b) = (actor("a"), actor("b"));
    let mut all = Vec::new();
    for n in 1..=8 {
        all.push(event(&a, n));
        all.push(event(&b, n));
    }
    ctx.commit_events(all.clone()).await;
    let g = ctx.lead("l").await;
    let first = ctx.claim(&g, 1).await;
    assert_eq!(ids(&first), vec![all[0].id]);
    ctx.store.ack(&g, &ids(&first)).await.expect("ack");
    // b's head waits for a retry, so b's events stay out of the next claims.
    let b1 = ctx.claim(&g, 1).await;
    assert_eq!(ids(&b1), vec![all[1].id]);
    let later = T0.saturating_add(Duration::from_secs(60));
    ctx.store.retry_later(&g, b1[0].id, later, "later", Attempt::Counted).await.expect("retry_later");
    let a_rest = ctx.claim(&g, 100).await;
    let want: Vec<EventId> = all.iter().skip(2).step_by(2).map(|e| e.id).collect();
    assert_eq!(ids(&a_rest), want, "a's other seven, between b's");
    ctx.store.ack(&g, &ids(&a_rest)).await.expect("ack");
    let s = ctx.stats().await;
    assert_eq!((s.pending, s.delivered), (8, 8), "b's eight still pending: {s:?}");
    ctx.advance(Duration::from_secs(60));
    let b_all = ctx.claim(&g, 100).await;
    let want: Vec<EventId> = all.iter().skip(1).step_by(2).map(|e| e.id).collect();
    assert_eq!(ids(&b_all), want, "b's events, in order, none lost");
    ctx.store.ack(&g, &ids(&b_all)).await.expect("ack");
    assert_eq!(ctx.stats().await.pending, 0);
}
