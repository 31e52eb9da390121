#![cfg_attr(target_arch = "wasm32", doc = include_str!("../README.md"))]
#![cfg_attr(
    not(target_arch = "wasm32"),
    doc = "The outbox's IndexedDB store and tab leadership, for `wasm32-unknown-unknown`; empty on this target (see the README)."
)]
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
