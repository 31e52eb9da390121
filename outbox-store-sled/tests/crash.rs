//! Real crash test: the shared SIGKILL harness
//! ([`outbox_testkit::crash::commit_and_forward`], the same one the SQLite
//! store runs) on one sled database, with an index-vs-rows consistency
//! check after every kill. Kills land in commits, claims, acks, retries,
//! dead-lettering, requeue/skip/discard, pruning, lease renewal and
//! leadership hand-overs (one process at a time: sled locks its
//! directory, so the two-process takeover runs are SQLite's). After every
//! kill: nothing reported is lost and each key's deliveries kept commit
//! order; at the end a drain delivers every event not discarded.
//!
//! `OUTBOX_CRASH_KILLS` sets the number of kills (default 200);
//! `OUTBOX_CRASH_SEED` replays a run.

use std::path::Path;
use std::sync::Arc;

use outbox_core::{DurableStore, Result};
use outbox_store_sled::SledStore;
use outbox_testkit::crash::{self, CrashTarget, Dump};

fn main() {
    crash::commit_and_forward(CrashTarget {
        name: "sled_sigkill_crash_keeps_every_reported_commit",
        file_name: "crash.sled",
        open,
        dump,
    });
}

fn open(path: &Path) -> Result<Arc<dyn DurableStore>> {
    Ok(Arc::new(SledStore::open(path)?))
}

fn dump(path: &Path) -> std::result::Result<Dump, String> {
    let c = outbox_store_sled::debug::dump(path).map_err(|e| e.to_string())?;
    Ok(Dump {
        states: c.states.into_iter().map(|(a, s)| (a.as_str().to_owned(), s.version.0, s.bytes)).collect(),
        events: c
            .events
            .into_iter()
            .map(|(e, delivered)| (e.id.to_string(), e.payload.into_bytes(), delivered))
            .collect(),
    })
}
