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
//! | `outbox.dead` | [`seq_key`] | ordering key: dead letters that park their key |
//! | `outbox.delivered` | [`time_seq_key`] (ack time) | empty: pruning by range |
//! | `outbox.inbox` | [`inbox_key`] | time marked |
//! | `outbox.inbox_time` | [`inbox_time_key`] | empty: pruning by range |
//! | `outbox.skipped` | [`seq_key`] | ordering key: skipped dead letters (they park nothing) |
//! | `outbox.discarded` | [`time_seq_key`] (discard time) | empty: pruning by range |
//! | `outbox.quarantine` | [`seq_key`] | a quarantined row's record ([`Quarantined`](crate::codec::Quarantined)) |
//!
//! Every event is in exactly one of `pending`, `dead`, `skipped`,
//! `delivered` and `discarded`, as its row's status says; a quarantined
//! row (one that does not decode, or is missing while an index names it)
//! has a record in `quarantine`, its bytes in `events` as they were, and
//! is in `dead` (its key known: it parks it), `skipped` (value: its key,
//! or empty when unknown) or `discarded`, as its index entry says (its
//! row cannot say). Integers are
//! big-endian so keys sort numerically; timestamps sort like the time
//! ([`time_bytes`]). Rows are [`codec`](crate::codec) values, pending
//! entries [`outbox_core::codec`] values.
//!
//! A database without `outbox.meta` gets the trees and this build's
//! [`LAYOUT_VERSION`]; an older layout is upgraded in place at open
//! ([`open_trees`]); a newer one is refused untouched, and one holding
//! other trees or data is somebody else's and refused as well.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use outbox_core::{ActorId, ConsumerId, Error, EventId, Result, Timestamp};

use crate::codec::{Writer, corrupt, time_bytes};
use crate::error::{SledError, map};

/// The on-disk layout version this build writes and understands.
///
/// Layout 2 adds the `outbox.skipped` and `outbox.discarded` trees and two
/// row status tags (a skipped dead letter, a discarded one) to layout 1;
/// layout 3 adds the `outbox.quarantine` tree (rows that do not decode,
/// moved to the dead letters).
pub const LAYOUT_VERSION: u32 = 3;

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
const TREES: [&str; TREE_COUNT] = [
    "outbox.meta",
    "outbox.state",
    "outbox.events",
    "outbox.ids",
    "outbox.pending",
    "outbox.dead",
    "outbox.delivered",
    "outbox.inbox",
    "outbox.inbox_time",
    "outbox.skipped",
    "outbox.discarded",
    "outbox.quarantine",
];
/// How many trees there are.
pub(crate) const TREE_COUNT: usize = 12;
pub(crate) const META: usize = 0;
pub(crate) const STATE: usize = 1;
pub(crate) const EVENTS: usize = 2;
pub(crate) const IDS: usize = 3;
pub(crate) const PENDING: usize = 4;
pub(crate) const DEAD: usize = 5;
pub(crate) const DELIVERED: usize = 6;
pub(crate) const INBOX: usize = 7;
pub(crate) const INBOX_TIME: usize = 8;
pub(crate) const SKIPPED: usize = 9;
pub(crate) const DISCARDED: usize = 10;
pub(crate) const QUARANTINE: usize = 11;

/// sled's own tree, always there.
const SLED_DEFAULT_TREE: &[u8] = b"__sled__default";

/// Opens the trees of `db`, indexed by [`META`] .. [`QUARANTINE`]. The
/// layout is read before anything is written: a newer layout is
/// `SchemaTooNew` and a foreign database `Corrupted`, both left untouched.
/// A new database gets the trees and [`LAYOUT_VERSION`], flushed; an
/// older one is upgraded ([`upgrade`]).
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
    match found {
        None => {
            all[META]
                .insert(LAYOUT_KEY, &LAYOUT_VERSION.to_be_bytes())
                .map_err(|e| map("write layout", e))?;
            db.flush().map_err(|e| map("flush layout", e))?;
        }
        Some(v) if v < LAYOUT_VERSION => upgrade(db, &all, v)?,
        Some(_) => {}
    }
    Ok(all)
}

/// Upgrades a database of layout `from` to [`LAYOUT_VERSION`], one step
/// at a time, each step's version recorded (and flushed) once its data is
/// in place: a step cut short by a crash runs again at the next open.
///
/// 1 -> 2: layout-1 rows are layout-2 rows as they are (their status tags
/// keep their meaning) and the `dead` index holds exactly the dead letters
/// that park their key, as it did; the new `skipped` and `discarded`
/// trees start empty (opened, so created, by [`open_trees`]). Only the
/// version changes.
///
/// 2 -> 3: the new `quarantine` tree starts empty (created by
/// [`open_trees`]): no row is quarantined yet. Only the version changes.
fn upgrade(db: &sled::Db, all: &[sled::Tree], from: u32) -> Result<()> {
    for to in from + 1..=LAYOUT_VERSION {
        match to {
            2 | 3 => {} // nothing to move
            _ => return Err(corrupt(&format!("no upgrade to layout {to}"))),
        }
        all[META].insert(LAYOUT_KEY, &to.to_be_bytes()).map_err(|e| map("write layout", e))?;
        db.flush().map_err(|e| map("flush layout", e))?;
        tracing::info!(target: "outbox", from = to - 1, to, "outbox: sled layout upgraded");
    }
    Ok(())
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
/// (`next_seq` is not below the watermark), then records `next_seq` (when
/// it is not what is recorded already).
pub(crate) fn check_watermark(dir: &Path, next_seq: u64) -> Result<()> {
    let path = watermark_path(dir);
    let known = read_watermark(&path)?;
    match known {
        Some(known) if next_seq < known => {
            Err(SledError::LostCommits { path: dir.to_owned(), recovered: next_seq, known }.into())
        }
        Some(known) if next_seq == known => Ok(()),
        _ => write_watermark(&path, next_seq),
    }
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

/// Records `seq` in `path` atomically and durably (write, fsync, rename,
/// fsync the directory).
pub(crate) fn write_watermark(path: &Path, seq: u64) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let io = |source| Error::from(SledError::File { what: "write the watermark", source });
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&seq.to_be_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    match path.parent() {
        Some(dir) => crate::durable::sync_dir(dir).map_err(io),
        None => Ok(()),
    }
}

/// The key of an event in `events`, `ids` (as value), `pending`, `dead`,
/// `skipped`.
pub(crate) fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// The seq of a [`seq_key`].
pub(crate) fn seq_of(key: &[u8]) -> Result<u64> {
    let b: [u8; 8] = key.get(..8).and_then(|s| s.try_into().ok()).ok_or_else(|| corrupt("short seq key"))?;
    Ok(u64::from_be_bytes(b))
}

/// `(time, seq)`: the key of the `delivered` and `discarded` indexes.
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

#[cfg(test)]
mod tests {
    //! A database written at layout 1 (its trees, keys and rows laid out
    //! by hand exactly as that build wrote them; its rows are the core
    //! codec's) opens, is upgraded and keeps everything.

    use std::path::Path;
    use std::time::Duration;

    use futures::executor::block_on;
    use outbox_core::codec as v1;
    use outbox_core::prelude::*;
    use outbox_core::{
        ActorId, Attempt, ClaimRequest, Clock, Commit, ConsumerId, Envelope, EventId, ManualClock, NewEvent,
        Version,
    };

    use super::*;
    use crate::codec::encode_state;
    use crate::options::{SledOptions, open_waiting};

    const T0: Timestamp = Timestamp::from_millis(1_000_000);

    /// Layout 1's trees, in its order.
    const V1_TREES: [&str; 9] = [
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

    fn actor(s: &str) -> ActorId {
        ActorId::new(s).unwrap()
    }

    fn envelope(key: &str, n: u64) -> Envelope {
        Envelope::committed(NewEvent::json(actor(key), "T", &n).unwrap(), T0)
    }

    fn ids(envs: &[Envelope]) -> Vec<EventId> {
        envs.iter().map(|e| e.id).collect()
    }

    /// The layout version of the (closed) database at `path`.
    fn layout_of(path: &Path) -> u32 {
        let db = open_waiting(&sled::Config::new().path(path), path, Duration::from_secs(10)).unwrap();
        let v = db.open_tree(TREES[META]).unwrap().get(LAYOUT_KEY).unwrap().unwrap();
        u32::from_be_bytes(v.as_ref().try_into().unwrap())
    }

    /// Writes a layout-1 database: seq 0 dead (key a), 1 pending (a), 2
    /// delivered (b), 3 pending (b) leased by a grant left held (a killed
    /// leader), 4 pruned; a state and an inbox mark.
    fn v1_database(path: &Path) -> [Envelope; 4] {
        old_database(path, 1)
    }

    /// [`v1_database`] at `layout` (1 or 2: layout-1 rows are layout-2
    /// rows; layout 2 adds two empty trees).
    fn old_database(path: &Path, layout: u32) -> [Envelope; 4] {
        let db = sled::open(path).unwrap();
        let t: Vec<sled::Tree> = V1_TREES.iter().map(|n| db.open_tree(n).unwrap()).collect();
        if layout >= 2 {
            db.open_tree("outbox.skipped").unwrap();
            db.open_tree("outbox.discarded").unwrap();
        }
        t[META].insert(LAYOUT_KEY, &layout.to_be_bytes()).unwrap();
        t[META].insert(SEQ_KEY, &5u64.to_be_bytes()).unwrap();
        t[META].insert(EPOCH_KEY, &1u64.to_be_bytes()).unwrap();
        t[META].insert(HELD_KEY, &1u64.to_be_bytes()).unwrap();
        t[STATE].insert("a", encode_state(Version(3), T0, b"ST")).unwrap();
        let mark = inbox_key(&ConsumerId::new("c").unwrap(), &actor("p"), EventId::new());
        t[INBOX].insert(&mark, &time_bytes(T0)).unwrap();
        t[INBOX_TIME].insert(inbox_time_key(T0, &mark), &[]).unwrap();

        let mut dead = envelope("a", 0);
        dead.attempts = 3;
        dead.last_error = Some("boom".into());
        let mut leased = envelope("b", 3);
        leased.attempts = 1;
        let lease = T0.saturating_add(Duration::from_secs(3600));
        let rows = [
            v1::Row { env: dead, status: v1::Status::Dead, claimed_by: Some(1), lease_until: None },
            v1::Row {
                env: envelope("a", 1),
                status: v1::Status::Pending,
                claimed_by: None,
                lease_until: None,
            },
            v1::Row {
                env: envelope("b", 2),
                status: v1::Status::Delivered(T0),
                claimed_by: Some(1),
                lease_until: None,
            },
            v1::Row {
                env: leased,
                status: v1::Status::Pending,
                claimed_by: Some(1),
                lease_until: Some(lease),
            },
        ];
        for (seq, row) in rows.iter().enumerate() {
            let k = seq_key(seq as u64);
            t[EVENTS].insert(k, v1::encode_row(row)).unwrap();
            t[IDS].insert(row.env.id.to_bytes(), &k).unwrap();
            match row.status {
                v1::Status::Pending => {
                    t[PENDING].insert(k, v1::encode_pending(&v1::PendingEntry::of(row))).unwrap();
                }
                v1::Status::Dead => {
                    t[DEAD].insert(k, row.env.key.as_str().as_bytes()).unwrap();
                }
                v1::Status::Delivered(at) => {
                    t[DELIVERED].insert(time_seq_key(at, seq as u64), &[]).unwrap();
                }
            }
        }
        db.flush().unwrap();
        rows.map(|r| r.env)
    }

    #[test]
    fn a_layout_1_database_is_upgraded_and_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.sled");
        let [dead, a1, _b0, b1] = v1_database(&path);
        assert_eq!(layout_of(&path), 1);

        let clock = ManualClock::new(T0.saturating_add(Duration::from_secs(10)));
        let open = || {
            SledOptions::new(&path).clock(clock.clone()).lock_timeout(Duration::from_secs(10)).open().unwrap()
        };
        let store = open();

        // Everything layout 1 held is there.
        let s = block_on(store.stats()).unwrap();
        assert_eq!((s.pending, s.in_flight, s.dead, s.delivered, s.discarded), (2, 0, 1, 1, 0));
        assert_eq!(s.oldest_pending_at, Some(T0));
        let listed = block_on(store.list_dead(10)).unwrap();
        assert_eq!(ids(&listed), vec![dead.id]);
        assert_eq!((listed[0].attempts, listed[0].last_error.as_deref()), (3, Some("boom")));
        assert_eq!(block_on(store.load_state(&actor("a"))).unwrap().unwrap().bytes, b"ST");

        // The new operations work on layout-1 rows.
        let ttl = Duration::from_secs(30);
        let g = block_on(store.acquire_leadership("new", ttl)).unwrap().unwrap();
        let park = |n| ClaimRequest::new(n, ttl).park_dead_keys(true);
        let got = block_on(store.claim(&g, park(10))).unwrap();
        assert_eq!(ids(&got), vec![b1.id], "a is parked behind its dead letter; b's orphaned lease is void");
        assert_eq!(got[0].attempts, 2);
        block_on(store.retry_later(&g, b1.id, clock.now().saturating_add(ttl), "down", Attempt::Uncounted))
            .unwrap();
        assert_eq!(block_on(store.skip_dead(&[dead.id])).unwrap(), 1);
        assert_eq!(ids(&block_on(store.claim(&g, park(10))).unwrap()), vec![a1.id], "a flows past it");
        assert_eq!(ids(&block_on(store.list_dead(10)).unwrap()), vec![dead.id], "still dead");
        block_on(store.ack(&g, &[a1.id])).unwrap();
        assert_eq!(block_on(store.retry_now(&g)).unwrap(), 1);
        let again = block_on(store.claim(&g, park(10))).unwrap();
        assert_eq!(
            (ids(&again), again[0].attempts),
            (vec![b1.id], 2),
            "the uncounted attempt was taken back"
        );
        block_on(store.ack(&g, &[b1.id])).unwrap();

        // New events number on past the pruned seq 4.
        let a2 = NewEvent::json(actor("a"), "T", &2).unwrap();
        block_on(store.put_state_and_events(Commit::events_only().event(a2.clone()))).unwrap();
        clock.advance(Duration::from_secs(1));
        assert_eq!(block_on(store.discard_dead(&[dead.id])).unwrap(), 1);
        let s = block_on(store.stats()).unwrap();
        assert_eq!((s.pending, s.dead, s.delivered, s.discarded), (1, 0, 3, 1));
        drop(store);

        assert_eq!(layout_of(&path), LAYOUT_VERSION);
        let c = crate::dump::dump(&path).unwrap();
        let seqs: Vec<EventId> = c.events.iter().map(|(e, _)| e.id).collect();
        assert_eq!(seqs.len(), 5);
        assert_eq!(seqs[4], a2.id, "after every layout-1 event");

        // Reopened at the current layout: nothing is upgraded twice.
        let store = open();
        let later = clock.now().saturating_add(Duration::from_millis(1));
        assert_eq!(block_on(store.prune_delivered(later, 100)).unwrap(), 4);
        let s = block_on(store.stats()).unwrap();
        assert_eq!((s.pending, s.dead, s.delivered, s.discarded), (1, 0, 0, 0));
        drop(store);
        assert_eq!(crate::dump::dump(&path).unwrap().events.len(), 1);
    }

    /// A layout-2 database (the previous layout) opens upgraded to layout 3
    /// with its new `quarantine` tree, and a row of it that does not
    /// decode is quarantined by the first read that meets it.
    #[test]
    fn a_layout_2_database_is_upgraded_and_quarantines_a_poison_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v2.sled");
        let [dead, a1, _b0, b1] = old_database(&path, 2);
        {
            let db = sled::open(&path).unwrap();
            db.open_tree("outbox.events").unwrap().insert(seq_key(1), &b"\xffgarbage"[..]).unwrap();
            db.flush().unwrap();
        }
        assert_eq!(layout_of(&path), 2);
        let clock = ManualClock::new(T0.saturating_add(Duration::from_secs(10)));
        let open = || {
            SledOptions::new(&path).clock(clock.clone()).lock_timeout(Duration::from_secs(10)).open().unwrap()
        };
        let store = open();
        assert_eq!(ids(&block_on(store.list_pending(10)).unwrap()), vec![b1.id], "a1 is quarantined");
        let listed = block_on(store.list_dead(10)).unwrap();
        assert_eq!(ids(&listed), vec![dead.id, a1.id]);
        assert!(listed[1].last_error.as_deref().unwrap().starts_with("corrupted:"));
        assert_eq!(listed[1].payload.as_bytes(), b"\xffgarbage");
        let ttl = Duration::from_secs(30);
        let g = block_on(store.acquire_leadership("new", ttl)).unwrap().unwrap();
        let got = block_on(store.claim(&g, ClaimRequest::new(10, ttl).park_dead_keys(true))).unwrap();
        assert_eq!(ids(&got), vec![b1.id]);
        let s = block_on(store.stats()).unwrap();
        assert_eq!((s.pending, s.dead, s.delivered, s.parked_keys), (1, 2, 1, 1));
        drop(store);
        assert_eq!(layout_of(&path), LAYOUT_VERSION);
        assert_eq!(crate::dump::dump(&path).unwrap().events.len(), 4);
    }
}
