#![doc = include_str!("../README.md")]
#![warn(clippy::unwrap_used)]

#[cfg(target_arch = "wasm32")]
pub mod error;
#[cfg(target_arch = "wasm32")]
mod leader;
#[cfg(target_arch = "wasm32")]
mod platform;
#[cfg(target_arch = "wasm32")]
mod store;

#[cfg(target_arch = "wasm32")]
pub use leader::{TabForwarder, TabRole, channel_name, lock_name};
#[cfg(target_arch = "wasm32")]
pub use store::{Durability, IdbOptions, IdbStore, SCHEMA_VERSION};
