//! PostgreSQL-specific behaviour on a real server: forwarders racing on one
//! backlog keep per-key order and deliver each event once; a newer schema,
//! a bad URL, a missing database and an undecodable column are typed
//! errors; rows a foreign writer got wrong fail at its insert or are
//! quarantined without stopping delivery; LISTEN wakes on another handle's
//! commit; older schemas upgrade in place.
//!
//! Needs `OUTBOX_PG_URL` (`scripts/servers.sh start`); without it each
//! test says SKIPPED and passes.
#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is the test failing

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use outbox_core::prelude::*;
use outbox_core::{
    ActorId, ClaimRequest, Clock, Commit, ErrorKind, NewEvent, OrderingKey, Timestamp, Version,
};
use outbox_store_postgres::PostgresStore;

fn url() -> Option<String> {
    outbox_testkit::required(Some("OUTBOX_PG_URL"), "postgres tests")
        .then(|| std::env::var("OUTBOX_PG_URL").unwrap())
}

static NEXT: AtomicU64 = AtomicU64::new(0);

fn schema(tag: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{tag}_{}_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed), nanos % 1_000_000_007)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_forwarders_keep_per_key_order_and_deliver_each_event_once() {
    race(false).await;
}

/// The same race, each forwarder going on with the keys of its last batch
/// (`claim_heads_of`) every other claim, as a busy forwarder does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_forwarders_going_on_with_their_keys_keep_order_and_deliver_once() {
    race(true).await;
}

async fn race(go_on: bool) {
    let Some(url) = url() else { return };
    let schema = schema("race");
    let store = PostgresStore::options(&url).schema(&schema).open().await.unwrap();
    // 2,000 events over 20 keys, committed in batches.
    let mut committed: HashMap<String, Vec<outbox_core::EventId>> = HashMap::new();
    for b in 0..40 {
        let events: Vec<NewEvent> = (0..50)
            .map(|i| {
                let n = b * 50 + i;
                let key = OrderingKey::new(format!("k{}", n % 20)).unwrap();
                NewEvent::json(ActorId::new("src").unwrap(), "E", &n).unwrap().with_key(key)
            })
            .collect();
        for e in &events {
            committed.entry(e.key.as_str().to_owned()).or_default().push(e.id);
        }
        store.put_state_and_events(Commit::events_only().events(events)).await.unwrap();
    }
    let delivered = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for f in 0..4 {
        let s = PostgresStore::options(&url).schema(&schema).pool_size(2).open().await.unwrap();
        let delivered = delivered.clone();
        tasks.push(tokio::spawn(async move {
            let g = s.acquire_leadership(&format!("f{f}"), Duration::from_secs(60)).await.unwrap().unwrap();
            let mut idle = 0;
            let mut last: Vec<OrderingKey> = Vec::new();
            let mut turn = 0u64;
            while idle < 20 {
                let request = ClaimRequest::new(37, Duration::from_secs(60));
                turn += 1;
                let batch = if go_on && turn.is_multiple_of(2) {
                    s.claim_heads_of(&g, request, &last).await.unwrap()
                } else {
                    s.claim(&g, request).await.unwrap()
                };
                last = batch.iter().map(|e| e.key.clone()).collect();
                if batch.is_empty() {
                    idle += 1;
                    tokio::task::yield_now().await;
                    continue;
                }
                idle = 0;
                {
                    // Record before acking: a key's next event can only be
                    // claimed after this ack commits.
                    let mut d = delivered.lock().unwrap();
                    d.extend(batch.iter().map(|e| (e.key.as_str().to_owned(), e.id)));
                }
                s.ack(&g, &batch.iter().map(|e| e.id).collect::<Vec<_>>()).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let delivered = std::mem::take(&mut *delivered.lock().unwrap());
    let unique: HashSet<_> = delivered.iter().map(|(_, id)| *id).collect();
    assert_eq!(delivered.len(), 2000, "each event claimed exactly once");
    assert_eq!(unique.len(), 2000);
    let mut per_key: HashMap<String, Vec<outbox_core::EventId>> = HashMap::new();
    for (k, id) in delivered.iter() {
        per_key.entry(k.clone()).or_default().push(*id);
    }
    assert_eq!(per_key, committed, "every key delivered in commit order");
    assert_eq!(store.stats().await.unwrap().delivered, 2000);
}

/// `claim_heads_of` takes the claimable heads of the keys it is given and
/// nothing else: older events of other keys are passed over, and so are
/// a key held by a commit in flight and a key whose head is not due.
#[tokio::test]
async fn claim_heads_of_takes_only_the_given_keys_claimable_heads() {
    let Some(url) = url() else { return };
    let schema = schema("heads_of");
    let store = PostgresStore::options(&url).schema(&schema).open().await.unwrap();
    let ev = |key: &str| {
        NewEvent::json(ActorId::new("src").unwrap(), "E", &key)
            .unwrap()
            .with_key(OrderingKey::new(key).unwrap())
    };
    let (x1, a1, b1, a2) = (ev("x"), ev("a"), ev("b"), ev("a"));
    let c1 = ev("c").not_before(outbox_core::SystemClock.now().saturating_add(Duration::from_secs(3600)));
    let c2 = ev("c");
    let all = vec![x1.clone(), a1.clone(), b1.clone(), a2.clone(), c1.clone(), c2.clone()];
    store.put_state_and_events(Commit::events_only().events(all)).await.unwrap();
    // A commit in flight on key b holds b's lock.
    let mut holder = admin(&url).await;
    let tx = holder.transaction().await.unwrap();
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1), hashtext('b'))", &[&schema]).await.unwrap();

    let g = store.acquire_leadership("f", Duration::from_secs(60)).await.unwrap().unwrap();
    let keys: Vec<OrderingKey> = ["a", "b", "c"].iter().map(|k| OrderingKey::new(*k).unwrap()).collect();
    let request = ClaimRequest::new(10, Duration::from_secs(60));
    let got = store.claim_heads_of(&g, request, &keys).await.unwrap();
    let ids: Vec<_> = got.iter().map(|e| e.id).collect();
    assert_eq!(
        ids,
        vec![a1.id],
        "a's head only: x is not asked for, b is held, c1 not due (c2 behind it), a2 behind a1"
    );
    assert!(store.claim_heads_of(&g, request, &keys).await.unwrap().is_empty(), "a's head is leased");
    let rest: Vec<_> = store.claim(&g, request).await.unwrap().iter().map(|e| e.id).collect();
    assert_eq!(rest, vec![x1.id], "a claim in commit order takes what was passed over");
    tx.rollback().await.unwrap();
    let got: Vec<_> = store.claim_heads_of(&g, request, &keys).await.unwrap().iter().map(|e| e.id).collect();
    assert_eq!(got, vec![b1.id], "b once its commit is done");
}

#[tokio::test]
async fn a_newer_schema_is_refused_and_not_altered() {
    let Some(url) = url() else { return };
    let schema = schema("newer");
    drop(PostgresStore::options(&url).schema(&schema).open().await.unwrap());
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client.batch_execute(&format!("UPDATE \"{schema}\".outbox_schema SET version = 99")).await.unwrap();
    let err = PostgresStore::options(&url).schema(&schema).open().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SchemaTooNew);
    let v: i32 = client
        .query_one(&format!("SELECT version FROM \"{schema}\".outbox_schema"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 99, "left untouched");
}

#[tokio::test]
async fn bad_urls_are_typed_errors() {
    let Some(url) = url() else { return };
    assert_eq!(
        PostgresStore::open("not a url at all ===").await.unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    let closed = "host=127.0.0.1 port=1 user=postgres connect_timeout=2";
    let err = PostgresStore::open(closed).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(err.is_retryable());
    let _ = url;
}

#[tokio::test]
async fn a_missing_database_is_not_retryable() {
    let Some(url) = url() else { return };
    // The server of `url`, another database.
    let config: tokio_postgres::Config = url.parse().unwrap();
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres");
    let password = config.get_password().map_or(String::new(), |p| {
        format!(" password='{}'", String::from_utf8_lossy(p).replace('\\', "\\\\").replace('\'', "\\'"))
    });
    let missing = format!("host={host} port={port} user={user}{password} dbname=outbox_no_such_database");
    let err = PostgresStore::open(&missing).await.unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
    assert_ne!(err.kind(), ErrorKind::Unavailable);
}

/// A stored column that no longer decodes into its Rust type (here a
/// column retyped behind the store's back) is `Corrupted`.
#[tokio::test]
async fn a_column_that_does_not_decode_is_corrupted() {
    let Some(url) = url() else { return };
    let schema = schema("decode");
    let store = PostgresStore::options(&url).schema(&schema).open().await.unwrap();
    let e = NewEvent::json(ActorId::new("x").unwrap(), "E", &1).unwrap();
    store.put_state_and_events(Commit::events_only().event(e)).await.unwrap();
    admin(&url)
        .await
        .batch_execute(&format!("ALTER TABLE \"{schema}\".outbox_events ALTER COLUMN attempts TYPE bigint"))
        .await
        .unwrap();
    let err = store.list_pending(10).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_wakes_on_a_commit_from_another_handle_and_survives_a_lost_connection() {
    let Some(url) = url() else { return };
    let schema = schema("listen");
    let a = PostgresStore::options(&url).schema(&schema).open().await.unwrap();
    let b = PostgresStore::options(&url).schema(&schema).open().await.unwrap();
    let elsewhere = PostgresStore::options(&url).schema(format!("{schema}_other")).open().await.unwrap();
    let notify = Arc::new(tokio::sync::Notify::new());
    let calls = Arc::new(AtomicU64::new(0));
    let (n, c) = (notify.clone(), calls.clone());
    let _listener = a
        .listen(move || {
            c.fetch_add(1, Ordering::SeqCst);
            n.notify_one();
        })
        .await
        .unwrap();
    let commit = |s: &PostgresStore| {
        let s = s.clone();
        async move {
            let e = NewEvent::json(ActorId::new("x").unwrap(), "E", &1).unwrap();
            s.put_state_and_events(Commit::events_only().event(e)).await.unwrap();
        }
    };
    // Another schema's commit, then ours: notifications arrive in commit
    // order, so once ours is seen the other one would have been too.
    commit(&elsewhere).await;
    commit(&b).await;
    tokio::time::timeout(Duration::from_secs(10), notify.notified()).await.expect("woken by the commit");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "a commit to another schema must not wake this listener");

    // The server drops the listening connection; the listener reconnects,
    // calls back once (commits may have been missed), and wakes again.
    let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let killed = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = 'LISTEN outbox_commit'",
            &[],
        )
        .await
        .unwrap();
    assert!(!killed.is_empty(), "the listener's backend was found");
    tokio::time::timeout(Duration::from_secs(20), notify.notified())
        .await
        .expect("called back after reconnecting");
    let after_reconnect = calls.load(Ordering::SeqCst);
    assert!(after_reconnect >= 2);
    commit(&b).await;
    tokio::time::timeout(Duration::from_secs(10), notify.notified())
        .await
        .expect("woken after the reconnect");
    assert!(calls.load(Ordering::SeqCst) > after_reconnect);
}

/// Schema 1 had a key-row table; schema 2 locks keys with advisory locks.
/// A schema-1 database (the tables of 2 plus `outbox_keys`, version 1)
/// upgrades on open, and what it held is kept.
#[tokio::test]
async fn a_schema_1_database_upgrades_and_keeps_its_events() {
    let Some(url) = url() else { return };
    let schema = schema("upgrade");
    let store = PostgresStore::options(&url).schema(&schema).open().await.unwrap();
    let origin = ActorId::new("a").unwrap();
    let event = NewEvent::new(origin.clone(), "t", outbox_core::Payload::bytes(b"x".to_vec()));
    let id = event.id;
    store
        .put_state_and_events(Commit::state(origin, Version::NONE, b"s".to_vec()).event(event))
        .await
        .unwrap();
    drop(store);
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(&format!(
            "{}
             CREATE TABLE \"{schema}\".outbox_keys (key text PRIMARY KEY);
             INSERT INTO \"{schema}\".outbox_keys VALUES ('a');
             UPDATE \"{schema}\".outbox_schema SET version = 1",
            schema_3_indexes(&schema)
        ))
        .await
        .unwrap();
    let store = PostgresStore::options(&url).schema(&schema).open().await.unwrap();
    let version: i32 = client
        .query_one(&format!("SELECT version FROM \"{schema}\".outbox_schema"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, outbox_store_postgres::SCHEMA_VERSION);
    let keys_table: Option<String> = client
        .query_one(&format!("SELECT to_regclass('\"{schema}\".outbox_keys')::text"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(keys_table, None, "the key table is dropped");
    let grant = store.acquire_leadership("f", Duration::from_secs(10)).await.unwrap().unwrap();
    let claimed = store.claim(&grant, ClaimRequest::new(10, Duration::from_secs(10))).await.unwrap();
    assert_eq!(claimed.iter().map(|e| e.id).collect::<Vec<_>>(), vec![id]);
    assert_eq!(store.load_state(&ActorId::new("a").unwrap()).await.unwrap().unwrap().version, Version(1));
}

/// A schema 2 database (keys under the database's collation, fillfactor
/// 100) is migrated to byte-wise keys and half-full pages, and its pending
/// events stay claimable in order.
#[tokio::test]
async fn a_schema_2_database_upgrades_to_bytewise_keys() {
    let Some(url) = url() else { return };
    let schema = schema("upgrade2");
    let events = three_events_committed(&url, &schema).await;
    let ids: Vec<_> = events.iter().map(|e| e.id).collect();
    let client = admin(&url).await;
    client
        .batch_execute(&format!(
            "{}
             ALTER TABLE \"{schema}\".outbox_events ALTER COLUMN key TYPE text COLLATE \"default\";
             ALTER TABLE \"{schema}\".outbox_events RESET (fillfactor);
             UPDATE \"{schema}\".outbox_schema SET version = 2",
            schema_3_indexes(&schema)
        ))
        .await
        .unwrap();
    assert_eq!(table_shape(&client, &schema).await, ("default".to_owned(), None), "a schema 2 table");
    let store = PostgresStore::options(&url).schema(&schema).open().await.unwrap();
    assert_eq!(table_shape(&client, &schema).await, ("C".to_owned(), Some("fillfactor=50".to_owned())));
    let grant = store.acquire_leadership("f", Duration::from_secs(10)).await.unwrap().unwrap();
    let claimed = store.claim(&grant, ClaimRequest::new(10, Duration::from_secs(10))).await.unwrap();
    assert_eq!(claimed.iter().map(|e| e.id).collect::<Vec<_>>(), ids, "all three, in commit order");
}

/// A schema 3 database (a sequence-number primary key, a delivered-time
/// index) is migrated to an id primary key and no delivered-time index;
/// its events stay claimable in order, an id committed again is still a
/// duplicate, and delivered events are still pruned.
#[tokio::test]
async fn a_schema_3_database_upgrades_to_id_primary_key() {
    let Some(url) = url() else { return };
    let schema = schema("upgrade3");
    let events = three_events_committed(&url, &schema).await;
    let ids: Vec<_> = events.iter().map(|e| e.id).collect();
    let client = admin(&url).await;
    client
        .batch_execute(&format!(
            "{} UPDATE \"{schema}\".outbox_schema SET version = 3",
            schema_3_indexes(&schema)
        ))
        .await
        .unwrap();
    assert_eq!(index_shape(&client, &schema).await, ("seq".to_owned(), true), "a schema 3 table");
    let store = PostgresStore::options(&url).schema(&schema).open().await.unwrap();
    assert_eq!(index_shape(&client, &schema).await, ("id".to_owned(), false));
    let err = store.put_state_and_events(Commit::events_only().event(events[0].clone())).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DuplicateEvent);
    let grant = store.acquire_leadership("f", Duration::from_secs(10)).await.unwrap().unwrap();
    let claimed = store.claim(&grant, ClaimRequest::new(10, Duration::from_secs(10))).await.unwrap();
    assert_eq!(claimed.iter().map(|e| e.id).collect::<Vec<_>>(), ids, "all three, in commit order");
    store.ack(&grant, &[ids[0], ids[1]]).await.unwrap();
    let pruned = store.prune_delivered(Timestamp::from_millis(i64::MAX / 2), 10).await.unwrap();
    assert_eq!(pruned, 2, "both delivered events");
}

/// A schema 4 database (statuses pending, dead and delivered only, no
/// `skipped` column) holding pending, backed-off and dead events is
/// migrated in place: everything is kept, and retry now, skip, discard
/// (and pruning it), and requeue work on what it held.
#[tokio::test]
async fn a_schema_4_database_upgrades_to_discard_and_skip() {
    let Some(url) = url() else { return };
    let schema = schema("upgrade4");
    let t0 = Timestamp::from_millis(1_700_000_000_000);
    let clock = outbox_core::ManualClock::new(t0);
    let open = || PostgresStore::options(&url).schema(&schema).clock(clock.clone()).open();
    let origin = ActorId::new("src").unwrap();
    let on = |k: &str| {
        NewEvent::new(origin.clone(), "t", outbox_core::Payload::bytes(k.as_bytes().to_vec()))
            .with_key(OrderingKey::new(k).unwrap())
    };
    let (a1, a2, a3, b1, c1) = (on("a"), on("a"), on("a"), on("b"), on("c"));
    let lease = Duration::from_secs(30);
    let park = |n| ClaimRequest::new(n, lease).park_dead_keys(true);
    let ids = |v: &[outbox_core::Envelope]| v.iter().map(|e| e.id).collect::<Vec<_>>();

    // Written as schema 4 code writes it: a1 and c1 dead, b1 backed off
    // for an hour, a2 and a3 parked behind a1.
    let store = open().await.unwrap();
    let events = vec![a1.clone(), a2.clone(), a3.clone(), b1.clone(), c1.clone()];
    store.put_state_and_events(Commit::events_only().events(events)).await.unwrap();
    let g = store.acquire_leadership("f", Duration::from_secs(60)).await.unwrap().unwrap();
    assert_eq!(ids(&store.claim(&g, park(1)).await.unwrap()), vec![a1.id]);
    store.dead_letter(&g, a1.id, "422").await.unwrap();
    assert_eq!(ids(&store.claim(&g, park(10)).await.unwrap()), vec![b1.id, c1.id]);
    let hour = t0.saturating_add(Duration::from_secs(3600));
    store.retry_later(&g, b1.id, hour, "offline", outbox_core::Attempt::Counted).await.unwrap();
    store.dead_letter(&g, c1.id, "400").await.unwrap();
    store.release_leadership(&g).await.unwrap();
    drop(store);
    let client = admin(&url).await;
    client
        .batch_execute(&format!(
            "{} UPDATE \"{schema}\".outbox_schema SET version = 4",
            schema_4_events(&schema)
        ))
        .await
        .unwrap();
    assert_eq!(
        status_shape(&client, &schema).await,
        (false, "CHECK ((status = ANY (ARRAY[0, 1, 2])))".to_owned()),
        "a schema 4 table"
    );

    let store = open().await.unwrap();
    let version: i32 = client
        .query_one(&format!("SELECT version FROM \"{schema}\".outbox_schema"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, outbox_store_postgres::SCHEMA_VERSION);
    assert_eq!(
        status_shape(&client, &schema).await,
        (true, "CHECK ((status = ANY (ARRAY[0, 1, 2, 3])))".to_owned())
    );
    assert_eq!(ids(&store.list_dead(10).await.unwrap()), vec![a1.id, c1.id], "the dead letters are kept");
    let s = store.stats().await.unwrap();
    assert_eq!((s.pending, s.dead, s.delivered, s.discarded), (3, 2, 0, 0));

    let g = store.acquire_leadership("f", Duration::from_secs(60)).await.unwrap().unwrap();
    assert!(store.claim(&g, park(10)).await.unwrap().is_empty(), "a parked, b backed off");
    assert_eq!(store.retry_now(&g).await.unwrap(), 1, "b1");
    assert_eq!(ids(&store.claim(&g, park(10)).await.unwrap()), vec![b1.id]);
    store.ack(&g, &[b1.id]).await.unwrap();

    assert_eq!(store.skip_dead(&[a1.id]).await.unwrap(), 1);
    assert_eq!(ids(&store.claim(&g, park(10)).await.unwrap()), vec![a2.id, a3.id], "a flows past a1");
    store.ack(&g, &[a2.id, a3.id]).await.unwrap();

    assert_eq!(store.discard_dead(&[c1.id]).await.unwrap(), 1);
    let s = store.stats().await.unwrap();
    assert_eq!((s.pending, s.dead, s.delivered, s.discarded), (0, 1, 3, 1));
    clock.advance(Duration::from_secs(1));
    assert_eq!(store.prune_delivered(clock.now(), 10).await.unwrap(), 4, "delivered and discarded");

    assert_eq!(store.requeue_dead(&[a1.id]).await.unwrap(), 1, "a skipped dead letter is requeueable");
    assert_eq!(ids(&store.claim(&g, park(10)).await.unwrap()), vec![a1.id]);
}

/// Inserts a pending event row the way a writer in another language would,
/// with the given `origin`, `key`, `payload_kind`, `payload` (SQL text for
/// a bytea) and `headers`; returns its id.
async fn foreign_insert(
    client: &tokio_postgres::Client,
    schema: &str,
    origin: &str,
    key: &str,
    kind: &str,
    payload: &str,
    headers: &str,
) -> Result<outbox_core::EventId, tokio_postgres::Error> {
    let id = outbox_core::EventId::new();
    let uuid = uuid::Uuid::from_bytes(id.to_bytes());
    client
        .execute(
            &format!(
                "INSERT INTO \"{schema}\".outbox_events
                     (id, origin, key, event_type, payload_kind, payload, headers, created_at, next_attempt_at)
                 VALUES ($1, $2, $3, 'E', $4, {payload}, $5, 0, 0)"
            ),
            &[&uuid, &origin, &key, &kind, &headers],
        )
        .await?;
    Ok(id)
}

/// Rows a foreign writer got wrong in ways the column checks cannot see
/// (headers with a lone UTF-16 surrogate escape, which PostgreSQL's `json`
/// accepts and no JSON decoder should; a payload marked json that is not
/// JSON) do not stop delivery: a claim moves each to the dead letters
/// (`last_error` "corrupted: ...", raw values kept) and delivers the rest,
/// listing works before and after, and a quarantined row parks its key
/// like any dead letter when the claim asks for that.
#[tokio::test]
async fn a_poison_row_is_quarantined_on_postgres() {
    let Some(url) = url() else { return };
    let schema = schema("poison");
    let store = PostgresStore::options(&url).schema(&schema).open().await.unwrap();
    let client = admin(&url).await;
    let origin = ActorId::new("src").unwrap();
    let on =
        |k: &str| NewEvent::json(origin.clone(), "E", &k).unwrap().with_key(OrderingKey::new(k).unwrap());
    let (a1, a2, b1) = (on("a"), on("a"), on("b"));
    store.put_state_and_events(Commit::events_only().event(a1.clone())).await.unwrap();
    let bad_headers = r#"{"trace":"\udc00"}"#;
    let pa = foreign_insert(&client, &schema, "src", "a", "json", "'1'::bytea", bad_headers).await.unwrap();
    let pc = foreign_insert(&client, &schema, "src", "c", "json", "'not json'::bytea", "{}").await.unwrap();
    store.put_state_and_events(Commit::events_only().events(vec![a2.clone(), b1.clone()])).await.unwrap();
    let ids = |v: &[outbox_core::Envelope]| v.iter().map(|e| e.id).collect::<Vec<_>>();

    // Inspecting does not fail: the bad rows are listed as their
    // quarantine will store them.
    assert_eq!(ids(&store.list_pending(10).await.unwrap()), vec![a1.id, pa, pc, a2.id, b1.id]);

    let grant = store.acquire_leadership("f", Duration::from_secs(60)).await.unwrap().unwrap();
    let lease = Duration::from_secs(60);
    let batch = store.claim(&grant, ClaimRequest::new(10, lease)).await.unwrap();
    assert_eq!(ids(&batch), vec![a1.id, a2.id, b1.id], "everything else, in commit order");
    store.ack(&grant, &ids(&batch)).await.unwrap();
    let s = store.stats().await.unwrap();
    assert_eq!((s.pending, s.dead, s.delivered), (0, 2, 3));

    let dead = store.list_dead(10).await.unwrap();
    assert_eq!(ids(&dead), vec![pa, pc]);
    for d in &dead {
        assert!(d.last_error.as_deref().unwrap().starts_with("corrupted: "), "{:?}", d.last_error);
    }
    // The raw values are kept: the headers' text, the payload's bytes and
    // the kind it was marked with.
    assert_eq!(dead[0].headers.get("outbox.corrupted.headers").map(String::as_str), Some(bad_headers));
    assert_eq!(dead[1].payload.kind(), outbox_core::PayloadKind::Bytes);
    assert_eq!(dead[1].payload.as_bytes(), b"not json");
    assert_eq!(dead[1].headers.get("outbox.corrupted.payload_kind").map(String::as_str), Some("json"));

    // With parking: the quarantined head parks its key, and what the claim
    // took after it on that key is handed back unattempted.
    let pd = foreign_insert(&client, &schema, "src", "d", "json", "'{'::bytea", "{}").await.unwrap();
    let d2 = on("d");
    store.put_state_and_events(Commit::events_only().event(d2.clone())).await.unwrap();
    let park = ClaimRequest::new(10, lease).park_dead_keys(true);
    assert!(store.claim(&grant, park).await.unwrap().is_empty(), "d parked behind its bad head");
    let pending = store.list_pending(10).await.unwrap();
    assert_eq!((ids(&pending), pending[0].attempts), (vec![d2.id], 0));
    assert_eq!(store.stats().await.unwrap().parked_keys, 3, "a, c and d");
    assert_eq!(store.skip_dead(&[pd]).await.unwrap(), 1);
    assert_eq!(
        ids(&store.claim(&grant, park).await.unwrap()),
        vec![d2.id],
        "d flows once its bad head is skipped"
    );
}

/// With the schema's checks, what a foreign writer gets wrong with the
/// documented columns fails at its INSERT (a check violation, or invalid
/// JSON text), not later in a forwarder; a row written by the rules is
/// delivered.
#[tokio::test]
async fn a_foreign_writers_bad_row_fails_at_its_insert() {
    let Some(url) = url() else { return };
    let schema = schema("checks");
    let store = PostgresStore::options(&url).schema(&schema).open().await.unwrap();
    let client = admin(&url).await;
    let long = "x".repeat(257);
    let refused = [
        ("", "k", "{}"),
        (long.as_str(), "k", "{}"),
        ("src", "", "{}"),
        ("src", long.as_str(), "{}"),
        ("src", "k", "not json"),
        ("src", "k", "[]"),
        ("src", "k", r#"{"n":1}"#),
        ("src", "k", ""),
    ];
    for (origin, key, headers) in refused {
        let err =
            foreign_insert(&client, &schema, origin, key, "bytes", "'x'::bytea", headers).await.expect_err(
                &format!("origin {} bytes, key {} bytes, headers {headers:?}", origin.len(), key.len()),
            );
        let code = err.code().unwrap().clone();
        assert!(
            code == tokio_postgres::error::SqlState::CHECK_VIOLATION
                || code == tokio_postgres::error::SqlState::INVALID_TEXT_REPRESENTATION,
            "{code:?}"
        );
    }
    let err = client
        .batch_execute(&format!(
            "INSERT INTO \"{schema}\".outbox_events (id, origin, key, event_type, payload_kind, payload,
                 created_at, next_attempt_at, attempts)
             VALUES (gen_random_uuid(), 'src', 'k', 'E', 'bytes', 'x', 0, 0, -1)"
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION));

    let good = foreign_insert(
        &client,
        &schema,
        "src",
        "k",
        "json",
        "convert_to('{\"a\":1}', 'UTF8')",
        r#"{"h":"v"}"#,
    )
    .await
    .unwrap();
    // What this library writes passes the checks, headers PostgreSQL
    // cannot unescape to text included.
    let mut ours = NewEvent::json(ActorId::new("src").unwrap(), "E", &1).unwrap();
    ours.headers.insert("nul\0key".into(), "nul\0value \u{1F600}".into());
    let ours_headers = ours.headers.clone();
    store.put_state_and_events(Commit::events_only().event(ours.clone())).await.unwrap();
    let grant = store.acquire_leadership("f", Duration::from_secs(60)).await.unwrap().unwrap();
    let batch = store.claim(&grant, ClaimRequest::new(10, Duration::from_secs(60))).await.unwrap();
    assert_eq!(batch.iter().map(|e| e.id).collect::<Vec<_>>(), vec![good, ours.id]);
    assert_eq!(batch[0].headers.get("h").map(String::as_str), Some("v"));
    assert_eq!(batch[1].headers, ours_headers);
}

/// A schema 5 database (no column checks) holding rows a foreign writer
/// got wrong upgrades in place: pending and dead rows that break the
/// envelope's rules are quarantined by the upgrade (they could not be
/// claimed or settled under the new checks), a negative attempt count is
/// zeroed, a delivered row is left as it was, the rest is delivered in
/// order, and the checks apply from then on.
#[tokio::test]
async fn a_schema_5_database_upgrades_to_checked_columns() {
    let Some(url) = url() else { return };
    let schema = schema("upgrade5");
    let events = three_events_committed(&url, &schema).await;
    let client = admin(&url).await;
    client
        .batch_execute(&format!(
            "{} UPDATE \"{schema}\".outbox_schema SET version = 5",
            schema_5_events(&schema)
        ))
        .await
        .unwrap();
    let long = "x".repeat(300);
    let bad_headers =
        foreign_insert(&client, &schema, "src", "b", "bytes", "'x'::bytea", "nope").await.unwrap();
    let bad_key = foreign_insert(&client, &schema, "src", "", "bytes", "'x'::bytea", "{}").await.unwrap();
    let bad_origin = foreign_insert(&client, &schema, &long, "a", "bytes", "'x'::bytea", "{}").await.unwrap();
    let negative = foreign_insert(&client, &schema, "src", "z", "bytes", "'x'::bytea", "{}").await.unwrap();
    let dead = foreign_insert(&client, &schema, "src", "y", "bytes", "'x'::bytea", "[1]").await.unwrap();
    let delivered = foreign_insert(&client, &schema, "src", "y", "bytes", "'x'::bytea", "zzz").await.unwrap();
    let uuid = |id: outbox_core::EventId| uuid::Uuid::from_bytes(id.to_bytes());
    client
        .execute(
            &format!("UPDATE \"{schema}\".outbox_events SET attempts = -3 WHERE id = $1"),
            &[&uuid(negative)],
        )
        .await
        .unwrap();
    client
        .execute(
            &format!(
                "UPDATE \"{schema}\".outbox_events SET status = 1, last_error = 'sink said no' WHERE id = $1"
            ),
            &[&uuid(dead)],
        )
        .await
        .unwrap();
    client
        .execute(
            &format!("UPDATE \"{schema}\".outbox_events SET status = 2, delivered_at = 1 WHERE id = $1"),
            &[&uuid(delivered)],
        )
        .await
        .unwrap();

    let store = PostgresStore::options(&url).schema(&schema).open().await.unwrap();
    let version: i32 = client
        .query_one(&format!("SELECT version FROM \"{schema}\".outbox_schema"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, outbox_store_postgres::SCHEMA_VERSION);
    let ids = |v: &[outbox_core::Envelope]| v.iter().map(|e| e.id).collect::<Vec<_>>();
    let dead_letters = store.list_dead(10).await.unwrap();
    assert_eq!(ids(&dead_letters), vec![bad_headers, bad_key, bad_origin, dead]);
    for d in &dead_letters {
        assert!(d.last_error.as_deref().unwrap().starts_with("corrupted: "), "{:?}", d.last_error);
    }
    assert_eq!(dead_letters[0].headers.get("outbox.corrupted.headers").map(String::as_str), Some("nope"));
    assert_eq!(dead_letters[1].headers.get("outbox.corrupted.key").map(String::as_str), Some(""));
    assert_eq!(dead_letters[2].headers.get("outbox.corrupted.origin"), Some(&long));
    let kept: String = client
        .query_one(
            &format!("SELECT headers FROM \"{schema}\".outbox_events WHERE id = $1"),
            &[&uuid(delivered)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, "zzz", "a delivered row is left as it was");

    let grant = store.acquire_leadership("f", Duration::from_secs(10)).await.unwrap().unwrap();
    let claimed = store.claim(&grant, ClaimRequest::new(10, Duration::from_secs(10))).await.unwrap();
    let mut expected: Vec<_> = events.iter().map(|e| e.id).collect();
    expected.push(negative);
    assert_eq!(ids(&claimed), expected, "the rest, in commit order");
    assert_eq!(claimed[3].attempts, 1, "a negative attempt count starts again from 0");
    store.ack(&grant, &ids(&claimed)).await.unwrap();
    assert_eq!(
        store.discard_dead(&ids(&dead_letters)).await.unwrap(),
        4,
        "quarantined rows settle like dead letters"
    );
    assert_eq!(store.prune_delivered(Timestamp::from_millis(i64::MAX / 2), 100).await.unwrap(), 9);

    let err = foreign_insert(&client, &schema, "src", "", "bytes", "'x'::bytea", "{}").await.unwrap_err();
    assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION), "checked from now on");
}

/// Opens `schema` (at the current version) and commits three events on
/// keys `b`, `a`, `b`; returns them as committed.
async fn three_events_committed(url: &str, schema: &str) -> Vec<NewEvent> {
    let store = PostgresStore::options(url).schema(schema).open().await.unwrap();
    let origin = ActorId::new("a").unwrap();
    let events: Vec<NewEvent> = ["b", "a", "b"]
        .iter()
        .map(|k| {
            NewEvent::new(origin.clone(), "t", outbox_core::Payload::bytes(b"x".to_vec()))
                .with_key(OrderingKey::new(*k).unwrap())
        })
        .collect();
    store.put_state_and_events(Commit::events_only().events(events.clone())).await.unwrap();
    events
}

/// A plain client, for reshaping a schema behind the store's back.
async fn admin(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

/// SQL that takes a schema 6 events table back to schema 5: no checks
/// on origin, key, headers and attempts.
fn schema_5_events(schema: &str) -> String {
    format!(
        "ALTER TABLE \"{schema}\".outbox_events DROP CONSTRAINT outbox_events_origin_check,
             DROP CONSTRAINT outbox_events_key_check, DROP CONSTRAINT outbox_events_headers_check,
             DROP CONSTRAINT outbox_events_attempts_check;
         DROP FUNCTION \"{schema}\".outbox_headers_ok(text);"
    )
}

/// SQL that takes a schema 6 events table back to schema 4: no
/// `skipped` column, statuses 0 to 2 only.
fn schema_4_events(schema: &str) -> String {
    format!(
        "{}
         ALTER TABLE \"{schema}\".outbox_events DROP COLUMN skipped;
         ALTER TABLE \"{schema}\".outbox_events DROP CONSTRAINT outbox_events_status_check;
         ALTER TABLE \"{schema}\".outbox_events
             ADD CONSTRAINT outbox_events_status_check CHECK (status IN (0, 1, 2));",
        schema_5_events(schema)
    )
}

/// SQL that gives a schema 6 events table the schema 3 columns, keys and
/// indexes.
fn schema_3_indexes(schema: &str) -> String {
    format!(
        "{}
         ALTER TABLE \"{schema}\".outbox_events DROP CONSTRAINT outbox_events_id_key;
         ALTER TABLE \"{schema}\".outbox_events ADD CONSTRAINT outbox_events_pkey PRIMARY KEY (seq);
         ALTER TABLE \"{schema}\".outbox_events ADD CONSTRAINT outbox_events_id_key UNIQUE (id);
         CREATE INDEX outbox_events_delivered ON \"{schema}\".outbox_events (delivered_at) WHERE status = 2;",
        schema_4_events(schema)
    )
}

/// Whether the events table has the `skipped` column, and its status
/// check.
async fn status_shape(client: &tokio_postgres::Client, schema: &str) -> (bool, String) {
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = '{schema}'
                        AND table_name = 'outbox_events' AND column_name = 'skipped'),
                (SELECT pg_get_constraintdef(oid) FROM pg_constraint
                 WHERE conrelid = '\"{schema}\".outbox_events'::regclass
                   AND conname = 'outbox_events_status_check')"
    );
    let r = client.query_one(&sql, &[]).await.unwrap();
    (r.get(0), r.get(1))
}

/// The events table's primary key column and whether it has a
/// delivered-time index.
async fn index_shape(client: &tokio_postgres::Client, schema: &str) -> (String, bool) {
    let sql = format!(
        "SELECT (SELECT a.attname::text FROM pg_index i
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                 WHERE i.indrelid = '\"{schema}\".outbox_events'::regclass AND i.indisprimary),
                EXISTS (SELECT 1 FROM pg_indexes WHERE schemaname = '{schema}'
                        AND indexname = 'outbox_events_delivered')"
    );
    let r = client.query_one(&sql, &[]).await.unwrap();
    (r.get(0), r.get(1))
}

/// The events table's key collation and storage options.
async fn table_shape(client: &tokio_postgres::Client, schema: &str) -> (String, Option<String>) {
    let sql = format!(
        "SELECT (SELECT collname::text FROM pg_attribute a JOIN pg_collation c ON c.oid = a.attcollation
                 WHERE a.attrelid = '\"{schema}\".outbox_events'::regclass AND a.attname = 'key'),
                (SELECT array_to_string(reloptions, ',') FROM pg_class
                 WHERE oid = '\"{schema}\".outbox_events'::regclass)"
    );
    let r = client.query_one(&sql, &[]).await.unwrap();
    (r.get(0), r.get(1))
}
