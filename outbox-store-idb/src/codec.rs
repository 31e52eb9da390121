//! Values as IndexedDB stores them: keys (seqs as numbers, ids as bytes,
//! compound keys as arrays), event rows ([`Event`]: `outbox_core::codec`'s
//! row with two statuses of this store's own), the values of the dead
//! index, and the byte encodings of snapshots and grants (pending entries
//! use `outbox_core::codec` as is).

use js_sys::{Array, ArrayBuffer, Uint8Array};
use outbox_core::codec::{self, Reader, Row, Writer, corrupt, decode_row, encode_row};
use outbox_core::rules::ClaimEntry;
use outbox_core::{
    ActorId, ConsumerId, Envelope, Epoch, EventId, Headers, LeaderGrant, OrderingKey, Payload, Result,
    StateSnapshot, Timestamp, Version,
};
use wasm_bindgen::{JsCast, JsValue};

pub(crate) fn num(n: f64) -> JsValue {
    JsValue::from_f64(n)
}

pub(crate) fn seq_js(seq: u64) -> JsValue {
    num(seq as f64)
}

pub(crate) fn bytes_js(b: &[u8]) -> JsValue {
    Uint8Array::from(b).into()
}

pub(crate) fn js_bytes(v: &JsValue, what: &str) -> Result<Vec<u8>> {
    v.dyn_ref::<Uint8Array>().map(Uint8Array::to_vec).ok_or_else(|| corrupt(what))
}

/// The key of a delivered batch: `[ack time, first seq, how many]`, so
/// counting delivered events reads keys only.
pub(crate) fn batch_key_js(at: Timestamp, first: u64, count: usize) -> JsValue {
    Array::of3(&num(at.as_millis() as f64), &seq_js(first), &num(count as f64)).into()
}

/// How many events the delivered batch keyed `k` ([`batch_key_js`]) holds.
pub(crate) fn js_batch_count(k: &JsValue) -> Result<u64> {
    let parts: &Array = k.dyn_ref().ok_or_else(|| corrupt("delivered batch key"))?;
    js_u64(&parts.get(2), "delivered batch count")
}

/// A delivered batch's seqs: little-endian u64s, ascending.
pub(crate) fn seqs_js(seqs: &[u64]) -> JsValue {
    let mut b = Vec::with_capacity(seqs.len() * 8);
    for s in seqs {
        b.extend_from_slice(&s.to_le_bytes());
    }
    bytes_js(&b)
}

/// The seqs of a delivered batch ([`seqs_js`]).
pub(crate) fn js_seqs(v: &JsValue, what: &str) -> Result<Vec<u64>> {
    let b = js_bytes(v, what)?;
    if b.len() % 8 != 0 {
        return Err(corrupt(what));
    }
    Ok(b.chunks_exact(8)
        .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect())
}

pub(crate) fn js_u64(v: &JsValue, what: &str) -> Result<u64> {
    match v.as_f64() {
        Some(f) if f >= 0.0 && f.fract() == 0.0 && f < 9_007_199_254_740_992.0 => Ok(f as u64),
        _ => Err(corrupt(what)),
    }
}

pub(crate) fn id_js(id: EventId) -> JsValue {
    bytes_js(&id.to_bytes())
}

/// `[at, seq]`: a key of the delivered index.
pub(crate) fn time_seq_js(at: Timestamp, seq: u64) -> JsValue {
    Array::of2(&num(at.as_millis() as f64), &seq_js(seq)).into()
}

/// `[consumer, origin, id]`: the key of an inbox mark.
pub(crate) fn inbox_js(consumer: &ConsumerId, origin: &ActorId, id: EventId) -> JsValue {
    Array::of3(&consumer.as_str().into(), &origin.as_str().into(), &id_js(id)).into()
}

pub(crate) fn encode_state(s: &StateSnapshot) -> Vec<u8> {
    let mut w = Writer::default();
    w.u64(s.version.0);
    w.time(s.updated_at);
    w.bytes(&s.bytes);
    w.0
}

pub(crate) fn decode_state(b: &[u8]) -> Result<StateSnapshot> {
    let mut r = Reader::new(b);
    let version = Version(r.u64()?);
    let updated_at = r.time()?;
    let bytes = r.bytes()?.to_vec();
    r.end()?;
    Ok(StateSnapshot { version, bytes, updated_at })
}

pub(crate) fn encode_grant(g: &LeaderGrant) -> Vec<u8> {
    let mut w = Writer::default();
    w.u64(g.epoch.0);
    w.time(g.expires_at);
    w.str(&g.holder);
    w.0
}

pub(crate) fn decode_grant(b: &[u8]) -> Result<LeaderGrant> {
    let mut r = Reader::new(b);
    let epoch = Epoch(r.u64()?);
    let expires_at = r.time()?;
    let holder = r.string()?;
    r.end()?;
    Ok(LeaderGrant { holder, epoch, expires_at })
}

/// An event's delivery status as this store keeps it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Status {
    /// Not yet delivered (leased or not).
    Pending,
    /// Dead-lettered; `skipped`: no longer parks its key.
    Dead {
        /// Let past by [`outbox_core::InspectStore::skip_dead`].
        skipped: bool,
    },
    /// Delivered (acked) at this time.
    Delivered(Timestamp),
    /// Discarded by an operator at this time.
    Discarded(Timestamp),
}

/// One stored event: `outbox_core::codec`'s row, whose status this store
/// extends with a skipped dead letter and a discarded one.
///
/// The bytes are the core's row bytes (layout version 1), whose first
/// byte is the status tag (0 pending, 1 dead, 2 delivered followed by the
/// ack time), with two tags of this store's own: 3, discarded, followed
/// by the discard time (where a delivered row keeps its ack time), and 4,
/// dead and skipped. A row written before schema version 2 has tags 0 to
/// 2 only and reads unchanged.
#[derive(Clone, Debug)]
pub(crate) struct Event {
    /// The envelope, the claim and the core status (`Delivered(at)` for a
    /// discarded row, `Dead` for a skipped one: see [`Event::status`]).
    row: Row,
    /// Which of this store's own statuses refines the core status.
    mark: Mark,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mark {
    None,
    Skipped,
    Discarded,
}

const TAG_DEAD: u8 = 1;
const TAG_DELIVERED: u8 = 2;
/// Discarded: the delivered layout (tag, time), another tag.
const TAG_DISCARDED: u8 = 3;
/// Dead and skipped: the dead layout, another tag.
const TAG_SKIPPED: u8 = 4;

impl Event {
    /// A pending event.
    pub(crate) fn pending(env: Envelope) -> Event {
        Event {
            row: Row { env, status: codec::Status::Pending, claimed_by: None, lease_until: None },
            mark: Mark::None,
        }
    }

    /// The status.
    pub(crate) fn status(&self) -> Status {
        match (self.row.status, self.mark) {
            (codec::Status::Pending, _) => Status::Pending,
            (codec::Status::Dead, m) => Status::Dead { skipped: m == Mark::Skipped },
            (codec::Status::Delivered(at), Mark::Discarded) => Status::Discarded(at),
            (codec::Status::Delivered(at), _) => Status::Delivered(at),
        }
    }

    /// Sets the status.
    pub(crate) fn set_status(&mut self, status: Status) {
        (self.row.status, self.mark) = match status {
            Status::Pending => (codec::Status::Pending, Mark::None),
            Status::Dead { skipped: false } => (codec::Status::Dead, Mark::None),
            Status::Dead { skipped: true } => (codec::Status::Dead, Mark::Skipped),
            Status::Delivered(at) => (codec::Status::Delivered(at), Mark::None),
            Status::Discarded(at) => (codec::Status::Delivered(at), Mark::Discarded),
        };
    }

    /// The envelope.
    pub(crate) fn env(&self) -> &Envelope {
        &self.row.env
    }

    /// The envelope, to change.
    pub(crate) fn env_mut(&mut self) -> &mut Envelope {
        &mut self.row.env
    }

    /// The envelope, taken.
    pub(crate) fn into_env(self) -> Envelope {
        self.row.env
    }

    /// The epoch of the last claim.
    pub(crate) fn claimed_by(&self) -> Option<u64> {
        self.row.claimed_by
    }

    /// Until when the last claim leases it.
    pub(crate) fn lease_until(&self) -> Option<Timestamp> {
        self.row.lease_until
    }

    /// Records a claim by `epoch` leasing the event until `until` (`None`
    /// with the epoch kept: the lease ends).
    pub(crate) fn set_claim(&mut self, epoch: Option<u64>, until: Option<Timestamp>) {
        self.row.claimed_by = epoch;
        self.row.lease_until = until;
    }

    /// Ends the lease (the epoch of the claim is kept).
    pub(crate) fn end_lease(&mut self) {
        self.row.lease_until = None;
    }

    /// The pending-index entry of this event.
    pub(crate) fn pending_entry(&self) -> codec::PendingEntry {
        codec::PendingEntry::of(&self.row)
    }

    /// The stored bytes.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = encode_row(&self.row);
        match (self.mark, b.first_mut()) {
            (Mark::Skipped, Some(tag)) if *tag == TAG_DEAD => *tag = TAG_SKIPPED,
            (Mark::Discarded, Some(tag)) if *tag == TAG_DELIVERED => *tag = TAG_DISCARDED,
            _ => {}
        }
        b
    }

    /// The event stored as `b`.
    pub(crate) fn decode(mut b: Vec<u8>) -> Result<Event> {
        let mark = match b.first_mut() {
            Some(tag) if *tag == TAG_SKIPPED => {
                *tag = TAG_DEAD;
                Mark::Skipped
            }
            Some(tag) if *tag == TAG_DISCARDED => {
                *tag = TAG_DELIVERED;
                Mark::Discarded
            }
            _ => Mark::None,
        };
        Ok(Event { row: decode_row(&b)?, mark })
    }
}

/// The value of the dead index for a dead event of `key`: the key itself
/// (a string) when it parks its key, `[key, true]` once skipped.
pub(crate) fn dead_js(key: &OrderingKey, skipped: bool) -> JsValue {
    if skipped { Array::of2(&key.as_str().into(), &JsValue::TRUE).into() } else { key.as_str().into() }
}

/// The ordering key of a dead index value and what a claim scan makes of
/// it: [`ClaimEntry::Dead`] (parks its key) or [`ClaimEntry::Skipped`].
pub(crate) fn js_dead(v: &JsValue) -> Result<(OrderingKey, ClaimEntry)> {
    let bad = || corrupt("dead index value is invalid");
    let (key, entry) = match v.as_string() {
        Some(key) => (key, ClaimEntry::Dead),
        None => {
            let parts: &Array = v.dyn_ref().ok_or_else(bad)?;
            if parts.length() != 2 || parts.get(1) != JsValue::TRUE {
                return Err(bad());
            }
            (parts.get(0).as_string().ok_or_else(bad)?, ClaimEntry::Skipped)
        }
    };
    Ok((OrderingKey::new(key).map_err(|_| bad())?, entry))
}

/// The bytes of a stored value, whatever it is: a `Uint8Array`'s or an
/// `ArrayBuffer`'s bytes, a string's UTF-8, otherwise its `JSON.stringify`
/// text (or `String(v)` where that fails): how a quarantined record's
/// value is shown.
pub(crate) fn raw_bytes(v: &JsValue) -> Vec<u8> {
    if let Some(a) = v.dyn_ref::<Uint8Array>() {
        return a.to_vec();
    }
    if let Some(b) = v.dyn_ref::<ArrayBuffer>() {
        return Uint8Array::new(b).to_vec();
    }
    if let Some(s) = v.as_string() {
        return s.into_bytes();
    }
    match js_sys::JSON::stringify(v).ok().and_then(|s| s.as_string()) {
        Some(s) => s.into_bytes(),
        None => String::from(js_sys::JsString::from(v.clone())).into_bytes(),
    }
}

/// What can be read of an event row that does not decode: its fields in
/// order, as far as they read, each kept only if valid on its own.
#[derive(Clone, Debug, Default)]
pub(crate) struct Salvage {
    pub(crate) id: Option<EventId>,
    pub(crate) origin: Option<ActorId>,
    pub(crate) key: Option<OrderingKey>,
    pub(crate) event_type: Option<String>,
    pub(crate) headers: Option<Headers>,
    pub(crate) schema_version: Option<u32>,
    pub(crate) created_at: Option<Timestamp>,
    pub(crate) attempts: Option<u32>,
    pub(crate) next_attempt_at: Option<Timestamp>,
    pub(crate) last_error: Option<String>,
}

/// Reads what it can of the row bytes `b` (see [`Salvage`]): the fields
/// [`Event::decode`] reads, in its order, up to the first one whose length
/// cannot be known (an unknown status tag, a truncation).
pub(crate) fn salvage(b: &[u8]) -> Salvage {
    let mut s = Salvage::default();
    let _stopped: Result<()> = (|| {
        let mut r = Reader::new(b);
        match r.u8()? {
            0 | TAG_DEAD | TAG_SKIPPED => {}
            TAG_DELIVERED | TAG_DISCARDED => {
                r.time()?;
            }
            _ => return Err(corrupt("unknown event status")),
        }
        if r.u8()? == 1 {
            r.u64()?;
        }
        r.opt_time()?;
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&r.u64()?.to_be_bytes());
        id[8..].copy_from_slice(&r.u64()?.to_be_bytes());
        s.id = Some(EventId::from_bytes(id));
        s.origin = ActorId::new(r.string()?).ok();
        s.key = OrderingKey::new(r.string()?).ok();
        s.event_type = Some(r.string()?);
        r.u8()?;
        r.bytes()?;
        let mut headers = Headers::new();
        for _ in 0..r.u32()? {
            let k = r.string()?;
            headers.insert(k, r.string()?);
        }
        s.headers = Some(headers);
        s.schema_version = Some(r.u32()?);
        s.created_at = Some(r.time()?);
        s.attempts = Some(r.u32()?);
        s.next_attempt_at = Some(r.time()?);
        if r.u8()? == 1 {
            s.last_error = Some(r.string()?);
        }
        Ok(())
    })();
    s
}

/// The start of the `last_error` of a quarantined record.
pub(crate) const CORRUPTED: &str = "corrupted: ";

/// The origin and key a quarantined record is listed under when its own
/// are unreadable (a key it parks nothing under: its dead index value is
/// the skipped form).
pub(crate) const CORRUPTED_ID: &str = "outbox.corrupted";

/// The id a quarantined record whose own id is unreadable is listed
/// under: the version-8 UUID `00000000-0000-8000-8000-<seq as 12 hex
/// digits>`, stable for the record's life.
pub(crate) fn derived_id(seq: u64) -> EventId {
    let mut b = [0u8; 16];
    b[6] = 0x80;
    b[8] = 0x80;
    b[10..].copy_from_slice(&seq.to_be_bytes()[2..]);
    EventId::from_bytes(b)
}

/// The seq a [`derived_id`] stands for, if `id` is one.
pub(crate) fn derived_seq(id: EventId) -> Option<u64> {
    let b = id.to_bytes();
    if b[..10] != [0, 0, 0, 0, 0, 0, 0x80, 0, 0x80, 0] {
        return None;
    }
    let mut s = [0u8; 8];
    s[2..].copy_from_slice(&b[10..]);
    Some(u64::from_be_bytes(s))
}

/// The record of a quarantined event (the `quarantine` object store's
/// value): when and why it was quarantined, the id it is listed under and
/// its ordering key if known. The event's own record stays in `events` as
/// it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Quarantined {
    pub(crate) at: Timestamp,
    pub(crate) id: EventId,
    pub(crate) key: Option<OrderingKey>,
    /// `corrupted: ` and what is wrong.
    pub(crate) last_error: String,
}

/// The bytes of `q`: the time, the id, the key (a tag byte, then the
/// string), `last_error`.
pub(crate) fn encode_quarantined(q: &Quarantined) -> Vec<u8> {
    let mut w = Writer::default();
    w.time(q.at);
    w.0.extend_from_slice(&q.id.to_bytes());
    match &q.key {
        Some(k) => {
            w.u8(1);
            w.str(k.as_str());
        }
        None => w.u8(0),
    }
    w.str(&q.last_error);
    w.0
}

/// Decodes an [`encode_quarantined`] value.
pub(crate) fn decode_quarantined(b: &[u8]) -> Result<Quarantined> {
    let mut r = Reader::new(b);
    let at = r.time()?;
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&r.u64()?.to_be_bytes());
    id[8..].copy_from_slice(&r.u64()?.to_be_bytes());
    let key = match r.u8()? {
        0 => None,
        1 => Some(OrderingKey::new(r.string()?).map_err(|_| corrupt("quarantined key is invalid"))?),
        _ => return Err(corrupt("bad option tag")),
    };
    let last_error = r.string()?;
    r.end()?;
    Ok(Quarantined { at, id: EventId::from_bytes(id), key, last_error })
}

/// How a quarantined event is listed: the id and key of its record, its
/// stored value (`raw`, none when the record is missing) as a
/// [`Payload::bytes`] ([`raw_bytes`]), what [`salvage`] reads of the rest,
/// and the record's `last_error`.
pub(crate) fn quarantined_envelope(q: &Quarantined, raw: Option<&JsValue>) -> Envelope {
    let bytes = raw.map(raw_bytes).unwrap_or_default();
    let s = if raw.is_some_and(|v| v.is_instance_of::<Uint8Array>()) {
        salvage(&bytes)
    } else {
        Salvage::default()
    };
    let placeholder = || ActorId::new(CORRUPTED_ID).unwrap_or_else(|_| unreachable!("a valid literal id"));
    Envelope {
        id: q.id,
        origin: s.origin.unwrap_or_else(placeholder),
        key: q.key.clone().unwrap_or_else(|| OrderingKey::from(&placeholder())),
        event_type: s.event_type.unwrap_or_default(),
        payload: Payload::bytes(bytes),
        headers: s.headers.unwrap_or_default(),
        schema_version: s.schema_version.unwrap_or(0),
        created_at: s.created_at.unwrap_or(q.at),
        attempts: s.attempts.unwrap_or(0),
        next_attempt_at: s.next_attempt_at.unwrap_or(q.at),
        last_error: Some(q.last_error.clone()),
    }
}
