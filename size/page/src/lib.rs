//! The page of an app whose forwarder runs in a worker: an actor,
//! `configure_page`, one `send` (a state change and its event committed
//! in one IndexedDB transaction). Measured by `scripts/wasm-size.sh`
//! (line `page:`).

/// The app (wasm32 only).
#[cfg(target_arch = "wasm32")]
pub mod app {
    use outbox::browser::{WorkerForwarding, configure_page};
    use outbox::{Actor, ActorId, Context, OutboxConfig};
    use serde::{Deserialize, Serialize};
    use wasm_bindgen::prelude::*;

    /// The actor's state.
    #[derive(Clone, Debug, Default, Serialize, Deserialize)]
    pub struct Count {
        n: u32,
    }

    /// Adds to its count and says so.
    #[derive(Debug)]
    pub struct Counter;

    #[outbox::async_trait]
    impl Actor for Counter {
        type State = Count;
        type Message = u32;
        type Error = std::convert::Infallible;

        async fn handle(&mut self, state: &mut Count, by: u32, ctx: &mut Context) -> Result<(), Self::Error> {
            state.n += by;
            ctx.emit("added", &by);
            Ok(())
        }
    }

    /// Opens the outbox `db`, its forwarder in the worker `worker`, and
    /// sends one message to the counter.
    #[wasm_bindgen]
    pub async fn start(db: String, worker: String) -> Result<(), JsValue> {
        let err = |e: &dyn std::fmt::Display| JsValue::from_str(&e.to_string());
        let outbox = configure_page(OutboxConfig::default().app_name(db), WorkerForwarding::new(worker))
            .await
            .map_err(|e| err(&e))?;
        let id = ActorId::new("counter").map_err(|e| err(&e))?;
        let counter = outbox.spawn_actor(id, Counter).await.map_err(|e| err(&e))?;
        counter.send(1).await.map_err(|e| err(&e))?;
        Ok(())
    }
}
