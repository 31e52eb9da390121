//! IndexedDB and DOM failures as outbox [`Error`]s: a `DOMException` is
//! classified by its name, which is the DOM's error code (never by its
//! message).

use indexed_db_futures::error::{Error as IdbFailure, OpenDbError};
use outbox_core::Error;
use wasm_bindgen::JsCast;

/// A failure of this backend, before it becomes an outbox [`Error`].
pub(crate) enum IdbError<'a> {
    /// A `DOMException` thrown by operation `what`: its name (the DOM's
    /// error code, e.g. `QuotaExceededError`) and its message (kept for
    /// the error text only).
    Dom { what: &'a str, name: &'a str, message: &'a str },
    /// No `indexedDB` global in this context (a worklet, an opaque
    /// origin in some browsers).
    NoFactory,
    /// Anything else `indexed_db_futures` reported.
    Other { what: &'a str, detail: &'a dyn std::fmt::Display },
}

impl From<IdbError<'_>> for Error {
    fn from(e: IdbError<'_>) -> Error {
        match e {
            IdbError::Dom { what, name, message } => {
                let message = format!("indexeddb {what}: {name}: {message}");
                match name {
                    "QuotaExceededError" => Error::QuotaExceeded { message, source: None },
                    "InvalidStateError"
                    | "TransactionInactiveError"
                    | "AbortError"
                    | "UnknownError"
                    | "TimeoutError" => Error::Unavailable { message, source: None },
                    "NotFoundError" => Error::Corrupted { message, source: None },
                    "SecurityError" | "NotAllowedError" => Error::PermissionDenied { message, source: None },
                    _ => Error::Internal { message, source: None },
                }
            }
            IdbError::NoFactory => Error::Unsupported {
                operation: "indexeddb is not available in this context (no indexedDB global)",
            },
            IdbError::Other { what, detail } => {
                Error::Internal { message: format!("indexeddb {what}: {detail}"), source: None }
            }
        }
    }
}

/// The outbox error for a `DOMException` named `name` with `message`,
/// thrown by operation `what`. The name decides the kind:
///
/// | DOM name | kind |
/// |---|---|
/// | `QuotaExceededError` | [`Error::QuotaExceeded`] (the facade falls back to memory) |
/// | `VersionError` | [`Error::SchemaTooNew`] (reported by the open path with the versions) |
/// | `InvalidStateError`, `TransactionInactiveError`, `AbortError`, `UnknownError`, `TimeoutError` | [`Error::Unavailable`] (retryable: a closing database, an aborted transaction, a browser I/O hiccup) |
/// | `NotFoundError` | [`Error::Corrupted`] (an object store of the schema is missing) |
/// | `SecurityError`, `NotAllowedError` | [`Error::PermissionDenied`] (storage blocked, opaque origin) |
/// | `DataError`, `DataCloneError`, anything else | [`Error::Internal`] |
pub fn from_dom(name: &str, message: &str, what: &str) -> Error {
    IdbError::Dom { what, name, message }.into()
}

/// The `DOMException` inside `e`, if it is one.
fn dom(e: &IdbFailure) -> Option<&web_sys::DomException> {
    match e {
        IdbFailure::DomException(d) => Some(d.as_ref().unchecked_ref()),
        _ => None,
    }
}

/// Maps an `indexed_db_futures` error (`what` names the operation).
pub(crate) fn map(what: &str, e: IdbFailure) -> Error {
    match dom(&e) {
        Some(d) => from_dom(&d.name(), &d.message(), what),
        None => IdbError::Other { what, detail: &e }.into(),
    }
}

/// Whether `e` is the DOM exception `name` (e.g. `ConstraintError`).
pub(crate) fn is(e: &IdbFailure, name: &str) -> bool {
    dom(e).is_some_and(|d| d.name() == name)
}

/// Maps an error opening the database.
pub(crate) fn map_open(e: OpenDbError) -> Error {
    match e {
        OpenDbError::Base(b) => map("open", b),
        OpenDbError::NullFactory | OpenDbError::UnsupportedEnvironment => IdbError::NoFactory.into(),
        other => IdbError::Other { what: "open", detail: &other }.into(),
    }
}
