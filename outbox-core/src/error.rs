//! The one error type of the outbox, with kinds callers act on.

use std::fmt;

use crate::id::{ActorId, ConsumerId, Epoch, EventId};
use crate::state::Version;

/// A boxed error kept as the cause of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A `Result` with the outbox [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in an outbox store or around it.
///
/// Match on [`Error::kind`] to decide what to do; the text is for people.
/// A failed write never leaves part of itself behind: whatever the error,
/// the store holds what it held before the call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The commit was based on a state version that is no longer current
    /// (someone else committed first). Reload the state and try again.
    #[error("version conflict for actor {actor}: expected {expected}, found {actual}")]
    Conflict {
        /// The actor whose state moved on.
        actor: ActorId,
        /// The version the commit was based on.
        expected: Version,
        /// The version the store holds.
        actual: Version,
    },

    /// An event with this id is already stored: a commit was retried after
    /// it had in fact succeeded, or two events share an id.
    #[error("event {id} is already in the outbox")]
    DuplicateEvent {
        /// The repeated id.
        id: EventId,
    },

    /// The consumer has already processed this event; the commit that tried
    /// to mark it again wrote nothing.
    #[error("consumer {consumer} has already processed event {id} from {origin}")]
    AlreadyProcessed {
        /// The consumer.
        consumer: ConsumerId,
        /// The event's origin actor.
        origin: ActorId,
        /// The event's id.
        id: EventId,
    },

    /// A delivery operation ran under a leadership grant or a claim that has
    /// been superseded; it changed nothing. The caller must stop acting as
    /// the flusher and acquire leadership again.
    #[error("stale {epoch}: leadership or lease has moved on (current: {})", CurrentEpoch(*.current))]
    Fenced {
        /// The epoch the caller presented.
        epoch: Epoch,
        /// The store's current epoch, when it knows one.
        current: Option<Epoch>,
    },

    /// The store is out of space (disk full, browser quota).
    #[error("storage quota exceeded: {message}")]
    QuotaExceeded {
        /// What the store said.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },

    /// The store cannot be reached or is busy right now; the same call may
    /// succeed later.
    #[error("store unavailable: {message}")]
    Unavailable {
        /// What failed.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },

    /// Stored data cannot be read: a damaged file, a file that is not a
    /// store, a row that does not decode.
    #[error("store data corrupted: {message}")]
    Corrupted {
        /// What is wrong.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },

    /// An event was moved to the dead letters: the sink refused it or kept
    /// failing (reported through the `on_error` callback).
    #[error("event {id} dead-lettered: {reason}")]
    DeadLettered {
        /// The event.
        id: EventId,
        /// Why.
        reason: String,
    },

    /// The store's location cannot be written: a read-only file or
    /// directory, missing permissions. Retrying will not help; fix the
    /// location.
    #[error("permission denied: {message}")]
    PermissionDenied {
        /// What could not be opened or written.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },

    /// The store was written by a newer version of this library; it is left
    /// untouched.
    #[error("store schema version {found} is newer than the {supported} this build supports")]
    SchemaTooNew {
        /// The version found in the store.
        found: u32,
        /// The newest version this build knows.
        supported: u32,
    },

    /// A value could not be serialized or deserialized.
    #[error("serialization failed: {message}")]
    Serialization {
        /// What failed.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },

    /// The caller passed something the contract does not accept (empty id,
    /// oversized payload, zero lease, ...). Nothing was written.
    #[error("invalid input: {message}")]
    InvalidInput {
        /// What is wrong with it.
        message: String,
    },

    /// The store does not offer this operation.
    #[error("unsupported operation: {operation}")]
    Unsupported {
        /// The operation.
        operation: &'static str,
    },

    /// A bug or an unexpected condition inside a store.
    #[error("internal error: {message}")]
    Internal {
        /// What happened.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },
}

/// The kind of an [`Error`], without its details: what callers match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// See [`Error::Conflict`].
    Conflict,
    /// See [`Error::DuplicateEvent`].
    DuplicateEvent,
    /// See [`Error::AlreadyProcessed`].
    AlreadyProcessed,
    /// See [`Error::Fenced`].
    Fenced,
    /// See [`Error::QuotaExceeded`].
    QuotaExceeded,
    /// See [`Error::Unavailable`].
    Unavailable,
    /// See [`Error::Corrupted`].
    Corrupted,
    /// See [`Error::DeadLettered`].
    DeadLettered,
    /// See [`Error::PermissionDenied`].
    PermissionDenied,
    /// See [`Error::SchemaTooNew`].
    SchemaTooNew,
    /// See [`Error::Serialization`].
    Serialization,
    /// See [`Error::InvalidInput`].
    InvalidInput,
    /// See [`Error::Unsupported`].
    Unsupported,
    /// See [`Error::Internal`].
    Internal,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl Error {
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Conflict { .. } => ErrorKind::Conflict,
            Error::DuplicateEvent { .. } => ErrorKind::DuplicateEvent,
            Error::AlreadyProcessed { .. } => ErrorKind::AlreadyProcessed,
            Error::Fenced { .. } => ErrorKind::Fenced,
            Error::QuotaExceeded { .. } => ErrorKind::QuotaExceeded,
            Error::Unavailable { .. } => ErrorKind::Unavailable,
            Error::Corrupted { .. } => ErrorKind::Corrupted,
            Error::DeadLettered { .. } => ErrorKind::DeadLettered,
            Error::PermissionDenied { .. } => ErrorKind::PermissionDenied,
            Error::SchemaTooNew { .. } => ErrorKind::SchemaTooNew,
            Error::Serialization { .. } => ErrorKind::Serialization,
            Error::InvalidInput { .. } => ErrorKind::InvalidInput,
            Error::Unsupported { .. } => ErrorKind::Unsupported,
            Error::Internal { .. } => ErrorKind::Internal,
        }
    }

    /// Whether the same call, unchanged, may succeed later. Only
    /// [`Error::Unavailable`] is: a [`Error::Conflict`] needs a reload
    /// first, a [`Error::QuotaExceeded`] needs space freed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }

    /// An [`Error::InvalidInput`].
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Error::InvalidInput { message: message.into() }
    }

    /// An [`Error::Unavailable`] with a cause.
    pub fn unavailable(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Unavailable { message: message.into(), source: Some(source.into()) }
    }

    /// An [`Error::Corrupted`] with a cause.
    pub fn corrupted(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Corrupted { message: message.into(), source: Some(source.into()) }
    }

    /// An [`Error::QuotaExceeded`] with a cause.
    pub fn quota_exceeded(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::QuotaExceeded { message: message.into(), source: Some(source.into()) }
    }

    /// An [`Error::Internal`] with no cause.
    pub fn internal(message: impl Into<String>) -> Self {
        Error::Internal { message: message.into(), source: None }
    }

    /// A copy of a storage failure for each caller it affected (errors are
    /// not `Clone`): the same kind for `QuotaExceeded`, `Unavailable`,
    /// `Corrupted` and `PermissionDenied`, `Internal` otherwise; the same
    /// message with the cause's text appended (the kind's prefix is not
    /// repeated); no source. For stores that fail a whole group commit.
    pub fn shared_failure(&self) -> Error {
        // The copy's message is the original's (its Display adds the
        // kind's prefix once) with the cause folded in, as the cause
        // itself cannot be shared.
        fn folded(message: &str, source: &Option<BoxError>) -> String {
            match source {
                Some(s) => format!("{message}: {s}"),
                None => message.to_owned(),
            }
        }
        match self {
            Error::QuotaExceeded { message, source } => {
                Error::QuotaExceeded { message: folded(message, source), source: None }
            }
            Error::Unavailable { message, source } => {
                Error::Unavailable { message: folded(message, source), source: None }
            }
            Error::Corrupted { message, source } => {
                Error::Corrupted { message: folded(message, source), source: None }
            }
            Error::PermissionDenied { message, source } => {
                Error::PermissionDenied { message: folded(message, source), source: None }
            }
            _ => Error::Internal { message: self.to_string(), source: None },
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Serialization { message: e.to_string(), source: Some(Box::new(e)) }
    }
}

/// Shows a store's current epoch in [`Error::Fenced`]'s message ("epoch
/// 3" or "none"), without `Debug` formatting.
struct CurrentEpoch(Option<Epoch>);

impl fmt::Display for CurrentEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(e) => e.fmt(f),
            None => f.write_str("none"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_failure_keeps_the_kind_and_the_message_once() {
        let e = Error::quota_exceeded("disk full", std::io::Error::other("ENOSPC"));
        let copy = e.shared_failure();
        assert_eq!(copy.kind(), ErrorKind::QuotaExceeded);
        let Error::QuotaExceeded { message, source } = &copy else { unreachable!("same kind") };
        assert_eq!(message, "disk full: ENOSPC", "the original message and its cause, no second prefix");
        assert!(source.is_none());
        assert_eq!(copy.shared_failure().to_string(), copy.to_string(), "copying again changes nothing");
    }

    #[test]
    fn only_unavailable_is_retryable() {
        assert!(Error::unavailable("busy", "database is locked").is_retryable());
        assert!(!Error::invalid_input("x").is_retryable());
        assert!(!Error::quota_exceeded("full", "disk full").is_retryable());
        assert!(!Error::Fenced { epoch: Epoch(1), current: Some(Epoch(2)) }.is_retryable());
    }

    #[test]
    fn kinds_follow_variants() {
        let e = Error::SchemaTooNew { found: 9, supported: 1 };
        assert_eq!(e.kind(), ErrorKind::SchemaTooNew);
        let json: Result<serde_json::Value, _> = serde_json::from_str("{");
        assert_eq!(Error::from(json.unwrap_err()).kind(), ErrorKind::Serialization);
    }
}
