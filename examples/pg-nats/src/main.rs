//! PostgreSQL + NATS JetStream with several processes, each an application
//! instance with its own forwarder, all sharing one outbox in PostgreSQL
//! and publishing into one JetStream stream.
//!
//! ```text
//! scripts/servers.sh start && source target/servers/env   # OUTBOX_PG_URL, OUTBOX_NATS_URL
//! cargo run -p outbox-example-pg-nats                      # 3 processes
//! cargo run -p outbox-example-pg-nats -- --workers 5 --per-actor 20
//! ```
//!
//! The program creates a schema and a stream of its own, starts the worker
//! processes (itself, with `--worker`), and each worker runs `Account`
//! actors that commit a balance and a `DEPOSITED` event per message. The
//! forwarders share the PostgreSQL store (`leadership = shared`: each
//! claims other keys, `FOR UPDATE SKIP LOCKED`), so any worker may deliver
//! any worker's events. At the end it checks that the stream holds every
//! event exactly once and each account's events in commit order, then
//! removes its schema and stream. Without `OUTBOX_PG_URL` or
//! `OUTBOX_NATS_URL` it says it was skipped and exits 0.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use outbox::{
    Actor, ActorId, Context, Envelope, NatsSink, OutboxConfig, Outcome, PostgresStore, Sink, StoreChoice,
    async_trait, configure_outbox,
};
use outbox_sink_nats::{NatsSinkOptions, Subjects};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// No run may take longer than this.
const DEADLINE: Duration = Duration::from_secs(120);

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("--worker") => worker(&args).await,
        _ => parent(&args).await,
    };
    if let Err(e) = result {
        eprintln!("pg-nats: {e}");
        std::process::exit(1);
    }
}

fn urls() -> Option<(String, String)> {
    match (std::env::var("OUTBOX_PG_URL"), std::env::var("OUTBOX_NATS_URL")) {
        (Ok(pg), Ok(nats)) => Some((pg, nats)),
        _ => None,
    }
}

// ------------------------------------------------------------- the actor

/// An account: its balance, and a `DEPOSITED` event per deposit, in one commit.
struct Account;

#[derive(Debug, thiserror::Error)]
#[error("a deposit must be positive")]
struct ZeroDeposit;

#[async_trait]
impl Actor for Account {
    type State = u64;
    type Message = u64;
    type Error = ZeroDeposit;

    async fn handle(&mut self, balance: &mut u64, amount: u64, ctx: &mut Context) -> Result<(), ZeroDeposit> {
        if amount == 0 {
            return Err(ZeroDeposit);
        }
        *balance += amount;
        ctx.emit("DEPOSITED", &serde_json::json!({ "amount": amount, "balance": *balance }));
        Ok(())
    }
}

// ------------------------------------------------------------ a worker

/// The NATS sink, counting what this process delivered.
#[derive(Debug)]
struct Counted(NatsSink, Arc<AtomicU64>);

#[async_trait]
impl Sink for Counted {
    fn name(&self) -> &str {
        self.0.name()
    }

    async fn publish(&self, batch: &[Envelope]) -> Vec<Outcome> {
        let outcomes = self.0.publish(batch).await;
        self.1.fetch_add(outcomes.iter().filter(|o| o.is_ok()).count() as u64, Ordering::Relaxed);
        outcomes
    }
}

/// `--worker N SCHEMA ACTORS PER_ACTOR`: one application instance.
async fn worker(args: &[String]) -> Result<(), BoxError> {
    let [_, n, schema, actors, per_actor] = args else {
        return Err("usage: --worker N SCHEMA ACTORS PER_ACTOR".into());
    };
    let (actors, per_actor): (usize, u64) = (actors.parse()?, per_actor.parse()?);
    let (pg, nats) = urls().ok_or("the worker needs OUTBOX_PG_URL and OUTBOX_NATS_URL")?;

    // The store in the example's own schema (so PostgresStore is opened
    // here and handed over as Custom); the sink publishes to SCHEMA.<type>.
    let store = PostgresStore::options(&pg).schema(schema.as_str()).open().await?;
    let opts = NatsSinkOptions { subjects: Subjects::Prefix(schema.clone()), ..Default::default() };
    let delivered = Arc::new(AtomicU64::new(0));
    let sink = Counted(NatsSink::connect(&nats, opts).await?, delivered.clone());
    let config = OutboxConfig::default()
        .store(StoreChoice::Custom(Arc::new(store)))
        .flush_interval(Duration::from_millis(50));
    let outbox = configure_outbox(config, Arc::new(sink)).await?;

    let mut accounts = Vec::new();
    for a in 0..actors {
        accounts.push(outbox.spawn_actor(ActorId::new(format!("acct-{n}-{a}"))?, Account).await?);
    }
    for amount in 1..=per_actor {
        for account in &accounts {
            account.send(amount).await?;
        }
    }

    // Keep forwarding until the shared outbox is drained: this process
    // also delivers other processes' events.
    let store = outbox.store();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let stats = store.stats().await?;
        if stats.dead > 0 {
            return Err(format!("{} events were dead-lettered", stats.dead).into());
        }
        if stats.pending == 0 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("{} events still pending after {DEADLINE:?}", stats.pending).into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    outbox.shutdown().await;
    println!(
        "worker {n}: committed {} events, delivered {}",
        actors as u64 * per_actor,
        delivered.load(Ordering::Relaxed)
    );
    Ok(())
}

// ------------------------------------------------------------ the parent

async fn parent(args: &[String]) -> Result<(), BoxError> {
    let (mut workers, mut per_actor, actors) = (3usize, 10u64, 4usize);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--workers" => workers = value.parse()?,
            "--per-actor" => per_actor = value.parse()?,
            other => {
                return Err(format!("unknown argument {other:?} (use --workers N, --per-actor M)").into());
            }
        }
    }
    let Some((pg, nats)) = urls() else {
        println!(
            "pg-nats: skipped: OUTBOX_PG_URL and OUTBOX_NATS_URL are not set \
             (scripts/servers.sh start; source target/servers/env)"
        );
        return Ok(());
    };

    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
    let schema = format!("example_pg_nats_{}_{}", std::process::id(), nanos % 1_000_000_007);
    // Create the schema before the workers race to (migrations take an
    // advisory lock; this just makes the first start quicker).
    PostgresStore::options(&pg).schema(schema.as_str()).open().await?;
    let sink = NatsSink::connect(&nats, NatsSinkOptions::default()).await?;
    // JetStream drops a repeated Nats-Msg-Id within the window: longer
    // than a forwarder's lease, so a redelivery after a crash is dropped.
    sink.ensure_stream(&schema, vec![format!("{schema}.>")], Duration::from_secs(120)).await?;
    println!("pg-nats: schema and stream {schema}; {workers} worker processes");

    let result = run_workers(&schema, workers, actors, per_actor).await;
    let checked = match result {
        Ok(()) => check_stream(&sink, &schema, workers, actors, per_actor).await,
        Err(e) => Err(e),
    };

    // Clean up either way.
    let _ = sink.jetstream().delete_stream(&schema).await;
    if let Ok((client, conn)) = tokio_postgres::connect(&pg, tokio_postgres::NoTls).await {
        tokio::spawn(conn);
        let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await;
    }
    checked
}

async fn run_workers(schema: &str, workers: usize, actors: usize, per_actor: u64) -> Result<(), BoxError> {
    let exe = std::env::current_exe()?;
    let mut children: Vec<Child> = Vec::new();
    for n in 0..workers {
        let child = Command::new(&exe)
            .args(["--worker", &n.to_string(), schema, &actors.to_string(), &per_actor.to_string()])
            .stdout(Stdio::inherit())
            .spawn()?;
        children.push(child);
    }
    let deadline = Instant::now() + DEADLINE;
    let mut failed = None;
    for (n, child) in children.iter_mut().enumerate() {
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    failed.get_or_insert(format!("worker {n} failed: {status}"));
                }
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                failed.get_or_insert(format!("worker {n} still running after {DEADLINE:?}"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    match failed {
        Some(f) => Err(f.into()),
        None => Ok(()),
    }
}

/// The stream holds every event once, each account's in commit order
/// (the balances in its payloads only grow).
async fn check_stream(
    sink: &NatsSink,
    schema: &str,
    workers: usize,
    actors: usize,
    per_actor: u64,
) -> Result<(), BoxError> {
    let stream = sink.jetstream().get_stream(schema).await?;
    let info = stream.get_info().await?;
    let expected = (workers * actors) as u64 * per_actor;
    if info.state.messages != expected {
        return Err(
            format!("the stream holds {} messages, {expected} were committed", info.state.messages).into()
        );
    }
    let mut ids = HashSet::new();
    let mut last_balance: HashMap<String, u64> = HashMap::new();
    for seq in info.state.first_sequence..=info.state.last_sequence {
        let m = stream.get_raw_message(seq).await?;
        let header = |n: &str| m.headers.get(n).map(|v| v.as_str().to_owned()).unwrap_or_default();
        if !ids.insert(header("Nats-Msg-Id")) {
            return Err("an event is in the stream twice".into());
        }
        let payload: serde_json::Value = serde_json::from_slice(&m.payload)?;
        let balance = payload["balance"].as_u64().ok_or("a payload without a balance")?;
        let last = last_balance.entry(header("Outbox-Key")).or_insert(0);
        if balance <= *last {
            return Err(
                format!("account {} is out of commit order in the stream", header("Outbox-Key")).into()
            );
        }
        *last = balance;
    }
    println!(
        "pg-nats: the stream holds all {expected} events once, {} accounts each in commit order",
        last_balance.len()
    );
    Ok(())
}
