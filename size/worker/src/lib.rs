//! The worker bundle of an app whose page only commits: the IndexedDB
//! store, the forwarder (`serve_worker`) and the HTTP sink. Measured by
//! `scripts/wasm-size.sh` (line `worker:`).

/// The worker (wasm32 only).
#[cfg(target_arch = "wasm32")]
pub mod app {
    use std::sync::Arc;

    use outbox::OutboxConfig;
    use outbox::browser::serve_worker;
    use outbox_sink_http::HttpSink;
    use wasm_bindgen::prelude::*;

    /// Runs the forwarder of the outbox `db` to the HTTP endpoint `url`.
    #[wasm_bindgen]
    pub async fn start(db: String, url: String) -> Result<(), JsValue> {
        let err = |e: outbox::Error| JsValue::from_str(&e.to_string());
        let sink = Arc::new(HttpSink::new(url).map_err(err)?);
        let outbox = serve_worker(OutboxConfig::default().app_name(db), sink).await.map_err(err)?;
        std::mem::forget(outbox);
        Ok(())
    }
}
