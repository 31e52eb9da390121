#![doc = include_str!("../README.md")]
#![warn(clippy::unwrap_used)]

mod codec;
mod error;
mod store;

#[doc(hidden)]
pub mod baseline;

pub use store::{FlushPolicy, FlushStats, LAYOUT_VERSION, SledOptions, SledStore};
