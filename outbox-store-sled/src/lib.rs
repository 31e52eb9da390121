#![doc = include_str!("../README.md")]
#![warn(clippy::unwrap_used)]

mod codec;
mod error;
mod store;

#[doc(hidden)]
pub mod baseline;

pub use store::{FlushPolicy, FlushStats, LAYOUT_VERSION, SledOptions, SledStore};

/// Raw reads for crash tests and debugging; not part of the store's API
/// promises.
#[doc(hidden)]
pub mod debug {
    pub use crate::store::Contents;

    /// Opens the database at `path` (it must not be open elsewhere), checks
    /// that every index agrees with the event rows, and returns everything.
    /// A disagreement is `Corrupted`.
    pub fn dump(path: &std::path::Path) -> outbox_core::Result<Contents> {
        crate::store::dump(path)
    }
}
