//! A lower bound for the page of an app whose actor state is a serde
//! type: `size/raw-commit`'s hand-written commit (its `src/commit.rs`,
//! included by path), with the state read from JSON, changed, written
//! back as JSON, and the event's payload encoded as JSON, all by
//! `serde_json` (what the facade's `Actor::State: Serialize +
//! DeserializeOwned` and `Context::emit` need). Its JSON errors carry no
//! text (the commit's own do, as in `size/raw-commit`). Measured by
//! `scripts/wasm-size.sh` (line `hand-written commit with serde_json:`).

#[cfg(target_arch = "wasm32")]
#[path = "../../raw-commit/src/commit.rs"]
mod commit;

/// The app (wasm32 only).
#[cfg(target_arch = "wasm32")]
pub mod app {
    use serde::{Deserialize, Serialize};
    use wasm_bindgen::prelude::*;

    use crate::commit;

    /// The actor's state.
    #[derive(Default, Serialize, Deserialize)]
    struct Count {
        n: u32,
    }

    /// Opens `db`, reads `state` (JSON) for `actor` at `expected`, adds
    /// `by` to it and commits it with one event whose payload is `by`.
    #[wasm_bindgen]
    pub async fn start(
        db: String,
        actor: String,
        expected: f64,
        state: Vec<u8>,
        by: u32,
    ) -> Result<(), JsValue> {
        let mut count: Count = serde_json::from_slice(&state).map_err(|_| JsValue::NULL)?;
        count.n += by;
        let snapshot = serde_json::to_vec(&count).map_err(|_| JsValue::NULL)?;
        let payload = serde_json::to_vec(&by).map_err(|_| JsValue::NULL)?;
        commit::commit(&db, &actor, expected, &snapshot, &payload).await
    }
}
