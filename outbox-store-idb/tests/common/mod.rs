//! Helpers shared by the browser tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use outbox_core::{DurableStore, Result, SharedClock, async_trait};
use outbox_store_idb::IdbStore;
use outbox_testkit::StoreFactory;

/// A database name no other test (or earlier run in this profile) uses.
pub fn unique(tag: &str) -> String {
    format!("{tag}-{}", uuid::Uuid::now_v7())
}

/// Conformance factory: each location is a fresh database name.
#[derive(Debug, Default)]
pub struct Factory;

#[async_trait(?Send)]
impl StoreFactory for Factory {
    type Location = String;

    async fn location(&self) -> String {
        unique("conformance")
    }

    async fn open(&self, location: &String, clock: SharedClock) -> Result<Arc<dyn DurableStore>> {
        Ok(Arc::new(IdbStore::options(location.as_str()).clock(clock).open().await?))
    }
}

/// Waits (bounded: `within_ms` of real time) until `cond` holds, checking
/// every 10 ms; panics naming `what` if it never does. Browser events
/// (a lock handed over, a channel message) arrive on the event loop, so
/// tests wait for their effect, never for a fixed time.
pub async fn wait_until(what: &str, within_ms: u32, mut cond: impl FnMut() -> bool) {
    let mut waited = 0;
    while !cond() {
        assert!(waited < within_ms, "{what}: not within {within_ms} ms");
        gloo_timers::future::TimeoutFuture::new(10).await;
        waited += 10;
    }
}
