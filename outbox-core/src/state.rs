//! Actor state: a snapshot of bytes and the version it was committed as.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// The version of an actor's state. [`Version::NONE`] means "no state
/// committed yet"; every committed state change adds one.
///
/// A commit names the version it was based on (optimistic concurrency): if
/// the store holds another, the commit fails with
/// [`Error::Conflict`](crate::Error::Conflict) and writes nothing.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Version(pub u64);

impl Version {
    /// No state yet: the version a first commit is based on.
    pub const NONE: Version = Version(0);

    /// The version after this one.
    pub const fn next(self) -> Version {
        Version(self.0 + 1)
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// An actor's last committed state.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct StateSnapshot {
    /// The version the state was committed as (never [`Version::NONE`]).
    pub version: Version,
    /// The snapshot bytes, as the application serialized them.
    pub bytes: Vec<u8>,
    /// When it was committed, by the store's clock.
    pub updated_at: Timestamp,
}
