//! This backend's failures and the outbox error kinds they map to, decided
//! by the failure's type, its SQLSTATE and its I/O error kind, never by
//! its text. Messages carry the server's reason: its message and SQLSTATE
//! (with its detail and hint), or the driver's error and its causes.

use std::error::Error as _;
use std::fmt::Write as _;
use std::io;
use std::time::Duration;

use outbox_core::Error;
use tokio_postgres::error::SqlState;

use crate::tls::TlsError;

/// A failure of the PostgreSQL store, before it becomes an
/// [`outbox_core::Error`] (through `From`, or [`map`] for the common case).
#[derive(Debug)]
pub(crate) enum PgError {
    /// The driver or the server failed while doing `what` on an open
    /// connection.
    Driver {
        /// What the store was doing.
        what: &'static str,
        /// The driver's error.
        source: tokio_postgres::Error,
    },
    /// Opening a connection failed (`what`: the connection's purpose).
    Connect {
        /// What the connection was for.
        what: &'static str,
        /// The driver's error.
        source: tokio_postgres::Error,
    },
    /// The server did not answer `what` within `after`.
    TimedOut {
        /// What the store was waiting for.
        what: &'static str,
        /// How long it waited.
        after: Duration,
    },
    /// A stored column (`what`) did not decode into its Rust type.
    Decode {
        /// The column.
        what: &'static str,
        /// The driver's error.
        source: tokio_postgres::Error,
    },
    /// The connection pool was closed.
    PoolClosed,
    /// The listening connection closed before its `LISTEN` completed.
    ListenerClosed,
}

/// Maps a driver error met while doing `what`.
pub(crate) fn map(what: &'static str, source: tokio_postgres::Error) -> Error {
    PgError::Driver { what, source }.into()
}

/// Maps a driver error met while opening a connection for `what`.
pub(crate) fn map_connect(what: &'static str, source: tokio_postgres::Error) -> Error {
    PgError::Connect { what, source }.into()
}

/// The reason of `e`: the server's message, its SQLSTATE, detail and hint
/// when the server refused; else the driver's error and its causes.
fn reason(e: &tokio_postgres::Error) -> String {
    let mut out = String::new();
    if let Some(db) = e.as_db_error() {
        let _ = write!(out, "{} (SQLSTATE {})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            let _ = write!(out, "; detail: {detail}");
        }
        if let Some(hint) = db.hint() {
            let _ = write!(out, "; hint: {hint}");
        }
        return out;
    }
    let _ = write!(out, "{e}");
    let mut cause = e.source();
    while let Some(c) = cause {
        let _ = write!(out, ": {c}");
        cause = c.source();
    }
    out
}

impl From<PgError> for Error {
    fn from(e: PgError) -> Error {
        match e {
            PgError::Driver { what, source } => {
                let message = format!("postgres {what}: {}", reason(&source));
                classify(&source, Phase::Session).error(message, source)
            }
            PgError::Connect { what, source } => {
                let message = format!("postgres {what}: {}", reason(&source));
                classify(&source, Phase::Connect).error(message, source)
            }
            PgError::TimedOut { what, after } => Error::Unavailable {
                message: format!("postgres {what}: no answer within {} ms", after.as_millis()),
                source: None,
            },
            PgError::Decode { what, source } => {
                let message = format!("postgres outbox row, column {what}: {}", reason(&source));
                Error::Corrupted { message, source: Some(Box::new(source)) }
            }
            PgError::PoolClosed => {
                Error::Unavailable { message: "the postgres pool is closed".into(), source: None }
            }
            PgError::ListenerClosed => {
                Error::Unavailable { message: "postgres LISTEN connection closed".into(), source: None }
            }
        }
    }
}

/// What a driver error means to the caller.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Class {
    /// Retryable: the server is busy, restarting or unreachable, or the
    /// transaction lost a race (serialization failure, deadlock).
    Unavailable,
    /// The server ran out of a resource (disk, memory, lock table).
    QuotaExceeded,
    /// The role may not do this, or may not log in.
    PermissionDenied,
    /// The connection string names something that is not there (a
    /// database), or asks for what this store cannot do.
    InvalidInput,
    /// The server found its own data damaged.
    Corrupted,
    /// Anything else: a bug, a broken invariant.
    Internal,
}

impl Class {
    fn error(self, message: String, source: tokio_postgres::Error) -> Error {
        let source = Some(Box::new(source) as outbox_core::BoxError);
        match self {
            Class::Unavailable => Error::Unavailable { message, source },
            Class::QuotaExceeded => Error::QuotaExceeded { message, source },
            Class::PermissionDenied => Error::PermissionDenied { message, source },
            // `InvalidInput` carries no source: the message has the reason.
            Class::InvalidInput => Error::InvalidInput { message },
            Class::Corrupted => Error::Corrupted { message, source },
            Class::Internal => Error::Internal { message, source },
        }
    }
}

/// When a driver error happened.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// Opening a connection (socket, startup, authentication).
    Connect,
    /// On an open connection.
    Session,
}

/// Classifies a driver error: a closed connection, then the server's
/// SQLSTATE, then a TLS handshake's refusal, then an I/O error in its
/// cause chain, then by `phase`.
fn classify(e: &tokio_postgres::Error, phase: Phase) -> Class {
    if e.is_closed() {
        return Class::Unavailable;
    }
    if let Some(code) = e.code() {
        return by_code(code);
    }
    if let Some(refused) = tls_cause(e).and_then(TlsError::refusal) {
        return by_tls_refusal(refused);
    }
    if let Some(io) = io_cause(e) {
        return by_io_kind(io.kind());
    }
    without_code_or_io(phase)
}

/// A failure with no SQLSTATE and no I/O error. Opening a connection,
/// that is the client refusing the handshake: a password the server asks
/// for and the connection string lacks, an authentication method or
/// channel binding it cannot do, a reply that is not PostgreSQL's (a
/// wrong port). The same connection string fails the same way again:
/// [`Class::InvalidInput`]. On an open connection, a protocol or
/// parameter-encoding failure, treated as a lost connection (retryable).
fn without_code_or_io(phase: Phase) -> Class {
    match phase {
        Phase::Connect => Class::InvalidInput,
        Phase::Session => Class::Unavailable,
    }
}

/// A refused TLS handshake: the server's certificate (an unknown CA,
/// another host name, expired) is `PermissionDenied`, like a refused
/// login (the server did not prove who it is); a host name no
/// certificate can name or a server whose TLS cannot work with ours is
/// `InvalidInput`. Neither is retryable: the same URL fails again.
fn by_tls_refusal(certificate: bool) -> Class {
    if certificate { Class::PermissionDenied } else { Class::InvalidInput }
}

/// The [`TlsError`] in `e`'s cause chain.
fn tls_cause(e: &tokio_postgres::Error) -> Option<&TlsError> {
    let mut cause = e.source();
    while let Some(c) = cause {
        if let Some(t) = c.downcast_ref::<TlsError>() {
            return Some(t);
        }
        cause = c.source();
    }
    None
}

/// The first [`io::Error`] in `e`'s cause chain.
fn io_cause(e: &tokio_postgres::Error) -> Option<&io::Error> {
    let mut cause = e.source();
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<io::Error>() {
            return Some(io);
        }
        cause = c.source();
    }
    None
}

/// SQLSTATEs that mean "try again": a lost race, a lock not granted, a
/// server shutting down, starting, or out of connection slots, a
/// cancelled statement.
const RETRYABLE: &[SqlState] = &[
    SqlState::T_R_SERIALIZATION_FAILURE,
    SqlState::T_R_DEADLOCK_DETECTED,
    SqlState::LOCK_NOT_AVAILABLE,
    SqlState::ADMIN_SHUTDOWN,
    SqlState::CRASH_SHUTDOWN,
    SqlState::CANNOT_CONNECT_NOW,
    SqlState::TOO_MANY_CONNECTIONS,
    SqlState::QUERY_CANCELED,
];

/// SQLSTATEs of a server out of room: disk, memory (including its shared
/// lock table: too many locks is `OUT_OF_MEMORY`, 53200).
const QUOTA: &[SqlState] = &[
    SqlState::DISK_FULL,
    SqlState::OUT_OF_MEMORY,
    SqlState::INSUFFICIENT_RESOURCES,
    SqlState::CONFIGURATION_LIMIT_EXCEEDED,
];

/// SQLSTATEs of a role that may not log in or may not act (a write in a
/// read-only session included: 25006).
const DENIED: &[SqlState] = &[
    SqlState::INSUFFICIENT_PRIVILEGE,
    SqlState::READ_ONLY_SQL_TRANSACTION,
    SqlState::INVALID_PASSWORD,
    SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
];

/// SQLSTATEs of damaged server data.
const DAMAGED: &[SqlState] = &[SqlState::DATA_CORRUPTED, SqlState::INDEX_CORRUPTED];

/// SQLSTATEs of a connection string naming what does not exist: a
/// database (3D000).
const NOT_FOUND: &[SqlState] = &[SqlState::INVALID_CATALOG_NAME];

/// Classifies a SQLSTATE: the listed codes first, then the code's class
/// (its first two characters: 08 connection exception, 53 insufficient
/// resources, 28 invalid authorization, e.g. an unknown role or a
/// `pg_hba.conf` that refuses the host or requires TLS), else
/// [`Class::Internal`].
fn by_code(code: &SqlState) -> Class {
    let listed = |codes: &[SqlState]| codes.iter().any(|c| c == code);
    if listed(NOT_FOUND) {
        return Class::InvalidInput;
    }
    if listed(RETRYABLE) {
        return Class::Unavailable;
    }
    if listed(QUOTA) {
        return Class::QuotaExceeded;
    }
    if listed(DENIED) {
        return Class::PermissionDenied;
    }
    if listed(DAMAGED) {
        return Class::Corrupted;
    }
    match code.code().get(..2) {
        Some("08") => Class::Unavailable,
        Some("53") => Class::QuotaExceeded,
        Some("28") => Class::PermissionDenied,
        _ => Class::Internal,
    }
}

/// Classifies an I/O failure talking to the server. The transient kinds
/// (refused, reset, aborted, timed out, unreachable, cut short) are
/// retryable; so is any other I/O failure, since it too leaves the
/// connection unusable and a new one may work.
fn by_io_kind(kind: io::ErrorKind) -> Class {
    use io::ErrorKind as K;
    match kind {
        K::ConnectionRefused
        | K::ConnectionReset
        | K::ConnectionAborted
        | K::NotConnected
        | K::BrokenPipe
        | K::TimedOut
        | K::UnexpectedEof
        | K::AddrNotAvailable
        | K::HostUnreachable
        | K::NetworkUnreachable
        | K::Interrupted
        | K::WouldBlock => Class::Unavailable,
        _ => Class::Unavailable,
    }
}

/// Whether `e` is an insert refused by the event id's unique index (its
/// SQLSTATE and constraint name).
pub(crate) fn is_duplicate_id(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|d| {
        *d.code() == SqlState::UNIQUE_VIOLATION && d.constraint() == Some("outbox_events_id_key")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_map_to_the_documented_kinds() {
        for c in [
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::LOCK_NOT_AVAILABLE,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::QUERY_CANCELED,
            SqlState::CONNECTION_FAILURE,
            SqlState::CONNECTION_EXCEPTION,
            SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
        ] {
            assert_eq!(by_code(&c), Class::Unavailable, "{}", c.code());
        }
        for c in [
            SqlState::DISK_FULL,
            SqlState::OUT_OF_MEMORY,
            SqlState::INSUFFICIENT_RESOURCES,
            SqlState::CONFIGURATION_LIMIT_EXCEEDED,
        ] {
            assert_eq!(by_code(&c), Class::QuotaExceeded, "{}", c.code());
        }
        for c in [
            SqlState::INSUFFICIENT_PRIVILEGE,
            SqlState::INVALID_PASSWORD,
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        ] {
            assert_eq!(by_code(&c), Class::PermissionDenied, "{}", c.code());
        }
        for c in [SqlState::DATA_CORRUPTED, SqlState::INDEX_CORRUPTED] {
            assert_eq!(by_code(&c), Class::Corrupted, "{}", c.code());
        }
        assert_eq!(by_code(&SqlState::INVALID_CATALOG_NAME), Class::InvalidInput);
        for c in [
            SqlState::UNIQUE_VIOLATION,
            SqlState::SYNTAX_ERROR,
            SqlState::PROGRAM_LIMIT_EXCEEDED,
            SqlState::from_code("ZZ999"),
        ] {
            assert_eq!(by_code(&c), Class::Internal, "{}", c.code());
        }
    }

    #[test]
    fn io_failures_are_retryable() {
        for k in [
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::TimedOut,
            io::ErrorKind::UnexpectedEof,
            io::ErrorKind::Other,
        ] {
            assert_eq!(by_io_kind(k), Class::Unavailable, "{k:?}");
        }
    }

    #[test]
    fn refusals_without_a_code_are_final_only_when_connecting() {
        assert_eq!(without_code_or_io(Phase::Connect), Class::InvalidInput);
        assert_eq!(without_code_or_io(Phase::Session), Class::Unavailable);
    }

    #[test]
    fn classes_become_their_error_kinds() {
        use outbox_core::ErrorKind;
        let kinds = [
            (Class::Unavailable, ErrorKind::Unavailable),
            (Class::QuotaExceeded, ErrorKind::QuotaExceeded),
            (Class::PermissionDenied, ErrorKind::PermissionDenied),
            (Class::InvalidInput, ErrorKind::InvalidInput),
            (Class::Corrupted, ErrorKind::Corrupted),
            (Class::Internal, ErrorKind::Internal),
        ];
        for (class, kind) in kinds {
            let e = "port=x".parse::<tokio_postgres::Config>().unwrap_err();
            assert_eq!(class.error("m".into(), e).kind(), kind);
        }
        assert!(Error::from(PgError::PoolClosed).is_retryable());
        let timed_out = PgError::TimedOut { what: "claim", after: Duration::from_millis(300) };
        assert!(Error::from(timed_out).is_retryable());
        assert!(Error::from(PgError::ListenerClosed).is_retryable());
    }
}
