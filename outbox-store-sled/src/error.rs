//! sled errors mapped to the outbox's error kinds.

use outbox_core::Error;
use sled::transaction::TransactionError;

/// Part of the message of a held directory lock.
pub(crate) const LOCK_HELD: &str = "is open in another process or handle";

/// Maps a sled error, met while doing `what`: a held directory lock is
/// `Unavailable`, corruption is `Corrupted`, a full disk is
/// `QuotaExceeded`, permission and read-only failures are
/// `PermissionDenied`.
pub(crate) fn map(what: &str, e: sled::Error) -> Error {
    let message = format!("sled {what}: {e}");
    match e {
        sled::Error::Io(io) => {
            if io.to_string().contains("could not acquire lock") {
                return Error::Unavailable {
                    message: format!(
                        "sled {what}: the database {LOCK_HELD} (sled locks its directory): {io}"
                    ),
                    source: Some(Box::new(io)),
                };
            }
            match io.kind() {
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                    Error::PermissionDenied { message, source: Some(Box::new(io)) }
                }
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                    Error::QuotaExceeded { message, source: Some(Box::new(io)) }
                }
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof => {
                    Error::Corrupted { message, source: Some(Box::new(io)) }
                }
                _ => Error::Unavailable { message, source: Some(Box::new(io)) },
            }
        }
        sled::Error::Corruption { .. } | sled::Error::CollectionNotFound(_) => {
            Error::Corrupted { message, source: Some(Box::new(e)) }
        }
        sled::Error::Unsupported(_) => Error::Corrupted { message, source: Some(Box::new(e)) },
        _ => Error::Internal { message, source: Some(Box::new(e)) },
    }
}

/// Maps a transaction's result error: an abort carries our own error.
pub(crate) fn map_tx(what: &str, e: TransactionError<Error>) -> Error {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => map(what, e),
    }
}
