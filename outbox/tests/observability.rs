//! What an operator sees: the Prometheus exporter's text output follows
//! the conventions (base units, `_total` counters, HELP and TYPE lines,
//! counters at 0 from the start), and one W3C trace runs from an actor's
//! commit through the forwarder and a consumer to what the consumer emits.
#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is the test failing

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use metrics_exporter_prometheus::PrometheusBuilder;
use outbox::consumer::{Handler, HandlerError, Tx, once_per_event};
use outbox::prelude::*;
use outbox::trace::{self, TraceParent};
use outbox::{
    Actor, ActorId, Commit, ConsumerId, Context, Envelope, MemoryStore, NewEvent, OutboxConfig, StoreChoice,
    async_trait, configure_outbox,
};
use outbox_forwarder::{ChannelSink, Forwarder, ForwarderConfig};
use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};

/// The shipping service's handler: for each order it requests a shipment
/// (an event committed with its inbox mark) and reports the order; a
/// `BAD` event can never be handled.
struct Shipping {
    seen: mpsc::UnboundedSender<Envelope>,
}

#[async_trait]
impl Handler for Shipping {
    async fn handle(&self, e: &Envelope, tx: &mut Tx<'_>) -> Result<(), HandlerError> {
        if e.event_type == "BAD" {
            return Err(HandlerError::NonRetriable("not an order".into()));
        }
        tx.emit(NewEvent::json(ActorId::new("shipping")?, "SHIPMENT_REQUESTED", &e.id.to_string())?);
        let _ = self.seen.send(e.clone());
        Ok(())
    }
}

// ---------------------------------------------------------------------
// Prometheus
// ---------------------------------------------------------------------

/// One metric family of the exposition text.
#[derive(Debug, Default)]
struct Family {
    kind: Option<String>,
    help: bool,
    /// (sample name, labels, value)
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap();
            (k.to_owned(), v.trim_matches('"').to_owned())
        })
        .collect()
}

/// Families by name. Every sample line must follow its family's `# TYPE`.
fn parse_exposition(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _) = rest.split_once(' ').unwrap();
            families.entry(name.to_owned()).or_default().help = true;
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            families.entry(name.to_owned()).or_default().kind = Some(kind.to_owned());
            current = Some(name.to_owned());
        } else {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, parse_labels(l.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            let family = current.clone().unwrap_or_else(|| panic!("{name}: a sample before any # TYPE"));
            assert!(
                [
                    family.clone(),
                    format!("{family}_sum"),
                    format!("{family}_count"),
                    format!("{family}_bucket")
                ]
                .contains(&name.to_owned()),
                "{name} follows the # TYPE of {family}"
            );
            families.get_mut(&family).unwrap().samples.push((
                name.to_owned(),
                labels,
                value.parse().unwrap(),
            ));
        }
    }
    families
}

/// Runs an outbox that delivers three orders to a consumer and
/// dead-letters one event, and renders the exporter's text.
async fn render_after_a_run(builder: PrometheusBuilder) -> String {
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    // This thread's recorder (the forwarder runs on this current-thread
    // runtime): tests in parallel do not share it.
    let _local = metrics::set_default_local_recorder(&recorder);

    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let (dead_tx, mut dead) = mpsc::unbounded_channel();
    let consumer_store: Arc<dyn DurableStore> = Arc::new(MemoryStore::new());
    let consumer =
        once_per_event(consumer_store, ConsumerId::new("shipping").unwrap(), Shipping { seen: seen_tx });
    let config = OutboxConfig::default().store(StoreChoice::Memory).on_error(move |e, _| {
        if let Some(e) = e {
            let _ = dead_tx.send(e.id);
        }
    });
    let outbox = configure_outbox(config, Arc::new(consumer)).await.unwrap();
    let shop = ActorId::new("shop").unwrap();
    let mut commit = Commit::events_only();
    for i in 0..3 {
        commit = commit.event(NewEvent::json(shop.clone(), "ORDER_PLACED", &i).unwrap());
    }
    commit = commit.event(NewEvent::json(ActorId::new("prankster").unwrap(), "BAD", &0).unwrap());
    outbox.commit(commit).await.unwrap();
    for _ in 0..3 {
        seen.recv().await.unwrap();
    }
    dead.recv().await.unwrap();
    // The cycle in flight finishes (its flush duration recorded).
    outbox.shutdown().await;
    handle.render()
}

fn check_conventions(text: &str) -> BTreeSet<String> {
    let families = parse_exposition(text);
    let ours: BTreeMap<&String, &Family> =
        families.iter().filter(|(n, _)| n.starts_with("outbox_")).collect();
    for (name, f) in &ours {
        assert!(f.help, "{name} has a # HELP line:\n{text}");
        let kind = f.kind.as_deref().unwrap_or_else(|| panic!("{name} has a # TYPE line"));
        assert!(!f.samples.is_empty(), "{name} has samples");
        assert_eq!(
            kind == "counter",
            name.ends_with("_total"),
            "{name} ({kind}): counters, and only they, end in _total"
        );
        assert!(!name.contains("_ms") && !name.contains("millis"), "{name}: base units");
        assert!(!name.contains("_total_") && !name.ends_with("_total_total"), "{name}: one suffix");
    }
    let expected: BTreeMap<&str, &[&str]> = [
        ("outbox_pending", &["gauge"][..]),
        ("outbox_durable", &["gauge"]),
        ("outbox_lag_seconds", &["gauge"]),
        ("outbox_blocked_keys", &["gauge"]),
        ("outbox_circuit_open", &["gauge"]),
        ("outbox_flush_seconds", &["summary", "histogram"]),
        ("outbox_delivered_total", &["counter"]),
        ("outbox_failed_total", &["counter"]),
        ("outbox_dead_lettered_total", &["counter"]),
        ("outbox_consumer_applied_total", &["counter"]),
        ("outbox_consumer_duplicates_total", &["counter"]),
        ("outbox_consumer_expired_total", &["counter"]),
    ]
    .into_iter()
    .collect();
    let names: BTreeSet<String> = ours.keys().map(|n| n.to_string()).collect();
    assert_eq!(names, expected.keys().map(|n| n.to_string()).collect(), "the outbox's metrics:\n{text}");
    for (name, kinds) in &expected {
        let kind = ours[&name.to_string()].kind.as_deref().unwrap();
        assert!(kinds.contains(&kind), "{name} is a {kind}");
    }

    let value = |family: &str, sample: &str, labels: &[(&str, &str)]| -> Vec<f64> {
        ours[&family.to_string()]
            .samples
            .iter()
            .filter(|(n, l, _)| {
                n == sample && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| *v)
            .collect()
    };
    let delivered = "outbox_delivered_total";
    assert_eq!(
        value(delivered, delivered, &[("sink", "consumer"), ("event_type", "ORDER_PLACED")]),
        vec![3.0]
    );
    let dead = "outbox_dead_lettered_total";
    assert_eq!(value(dead, dead, &[("sink", "consumer"), ("event_type", "BAD")]), vec![1.0]);
    // Nothing failed retriably, no duplicate, nothing expired: present at 0.
    let failed = "outbox_failed_total";
    assert_eq!(value(failed, failed, &[("sink", "consumer")]), vec![0.0], "present at 0 before any failure");
    for c in ["outbox_consumer_duplicates_total", "outbox_consumer_expired_total"] {
        assert_eq!(value(c, c, &[("consumer", "shipping")]), vec![0.0], "{c} present at 0");
    }
    let applied = "outbox_consumer_applied_total";
    assert_eq!(value(applied, applied, &[("consumer", "shipping")]), vec![3.0]);
    assert_eq!(value("outbox_durable", "outbox_durable", &[]), vec![0.0], "a memory store");
    assert_eq!(value("outbox_circuit_open", "outbox_circuit_open", &[("sink", "consumer")]), vec![0.0]);
    let flushes = value("outbox_flush_seconds", "outbox_flush_seconds_count", &[("sink", "consumer")]);
    assert!(flushes.len() == 1 && flushes[0] >= 1.0, "flush durations recorded: {flushes:?}");
    let flush_sum = value("outbox_flush_seconds", "outbox_flush_seconds_sum", &[("sink", "consumer")]);
    assert!(flush_sum[0] < 60.0, "seconds, not milliseconds: {flush_sum:?}");
    names
}

#[tokio::test(flavor = "current_thread")]
async fn prometheus_output_follows_conventions() {
    spans();
    let plain = check_conventions(&render_after_a_run(PrometheusBuilder::new()).await);
    // The exporter's "recommended naming" (it appends `_total` and unit
    // suffixes where missing) finds nothing to add.
    let recommended =
        check_conventions(&render_after_a_run(PrometheusBuilder::new().with_recommended_naming(true)).await);
    assert_eq!(plain, recommended);
}

// ---------------------------------------------------------------------
// Tracing
// ---------------------------------------------------------------------

/// A span as recorded: its name and fields.
#[derive(Clone, Debug, Default)]
struct SpanRecord {
    name: String,
    fields: HashMap<String, String>,
}

/// Records every span and its fields (span ids are reused after a span
/// closes: the latest record of an id is the live one).
#[derive(Clone, Default)]
struct Spans {
    records: Arc<Mutex<Vec<SpanRecord>>>,
    live: Arc<Mutex<HashMap<u64, usize>>>,
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber> Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: LayerContext<'_, S>) {
        let mut r = SpanRecord { name: attrs.metadata().name().to_owned(), fields: HashMap::new() };
        attrs.record(&mut Fields(&mut r.fields));
        let mut records = self.records.lock().unwrap();
        records.push(r);
        self.live.lock().unwrap().insert(id.into_u64(), records.len() - 1);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: LayerContext<'_, S>) {
        let i = self.live.lock().unwrap().get(&id.into_u64()).copied();
        if let Some(i) = i {
            values.record(&mut Fields(&mut self.records.lock().unwrap()[i].fields));
        }
    }
}

/// The process's span recorder, installed as the global subscriber before
/// any test of this file runs outbox code. (A subscriber set per thread is
/// not enough: `tracing` caches a callsite's interest process-wide, and a
/// callsite first hit on another test's thread, which has no subscriber,
/// would be cached as uninteresting.) The tests tell their spans apart by
/// event and trace ids.
fn spans() -> &'static Spans {
    static SPANS: OnceLock<Spans> = OnceLock::new();
    SPANS.get_or_init(|| {
        let spans = Spans::default();
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(spans.clone())).unwrap();
        spans
    })
}

impl Spans {
    /// The one span named `name` whose `field` is `value`.
    fn find(&self, name: &str, field: &str, value: &str) -> SpanRecord {
        let found: Vec<SpanRecord> = self
            .records
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.name == name && r.fields.get(field).map(String::as_str) == Some(value))
            .cloned()
            .collect();
        assert_eq!(found.len(), 1, "one {name} span with {field} = {value}: {found:?}");
        found.into_iter().next().unwrap()
    }
}

/// Places orders: each message is an order id, emitted as ORDER_PLACED.
struct Shop;

#[async_trait]
impl Actor for Shop {
    type State = Vec<String>;
    type Message = String;
    type Error = std::convert::Infallible;

    async fn handle(
        &mut self,
        orders: &mut Vec<String>,
        order: String,
        ctx: &mut Context,
    ) -> Result<(), Self::Error> {
        ctx.emit("ORDER_PLACED", &order);
        orders.push(order);
        Ok(())
    }
}

/// Checks one chain: the order's event (committed by the actor), its
/// publish, the consumer's handling, the follow-up event and its publish
/// all carry the same trace id, each with a span id of its own. Returns
/// the trace id.
fn check_chain(
    spans: &Spans,
    order: &Envelope,
    follow_ups: &[Envelope],
    expected: Option<TraceParent>,
) -> [u8; 16] {
    let header = order.trace_parent().expect("the actor's event carries a traceparent");
    let trace_id = header.trace_id_hex();
    if let Some(incoming) = expected {
        assert_eq!(header.trace_id(), incoming.trace_id(), "the trace current where send was called");
    }
    let handle = spans
        .records
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.name == "outbox.handle" && r.fields.get("trace_id") == Some(&trace_id))
        .count();
    assert_eq!(handle, 1, "the actor handled the message in the trace");
    let publish = spans.find("outbox.publish", "event_id", &order.id.to_string());
    assert_eq!(publish.fields["trace_id"], trace_id, "the forwarder continues the trace");
    assert_eq!(publish.fields["parent_id"], header.span_id_hex(), "a child of the event's span");
    assert_eq!(publish.fields["event_type"], "ORDER_PLACED");
    assert_eq!(publish.fields["attempt"], "1");
    assert_eq!(publish.fields["outcome"], "ok");
    let consume = spans.find("outbox.consume", "event_id", &order.id.to_string());
    assert_eq!(consume.fields["trace_id"], trace_id, "the consumer continues the trace");
    assert_eq!(consume.fields["parent_id"], header.span_id_hex());
    assert_eq!(consume.fields["delivery"], "applied");
    let follow_up = follow_ups
        .iter()
        .find(|f| f.payload.decode_json::<String>().unwrap() == order.id.to_string())
        .expect("the consumer's follow-up");
    let follow_header = follow_up.trace_parent().expect("the follow-up carries a traceparent");
    assert_eq!(follow_header.trace_id_hex(), trace_id, "what the consumer emits stays in the trace");
    let follow_publish = spans.find("outbox.publish", "event_id", &follow_up.id.to_string());
    assert_eq!(follow_publish.fields["trace_id"], trace_id, "and beyond");
    assert_eq!(follow_publish.fields["parent_id"], follow_header.span_id_hex());

    let span_ids: HashSet<String> = [
        header.span_id_hex(),
        publish.fields["span_id"].clone(),
        consume.fields["span_id"].clone(),
        follow_header.span_id_hex(),
        follow_publish.fields["span_id"].clone(),
    ]
    .into_iter()
    .chain(expected.map(|t| t.span_id_hex()))
    .collect();
    assert_eq!(span_ids.len(), 5 + usize::from(expected.is_some()), "distinct span ids: {span_ids:?}");
    for id in &span_ids {
        assert!(id.len() == 16 && id != "0000000000000000", "{id}");
    }
    header.trace_id()
}

#[tokio::test(flavor = "current_thread")]
async fn one_trace_from_commit_to_consumer() {
    let spans = spans();

    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let shipping_store: Arc<dyn DurableStore> = Arc::new(MemoryStore::new());
    let shipping = once_per_event(
        shipping_store.clone(),
        ConsumerId::new("shipping").unwrap(),
        Shipping { seen: seen_tx },
    );
    let outbox = configure_outbox(OutboxConfig::default().store(StoreChoice::Memory), Arc::new(shipping))
        .await
        .unwrap();
    let shop = outbox.spawn_actor(ActorId::new("shop").unwrap(), Shop).await.unwrap();

    // A request came in with a trace context; the order is placed in it.
    let incoming = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
    trace::in_trace(incoming, shop.send("order-1".into())).await.unwrap();
    // No trace current: send starts one.
    assert_eq!(trace::current(), None);
    shop.send("order-2".into()).await.unwrap();

    let first = seen.recv().await.unwrap();
    let second = seen.recv().await.unwrap();
    assert_eq!(first.payload.decode_json::<String>().unwrap(), "order-1");
    // The deliveries in flight finish: the consumer's commits are in.
    outbox.shutdown().await;

    // The shipping service forwards what its handler emitted.
    let (sink, mut delivered) = ChannelSink::new();
    let mut forwarder = Forwarder::new(shipping_store, sink, ForwarderConfig::default());
    assert_eq!(forwarder.run_once().await.unwrap().delivered, 2);
    let follow_ups: Vec<Envelope> = std::iter::from_fn(|| delivered.try_recv().ok()).collect();

    let one = check_chain(spans, &first, &follow_ups, Some(incoming));
    let two = check_chain(spans, &second, &follow_ups, None);
    assert_ne!(one, two, "a send outside any trace starts a new one");
    assert!(
        spans.records.lock().unwrap().iter().any(|r| r.name == "outbox.cycle"),
        "a span per forwarder cycle"
    );
}
