//! Real crash test: the shared SIGKILL harness
//! ([`outbox_testkit::crash::commit_and_forward`]) on one SQLite file,
//! with `PRAGMA integrity_check` after every kill. Kills land in commits,
//! claims, acks, retries, dead-lettering, requeue/skip/discard, pruning,
//! lease renewal and leadership hand-overs; a quarter of the runs put two
//! processes on the file, kill the leader and check the survivor takes
//! over. After every kill: nothing reported is lost and each key's
//! deliveries kept commit order; at the end a drain delivers every event
//! not discarded.
//!
//! `OUTBOX_CRASH_KILLS` sets the number of kills (default 200);
//! `OUTBOX_CRASH_SEED` replays a run.

use std::path::Path;
use std::sync::Arc;

use outbox_core::{DurableStore, Result};
use outbox_store_sqlite::SqliteStore;
use outbox_testkit::crash::{self, CrashTarget, Dump};

fn main() {
    crash::commit_and_forward(CrashTarget {
        name: "sigkill_crash_keeps_every_reported_commit",
        file_name: "crash.db",
        open,
        dump,
    });
}

fn open(path: &Path) -> Result<Arc<dyn DurableStore>> {
    Ok(Arc::new(SqliteStore::open(path)?))
}

fn dump(path: &Path) -> std::result::Result<Dump, String> {
    let c = rusqlite::Connection::open(path).map_err(|e| e.to_string())?;
    let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).map_err(|e| e.to_string())?;
    if ok != "ok" {
        return Err(ok);
    }
    let mut d = Dump::default();
    let mut st = c.prepare("SELECT actor, version, snapshot FROM outbox_state").map_err(|e| e.to_string())?;
    let rows = st
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64, r.get::<_, Vec<u8>>(2)?)))
        .map_err(|e| e.to_string())?;
    for row in rows {
        d.states.push(row.map_err(|e| e.to_string())?);
    }
    let mut st = c.prepare("SELECT id, payload, status FROM outbox_events").map_err(|e| e.to_string())?;
    let rows = st
        .query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, String>(2)?)))
        .map_err(|e| e.to_string())?;
    for row in rows {
        let (id, payload, status) = row.map_err(|e| e.to_string())?;
        let id = uuid::Uuid::from_slice(&id).map_err(|e| e.to_string())?.to_string();
        d.events.push((id, payload, status == "delivered"));
    }
    Ok(d)
}
