//! Power loss, ALICE-style: the store's file operations while it commits
//! and acks are traced (`strace`), every crash state a power loss could
//! leave is built from the trace (unsynced writes lost, reordered or torn;
//! unsynced creates, renames and unlinks lost), and each is opened with
//! the real store: every acknowledged commit and ack must be there, in
//! per-key order (see [`outbox_testkit::power_loss`]).
//!
//! `OUTBOX_POWER_LOSS_STATES` sets how many distinct crash states are
//! checked (`all` for every one).

use std::path::Path;
use std::sync::Arc;

use outbox_core::{DurableStore, Result};
use outbox_store_sqlite::SqliteStore;
use outbox_testkit::power_loss::{self, PowerLossTarget};

fn open(path: &Path) -> Result<Arc<dyn DurableStore>> {
    Ok(Arc::new(SqliteStore::open(path)?))
}

#[test]
fn power_loss_keeps_every_acknowledged_commit() {
    power_loss::run(PowerLossTarget {
        test_name: "power_loss_keeps_every_acknowledged_commit",
        file_name: "power.db",
        open,
    });
}
