//! PostgreSQL-specific behaviour on a real server: forwarders racing on one
//! backlog keep per-key order and deliver each event once; a newer schema
//! a bad URL, a missing database and an undecodable column are typed
//! errors; LISTEN wakes on another handle's commit.
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
            while idle < 20 {
                let batch = s.claim(&g, ClaimRequest::new(37, Duration::from_secs(60))).await.unwrap();
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

/// SQL that takes a schema 5 events table back to schema 4: no
/// `skipped` column, statuses 0 to 2 only.
fn schema_4_events(schema: &str) -> String {
    format!(
        "ALTER TABLE \"{schema}\".outbox_events DROP COLUMN skipped;
         ALTER TABLE \"{schema}\".outbox_events DROP CONSTRAINT outbox_events_status_check;
         ALTER TABLE \"{schema}\".outbox_events
             ADD CONSTRAINT outbox_events_status_check CHECK (status IN (0, 1, 2));"
    )
}

/// SQL that gives a schema 5 events table the schema 3 columns, keys and
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
