//! Power loss, ALICE-style, on sled: the store's file operations while it
//! commits and acks are traced (`strace`), every crash state a power loss
//! could leave is built from the trace (unsynced writes lost, reordered,
//! zeroed or torn; unsynced creates, renames and unlinks lost), and each is
//! opened with the real store: every acknowledged commit and ack must be
//! there, in per-key order (see [`outbox_testkit::power_loss`]).
//!
//! sled 0.34 alone fails this: it makes a flush "durable" with
//! `sync_file_range`, which is no durability point (upstream
//! spacejam/sled#1452), never fsyncs its `conf` file, its blob files or a
//! directory, and reads a snapshot cut short as corrupted
//! (spacejam/sled#1527). The store's own fsyncs, its durable creation and
//! its removal of partial snapshots make it pass (see the crate README's
//! durability section).
//!
//! The second test runs the same workload on 4 KiB log segments, so sled
//! keeps most tree nodes in blob files (a node larger than a quarter of a
//! segment, as 16 events of 8 KiB are with sled's default 512 KiB) and
//! fills, frees and reuses segments, which the small workload never does
//! at the default size.
//!
//! `OUTBOX_POWER_LOSS_STATES` sets how many distinct crash states are
//! checked (`all` for every one).

use std::path::Path;
use std::sync::Arc;

use outbox_core::{DurableStore, Result};
use outbox_store_sled::{SledOptions, SledStore};
use outbox_testkit::power_loss::{self, PowerLossTarget};

fn open(path: &Path) -> Result<Arc<dyn DurableStore>> {
    Ok(Arc::new(SledStore::open(path)?))
}

fn open_small_segments(path: &Path) -> Result<Arc<dyn DurableStore>> {
    Ok(Arc::new(SledOptions::new(path).segment_size(4096).open()?))
}

#[test]
fn power_loss_keeps_every_acknowledged_commit() {
    power_loss::run(PowerLossTarget {
        test_name: "power_loss_keeps_every_acknowledged_commit",
        file_name: "power.sled",
        open,
    });
}

#[test]
fn power_loss_keeps_every_acknowledged_commit_in_blob_files() {
    power_loss::run(PowerLossTarget {
        test_name: "power_loss_keeps_every_acknowledged_commit_in_blob_files",
        file_name: "power.sled",
        open: open_small_segments,
    });
}
