//! The smallest wasm-bindgen app: one exported function. The baseline of
//! the size measurement (`scripts/wasm-size.sh`).

/// Does nothing, visibly.
#[cfg(target_arch = "wasm32")]
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn start() -> u32 {
    1
}
