//! A compact byte encoding of stored events, for stores over key-value
//! engines (sled, IndexedDB, your own): one event row with its delivery
//! bookkeeping, and the small "pending index" entry that decides
//! claimability without reading the row (layout version 1).
//!
//! Integers are big-endian; timestamps have their sign bit flipped so their
//! bytes sort like the time. Strings and byte strings are length-prefixed
//! (`u32`). Bytes that do not decode are [`Error::Corrupted`], never a
//! panic.

use crate::{
    ActorId, Envelope, Error, EventId, Headers, OrderingKey, Payload, PayloadKind, Result, Timestamp,
};

/// An event's delivery status, as stored.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Status {
    /// Not yet delivered (leased or not).
    Pending,
    /// Dead-lettered.
    Dead,
    /// Delivered (acked) at this time.
    Delivered(Timestamp),
}

/// One stored event: its envelope and its delivery bookkeeping.
#[derive(Clone, Debug)]
pub struct Row {
    /// The event as delivered.
    pub env: Envelope,
    /// Pending, dead or delivered.
    pub status: Status,
    /// The epoch of the last claim, kept after the lease lapses.
    pub claimed_by: Option<u64>,
    /// Until when the last claim leases it.
    pub lease_until: Option<Timestamp>,
}

/// What the `pending` index holds per event: enough to decide claimability
/// without reading the row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingEntry {
    /// Not claimable before.
    pub next_attempt_at: Timestamp,
    /// Leased until.
    pub lease_until: Option<Timestamp>,
    /// Commit time.
    pub created_at: Timestamp,
    /// Ordering key.
    pub key: OrderingKey,
}

impl PendingEntry {
    /// The entry of a stored row.
    pub fn of(row: &Row) -> Self {
        PendingEntry {
            next_attempt_at: row.env.next_attempt_at,
            lease_until: row.lease_until,
            created_at: row.env.created_at,
            key: row.env.key.clone(),
        }
    }

    /// Whether an unexpired lease holds the event at `now`.
    pub fn leased_at(&self, now: Timestamp) -> bool {
        self.lease_until.is_some_and(|t| t > now)
    }
}

/// A timestamp as 8 bytes that sort like the time.
pub fn time_bytes(t: Timestamp) -> [u8; 8] {
    ((t.as_millis() as u64) ^ (1 << 63)).to_be_bytes()
}

/// The timestamp of [`time_bytes`].
pub fn time_from(b: [u8; 8]) -> Timestamp {
    Timestamp::from_millis((u64::from_be_bytes(b) ^ (1 << 63)) as i64)
}

/// A [`Error::Corrupted`] saying `what` is wrong with stored bytes.
pub fn corrupt(what: &str) -> Error {
    Error::Corrupted { message: format!("stored event: {what}"), source: None }
}

/// Appends encoded values to a byte buffer.
#[derive(Default, Debug)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    /// A byte.
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    /// A big-endian `u32`.
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    /// A big-endian `u64`.
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    /// A timestamp ([`time_bytes`]).
    pub fn time(&mut self, t: Timestamp) {
        self.0.extend_from_slice(&time_bytes(t));
    }
    /// An optional timestamp (a tag byte, then the time).
    pub fn opt_time(&mut self, t: Option<Timestamp>) {
        match t {
            Some(t) => {
                self.u8(1);
                self.time(t);
            }
            None => self.u8(0),
        }
    }
    /// Length-prefixed bytes.
    pub fn bytes(&mut self, b: &[u8]) {
        // Commit::validate bounds every field far below 4 GiB.
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    /// A length-prefixed UTF-8 string.
    pub fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
}

/// Reads encoded values from bytes, failing with [`Error::Corrupted`].
#[derive(Debug)]
pub struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// Reads `b` from its start.
    pub fn new(b: &'a [u8]) -> Self {
        Reader(b)
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(corrupt("truncated value"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        self.take(N)?.try_into().map_err(|_| corrupt("truncated value"))
    }
    /// A byte.
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    /// A big-endian `u32`.
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    /// A big-endian `u64`.
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    /// A timestamp.
    pub fn time(&mut self) -> Result<Timestamp> {
        Ok(time_from(self.array()?))
    }
    /// An optional timestamp.
    pub fn opt_time(&mut self) -> Result<Option<Timestamp>> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.time()?)),
            _ => Err(corrupt("bad option tag")),
        }
    }
    /// Length-prefixed bytes.
    pub fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    /// A length-prefixed UTF-8 string.
    pub fn string(&mut self) -> Result<String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| corrupt("string is not UTF-8"))
    }
    /// `Ok` if every byte was read.
    pub fn end(&self) -> Result<()> {
        if self.0.is_empty() { Ok(()) } else { Err(corrupt("trailing bytes")) }
    }
}

fn id<T>(r: std::result::Result<T, Error>) -> Result<T> {
    r.map_err(|e| Error::Corrupted {
        message: format!("stored event: stored id is invalid: {e}"),
        source: None,
    })
}

const STATUS_PENDING: u8 = 0;
const STATUS_DEAD: u8 = 1;
const STATUS_DELIVERED: u8 = 2;

/// The bytes of `row`.
pub fn encode_row(row: &Row) -> Vec<u8> {
    let e = &row.env;
    let mut w = Writer(Vec::with_capacity(96 + e.payload.len()));
    match row.status {
        Status::Pending => w.u8(STATUS_PENDING),
        Status::Dead => w.u8(STATUS_DEAD),
        Status::Delivered(at) => {
            w.u8(STATUS_DELIVERED);
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

/// The row encoded in `b`.
pub fn decode_row(b: &[u8]) -> Result<Row> {
    let mut r = Reader::new(b);
    let status = match r.u8()? {
        STATUS_PENDING => Status::Pending,
        STATUS_DEAD => Status::Dead,
        STATUS_DELIVERED => Status::Delivered(r.time()?),
        _ => return Err(corrupt("unknown event status")),
    };
    let claimed_by = match r.u8()? {
        0 => None,
        1 => Some(r.u64()?),
        _ => return Err(corrupt("bad option tag")),
    };
    let lease_until = r.opt_time()?;
    let event_id = EventId::from_bytes(r.array()?);
    let origin = id(ActorId::new(r.string()?))?;
    let key = id(OrderingKey::new(r.string()?))?;
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
            id: event_id,
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

/// The bytes of a pending-index entry.
pub fn encode_pending(p: &PendingEntry) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(32 + p.key.as_str().len()));
    w.time(p.next_attempt_at);
    w.opt_time(p.lease_until);
    w.time(p.created_at);
    w.str(p.key.as_str());
    w.0
}

/// The pending-index entry encoded in `b`.
pub fn decode_pending(b: &[u8]) -> Result<PendingEntry> {
    let mut r = Reader::new(b);
    let next_attempt_at = r.time()?;
    let lease_until = r.opt_time()?;
    let created_at = r.time()?;
    let key = id(OrderingKey::new(r.string()?))?;
    r.end()?;
    Ok(PendingEntry { next_attempt_at, lease_until, created_at, key })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_and_truncation_is_corrupted() {
        let a = ActorId::new("a").expect("id");
        let e = crate::NewEvent::json(a, "T", &serde_json::json!({"x": 1})).unwrap().with_header("h", "v");
        let mut env = Envelope::committed(e, Timestamp::from_millis(-5));
        env.last_error = Some("boom".into());
        let row = Row {
            env,
            status: Status::Delivered(Timestamp::from_millis(9)),
            claimed_by: Some(3),
            lease_until: None,
        };
        let bytes = encode_row(&row);
        let back = decode_row(&bytes).unwrap();
        assert_eq!(back.env, row.env);
        assert_eq!(back.status, row.status);
        assert_eq!(back.claimed_by, Some(3));
        for cut in 0..bytes.len() {
            assert_eq!(decode_row(&bytes[..cut]).unwrap_err().kind(), crate::ErrorKind::Corrupted);
        }
    }

    #[test]
    fn time_keys_sort_like_time() {
        let ts = [i64::MIN, -2, -1, 0, 1, 1000, i64::MAX];
        let keys: Vec<_> = ts.iter().map(|&t| time_bytes(Timestamp::from_millis(t))).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        for (&t, k) in ts.iter().zip(&keys) {
            assert_eq!(time_from(*k).as_millis(), t);
        }
    }
}
