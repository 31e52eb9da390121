//! Identifiers: event ids (UUID v7), actor ids, consumer ids, leadership epochs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::Error;

/// The id of one event: a UUID v7, so ids sort by creation time.
///
/// Together with the origin [`ActorId`] it is the idempotency key that
/// consumers deduplicate on (see [`Envelope::idempotency_key`](crate::Envelope::idempotency_key)).
/// Ids made in one process are strictly increasing; across processes they
/// are only roughly time-ordered, which is why stores keep their own commit
/// sequence for delivery order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(Uuid);

impl EventId {
    /// A new, process-wide monotonic UUID v7.
    pub fn new() -> Self {
        EventId(Uuid::now_v7())
    }

    /// Wraps an existing UUID (for example one read back from a store).
    pub const fn from_uuid(uuid: Uuid) -> Self {
        EventId(uuid)
    }

    /// The UUID inside.
    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }

    /// The 16 bytes of the UUID, big-endian; they sort like the id.
    pub const fn to_bytes(&self) -> [u8; 16] {
        *self.0.as_bytes()
    }

    /// Rebuilds an id from [`EventId::to_bytes`].
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        EventId(Uuid::from_bytes(bytes))
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({})", self.0)
    }
}

impl FromStr for EventId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(EventId).map_err(|e| Error::invalid_input(format!("not a UUID event id: {e}")))
    }
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Longest accepted id, in bytes.
            pub const MAX_LEN: usize = 256;

            /// Makes an id, rejecting an empty one or one longer than
            /// [`Self::MAX_LEN`] bytes with [`Error::InvalidInput`].
            pub fn new(id: impl Into<String>) -> Result<Self, Error> {
                let id = id.into();
                if id.is_empty() {
                    return Err(Error::invalid_input(concat!($what, " must not be empty")));
                }
                if id.len() > Self::MAX_LEN {
                    return Err(Error::invalid_input(format!(
                        concat!($what, " is {} bytes, more than the {} allowed"),
                        id.len(),
                        Self::MAX_LEN
                    )));
                }
                Ok($name(id))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:?})"), self.0)
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(
    /// The actor an event comes from, and whose state a commit changes.
    ///
    /// Non-empty, at most [`ActorId::MAX_LEN`] bytes.
    ActorId,
    "actor id"
);

string_id!(
    /// The name of a consumer, the owner of an inbox (see
    /// [`InboxMark`](crate::InboxMark)).
    ConsumerId,
    "consumer id"
);

string_id!(
    /// A delivery ordering key: events with the same key are delivered in
    /// commit order; different keys may be delivered concurrently. Defaults
    /// to the event's origin actor.
    OrderingKey,
    "ordering key"
);

impl From<&ActorId> for OrderingKey {
    fn from(actor: &ActorId) -> Self {
        OrderingKey(actor.0.clone())
    }
}

/// A leadership epoch: every new grant of the flusher role has a larger one.
///
/// Delivery operations carry the epoch of the grant they run under; a store
/// rejects one whose epoch has been superseded ([`Error::Fenced`]).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "epoch {}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_v7_and_monotonic() {
        let ids: Vec<EventId> = (0..1000).map(|_| EventId::new()).collect();
        assert!(ids.iter().all(|id| id.as_uuid().get_version_num() == 7));
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn event_id_round_trips() {
        let id = EventId::new();
        assert_eq!(EventId::from_bytes(id.to_bytes()), id);
        assert_eq!(id.to_string().parse::<EventId>().unwrap(), id);
        assert_eq!("nope".parse::<EventId>().unwrap_err().kind(), crate::ErrorKind::InvalidInput);
    }

    #[test]
    fn string_ids_reject_empty_and_oversized() {
        assert_eq!(ActorId::new("").unwrap_err().kind(), crate::ErrorKind::InvalidInput);
        let long = "x".repeat(ActorId::MAX_LEN + 1);
        assert_eq!(ConsumerId::new(long).unwrap_err().kind(), crate::ErrorKind::InvalidInput);
        assert_eq!(ActorId::new("form-1").unwrap().as_str(), "form-1");
    }
}
