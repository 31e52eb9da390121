#![doc = include_str!("../README.md")]
#![warn(clippy::unwrap_used)]

#[doc(hidden)]
pub mod baseline;
mod error;
pub mod schema;
mod store;

pub use store::{GroupCommitStats, SqliteOptions, SqliteStore, Synchronous};
