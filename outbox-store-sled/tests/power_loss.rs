//! Power loss, ALICE-style, on sled: the store's file operations while it
//! commits and acks are traced (`strace`), every crash state a power loss
//! could leave is built from the trace (unsynced writes lost, reordered,
//! zeroed or torn; unsynced creates, renames and unlinks lost), and each is
//! opened with the real store: every acknowledged commit and ack must be
//! there, in per-key order (see [`outbox_testkit::power_loss`]).
//!
//! It fails today, and is ignored until the store is fixed: sled 0.34.7
//! makes a flush "durable" with `sync_file_range`, which writes no
//! metadata (the log file's new size) and flushes no disk cache (upstream
//! spacejam/sled#1452), so acknowledged commits and acks are lost in most
//! crash states; the `conf` file is never fsynced; and a crash while sled
//! writes a snapshot leaves a `snap.*.generating` file that sled then
//! reads and refuses as corrupted (spacejam/sled#1527). Run it with
//! `cargo test -p outbox-store-sled --test power_loss -- --ignored`.
//!
//! `OUTBOX_POWER_LOSS_STATES` sets how many distinct crash states are
//! checked (`all` for every one).

use std::path::Path;
use std::sync::Arc;

use outbox_core::{DurableStore, Result};
use outbox_store_sled::SledStore;
use outbox_testkit::power_loss::{self, PowerLossTarget};

fn open(path: &Path) -> Result<Arc<dyn DurableStore>> {
    Ok(Arc::new(SledStore::open(path)?))
}

#[test]
#[ignore = "finding of issue 22: sled acknowledges writes made durable by sync_file_range only (no fsync), so power loss loses acknowledged commits; see this file's docs"]
fn power_loss_keeps_every_acknowledged_commit() {
    power_loss::run(PowerLossTarget {
        test_name: "power_loss_keeps_every_acknowledged_commit",
        file_name: "power.sled",
        open,
    });
}
