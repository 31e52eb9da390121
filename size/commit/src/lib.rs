//! The commit half of the size measurement: opens the IndexedDB store and
//! commits a state change with one event, with no forwarder. Set beside
//! `size/app` (commit + forwarding), it splits our size between the
//! store's commit path and the forwarder. Measured by
//! `scripts/wasm-size.sh`.

/// The app (wasm32 only).
#[cfg(target_arch = "wasm32")]
pub mod app {
    use outbox_core::prelude::*;
    use outbox_core::{ActorId, Commit, NewEvent, Payload};
    use outbox_store_idb::IdbStore;
    use wasm_bindgen::prelude::*;

    /// Commits `snapshot` for `actor` with one event.
    #[wasm_bindgen]
    pub async fn start(db: String, actor: String, snapshot: Vec<u8>) -> Result<(), JsValue> {
        let err = |e: outbox_core::Error| JsValue::from_str(&e.to_string());
        let store = IdbStore::open(&db).await.map_err(err)?;
        let actor = ActorId::new(actor).map_err(err)?;
        let version = store.current_version(&actor).await.map_err(err)?;
        let event = NewEvent::new(actor.clone(), "saved", Payload::bytes(snapshot.clone()));
        store
            .put_state_and_events(Commit::state(actor, version, snapshot).event(event))
            .await
            .map_err(err)?;
        Ok(())
    }
}
