//! The on-disk layout: sled's trees, their keys and values, the layout
//! version, and the watermark file beside sled's own.
//!
//! | tree | key | value |
//! |---|---|---|
//! | `outbox.meta` | [`LAYOUT_KEY`], [`EPOCH_KEY`], [`HELD_KEY`], [`SEQ_KEY`] | big-endian integers |
//! | `outbox.state` | actor id | version, time, snapshot ([`codec`](crate::codec)) |
//! | `outbox.events` | [`seq_key`] (commit order) | event row |
//! | `outbox.ids` | event id (16 bytes) | [`seq_key`] |
//! | `outbox.pending` | [`seq_key`] | pending entry: the claim index |
//! | `outbox.dead` | [`seq_key`] | ordering key |
//! | `outbox.delivered` | [`time_seq_key`] | empty: pruning by range |
//! | `outbox.inbox` | [`inbox_key`] | time marked |
//! | `outbox.inbox_time` | [`inbox_time_key`] | empty: pruning by range |
//!
//! Integers are big-endian so keys sort numerically; timestamps sort like
//! the time ([`time_bytes`]). Rows and pending entries are
//! [`outbox_core::codec`] values.
//!
//! A database without `outbox.meta` gets the trees and this build's
//! [`LAYOUT_VERSION`]; one with a newer version is refused untouched, and
//! one holding other trees or data is somebody else's and refused as well.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use outbox_core::{ActorId, ConsumerId, Error, EventId, Result, Timestamp};

use crate::codec::{Writer, corrupt, time_bytes};
use crate::error::{SledError, map};

/// The on-disk layout version this build writes and understands.
pub const LAYOUT_VERSION: u32 = 1;

/// The `meta` key holding the layout version (`u32`, big-endian).
pub(crate) const LAYOUT_KEY: &[u8] = b"layout";
/// The `meta` key holding the last leadership epoch granted (`u64`).
pub(crate) const EPOCH_KEY: &[u8] = b"last_epoch";
/// The `meta` key holding the epoch of a grant not (yet) released: found
/// at open, it was made by a handle that is gone without releasing (a
/// killed process).
pub(crate) const HELD_KEY: &[u8] = b"held_epoch";
/// The `meta` key holding the next commit sequence number (`u64`); it
/// never goes down.
pub(crate) const SEQ_KEY: &[u8] = b"next_seq";
/// The file, beside sled's own in the database directory, recording a
/// sequence number known durable (at open, after recovery, and at close).
/// A database that recovers to less lost committed data.
const WATERMARK_FILE: &str = "outbox.watermark";

/// The trees, in the order of the indexes below (the transaction view is
/// a slice of them in this order).
const TREES: [&str; 9] = [
    "outbox.meta",
    "outbox.state",
    "outbox.events",
    "outbox.ids",
    "outbox.pending",
    "outbox.dead",
    "outbox.delivered",
    "outbox.inbox",
    "outbox.inbox_time",
];
pub(crate) const META: usize = 0;
pub(crate) const STATE: usize = 1;
pub(crate) const EVENTS: usize = 2;
pub(crate) const IDS: usize = 3;
pub(crate) const PENDING: usize = 4;
pub(crate) const DEAD: usize = 5;
pub(crate) const DELIVERED: usize = 6;
pub(crate) const INBOX: usize = 7;
pub(crate) const INBOX_TIME: usize = 8;

/// sled's own tree, always there.
const SLED_DEFAULT_TREE: &[u8] = b"__sled__default";

/// Opens the trees of `db`, indexed by [`META`] .. [`INBOX_TIME`]. The
/// layout is read before anything is written: a newer layout is
/// `SchemaTooNew` and a foreign database `Corrupted`, both left untouched.
/// A new database gets the trees and [`LAYOUT_VERSION`], flushed.
pub(crate) fn open_trees(db: &sled::Db) -> Result<Vec<sled::Tree>> {
    let names: HashSet<Vec<u8>> = db.tree_names().into_iter().map(|n| n.to_vec()).collect();
    let found = if names.contains(TREES[META].as_bytes()) {
        let meta = db.open_tree(TREES[META]).map_err(|e| map("open meta", e))?;
        match meta.get(LAYOUT_KEY).map_err(|e| map("read layout", e))? {
            Some(v) => {
                let b: [u8; 4] = v.as_ref().try_into().map_err(|_| corrupt("layout version is malformed"))?;
                Some(u32::from_be_bytes(b))
            }
            None => None,
        }
    } else {
        None
    };
    match found {
        Some(v) if v > LAYOUT_VERSION => {
            return Err(Error::SchemaTooNew { found: v, supported: LAYOUT_VERSION });
        }
        Some(_) => {}
        None => {
            // Any tree but sled's own, or any data in sled's own, means
            // somebody else's database.
            let foreign = names.iter().any(|n| n.as_slice() != SLED_DEFAULT_TREE) || !db.is_empty();
            if foreign {
                return Err(SledError::Foreign.into());
            }
        }
    }
    let mut all = Vec::with_capacity(TREES.len());
    for name in TREES {
        all.push(db.open_tree(name).map_err(|e| map("open tree", e))?);
    }
    if found.is_none() {
        all[META].insert(LAYOUT_KEY, &LAYOUT_VERSION.to_be_bytes()).map_err(|e| map("write layout", e))?;
        db.flush().map_err(|e| map("flush layout", e))?;
    }
    Ok(all)
}

/// The `u64` under `key` in the meta tree, if any.
fn meta_u64(all: &[sled::Tree], key: &[u8], what: &'static str) -> Result<Option<u64>> {
    match all[META].get(key).map_err(|e| map(what, e))? {
        Some(v) => {
            let b: [u8; 8] = v.as_ref().try_into().map_err(|_| corrupt(&format!("{what}: malformed")))?;
            Ok(Some(u64::from_be_bytes(b)))
        }
        None => Ok(None),
    }
}

/// The next commit sequence number: past the last event and never below
/// the one recorded (events may have been pruned).
pub(crate) fn next_seq(all: &[sled::Tree]) -> Result<u64> {
    let after_last = match all[EVENTS].last().map_err(|e| map("read last event", e))? {
        Some((k, _)) => seq_of(&k)? + 1,
        None => 0,
    };
    Ok(after_last.max(meta_u64(all, SEQ_KEY, "read sequence")?.unwrap_or(0)))
}

/// The last leadership epoch granted (0 before the first).
pub(crate) fn last_epoch(all: &[sled::Tree]) -> Result<u64> {
    Ok(meta_u64(all, EPOCH_KEY, "read epoch")?.unwrap_or(0))
}

/// Whether a grant was left unreleased by the last handle.
pub(crate) fn grant_left_held(all: &[sled::Tree]) -> Result<bool> {
    Ok(all[META].get(HELD_KEY).map_err(|e| map("read held epoch", e))?.is_some())
}

/// The watermark file of the database directory `dir`.
pub(crate) fn watermark_path(dir: &Path) -> PathBuf {
    dir.join(WATERMARK_FILE)
}

/// Checks that the database in `dir` recovered every event known durable
/// (`next_seq` is not below the watermark), then records `next_seq`.
pub(crate) fn check_watermark(dir: &Path, next_seq: u64) -> Result<()> {
    let path = watermark_path(dir);
    if let Some(known) = read_watermark(&path)?
        && next_seq < known
    {
        return Err(SledError::LostCommits { path: dir.to_owned(), recovered: next_seq, known }.into());
    }
    write_watermark(&path, next_seq)
}

/// The durable sequence number recorded in `path`, if the file exists.
fn read_watermark(path: &Path) -> Result<Option<u64>> {
    match std::fs::read(path) {
        Ok(b) => {
            let b: [u8; 8] =
                b.as_slice().try_into().map_err(|_| corrupt("the watermark file is malformed"))?;
            Ok(Some(u64::from_be_bytes(b)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SledError::File { what: "read the watermark", source }.into()),
    }
}

/// Records `seq` in `path` atomically (write, fsync, rename).
pub(crate) fn write_watermark(path: &Path, seq: u64) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let io = |source| Error::from(SledError::File { what: "write the watermark", source });
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&seq.to_be_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The key of an event in `events`, `ids` (as value), `pending`, `dead`.
pub(crate) fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// The seq of a [`seq_key`].
pub(crate) fn seq_of(key: &[u8]) -> Result<u64> {
    let b: [u8; 8] = key.get(..8).and_then(|s| s.try_into().ok()).ok_or_else(|| corrupt("short seq key"))?;
    Ok(u64::from_be_bytes(b))
}

/// `(time, seq)`: the key of the `delivered` index.
pub(crate) fn time_seq_key(t: Timestamp, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&time_bytes(t));
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The seq of a [`time_seq_key`].
pub(crate) fn seq_of_time_seq(key: &[u8]) -> Result<u64> {
    seq_of(key.get(8..).ok_or_else(|| corrupt("short index key"))?)
}

/// The key of one inbox mark.
pub(crate) fn inbox_key(consumer: &ConsumerId, origin: &ActorId, id: EventId) -> Vec<u8> {
    let mut w = Writer::default();
    w.str(consumer.as_str());
    w.str(origin.as_str());
    w.0.extend_from_slice(&id.to_bytes());
    w.0
}

/// `(time, inbox key)`: the key of the `inbox_time` index.
pub(crate) fn inbox_time_key(t: Timestamp, inbox_key: &[u8]) -> Vec<u8> {
    let mut k = time_bytes(t).to_vec();
    k.extend_from_slice(inbox_key);
    k
}

/// The inbox key of an [`inbox_time_key`].
pub(crate) fn inbox_key_of_time_key(key: &[u8]) -> &[u8] {
    key.get(8..).unwrap_or_default()
}
