#![doc = include_str!("../README.md")]

mod claim;
mod error;
mod fence;
mod notify;
mod options;
mod pool;
mod queries;
mod rows;
mod schema;
mod store;

pub use notify::{COMMIT_CHANNEL, CommitListener};
pub use options::PostgresOptions;
pub use schema::SCHEMA_VERSION;
pub use store::PostgresStore;
