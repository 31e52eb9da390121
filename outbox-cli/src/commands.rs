//! The commands, over `Arc<dyn DurableStore>`: nothing here knows which
//! backend it reads.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use outbox_core::prelude::*;
use outbox_core::{
    ActorId, Clock, ConsumerId, DurableStore, Envelope, EventId, EventStatus, StoreStats, SystemClock,
    Timestamp,
};
use serde_json::{Value, json};

use crate::Failure;
use crate::open::{Target, open_store};
use crate::view::{self, Filter, Table, clip, event_json, relative, rfc3339, short};

/// Where results go: human tables, or one JSON object per line.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Out {
    /// One JSON object per line.
    pub(crate) json: bool,
}

impl Out {
    /// Prints one JSON object on its own line.
    fn obj(&self, v: &Value) {
        println_flush(&v.to_string());
    }

    /// Prints human text as it is.
    fn text(&self, s: &str) {
        print!("{s}");
        let _ = std::io::stdout().flush();
    }
}

fn println_flush(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{s}");
    let _ = out.flush();
}

/// The time now, by the system clock.
pub(crate) fn now() -> Timestamp {
    SystemClock.now()
}

/// The counts as a JSON object.
pub(crate) fn stats_json(target: &Target, s: &StoreStats, now: Timestamp) -> Value {
    json!({
        "store": target.shown(),
        "pending": s.pending,
        "in_flight": s.in_flight,
        "dead": s.dead,
        "parked_keys": s.parked_keys,
        "delivered": s.delivered,
        "discarded": s.discarded,
        "oldest_pending_at": s.oldest_pending_at.map(|t| t.as_millis()),
        "oldest_pending_age_ms": s.oldest_pending_at.map(|t| now.duration_since(t).as_millis() as u64),
    })
}

/// `outbox stats`.
pub(crate) async fn stats(out: &Out, target: Target) -> Result<(), Failure> {
    let store = open_store(&target, true).await?;
    let s = store.stats().await?;
    print_stats(out, &target, &s);
    Ok(())
}

fn print_stats(out: &Out, target: &Target, s: &StoreStats) {
    let now = now();
    if out.json {
        out.obj(&stats_json(target, s, now));
        return;
    }
    let oldest =
        s.oldest_pending_at.map(|t| format!(", oldest committed {}", relative(t, now))).unwrap_or_default();
    let mut t = Table::new(&["STATUS", "COUNT", ""]);
    t.row(vec!["pending".into(), s.pending.to_string(), format!("{} in flight{oldest}", s.in_flight)]);
    t.row(vec![
        "dead".into(),
        s.dead.to_string(),
        format!("{} keys parked behind a dead event", s.parked_keys),
    ]);
    t.row(vec!["delivered".into(), s.delivered.to_string(), "until pruned".into()]);
    t.row(vec!["discarded".into(), s.discarded.to_string(), "until pruned".into()]);
    out.text(&format!("{}\n{}", target.shown(), t.render()));
}

/// `outbox inspect`: the counts and the first pending and dead events.
pub(crate) async fn inspect(out: &Out, target: Target) -> Result<(), Failure> {
    let store = open_store(&target, true).await?;
    let s = store.stats().await?;
    print_stats(out, &target, &s);
    for status in [EventStatus::Pending, EventStatus::Dead] {
        let page = view::page(store.as_ref(), status, &Filter::default(), None, 20).await?;
        if !out.json {
            out.text("\n");
        }
        print_page(out, store.as_ref(), &target, status, &page).await?;
    }
    Ok(())
}

/// `outbox list`.
pub(crate) async fn list(
    out: &Out,
    target: &Target,
    status: EventStatus,
    filter: &Filter,
    after: Option<EventId>,
    limit: usize,
) -> Result<(), Failure> {
    let store = open_store(target, true).await?;
    let page = match view::page(store.as_ref(), status, filter, after, limit).await {
        Err(e) if after.is_some() && e.kind() == outbox_core::ErrorKind::InvalidInput => {
            return Err(Failure::NotFound(e.to_string()));
        }
        r => r?,
    };
    print_page(out, store.as_ref(), target, status, &page).await
}

async fn print_page(
    out: &Out,
    store: &dyn DurableStore,
    target: &Target,
    status: EventStatus,
    page: &view::Page,
) -> Result<(), Failure> {
    let by_key =
        if status == EventStatus::Dead { view::pending_by_key(store).await? } else { HashMap::new() };
    let now = now();
    if out.json {
        for e in &page.events {
            out.obj(&view::event_json_full(store, e, status, &by_key, now).await?);
        }
        if let Some(next) = page.next {
            out.obj(&json!({ "more": page.more, "next_cursor": next.to_string() }));
        }
        return Ok(());
    }
    if page.events.is_empty() {
        out.text(&format!("no {status} events\n"));
        return Ok(());
    }
    let mut t = match status {
        EventStatus::Dead => {
            Table::new(&["DEAD", "TYPE", "KEY", "ORIGIN", "AGE", "ATTEMPTS", "HOLDS BACK", "LAST ERROR"])
        }
        EventStatus::Pending => {
            Table::new(&["PENDING", "TYPE", "KEY", "ORIGIN", "AGE", "ATTEMPTS", "NEXT ATTEMPT", "LAST ERROR"])
        }
        _ => Table::new(&[
            &status.as_str().to_uppercase(),
            "TYPE",
            "KEY",
            "ORIGIN",
            "AGE",
            "ATTEMPTS",
            "LAST ERROR",
        ]),
    };
    for e in &page.events {
        let mut row = vec![
            e.id.to_string(),
            clip(&e.event_type, 32),
            clip(e.key.as_str(), 24),
            clip(e.origin.as_str(), 24),
            short(now.duration_since(e.created_at)),
            e.attempts.to_string(),
        ];
        match status {
            EventStatus::Dead => {
                let v = view::event_json_full(store, e, status, &by_key, now).await?;
                row.push(if v["parks_key"] == json!(false) {
                    "skipped".into()
                } else {
                    format!("{} of its key", v["holds_back"])
                });
            }
            EventStatus::Pending if e.next_attempt_at <= now => row.push("due".into()),
            EventStatus::Pending => row.push(relative(e.next_attempt_at, now)),
            _ => {}
        }
        row.push(clip(e.last_error.as_deref().unwrap_or("-"), 60));
        t.row(row);
    }
    out.text(&t.render());
    if let Some(next) = page.next {
        out.text(&format!(
            "… {} more: outbox list {} --status {status} --after {next}\n",
            page.more,
            shell_word(&target.shown())
        ));
    }
    Ok(())
}

/// `s` quoted for a shell when it needs it.
fn shell_word(s: &str) -> String {
    if s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-:@+".contains(c)) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// An event as `show` reports it: [`view::event_json_full`] and, for a
/// pending event, how many unsettled events of its key come before it.
pub(crate) async fn event_detail(
    store: &dyn DurableStore,
    status: EventStatus,
    e: &Envelope,
) -> Result<Value, Failure> {
    let by_key = view::pending_by_key(store).await?;
    let mut v = view::event_json_full(store, e, status, &by_key, now()).await?;
    let extra = match status {
        EventStatus::Pending => {
            let earlier_pending =
                by_key.get(e.key.as_str()).map_or(0, |v| v.iter().take_while(|p| p.id != e.id).count());
            let earlier_dead = store
                .list_dead(usize::MAX)
                .await?
                .iter()
                .filter(|d| d.key == e.key && d.created_at <= e.created_at)
                .count();
            json!({ "waits_behind_pending": earlier_pending, "waits_behind_dead": earlier_dead })
        }
        _ => json!({}),
    };
    if let (Value::Object(m), Value::Object(x)) = (&mut v, extra) {
        m.extend(x);
    }
    Ok(v)
}

/// `outbox show ID`.
pub(crate) async fn show(out: &Out, target: Target, id: EventId) -> Result<(), Failure> {
    let store = open_store(&target, true).await?;
    let Some((status, e)) = store.find_event(id).await? else {
        return Err(Failure::NotFound(format!(
            "no event {id} in {} (never committed here, or pruned)",
            target.shown()
        )));
    };
    let ctx = event_detail(store.as_ref(), status, &e).await?;
    if out.json {
        out.obj(&ctx);
        return Ok(());
    }
    let now = now();
    let mut t = Table::new(&["FIELD", "VALUE"]);
    t.row(vec!["id".into(), e.id.to_string()]);
    t.row(vec!["status".into(), status.to_string()]);
    t.row(vec!["type".into(), e.event_type.clone()]);
    t.row(vec!["origin".into(), e.origin.to_string()]);
    t.row(vec!["key".into(), e.key.to_string()]);
    t.row(vec!["schema version".into(), e.schema_version.to_string()]);
    t.row(vec!["committed".into(), format!("{} ({})", rfc3339(e.created_at), relative(e.created_at, now))]);
    t.row(vec!["attempts".into(), e.attempts.to_string()]);
    if status == EventStatus::Pending {
        t.row(vec![
            "next attempt".into(),
            format!("{} ({})", rfc3339(e.next_attempt_at), relative(e.next_attempt_at, now)),
        ]);
    }
    if status == EventStatus::Pending || status == EventStatus::Dead {
        let lease = match ctx["lease_until"].as_i64().map(Timestamp::from_millis) {
            Some(t) if status == EventStatus::Pending && t > now => {
                format!("leased until {} ({}), in flight", rfc3339(t), relative(t, now))
            }
            Some(t) => format!("last lease ended {} ({})", rfc3339(t), relative(t, now)),
            None if ctx.get("lease_until").is_some() => "none".into(),
            None => "not kept by this store".into(),
        };
        t.row(vec!["lease".into(), lease]);
        let epoch = match ctx["claimed_epoch"].as_u64() {
            Some(ep) => format!("epoch {ep}"),
            None if ctx.get("claimed_epoch").is_some() => "-".into(),
            None => "not kept by this store".into(),
        };
        t.row(vec!["claimed by".into(), epoch]);
    }
    t.row(vec!["last error".into(), e.last_error.clone().unwrap_or_else(|| "-".into())]);
    match status {
        EventStatus::Dead if ctx["parks_key"] == json!(false) => t.row(vec![
            "parks".into(),
            format!("nothing: skipped, key {} flows past it (it can still be requeued)", e.key),
        ]),
        EventStatus::Dead => t.row(vec![
            "parks".into(),
            format!(
                "key {}: {} later pending events of it wait behind this one{}",
                e.key,
                ctx["holds_back"],
                if ctx["skipped"].is_null() { " (unless it was skipped)" } else { "" }
            ),
        ]),
        EventStatus::Pending => t.row(vec![
            "waits behind".into(),
            format!(
                "{} earlier pending and {} dead events of key {}",
                ctx["waits_behind_pending"], ctx["waits_behind_dead"], e.key
            ),
        ]),
        _ => {}
    }
    let headers = if e.headers.is_empty() {
        "-".to_owned()
    } else {
        e.headers.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ")
    };
    t.row(vec!["headers".into(), headers]);
    let payload = match view::payload_json(&e) {
        ("payload", v) => serde_json::to_string_pretty(&v).unwrap_or_default(),
        (_, Value::String(h)) => format!("{} bytes: {}", e.payload.len(), clip(&h, 200)),
        (_, v) => v.to_string(),
    };
    out.text(&t.render());
    out.text(&format!("payload:\n{payload}\n"));
    Ok(())
}

/// `outbox state ACTOR`.
pub(crate) async fn state(out: &Out, target: Target, actor: &str) -> Result<(), Failure> {
    let actor = ActorId::new(actor)?;
    let store = open_store(&target, true).await?;
    let Some(s) = store.load_state(&actor).await? else {
        return Err(Failure::NotFound(format!("actor {actor} has no committed state in {}", target.shown())));
    };
    let (field, snapshot) = match serde_json::from_slice::<Value>(&s.bytes) {
        Ok(v) => ("snapshot", v),
        Err(_) => ("snapshot_hex", Value::String(view::hex(&s.bytes))),
    };
    if out.json {
        let mut v = json!({
            "actor": actor.as_str(),
            "version": s.version.0,
            "updated_at": s.updated_at.as_millis(),
            "updated": rfc3339(s.updated_at),
            "bytes": s.bytes.len(),
        });
        v[field] = snapshot;
        out.obj(&v);
        return Ok(());
    }
    let mut t = Table::new(&["FIELD", "VALUE"]);
    t.row(vec!["actor".into(), actor.to_string()]);
    t.row(vec!["version".into(), s.version.0.to_string()]);
    t.row(vec!["committed".into(), format!("{} ({})", rfc3339(s.updated_at), relative(s.updated_at, now()))]);
    t.row(vec!["size".into(), format!("{} bytes", s.bytes.len())]);
    out.text(&t.render());
    let shown = match &snapshot {
        Value::String(h) if field == "snapshot_hex" => clip(h, 400),
        v => serde_json::to_string_pretty(v).unwrap_or_default(),
    };
    out.text(&format!("snapshot:\n{shown}\n"));
    Ok(())
}

/// `outbox inbox CONSUMER`: which events of this store carry the
/// consumer's mark (the contract looks marks up by event; marks for events
/// of other stores are not listed).
pub(crate) async fn inbox(out: &Out, target: Target, consumer: &str, limit: usize) -> Result<(), Failure> {
    let consumer = ConsumerId::new(consumer)?;
    let store = open_store(&target, true).await?;
    let mut marked = Vec::new();
    let mut total = 0usize;
    for status in EventStatus::ALL {
        for e in store.list_by_status(status, usize::MAX).await? {
            total += 1;
            if store.is_processed(&consumer, &e.origin, e.id).await? {
                marked.push((status, e));
            }
        }
    }
    let shown: Vec<_> = marked.iter().take(limit).collect();
    if out.json {
        for (status, e) in &shown {
            out.obj(&json!({
                "consumer": consumer.as_str(),
                "id": e.id.to_string(),
                "origin": e.origin.as_str(),
                "type": e.event_type,
                "status": status.as_str(),
            }));
        }
        if marked.len() > shown.len() {
            out.obj(&json!({ "more": marked.len() - shown.len() }));
        }
        return Ok(());
    }
    let mut t = Table::new(&["PROCESSED", "ORIGIN", "TYPE", "STATUS"]);
    for (status, e) in &shown {
        t.row(vec![e.id.to_string(), e.origin.to_string(), e.event_type.clone(), status.to_string()]);
    }
    if !t.is_empty() {
        out.text(&t.render());
    }
    if marked.len() > shown.len() {
        out.text(&format!("… {} more (--limit)\n", marked.len() - shown.len()));
    }
    out.text(&format!(
        "{} of the {total} events in {} carry {consumer}'s inbox mark\n",
        marked.len(),
        target.shown()
    ));
    Ok(())
}

/// What `watch` follows.
#[derive(Debug)]
pub(crate) struct Watch {
    /// The statuses shown.
    pub(crate) statuses: Vec<EventStatus>,
    /// The events shown.
    pub(crate) filter: Filter,
    /// How often the store is read.
    pub(crate) interval: Duration,
    /// Stop after this many lines.
    pub(crate) max_events: Option<usize>,
    /// Print only changes after the first read (`list --follow`: the list
    /// already showed the current events).
    pub(crate) skip_current: bool,
}

/// `outbox watch`: a line per event that appears or changes status.
pub(crate) async fn watch(out: &Out, target: &Target, w: Watch) -> Result<(), Failure> {
    let mut seen: HashMap<EventId, EventStatus> = HashMap::new();
    let mut printed = 0usize;
    let mut store: Option<Arc<dyn DurableStore>> = None;
    let mut first = true;
    let mut failures = 0u32;
    if !out.json && !w.skip_current {
        out.text(&format!("watching {} (every {}; Ctrl-C to stop)\n", target.shown(), short(w.interval)));
    }
    loop {
        let read = read_statuses(target, &mut store, &w.statuses).await;
        let events = match read {
            Ok(events) => {
                failures = 0;
                events
            }
            // The first read says whether the store can be watched at all;
            // later, a store that stops answering (a server restarting, a
            // file being replaced) is read again, a few times.
            Err(e) if !first && failures < WATCH_RETRIES => {
                failures += 1;
                drop(store.take());
                eprintln!("outbox: reading {} failed ({}), trying again", target.shown(), e.message());
                tokio::time::sleep(w.interval).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        for (status, e) in events {
            if !w.filter.matches(&e) {
                continue;
            }
            let before = seen.insert(e.id, status);
            if before == Some(status) || (first && w.skip_current) {
                continue;
            }
            print_change(out, &e, status, before);
            printed += 1;
            if w.max_events.is_some_and(|m| printed >= m) {
                return Ok(());
            }
        }
        first = false;
        tokio::time::sleep(w.interval).await;
    }
}

/// Failed reads in a row `watch` retries before it gives up.
const WATCH_RETRIES: u32 = 5;

/// Every event of `statuses`, read through `store` (opened if needed; a
/// snapshot is opened for this read only and let go after it).
async fn read_statuses(
    target: &Target,
    store: &mut Option<Arc<dyn DurableStore>>,
    statuses: &[EventStatus],
) -> Result<Vec<(EventStatus, Envelope)>, Failure> {
    let s = match store {
        Some(s) => s.clone(),
        None => {
            let s = open_store(target, true).await?;
            if !target.is_snapshot(true) {
                *store = Some(s.clone());
            }
            s
        }
    };
    let mut all = Vec::new();
    for &status in statuses {
        all.extend(s.list_by_status(status, usize::MAX).await?.into_iter().map(|e| (status, e)));
    }
    Ok(all)
}

fn print_change(out: &Out, e: &Envelope, status: EventStatus, before: Option<EventStatus>) {
    if out.json {
        let mut v = event_json(e, status);
        v["change"] = json!(if before.is_some() { "status" } else { "new" });
        if let Some(b) = before {
            v["from"] = json!(b.as_str());
        }
        out.obj(&v);
        return;
    }
    let change = match before {
        Some(b) => format!("{b} -> {status}"),
        None => status.to_string(),
    };
    let err = e.last_error.as_deref().map(|m| format!("  error: {}", clip(m, 80))).unwrap_or_default();
    println_flush(&format!(
        "{}  {:<20} {}  {}  key={} origin={} attempts={}{err}",
        rfc3339(now()),
        change,
        e.id,
        e.event_type,
        e.key,
        e.origin,
        e.attempts
    ));
}

/// Which dead events a command names.
#[derive(Debug)]
pub(crate) enum Which {
    /// These.
    Ids(Vec<EventId>),
    /// Every dead event.
    AllDead,
}

/// What a dead-letter command does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Back to pending.
    Requeue,
    /// Given up on.
    Discard,
    /// Its key flows past it.
    Skip,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Requeue => "requeue",
            Action::Discard => "discard",
            Action::Skip => "skip",
        }
    }

    fn done(self) -> &'static str {
        match self {
            Action::Requeue => "requeued",
            Action::Discard => "discarded",
            Action::Skip => "skipped",
        }
    }

    /// What the action does, said to the operator.
    fn effect(self) -> &'static str {
        match self {
            Action::Requeue => "back to pending, due now, each before its key's later events",
            Action::Discard => "kept as discarded until pruned, never delivered; their keys flow on",
            Action::Skip => "stay dead (requeueable) but no longer hold back their keys",
        }
    }

    /// Applies the action to `ids` in one store call (one transaction).
    pub(crate) async fn apply(self, store: &dyn DurableStore, ids: &[EventId]) -> outbox_core::Result<u64> {
        match self {
            Action::Requeue => store.requeue_dead(ids).await,
            Action::Discard => store.discard_dead(ids).await,
            Action::Skip => store.skip_dead(ids).await,
        }
    }
}

/// The dead events `which` names, or `NotFound` naming every id that is
/// not a dead event.
pub(crate) async fn resolve_dead(store: &dyn DurableStore, which: &Which) -> Result<Vec<Envelope>, Failure> {
    let dead = store.list_dead(usize::MAX).await?;
    match which {
        Which::AllDead => Ok(dead),
        Which::Ids(ids) => {
            let mut picked = Vec::new();
            let mut problems = Vec::new();
            for id in ids {
                if picked.iter().any(|e: &Envelope| e.id == *id) {
                    continue;
                }
                match dead.iter().find(|e| e.id == *id) {
                    Some(e) => picked.push(e.clone()),
                    None => problems.push(match store.find_event(*id).await? {
                        Some((status, _)) => format!("{id} is {status}, not dead"),
                        None => format!("{id} is not in the store"),
                    }),
                }
            }
            if problems.is_empty() {
                Ok(picked)
            } else {
                Err(Failure::NotFound(format!("nothing changed: {}", problems.join("; "))))
            }
        }
    }
}

/// `outbox requeue | discard | skip`: says what will change, then changes
/// it in one store call (or, with `dry_run`, reads only).
pub(crate) async fn dead_letters(
    out: &Out,
    target: Target,
    which: Which,
    action: Action,
    dry_run: bool,
) -> Result<(), Failure> {
    let store = open_store(&target, dry_run).await?;
    let events = resolve_dead(store.as_ref(), &which).await?;
    let by_key = view::pending_by_key(store.as_ref()).await?;
    let verb = action.verb();
    if out.json {
        for e in &events {
            out.obj(&json!({
                "action": verb,
                "dry_run": dry_run,
                "id": e.id.to_string(),
                "type": e.event_type,
                "key": e.key.as_str(),
                "holds_back": view::waiting_behind(e, &by_key),
                "last_error": e.last_error,
            }));
        }
    } else if events.is_empty() {
        out.text(&format!("no dead events to {verb}\n"));
    } else {
        out.text(&format!(
            "{} {} dead event{} ({}):\n",
            if dry_run { "would" } else { "will" },
            verb,
            if events.len() == 1 { "" } else { "s" },
            action.effect()
        ));
        let mut t = Table::new(&["ID", "TYPE", "KEY", "HOLDS BACK", "LAST ERROR"]);
        for e in &events {
            t.row(vec![
                e.id.to_string(),
                clip(&e.event_type, 32),
                clip(e.key.as_str(), 24),
                view::waiting_behind(e, &by_key).to_string(),
                clip(e.last_error.as_deref().unwrap_or("-"), 60),
            ]);
        }
        out.text(&t.render());
    }
    if dry_run {
        if out.json {
            out.obj(&json!({ "action": verb, "dry_run": true, "would_change": events.len() }));
        } else {
            out.text("dry run: nothing changed\n");
        }
        return Ok(());
    }
    let ids: Vec<EventId> = events.iter().map(|e| e.id).collect();
    let changed = if ids.is_empty() { 0 } else { action.apply(store.as_ref(), &ids).await? };
    if out.json {
        out.obj(&json!({ "action": verb, "dry_run": false, "changed": changed }));
    } else {
        out.text(&format!("{} {changed} event{}\n", action.done(), if changed == 1 { "" } else { "s" }));
    }
    // Skipping an event skipped before changes nothing, and is fine; a
    // requeue or discard that moved fewer than planned met a concurrent
    // change.
    if action != Action::Skip && (changed as usize) < ids.len() {
        return Err(Failure::NotFound(format!(
            "{} of {} events were no longer dead when the change was made",
            ids.len() - changed as usize,
            ids.len()
        )));
    }
    Ok(())
}

/// `outbox prune`.
pub(crate) async fn prune(
    out: &Out,
    target: Target,
    older_than: Duration,
    inbox: bool,
    dry_run: bool,
) -> Result<(), Failure> {
    let store = open_store(&target, dry_run).await?;
    let before = now().saturating_sub(older_than);
    let s = store.stats().await?;
    let plan = format!(
        "{} delivered and discarded events settled before {} ({} ago){}; {} delivered and {} discarded are stored now",
        if dry_run { "would delete" } else { "will delete" },
        rfc3339(before),
        short(older_than),
        if inbox { ", and the inbox marks written before then" } else { "" },
        s.delivered,
        s.discarded
    );
    if !out.json {
        out.text(&format!("{plan}\n"));
    }
    if dry_run {
        if out.json {
            out.obj(
                &json!({ "action": "prune", "dry_run": true, "before": before.as_millis(), "inbox": inbox,
                              "delivered": s.delivered, "discarded": s.discarded }),
            );
        } else {
            out.text("dry run: nothing changed\n");
        }
        return Ok(());
    }
    let events = store.prune_delivered(before, usize::MAX).await?;
    let marks = if inbox { Some(store.prune_inbox(before, usize::MAX).await?) } else { None };
    if out.json {
        out.obj(&json!({ "action": "prune", "dry_run": false, "before": before.as_millis(),
                          "deleted_events": events, "deleted_inbox_marks": marks }));
    } else {
        out.text(&format!("deleted {events} events"));
        if let Some(m) = marks {
            out.text(&format!(" and {m} inbox marks"));
        }
        out.text("\n");
    }
    Ok(())
}
