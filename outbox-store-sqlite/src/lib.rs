#![doc = include_str!("../README.md")]

mod commit;
mod delivery;
mod error;
mod inspect;
mod leader;
mod options;
mod rows;
pub mod schema;
mod store;
mod worker;

pub use options::{SqliteOptions, Synchronous};
pub use store::SqliteStore;
pub use worker::GroupCommitStats;
