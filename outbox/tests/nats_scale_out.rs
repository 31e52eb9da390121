//! Scale-out on real servers, with real processes: forwarder processes
//! share one PostgreSQL outbox and publish into one JetStream stream.
//!
//! - `four_forwarder_processes_one_killed_mid_batch`: 4 processes drain a
//!   backlog; one (started first) is SIGKILLed after publishing half of a
//!   claimed batch, once the other three are running.
//!   The others take its keys over when its lease runs out; the stream
//!   holds every event exactly once (the broker drops the re-published
//!   half by `Nats-Msg-Id`), each key in commit order.
//! - `nats_restarted_mid_run`: the broker is stopped while forwarders are
//!   delivering, commits go on meanwhile, the broker comes back with its
//!   streams: delivery resumes, nothing lost, nothing twice, order kept.
//!
//! Needs `OUTBOX_PG_URL`, `OUTBOX_NATS_URL` and (for the restart)
//! `OUTBOX_SERVERS_SCRIPT`, all set by `scripts/servers.sh start`; without
//! them each test says SKIPPED and passes. `harness = false`: the binary
//! re-runs itself as the forwarder processes.
// A harness-less test program: its helpers and children run outside
// #[test] functions, where an unwrap is the test failing.
#![allow(clippy::unwrap_used)]

#[path = "../../outbox-sink-nats/tests/common/mod.rs"]
mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use common::{Stored, nats_url, pg_url, read_all, unique};
use outbox_core::prelude::*;
use outbox_core::{ActorId, Commit, Envelope, NewEvent, OrderingKey, RetryPolicy, async_trait};
use outbox_forwarder::{BreakerConfig, Forwarder, ForwarderConfig, Outcome, Sink};
use outbox_sink_nats::{NatsSink, NatsSinkOptions, Subjects};
use outbox_store_postgres::PostgresStore;
use outbox_testkit::crash::{Role, role};

const CHILD: &str = "OUTBOX_SCALE_CHILD";
const KEYS: usize = 64;
/// No scale-out test may take longer than this: past it the binary fails
/// (and its forwarder processes, whose stdin closes, exit) instead of
/// hanging CI.
const WATCHDOG: Duration = Duration::from_secs(300);

/// A scale-out test: whether it ran (false: skipped, said why).
type Test = fn() -> bool;

fn main() {
    let tests: [(&str, Test); 2] = [
        ("four_forwarder_processes_one_killed_mid_batch", four_forwarder_processes_one_killed_mid_batch),
        ("nats_restarted_mid_run", nats_restarted_mid_run),
    ];
    if let Ok(v) = std::env::var(CHILD) {
        return child(&v);
    }
    for (name, test) in tests {
        match role(name, CHILD) {
            Role::Parent => {
                let done = watchdog(name);
                let ran = test();
                done.store(true, Ordering::SeqCst);
                if ran {
                    println!("{name}: ok");
                } else {
                    println!("{name}: skipped");
                }
            }
            Role::Skip | Role::Child(_) => {}
        }
    }
}

/// Fails the whole binary if `test` has not finished within [`WATCHDOG`].
fn watchdog(test: &'static str) -> Arc<AtomicBool> {
    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    std::thread::spawn(move || {
        let deadline = Instant::now() + WATCHDOG;
        while Instant::now() < deadline {
            if flag.load(Ordering::SeqCst) {
                return;
            }
            std::thread::park_timeout(Duration::from_millis(200));
        }
        eprintln!("{test}: FAILED, still running after {WATCHDOG:?}");
        std::process::exit(1);
    });
    done
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

// ---------------------------------------------------------------- child

/// The victim's sink: from its third call on, the first batch of two or
/// more events is published half-way (until the broker acked that half),
/// then it says so and never returns (the parent SIGKILLs it there).
#[derive(Debug)]
struct Victim {
    inner: NatsSink,
    calls: AtomicUsize,
    fired: AtomicBool,
}

#[async_trait]
impl Sink for Victim {
    async fn publish(&self, batch: &[Envelope]) -> Vec<Outcome> {
        if self.calls.fetch_add(1, Ordering::SeqCst) >= 2
            && batch.len() >= 2
            && !self.fired.swap(true, Ordering::SeqCst)
        {
            let half = batch.len() / 2;
            while !self.inner.publish(&batch[..half]).await.iter().all(Outcome::is_ok) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            println!("MID-BATCH {half} of {}", batch.len());
            std::future::pending::<()>().await;
        }
        self.inner.publish(batch).await
    }
}

/// A forwarder process: `<schema> <holder> <victim|plain>`.
fn child(arg: &str) {
    let mut parts = arg.split(' ');
    let (schema, holder, kind) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
    let pg = std::env::var("OUTBOX_PG_URL").unwrap();
    let nats = std::env::var("OUTBOX_NATS_URL").unwrap();
    // The parent holds our stdin: when it ends (the parent exited, even by
    // a watchdog or a panic), so do we.
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    runtime().block_on(async move {
        let store = PostgresStore::options(&pg).schema(schema).pool_size(4).open().await.unwrap();
        let opts = NatsSinkOptions {
            subjects: Subjects::Prefix(schema.to_owned()),
            ack_timeout: Duration::from_secs(2),
            max_reconnect_delay: Duration::from_millis(200),
            ..Default::default()
        };
        let inner = NatsSink::connect(&nats, opts).await.unwrap();
        let sink: Arc<dyn Sink> = match kind {
            "victim" => Arc::new(Victim { inner, calls: AtomicUsize::new(0), fired: AtomicBool::new(false) }),
            _ => Arc::new(inner),
        };
        let cfg = ForwarderConfig::default()
            .holder(holder)
            .lease(Duration::from_secs(3))
            .leader_ttl(Duration::from_secs(3))
            .flush_interval(Duration::from_millis(20))
            .max_idle_interval(Duration::from_millis(500))
            // A broker outage must not dead-letter anything.
            .retry(RetryPolicy::default().max_attempts(10_000))
            .breaker(BreakerConfig { max_open_for: Duration::from_secs(1), ..Default::default() })
            .retention(None);
        let fwd = Forwarder::new(Arc::new(store.clone()), sink, cfg);
        let wake = fwd.waker();
        let _listener = store.listen(move || wake.wake()).await.unwrap();
        println!("READY");
        fwd.run(tokio_util::sync::CancellationToken::new()).await;
    });
}

// --------------------------------------------------------------- parent

struct Run {
    schema: String,
    store: PostgresStore,
    sink: NatsSink,
    stream: async_nats::jetstream::stream::Stream,
    /// Per key, the event ids in commit order.
    committed: HashMap<String, Vec<String>>,
    children: Vec<Child>,
    /// Each child's stdout lines, read by a thread per child.
    outputs: Vec<Receiver<String>>,
}

impl Run {
    async fn new(pg: &str, nats: &str, tag: &str) -> Run {
        let schema = unique(tag);
        let store = PostgresStore::options(pg).schema(&schema).open().await.unwrap();
        let sink = NatsSink::connect(
            nats,
            NatsSinkOptions { max_reconnect_delay: Duration::from_millis(200), ..Default::default() },
        )
        .await
        .unwrap();
        let stream =
            sink.ensure_stream(&schema, vec![format!("{schema}.>")], Duration::from_secs(300)).await.unwrap();
        Run {
            schema,
            store,
            sink,
            stream,
            committed: HashMap::new(),
            children: Vec::new(),
            outputs: Vec::new(),
        }
    }

    /// Commits `n` events over [`KEYS`] keys, 100 per transaction.
    async fn commit(&mut self, n: usize) {
        let origin = ActorId::new("scale").unwrap();
        let base = self.committed.values().map(Vec::len).sum::<usize>();
        for chunk in (base..base + n).collect::<Vec<_>>().chunks(100) {
            let events: Vec<NewEvent> = chunk
                .iter()
                .map(|i| {
                    let key = OrderingKey::new(format!("k{}", i % KEYS)).unwrap();
                    NewEvent::json(origin.clone(), "order.placed", &serde_json::json!({ "n": i }))
                        .unwrap()
                        .with_key(key)
                })
                .collect();
            for e in &events {
                self.committed.entry(e.key.as_str().to_owned()).or_default().push(e.id.to_string());
            }
            self.store.put_state_and_events(Commit::events_only().events(events)).await.unwrap();
        }
    }

    fn spawn(&mut self, holder: &str, kind: &str) -> usize {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(CHILD, format!("{} {holder} {kind}", self.schema))
            .stdout(Stdio::piped())
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = channel();
        let out = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        self.outputs.push(rx);
        self.children.push(child);
        self.children.len() - 1
    }

    /// Reads child `i`'s stdout up to a line starting with `prefix`
    /// (bounded: 60 s).
    fn wait_line(&mut self, i: usize, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.outputs[i].recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => panic!("child {i} did not print {prefix} within 60 s"),
                Err(RecvTimeoutError::Disconnected) => panic!("child {i} exited before printing {prefix}"),
            }
        }
    }

    /// Waits (bounded) until the stream holds at least `n` messages.
    async fn wait_stream(&mut self, n: u64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(info) = self.stream.info().await
                && info.state.messages >= n
            {
                return;
            }
            assert!(Instant::now() < deadline, "the stream did not reach {n} messages in {within:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (bounded) until the outbox has nothing pending.
    async fn wait_drained(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let s = self.store.stats().await.unwrap();
            assert_eq!(s.dead, 0, "nothing may be dead-lettered");
            if s.pending == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "{} events still pending after {within:?}", s.pending);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The stream holds every committed event exactly once, each key in
    /// commit order.
    async fn check_stream(&mut self) -> Vec<Stored> {
        let stored = read_all(&mut self.stream).await;
        let total: usize = self.committed.values().map(Vec::len).sum();
        let ids: HashSet<&str> = stored.iter().map(|m| m.msg_id.as_str()).collect();
        assert_eq!(ids.len(), stored.len(), "an event is in the stream twice");
        assert_eq!(stored.len(), total, "the stream must hold every committed event exactly once");
        for (key, want) in &self.committed {
            let got: Vec<&String> = stored.iter().filter(|m| &m.key == key).map(|m| &m.msg_id).collect();
            assert_eq!(got.len(), want.len(), "key {key}: count");
            assert!(
                got.iter().zip(want).all(|(g, w)| *g == w),
                "key {key} is out of commit order in the stream"
            );
        }
        stored
    }

    async fn finish(self) {
        let _ = self.sink.jetstream().delete_stream(&self.schema).await;
    }
}

impl Drop for Run {
    /// No forwarder process outlives its test, failed or not.
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn four_forwarder_processes_one_killed_mid_batch() -> bool {
    let name = "four_forwarder_processes_one_killed_mid_batch";
    let (Some(pg), Some(nats)) = (pg_url(name), nats_url(name)) else { return false };
    runtime().block_on(async {
        let mut run = Run::new(&pg, &nats, "scale").await;
        let total = 20_000;
        run.commit(total).await;
        // The victim starts alone, so its batches are certain to come (with
        // all four racing, the others can drain the backlog before the
        // victim's third call); the others start while it hangs mid-batch
        // holding its claim, then it is killed.
        let victim = run.spawn("victim", "victim");
        run.wait_line(victim, "READY");
        let line = run.wait_line(victim, "MID-BATCH");
        for f in 1..4 {
            let i = run.spawn(&format!("f{f}"), "plain");
            run.wait_line(i, "READY");
        }
        // SIGKILL: no cleanup, its claimed batch stays leased.
        run.children[victim].kill().unwrap();
        run.children[victim].wait().unwrap();
        eprintln!("{name}: killed the victim after {}", line.trim());
        run.wait_drained(Duration::from_secs(120)).await;
        let stored = run.check_stream().await;
        assert_eq!(stored.len(), total);
        run.finish().await;
    });
    true
}

fn nats_restarted_mid_run() -> bool {
    let name = "nats_restarted_mid_run";
    let (Some(pg), Some(nats)) = (pg_url(name), nats_url(name)) else { return false };
    if !outbox_testkit::required(Some("OUTBOX_SERVERS_SCRIPT"), name) {
        return false;
    }
    let script = std::env::var("OUTBOX_SERVERS_SCRIPT").unwrap();
    let servers = |cmd: &str| {
        let st = Command::new("bash").arg(&script).arg(cmd).status().unwrap();
        assert!(st.success(), "{script} {cmd} failed");
    };
    runtime().block_on(async {
        let mut run = Run::new(&pg, &nats, "restart").await;
        run.commit(6_000).await;
        for f in 0..2 {
            run.spawn(&format!("f{f}"), "plain");
        }
        for i in 0..2 {
            run.wait_line(i, "READY");
        }
        run.wait_stream(1_000, Duration::from_secs(60)).await;
        servers("nats-stop");
        // The application keeps committing while the broker is away.
        run.commit(4_000).await;
        let stranded = run.store.stats().await.unwrap().pending;
        assert!(stranded >= 4_000, "the outage must strand events ({stranded} pending)");
        servers("nats-start");
        run.wait_drained(Duration::from_secs(120)).await;
        run.check_stream().await;
        run.finish().await;
    });
    true
}
