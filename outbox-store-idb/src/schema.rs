//! The database layout: its object stores, the keys of `meta`, the schema
//! version (the IndexedDB database version) and its upgrades, and the
//! refusal of a database that is newer or not an outbox.
//!
//! | object store | key | value |
//! |---|---|---|
//! | `meta` | `"next_seq"`, `"last_epoch"`, `"leader"` | the next event seq, the last leadership epoch, the current grant |
//! | `state` | actor id | the actor's snapshot (version, time, bytes) |
//! | `events` | seq | the event row (envelope, status, claim; see below) |
//! | `ids` | event id (16 bytes) | seq: the duplicate check and settle's lookup |
//! | `pending` | seq | the pending entry the claim scans (key, due time, lease) |
//! | `dead` | seq | a dead-lettered event's ordering key; `[key, true]` once skipped |
//! | `delivered` | `[delivered at, seq]` | seq: pruning by age |
//! | `discarded` | `[discarded at, seq]` | seq: pruning discarded dead letters by age |
//! | `inbox` | `[consumer, origin, event id]` | the time it was marked |
//! | `inbox_at` | `[time, consumer, origin, event id]` | pruning inbox marks by age |
//! | `quarantine` | seq | a quarantined event's record ([`Quarantined`](crate::codec::Quarantined)) |
//!
//! An event row is `outbox_core::codec`'s row bytes, whose first byte is
//! the status: 0 pending, 1 dead, 2 delivered (then the ack time), and
//! this store's own 3 discarded (then the discard time) and 4 dead and
//! skipped ([`crate::codec::Event`]).
//!
//! Versions:
//!
//! 1. the object stores above but `discarded`; statuses 0 to 2, the dead
//!    index holds keys only.
//! 2. adds the `discarded` object store, the statuses 3 and 4 and the
//!    skipped form of the dead index. Every version-1 record reads
//!    unchanged, so the upgrade only creates the object store.
//! 3. adds the `quarantine` object store: an event record that does not
//!    decode (or is missing while an index names it) is moved to the dead
//!    letters, its record in `events` left as it was, with a record here
//!    saying why ([`crate::quarantine`]). Every version-2 record reads
//!    unchanged, so the upgrade only creates the object store.

use std::cell::Cell;
use std::rc::Rc;

use indexed_db_futures::database::Database;
use indexed_db_futures::error::OpenDbError;
use indexed_db_futures::prelude::*;
use outbox_core::{Error, Result};
use wasm_bindgen::JsValue;

use crate::error::{is, map_open};

/// The schema version this build writes: the IndexedDB database version.
/// A database at a higher version is refused with
/// [`Error::SchemaTooNew`] and left untouched.
pub const SCHEMA_VERSION: u32 = 4;

pub(crate) const META: &str = "meta";
pub(crate) const STATE: &str = "state";
pub(crate) const EVENTS: &str = "events";
pub(crate) const IDS: &str = "ids";
pub(crate) const PENDING: &str = "pending";
pub(crate) const DEAD: &str = "dead";
pub(crate) const DELIVERED: &str = "delivered";
pub(crate) const DISCARDED: &str = "discarded";
pub(crate) const INBOX: &str = "inbox";
pub(crate) const INBOX_AT: &str = "inbox_at";
pub(crate) const QUARANTINE: &str = "quarantine";
/// Events delivered by one batch ack, `[time, first seq, count]` -> their seqs
/// (see `delivery::ack_batch`): delivered like the `delivered` index's
/// events, their rows left as committed.
pub(crate) const DELIVERED_BATCHES: &str = "delivered_batches";
/// The object stores version 1 created.
const V1: [&str; 9] = [META, STATE, EVENTS, IDS, PENDING, DEAD, DELIVERED, INBOX, INBOX_AT];
/// The object stores version 2 added.
const V2: [&str; 1] = [DISCARDED];
/// The object stores version 3 added.
const V3: [&str; 1] = [QUARANTINE];
/// The object stores version 4 added.
const V4: [&str; 1] = [DELIVERED_BATCHES];

/// `meta` key: the seq the next event gets.
pub(crate) const NEXT_SEQ: &str = "next_seq";
/// `meta` key: the current leadership grant.
pub(crate) const LEADER: &str = "leader";
/// `meta` key: the last epoch granted.
pub(crate) const LAST_EPOCH: &str = "last_epoch";

/// Opens the database `name` at [`SCHEMA_VERSION`], creating or upgrading
/// it, and checks that it is an outbox.
///
/// # Errors
///
/// [`Error::SchemaTooNew`] when the database was written by a newer
/// build (it is left untouched); [`Error::Corrupted`] when a database of
/// that name lacks the outbox's object stores; what opening maps to
/// otherwise (see [`crate::error::from_dom`]).
pub(crate) async fn open(name: &str) -> Result<Database> {
    // Set when an upgrade met a database that is not an outbox: the
    // upgrade is aborted, so the database is left as it was.
    let foreign = Rc::new(Cell::new(false));
    let seen = foreign.clone();
    let opened = Database::open(name)
        .with_version(SCHEMA_VERSION)
        .with_on_upgrade_needed(move |ev, db| {
            let old = ev.old_version();
            if old >= 1.0 && missing(&db, &V1).is_some() {
                seen.set(true);
                return Err(JsValue::from_str("not an outbox database: upgrade aborted").into());
            }
            // One step per version, each from the version before.
            // Version 0 -> 1: the first schema.
            if old < 1.0 {
                for name in V1 {
                    db.create_object_store(name).build()?;
                }
            }
            // Version 1 -> 2: discarded dead letters, by discard time.
            if old < 2.0 {
                for name in V2 {
                    db.create_object_store(name).build()?;
                }
            }
            // Version 2 -> 3: quarantined events.
            if old < 3.0 {
                for name in V3 {
                    db.create_object_store(name).build()?;
                }
            }
            // Version 3 -> 4: batches delivered by one ack.
            if old < 4.0 {
                for name in V4 {
                    db.create_object_store(name).build()?;
                }
            }
            Ok(())
        })
        .await;
    let db = match opened {
        Ok(db) => db,
        Err(OpenDbError::Base(e)) if is(&e, "VersionError") => {
            return Err(Error::SchemaTooNew { found: stored_version(name).await, supported: SCHEMA_VERSION });
        }
        Err(_) if foreign.get() => {
            let found = stored_version(name).await;
            return Err(not_an_outbox(name, found, missing_in(name).await.unwrap_or(V1[0])));
        }
        Err(e) => return Err(map_open(e)),
    };
    if let Some(gone) = missing(&db, &V1)
        .or_else(|| missing(&db, &V2))
        .or_else(|| missing(&db, &V3))
        .or_else(|| missing(&db, &V4))
    {
        let e = not_an_outbox(name, db.version() as u32, gone);
        db.close();
        return Err(e);
    }
    Ok(db)
}

/// The first of `stores` that `db` lacks.
fn missing(db: &Database, stores: &[&'static str]) -> Option<&'static str> {
    let names: Vec<String> = db.object_store_names().collect();
    stores.iter().copied().find(|n| !names.iter().any(|x| x == n))
}

/// The first version-1 object store the database `name` lacks, as
/// stored (opened without asking for a version, which never upgrades).
async fn missing_in(name: &str) -> Option<&'static str> {
    let db = Database::open(name).await.ok()?;
    let gone = missing(&db, &V1);
    db.close();
    gone
}

fn not_an_outbox(name: &str, version: u32, missing: &str) -> Error {
    let message = format!(
        "indexeddb database \"{name}\" (version {version}) has no \"{missing}\" object store: not an outbox database"
    );
    Error::Corrupted { message, source: None }
}

/// The version of the database `name` as stored (opened without asking
/// for a version, which never upgrades).
async fn stored_version(name: &str) -> u32 {
    match Database::open(name).await {
        Ok(db) => {
            let v = db.version() as u32;
            db.close();
            v
        }
        Err(_) => 0,
    }
}
