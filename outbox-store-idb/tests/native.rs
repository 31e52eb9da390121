//! The store is for wasm32 only: natively, say where its tests run.
#![cfg(not(target_arch = "wasm32"))]

#[test]
fn browser_tests_run_in_real_browsers() {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED outbox-store-idb browser tests on this target: they run in headless Chromium and Firefox \
         (scripts/test-browser.sh, part of scripts/test-all.sh)"
    );
}
