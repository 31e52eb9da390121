//! Store-agnostic measurements for benchmarks (native only): the "ours"
//! side of each comparison. Every backend's bench pairs these with a raw
//! baseline measured in the same run.

use std::cell::Cell;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::executor::block_on;
use outbox_core::{ActorId, ClaimRequest, Commit, DurableStore, NewEvent, Payload, Version};

/// A count of operations and how long they took.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    /// Operations done.
    pub ops: u64,
    /// Wall time.
    pub elapsed: Duration,
}

impl Rate {
    /// Operations per second.
    pub fn per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Mean time per operation, in microseconds.
    pub fn micros_per_op(&self) -> f64 {
        self.elapsed.as_secs_f64() * 1e6 / self.ops.max(1) as f64
    }
}

/// The median of `xs` (NaN-free input assumed; empty gives 0).
pub fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let m = xs.len() / 2;
    if xs.len() % 2 == 1 { xs[m] } else { (xs[m - 1] + xs[m]) / 2.0 }
}

/// A 100-byte JSON-ish payload, the size the benchmarks commit.
pub fn payload() -> Payload {
    Payload::bytes(vec![b'x'; 100])
}

/// `committers` threads each make `per_committer` commits one after the
/// other, every commit a state change of the thread's own actor plus one
/// event (the upsert + insert of the baselines). Actor names start with
/// `tag` so runs on one store do not collide.
pub fn commit_rate(store: &Arc<dyn DurableStore>, tag: &str, committers: usize, per_committer: u64) -> Rate {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..committers {
            let store = store.clone();
            s.spawn(move || {
                let a = ActorId::new(format!("{tag}-{t}")).expect("actor id");
                let mut v =
                    block_on(store.load_state(&a)).expect("load").map_or(Version::NONE, |st| st.version);
                for _ in 0..per_committer {
                    let c = Commit::state(a.clone(), v, vec![b's'; 64]).event(NewEvent::new(
                        a.clone(),
                        "BENCH",
                        payload(),
                    ));
                    v = block_on(store.put_state_and_events(c)).expect("commit").version.expect("version");
                }
            });
        }
    });
    Rate { ops: committers as u64 * per_committer, elapsed: start.elapsed() }
}

/// Commits `n` events, `per_commit` to a commit, over `keys` ordering keys.
pub fn fill(store: &Arc<dyn DurableStore>, n: u64, per_commit: u64, keys: u64) -> Rate {
    let start = Instant::now();
    let mut done = 0;
    while done < n {
        let k = (n - done).min(per_commit);
        let events = (0..k).map(|i| {
            let a = ActorId::new(format!("k{}", (done + i) % keys.max(1))).expect("actor id");
            NewEvent::new(a, "BENCH", payload())
        });
        block_on(store.put_state_and_events(Commit::events_only().events(events))).expect("fill commit");
        done += k;
    }
    Rate { ops: n, elapsed: start.elapsed() }
}

/// Leads, then claims `batch` at a time and acks each batch until nothing
/// is left: what a forwarder with an instant sink does.
pub fn drain(store: &Arc<dyn DurableStore>, batch: usize) -> Rate {
    let grant = block_on(store.acquire_leadership("bench-drain", Duration::from_secs(3600)))
        .expect("acquire")
        .expect("leadership is free");
    let start = Instant::now();
    let mut ops = 0;
    loop {
        let got =
            block_on(store.claim(&grant, ClaimRequest::new(batch, Duration::from_secs(60)))).expect("claim");
        if got.is_empty() {
            break;
        }
        ops += got.len() as u64;
        let ids: Vec<_> = got.iter().map(|e| e.id).collect();
        block_on(store.ack(&grant, &ids)).expect("ack");
    }
    let elapsed = start.elapsed();
    block_on(store.release_leadership(&grant)).expect("release");
    Rate { ops, elapsed }
}

/// Where a bench puts its databases: `BENCH_DIR` if set (to measure a
/// particular disk), else a temporary directory removed at the end.
#[derive(Debug)]
pub struct BenchDir {
    _tmp: Option<tempfile::TempDir>,
    root: PathBuf,
    n: Cell<u32>,
}

impl BenchDir {
    /// `BENCH_DIR`, or a new temporary directory.
    pub fn new() -> Self {
        match std::env::var("BENCH_DIR") {
            Ok(d) => BenchDir { _tmp: None, root: PathBuf::from(d), n: Cell::new(0) },
            Err(_) => {
                let t = tempfile::tempdir().expect("temp dir");
                let root = t.path().to_owned();
                BenchDir { _tmp: Some(t), root, n: Cell::new(0) }
            }
        }
    }

    /// A path no earlier call returned, ending in `.ext`.
    pub fn next(&self, ext: &str) -> PathBuf {
        self.n.set(self.n.get() + 1);
        self.root.join(format!("bench-{}-{}.{ext}", std::process::id(), self.n.get()))
    }
}

impl Default for BenchDir {
    fn default() -> Self {
        Self::new()
    }
}
