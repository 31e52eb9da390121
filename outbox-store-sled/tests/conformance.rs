//! The store contract, checked on a real sled database: one test per
//! property, plus the proptest model test.

use std::path::PathBuf;
use std::sync::Arc;

use outbox_core::{DurableStore, Result, SharedClock, async_trait};
use outbox_store_sled::SledStore;
use outbox_testkit::StoreFactory;

struct Sled;

#[derive(Debug)]
struct Location {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

#[async_trait]
impl StoreFactory for Sled {
    type Location = Location;

    async fn location(&self) -> Location {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("outbox.sled");
        Location { _dir: dir, path }
    }

    async fn open(&self, at: &Location, clock: SharedClock) -> Result<Arc<dyn DurableStore>> {
        Ok(Arc::new(SledStore::options(&at.path).clock(clock).open()?))
    }
}

outbox_testkit::conformance_tests!(Sled);
outbox_testkit::model_tests!(Sled, cases = 64);
