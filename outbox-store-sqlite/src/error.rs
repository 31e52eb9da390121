//! SQLite errors mapped to the outbox's error kinds.

use outbox_core::Error;
use rusqlite::ErrorCode;

/// Maps a rusqlite error, met while doing `what`, to an outbox error:
/// BUSY / LOCKED are retryable `Unavailable`, FULL is `QuotaExceeded`,
/// NOTADB / CORRUPT are `Corrupted`, read-only and permission failures are
/// `PermissionDenied`.
pub(crate) fn map(what: &str, e: rusqlite::Error) -> Error {
    let message = format!("sqlite {what}: {e}");
    match sqlite_code(&e) {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            Error::Unavailable { message, source: Some(Box::new(e)) }
        }
        Some(ErrorCode::DiskFull) => Error::QuotaExceeded { message, source: Some(Box::new(e)) },
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            Error::Corrupted { message, source: Some(Box::new(e)) }
        }
        Some(ErrorCode::ReadOnly | ErrorCode::PermissionDenied | ErrorCode::CannotOpen) => {
            Error::PermissionDenied { message, source: Some(Box::new(e)) }
        }
        Some(ErrorCode::SystemIoFailure | ErrorCode::FileLockingProtocolFailed) => {
            Error::Unavailable { message, source: Some(Box::new(e)) }
        }
        _ => match e {
            rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::IntegralValueOutOfRange(..) => {
                Error::Corrupted { message, source: Some(Box::new(e)) }
            }
            _ => Error::Internal { message, source: Some(Box::new(e)) },
        },
    }
}

/// The SQLite primary error code, if `e` came from SQLite.
pub(crate) fn sqlite_code(e: &rusqlite::Error) -> Option<ErrorCode> {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => Some(f.code),
        _ => None,
    }
}

/// Whether `e` is a UNIQUE / PRIMARY KEY constraint failure.
pub(crate) fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.code == ErrorCode::ConstraintViolation
            && (f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY))
}
