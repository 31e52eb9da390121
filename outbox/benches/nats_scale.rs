//! Scale-out benchmark on the real servers (`scripts/servers.sh start`,
//! then `source target/servers/env`):
//!
//! 1. commits/s of `PostgresStore` (state + 1 event) against a raw
//!    tokio-postgres transaction doing the same writes into tables of the
//!    same shape, 1 and 16 committers;
//! 2. drain rate of a backlog into NATS JetStream with 1, 2 and 4
//!    forwarders, against a naive relay (SKIP LOCKED batch, pipelined
//!    JetStream publish, mark sent; no per-key order, no leases);
//! 3. end-to-end latency commit → message seen on NATS, a forwarder woken
//!    by LISTEN/NOTIFY, against publishing straight to JetStream.
//!
//! `cargo bench -p outbox --all-features --bench nats_scale`. Env: `ROUNDS`
//! (5); `PARTS` (`commit,drain,latency`); for the drain `DRAIN_EVENTS`
//! (40000), `KEYS` (`1024,16384`), `FORWARDERS` (`1,2,4`), `RELAY` and
//! `OURS` (1: run the relay, our forwarders), and the forwarders' `BATCH`
//! (256), `CONC` (256 in flight), `PREFETCH` (the store's choice; 0
//! or 1) and `FAIRNESS_MS` (`ForwarderConfig::fairness` in milliseconds,
//! or `off`; default 500).
#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is the test failing

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::message::PublishMessage;
use futures::StreamExt;
use outbox_core::prelude::*;
use outbox_core::{ActorId, Commit, NewEvent, OrderingKey, Version};
use outbox_forwarder::{Forwarder, ForwarderConfig};
use outbox_sink_nats::{NatsSink, NatsSinkOptions, Subjects};
use outbox_store_postgres::PostgresStore;
use outbox_testkit::bench::{median, payload};
use outbox_testkit::crash::env_u64;
use tokio_postgres::NoTls;

fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{tag}_{}_{}", std::process::id(), nanos % 1_000_000_007)
}

/// Drops a round's schema, so rounds do not pile up tables (and
/// autovacuum work) in the database the next rounds measure.
async fn drop_schema(url: &str, schema: &str) {
    let (c, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(conn);
    c.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE")).await.unwrap();
}

async fn raw_client(url: &str, schema: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(conn);
    c.batch_execute(&format!("SET search_path TO {schema}")).await.unwrap();
    c
}

// ------------------------------------------------------------- commits

async fn ours_commits(store: &PostgresStore, tag: &str, committers: usize, per: usize) -> f64 {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..committers {
        let store = store.clone();
        let a = ActorId::new(format!("{tag}-{t}")).unwrap();
        tasks.push(tokio::spawn(async move {
            let mut v = store.load_state(&a).await.unwrap().map_or(Version::NONE, |s| s.version);
            for _ in 0..per {
                let c = Commit::state(a.clone(), v, vec![b's'; 64]).event(NewEvent::new(
                    a.clone(),
                    "BENCH",
                    payload(),
                ));
                v = store.put_state_and_events(c).await.unwrap().version.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (committers * per) as f64 / start.elapsed().as_secs_f64()
}

/// The same writes by hand: prepared statements, one transaction with the
/// state row (optimistic version check) and the event row.
async fn raw_commits(url: &str, schema: &str, tag: &str, committers: usize, per: usize) -> f64 {
    let mut clients = Vec::new();
    for _ in 0..committers {
        clients.push(raw_client(url, schema).await);
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (t, mut c) in clients.into_iter().enumerate() {
        let actor = format!("{tag}-{t}");
        tasks.push(tokio::spawn(async move {
            let insert_state = c
                .prepare(
                    "INSERT INTO raw_state (actor, version, snapshot, updated_at) VALUES ($1, 1, $2, $3)
                     ON CONFLICT (actor) DO NOTHING",
                )
                .await
                .unwrap();
            let update_state = c
                .prepare(
                    "UPDATE raw_state SET version = $4, snapshot = $2, updated_at = $3
                     WHERE actor = $1 AND version = $5",
                )
                .await
                .unwrap();
            let insert_event = c
                .prepare(
                    "INSERT INTO raw_events (id, origin, key, event_type, payload_kind, payload, headers,
                                             schema_version, created_at, next_attempt_at)
                     VALUES ($1, $2, $3, 'BENCH', 'bytes', $4, '{}', 1, $5, $5)",
                )
                .await
                .unwrap();
            let snapshot = vec![b's'; 64];
            let body = payload();
            for v in 0..per as i64 {
                let now = 1_700_000_000_000i64 + v;
                let tx = c.transaction().await.unwrap();
                let n = if v == 0 {
                    tx.execute(&insert_state, &[&actor, &snapshot, &now]).await.unwrap()
                } else {
                    tx.execute(&update_state, &[&actor, &snapshot, &now, &(v + 1), &v]).await.unwrap()
                };
                assert_eq!(n, 1);
                let id = uuid::Uuid::now_v7();
                tx.execute(&insert_event, &[&id, &actor, &actor, &body.as_bytes(), &now]).await.unwrap();
                tx.commit().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (committers * per) as f64 / start.elapsed().as_secs_f64()
}

// --------------------------------------------------------------- drain

async fn fill(store: &PostgresStore, n: usize, keys: usize) {
    let origin = ActorId::new("bench").unwrap();
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let events: Vec<NewEvent> = chunk
            .iter()
            .map(|i| {
                NewEvent::new(origin.clone(), "order.placed", payload())
                    .with_key(OrderingKey::new(format!("k{}", i % keys)).unwrap())
            })
            .collect();
        store.put_state_and_events(Commit::events_only().events(events)).await.unwrap();
    }
}

async fn ours_drain(pg: &str, nats: &str, forwarders: usize, n: usize, keys: usize) -> f64 {
    let schema = unique("bench_drain");
    let store = PostgresStore::options(pg).schema(&schema).open().await.unwrap();
    fill(&store, n, keys).await;
    let opts = NatsSinkOptions { subjects: Subjects::Prefix(schema.clone()), ..Default::default() };
    let admin = NatsSink::connect(nats, opts.clone()).await.unwrap();
    admin.ensure_stream(&schema, vec![format!("{schema}.>")], Duration::from_secs(120)).await.unwrap();
    let mut fwds = Vec::new();
    for f in 0..forwarders {
        let s = PostgresStore::options(pg).schema(&schema).pool_size(2).open().await.unwrap();
        let sink = NatsSink::connect(nats, opts.clone()).await.unwrap();
        let cfg = ForwarderConfig::default()
            .holder(format!("f{f}"))
            .batch_size(env_u64("BATCH", 256) as usize)
            .max_concurrency(env_u64("CONC", 256) as usize)
            .flush_interval(Duration::from_millis(5))
            .max_idle_interval(Duration::from_millis(50))
            .retention(None)
            .prefetch(std::env::var("PREFETCH").ok().map(|v| v != "0"));
        let cfg = match std::env::var("FAIRNESS_MS") {
            Ok(v) if v == "off" => cfg.fairness(None),
            Ok(v) => cfg.fairness(Some(Duration::from_millis(v.parse().unwrap()))),
            Err(_) => cfg,
        };
        fwds.push(Forwarder::new(Arc::new(s), Arc::new(sink), cfg));
    }
    // Done when no event is pending. A cheap probe on the pending index:
    // `stats()` counts the whole table, and polling it would compete with
    // the forwarders for the database's CPU (the relay's end costs nothing).
    let probe = raw_client(pg, &schema).await;
    let start = Instant::now();
    let handles: Vec<_> = fwds.into_iter().map(Forwarder::spawn).collect();
    while probe
        .query_opt("SELECT 1 FROM outbox_events WHERE status = 0 LIMIT 1", &[])
        .await
        .unwrap()
        .is_some()
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    for h in handles {
        h.shutdown().await;
    }
    let mut stream = admin.jetstream().get_stream(&schema).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, n as u64, "every event in the stream");
    admin.jetstream().delete_stream(&schema).await.unwrap();
    drop_schema(pg, &schema).await;
    rate
}

/// A naive relay: each worker takes 256 unsent rows with SKIP LOCKED,
/// publishes them pipelined with `Nats-Msg-Id`, marks them sent (by id,
/// the table's primary key).
async fn raw_drain(pg: &str, nats: &str, workers: usize, n: usize, keys: usize) -> f64 {
    let schema = unique("bench_raw_drain");
    let store = PostgresStore::options(pg).schema(&schema).open().await.unwrap();
    fill(&store, n, keys).await;
    let subject = format!("{schema}.order.placed");
    let client = async_nats::connect(nats).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: schema.clone(),
        subjects: vec![format!("{schema}.>")],
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut clients = Vec::new();
    for _ in 0..workers {
        let js = async_nats::jetstream::new(async_nats::connect(nats).await.unwrap());
        clients.push((raw_client(pg, &schema).await, js));
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (mut c, js) in clients {
        let subject = subject.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let tx = c.transaction().await.unwrap();
                let rows = tx
                    .query(
                        "SELECT seq, id, payload FROM outbox_events WHERE status = 0
                         ORDER BY seq LIMIT 256 FOR UPDATE SKIP LOCKED",
                        &[],
                    )
                    .await
                    .unwrap();
                if rows.is_empty() {
                    break;
                }
                let mut acks = Vec::with_capacity(rows.len());
                let mut ids = Vec::with_capacity(rows.len());
                for r in &rows {
                    let id: uuid::Uuid = r.get(1);
                    let body: Vec<u8> = r.get(2);
                    ids.push(id);
                    let msg = PublishMessage::build().payload(body.into()).message_id(id.to_string());
                    acks.push(js.send_publish(subject.clone(), msg).await.unwrap());
                }
                for a in futures::future::join_all(acks.into_iter().map(|a| a.into_future())).await {
                    a.unwrap();
                }
                tx.execute(
                    "UPDATE outbox_events SET status = 2, delivered_at = 0 WHERE id = ANY($1)",
                    &[&ids],
                )
                .await
                .unwrap();
                tx.commit().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    js.delete_stream(&schema).await.unwrap();
    drop_schema(pg, &schema).await;
    rate
}

// ------------------------------------------------------------- latency

fn percentile(mut xs: Vec<f64>, p: f64) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((xs.len() as f64 - 1.0) * p).round() as usize;
    xs[i]
}

/// Commits one event every `gap` and measures commit start → the message
/// arriving at a NATS subscriber; returns (p50, p99) in milliseconds.
async fn ours_latency(pg: &str, nats: &str, n: usize, gap: Duration) -> (f64, f64) {
    let schema = unique("bench_lat");
    let store = PostgresStore::options(pg).schema(&schema).open().await.unwrap();
    let opts = NatsSinkOptions { subjects: Subjects::Prefix(schema.clone()), ..Default::default() };
    let sink = NatsSink::connect(nats, opts).await.unwrap();
    sink.ensure_stream(&schema, vec![format!("{schema}.>")], Duration::from_secs(120)).await.unwrap();
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let client = async_nats::connect(nats).await.unwrap();
    let mut sub = client.subscribe(format!("{schema}.>")).await.unwrap();
    client.flush().await.unwrap();
    let fwd_store = PostgresStore::options(pg).schema(&schema).pool_size(2).open().await.unwrap();
    let fwd = Forwarder::new(Arc::new(fwd_store.clone()), Arc::new(sink.clone()), ForwarderConfig::default());
    let wake = fwd.waker();
    let _listener = fwd_store.listen(move || wake.wake()).await.unwrap();
    let handle = fwd.spawn();
    let s2 = sent.clone();
    let recv = tokio::spawn(async move {
        let mut lat = Vec::with_capacity(n);
        while lat.len() < n {
            let m = sub.next().await.unwrap();
            let id = m.headers.as_ref().unwrap().get("Nats-Msg-Id").unwrap().as_str().to_owned();
            let t0 = s2.lock().unwrap()[&id];
            lat.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        lat
    });
    let a = ActorId::new("lat").unwrap();
    let mut tick = tokio::time::interval(gap);
    for _ in 0..n {
        tick.tick().await;
        let e = NewEvent::new(a.clone(), "order.placed", payload());
        sent.lock().unwrap().insert(e.id.to_string(), Instant::now());
        store.put_state_and_events(Commit::events_only().event(e)).await.unwrap();
    }
    let lat = recv.await.unwrap();
    handle.shutdown().await;
    sink.jetstream().delete_stream(&schema).await.unwrap();
    drop_schema(pg, &schema).await;
    (percentile(lat.clone(), 0.5), percentile(lat, 0.99))
}

/// The floor: publishing straight to JetStream (no database), publish
/// start → seen by a subscriber.
async fn raw_latency(nats: &str, n: usize, gap: Duration) -> (f64, f64) {
    let schema = unique("bench_rawlat");
    let client = async_nats::connect(nats).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: schema.clone(),
        subjects: vec![format!("{schema}.>")],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut sub = client.subscribe(format!("{schema}.>")).await.unwrap();
    client.flush().await.unwrap();
    let recv = tokio::spawn(async move {
        let mut lat = Vec::with_capacity(n);
        while lat.len() < n {
            let m = sub.next().await.unwrap();
            let t0: u128 = String::from_utf8(m.payload.to_vec()).unwrap().parse().unwrap();
            lat.push((now_micros() - t0) as f64 / 1e3);
        }
        lat
    });
    let mut tick = tokio::time::interval(gap);
    for _ in 0..n {
        tick.tick().await;
        let ack = js.publish(format!("{schema}.x"), now_micros().to_string().into()).await.unwrap();
        ack.await.unwrap();
    }
    let lat = recv.await.unwrap();
    js.delete_stream(&schema).await.unwrap();
    (percentile(lat.clone(), 0.5), percentile(lat, 0.99))
}

fn now_micros() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros()
}

// ---------------------------------------------------------------- main

fn main() {
    let (Ok(pg), Ok(nats)) = (std::env::var("OUTBOX_PG_URL"), std::env::var("OUTBOX_NATS_URL")) else {
        eprintln!("SKIPPED scale bench: OUTBOX_PG_URL / OUTBOX_NATS_URL not set (scripts/servers.sh start)");
        return;
    };
    let rounds = env_u64("ROUNDS", 5) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
    rt.block_on(async {
        let schema = unique("bench_commit");
        let store = PostgresStore::options(&pg).schema(&schema).pool_size(16).open().await.unwrap();
        let c = raw_client(&pg, &schema).await;
        c.batch_execute(
            "CREATE TABLE raw_state (LIKE outbox_state INCLUDING ALL);
             CREATE TABLE raw_events (LIKE outbox_events INCLUDING ALL);",
        )
        .await
        .unwrap();
        let parts = std::env::var("PARTS").unwrap_or_else(|_| "commit,drain,latency".into());
        if parts.contains("commit") {
        println!("## commits/s, state + 1 event per transaction (median of {rounds} rounds)");
        for (committers, per) in [(1usize, 400usize), (16, 150)] {
            let (mut ours, mut raw) = (Vec::new(), Vec::new());
            for r in 0..rounds {
                ours.push(ours_commits(&store, &format!("o{r}c{committers}"), committers, per).await);
                raw.push(raw_commits(&pg, &schema, &format!("r{r}c{committers}"), committers, per).await);
            }
            let (o, w) = (median(ours), median(raw));
            println!("{committers:>2} committers: outbox {o:>7.0}/s  raw tx {w:>7.0}/s  ratio {:.2}x", o / w);
        }

        }
        if parts.contains("drain") {
        let n = env_u64("DRAIN_EVENTS", 40_000) as usize;
        let list = |var: &str, default: &str| -> Vec<usize> {
            let v = std::env::var(var).unwrap_or_else(|_| default.into());
            v.split(',').map(|x| x.trim().parse().expect("a comma-separated list of numbers")).collect()
        };
        let relay = std::env::var("RELAY").map_or(true, |v| v != "0");
        let ours_on = std::env::var("OURS").map_or(true, |v| v != "0");
        for keys in list("KEYS", "1024,16384") {
            println!("## drain of a {n}-event backlog over {keys} keys into JetStream (median of {rounds})");
            for f in list("FORWARDERS", "1,2,4") {
                let (mut ours, mut raw) = (Vec::new(), Vec::new());
                for _ in 0..rounds {
                    if ours_on {
                        ours.push(ours_drain(&pg, &nats, f, n, keys).await);
                    }
                    raw.push(if relay { raw_drain(&pg, &nats, f, n, keys).await } else { f64::NAN });
                }
                let (o, w) = (median(ours), median(raw));
                println!("{f} forwarder(s): outbox {o:>7.0} ev/s  naive relay {w:>7.0} ev/s  ratio {:.2}x", o / w);
            }
        }
        }
        if !parts.contains("latency") {
            drop_schema(&pg, &schema).await;
            return;
        }
        let (n, gap) = (2_000, Duration::from_millis(2));
        println!("## latency, {n} events at one per {gap:?} (median of {rounds} runs' p50 / p99, ms)");
        let (mut p50, mut p99, mut r50, mut r99) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let (a, b) = ours_latency(&pg, &nats, n, gap).await;
            p50.push(a);
            p99.push(b);
            let (a, b) = raw_latency(&nats, n, gap).await;
            r50.push(a);
            r99.push(b);
        }
        println!(
            "commit -> NATS subscriber: p50 {:.2} ms, p99 {:.2} ms; direct JetStream publish: p50 {:.2} ms, p99 {:.2} ms",
            median(p50),
            median(p99),
            median(r50),
            median(r99)
        );
        drop_schema(&pg, &schema).await;
    });
}
