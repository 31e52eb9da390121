//! The store contract, checked on a real PostgreSQL server: one test per
//! property, plus the proptest model test. Each test gets its own schema.
//!
//! Needs `OUTBOX_PG_URL` (`scripts/servers.sh start` prints it); without
//! it every test says SKIPPED and passes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use outbox_core::{DurableStore, Result, SharedClock, async_trait};
use outbox_store_postgres::PostgresStore;
use outbox_testkit::StoreFactory;

struct Postgres;

static NEXT: AtomicU64 = AtomicU64::new(0);

#[async_trait]
impl StoreFactory for Postgres {
    type Location = String;

    async fn location(&self) -> String {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        format!(
            "conf_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            nanos % 1_000_000_007
        )
    }

    async fn open(&self, schema: &String, clock: SharedClock) -> Result<Arc<dyn DurableStore>> {
        let url = std::env::var("OUTBOX_PG_URL").expect("OUTBOX_PG_URL");
        Ok(Arc::new(
            PostgresStore::options(url).schema(schema.clone()).pool_size(4).clock(clock).open().await?,
        ))
    }
}

outbox_testkit::conformance_tests!(Postgres, requires = "OUTBOX_PG_URL", leadership = shared);
outbox_testkit::model_tests!(Postgres, cases = 32, requires = "OUTBOX_PG_URL");
