#![doc = include_str!("../README.md")]
#![warn(clippy::unwrap_used)]

mod error;
mod notify;
mod pool;
mod schema;
mod store;

pub use schema::SCHEMA_VERSION;
pub use store::{COMMIT_CHANNEL, CommitListener, PostgresOptions, PostgresStore};
