//! Browser APIs reached through the global object, so the same code runs
//! in a window and in a worker: `navigator.locks`, `BroadcastChannel`
//! listeners, `online`, `offline` and `visibilitychange`.

use js_sys::{Function, Object, Promise, Reflect};
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};

fn global() -> Object {
    js_sys::global()
}

fn prop(target: &JsValue, name: &str) -> Option<JsValue> {
    Reflect::get(target, &name.into()).ok().filter(|v| !v.is_undefined() && !v.is_null())
}

/// The origin's lock manager, where there is one (secure contexts).
pub(crate) fn lock_manager() -> Option<JsValue> {
    prop(&prop(&global(), "navigator")?, "locks")
}

/// Whether the browser says it is offline (`navigator.onLine === false`).
pub(crate) fn navigator_offline() -> bool {
    prop(&global(), "navigator").and_then(|n| prop(&n, "onLine")).and_then(|v| v.as_bool()) == Some(false)
}

/// An exclusive Web Lock, held until this value is dropped (or its
/// context goes away: a closed tab or a terminated worker releases its
/// locks, which is what makes them right for electing one forwarder).
pub(crate) struct HeldLock {
    release: Function,
    /// Kept alive while the lock manager may call it.
    _granted: Closure<dyn FnMut(JsValue) -> JsValue>,
}

impl std::fmt::Debug for HeldLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeldLock")
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        // Settles the promise the lock callback returned: the lock is
        // released and the next waiter (another tab) is granted it.
        let _ = self.release.call0(&JsValue::UNDEFINED);
    }
}

/// Why a lock request gave nothing.
#[derive(Debug)]
pub(crate) enum LockError {
    /// The lock manager has no `request` method.
    NoRequest,
    /// A call to the lock manager threw.
    Thrown,
    /// The lock manager dropped the request without answering it.
    Dropped,
}

/// Waits for the exclusive lock `name` from `locks` (see
/// [`lock_manager`]); `if_available` returns `None` at once instead of
/// waiting when another context holds it.
pub(crate) async fn acquire_lock(
    locks: &JsValue,
    name: &str,
    if_available: bool,
) -> Result<Option<HeldLock>, LockError> {
    let (granted_tx, granted_rx) = futures::channel::oneshot::channel::<bool>();
    let mut release: Option<Function> = None;
    let held = Promise::new(&mut |resolve, _reject| release = Some(resolve));
    let release = release.ok_or(LockError::Dropped)?;
    let mut granted_tx = Some(granted_tx);
    let held_for_cb = held.clone();
    let granted = Closure::wrap(Box::new(move |lock: JsValue| -> JsValue {
        let got = !lock.is_null() && !lock.is_undefined();
        if let Some(tx) = granted_tx.take()
            && tx.send(got).is_err()
        {
            // Nobody waits any more (the request was given up): release.
            return JsValue::UNDEFINED;
        }
        // Hold the lock until `held` settles (HeldLock::drop); give a
        // refused `ifAvailable` request back at once.
        if got { held_for_cb.clone().into() } else { JsValue::UNDEFINED }
    }) as Box<dyn FnMut(JsValue) -> JsValue>);
    let request: Function =
        prop(locks, "request").and_then(|f| f.dyn_into().ok()).ok_or(LockError::NoRequest)?;
    let opts = Object::new();
    Reflect::set(&opts, &"mode".into(), &"exclusive".into()).map_err(|_| LockError::Thrown)?;
    Reflect::set(&opts, &"ifAvailable".into(), &if_available.into()).map_err(|_| LockError::Thrown)?;
    request
        .call3(locks, &name.into(), &opts, granted.as_ref().unchecked_ref())
        .map_err(|_| LockError::Thrown)?;
    match granted_rx.await {
        Ok(true) => Ok(Some(HeldLock { release, _granted: granted })),
        Ok(false) => Ok(None),
        Err(_) => Err(LockError::Dropped),
    }
}

/// A named `BroadcastChannel` calling a function on every message, closed
/// on drop.
pub(crate) struct Channel {
    chan: web_sys::BroadcastChannel,
    _on_message: Closure<dyn FnMut(JsValue)>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel").field("name", &self.chan.name()).finish()
    }
}

impl Channel {
    /// Opens channel `name` calling `f` on every message from other
    /// channel objects of that name (other tabs, workers, or stores of
    /// this context); `None` where `BroadcastChannel` is missing.
    pub(crate) fn listen(name: &str, f: impl FnMut(JsValue) + 'static) -> Option<Channel> {
        prop(&global(), "BroadcastChannel")?;
        let chan = web_sys::BroadcastChannel::new(name).ok()?;
        let cb = Closure::wrap(Box::new(f) as Box<dyn FnMut(JsValue)>);
        chan.set_onmessage(Some(cb.as_ref().unchecked_ref()));
        Some(Channel { chan, _on_message: cb })
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.chan.set_onmessage(None);
        self.chan.close();
    }
}

/// An event listener on the global object, removed on drop.
pub(crate) struct GlobalListener {
    event: &'static str,
    cb: Closure<dyn FnMut(JsValue)>,
    target: web_sys::EventTarget,
}

impl std::fmt::Debug for GlobalListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlobalListener").field("event", &self.event).finish()
    }
}

impl GlobalListener {
    /// Listens for `event` on the global object (`online`) or, for
    /// `visibilitychange`, on the document where there is one.
    pub(crate) fn on(event: &'static str, f: impl FnMut(JsValue) + 'static) -> Option<GlobalListener> {
        let g = global();
        let target: web_sys::EventTarget = if event == "visibilitychange" {
            prop(&g, "document")?.dyn_into().ok()?
        } else {
            g.dyn_into().ok()?
        };
        let cb = Closure::wrap(Box::new(f) as Box<dyn FnMut(JsValue)>);
        target.add_event_listener_with_callback(event, cb.as_ref().unchecked_ref()).ok()?;
        Some(GlobalListener { event, cb, target })
    }
}

impl Drop for GlobalListener {
    fn drop(&mut self) {
        let _ = self.target.remove_event_listener_with_callback(self.event, self.cb.as_ref().unchecked_ref());
    }
}
