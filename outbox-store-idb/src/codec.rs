//! Values as IndexedDB stores them: keys (seqs as numbers, ids as bytes,
//! compound keys as arrays), event rows ([`Event`]: `outbox_core::codec`'s
//! row with two statuses of this store's own), the values of the dead
//! index, and the byte encodings of snapshots and grants (pending entries
//! use `outbox_core::codec` as is).

use js_sys::{Array, Uint8Array};
use outbox_core::codec::{self, Reader, Row, Writer, corrupt, decode_row, encode_row};
use outbox_core::rules::ClaimEntry;
use outbox_core::{
    ActorId, ConsumerId, Envelope, Epoch, EventId, LeaderGrant, OrderingKey, Result, StateSnapshot,
    Timestamp, Version,
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
