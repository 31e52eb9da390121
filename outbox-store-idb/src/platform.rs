//! Browser APIs reached through the global object, so the same code runs
//! in a window and in a worker: `navigator.storage` and the
//! `BroadcastChannel` a store posts its commits on.

use js_sys::{Function, Object, Promise, Reflect};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

fn global() -> Object {
    js_sys::global()
}

fn prop(target: &JsValue, name: &str) -> Option<JsValue> {
    Reflect::get(target, &name.into()).ok().filter(|v| !v.is_undefined() && !v.is_null())
}

/// `navigator.storage.persisted()`: `None` where there is no Storage API.
pub(crate) async fn storage_persisted() -> Option<bool> {
    let storage = prop(&prop(&global(), "navigator")?, "storage")?;
    let f: Function = prop(&storage, "persisted")?.dyn_into().ok()?;
    let p: Promise = f.call0(&storage).ok()?.dyn_into().ok()?;
    JsFuture::from(p).await.ok()?.as_bool()
}

/// The `BroadcastChannel` of the database `db`: a store posts on it after
/// each commit with events, and after a requeue, discard or skip that
/// changed an event, so the forwarder leading in any tab or worker of the
/// origin wakes at once (`outbox_forwarder::browser::TabForwarder`
/// listens on it).
pub fn channel_name(db: &str) -> String {
    format!("outbox-commits:{db}")
}

/// A named `BroadcastChannel` to post on, closed on drop.
pub(crate) struct Channel {
    chan: web_sys::BroadcastChannel,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel").field("name", &self.chan.name()).finish()
    }
}

impl Channel {
    /// Opens channel `name`; `None` where `BroadcastChannel` is missing.
    pub(crate) fn open(name: &str) -> Option<Channel> {
        prop(&global(), "BroadcastChannel")?;
        let chan = web_sys::BroadcastChannel::new(name).ok()?;
        Some(Channel { chan })
    }

    /// Posts `msg` (best effort: a closed channel drops it).
    pub(crate) fn post(&self, msg: &str) {
        let _ = self.chan.post_message(&msg.into());
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.chan.close();
    }
}
