//! PostgreSQL errors mapped to the outbox's error kinds.

use outbox_core::Error;
use tokio_postgres::error::SqlState;

/// Maps a tokio-postgres error met while doing `what`: serialization
/// failures, deadlocks and lost connections are retryable `Unavailable`;
/// a full disk is `QuotaExceeded`; missing privileges are
/// `PermissionDenied`.
pub(crate) fn map(what: &str, e: tokio_postgres::Error) -> Error {
    let message = format!("postgres {what}: {e}");
    if e.is_closed() {
        return Error::Unavailable { message, source: Some(Box::new(e)) };
    }
    let Some(code) = e.code() else {
        // No SQLSTATE: an I/O or protocol failure, or a value that did not
        // convert.
        return match e.as_db_error() {
            None if format!("{e:?}").contains("Conversion") || format!("{e:?}").contains("FromSql") => {
                Error::Corrupted { message, source: Some(Box::new(e)) }
            }
            _ => Error::Unavailable { message, source: Some(Box::new(e)) },
        };
    };
    let c = code.clone();
    if c == SqlState::T_R_SERIALIZATION_FAILURE
        || c == SqlState::T_R_DEADLOCK_DETECTED
        || c == SqlState::LOCK_NOT_AVAILABLE
        || c == SqlState::ADMIN_SHUTDOWN
        || c == SqlState::CRASH_SHUTDOWN
        || c == SqlState::CANNOT_CONNECT_NOW
        || c == SqlState::TOO_MANY_CONNECTIONS
        || c == SqlState::QUERY_CANCELED
        || c.code().starts_with("08")
    {
        Error::Unavailable { message, source: Some(Box::new(e)) }
    } else if c == SqlState::DISK_FULL || c == SqlState::OUT_OF_MEMORY || c.code().starts_with("53") {
        Error::QuotaExceeded { message, source: Some(Box::new(e)) }
    } else if c == SqlState::INSUFFICIENT_PRIVILEGE
        || c == SqlState::INVALID_PASSWORD
        || c.code().starts_with("28")
    {
        Error::PermissionDenied { message, source: Some(Box::new(e)) }
    } else if c == SqlState::DATA_CORRUPTED || c == SqlState::INDEX_CORRUPTED {
        Error::Corrupted { message, source: Some(Box::new(e)) }
    } else {
        Error::Internal { message, source: Some(Box::new(e)) }
    }
}
