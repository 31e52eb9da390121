//! What the commands and the web view show: event filters and paging over
//! the store contract, events as JSON objects, times and ages, aligned
//! tables.

use std::collections::HashMap;
use std::time::Duration;

use outbox_core::{
    DeliveryInfo, DurableStore, Envelope, Error, ErrorKind, EventId, EventStatus, PayloadKind, Result,
    Timestamp,
};
use serde_json::{Value, json};

/// Which events a listing shows.
#[derive(Clone, Debug, Default)]
pub(crate) struct Filter {
    /// Only this event type.
    pub(crate) event_type: Option<String>,
    /// Only this ordering key.
    pub(crate) key: Option<String>,
    /// Only events of this origin actor.
    pub(crate) origin: Option<String>,
    /// Only events committed at or after this time.
    pub(crate) since: Option<Timestamp>,
}

impl Filter {
    /// Whether `e` passes.
    pub(crate) fn matches(&self, e: &Envelope) -> bool {
        self.event_type.as_deref().is_none_or(|t| e.event_type == t)
            && self.key.as_deref().is_none_or(|k| e.key.as_str() == k)
            && self.origin.as_deref().is_none_or(|o| e.origin.as_str() == o)
            && self.since.is_none_or(|t| e.created_at >= t)
    }
}

/// One page of a listing.
#[derive(Debug)]
pub(crate) struct Page {
    /// The events, in commit order.
    pub(crate) events: Vec<Envelope>,
    /// How many more match after the last one shown.
    pub(crate) more: usize,
    /// The cursor of the next page (the last id shown) when there are more.
    pub(crate) next: Option<EventId>,
}

/// Up to `limit` events with `status` that pass `filter`, in commit order,
/// after the event `after` (a cursor from a previous page). An `after`
/// that is not among them (settled or pruned since) is `InvalidInput`.
pub(crate) async fn page(
    store: &dyn DurableStore,
    status: EventStatus,
    filter: &Filter,
    after: Option<EventId>,
    limit: usize,
) -> Result<Page> {
    let all: Vec<Envelope> =
        store.list_by_status(status, usize::MAX).await?.into_iter().filter(|e| filter.matches(e)).collect();
    let start = match after {
        None => 0,
        Some(id) => {
            all.iter().position(|e| e.id == id).map(|i| i + 1).ok_or_else(|| {
                Error::invalid_input(format!(
                    "cursor {id} is not a listed {status} event (it may have moved on): list again without --after"
                ))
            })?
        }
    };
    let rest = &all[start..];
    let events: Vec<Envelope> = rest.iter().take(limit).cloned().collect();
    let more = rest.len() - events.len();
    let next = if more > 0 { events.last().map(|e| e.id) } else { None };
    Ok(Page { events, more, next })
}

/// For each ordering key, the pending events in commit order: what a dead
/// letter of that key holds back (unless skipped).
pub(crate) async fn pending_by_key(store: &dyn DurableStore) -> Result<HashMap<String, Vec<Envelope>>> {
    let mut by_key: HashMap<String, Vec<Envelope>> = HashMap::new();
    for e in store.list_pending(usize::MAX).await? {
        by_key.entry(e.key.as_str().to_owned()).or_default().push(e);
    }
    Ok(by_key)
}

/// How many pending events of `e`'s key were committed after it.
pub(crate) fn waiting_behind(e: &Envelope, by_key: &HashMap<String, Vec<Envelope>>) -> usize {
    by_key
        .get(e.key.as_str())
        .map_or(0, |v| v.iter().filter(|p| p.created_at >= e.created_at && p.id != e.id).count())
}

/// The store's record of `id`'s lease, epoch and skip flag; `None` when
/// the store does not keep one (`Unsupported`) or holds no such event.
pub(crate) async fn delivery(store: &dyn DurableStore, id: EventId) -> Result<Option<DeliveryInfo>> {
    match store.delivery_info(id).await {
        Err(e) if e.kind() == ErrorKind::Unsupported => Ok(None),
        r => r,
    }
}

/// What an event's JSON adds from its delivery record: the lease (and
/// whether it still holds at `now`), the claiming epoch, and for a dead
/// event whether it parks its key and how many pending events of the key
/// it holds back (none once skipped).
pub(crate) fn add_delivery(
    v: &mut Value,
    e: &Envelope,
    status: EventStatus,
    info: Option<DeliveryInfo>,
    by_key: &HashMap<String, Vec<Envelope>>,
    now: Timestamp,
) {
    if let Some(i) = info {
        v["lease_until"] = json!(i.lease_until.map(|t| t.as_millis()));
        v["leased"] = json!(status == EventStatus::Pending && i.lease_until.is_some_and(|t| t > now));
        v["claimed_epoch"] = json!(i.claimed_epoch.map(|e| e.0));
    }
    if status == EventStatus::Dead {
        let skipped = info.map(|i| i.skipped);
        v["skipped"] = json!(skipped);
        let parks = skipped != Some(true);
        v["parks_key"] = json!(parks);
        v["holds_back"] = json!(if parks { waiting_behind(e, by_key) } else { 0 });
    }
}

/// [`event_json`] with the store's delivery record ([`add_delivery`]).
pub(crate) async fn event_json_full(
    store: &dyn DurableStore,
    e: &Envelope,
    status: EventStatus,
    by_key: &HashMap<String, Vec<Envelope>>,
    now: Timestamp,
) -> Result<Value> {
    let mut v = event_json(e, status);
    let info = if matches!(status, EventStatus::Pending | EventStatus::Dead) {
        delivery(store, e.id).await?
    } else {
        None
    };
    add_delivery(&mut v, e, status, info, by_key, now);
    Ok(v)
}

/// The payload as JSON when it is JSON, else its bytes in hex.
pub(crate) fn payload_json(e: &Envelope) -> (&'static str, Value) {
    match e.payload.kind() {
        PayloadKind::Json => match serde_json::from_slice::<Value>(e.payload.as_bytes()) {
            Ok(v) => ("payload", v),
            Err(_) => ("payload_hex", Value::String(hex(e.payload.as_bytes()))),
        },
        _ => ("payload_hex", Value::String(hex(e.payload.as_bytes()))),
    }
}

/// An event as one JSON object (times in milliseconds since the Unix
/// epoch and as RFC 3339 text).
pub(crate) fn event_json(e: &Envelope, status: EventStatus) -> Value {
    let (payload_field, payload) = payload_json(e);
    let mut v = json!({
        "id": e.id.to_string(),
        "status": status.as_str(),
        "type": e.event_type,
        "origin": e.origin.as_str(),
        "key": e.key.as_str(),
        "schema_version": e.schema_version,
        "created_at": e.created_at.as_millis(),
        "created": rfc3339(e.created_at),
        "attempts": e.attempts,
        "next_attempt_at": e.next_attempt_at.as_millis(),
        "next_attempt": rfc3339(e.next_attempt_at),
        "last_error": e.last_error,
        "headers": e.headers,
    });
    if let Value::Object(m) = &mut v {
        m.insert(payload_field.to_owned(), payload);
    }
    v
}

/// Lower-case hex.
pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `t` as RFC 3339 UTC text with milliseconds.
pub(crate) fn rfc3339(t: Timestamp) -> String {
    let ms = t.as_millis();
    let (secs, milli) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z", sod / 3600, sod % 3600 / 60, sod % 60)
}

/// Howard Hinnant's `civil_from_days`: the proleptic Gregorian date of a
/// day count from 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A short human duration: `850ms`, `42s`, `3m12s`, `5h04m`, `2d03h`.
pub(crate) fn short(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// How `t` relates to `now`: `3m12s ago`, `in 20s`, `now`.
pub(crate) fn relative(t: Timestamp, now: Timestamp) -> String {
    if t <= now {
        let d = now.duration_since(t);
        if d < Duration::from_secs(1) { "now".into() } else { format!("{} ago", short(d)) }
    } else {
        format!("in {}", short(t.duration_since(now)))
    }
}

/// Parses a duration: a number with a unit, `ms`, `s`, `m`, `h` or `d`
/// (`90s`, `15m`, `7d`).
pub(crate) fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("{s:?} is not a duration such as 90s, 15m, 2h or 7d"))?;
    let ms = match unit {
        "ms" => 1,
        "s" | "" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h or d)")),
    };
    Ok(Duration::from_millis(n.saturating_mul(ms)))
}

/// Columns of text, each padded to its widest cell (the last one is not
/// padded).
#[derive(Debug, Default)]
pub(crate) struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these headers.
    pub(crate) fn new(headers: &[&str]) -> Self {
        Table { rows: vec![headers.iter().map(|h| (*h).to_owned()).collect()] }
    }

    /// Adds a row.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Whether only the headers are there.
    pub(crate) fn is_empty(&self) -> bool {
        self.rows.len() <= 1
    }

    /// The aligned lines.
    pub(crate) fn render(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..cols)
            .map(|c| self.rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for r in &self.rows {
            let mut line = String::new();
            for (c, cell) in r.iter().enumerate() {
                if c + 1 == r.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `s` cut to `n` characters, with `…` when cut; newlines shown as spaces.
pub(crate) fn clip(s: &str, n: usize) -> String {
    let s = s.replace(['\n', '\r'], " ");
    if s.chars().count() <= n {
        s
    } else {
        format!("{}…", s.chars().take(n.saturating_sub(1)).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_durations_read_well() {
        assert_eq!(rfc3339(Timestamp::from_millis(1_767_225_600_123)), "2026-01-01T00:00:00.123Z");
        assert_eq!(rfc3339(Timestamp::from_millis(951_782_400_000)), "2000-02-29T00:00:00.000Z");
        assert_eq!(short(Duration::from_secs(192)), "3m12s");
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn tables_align_their_columns() {
        let mut t = Table::new(&["A", "BB"]);
        t.row(vec!["long".into(), "x".into()]);
        assert_eq!(t.render(), "A     BB\nlong  x\n");
    }
}
