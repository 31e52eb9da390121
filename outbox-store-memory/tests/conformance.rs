//! The store contract, checked on the memory store: one test per property.
//!
//! The location is a [`MemoryBacking`], so reopening (a new store over the
//! same backing) is tested too.

use std::sync::Arc;

use outbox_core::{DurableStore, Result, SharedClock, async_trait};
use outbox_store_memory::{MemoryBacking, MemoryStore};
use outbox_testkit::StoreFactory;

struct Memory;

#[async_trait]
impl StoreFactory for Memory {
    type Location = MemoryBacking;

    async fn location(&self) -> MemoryBacking {
        MemoryBacking::new()
    }

    async fn open(&self, backing: &MemoryBacking, clock: SharedClock) -> Result<Arc<dyn DurableStore>> {
        Ok(Arc::new(MemoryStore::open(backing, clock)))
    }
}

outbox_testkit::conformance_tests!(Memory);
outbox_testkit::model_tests!(Memory, cases = 256);
