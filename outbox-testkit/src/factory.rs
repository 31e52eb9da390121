use std::sync::Arc;

use outbox_core::{DurableStore, MaybeSendSync, Result, SharedClock, async_trait};

/// How the suite gets stores of your backend.
///
/// A *location* is where one store lives (a temporary file, a database
/// schema, an IndexedDB name); [`StoreFactory::open`] opens the store at a
/// location, and opening it again after the first handle is dropped is a
/// reopen (tested only when the store reports
/// [`survives_reopen`](outbox_core::Capabilities::survives_reopen)).
#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
pub trait StoreFactory: MaybeSendSync {
    /// Where one store lives; dropping it may clean up.
    type Location: MaybeSendSync;

    /// A new, empty location no other test uses.
    async fn location(&self) -> Self::Location;

    /// Opens the store at `location`, reading time from `clock`.
    async fn open(&self, location: &Self::Location, clock: SharedClock) -> Result<Arc<dyn DurableStore>>;
}
