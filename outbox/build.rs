//! Which stores and sinks this build has: a feature turns a backend on
//! only on the targets it runs on (SQLite, sled, PostgreSQL and NATS
//! natively, IndexedDB on wasm32), so `default = ["sqlite", "idb"]` gives
//! SQLite natively and IndexedDB in the browser.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(store_sqlite, store_sled, store_postgres, store_idb, sink_nats)");
    let wasm = std::env::var("CARGO_CFG_TARGET_ARCH").is_ok_and(|a| a == "wasm32");
    let on = |feature: &str| std::env::var_os(format!("CARGO_FEATURE_{}", feature.to_uppercase())).is_some();
    for (feature, cfg, native) in [
        ("sqlite", "store_sqlite", true),
        ("sled", "store_sled", true),
        ("postgres", "store_postgres", true),
        ("nats", "sink_nats", true),
        ("idb", "store_idb", false),
    ] {
        if on(feature) && native != wasm {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
