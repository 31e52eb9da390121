#![doc = include_str!("../README.md")]

mod error;
mod options;
mod schema;
mod store;

pub use options::MemoryStore;
pub use schema::MemoryBacking;
