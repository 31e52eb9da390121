//! Poison rows: an event row that does not decode (or is missing while an
//! index names it) must not stop every claim, listing and count for good.
//!
//! The operations that read rows through an index run under
//! [`Worker::healing`]: when they meet a seq they cannot read, they stop
//! with [`Fault::Bad`], the seq is fixed ([`Worker::fix`]) and the
//! operation runs again. Fixing is one of two things:
//!
//! - the row decodes (an index entry of it was bad): its seq-keyed index
//!   entries are rebuilt from the row, and it flows on;
//! - the row does not decode, or is missing: it is **quarantined**. Its
//!   bytes stay in `events` as they were; a record in `quarantine` says
//!   why, the id it is listed under (its own if it can be read, else
//!   [`derived_id`]) and its ordering key if known (from its pending or
//!   dead index entry, else from what reads of the row). It leaves the
//!   pending index for the dead letters: `dead` when its key is known (it
//!   parks the key like any dead letter), `skipped` when not (it parks
//!   nothing). [`InspectStore::list_dead`](outbox_core::InspectStore::list_dead)
//!   lists it ([`quarantined_envelope`]) with a `last_error` starting
//!   `corrupted: `. It can be skipped and discarded (then pruned with the
//!   discarded events), not requeued: there is no event to deliver.

use std::collections::HashSet;

use outbox_core::{EventId, OrderingKey, Result};
use sled::IVec;

use crate::codec::{
    CORRUPTED, PendingEntry, Quarantined, Row, corrupt, decode_pending, decode_quarantined, decode_row,
    derived_id, derived_seq, encode_quarantined, salvage,
};
use crate::error::map;
use crate::schema::{DEAD, EVENTS, IDS, PENDING, QUARANTINE, SKIPPED, seq_key, seq_of};
use crate::worker::{Worker, index_key, index_value};

/// Why a read through an index could not go on.
#[derive(Debug)]
pub(crate) enum Fault {
    /// The event at this seq (its row, or an index entry of it) does not
    /// read: fix it and run again.
    Bad(u64),
    /// Any other failure.
    Fail(outbox_core::Error),
}

impl From<outbox_core::Error> for Fault {
    fn from(e: outbox_core::Error) -> Self {
        Fault::Fail(e)
    }
}

/// The result of a read that may meet a bad seq.
pub(crate) type Healing<T> = std::result::Result<T, Fault>;

/// `Bad(seq)` for any failure of `r` (a decode).
pub(crate) fn at<T>(seq: u64, r: Result<T>) -> Healing<T> {
    r.map_err(|_| Fault::Bad(seq))
}

/// What the `events` tree holds at a seq an index named.
pub(crate) enum Found {
    /// A row that decodes.
    Row(Row),
    /// A quarantined row: its record and its bytes (none if missing).
    Quarantined(Quarantined, Option<IVec>),
}

impl Worker {
    /// Runs `f` until it meets no bad seq: each one it meets is fixed
    /// ([`Worker::fix`]) and `f` runs again. A seq still bad after its
    /// fix is `Corrupted`.
    pub(crate) fn healing<T>(&self, mut f: impl FnMut(&Self) -> Healing<T>) -> Result<T> {
        let mut fixed = HashSet::new();
        loop {
            match f(self) {
                Ok(t) => return Ok(t),
                Err(Fault::Fail(e)) => return Err(e),
                Err(Fault::Bad(seq)) => {
                    if !fixed.insert(seq) {
                        return Err(corrupt(&format!(
                            "the event at seq {seq} is still unreadable once fixed"
                        )));
                    }
                    self.fix(seq)?;
                }
            }
        }
    }

    /// The pending entry `v` of `seq`; `Bad` if it does not decode.
    pub(crate) fn pending_entry(seq: u64, v: &[u8]) -> Healing<PendingEntry> {
        at(seq, decode_pending(v))
    }

    /// The quarantine record of `seq`, if it is quarantined.
    pub(crate) fn quarantined(&self, seq: u64) -> Result<Option<Quarantined>> {
        match self.all[QUARANTINE].get(seq_key(seq)).map_err(|e| map("read quarantine", e))? {
            Some(b) => Ok(Some(decode_quarantined(&b)?)),
            None => Ok(None),
        }
    }

    /// The row at `seq`, which an index names: `Bad` if it is missing or
    /// does not decode (and is not quarantined).
    pub(crate) fn found(&self, seq: u64) -> Healing<Found> {
        let raw = self.all[EVENTS].get(seq_key(seq)).map_err(|e| map("read event", e))?;
        if let Some(q) = self.quarantined(seq)? {
            return Ok(Found::Quarantined(q, raw));
        }
        match raw {
            Some(b) => Ok(Found::Row(at(seq, decode_row(&b))?)),
            None => Err(Fault::Bad(seq)),
        }
    }

    /// The row at `seq`, which an index that holds unquarantined rows only
    /// (`pending`) names: `Bad` if it is missing, does not decode or is
    /// quarantined (its pending entry is then stale).
    pub(crate) fn pending_row(&self, seq: u64) -> Healing<Row> {
        match self.found(seq)? {
            Found::Row(row) => Ok(row),
            Found::Quarantined(..) => Err(Fault::Bad(seq)),
        }
    }

    /// The row stored at `seq` (reached by id, not through an index):
    /// `None` when it is missing, quarantined, or does not decode but is
    /// in no index of a live event (a delivered or discarded row nothing
    /// waits on); `Bad` when it does not decode and is pending or dead.
    pub(crate) fn row_by_id(&self, seq: u64) -> Healing<Option<Row>> {
        if self.quarantined(seq)?.is_some() {
            return Ok(None);
        }
        let Some(b) = self.all[EVENTS].get(seq_key(seq)).map_err(|e| map("read event", e))? else {
            return Ok(None);
        };
        match decode_row(&b) {
            Ok(row) => Ok(Some(row)),
            Err(_) if self.live(seq)? => Err(Fault::Bad(seq)),
            Err(_) => Ok(None),
        }
    }

    /// Whether `seq` is in `pending`, `dead` or `skipped`.
    fn live(&self, seq: u64) -> Result<bool> {
        let k = seq_key(seq);
        for t in [PENDING, DEAD, SKIPPED] {
            if self.all[t].contains_key(k).map_err(|e| map("read index", e))? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The seq of the event `id`: through the id index, or the seq of a
    /// [`derived_id`] of a quarantined row.
    pub(crate) fn seq_of_id(&self, id: EventId) -> Result<Option<u64>> {
        if let Some(s) = self.all[IDS].get(id.to_bytes()).map_err(|e| map("read id", e))? {
            return Ok(Some(seq_of(&s)?));
        }
        match derived_seq(id) {
            Some(seq) if self.quarantined(seq)?.is_some_and(|q| q.id == id) => Ok(Some(seq)),
            _ => Ok(None),
        }
    }

    /// Makes `seq` readable again (see the [module](self)): rebuilds its
    /// index entries from its row if the row decodes, quarantines the row
    /// otherwise; a quarantined seq only loses a stale pending entry.
    pub(crate) fn fix(&self, seq: u64) -> Result<()> {
        let k = seq_key(seq);
        if self.quarantined(seq)?.is_some() {
            return self.tx("fix quarantined", |v| {
                v[PENDING].remove(&k)?;
                Ok(())
            });
        }
        let raw = self.all[EVENTS].get(k).map_err(|e| map("read event", e))?;
        match raw.as_deref().map(decode_row) {
            Some(Ok(row)) => self.reindex(seq, &row),
            Some(Err(e)) => {
                let why = match e {
                    outbox_core::Error::Corrupted { message, .. } => message,
                    other => other.to_string(),
                };
                self.quarantine(seq, raw.as_deref(), &format!("does not decode ({why})"))
            }
            None => self.quarantine(seq, None, "is missing, yet an index names it"),
        }
    }

    /// Rebuilds the seq-keyed index entries of the good `row` at `seq`.
    fn reindex(&self, seq: u64, row: &Row) -> Result<()> {
        let k = seq_key(seq);
        let (tree, key) = index_key(seq, row.status);
        let value = index_value(row);
        tracing::warn!(target: "outbox", seq, id = %row.env.id, "outbox: a sled index entry did not read; rebuilt from its event row");
        self.tx("reindex", |v| {
            for t in [PENDING, DEAD, SKIPPED] {
                v[t].remove(&k)?;
            }
            v[tree].insert(key.as_slice(), value.as_slice())?;
            Ok(())
        })
    }

    /// Quarantines the row at `seq`: `raw` is its bytes (none if it is
    /// missing), `what` what is wrong with it (it follows "the event row at
    /// seq N" in its `last_error`).
    fn quarantine(&self, seq: u64, raw: Option<&[u8]>, what: &str) -> Result<()> {
        let k = seq_key(seq);
        let s = raw.map(salvage).unwrap_or_default();
        let get = |t: usize| self.all[t].get(k).map_err(|e| map("read index", e));
        // The key from the index entries written with the row, else from
        // what reads of the row.
        let pending_key = get(PENDING)?.and_then(|v| decode_pending(&v).ok()).map(|p| p.key);
        let key_in = |v: Option<IVec>| {
            v.and_then(|v| String::from_utf8(v.to_vec()).ok()).and_then(|s| OrderingKey::new(s).ok())
        };
        let (dead, skipped) = (get(DEAD)?, get(SKIPPED)?);
        let was_skipped = skipped.is_some();
        let key = pending_key.or_else(|| key_in(dead)).or_else(|| key_in(skipped)).or(s.key);
        // The id: the one read from the row if the id index agrees, else
        // the one the id index gives this seq, else one derived from it.
        let id = match s.id {
            Some(id)
                if self.all[IDS].get(id.to_bytes()).map_err(|e| map("read id", e))?.as_deref()
                    == Some(&k[..]) =>
            {
                Some(id)
            }
            _ => self.id_at(seq)?,
        };
        let mut last_error = format!("{CORRUPTED}the event row at seq {seq} {what}");
        let id = id.unwrap_or_else(|| {
            let id = derived_id(seq);
            last_error
                .push_str(&format!("; its id is unreadable: listed as {id}, an id derived from seq {seq}"));
            id
        });
        if key.is_none() {
            last_error.push_str("; its ordering key is unreadable: it parks no key");
        }
        if let Some(e) = &s.last_error {
            last_error.push_str(&format!("; its last error: {e}"));
        }
        let parks = key.is_some() && !was_skipped;
        let index_value = key.as_ref().map(|k| k.as_str().as_bytes().to_vec()).unwrap_or_default();
        let record =
            encode_quarantined(&Quarantined { at: self.now(), id, key, last_error: last_error.clone() });
        tracing::warn!(target: "outbox", seq, %id, reason = %last_error, "outbox: sled event row quarantined to the dead letters");
        self.tx("quarantine", |v| {
            for t in [PENDING, DEAD, SKIPPED] {
                v[t].remove(&k)?;
            }
            v[if parks { DEAD } else { SKIPPED }].insert(&k, index_value.as_slice())?;
            v[QUARANTINE].insert(&k, record.as_slice())?;
            Ok(())
        })
    }

    /// The id the id index maps to `seq`, if any (a scan of the index: a
    /// quarantined row's id is looked up once).
    fn id_at(&self, seq: u64) -> Result<Option<EventId>> {
        let k = seq_key(seq);
        for item in self.all[IDS].iter() {
            let (id, s) = item.map_err(|e| map("scan ids", e))?;
            if s.as_ref() == k
                && let Ok(b) = <[u8; 16]>::try_from(id.as_ref())
            {
                return Ok(Some(EventId::from_bytes(b)));
            }
        }
        Ok(None)
    }
}
