//! `PostgresOptions::read_only`: no schema created or migrated, the
//! version checked, every write refused by the server. Needs
//! `OUTBOX_PG_URL` (`scripts/servers.sh start`); without it each test says
//! it was skipped and passes.
#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is the test failing

use std::time::Duration;

use outbox_core::prelude::*;
use outbox_core::{ActorId, Commit, ErrorKind, EventId, NewEvent};
use outbox_store_postgres::PostgresStore;

fn url(test: &str) -> Option<String> {
    let url = std::env::var("OUTBOX_PG_URL").ok();
    if url.is_none() {
        {
            // Straight to the stderr handle, past libtest's output capture,
            // so a plain `cargo test` shows it.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: OUTBOX_PG_URL is not set (start the servers: scripts/servers.sh start)"
            );
        }
    }
    url
}

fn fresh_schema() -> String {
    format!("outbox_ro_{}", EventId::new().to_string().replace('-', ""))
}

async fn schema_count(url: &str, schema: &str) -> i64 {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    let driver = tokio::spawn(conn);
    let n = client
        .query_one("SELECT count(*) FROM pg_namespace WHERE nspname = $1", &[&schema])
        .await
        .unwrap()
        .get(0);
    drop(client);
    let _ = driver.await;
    n
}

#[tokio::test(flavor = "multi_thread")]
async fn read_only_reads_and_the_server_refuses_writes() {
    let Some(url) = url("read_only_reads_and_the_server_refuses_writes") else { return };
    let schema = fresh_schema();
    let a = ActorId::new("a").unwrap();
    {
        let store = PostgresStore::options(url.as_str()).schema(schema.as_str()).open().await.unwrap();
        let e = NewEvent::json(a.clone(), "T", &1).unwrap();
        store.put_state_and_events(Commit::events_only().event(e)).await.unwrap();
    }
    let ro =
        PostgresStore::options(url.as_str()).schema(schema.as_str()).read_only(true).open().await.unwrap();
    assert_eq!(ro.list_pending(10).await.unwrap().len(), 1);
    let commit = Commit::events_only().event(NewEvent::json(a, "T", &2).unwrap());
    assert_eq!(ro.put_state_and_events(commit).await.unwrap_err().kind(), ErrorKind::PermissionDenied);
    let lead = ro.acquire_leadership("x", Duration::from_secs(5)).await;
    assert_eq!(lead.unwrap_err().kind(), ErrorKind::PermissionDenied);
    assert_eq!(ro.stats().await.unwrap().pending, 1, "nothing was written");
}

#[tokio::test(flavor = "multi_thread")]
async fn read_only_creates_no_schema_and_refuses_a_newer_one() {
    let Some(url) = url("read_only_creates_no_schema_and_refuses_a_newer_one") else { return };
    let schema = fresh_schema();
    let err = PostgresStore::options(url.as_str())
        .schema(schema.as_str())
        .read_only(true)
        .open()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupted, "not an outbox schema");
    assert_eq!(schema_count(&url, &schema).await, 0, "the schema was not created");

    drop(PostgresStore::options(url.as_str()).schema(schema.as_str()).open().await.unwrap());
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    let driver = tokio::spawn(conn);
    client.batch_execute(&format!("UPDATE \"{schema}\".outbox_schema SET version = 99")).await.unwrap();
    let err = PostgresStore::options(url.as_str())
        .schema(schema.as_str())
        .read_only(true)
        .open()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SchemaTooNew);
    let v: i32 = client
        .query_one(&format!("SELECT version FROM \"{schema}\".outbox_schema"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 99, "left as it was");
    client.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE")).await.unwrap();
    drop(client);
    let _ = driver.await;
}
