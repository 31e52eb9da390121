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
}
