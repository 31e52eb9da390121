#![doc = include_str!("../README.md")]

mod codec;
mod commit;
mod delivery;
mod dump;
mod durable;
mod error;
mod inspect;
mod options;
mod quarantine;
mod read_only;
mod schema;
mod store;
mod worker;

pub use options::{FlushPolicy, SledOptions};
pub use schema::LAYOUT_VERSION;
pub use store::{FlushStats, SledStore};

/// Raw reads for crash tests and debugging; not part of the store's API
/// promises.
#[doc(hidden)]
pub mod debug {
    pub use crate::dump::Contents;

    /// Opens the database at `path` (it must not be open elsewhere), checks
    /// that every index agrees with the event rows, and returns everything.
    /// A disagreement is `Corrupted`.
    pub fn dump(path: &std::path::Path) -> outbox_core::Result<Contents> {
        crate::dump::dump(path)
    }
}
