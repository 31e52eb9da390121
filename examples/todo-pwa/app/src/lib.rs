//! The Todo PWA's browser module (wasm32; natively this crate is empty).
//!
//! One `TodoList` actor (`outbox-example-todo`) per list, on the
//! `outbox` facade: every change commits the list's state and its event
//! to IndexedDB in one transaction. Delivery runs apart from this bundle,
//! in the `todo-pwa-worker` bundle: each tab's dedicated worker (one
//! leads, under the origin's Web Lock) and, with no tab open, the service
//! worker's Background Sync POST the events to the sync server's
//! `/events` (`outbox-sink-http`). The UI is plain `web-sys` over the static
//! `index.html`, rendered from `ActorRef::watch` (committed state only),
//! with the `outbox-panel` "Pending events" panel. See the example's
//! README for the architecture and the element ids tests drive.

#[cfg(target_arch = "wasm32")]
mod app;

#[cfg(target_arch = "wasm32")]
pub use app::{snapshot, start};
