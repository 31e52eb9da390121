#![doc = include_str!("../README.md")]

mod commit;
mod delivery;
mod enlist;
mod error;
mod inspect;
mod leader;
mod options;
mod rows;
pub mod schema;
mod store;
mod worker;

pub use enlist::{CommitListener, Enlisted};
pub use options::{SqliteOptions, Synchronous};
/// The SQLite driver this store is built on, for
/// [`SqliteStore::enlist`]'s transactions.
pub use rusqlite;
pub use store::SqliteStore;
pub use worker::GroupCommitStats;
