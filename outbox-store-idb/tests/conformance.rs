//! The store contract, in a real browser: one named test per property.
#![cfg(target_arch = "wasm32")]

mod common;

wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

outbox_testkit::conformance_tests!(common::Factory);
