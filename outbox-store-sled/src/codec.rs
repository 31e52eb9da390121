//! The values in the trees. An event row is this crate's own encoding
//! ([`encode_row`]): the [`outbox_core::codec`] row of layout 1, whose
//! status tag gains two values in layout 2 (a skipped dead letter, a
//! discarded one), so every layout-1 row is a layout-2 row unchanged.
//! Pending entries are [`outbox_core::codec`] values; a state is its
//! version, the time it was written and the snapshot bytes. Keys are laid
//! out in [`schema`](crate::schema).

pub(crate) use outbox_core::codec::{
    PendingEntry, Reader, Writer, corrupt, decode_pending, encode_pending, time_bytes,
};
use outbox_core::{
    ActorId, Envelope, Error, EventId, Headers, OrderingKey, Payload, PayloadKind, Result, StateSnapshot,
    Timestamp, Version,
};

/// An event's delivery status, as stored.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Status {
    /// Not yet delivered (leased or not).
    Pending,
    /// Dead-lettered; `skipped`: no longer parks its key.
    Dead { skipped: bool },
    /// Delivered (acked) at this time.
    Delivered(Timestamp),
    /// Given up on (a discarded dead letter) at this time.
    Discarded(Timestamp),
}

impl Status {
    /// A dead letter that parks its key.
    pub(crate) const DEAD: Status = Status::Dead { skipped: false };
}

/// One stored event: its envelope and its delivery bookkeeping.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    /// The event as delivered.
    pub(crate) env: Envelope,
    /// Where it is in its life.
    pub(crate) status: Status,
    /// The epoch of the last claim, kept after the lease lapses.
    pub(crate) claimed_by: Option<u64>,
    /// Until when the last claim leases it.
    pub(crate) lease_until: Option<Timestamp>,
}

/// The claim index's entry of a row.
pub(crate) fn pending_of(row: &Row) -> PendingEntry {
    PendingEntry {
        next_attempt_at: row.env.next_attempt_at,
        lease_until: row.lease_until,
        created_at: row.env.created_at,
        key: row.env.key.clone(),
    }
}

// Status tags. 0..=2 are layout 1's (and the core codec's); 3 and 4 are
// new in layout 2.
const STATUS_PENDING: u8 = 0;
const STATUS_DEAD: u8 = 1;
const STATUS_DELIVERED: u8 = 2;
const STATUS_DEAD_SKIPPED: u8 = 3;
const STATUS_DISCARDED: u8 = 4;

/// The bytes of `row`: the status tag (and, for delivered and discarded
/// rows, the time), the last claim's epoch, the lease, then the envelope,
/// exactly as [`outbox_core::codec::encode_row`] lays them out.
pub(crate) fn encode_row(row: &Row) -> Vec<u8> {
    let e = &row.env;
    let mut w = Writer(Vec::with_capacity(96 + e.payload.len()));
    match row.status {
        Status::Pending => w.u8(STATUS_PENDING),
        Status::Dead { skipped: false } => w.u8(STATUS_DEAD),
        Status::Dead { skipped: true } => w.u8(STATUS_DEAD_SKIPPED),
        Status::Delivered(at) => {
            w.u8(STATUS_DELIVERED);
            w.time(at);
        }
        Status::Discarded(at) => {
            w.u8(STATUS_DISCARDED);
            w.time(at);
        }
    }
    match row.claimed_by {
        Some(epoch) => {
            w.u8(1);
            w.u64(epoch);
        }
        None => w.u8(0),
    }
    w.opt_time(row.lease_until);
    w.0.extend_from_slice(&e.id.to_bytes());
    w.str(e.origin.as_str());
    w.str(e.key.as_str());
    w.str(&e.event_type);
    w.u8(match e.payload.kind() {
        PayloadKind::Json => 0,
        _ => 1,
    });
    w.bytes(e.payload.as_bytes());
    w.u32(e.headers.len() as u32);
    for (k, v) in &e.headers {
        w.str(k);
        w.str(v);
    }
    w.u32(e.schema_version);
    w.time(e.created_at);
    w.u32(e.attempts);
    w.time(e.next_attempt_at);
    match &e.last_error {
        Some(s) => {
            w.u8(1);
            w.str(s);
        }
        None => w.u8(0),
    }
    w.0
}

fn valid<T>(r: Result<T>) -> Result<T> {
    r.map_err(|e| Error::Corrupted {
        message: format!("stored event: stored id is invalid: {e}"),
        source: None,
    })
}

/// The row encoded in `b` (layout 1 or 2).
pub(crate) fn decode_row(b: &[u8]) -> Result<Row> {
    let mut r = Reader::new(b);
    let status = match r.u8()? {
        STATUS_PENDING => Status::Pending,
        STATUS_DEAD => Status::DEAD,
        STATUS_DEAD_SKIPPED => Status::Dead { skipped: true },
        STATUS_DELIVERED => Status::Delivered(r.time()?),
        STATUS_DISCARDED => Status::Discarded(r.time()?),
        _ => return Err(corrupt("unknown event status")),
    };
    let claimed_by = match r.u8()? {
        0 => None,
        1 => Some(r.u64()?),
        _ => return Err(corrupt("bad option tag")),
    };
    let lease_until = r.opt_time()?;
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&r.u64()?.to_be_bytes());
    id[8..].copy_from_slice(&r.u64()?.to_be_bytes());
    let origin = valid(ActorId::new(r.string()?))?;
    let key = valid(OrderingKey::new(r.string()?))?;
    let event_type = r.string()?;
    let kind = match r.u8()? {
        0 => PayloadKind::Json,
        1 => PayloadKind::Bytes,
        _ => return Err(corrupt("unknown payload kind")),
    };
    let payload = Payload::from_stored(kind, r.bytes()?.to_vec())?;
    let mut headers = Headers::new();
    for _ in 0..r.u32()? {
        let k = r.string()?;
        headers.insert(k, r.string()?);
    }
    let schema_version = r.u32()?;
    let created_at = r.time()?;
    let attempts = r.u32()?;
    let next_attempt_at = r.time()?;
    let last_error = match r.u8()? {
        0 => None,
        1 => Some(r.string()?),
        _ => return Err(corrupt("bad option tag")),
    };
    r.end()?;
    Ok(Row {
        env: Envelope {
            id: EventId::from_bytes(id),
            origin,
            key,
            event_type,
            payload,
            headers,
            schema_version,
            created_at,
            attempts,
            next_attempt_at,
            last_error,
        },
        status,
        claimed_by,
        lease_until,
    })
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
/// [`decode_row`] reads, in its order, up to the first one whose length
/// cannot be known (an unknown status tag, a truncation).
pub(crate) fn salvage(b: &[u8]) -> Salvage {
    let mut s = Salvage::default();
    let _stopped: Result<()> = (|| {
        let mut r = Reader::new(b);
        match r.u8()? {
            STATUS_PENDING | STATUS_DEAD | STATUS_DEAD_SKIPPED => {}
            STATUS_DELIVERED | STATUS_DISCARDED => {
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

/// The start of the `last_error` of a quarantined row.
pub(crate) const CORRUPTED: &str = "corrupted: ";

/// The origin and key a quarantined row is listed under when its own are
/// unreadable.
pub(crate) const CORRUPTED_ID: &str = "outbox.corrupted";

/// The id a quarantined row whose own id is unreadable is listed under:
/// the version-8 UUID `00000000-0000-8000-8000-<seq as 12 hex digits>`,
/// stable for the row's life.
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

/// The record of a quarantined row (the `quarantine` tree's value): when
/// and why it was quarantined, the id it is listed under and its ordering
/// key if known. The row's own bytes stay in `events` as they were.
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
        1 => Some(valid(OrderingKey::new(r.string()?))?),
        _ => return Err(corrupt("bad option tag")),
    };
    let last_error = r.string()?;
    r.end()?;
    Ok(Quarantined { at, id: EventId::from_bytes(id), key, last_error })
}

/// How a quarantined row is listed: the id and key of its record, its
/// raw bytes (`raw`, none when the row is missing) as a
/// [`Payload::bytes`], what [`salvage`] reads of the rest, and the
/// record's `last_error`.
pub(crate) fn quarantined_envelope(q: &Quarantined, raw: Option<&[u8]>) -> Envelope {
    let s = raw.map(salvage).unwrap_or_default();
    let placeholder = || ActorId::new(CORRUPTED_ID).unwrap_or_else(|_| unreachable!("a valid literal id"));
    Envelope {
        id: q.id,
        origin: s.origin.unwrap_or_else(placeholder),
        key: q.key.clone().unwrap_or_else(|| OrderingKey::from(&placeholder())),
        event_type: s.event_type.unwrap_or_default(),
        payload: Payload::bytes(raw.unwrap_or_default().to_vec()),
        headers: s.headers.unwrap_or_default(),
        schema_version: s.schema_version.unwrap_or(0),
        created_at: s.created_at.unwrap_or(q.at),
        attempts: s.attempts.unwrap_or(0),
        next_attempt_at: s.next_attempt_at.unwrap_or(q.at),
        last_error: Some(q.last_error.clone()),
    }
}

/// The value of a state: `version` (u64), `updated_at`, then `snapshot`.
pub(crate) fn encode_state(version: Version, updated_at: Timestamp, snapshot: &[u8]) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(16 + snapshot.len()));
    w.u64(version.0);
    w.time(updated_at);
    w.0.extend_from_slice(snapshot);
    w.0
}

/// Decodes an [`encode_state`] value.
pub(crate) fn decode_state(b: &[u8]) -> Result<StateSnapshot> {
    let mut r = Reader::new(b);
    let version = Version(r.u64()?);
    let updated_at = r.time()?;
    let bytes = b.get(16..).ok_or_else(|| corrupt("short state value"))?.to_vec();
    Ok(StateSnapshot { version, bytes, updated_at })
}

#[cfg(test)]
mod tests {
    use outbox_core::codec as core;

    use super::*;

    fn envelope() -> Envelope {
        let a = ActorId::new("a").unwrap();
        let e =
            outbox_core::NewEvent::json(a, "T", &serde_json::json!({"x": 1})).unwrap().with_header("h", "v");
        let mut env = Envelope::committed(e, Timestamp::from_millis(-5));
        env.last_error = Some("boom".into());
        env
    }

    #[test]
    fn layout_1_rows_are_layout_2_rows_byte_for_byte() {
        let at = Timestamp::from_millis(9);
        for (old, new) in [
            (core::Status::Pending, Status::Pending),
            (core::Status::Dead, Status::DEAD),
            (core::Status::Delivered(at), Status::Delivered(at)),
        ] {
            let old_row =
                core::Row { env: envelope(), status: old, claimed_by: Some(3), lease_until: Some(at) };
            let old_bytes = core::encode_row(&old_row);
            let row = decode_row(&old_bytes).unwrap();
            assert_eq!(
                (&row.env, row.status, row.claimed_by, row.lease_until),
                (&old_row.env, new, Some(3), Some(at))
            );
            assert_eq!(encode_row(&row), old_bytes);
        }
    }

    #[test]
    fn new_statuses_round_trip_and_truncation_is_corrupted() {
        for status in [Status::Dead { skipped: true }, Status::Discarded(Timestamp::from_millis(-7))] {
            let row = Row { env: envelope(), status, claimed_by: None, lease_until: None };
            let bytes = encode_row(&row);
            let back = decode_row(&bytes).unwrap();
            assert_eq!((back.env, back.status), (row.env, status));
            for cut in 0..bytes.len() {
                assert_eq!(decode_row(&bytes[..cut]).unwrap_err().kind(), outbox_core::ErrorKind::Corrupted);
            }
        }
        let mut bad = encode_row(&Row {
            env: envelope(),
            status: Status::Pending,
            claimed_by: None,
            lease_until: None,
        });
        bad[0] = 5;
        assert_eq!(decode_row(&bad).unwrap_err().kind(), outbox_core::ErrorKind::Corrupted);
    }

    #[test]
    fn salvage_reads_what_it_can_and_records_round_trip() {
        let row = Row {
            env: envelope(),
            status: Status::Discarded(Timestamp::from_millis(3)),
            claimed_by: Some(2),
            lease_until: None,
        };
        let bytes = encode_row(&row);
        let all = salvage(&bytes);
        assert_eq!(
            (all.id, all.key.as_ref(), all.last_error.as_deref()),
            (Some(row.env.id), Some(&row.env.key), Some("boom"))
        );
        assert_eq!(all.created_at, Some(row.env.created_at));
        let cut = salvage(&bytes[..40]);
        assert_eq!((cut.id, cut.key, cut.created_at), (Some(row.env.id), None, None));
        assert!(salvage(&[9, 1, 2]).id.is_none(), "an unknown status: nothing after it is known");

        for seq in [0, 7, (1 << 48) - 1] {
            assert_eq!(derived_seq(derived_id(seq)), Some(seq));
        }
        assert_eq!(derived_seq(row.env.id), None);
        let q = Quarantined {
            at: Timestamp::from_millis(-1),
            id: derived_id(4),
            key: Some(row.env.key.clone()),
            last_error: format!("{CORRUPTED}x"),
        };
        assert_eq!(decode_quarantined(&encode_quarantined(&q)).unwrap(), q);
        let q = Quarantined { key: None, ..q };
        assert_eq!(decode_quarantined(&encode_quarantined(&q)).unwrap(), q);
        let listed = quarantined_envelope(&q, Some(&bytes[..40]));
        assert_eq!((listed.id, listed.key.as_str(), listed.origin.as_str()), (q.id, CORRUPTED_ID, "a"));
        assert_eq!(listed.payload.as_bytes(), &bytes[..40]);
    }
}
