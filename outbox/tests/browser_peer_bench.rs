//! The browser bench beside the TanStack kit (`scripts/browser-peer-bench.sh`
//! runs both in one go, in the same Chromium): the kit's scenarios 1 and 2
//! on the outbox, with the same N and the same kind of sink.
//!
//! - **Offline commit latency**: N commits one after another, each the
//!   state of its own actor (a todo item) and its event in one IndexedDB
//!   transaction, at the store's default durability hint (relaxed, which
//!   is Chromium's default, the one the kit's library gets); latency from
//!   the call to the commit's `Ok`.
//! - **Reconnect drain**: the forwarder starts over the N committed events
//!   (the browser back online), into an in-page sink that resolves at once,
//!   and into the HTTP test server (`OUTBOX_HTTP_TEST_URL` at build time,
//!   batched POSTs); time from the start to the first delivery and to the
//!   last event acknowledged.
//!
//! Prints `PEER ...` lines; `N` comes from `BENCH_PEER_N` at build time
//! (default 1,000). Not part of the test suite (it is not run by
//! `scripts/test-browser.sh`).
#![cfg(target_arch = "wasm32")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use outbox::prelude::*;
use outbox::{
    ActorId, Commit, Envelope, ForwarderConfig, IdbStore, NewEvent, Outcome, Sink, Version, async_trait,
};
use outbox_forwarder::Forwarder;
use wasm_bindgen_test::{console_log, wasm_bindgen_test};

wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

const N: u32 = match option_env!("BENCH_PEER_N") {
    Some(s) => parse_u32(s),
    None => 1_000,
};

const fn parse_u32(s: &str) -> u32 {
    let (b, mut i, mut n) = (s.as_bytes(), 0, 0u32);
    while i < b.len() {
        n = n * 10 + (b[i] - b'0') as u32;
        i += 1;
    }
    n
}

fn now_ms() -> f64 {
    web_sys::window().and_then(|w| w.performance()).map_or_else(js_sys::Date::now, |p| p.now())
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", outbox::EventId::new())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// N todo items committed one after another: each its actor's state and
/// its event, in one transaction. Returns the store and the latencies.
async fn enqueue(name: &str) -> (Arc<IdbStore>, Vec<f64>) {
    let store = Arc::new(IdbStore::open(name).await.expect("open"));
    let mut lat = Vec::with_capacity(N as usize);
    for i in 0..N {
        let actor = ActorId::new(format!("todo-{i}")).expect("actor");
        let item = serde_json::json!({ "id": i, "title": format!("item {i}"), "done": false });
        let state = serde_json::to_vec(&item).expect("state");
        let event = NewEvent::json(actor.clone(), "todo.inserted", &item).expect("event");
        let t = now_ms();
        store
            .put_state_and_events(Commit::state(actor, Version(0), state).event(event))
            .await
            .expect("commit");
        lat.push(now_ms() - t);
    }
    (store, lat)
}

/// Counts what it is given, and when it first was.
#[derive(Debug)]
struct Counting {
    inner: Option<outbox_sink_http::HttpSink>,
    t0: f64,
    first: Cell<Option<f64>>,
    seen: Rc<Cell<u32>>,
}

#[async_trait]
impl Sink for Counting {
    async fn publish(&self, batch: &[Envelope]) -> Vec<Outcome> {
        if self.first.get().is_none() {
            self.first.set(Some(now_ms() - self.t0));
        }
        self.seen.set(self.seen.get() + batch.len() as u32);
        match &self.inner {
            Some(http) => http.publish(batch).await,
            None => batch.iter().map(|_| Outcome::Ok).collect(),
        }
    }
}

/// Starts the forwarder over the backlog; returns (first delivery ms,
/// all acknowledged ms, events delivered, events handed to the sink).
async fn drain(store: Arc<IdbStore>, http: Option<outbox_sink_http::HttpSink>) -> (f64, f64, u64, u32) {
    let seen = Rc::new(Cell::new(0));
    let t0 = now_ms();
    let sink = Arc::new(Counting { inner: http, t0, first: Cell::new(None), seen: seen.clone() });
    // As the browser's forwarder runs it: holding the origin's Web Lock.
    let mut fwd = Forwarder::new(store.clone(), sink.clone(), ForwarderConfig::default().exclusive(true));
    fwd.waker().notify_online();
    let mut delivered = 0u64;
    loop {
        let r = fwd.run_once().await.expect("cycle");
        delivered += r.delivered as u64;
        if r.claimed == 0 {
            break;
        }
    }
    let all = now_ms() - t0;
    fwd.step_down().await;
    (sink.first.get().unwrap_or(f64::NAN), all, delivered, seen.get())
}

#[wasm_bindgen_test]
async fn peer_scenarios() {
    let (store, mut lat) = enqueue(&unique("peer-local")).await;
    lat.sort_by(f64::total_cmp);
    console_log!(
        "PEER commit: N={N} p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (state + event in one transaction, relaxed)",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat[lat.len() - 1]
    );
    let (first, all, delivered, seen) = drain(store, None).await;
    assert_eq!(delivered, u64::from(N), "every event delivered");
    console_log!(
        "PEER drain local: N={N} first delivery {first:.1} ms, all acknowledged {all:.1} ms, {:.0} events/s, handed to the sink {seen}",
        f64::from(N) / (all / 1e3)
    );
    match option_env!("OUTBOX_HTTP_TEST_URL") {
        Some(url) => {
            let (store, _) = enqueue(&unique("peer-http")).await;
            let http = outbox_sink_http::HttpSink::builder(format!("{url}/status/200"))
                .batch(true)
                .build()
                .expect("sink");
            let (first, all, delivered, seen) = drain(store, Some(http)).await;
            assert_eq!(delivered, u64::from(N), "every event delivered");
            console_log!(
                "PEER drain http: N={N} first delivery {first:.1} ms, all acknowledged {all:.1} ms, {:.0} events/s, handed to the sink {seen}",
                f64::from(N) / (all / 1e3)
            );
        }
        None => console_log!("PEER drain http: skipped (OUTBOX_HTTP_TEST_URL was not set at build time)"),
    }
}
