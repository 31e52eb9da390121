//! A lower bound for the commit path: what `size/commit` does (open a
//! versioned database, then commit a state change with one event in one
//! readwrite transaction), hand-written on `indexed_db_futures` with none
//! of the outbox's types. Same schema (nine object stores), same reads
//! (next sequence number, current state version), same writes (state, id
//! `add` with its duplicate check, event row, pending entry, next
//! sequence number), same durability hint and the same refusal of a newer
//! database; no limits, no validation, no inbox marks, no leadership.
//! Measured by `scripts/wasm-size.sh`: the bytes it adds above the floor
//! are the part of the commit path no outbox design on this library can
//! avoid.

#[cfg(target_arch = "wasm32")]
mod commit;

/// The app (wasm32 only).
#[cfg(target_arch = "wasm32")]
pub mod app {
    use wasm_bindgen::prelude::*;

    use crate::commit;

    /// Opens `db` and commits `snapshot` for `actor` at `expected` with one
    /// event whose payload is the snapshot.
    #[wasm_bindgen]
    pub async fn start(db: String, actor: String, expected: f64, snapshot: Vec<u8>) -> Result<(), JsValue> {
        commit::commit(&db, &actor, expected, &snapshot, &snapshot).await
    }
}
