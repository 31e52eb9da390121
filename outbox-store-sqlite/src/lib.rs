#![doc = include_str!("../README.md")]

mod error;
pub mod schema;
mod store;

pub use store::{SqliteOptions, SqliteStore, Synchronous};
