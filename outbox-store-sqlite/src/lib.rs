#![doc = include_str!("../README.md")]

mod error;
pub mod schema;
mod store;

pub use store::{GroupCommitStats, SqliteOptions, SqliteStore, Synchronous};
