//! Why the memory store refuses a commit. It does no I/O, so its only
//! failures are the contract's own refusals, mapped into the core's
//! [`Error`] kinds in one place.

use outbox_core::{ActorId, ConsumerId, Error, EventId, Version};

/// A commit the store refuses; nothing of it is written.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The state moved past the version the commit was based on.
    Conflict { actor: ActorId, expected: Version, actual: Version },
    /// An event id already stored.
    Duplicate(EventId),
    /// An inbox mark already stored.
    AlreadyProcessed { consumer: ConsumerId, origin: ActorId, id: EventId },
}

impl From<Refused> for Error {
    fn from(r: Refused) -> Self {
        match r {
            Refused::Conflict { actor, expected, actual } => Error::Conflict { actor, expected, actual },
            Refused::Duplicate(id) => Error::DuplicateEvent { id },
            Refused::AlreadyProcessed { consumer, origin, id } => {
                Error::AlreadyProcessed { consumer, origin, id }
            }
        }
    }
}
