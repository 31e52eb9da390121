//! TLS to a real server (`scripts/servers.sh start` runs PostgreSQL with
//! `ssl=on` and a certificate for `localhost` signed by a CA it makes):
//! `sslmode=verify-full` commits, claims and acks over TLS, on every
//! connection the store opens; a certificate from another CA or for
//! another host name is refused at once with `PermissionDenied`.
//!
//! Needs `OUTBOX_PG_TLS_URL` (and `OUTBOX_PG_URL`, to look at the
//! server's sessions); without them each test says SKIPPED and passes.
#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is the test failing

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use outbox_core::prelude::*;
use outbox_core::{ActorId, ClaimRequest, Commit, ErrorKind, NewEvent, Version};
use outbox_store_postgres::PostgresStore;

/// A CA that signed nothing the server holds.
const OTHER_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBnTCCAUOgAwIBAgIUMXYYFHB4Fwfhk2Dz6LdeY2w+PUMwCgYIKoZIzj0EAwIw
IzEhMB8GA1UEAwwYb3V0Ym94IHVucmVsYXRlZCB0ZXN0IENBMCAXDTI2MTIwMjA4
NDQxMVoYDzIxMjYxMTA4MDg0NDExWjAjMSEwHwYDVQQDDBhvdXRib3ggdW5yZWxh
dGVkIHRlc3QgQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAASzB5F8VMwgRGmD
2fG49fTi0Xw/i3pI/2Ipbo6PJlWl3afMBL099N5DleWIMOctlPWCleEbbbOzVtE0
QPgqjmJ+o1MwUTAdBgNVHQ4EFgQUWMVJqJVMWJuCt5ER+hc7WeO8PNYwHwYDVR0j
BBgwFoAUWMVJqJVMWJuCt5ER+hc7WeO8PNYwDwYDVR0TAQH/BAUwAwEB/zAKBggq
hkjOPQQDAgNIADBFAiBc9+8cKePUy5+RqWrUBKZ04+QoRvu6X6URMopjp6+aZAIh
AJ3W+1KLZOviYwfrZO+wv0g+vCFapnejRoV1VlgX4ArG
-----END CERTIFICATE-----
";

/// A refused handshake must fail well within this (no retry loop, no hang).
const QUICK: Duration = Duration::from_secs(10);

fn urls(test: &str) -> Option<(String, String)> {
    let ok = outbox_testkit::required(Some("OUTBOX_PG_TLS_URL"), test)
        && outbox_testkit::required(Some("OUTBOX_PG_URL"), test);
    ok.then(|| (std::env::var("OUTBOX_PG_TLS_URL").unwrap(), std::env::var("OUTBOX_PG_URL").unwrap()))
}

static NEXT: AtomicU64 = AtomicU64::new(0);

fn tag(t: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{t}_{}_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed), nanos % 1_000_000_007)
}

#[tokio::test]
async fn tls_verify_full_commits_claims_and_acks() {
    let Some((tls_url, plain_url)) = urls("tls_verify_full_commits_claims_and_acks") else { return };
    let app = tag("tls_app");
    let url = format!("{tls_url} application_name={app}");
    let store = PostgresStore::options(&url).schema(tag("tls")).open().await.unwrap();
    let woken = std::sync::Arc::new(tokio::sync::Notify::new());
    let listener = {
        let woken = woken.clone();
        store.listen(move || woken.notify_one()).await.unwrap()
    };

    let actor = ActorId::new("tls-order").unwrap();
    let event = NewEvent::json(actor.clone(), "PLACED", &serde_json::json!({"n": 1})).unwrap();
    let id = event.id;
    store
        .put_state_and_events(Commit::state(actor, Version::NONE, b"{}".to_vec()).event(event))
        .await
        .unwrap();
    // The commit's NOTIFY went out, and came back, over TLS.
    tokio::time::timeout(QUICK, woken.notified()).await.expect("a wake-up over the TLS LISTEN connection");

    let grant = store.acquire_leadership("tls", Duration::from_secs(30)).await.unwrap().unwrap();
    let claimed = store.claim(&grant, ClaimRequest::new(10, Duration::from_secs(30))).await.unwrap();
    assert_eq!(claimed.iter().map(|e| e.id).collect::<Vec<_>>(), vec![id]);
    store.ack(&grant, &[id]).await.unwrap();
    assert_eq!(store.stats().await.unwrap().delivered, 1);

    // Every session the store holds open (pool, listener, notifier) is
    // encrypted.
    let (admin, conn) = tokio_postgres::connect(&plain_url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let row = admin
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE s.ssl)
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = $1",
            &[&app],
        )
        .await
        .unwrap();
    let (sessions, encrypted): (i64, i64) = (row.get(0), row.get(1));
    assert!(sessions >= 3, "pool, listener and notifier sessions: {sessions}");
    assert_eq!(encrypted, sessions, "every session is TLS");
    drop(listener);
}

/// The server's certificate is signed by a CA the client does not trust:
/// `PermissionDenied`, not retryable, at once.
#[tokio::test]
async fn tls_wrong_ca_is_permission_denied() {
    let Some((tls_url, _)) = urls("tls_wrong_ca_is_permission_denied") else { return };
    let ca = std::env::temp_dir().join(format!("{}.pem", tag("outbox_other_ca")));
    std::fs::write(&ca, OTHER_CA).unwrap();
    // A later `sslrootcert` replaces the URL's.
    let url = format!("{tls_url} sslrootcert={}", ca.display());
    let opened = tokio::time::timeout(QUICK, PostgresStore::options(&url).schema(tag("tls_ca")).open()).await;
    std::fs::remove_file(&ca).unwrap();
    let err = opened.expect("refused at once, not retried").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(!err.is_retryable());
}

/// The certificate is for `localhost`; connecting by the address checks
/// it against `127.0.0.1`: `verify-full` refuses it with
/// `PermissionDenied`, `verify-ca` (which does not check the name)
/// accepts it.
#[tokio::test]
async fn tls_wrong_host_name_is_permission_denied() {
    let Some((tls_url, _)) = urls("tls_wrong_host_name_is_permission_denied") else { return };
    assert!(tls_url.contains("host=localhost "), "the script's URL names the host: {tls_url}");
    let by_address = tls_url.replace("host=localhost ", "host=127.0.0.1 ");
    let opened =
        tokio::time::timeout(QUICK, PostgresStore::options(&by_address).schema(tag("tls_name")).open()).await;
    let err = opened.expect("refused at once, not retried").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(!err.is_retryable());

    let ca_only = format!("{by_address} sslmode=verify-ca");
    let store = PostgresStore::options(&ca_only).schema(tag("tls_ca_only")).open().await.unwrap();
    assert_eq!(store.stats().await.unwrap().pending, 0);
}
