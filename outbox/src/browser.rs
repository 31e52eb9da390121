//! Forwarding in a worker (wasm32, IndexedDB): the page commits, a worker
//! delivers.
//!
//! A page that only commits carries no forwarder in its bundle: it calls
//! [`configure_page`], which opens the same IndexedDB database as
//! [`configure_outbox`](crate::configure_outbox) and starts a dedicated
//! worker from a script of the app's own. That script loads a second wasm
//! bundle, the app's worker bundle, which calls [`serve_worker`] with the
//! sink: the forwarder runs there, under the origin's Web Lock, woken by
//! every commit of every tab (the store's `BroadcastChannel`) and by the
//! `online` event. Every tab starts a worker; one leads, the others wait
//! for the lock.
//!
//! **With no tab open** (Chromium's Background Sync): a commit made while
//! the browser is offline, and a page being hidden or closed, register a
//! Background Sync ([`sync_tag`]). The app's service worker imports the
//! same worker bundle and answers the `sync` event with [`drain`]: it
//! takes the lock (waiting for a closing tab's worker to let go), delivers
//! what is due, and rejects when delivery failed so the browser fires the
//! sync again later. Where there is no Background Sync (Firefox, Safari),
//! the tabs' workers deliver while a tab is open, as
//! [`configure_outbox`](crate::configure_outbox)'s in-page forwarder does.
//!
//! The scripts, with the worker bundle built by `wasm-bindgen --target
//! no-modules` (see `examples/todo-pwa`):
//!
//! ```js
//! // outbox-worker.js, the dedicated worker configure_page starts
//! importScripts('/worker/app_worker.js');
//! wasm_bindgen('/worker/app_worker_bg.wasm').then(() => wasm_bindgen.serve());
//!
//! // sw.js, the service worker (listeners added on its first evaluation)
//! importScripts('/worker/app_worker.js');
//! const ready = wasm_bindgen('/worker/app_worker_bg.wasm');
//! self.addEventListener('sync', (event) => {
//!   if (event.tag.startsWith('outbox:')) event.waitUntil(ready.then(() => wasm_bindgen.drain()));
//! });
//! ```
//!
//! where the worker bundle exports `serve` (calling [`serve_worker`]) and
//! `drain` (calling [`drain`], rejecting when [`Drained::retry_later`]).
//! `examples/todo-pwa/worker/src/lib.rs` is such a bundle, in full (built
//! by CI), and `examples/todo-pwa/web/` has the two scripts.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use js_sys::{Function, Object, Promise, Reflect};
use outbox_core::{DurableStore, Envelope, Error, Outcome, Result, Sink};
use outbox_forwarder::ErrorCallback;
use outbox_forwarder::browser::{TabRole, lock_name};
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};

pub use outbox_forwarder::browser::Drained;

use crate::config::{Durability, OnQuota, OutboxConfig, StoreChoice};
use crate::fallback::{FallbackStore, spawn_recommitter};
use crate::runtime::{Backend, Inner, Outbox, Parts};

/// How long [`drain`] waits for the forwarder lock that another tab or
/// worker holds before leaving the delivery to it.
pub const DRAIN_LOCK_WAIT: Duration = Duration::from_secs(10);

/// The message a worker running [`serve_worker`] posts to its page when
/// its role changes: `{ outboxForwarding: true | false }`.
const ROLE_FIELD: &str = "outboxForwarding";

/// Where a page's forwarder runs: the dedicated worker started from
/// `script` (a classic worker script of the app's; see the [module
/// docs](self)).
#[derive(Clone, Debug)]
pub struct WorkerForwarding {
    script: String,
    background_sync: bool,
}

impl WorkerForwarding {
    /// The forwarder runs in a dedicated worker started from `script`;
    /// Background Sync is registered where the browser has it.
    pub fn new(script: impl Into<String>) -> WorkerForwarding {
        WorkerForwarding { script: script.into(), background_sync: true }
    }

    /// Whether to register a Background Sync ([`sync_tag`]) after a
    /// commit made offline and when the page is hidden (default `true`;
    /// a no-op where the browser has no Background Sync or the page no
    /// service worker).
    pub fn background_sync(mut self, on: bool) -> WorkerForwarding {
        self.background_sync = on;
        self
    }
}

/// The Background Sync tag of the outbox database `db`:
/// `outbox:<db>`.
pub fn sync_tag(db: &str) -> String {
    format!("outbox:{db}")
}

/// The IndexedDB database the config opens.
fn database(config: &OutboxConfig) -> Result<String> {
    match &config.store {
        StoreChoice::IndexedDb(name) => Ok(name.clone()),
        StoreChoice::Auto => Ok(config.app_name.clone().unwrap_or_else(|| "outbox".to_owned())),
        _ => Err(Error::invalid_input(
            "forwarding in a worker needs the IndexedDB store (StoreChoice::Auto or StoreChoice::IndexedDb)",
        )),
    }
}

/// The page's side: the worker it started and what that worker says.
pub(crate) struct Page {
    worker: web_sys::Worker,
    forwarding: Rc<Cell<bool>>,
    sync: Option<String>,
    _on_message: Closure<dyn FnMut(web_sys::MessageEvent)>,
    _on_error: Closure<dyn FnMut(JsValue)>,
    on_hide_cb: Option<Closure<dyn FnMut(JsValue)>>,
}

impl Drop for Page {
    fn drop(&mut self) {
        self.worker.terminate();
        if let (Some(cb), Ok(target)) =
            (&self.on_hide_cb, js_sys::global().dyn_into::<web_sys::EventTarget>())
        {
            let _ = target.remove_event_listener_with_callback("pagehide", cb.as_ref().unchecked_ref());
        }
    }
}

impl Page {
    fn start(how: &WorkerForwarding, db: &str, on_error: Option<ErrorCallback>) -> Result<Page> {
        let worker = web_sys::Worker::new(&how.script).map_err(|e| {
            Error::invalid_input(format!("starting the forwarder worker {}: {e:?}", how.script))
        })?;
        let forwarding = Rc::new(Cell::new(false));
        let f = forwarding.clone();
        let on_message = Closure::wrap(Box::new(move |e: web_sys::MessageEvent| {
            if let Ok(v) = Reflect::get(&e.data(), &ROLE_FIELD.into())
                && let Some(b) = v.as_bool()
            {
                f.set(b);
            }
        }) as Box<dyn FnMut(web_sys::MessageEvent)>);
        worker.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        // A script that does not load or throws: nothing is delivered
        // while this page is open (commits still are kept), so say so.
        let script = how.script.clone();
        let on_error = Closure::wrap(Box::new(move |e: JsValue| {
            let what =
                Reflect::get(&e, &"message".into()).ok().and_then(|m| m.as_string()).unwrap_or_default();
            let err = Error::Unavailable {
                message: format!("the forwarder worker {script} failed: {what}"),
                source: None,
            };
            tracing::error!(target: "outbox", error = %err, "the forwarder worker failed");
            if let Some(cb) = &on_error {
                cb(None, &err);
            }
        }) as Box<dyn FnMut(JsValue)>);
        worker.set_onerror(Some(on_error.as_ref().unchecked_ref()));
        let sync = how.background_sync.then(|| sync_tag(db));
        let on_hide = sync.clone().and_then(|tag| {
            let cb =
                Closure::wrap(Box::new(move |_: JsValue| register_sync(&tag)) as Box<dyn FnMut(JsValue)>);
            let target: web_sys::EventTarget = js_sys::global().dyn_into().ok()?;
            target.add_event_listener_with_callback("pagehide", cb.as_ref().unchecked_ref()).ok()?;
            Some(cb)
        });
        Ok(Page {
            worker,
            forwarding,
            sync,
            _on_message: on_message,
            _on_error: on_error,
            on_hide_cb: on_hide,
        })
    }

    /// After each commit: offline, ask for a Background Sync, so the
    /// service worker delivers when the browser is back online even if
    /// every tab is closed by then.
    pub(crate) fn committed(&self) {
        if let Some(tag) = &self.sync
            && offline()
        {
            register_sync(tag);
        }
    }

    pub(crate) fn is_forwarding(&self) -> bool {
        self.forwarding.get()
    }
}

fn prop(target: &JsValue, name: &str) -> Option<JsValue> {
    Reflect::get(target, &name.into()).ok().filter(|v| !v.is_undefined() && !v.is_null())
}

fn offline() -> bool {
    prop(&js_sys::global(), "navigator").and_then(|n| prop(&n, "onLine")).and_then(|v| v.as_bool())
        == Some(false)
}

/// `navigator.serviceWorker.ready.then(r => r.sync.register(tag))`, best
/// effort: nothing where there is no service worker or Background Sync.
fn register_sync(tag: &str) {
    let Some(container) = prop(&js_sys::global(), "navigator").and_then(|n| prop(&n, "serviceWorker")) else {
        return;
    };
    let Some(ready) = prop(&container, "ready").and_then(|r| r.dyn_into::<Promise>().ok()) else {
        return;
    };
    let tag = tag.to_owned();
    wasm_bindgen_futures::spawn_local(async move {
        let Ok(reg) = wasm_bindgen_futures::JsFuture::from(ready).await else { return };
        let Some(sync) = prop(&reg, "sync") else { return };
        let Some(register) = prop(&sync, "register").and_then(|f| f.dyn_into::<Function>().ok()) else {
            return;
        };
        if let Ok(p) = register.call1(&sync, &tag.as_str().into())
            && let Ok(p) = p.dyn_into::<Promise>()
        {
            // Refused without a permission or in some private modes: the
            // tabs' workers still deliver while a tab is open.
            let _ = wasm_bindgen_futures::JsFuture::from(p).await;
        }
    });
}

/// The page has no sink: its worker delivers.
#[derive(Debug)]
struct NoSink;

#[outbox_core::async_trait(?Send)]
impl Sink for NoSink {
    async fn publish(&self, batch: &[Envelope]) -> Vec<Outcome> {
        batch.iter().map(|_| Outcome::Retriable("this page delivers through its worker".into())).collect()
    }
}

/// Starts an outbox for a page whose forwarder runs in a worker: opens
/// the IndexedDB store as [`configure_outbox`](crate::configure_outbox)
/// does (same quota fallback, same receipts) and starts the dedicated
/// worker `worker` names, which runs [`serve_worker`]. Commits wake the
/// leading worker of any tab; [`Outbox::is_forwarding`] says whether this
/// page's worker leads.
///
/// The page calls the store by its type, not through `dyn DurableStore`:
/// its bundle carries what committing and loading state need, and what
/// else the app calls ([`Outbox::dead_letters`], [`Outbox::requeue`],
/// ...). [`Outbox::store`] hands out the whole store (and brings all of it
/// into the bundle of an app that calls it).
///
/// A worker that fails (its script does not load, or throws) is reported
/// as `Unavailable` to `on_error` and logged: nothing is delivered while
/// this page is open, and commits are still kept.
///
/// Errors: `InvalidInput` for a store other than IndexedDB, for
/// [`Durability::Off`] and [`Durability::Memory`] (no events are kept
/// where a worker can read them), and when the worker cannot be started
/// (a script URL the page may not load); the store's open errors as for
/// `configure_outbox`.
pub async fn configure_page(config: OutboxConfig, worker: WorkerForwarding) -> Result<Outbox> {
    let db = durable_database(&config)?;
    outbox_forwarder::metrics::describe();
    let on_error = config.forwarder.on_error.clone();
    let page = Rc::new(Page::start(&worker, &db, on_error.clone())?);
    let idb = open_store(&db, &config).await?;
    let clock = config.forwarder.clock.clone();
    let store = if config.on_quota == OnQuota::Fail {
        Arc::new(FallbackStore::passthrough(idb, clock))
    } else {
        let report = on_error.clone();
        let hook = Box::new(move |e: &Error| {
            if let Some(cb) = &report {
                cb(None, e);
            }
        });
        let fb = Arc::new(FallbackStore::new(idb, clock, hook));
        spawn_recommitter(Arc::downgrade(&fb));
        fb
    };
    metrics::gauge!(outbox_forwarder::metrics::DURABLE).set(1.0);
    Ok(Outbox {
        inner: Arc::new(Inner {
            durable: (store.watch_durable(), None),
            backend: Backend::Page(store),
            conflict_retries: config.conflict_retries,
            forwarder: Mutex::new(None),
            wake: None,
            sink: Arc::new(NoSink),
            durability: config.durability,
            on_error,
            page: Some(page),
        }),
    })
}

/// In the dedicated worker [`configure_page`] starts: runs the forwarder
/// to `sink` over the IndexedDB store as
/// [`configure_outbox`](crate::configure_outbox) does in a page (one
/// worker or tab of the origin forwards at a time), and tells the page
/// whether this worker leads. Keep the returned outbox alive for as long
/// as the worker runs.
///
/// The worker's outbox is for forwarding: it has no quota fallback (the
/// pages commit, each behind its own), so a commit made through it on a
/// full store fails with `QuotaExceeded` whatever `config.on_quota` says.
///
/// Errors: as [`configure_page`]'s for the config (`InvalidInput` for a
/// store other than IndexedDB, for [`Durability::Off`] and
/// [`Durability::Memory`]); the store's open errors.
pub async fn serve_worker(config: OutboxConfig, sink: Arc<dyn Sink>) -> Result<Outbox> {
    let db = durable_database(&config)?;
    let store = open_store(&db, &config).await?;
    let parts = Parts {
        durability: config.durability,
        forwarder: config.forwarder,
        conflict_retries: config.conflict_retries,
    };
    // The store by its type (`Backend::Worker`), for the facade and the
    // forwarder alike: through `dyn DurableStore` every method of the
    // store would be in the worker's bundle.
    let durable = store.capabilities().durable;
    let forwarded = store.clone();
    let start = |sink, fwd| crate::runtime::start_forwarder(forwarded, Some(db.as_str()), sink, fwd);
    let outbox = crate::runtime::built(Backend::Worker(store), durable, None, start, sink, parts);
    if let Some(mut roles) = outbox.watch_role() {
        wasm_bindgen_futures::spawn_local(async move {
            loop {
                let leading = matches!(*roles.borrow_and_update(), TabRole::Leader | TabRole::LeaseContender);
                post_to_page(leading);
                if roles.changed().await.is_err() {
                    break;
                }
            }
        });
    }
    Ok(outbox)
}

/// The IndexedDB database `config` opens, for a page or worker of
/// [`configure_page`]'s kind.
fn durable_database(config: &OutboxConfig) -> Result<String> {
    match config.durability {
        Durability::Off => {
            Err(Error::invalid_input("Durability::Off keeps no events for a worker to deliver"))
        }
        Durability::Memory => Err(Error::invalid_input(
            "Durability::Memory keeps events in this page's memory, where a worker cannot deliver them",
        )),
        _ => database(config),
    }
}

/// Opens the IndexedDB store `db` on `config`'s clock.
async fn open_store(db: &str, config: &OutboxConfig) -> Result<Arc<outbox_store_idb::IdbStore>> {
    Ok(Arc::new(outbox_store_idb::IdbOptions::new(db).clock(config.forwarder.clock.clone()).open().await?))
}

/// `postMessage({ outboxForwarding })` to the page that started this
/// worker (nothing outside a dedicated worker).
fn post_to_page(leading: bool) {
    let g = js_sys::global();
    if prop(&g, "document").is_some() {
        return;
    }
    let Some(post) = prop(&g, "postMessage").and_then(|f| f.dyn_into::<Function>().ok()) else { return };
    let msg = Object::new();
    if Reflect::set(&msg, &ROLE_FIELD.into(), &leading.into()).is_ok() {
        let _ = post.call1(&g, &msg);
    }
}

/// In a service worker's `sync` event (or any event that must finish):
/// opens the store `config` names and forwards to `sink` until nothing is
/// due, waiting up to [`DRAIN_LOCK_WAIT`] for the origin's forwarder lock
/// (see [`outbox_forwarder::browser::drain`]). The handler should reject
/// when [`Drained::retry_later`] says so, for the browser to fire the sync
/// again.
///
/// Errors: as [`serve_worker`]'s.
pub async fn drain(config: OutboxConfig, sink: Arc<dyn Sink>) -> Result<Drained> {
    let db = durable_database(&config)?;
    let store = open_store(&db, &config).await?;
    outbox_forwarder::browser::drain(store, sink, config.forwarder, &lock_name(&db), DRAIN_LOCK_WAIT).await
}
