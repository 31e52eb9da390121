#![doc = include_str!("../README.md")]

pub mod codec;
pub mod commit;
pub mod error;
pub mod event;
pub mod id;
mod json;
pub mod retry;
pub mod rules;
pub mod schedule;
pub mod sink;
pub mod state;
pub mod store;
pub mod time;

pub use commit::{Commit, InboxMark, Limits, StateWrite};
pub use error::{BoxError, Error, ErrorKind, Result};
pub use event::{Envelope, Headers, NewEvent, Payload, PayloadKind};
pub use id::{ActorId, ConsumerId, Epoch, EventId, OrderingKey};
pub use retry::{Backoff, GiveUp, RetryLimits, RetryPolicy, SplitMix64};
pub use schedule::KeyScheduler;
pub use sink::{Outcome, Sink};
pub use state::{StateSnapshot, Version};
pub use store::{
    Attempt, Capabilities, ClaimRequest, CommitReceipt, DeliveryInfo, DeliveryStore, DurableStore,
    DurableStoreExt, EventStatus, InboxStore, InspectStore, LeaderGrant, LeaderStore, LeadershipMode,
    MaybeSendSync, StateStore, StoreStats, async_trait,
};
pub use time::{Clock, ManualClock, SharedClock, SystemClock, Timestamp};

/// The store traits, for `use outbox_core::prelude::*;` so their methods
/// are callable on concrete store types.
pub mod prelude {
    pub use crate::store::{
        DeliveryStore, DurableStore, DurableStoreExt, InboxStore, InspectStore, LeaderStore, StateStore,
    };
}
