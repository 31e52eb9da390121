#![doc = include_str!("../README.md")]

mod breaker;
#[cfg(target_arch = "wasm32")]
pub mod browser;
mod config;
pub mod metrics;
mod mono;
mod obs;
mod sink;
mod worker;

pub use breaker::{BreakerConfig, BreakerState, CircuitBreaker, Permit};
pub use config::{DeadLetterPolicy, ErrorCallback, ForwarderConfig};
pub use outbox_core::{Outcome, Sink};
pub use sink::{Bus, BusSink, ChannelSink, Subscription, Topic};
#[cfg(not(target_arch = "wasm32"))]
pub use worker::ForwarderHandle;
pub use worker::{CycleReport, Forwarder, Wake};
