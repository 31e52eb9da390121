//! The store contract, checked on a real SQLite file: one test per
//! property, plus the proptest model test.

use std::path::PathBuf;
use std::sync::Arc;

use outbox_core::{DurableStore, Result, SharedClock, async_trait};
use outbox_store_sqlite::SqliteStore;
use outbox_testkit::StoreFactory;

struct Sqlite;

#[derive(Debug)]
struct Location {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

#[async_trait]
impl StoreFactory for Sqlite {
    type Location = Location;

    async fn location(&self) -> Location {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("outbox.db");
        Location { _dir: dir, path }
    }

    async fn open(&self, at: &Location, clock: SharedClock) -> Result<Arc<dyn DurableStore>> {
        Ok(Arc::new(SqliteStore::options(&at.path).clock(clock).open()?))
    }
}

outbox_testkit::conformance_tests!(Sqlite);
outbox_testkit::model_tests!(Sqlite, cases = 64);
