//! The store contract, checked on the key-value log store: one test per
//! property (`cargo test -p outbox-example-custom-store -- --list`), and
//! random operation sequences against the reference model.

use std::path::PathBuf;
use std::sync::Arc;

use outbox_core::{DurableStore, Result, SharedClock, async_trait};
use outbox_example_custom_store::KvStore;
use outbox_testkit::StoreFactory;

struct KvFactory;

#[async_trait]
impl StoreFactory for KvFactory {
    /// A fresh directory per test, removed when the test ends; the store
    /// is a file in it, so a reopen finds what was committed.
    type Location = (tempfile::TempDir, PathBuf);

    async fn location(&self) -> Self::Location {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("outbox.kv");
        (dir, path)
    }

    async fn open(&self, location: &Self::Location, clock: SharedClock) -> Result<Arc<dyn DurableStore>> {
        Ok(Arc::new(KvStore::open(&location.1, clock)?))
    }
}

outbox_testkit::conformance_tests!(KvFactory);
outbox_testkit::model_tests!(KvFactory, cases = 64);
