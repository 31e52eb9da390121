//! IndexedDB and DOM errors as outbox [`Error`]s.

use indexed_db_futures::error::{Error as IdbError, OpenDbError};
use outbox_core::Error;
use wasm_bindgen::{JsCast, JsValue};

/// The DOM exception name of `e`, if it is one.
fn dom_name(e: &IdbError) -> Option<String> {
    match e {
        IdbError::DomException(d) => Some(d.as_ref().unchecked_ref::<web_sys::DomException>().name()),
        _ => None,
    }
}

/// Maps a DOM exception name (and message) to the core kinds:
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
    let message = format!("indexeddb {what}: {name}: {message}");
    match name {
        "QuotaExceededError" => Error::QuotaExceeded { message, source: None },
        "InvalidStateError" | "TransactionInactiveError" | "AbortError" | "UnknownError" | "TimeoutError" => {
            Error::Unavailable { message, source: None }
        }
        "NotFoundError" => Error::Corrupted { message, source: None },
        "SecurityError" | "NotAllowedError" => Error::PermissionDenied { message, source: None },
        _ => Error::Internal { message, source: None },
    }
}

/// Maps an `indexed_db_futures` error (`what` names the operation).
pub(crate) fn map(what: &str, e: IdbError) -> Error {
    match &e {
        IdbError::DomException(d) => {
            let sys: &web_sys::DomException = d.as_ref().unchecked_ref();
            from_dom(&sys.name(), &sys.message(), what)
        }
        other => Error::Internal { message: format!("indexeddb {what}: {other}"), source: None },
    }
}

/// Whether `e` is the DOM exception `name` (e.g. `ConstraintError`).
pub(crate) fn is(e: &IdbError, name: &str) -> bool {
    dom_name(e).as_deref() == Some(name)
}

/// Maps an error opening the database.
pub(crate) fn map_open(e: OpenDbError) -> Error {
    match e {
        OpenDbError::Base(b) => map("open", b),
        OpenDbError::NullFactory | OpenDbError::UnsupportedEnvironment => Error::Unsupported {
            operation: "indexeddb is not available in this context (no indexedDB global)",
        },
        other => Error::Internal { message: format!("indexeddb open: {other}"), source: None },
    }
}

/// Maps a thrown JavaScript value (a rejected promise, a failed call).
pub(crate) fn map_js(what: &str, v: JsValue) -> Error {
    match v.dyn_ref::<web_sys::DomException>() {
        Some(d) => from_dom(&d.name(), &d.message(), what),
        None => Error::Internal { message: format!("{what}: {v:?}"), source: None },
    }
}
