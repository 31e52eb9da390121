//! A minimal app that commits and forwards through the outbox: opens the
//! IndexedDB store, commits a state change with one event, and forwards
//! from the leader tab to a sink that hands events to a JavaScript
//! callback. Measured by `scripts/wasm-size.sh`.

/// The app (wasm32 only).
#[cfg(target_arch = "wasm32")]
pub mod app {
    use std::sync::Arc;

    use outbox_core::prelude::*;
    use outbox_core::{ActorId, Commit, Envelope, NewEvent, Payload, async_trait};
    use outbox_forwarder::browser::{TabForwarder, lock_name};
    use outbox_forwarder::{ForwarderConfig, Outcome, Sink};
    use outbox_store_idb::{IdbStore, channel_name};
    use wasm_bindgen::prelude::*;

    struct JsSink(js_sys::Function);

    impl std::fmt::Debug for JsSink {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("JsSink")
        }
    }

    #[async_trait(?Send)]
    impl Sink for JsSink {
        async fn publish(&self, batch: &[Envelope]) -> Vec<Outcome> {
            batch
                .iter()
                .map(|e| match self.0.call1(&JsValue::NULL, &JsValue::from_str(&e.id.to_string())) {
                    Ok(_) => Outcome::Ok,
                    Err(_) => Outcome::Retriable("callback threw".into()),
                })
                .collect()
        }
    }

    /// Commits `snapshot` for `actor` with one event and starts forwarding
    /// to `deliver(eventId)`.
    #[wasm_bindgen]
    pub async fn start(
        db: String,
        actor: String,
        snapshot: Vec<u8>,
        deliver: js_sys::Function,
    ) -> Result<(), JsValue> {
        let err = |e: outbox_core::Error| JsValue::from_str(&e.to_string());
        let store = Arc::new(IdbStore::open(&db).await.map_err(err)?);
        let actor = ActorId::new(actor).map_err(err)?;
        let version = store.current_version(&actor).await.map_err(err)?;
        let event = NewEvent::new(actor.clone(), "saved", Payload::bytes(snapshot.clone()));
        store
            .put_state_and_events(Commit::state(actor, version, snapshot).event(event))
            .await
            .map_err(err)?;
        let tab = TabForwarder::start(
            store,
            Arc::new(JsSink(deliver)),
            ForwarderConfig::default(),
            &lock_name(&db),
            &channel_name(&db),
        );
        std::mem::forget(tab);
        Ok(())
    }
}
