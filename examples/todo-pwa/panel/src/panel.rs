//! The panel: DOM built with `web-sys`, refreshed from the outbox's store.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::rc::{Rc, Weak};

use outbox::{Envelope, EventId, Outbox};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::spawn_local;
use web_sys::{BroadcastChannel, Document, Element, Event, Window};

use crate::format;

/// How a panel behaves; [`PanelOptions::default`] suits most apps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PanelOptions {
    /// How often the panel reads the store, in milliseconds (default
    /// 1000). While closed it reads only the counts for its toggle.
    pub refresh_ms: u32,
    /// A `BroadcastChannel` to refresh on, besides the interval: the
    /// outbox's commit channel (`outbox_store_idb::channel_name(db)`,
    /// which every tab's store posts on after each commit) refreshes the
    /// panel on every commit in any tab of the origin.
    pub commit_channel: Option<String>,
    /// The most events listed per table (default 100).
    pub limit: usize,
    /// Whether the panel starts open (default: closed).
    pub open: bool,
    /// The level of the panel's heading, 1 to 6 (default 2).
    pub heading_level: u8,
}

impl Default for PanelOptions {
    fn default() -> Self {
        PanelOptions { refresh_ms: 1_000, commit_channel: None, limit: 100, open: false, heading_level: 2 }
    }
}

impl PanelOptions {
    /// Sets [`PanelOptions::refresh_ms`].
    pub fn refresh_ms(mut self, ms: u32) -> Self {
        self.refresh_ms = ms.max(10);
        self
    }

    /// Sets [`PanelOptions::commit_channel`].
    pub fn commit_channel(mut self, name: impl Into<String>) -> Self {
        self.commit_channel = Some(name.into());
        self
    }

    /// Sets [`PanelOptions::limit`].
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit.max(1);
        self
    }

    /// Sets [`PanelOptions::open`].
    pub fn open(mut self, open: bool) -> Self {
        self.open = open;
        self
    }

    /// Sets [`PanelOptions::heading_level`] (clamped to 1..=6).
    pub fn heading_level(mut self, level: u8) -> Self {
        self.heading_level = level.clamp(1, 6);
        self
    }
}

/// A mounted panel. Dropping it unmounts it (removes its elements, stops
/// its timer and listeners).
pub struct PanelHandle {
    inner: Rc<Inner>,
}

impl fmt::Debug for PanelHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PanelHandle").field("open", &self.inner.open.get()).finish_non_exhaustive()
    }
}

impl PanelHandle {
    /// Opens the panel (and refreshes it).
    pub fn open(&self) {
        self.inner.set_open(true);
    }

    /// Closes the panel.
    pub fn close(&self) {
        self.inner.set_open(false);
    }

    /// Opens a closed panel, closes an open one.
    pub fn toggle(&self) {
        self.inner.set_open(!self.inner.open.get());
    }

    /// Whether it is open.
    pub fn is_open(&self) -> bool {
        self.inner.open.get()
    }

    /// Reads the store again now (say, right after the app committed).
    pub fn refresh(&self) {
        request_refresh(&self.inner);
    }

    /// The panel's root element (a `<section>` inside the container).
    pub fn element(&self) -> &Element {
        &self.inner.root
    }
}

impl Drop for PanelHandle {
    fn drop(&mut self) {
        self.inner.unmount();
    }
}

/// Mounts a closed panel over `outbox` at the end of `container`, with
/// [`PanelOptions::default`]. See [`mount_with`].
pub fn mount(outbox: &Outbox, container: &Element) -> Result<PanelHandle, JsValue> {
    mount_with(outbox, container, PanelOptions::default())
}

/// Mounts a panel over `outbox` at the end of `container`: a toggle
/// button ("Pending events", with the count) and, while open, the
/// forwarding and storage status and two tables (pending, dead) with a
/// requeue and a discard button per dead event. It refreshes every
/// `options.refresh_ms`, on every message of `options.commit_channel`,
/// when durability changes ([`Outbox::watch_durable`]) and after each of
/// its own actions. Fails only if the DOM refuses an element.
pub fn mount_with(
    outbox: &Outbox,
    container: &Element,
    options: PanelOptions,
) -> Result<PanelHandle, JsValue> {
    let window = web_sys::window().ok_or_else(|| JsValue::from_str("outbox-panel: no window"))?;
    let doc = window.document().ok_or_else(|| JsValue::from_str("outbox-panel: no document"))?;
    install_style(&doc)?;
    let n = next_instance();
    let body_id = format!("outbox-panel-body-{n}");
    let heading_id = format!("outbox-panel-heading-{n}");

    let root = el(&doc, "section", &[("class", "outbox-panel"), ("data-testid", "outbox-panel-root")])?;
    root.set_attribute("aria-labelledby", &heading_id)?;
    let toggle = el(
        &doc,
        "button",
        &[
            ("type", "button"),
            ("class", "outbox-panel-toggle"),
            ("data-testid", "outbox-panel-toggle"),
            ("data-action", "toggle"),
            ("aria-expanded", "false"),
        ],
    )?;
    toggle.set_attribute("aria-controls", &body_id)?;
    let toggle_label = el(&doc, "span", &[])?;
    toggle_label.set_text_content(Some("Pending events"));
    let badge = el(&doc, "span", &[("class", "outbox-panel-badge"), ("data-testid", "outbox-panel-badge")])?;
    append(&toggle, &[&toggle_label, &badge])?;

    let body = el(&doc, "div", &[("class", "outbox-panel-body"), ("data-testid", "outbox-panel")])?;
    body.set_id(&body_id);
    body.set_attribute("hidden", "")?;
    let level = options.heading_level.clamp(1, 6);
    let heading = el(&doc, &format!("h{level}"), &[("class", "outbox-panel-heading")])?;
    heading.set_id(&heading_id);
    heading.set_text_content(Some("Outbox: pending events"));
    let status = el(&doc, "ul", &[("class", "outbox-panel-status")])?;
    let leader = el(&doc, "li", &[("data-testid", "outbox-panel-leader")])?;
    let storage = el(&doc, "li", &[("data-testid", "outbox-panel-storage")])?;
    let counts = el(&doc, "li", &[("data-testid", "outbox-panel-counts")])?;
    append(&status, &[&leader, &storage, &counts])?;
    let pending = Table::new(&doc, "Pending", "outbox-panel-pending", false)?;
    let dead = Table::new(&doc, "Dead", "outbox-panel-dead", true)?;
    let message = el(
        &doc,
        "p",
        &[("class", "outbox-panel-message"), ("role", "status"), ("data-testid", "outbox-panel-message")],
    )?;
    append(&body, &[&heading, &status, &pending.wrap, &dead.wrap, &message])?;
    append(&root, &[&toggle, &body])?;
    container.append_child(&root)?;

    let inner = Rc::new(Inner {
        outbox: outbox.clone(),
        options,
        doc,
        window,
        root,
        toggle,
        badge,
        body,
        leader,
        storage,
        counts,
        pending,
        dead,
        message,
        open: Cell::new(false),
        refreshing: Cell::new(false),
        again: Cell::new(false),
        alive: Cell::new(true),
        interval: Cell::new(None),
        on_click: RefCell::new(None),
        on_tick: RefCell::new(None),
        channel: RefCell::new(None),
    });
    inner.wire()?;
    inner.set_open(inner.options.open);
    request_refresh(&inner);
    Ok(PanelHandle { inner })
}

thread_local! {
    static INSTANCES: Cell<u32> = const { Cell::new(0) };
}

fn next_instance() -> u32 {
    INSTANCES.with(|c| {
        c.set(c.get() + 1);
        c.get()
    })
}

const STYLE: &str = "
.outbox-panel{font:14px/1.4 system-ui,sans-serif;color:#1f2937;margin:1rem 0}
.outbox-panel-toggle{font:inherit;padding:.4rem .8rem;border:1px solid #374151;border-radius:.4rem;background:#fff;color:#1f2937;cursor:pointer}
.outbox-panel-toggle[aria-expanded=true]{background:#1f2937;color:#fff}
.outbox-panel-badge{margin-left:.4rem;font-weight:600}
.outbox-panel-body{border:1px solid #d1d5db;border-radius:.4rem;padding:.6rem;margin-top:.5rem;overflow-x:auto;background:#fff}
.outbox-panel-heading{font-size:1rem;margin:.2rem 0 .4rem}
.outbox-panel-status{list-style:none;padding:0;margin:0 0 .6rem;display:flex;flex-wrap:wrap;gap:.4rem}
.outbox-panel-status li{padding:.1rem .5rem;border-radius:1rem;background:#f3f4f6;color:#1f2937}
.outbox-panel-status li[data-leader=true],.outbox-panel-status li[data-durable=true]{background:#d1fae5;color:#064e3b}
.outbox-panel-status li[data-durable=false]{background:#fee2e2;color:#7f1d1d}
.outbox-panel table{border-collapse:collapse;width:100%;margin-bottom:.8rem}
.outbox-panel caption{text-align:left;font-weight:600;padding:.2rem 0}
.outbox-panel th,.outbox-panel td{border-bottom:1px solid #e5e7eb;padding:.25rem .4rem;text-align:left;vertical-align:top}
.outbox-panel thead th{background:#f3f4f6}
.outbox-panel td.outbox-panel-error{color:#7f1d1d;word-break:break-word}
.outbox-panel td.outbox-panel-actions{white-space:nowrap}
.outbox-panel td button{font:inherit;margin:0 .3rem .2rem 0;padding:.2rem .6rem;border-radius:.3rem;border:1px solid #1e3a8a;background:#1e40af;color:#fff;cursor:pointer}
.outbox-panel td button[data-action=discard]{border-color:#7f1d1d;background:#991b1b}
.outbox-panel-message{min-height:1.4em;margin:.2rem 0 0}
";

/// Adds the panel's stylesheet to the document once.
fn install_style(doc: &Document) -> Result<(), JsValue> {
    if doc.query_selector("style[data-outbox-panel]")?.is_some() {
        return Ok(());
    }
    let style = el(doc, "style", &[("data-outbox-panel", "")])?;
    style.set_text_content(Some(STYLE));
    match doc.head() {
        Some(head) => head.append_child(&style)?,
        None => doc.document_element().ok_or("outbox-panel: no document element")?.append_child(&style)?,
    };
    Ok(())
}

fn el(doc: &Document, tag: &str, attrs: &[(&str, &str)]) -> Result<Element, JsValue> {
    let e = doc.create_element(tag)?;
    for (k, v) in attrs {
        e.set_attribute(k, v)?;
    }
    Ok(e)
}

fn append(parent: &Element, children: &[&Element]) -> Result<(), JsValue> {
    for c in children {
        parent.append_child(c)?;
    }
    Ok(())
}

/// Sets `e`'s text only if it differs (no needless DOM mutations).
fn set_text(e: &Element, text: &str) {
    if e.text_content().as_deref() != Some(text) {
        e.set_text_content(Some(text));
    }
}

fn set_attr(e: &Element, name: &str, value: &str) {
    if e.get_attribute(name).as_deref() != Some(value) {
        let _ = e.set_attribute(name, value);
    }
}

fn now_ms() -> i64 {
    js_sys::Date::now() as i64
}

const COLUMNS: [&str; 6] = ["Type", "Key", "Attempts", "Age", "Next attempt", "Last error"];

/// One of the two tables, its rows keyed by event id so that a refresh
/// updates cells in place (a button under the pointer stays the same
/// element).
struct Table {
    wrap: Element,
    caption: Element,
    tbody: Element,
    empty: Element,
    rows: RefCell<Vec<(String, Element)>>,
    dead: bool,
    name: &'static str,
    testid: &'static str,
}

impl Table {
    fn new(doc: &Document, name: &'static str, testid: &'static str, dead: bool) -> Result<Table, JsValue> {
        let table = el(doc, "table", &[("data-testid", testid)])?;
        let caption = el(doc, "caption", &[])?;
        caption.set_text_content(Some(name));
        let thead = el(doc, "thead", &[])?;
        let head = el(doc, "tr", &[])?;
        let mut columns: Vec<&str> = COLUMNS.to_vec();
        if dead {
            columns.push("Actions");
        }
        for c in &columns {
            let th = el(doc, "th", &[("scope", "col")])?;
            th.set_text_content(Some(c));
            head.append_child(&th)?;
        }
        thead.append_child(&head)?;
        let tbody = el(doc, "tbody", &[])?;
        let empty = el(doc, "tr", &[("data-testid", "outbox-panel-empty")])?;
        let td = el(doc, "td", &[])?;
        td.set_attribute("colspan", &columns.len().to_string())?;
        td.set_text_content(Some(if dead { "No dead events." } else { "No pending events." }));
        empty.append_child(&td)?;
        tbody.append_child(&empty)?;
        append(&table, &[&caption, &thead, &tbody])?;
        Ok(Table { wrap: table, caption, tbody, empty, rows: RefCell::new(Vec::new()), dead, name, testid })
    }

    fn row(&self, doc: &Document, e: &Envelope, id: &str) -> Result<Element, JsValue> {
        let tr = el(doc, "tr", &[("data-event-id", id)])?;
        tr.set_attribute("data-testid", &format!("{}-row", self.testid))?;
        tr.set_attribute("data-event-type", &e.event_type)?;
        let th = el(doc, "th", &[("scope", "row")])?;
        tr.append_child(&th)?;
        for _ in 1..COLUMNS.len() {
            let td = el(doc, "td", &[])?;
            tr.append_child(&td)?;
        }
        if let Some(last) = tr.last_element_child() {
            last.set_attribute("class", "outbox-panel-error")?;
        }
        if self.dead {
            let td = el(doc, "td", &[("class", "outbox-panel-actions")])?;
            let what = format!("{} event of {}", e.event_type, e.key);
            for (action, label, testid) in [
                ("requeue", "Requeue", "outbox-panel-requeue"),
                ("discard", "Discard", "outbox-panel-discard"),
            ] {
                let b = el(
                    doc,
                    "button",
                    &[
                        ("type", "button"),
                        ("data-action", action),
                        ("data-event-id", id),
                        ("data-testid", testid),
                    ],
                )?;
                b.set_attribute("aria-label", &format!("{label} the {what}"))?;
                b.set_text_content(Some(label));
                td.append_child(&b)?;
            }
            tr.append_child(&td)?;
        }
        Ok(tr)
    }

    fn fill(&self, tr: &Element, e: &Envelope, now: i64) {
        let next = if self.dead {
            "—".to_owned()
        } else {
            format::next_attempt(e.next_attempt_at.as_millis(), now)
        };
        let texts = [
            e.event_type.clone(),
            e.key.to_string(),
            e.attempts.to_string(),
            format::duration(now - e.created_at.as_millis()),
            next,
            e.last_error.clone().unwrap_or_else(|| "—".to_owned()),
        ];
        let cells = tr.children();
        for (i, t) in texts.iter().enumerate() {
            if let Some(cell) = cells.item(i as u32) {
                set_text(&cell, t);
            }
        }
        set_attr(tr, "data-attempts", &e.attempts.to_string());
    }

    /// Shows `events`: rows of events still listed are updated in place,
    /// new ones added, gone ones removed, in the given order.
    fn render(&self, doc: &Document, events: &[Envelope], more: bool, now: i64) -> Result<(), JsValue> {
        let mut rows = self.rows.borrow_mut();
        let mut old: HashMap<String, Element> = rows.drain(..).collect();
        if events.is_empty() {
            if self.empty.parent_node().is_none() {
                self.tbody.append_child(&self.empty)?;
            }
        } else {
            self.empty.remove();
        }
        for (i, e) in events.iter().enumerate() {
            let id = e.id.to_string();
            let tr = match old.remove(&id) {
                Some(tr) => tr,
                None => self.row(doc, e, &id)?,
            };
            self.fill(&tr, e, now);
            let here = self.tbody.children().item(i as u32);
            if !here.as_ref().is_some_and(|h| h.is_same_node(Some(&tr))) {
                self.tbody.insert_before(&tr, here.as_deref())?;
            }
            rows.push((id, tr));
        }
        for tr in old.into_values() {
            tr.remove();
        }
        let shown = events.len();
        set_text(
            &self.caption,
            &if more { format!("{} (first {shown})", self.name) } else { format!("{} ({shown})", self.name) },
        );
        set_attr(&self.wrap, "data-count", &shown.to_string());
        Ok(())
    }
}

type Listener = Closure<dyn FnMut(Event)>;

struct Inner {
    outbox: Outbox,
    options: PanelOptions,
    doc: Document,
    window: Window,
    root: Element,
    toggle: Element,
    badge: Element,
    body: Element,
    leader: Element,
    storage: Element,
    counts: Element,
    pending: Table,
    dead: Table,
    message: Element,
    open: Cell<bool>,
    refreshing: Cell<bool>,
    again: Cell<bool>,
    alive: Cell<bool>,
    interval: Cell<Option<i32>>,
    on_click: RefCell<Option<Listener>>,
    on_tick: RefCell<Option<Closure<dyn FnMut()>>>,
    channel: RefCell<Option<(BroadcastChannel, Listener)>>,
}

impl Inner {
    /// The click handler (toggle, requeue, discard), the timer, the
    /// commit channel and the durability watch; each holds the panel
    /// weakly, so a dropped panel is freed.
    fn wire(self: &Rc<Self>) -> Result<(), JsValue> {
        let weak = Rc::downgrade(self);
        let on_click: Listener = Closure::new(move |ev: Event| {
            if let Some(inner) = weak.upgrade() {
                inner.clicked(&ev);
            }
        });
        self.root.add_event_listener_with_callback("click", on_click.as_ref().unchecked_ref())?;
        *self.on_click.borrow_mut() = Some(on_click);

        let weak = Rc::downgrade(self);
        let on_tick: Closure<dyn FnMut()> = Closure::new(move || {
            if let Some(inner) = weak.upgrade() {
                request_refresh(&inner);
            }
        });
        let id = self.window.set_interval_with_callback_and_timeout_and_arguments_0(
            on_tick.as_ref().unchecked_ref(),
            i32::try_from(self.options.refresh_ms).unwrap_or(i32::MAX),
        )?;
        self.interval.set(Some(id));
        *self.on_tick.borrow_mut() = Some(on_tick);

        if let Some(name) = &self.options.commit_channel {
            // Where BroadcastChannel is missing, the interval alone refreshes.
            if let Ok(chan) = BroadcastChannel::new(name) {
                let weak = Rc::downgrade(self);
                let on_message: Listener = Closure::new(move |_ev: Event| {
                    if let Some(inner) = weak.upgrade() {
                        request_refresh(&inner);
                    }
                });
                chan.add_event_listener_with_callback("message", on_message.as_ref().unchecked_ref())?;
                *self.channel.borrow_mut() = Some((chan, on_message));
            }
        }

        let weak = Rc::downgrade(self);
        let mut durable = self.outbox.watch_durable();
        spawn_local(async move {
            while durable.changed().await.is_ok() {
                match weak.upgrade() {
                    Some(inner) if inner.alive.get() => request_refresh(&inner),
                    _ => return,
                }
            }
        });
        Ok(())
    }

    fn set_open(self: &Rc<Self>, open: bool) {
        self.open.set(open);
        set_attr(&self.toggle, "aria-expanded", if open { "true" } else { "false" });
        if open {
            let _ = self.body.remove_attribute("hidden");
        } else {
            set_attr(&self.body, "hidden", "");
        }
        set_attr(&self.root, "data-open", if open { "true" } else { "false" });
        request_refresh(self);
    }

    fn clicked(self: &Rc<Self>, ev: &Event) {
        let Some(target) = ev.target().and_then(|t| t.dyn_into::<Element>().ok()) else { return };
        let Ok(Some(button)) = target.closest("button[data-action]") else { return };
        let action = button.get_attribute("data-action").unwrap_or_default();
        if action == "toggle" {
            self.set_open(!self.open.get());
            return;
        }
        let Some(id) = button.get_attribute("data-event-id").and_then(|s| s.parse::<EventId>().ok()) else {
            return;
        };
        let _ = button.set_attribute("disabled", "");
        let inner = self.clone();
        spawn_local(async move {
            let (done, verb) = match action.as_str() {
                "requeue" => (inner.outbox.requeue(id).await, "Requeued"),
                "discard" => (inner.outbox.discard(id).await, "Discarded"),
                _ => return,
            };
            let text = match done {
                Ok(true) => format!("{verb} event {id}."),
                Ok(false) => format!("Event {id} is no longer dead."),
                Err(e) => format!("Could not change event {id}: {e}"),
            };
            set_text(&inner.message, &text);
            let _ = button.remove_attribute("disabled");
            request_refresh(&inner);
        });
    }

    /// Reads the store once and updates the panel.
    async fn refresh_once(&self) -> Result<(), String> {
        let outbox = &self.outbox;
        let forwarding = self.outbox.is_forwarding();
        set_attr(&self.leader, "data-leader", if forwarding { "true" } else { "false" });
        set_text(
            &self.leader,
            if forwarding { "Forwarding: this tab (leader)" } else { "Forwarding: another tab, or none yet" },
        );
        let durable = self.outbox.is_durable();
        set_attr(&self.storage, "data-durable", if durable { "true" } else { "false" });
        set_attr(&self.storage, "data-backend", outbox.capabilities().backend);
        set_text(
            &self.storage,
            &if durable {
                format!("Storage: durable ({})", outbox.capabilities().backend)
            } else {
                "Storage: memory only (not durable; lost if this tab closes)".to_owned()
            },
        );
        let stats = outbox.stats().await.map_err(|e| format!("reading the outbox: {e}"))?;
        for (name, n) in
            [("data-pending", stats.pending), ("data-dead", stats.dead), ("data-delivered", stats.delivered)]
        {
            set_attr(&self.counts, name, &n.to_string());
        }
        set_text(
            &self.counts,
            &format!("{} pending, {} dead, {} delivered", stats.pending, stats.dead, stats.delivered),
        );
        set_text(
            &self.badge,
            &match stats.dead {
                0 => format!("({})", stats.pending),
                d => format!("({}, {d} dead)", stats.pending),
            },
        );
        set_attr(&self.root, "data-pending", &stats.pending.to_string());
        set_attr(&self.root, "data-dead", &stats.dead.to_string());
        if !self.open.get() {
            return Ok(());
        }
        let limit = self.options.limit;
        let pending = outbox.pending(limit + 1).await.map_err(|e| format!("listing pending events: {e}"))?;
        let dead = outbox.dead_letters(limit + 1).await.map_err(|e| format!("listing dead events: {e}"))?;
        let now = now_ms();
        let shown = |v: &[Envelope]| v.len().min(limit);
        self.pending
            .render(&self.doc, &pending[..shown(&pending)], pending.len() > limit, now)
            .map_err(|e| format!("{e:?}"))?;
        self.dead
            .render(&self.doc, &dead[..shown(&dead)], dead.len() > limit, now)
            .map_err(|e| format!("{e:?}"))?;
        Ok(())
    }

    fn unmount(&self) {
        self.alive.set(false);
        if let Some(id) = self.interval.take() {
            self.window.clear_interval_with_handle(id);
        }
        if let Some(cb) = self.on_click.borrow_mut().take() {
            let _ = self.root.remove_event_listener_with_callback("click", cb.as_ref().unchecked_ref());
        }
        self.on_tick.borrow_mut().take();
        if let Some((chan, cb)) = self.channel.borrow_mut().take() {
            let _ = chan.remove_event_listener_with_callback("message", cb.as_ref().unchecked_ref());
            chan.close();
        }
        self.root.remove();
    }
}

/// Refreshes now, or right after the refresh in progress (never two at
/// once; requests during one collapse into one more).
fn request_refresh(inner: &Rc<Inner>) {
    if !inner.alive.get() {
        return;
    }
    if inner.refreshing.get() {
        inner.again.set(true);
        return;
    }
    inner.refreshing.set(true);
    let weak: Weak<Inner> = Rc::downgrade(inner);
    spawn_local(async move {
        loop {
            let Some(inner) = weak.upgrade() else { return };
            inner.again.set(false);
            if let Err(e) = inner.refresh_once().await {
                set_text(&inner.message, &e);
            }
            if !inner.again.get() || !inner.alive.get() {
                inner.refreshing.set(false);
                return;
            }
        }
    });
}
