//! The Todo PWA's worker bundle (wasm32; natively this crate is empty):
//! the outbox forwarder, apart from the page's bundle.
//!
//! - `serve()`: in the dedicated worker each tab starts
//!   (`web/outbox-worker.js`, started by the page's
//!   `outbox::browser::configure_page`): runs the forwarder to the sync
//!   server's `/events` while the tab is open; one worker of the origin
//!   leads under a Web Lock.
//! - `drain()`: in the service worker's `sync` event (`web/sw.js`):
//!   delivers what a tab committed offline once the browser is back
//!   online, even with every tab closed; rejects when delivery failed, so
//!   the browser fires the sync again later.

#[cfg(target_arch = "wasm32")]
pub use worker::{drain, serve};

#[cfg(target_arch = "wasm32")]
mod worker {
    use std::cell::RefCell;
    use std::sync::Arc;
    use std::time::Duration;

    use outbox::browser::Drained;
    use outbox::{Outbox, OutboxConfig, RetryPolicy};
    use outbox_sink_http::HttpSink;
    use wasm_bindgen::prelude::*;

    /// The IndexedDB database (and app name) of the outbox: the page's.
    const DB: &str = "todo-pwa";

    thread_local! {
        /// The running forwarder of `serve`, kept for the worker's life.
        static SERVING: RefCell<Option<Outbox>> = const { RefCell::new(None) };
    }

    fn config() -> OutboxConfig {
        OutboxConfig::default()
            .app_name(DB)
            // Retry every 5 s at most: a demo that comes back online
            // delivers soon (the `online` event makes everything due at
            // once anyway).
            .retry(RetryPolicy::default().cap(Duration::from_secs(5)))
    }

    /// `<origin>/events` of the worker's own origin.
    fn sink() -> Result<Arc<HttpSink>, JsError> {
        let location = js_sys::Reflect::get(&js_sys::global(), &"location".into())
            .map_err(|_| JsError::new("no location"))?;
        let origin = js_sys::Reflect::get(&location, &"origin".into())
            .ok()
            .and_then(|o| o.as_string())
            .ok_or_else(|| JsError::new("no origin"))?;
        Ok(Arc::new(HttpSink::new(format!("{origin}/events")).map_err(|e| JsError::new(&e.to_string()))?))
    }

    /// Runs the forwarder in this dedicated worker (see the crate docs).
    #[wasm_bindgen]
    pub async fn serve() -> Result<(), JsError> {
        let outbox = outbox::browser::serve_worker(config(), sink()?)
            .await
            .map_err(|e| JsError::new(&e.to_string()))?;
        SERVING.with(|s| *s.borrow_mut() = Some(outbox));
        Ok(())
    }

    /// Delivers what is due, for the service worker's `sync` event;
    /// resolves to `{ delivered, pending, busy }`, rejects when a
    /// delivery failed and events are left (see the crate docs).
    #[wasm_bindgen]
    pub async fn drain() -> Result<JsValue, JsError> {
        let drained =
            outbox::browser::drain(config(), sink()?).await.map_err(|e| JsError::new(&e.to_string()))?;
        if drained.retry_later() {
            return Err(JsError::new("delivery failed; the sync will be fired again"));
        }
        let out = js_sys::Object::new();
        let (delivered, pending, busy) = match drained {
            Drained::Busy => (0, 0, true),
            Drained::Done { delivered, pending, .. } => (delivered, pending, false),
        };
        for (k, v) in [
            ("delivered", JsValue::from(delivered as f64)),
            ("pending", (pending as f64).into()),
            ("busy", busy.into()),
        ] {
            let _ = js_sys::Reflect::set(&out, &k.into(), &v);
        }
        Ok(out.into())
    }
}
