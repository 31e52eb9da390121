//! Poison records: an event record that does not decode (bytes that are
//! not a row, a value that is not even bytes: what a writer in another
//! language puts there by mistake), or that is missing while an index
//! names it, must not stop every claim, listing and count for good.
//!
//! The operations that read events through an index run under
//! [`healing`]: when one meets a seq it cannot read, it stops with
//! [`Fault::Bad`] (its transaction is dropped, so aborted), the seq is
//! fixed ([`fix`]) in a transaction of its own, and the operation runs
//! again. Fixing is one of two things:
//!
//! - the record decodes (an index entry of it was bad): its index entries
//!   are rebuilt from it, and it flows on;
//! - it does not decode, or is missing: it is **quarantined**. Its record
//!   stays in `events` as it was; a record in `quarantine` says why, the
//!   id it is listed under (its own if it can be read, else
//!   [`derived_id`]) and its ordering key if known (from its pending or
//!   dead index entry, else from what reads of the record). It leaves the
//!   pending index for the dead index: under its key when known (it parks
//!   the key like any dead letter), in the skipped form under
//!   [`CORRUPTED_ID`] when not (it parks nothing). `list_dead` lists it
//!   ([`quarantined_envelope`](crate::codec::quarantined_envelope)) with
//!   a `last_error` starting `corrupted: `. It can be skipped and
//!   discarded (then pruned with the discarded events), not requeued:
//!   there is no event to deliver.

use std::collections::{HashMap, HashSet};
use std::future::Future;

use indexed_db_futures::object_store::ObjectStore;
use outbox_core::codec::{corrupt, decode_pending, encode_pending};
use outbox_core::rules::ClaimEntry;
use outbox_core::{Error, EventId, OrderingKey, Result, Timestamp};
use wasm_bindgen::{JsCast, JsValue};

use crate::codec::{
    CORRUPTED, CORRUPTED_ID, Event, Quarantined, Status, bytes_js, dead_js, decode_quarantined, derived_id,
    derived_seq, encode_quarantined, id_js, js_bytes, js_dead, js_seqs, js_u64, raw_bytes, salvage, seq_js,
    time_seq_js,
};
use crate::schema::{DEAD, DELIVERED, DELIVERED_BATCHES, DISCARDED, EVENTS, IDS, PENDING, QUARANTINE};
use crate::tx::{Db, delete, finish, get, get_all, get_all_keys, get_many, put, seq_keys, seq_range, store};

/// Why a read through an index could not go on.
#[derive(Debug)]
pub(crate) enum Fault {
    /// The event at this seq (its record, or an index entry of it) does
    /// not read: fix it and run again.
    Bad(u64),
    /// Any other failure.
    Fail(Error),
}

impl From<Error> for Fault {
    fn from(e: Error) -> Self {
        Fault::Fail(e)
    }
}

/// The result of a read that may meet a bad seq.
pub(crate) type Healing<T> = std::result::Result<T, Fault>;

/// `Bad(seq)` for any failure of `r` (a decode).
pub(crate) fn at<T>(seq: u64, r: Result<T>) -> Healing<T> {
    r.map_err(|_| Fault::Bad(seq))
}

/// Runs `f` until it meets no bad seq: each one it meets is fixed
/// ([`fix`], at `now`) and `f` runs again. A seq still bad after its fix
/// is `Corrupted`.
pub(crate) async fn healing<T, F, Fut>(db: &Db, now: Timestamp, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Healing<T>>,
{
    let mut fixed = HashSet::new();
    loop {
        match f().await {
            Ok(t) => return Ok(t),
            Err(Fault::Fail(e)) => return Err(e),
            Err(Fault::Bad(seq)) => {
                if !fixed.insert(seq) {
                    return Err(corrupt(&format!("the event at seq {seq} is still unreadable once fixed")));
                }
                fix(db, now, seq).await?;
            }
        }
    }
}

/// What `events` holds at a seq an index named.
pub(crate) enum Found {
    /// A record that decodes.
    Row(Event),
    /// A quarantined event: its quarantine record and its stored value
    /// (none if missing).
    Quarantined(Quarantined, Option<JsValue>),
}

/// The quarantine record of `seq` in `q`, if it is quarantined.
pub(crate) async fn quarantined(q: &ObjectStore<'_>, seq: u64) -> Result<Option<Quarantined>> {
    match get(q, seq_js(seq), "read quarantine").await? {
        Some(v) => Ok(Some(decode_quarantined(&js_bytes(&v, "quarantine record")?)?)),
        None => Ok(None),
    }
}

/// The event record `v` of `seq`, decoded; `Bad` if it does not decode.
fn decode_at(seq: u64, v: &JsValue) -> Healing<Event> {
    at(seq, js_bytes(v, "event row").and_then(Event::decode))
}

/// The event at `seq` (in `ev`; `q`: the quarantine), which an index
/// names: `Bad` if it is missing or does not decode (and is not
/// quarantined).
pub(crate) async fn found(ev: &ObjectStore<'_>, q: &ObjectStore<'_>, seq: u64) -> Healing<Found> {
    let raw = get(ev, seq_js(seq), "read event").await?;
    if let Some(rec) = quarantined(q, seq).await? {
        return Ok(Found::Quarantined(rec, raw));
    }
    match raw {
        Some(v) => Ok(Found::Row(decode_at(seq, &v)?)),
        None => Err(Fault::Bad(seq)),
    }
}

/// The event at `seq`, which the pending index names: `Bad` if it is
/// missing, does not decode or is quarantined (its pending entry is then
/// stale).
pub(crate) async fn pending_row(ev: &ObjectStore<'_>, q: &ObjectStore<'_>, seq: u64) -> Healing<Event> {
    match found(ev, q, seq).await? {
        Found::Row(row) => Ok(row),
        Found::Quarantined(..) => Err(Fault::Bad(seq)),
    }
}

/// The events at `seqs`, which the pending index names, read with
/// pipelined requests ([`get_many`]): `Bad` for the first that is
/// missing, does not decode or is quarantined, as [`pending_row`].
pub(crate) async fn pending_rows(
    ev: &ObjectStore<'_>,
    q: &ObjectStore<'_>,
    seqs: &[u64],
) -> Healing<Vec<Event>> {
    if let (Some(&lo), Some(&hi)) = (seqs.first(), seqs.last())
        && seqs.len() >= 4
        && lo <= hi
        && hi - lo < 2 * seqs.len() as u64
    {
        // Dense (a backlog claimed in seq order): read the whole key
        // range at once, three requests for the batch.
        let mut rows: HashMap<u64, JsValue> =
            seq_range(ev, lo, hi, "read events").await?.into_iter().collect();
        let held: HashSet<u64> = seq_keys(q, lo, hi, "read quarantine").await?.into_iter().collect();
        let mut out = Vec::with_capacity(seqs.len());
        for seq in seqs {
            match rows.remove(seq) {
                Some(v) if !held.contains(seq) => out.push(decode_at(*seq, &v)?),
                _ => return Err(Fault::Bad(*seq)),
            }
        }
        return Ok(out);
    }
    let rows = get_many(ev, seqs.iter().map(|s| seq_js(*s)), "read event").await?;
    let held = get_many(q, seqs.iter().map(|s| seq_js(*s)), "read quarantine").await?;
    let mut out = Vec::with_capacity(rows.len());
    for ((seq, raw), held) in seqs.iter().zip(rows).zip(held) {
        match (raw, held) {
            (Some(v), None) => out.push(decode_at(*seq, &v)?),
            _ => return Err(Fault::Bad(*seq)),
        }
    }
    Ok(out)
}

/// The events at `seqs` reached by id, as [`row_by_id`] (each `None` when
/// missing, quarantined, or unreadable and in no live index), read with
/// pipelined requests; an unreadable one is looked at again by
/// [`row_by_id`].
pub(crate) async fn rows_by_id(
    ev: &ObjectStore<'_>,
    q: &ObjectStore<'_>,
    live: [&ObjectStore<'_>; 2],
    seqs: &[u64],
) -> Healing<Vec<Option<Event>>> {
    let held = get_many(q, seqs.iter().map(|s| seq_js(*s)), "read quarantine").await?;
    let rows = get_many(ev, seqs.iter().map(|s| seq_js(*s)), "read event").await?;
    let mut out = Vec::with_capacity(rows.len());
    for ((seq, raw), held) in seqs.iter().zip(rows).zip(held) {
        out.push(match (raw, held) {
            (_, Some(_)) | (None, None) => None,
            (Some(v), None) => match decode_at(*seq, &v) {
                Ok(row) => Some(row),
                Err(_) => row_by_id(ev, q, live, *seq).await?,
            },
        });
    }
    Ok(out)
}

/// The event at `seq`, reached by id (not through an index): `None` when
/// it is missing, quarantined, or does not decode but is in neither the
/// pending nor the dead index (a delivered or discarded one nothing waits
/// on); `Bad` when it does not decode and is pending or dead.
pub(crate) async fn row_by_id(
    ev: &ObjectStore<'_>,
    q: &ObjectStore<'_>,
    live: [&ObjectStore<'_>; 2],
    seq: u64,
) -> Healing<Option<Event>> {
    if quarantined(q, seq).await?.is_some() {
        return Ok(None);
    }
    let Some(v) = get(ev, seq_js(seq), "read event").await? else { return Ok(None) };
    match decode_at(seq, &v) {
        Ok(row) => Ok(Some(row)),
        Err(bad) => {
            for index in live {
                if get(index, seq_js(seq), "read index").await?.is_some() {
                    return Err(bad);
                }
            }
            Ok(None)
        }
    }
}

/// The seq of the event `id` (`ids`: the id index; `q`: the quarantine):
/// through the id index, or the seq of a [`derived_id`] of a quarantined
/// event.
pub(crate) async fn seq_of_id(
    ids: &ObjectStore<'_>,
    q: &ObjectStore<'_>,
    id: EventId,
) -> Result<Option<u64>> {
    if let Some(s) = get(ids, id_js(id), "read id").await? {
        return Ok(Some(js_u64(&s, "id index")?));
    }
    match derived_seq(id) {
        Some(seq) if quarantined(q, seq).await?.is_some_and(|r| r.id == id) => Ok(Some(seq)),
        _ => Ok(None),
    }
}

/// Whether `seq` was delivered by a batch ack (`delivered_batches`, read
/// whole: this runs only while fixing a row).
async fn in_a_delivered_batch(batches: &ObjectStore<'_>, seq: u64) -> Result<bool> {
    for b in get_all(batches, "scan delivered batches").await? {
        if js_seqs(&b, "delivered batch")?.contains(&seq) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Makes `seq` readable again (see the [module](self)), in one
/// transaction: rebuilds its index entries from its record if that
/// decodes, quarantines it at `now` otherwise; a quarantined seq only
/// loses a stale pending entry.
pub(crate) async fn fix(db: &Db, now: Timestamp, seq: u64) -> Result<()> {
    let what = "fix";
    let tx =
        db.tx(&[EVENTS, PENDING, DEAD, DELIVERED, DELIVERED_BATCHES, DISCARDED, IDS, QUARANTINE], true)?;
    let (ev, pending, dead) =
        (store(&tx, EVENTS, what)?, store(&tx, PENDING, what)?, store(&tx, DEAD, what)?);
    let q = store(&tx, QUARANTINE, what)?;
    let k = seq_js(seq);
    if quarantined(&q, seq).await?.is_some() {
        delete(&pending, k, what)?;
        return finish(tx, what).await;
    }
    let raw = get(&ev, k.clone(), "read event").await?;
    let decoded = raw.as_ref().map(|v| js_bytes(v, "event row").and_then(Event::decode));
    match decoded {
        Some(Ok(row)) => {
            // A good record: its index entries are rebuilt from it.
            delete(&pending, k.clone(), what)?;
            delete(&dead, k.clone(), what)?;
            match row.status() {
                // A row acked in a batch keeps its pending status: it is
                // delivered, not pending again.
                Status::Pending
                    if in_a_delivered_batch(&store(&tx, DELIVERED_BATCHES, what)?, seq).await? => {}
                Status::Pending => put(&pending, k, bytes_js(&encode_pending(&row.pending_entry())), what)?,
                Status::Dead { skipped } => put(&dead, k, dead_js(&row.env().key, skipped), what)?,
                Status::Delivered(at) => put(&store(&tx, DELIVERED, what)?, time_seq_js(at, seq), k, what)?,
                Status::Discarded(at) => put(&store(&tx, DISCARDED, what)?, time_seq_js(at, seq), k, what)?,
            }
        }
        Some(Err(e)) => {
            let why = match e {
                Error::Corrupted { message, .. } => message,
                other => other.to_string(),
            };
            let what_is_wrong = format!("does not decode ({why})");
            quarantine(&tx, now, seq, raw.as_ref(), &what_is_wrong).await?;
        }
        None => quarantine(&tx, now, seq, None, "is missing, yet an index names it").await?,
    }
    finish(tx, what).await
}

/// Quarantines the event at `seq` in `tx` (see [`fix`]): `raw` is its
/// stored value (none if missing), `what` what is wrong with it (it
/// follows "the event record at seq N" in its `last_error`).
async fn quarantine(
    tx: &crate::tx::Tx<'_>,
    now: Timestamp,
    seq: u64,
    raw: Option<&JsValue>,
    what: &str,
) -> Result<()> {
    let w = "quarantine";
    let (pending, dead, ids) = (store(tx, PENDING, w)?, store(tx, DEAD, w)?, store(tx, IDS, w)?);
    let q = store(tx, QUARANTINE, w)?;
    let k = seq_js(seq);
    let s = match raw.and_then(|v| v.dyn_ref::<js_sys::Uint8Array>()) {
        Some(b) => salvage(&b.to_vec()),
        None => Default::default(),
    };
    // The key from the index entries written with the record, else from
    // what reads of the record.
    let pending_key = get(&pending, k.clone(), "read pending")
        .await?
        .and_then(|v| js_bytes(&v, "pending entry").and_then(|b| decode_pending(&b)).ok())
        .map(|p| p.key);
    let dead_entry = get(&dead, k.clone(), "read dead").await?.and_then(|v| js_dead(&v).ok());
    let was_skipped = matches!(dead_entry, Some((_, ClaimEntry::Skipped)));
    let dead_key = dead_entry.map(|(key, _)| key).filter(|key| key.as_str() != CORRUPTED_ID);
    let key: Option<OrderingKey> = pending_key.or(dead_key).or(s.key);
    // The id: the one read from the record if the id index agrees, else
    // the one the id index gives this seq, else one derived from it.
    let read_id = match s.id {
        Some(id) => get(&ids, id_js(id), "read id").await?.and_then(|v| v.as_f64()).map(|f| (id, f)),
        None => None,
    };
    let id = match read_id {
        Some((id, at)) if at == seq as f64 => Some(id),
        _ => id_at(&ids, seq).await?,
    };
    let mut last_error = format!("{CORRUPTED}the event record at seq {seq} {what}");
    let id = id.unwrap_or_else(|| {
        let id = derived_id(seq);
        last_error.push_str(&format!("; its id is unreadable: listed as {id}, an id derived from seq {seq}"));
        id
    });
    if key.is_none() {
        last_error.push_str("; its ordering key is unreadable: it parks no key");
    }
    if let Some(e) = &s.last_error {
        last_error.push_str(&format!("; its last error: {e}"));
    }
    let dead_value = match &key {
        Some(key) => dead_js(key, was_skipped),
        None => dead_js(&OrderingKey::new(CORRUPTED_ID)?, true),
    };
    let record = encode_quarantined(&Quarantined { at: now, id, key, last_error });
    delete(&pending, k.clone(), w)?;
    put(&dead, k.clone(), dead_value, w)?;
    put(&q, k, bytes_js(&record), w)
}

/// The id the id index maps to `seq`, if any (a read of the whole index:
/// a quarantined event's id is looked up once).
async fn id_at(ids: &ObjectStore<'_>, seq: u64) -> Result<Option<EventId>> {
    let keys = get_all_keys(ids, None, "scan ids").await?;
    let values = get_all(ids, "scan ids").await?;
    for (k, v) in keys.iter().zip(&values) {
        // A binary key reads back as an `ArrayBuffer`.
        if v.as_f64() == Some(seq as f64)
            && (k.is_instance_of::<js_sys::ArrayBuffer>() || k.is_instance_of::<js_sys::Uint8Array>())
            && let Ok(b) = <[u8; 16]>::try_from(raw_bytes(k))
        {
            return Ok(Some(EventId::from_bytes(b)));
        }
    }
    Ok(None)
}
