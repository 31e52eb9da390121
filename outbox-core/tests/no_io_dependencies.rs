//! outbox-core must stay free of I/O: no async runtime, no database driver,
//! no browser API. This reads `cargo tree` for native and wasm32 and fails if
//! one of them sneaks in through any dependency path.

use std::process::Command;

const FORBIDDEN: &[&str] = &[
    "tokio",
    "async-std",
    "smol",
    "mio",
    "rusqlite",
    "libsqlite3-sys",
    "sled",
    "tokio-postgres",
    "postgres",
    "async-nats",
    "web-sys",
    "indexed_db_futures",
    "reqwest",
    "hyper",
];

fn check(target: &str) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["tree", "-p", "outbox-core", "-e", "normal", "--target", target, "--prefix", "none"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    let tree = String::from_utf8_lossy(&out.stdout);
    let crates: Vec<&str> = tree.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert!(crates.contains(&"uuid"), "the tree was read (uuid is a known dependency): {tree}");
    let found: Vec<&&str> = FORBIDDEN.iter().filter(|f| crates.contains(f)).collect();
    assert!(found.is_empty(), "outbox-core depends on I/O crates {found:?} on {target}:\n{tree}");
}

#[test]
fn outbox_core_has_no_io_dependencies_on_native() {
    let out = Command::new("rustc").arg("-vV").output().expect("run rustc -vV");
    let info = String::from_utf8_lossy(&out.stdout);
    let host = info.lines().find_map(|l| l.strip_prefix("host: ")).expect("rustc reports its host");
    check(host.trim());
}

#[test]
fn outbox_core_has_no_io_dependencies_on_wasm32() {
    check("wasm32-unknown-unknown");
}
