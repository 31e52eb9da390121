//! The custom store in use: the facade runs actors and the forwarder on it
//! through `StoreChoice::Custom`, and a reopen finds what was committed.
//!
//! ```text
//! cargo run -p outbox-example-custom-store            # in a temporary directory
//! cargo run -p outbox-example-custom-store -- FILE    # in FILE (kept)
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use outbox::prelude::*;
use outbox::{
    ActorId, Bus, Commit, NewEvent, OutboxConfig, StoreChoice, Topic, configure_outbox, system_clock,
};
use outbox_example_custom_store::KvStore;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("custom-store: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let _tmp;
    let path = match std::env::args().nth(1) {
        Some(p) => PathBuf::from(p),
        None => {
            _tmp = TempDir::new()?;
            _tmp.0.join("outbox.kv")
        }
    };

    let store = Arc::new(KvStore::open(&path, system_clock())?);
    println!("store: {:?} in {}", store.capabilities().backend, path.display());
    let bus = Bus::new();
    let mut delivered = bus.subscribe(Topic::All);
    let config = OutboxConfig::default().store(StoreChoice::Custom(store));
    let outbox = configure_outbox(config, Arc::new(bus.sink())).await?;

    let order = ActorId::new("order-1")?;
    let placed = NewEvent::json(order.clone(), "ORDER_PLACED", &serde_json::json!({ "total": 42 }))?;
    let receipt = outbox
        .commit(
            Commit::state(order.clone(), outbox.store().current_version(&order).await?, b"placed".to_vec())
                .event(placed),
        )
        .await?;
    println!("committed: version {:?}, durable {}", receipt.version, receipt.durable);
    match tokio::time::timeout(Duration::from_secs(10), delivered.recv()).await {
        Ok(Some(e)) => println!("delivered: {} {}", e.event_type, e.id),
        _ => return Err("the event was not delivered within 10 s".into()),
    }
    outbox.shutdown().await;
    drop(outbox);

    // Reopen: the state and the delivered event are still there.
    let store = KvStore::open(&path, system_clock())?;
    let state = store.load_state(&order).await?.ok_or("the state was lost")?;
    let stats = store.stats().await?;
    println!(
        "after reopen: version {:?}, {} delivered, {} pending",
        state.version, stats.delivered, stats.pending
    );
    Ok(())
}

/// A temporary directory removed on drop (std only, to keep the example's
/// dependencies few).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<TempDir> {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("outbox-custom-store-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
