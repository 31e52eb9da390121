#![doc = include_str!("../README.md")]
#![warn(clippy::unwrap_used)]

mod store;

pub use store::{MemoryBacking, MemoryStore};
