#![doc = include_str!("../README.md")]

mod claim;
mod enlist;
mod error;
mod fence;
mod notify;
mod options;
mod pool;
mod queries;
mod read_only;
mod rows;
mod schema;
mod store;
mod tls;

pub use notify::{COMMIT_CHANNEL, CommitListener};
pub use options::PostgresOptions;
pub use schema::SCHEMA_VERSION;
pub use store::PostgresStore;
/// The PostgreSQL driver this store is built on, for
/// [`PostgresStore::enlist`]'s transactions.
pub use tokio_postgres;
