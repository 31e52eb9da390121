//! The byte layout of keys in the trees; values are
//! [`outbox_core::codec`] rows and pending entries (layout version 1).
//!
//! Integers are big-endian so keys sort numerically; timestamps sort like
//! the time ([`time_bytes`]).

pub(crate) use outbox_core::codec::{
    PendingEntry, Reader, Row, Status, Writer, corrupt, decode_pending, decode_row, encode_pending,
    encode_row, time_bytes,
};
use outbox_core::{ActorId, ConsumerId, EventId, Result, Timestamp};

pub(crate) fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

pub(crate) fn seq_of(key: &[u8]) -> Result<u64> {
    let b: [u8; 8] = key.get(..8).and_then(|s| s.try_into().ok()).ok_or_else(|| corrupt("short seq key"))?;
    Ok(u64::from_be_bytes(b))
}

/// `(time, seq)`: the key of the `delivered` index.
pub(crate) fn time_seq_key(t: Timestamp, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&time_bytes(t));
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The seq of a `(time, seq)` key.
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
