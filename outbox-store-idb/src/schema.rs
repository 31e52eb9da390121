//! The database layout: its object stores, the keys of `meta`, the schema
//! version (the IndexedDB database version) and its upgrades, and the
//! refusal of a database that is newer or not an outbox.
//!
//! | object store | key | value |
//! |---|---|---|
//! | `meta` | `"next_seq"`, `"last_epoch"`, `"leader"` | the next event seq, the last leadership epoch, the current grant |
//! | `state` | actor id | the actor's snapshot (version, time, bytes) |
//! | `events` | seq | the event row (envelope, status, claim) |
//! | `ids` | event id (16 bytes) | seq: the duplicate check and settle's lookup |
//! | `pending` | seq | the pending entry the claim scans (key, due time, lease) |
//! | `dead` | seq | the ordering key of a dead-lettered event |
//! | `delivered` | `[delivered at, seq]` | seq: pruning by age |
//! | `inbox` | `[consumer, origin, event id]` | the time it was marked |
//! | `inbox_at` | `[time, consumer, origin, event id]` | pruning inbox marks by age |

use indexed_db_futures::database::Database;
use indexed_db_futures::error::OpenDbError;
use indexed_db_futures::prelude::*;
use outbox_core::{Error, Result};

use crate::error::{is, map_open};

/// The schema version this build writes: the IndexedDB database version.
/// A database at a higher version is refused with
/// [`Error::SchemaTooNew`] and left untouched.
pub const SCHEMA_VERSION: u32 = 1;

pub(crate) const META: &str = "meta";
pub(crate) const STATE: &str = "state";
pub(crate) const EVENTS: &str = "events";
pub(crate) const IDS: &str = "ids";
pub(crate) const PENDING: &str = "pending";
pub(crate) const DEAD: &str = "dead";
pub(crate) const DELIVERED: &str = "delivered";
pub(crate) const INBOX: &str = "inbox";
pub(crate) const INBOX_AT: &str = "inbox_at";
/// Every object store of the schema.
const ALL: [&str; 9] = [META, STATE, EVENTS, IDS, PENDING, DEAD, DELIVERED, INBOX, INBOX_AT];

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
    let opened = Database::open(name)
        .with_version(SCHEMA_VERSION)
        .with_on_upgrade_needed(|ev, db| {
            // Version 0 -> 1: the first schema. Later versions add steps
            // here, each from the version before.
            if ev.old_version() < 1.0 {
                for name in ALL {
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
        Err(e) => return Err(map_open(e)),
    };
    let names: Vec<String> = db.object_store_names().collect();
    if let Some(missing) = ALL.iter().find(|n| !names.iter().any(|x| x == **n)) {
        let message = format!(
            "indexeddb database \"{name}\" (version {}) has no \"{missing}\" object store: not an outbox database",
            db.version()
        );
        return Err(Error::Corrupted { message, source: None });
    }
    Ok(db)
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
