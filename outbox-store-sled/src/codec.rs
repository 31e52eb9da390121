//! The values in the trees: event rows and pending entries are
//! [`outbox_core::codec`] values; a state is its version, the time it was
//! written and the snapshot bytes. Keys are laid out in
//! [`schema`](crate::schema).

pub(crate) use outbox_core::codec::{
    PendingEntry, Reader, Row, Status, Writer, corrupt, decode_pending, decode_row, encode_pending,
    encode_row, time_bytes,
};
use outbox_core::{Result, StateSnapshot, Timestamp, Version};

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
