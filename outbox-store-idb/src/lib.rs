#![cfg_attr(target_arch = "wasm32", doc = include_str!("../README.md"))]
#![cfg_attr(
    not(target_arch = "wasm32"),
    doc = "The outbox's IndexedDB store, for `wasm32-unknown-unknown`; empty on this target (see the README)."
)]

#[cfg(target_arch = "wasm32")]
mod codec;
#[cfg(target_arch = "wasm32")]
mod commit;
#[cfg(target_arch = "wasm32")]
mod delivery;
#[cfg(target_arch = "wasm32")]
pub mod error;
#[cfg(target_arch = "wasm32")]
mod inbox;
#[cfg(target_arch = "wasm32")]
mod inspect;
#[cfg(target_arch = "wasm32")]
mod leader;
#[cfg(target_arch = "wasm32")]
mod options;
#[cfg(target_arch = "wasm32")]
mod platform;
#[cfg(target_arch = "wasm32")]
mod quarantine;
#[cfg(target_arch = "wasm32")]
mod schema;
#[cfg(target_arch = "wasm32")]
mod store;
#[cfg(target_arch = "wasm32")]
mod tx;

#[cfg(target_arch = "wasm32")]
pub use options::{Durability, IdbOptions};
#[cfg(target_arch = "wasm32")]
pub use platform::channel_name;
#[cfg(target_arch = "wasm32")]
pub use schema::SCHEMA_VERSION;
#[cfg(target_arch = "wasm32")]
pub use store::IdbStore;
