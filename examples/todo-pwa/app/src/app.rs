//! The app: wiring `index.html`'s elements to the list actors.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use outbox::browser::{WorkerForwarding, configure_page};
use outbox::{ActorId, ActorRef, Outbox, OutboxConfig};
use outbox_example_todo::{TodoList, TodoMsg, TodoState};
use outbox_panel::{PanelHandle, PanelOptions};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::spawn_local;
use web_sys::{
    BroadcastChannel, Document, Element, Event, HtmlElement, HtmlInputElement, KeyboardEvent, Window,
};

/// The IndexedDB database (and app name) of the outbox.
const DB: &str = "todo-pwa";
/// Where the tabs of the app tell each other that a list changed.
const SYNC_CHANNEL: &str = "todo-pwa-sync";
const LISTS_KEY: &str = "todo-pwa.lists";
const CURRENT_KEY: &str = "todo-pwa.current";
const DEFAULT_LIST: &str = "inbox";
/// The longest list name and item title the UI takes.
const MAX_NAME: usize = 64;

thread_local! {
    static APP: RefCell<Option<Rc<App>>> = const { RefCell::new(None) };
    /// `on_error` calls so far (the outbox calls it from its own tasks).
    static ERRORS: Cell<u32> = const { Cell::new(0) };
}

/// The list shown: its actor, and which opening of it this is.
struct Current {
    name: String,
    actor: ActorRef<TodoList>,
}

struct App {
    outbox: Outbox,
    window: Window,
    doc: Document,
    root: Element,
    items: Element,
    empty: Element,
    status: Element,
    list_name: Element,
    new_title: HtmlInputElement,
    list_input: HtmlInputElement,
    known_lists: Element,
    current: RefCell<Option<Current>>,
    /// Bumped on each (re)opening of a list: a render loop of an older
    /// opening stops.
    generation: Cell<u32>,
    /// Sends not answered yet, and whether another tab changed the list
    /// meanwhile (it is reopened once they are answered).
    inflight: Cell<u32>,
    stale: Cell<bool>,
    /// The item being renamed.
    editing: Cell<Option<u32>>,
    /// Commits acknowledged in this page.
    commits: Cell<u32>,
    sync: Option<BroadcastChannel>,
    panel: RefCell<Option<PanelHandle>>,
}

/// The module's entry point: starts the app once the module is loaded.
#[wasm_bindgen(start)]
pub fn start() {
    spawn_local(async {
        if let Err(e) = run().await {
            let text = e.as_string().unwrap_or_else(|| format!("{e:?}"));
            fail(&format!("The app could not start: {text}"));
        }
    });
}

/// The app's state for tests and the curious, as JSON: the list shown
/// and its committed state, whether storage is durable, whether this tab
/// forwards, `on_error` calls, acknowledged commits, and the outbox's
/// counts.
#[wasm_bindgen]
pub async fn snapshot() -> Result<String, JsError> {
    let app = APP.with(|a| a.borrow().clone()).ok_or_else(|| JsError::new("the app has not started"))?;
    let (list, state) = match &*app.current.borrow() {
        Some(c) => (c.name.clone(), (*c.actor.state()).clone()),
        None => (String::new(), TodoState::default()),
    };
    let stats = app.outbox.stats().await.map_err(|e| JsError::new(&e.to_string()))?;
    let json = serde_json::json!({
        "list": list,
        "state": state,
        "durable": app.outbox.is_durable(),
        "forwarding": app.outbox.is_forwarding(),
        "errors": ERRORS.with(Cell::get),
        "commits": app.commits.get(),
        "stats": {
            "pending": stats.pending,
            "dead": stats.dead,
            "delivered": stats.delivered,
            "discarded": stats.discarded,
        },
    });
    Ok(json.to_string())
}

fn by_id(doc: &Document, id: &str) -> Result<Element, JsValue> {
    doc.get_element_by_id(id).ok_or_else(|| JsValue::from_str(&format!("index.html has no #{id}")))
}

fn input(doc: &Document, id: &str) -> Result<HtmlInputElement, JsValue> {
    by_id(doc, id)?
        .dyn_into::<HtmlInputElement>()
        .map_err(|_| JsValue::from_str(&format!("#{id} is not an input")))
}

/// Shows a message that the app could not start (no app to show it with).
fn fail(text: &str) {
    let doc = web_sys::window().and_then(|w| w.document());
    if let Some(status) = doc.as_ref().and_then(|d| d.get_element_by_id("status")) {
        status.set_text_content(Some(text));
    }
    if let Some(root) = doc.as_ref().and_then(|d| d.get_element_by_id("app")) {
        let _ = root.set_attribute("data-ready", "error");
    }
}

/// Sets an attribute, ignoring a DOM refusal (never for these names).
fn set_attr(e: &Element, name: &str, value: &str) {
    let _ = e.set_attribute(name, value);
}

fn listen(target: &web_sys::EventTarget, event: &str, f: impl FnMut(Event) + 'static) -> Result<(), JsValue> {
    let cb = Closure::<dyn FnMut(Event)>::new(f);
    target.add_event_listener_with_callback(event, cb.as_ref().unchecked_ref())?;
    // The app's listeners live as long as the page.
    cb.forget();
    Ok(())
}

async fn run() -> Result<(), JsValue> {
    let window = web_sys::window().ok_or("no window")?;
    let doc = window.document().ok_or("no document")?;
    // The forwarder (and the HTTP sink to the sync server) runs in a
    // worker of its own bundle (`todo-pwa-worker`, web/outbox-worker.js):
    // this page only commits.
    let config = OutboxConfig::default().app_name(DB).on_error(|event, error| {
        let n = ERRORS.with(|c| {
            c.set(c.get() + 1);
            c.get()
        });
        let doc = web_sys::window().and_then(|w| w.document());
        if let Some(root) = doc.as_ref().and_then(|d| d.get_element_by_id("app")) {
            set_attr(&root, "data-errors", &n.to_string());
        }
        if let Some(status) = doc.as_ref().and_then(|d| d.get_element_by_id("status")) {
            let what = event.map(|e| format!(" ({} of {})", e.event_type, e.origin)).unwrap_or_default();
            status.set_text_content(Some(&format!("Outbox: {error}{what}")));
        }
    });
    let outbox = configure_page(config, WorkerForwarding::new("/outbox-worker.js"))
        .await
        .map_err(|e| e.to_string())?;

    let app = Rc::new(App {
        outbox,
        root: by_id(&doc, "app")?,
        items: by_id(&doc, "items")?,
        empty: by_id(&doc, "empty")?,
        status: by_id(&doc, "status")?,
        list_name: by_id(&doc, "list-name")?,
        new_title: input(&doc, "new-title")?,
        list_input: input(&doc, "list-input")?,
        known_lists: by_id(&doc, "known-lists")?,
        current: RefCell::new(None),
        generation: Cell::new(0),
        inflight: Cell::new(0),
        stale: Cell::new(false),
        editing: Cell::new(None),
        commits: Cell::new(0),
        sync: BroadcastChannel::new(SYNC_CHANNEL).ok(),
        panel: RefCell::new(None),
        window,
        doc,
    });
    APP.with(|a| *a.borrow_mut() = Some(app.clone()));

    let first = first_list(&app);
    open_list(&app, first).await?;
    wire(&app)?;
    let panel = outbox_panel::mount_with(
        &app.outbox,
        &by_id(&app.doc, "panel")?,
        PanelOptions::default().commit_channel(outbox_store_idb::channel_name(DB)),
    )?;
    *app.panel.borrow_mut() = Some(panel);
    watch_badges(&app)?;
    for id in ["add-button", "list-button"] {
        let _ = by_id(&app.doc, id)?.remove_attribute("disabled");
    }
    set_attr(&app.root, "data-ready", "true");
    Ok(())
}

fn storage(app: &App) -> Option<web_sys::Storage> {
    app.window.local_storage().ok().flatten()
}

fn known_lists(app: &App) -> Vec<String> {
    let saved = storage(app).and_then(|s| s.get_item(LISTS_KEY).ok().flatten());
    let mut lists: Vec<String> = saved.and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default();
    if !lists.iter().any(|l| l == DEFAULT_LIST) {
        lists.insert(0, DEFAULT_LIST.to_owned());
    }
    lists
}

/// The list to show first: `?list=NAME`, else the last one shown, else
/// "inbox".
fn first_list(app: &App) -> String {
    let from_url = app
        .window
        .location()
        .search()
        .ok()
        .and_then(|q| web_sys::UrlSearchParams::new_with_str(&q).ok())
        .and_then(|p| p.get("list"));
    let remembered = || storage(app).and_then(|s| s.get_item(CURRENT_KEY).ok().flatten());
    from_url.or_else(remembered).and_then(|n| clean_name(&n)).unwrap_or_else(|| DEFAULT_LIST.to_owned())
}

fn clean_name(name: &str) -> Option<String> {
    let n: String = name.trim().chars().take(MAX_NAME).collect();
    (!n.is_empty()).then_some(n)
}

/// Shows list `name`: (re)starts its actor, which restores its last
/// committed state from IndexedDB, and follows its committed states.
async fn open_list(app: &Rc<App>, name: String) -> Result<(), JsValue> {
    let generation = app.generation.get() + 1;
    app.generation.set(generation);
    let id = ActorId::new(name.clone()).map_err(|e| e.to_string())?;
    let actor = app.outbox.spawn_actor(id, TodoList).await.map_err(|e| e.to_string())?;
    if app.generation.get() != generation {
        return Ok(()); // a later opening won
    }
    let mut watch = actor.watch();
    let switched = app.current.borrow().as_ref().is_none_or(|c| c.name != name);
    if switched {
        app.editing.set(None);
    }
    *app.current.borrow_mut() = Some(Current { name: name.clone(), actor });
    app.stale.set(false);
    app.list_name.set_text_content(Some(&name));
    app.list_input.set_value(&name);
    set_attr(&app.root, "data-list", &name);
    let mut lists = known_lists(app);
    if !lists.contains(&name) {
        lists.push(name.clone());
    }
    if let Some(s) = storage(app) {
        let _ = s.set_item(CURRENT_KEY, &name);
        if let Ok(json) = serde_json::to_string(&lists) {
            let _ = s.set_item(LISTS_KEY, &json);
        }
    }
    render_known_lists(app, &lists);
    let app = app.clone();
    spawn_local(async move {
        loop {
            if app.generation.get() != generation {
                return;
            }
            let state = watch.borrow_and_update().clone();
            render(&app, &state);
            if watch.changed().await.is_err() {
                return;
            }
        }
    });
    Ok(())
}

fn render_known_lists(app: &App, lists: &[String]) {
    app.known_lists.set_text_content(None);
    for l in lists {
        if let Ok(opt) = app.doc.create_element("option") {
            set_attr(&opt, "value", l);
            let _ = app.known_lists.append_child(&opt);
        }
    }
}

fn el(doc: &Document, tag: &str, attrs: &[(&str, &str)]) -> Result<Element, JsValue> {
    let e = doc.create_element(tag)?;
    for (k, v) in attrs {
        e.set_attribute(k, v)?;
    }
    Ok(e)
}

/// Renders the list's committed state (never a draft), keeping the focus
/// on the same control and a rename in progress as typed.
fn render(app: &App, state: &TodoState) {
    let focused = app.doc.active_element().and_then(|a| {
        let action = a.get_attribute("data-action")?;
        Some((action, a.get_attribute("data-id")))
    });
    let typed = app
        .items
        .query_selector("[data-testid=item-rename-input]")
        .ok()
        .flatten()
        .and_then(|e| e.dyn_into::<HtmlInputElement>().ok())
        .map(|i| i.value());
    if let Err(e) = render_items(app, state, typed) {
        app.status.set_text_content(Some(&format!("Could not show the list: {e:?}")));
    }
    if let Some((action, id)) = focused {
        let selector = match id {
            Some(id) => format!("[data-action=\"{action}\"][data-id=\"{id}\"]"),
            None => format!("[data-action=\"{action}\"]"),
        };
        if let Ok(Some(e)) = app.items.query_selector(&selector)
            && let Ok(h) = e.dyn_into::<HtmlElement>()
        {
            let _ = h.focus();
        }
    }
    let done = state.items.iter().filter(|i| i.done).count();
    set_attr(&app.root, "data-items", &state.items.len().to_string());
    set_attr(&app.root, "data-done", &done.to_string());
    if state.items.is_empty() {
        let _ = app.empty.remove_attribute("hidden");
    } else {
        set_attr(&app.empty, "hidden", "");
    }
}

fn render_items(app: &App, state: &TodoState, typed: Option<String>) -> Result<(), JsValue> {
    let doc = &app.doc;
    app.items.set_text_content(None);
    let editing = app.editing.get();
    for item in &state.items {
        let id = item.id.to_string();
        let done = if item.done { "true" } else { "false" };
        let li = el(
            doc,
            "li",
            &[("class", "item"), ("data-testid", "item"), ("data-id", &id), ("data-done", done)],
        )?;
        li.set_attribute("data-title", &item.title)?;
        let check = el(
            doc,
            "input",
            &[
                ("type", "checkbox"),
                ("data-action", "complete"),
                ("data-id", &id),
                ("data-testid", "item-complete"),
            ],
        )?;
        check.set_attribute("aria-label", &format!("Complete {}", item.title))?;
        if item.done {
            check.set_attribute("checked", "")?;
            check.set_attribute("disabled", "")?;
        }
        li.append_child(&check)?;
        if editing == Some(item.id) {
            li.set_attribute("data-editing", "true")?;
            let field = el(
                doc,
                "input",
                &[("type", "text"), ("class", "rename"), ("data-action", "rename-input"), ("data-id", &id)],
            )?;
            field.set_attribute("data-testid", "item-rename-input")?;
            field.set_attribute("maxlength", "200")?;
            field.set_attribute("aria-label", &format!("New title for {}", item.title))?;
            if let Some(f) = field.dyn_ref::<HtmlInputElement>() {
                f.set_value(typed.as_deref().unwrap_or(&item.title));
            }
            li.append_child(&field)?;
            for (action, label, testid) in
                [("save", "Save", "item-rename-save"), ("cancel", "Cancel", "item-rename-cancel")]
            {
                let b = el(doc, "button", &[("type", "button"), ("data-action", action), ("data-id", &id)])?;
                b.set_attribute("data-testid", testid)?;
                b.set_text_content(Some(label));
                li.append_child(&b)?;
            }
        } else {
            let title = el(doc, "span", &[("class", "title"), ("data-testid", "item-title")])?;
            title.set_text_content(Some(&item.title));
            li.append_child(&title)?;
            for (action, label, testid) in
                [("rename", "Rename", "item-rename"), ("delete", "Delete", "item-delete")]
            {
                let b = el(doc, "button", &[("type", "button"), ("data-action", action), ("data-id", &id)])?;
                b.set_attribute("data-testid", testid)?;
                b.set_attribute("aria-label", &format!("{label} {}", item.title))?;
                b.set_text_content(Some(label));
                li.append_child(&b)?;
            }
        }
        app.items.append_child(&li)?;
    }
    Ok(())
}

fn say(app: &App, text: &str) {
    app.status.set_text_content(Some(text));
}

/// Sends `msg` to the list's actor; `what` describes it in the status
/// line. The UI changes when the actor's committed state does (render);
/// this only reports the outcome.
fn send(app: &Rc<App>, msg: TodoMsg, what: String) {
    let Some((actor, list)) = app.current.borrow().as_ref().map(|c| (c.actor.clone(), c.name.clone())) else {
        return;
    };
    app.inflight.set(app.inflight.get() + 1);
    let app = app.clone();
    spawn_local(async move {
        let result = actor.send(msg).await;
        app.inflight.set(app.inflight.get().saturating_sub(1));
        match result {
            Ok(sent) => {
                let n = app.commits.get() + 1;
                app.commits.set(n);
                set_attr(&app.root, "data-commits", &n.to_string());
                if sent.durable {
                    say(&app, &format!("Saved: {what}."));
                } else {
                    say(&app, &format!("Saved in memory only (storage is full): {what}."));
                }
                if let Some(chan) = &app.sync {
                    let _ = chan.post_message(&JsValue::from_str(&list));
                }
                if let Some(p) = app.panel.borrow().as_ref() {
                    p.refresh();
                }
            }
            Err(e) => {
                say(&app, &format!("Not saved: {e}."));
                // Undo what the control shows (a checkbox ticked, say).
                rerender(&app);
            }
        }
        if app.inflight.get() == 0 && app.stale.get() {
            reopen(&app);
        }
    });
}

/// Another tab changed the list shown: restart its actor from IndexedDB
/// (now, or once this tab's own sends are answered).
fn reopen(app: &Rc<App>) {
    if app.inflight.get() > 0 {
        app.stale.set(true);
        return;
    }
    let Some(name) = app.current.borrow().as_ref().map(|c| c.name.clone()) else { return };
    let app = app.clone();
    spawn_local(async move {
        if let Err(e) = open_list(&app, name).await {
            say(&app, &format!("Could not reload the list: {e:?}"));
        }
    });
}

fn item_id(e: &Element) -> Option<u32> {
    e.get_attribute("data-id")?.parse().ok()
}

fn title_of(app: &App, id: u32) -> String {
    app.current
        .borrow()
        .as_ref()
        .and_then(|c| c.actor.state().items.iter().find(|i| i.id == id).map(|i| format!("“{}”", i.title)))
        .unwrap_or_else(|| format!("item {id}"))
}

fn save_rename(app: &Rc<App>, id: u32) {
    let field = app
        .items
        .query_selector(&format!("[data-action=\"rename-input\"][data-id=\"{id}\"]"))
        .ok()
        .flatten()
        .and_then(|e| e.dyn_into::<HtmlInputElement>().ok());
    let Some(field) = field else { return };
    let title = field.value();
    if title.trim().is_empty() {
        say(app, "A todo needs a title.");
        return;
    }
    app.editing.set(None);
    let what = format!("renamed {} to “{}”", title_of(app, id), title.trim());
    send(app, TodoMsg::Rename(id, title), what);
    rerender(app);
}

fn rerender(app: &App) {
    let state = app.current.borrow().as_ref().map(|c| c.actor.state());
    if let Some(s) = state {
        render(app, &s);
    }
}

fn wire(app: &Rc<App>) -> Result<(), JsValue> {
    let add_form = by_id(&app.doc, "add-form")?;
    let a = app.clone();
    listen(&add_form, "submit", move |ev| {
        ev.prevent_default();
        let title = a.new_title.value();
        if title.trim().is_empty() {
            say(&a, "A todo needs a title.");
            return;
        }
        a.new_title.set_value("");
        let what = format!("added “{}”", title.trim());
        send(&a, TodoMsg::Add(title), what);
    })?;

    let list_form = by_id(&app.doc, "list-form")?;
    let a = app.clone();
    listen(&list_form, "submit", move |ev| {
        ev.prevent_default();
        let Some(name) = clean_name(&a.list_input.value()) else {
            say(&a, "A list needs a name.");
            return;
        };
        let a = a.clone();
        spawn_local(async move {
            match open_list(&a, name.clone()).await {
                Ok(()) => say(&a, &format!("Showing the list “{name}”.")),
                Err(e) => say(&a, &format!("Could not open the list: {e:?}")),
            }
        });
    })?;

    let a = app.clone();
    listen(&app.items, "click", move |ev| {
        let Some(target) = ev.target().and_then(|t| t.dyn_into::<Element>().ok()) else { return };
        let Ok(Some(button)) = target.closest("button[data-action]") else { return };
        let (Some(action), Some(id)) = (button.get_attribute("data-action"), item_id(&button)) else {
            return;
        };
        match action.as_str() {
            "rename" => {
                a.editing.set(Some(id));
                rerender(&a);
                if let Ok(Some(f)) = a.items.query_selector("[data-testid=item-rename-input]")
                    && let Ok(f) = f.dyn_into::<HtmlInputElement>()
                {
                    let _ = f.focus();
                    f.select();
                }
            }
            "save" => save_rename(&a, id),
            "cancel" => {
                a.editing.set(None);
                rerender(&a);
            }
            "delete" => {
                let what = format!("deleted {}", title_of(&a, id));
                send(&a, TodoMsg::Delete(id), what);
            }
            _ => {}
        }
    })?;

    let a = app.clone();
    listen(&app.items, "change", move |ev| {
        let Some(target) = ev.target().and_then(|t| t.dyn_into::<HtmlInputElement>().ok()) else { return };
        if target.get_attribute("data-action").as_deref() != Some("complete") || !target.checked() {
            return;
        }
        if let Some(id) = item_id(&target) {
            target.set_disabled(true);
            let what = format!("completed {}", title_of(&a, id));
            send(&a, TodoMsg::Complete(id), what);
        }
    })?;

    let a = app.clone();
    listen(&app.items, "keydown", move |ev| {
        let Some(key) = ev.dyn_ref::<KeyboardEvent>().map(KeyboardEvent::key) else { return };
        let Some(target) = ev.target().and_then(|t| t.dyn_into::<Element>().ok()) else { return };
        if target.get_attribute("data-action").as_deref() != Some("rename-input") {
            return;
        }
        let Some(id) = item_id(&target) else { return };
        match key.as_str() {
            "Enter" => {
                ev.prevent_default();
                save_rename(&a, id);
            }
            "Escape" => {
                a.editing.set(None);
                rerender(&a);
            }
            _ => {}
        }
    })?;

    if let Some(chan) = &app.sync {
        let a = app.clone();
        listen(chan, "message", move |ev| {
            let list = ev.dyn_ref::<web_sys::MessageEvent>().and_then(|m| m.data().as_string());
            let shown = a.current.borrow().as_ref().map(|c| c.name.clone());
            if list.is_some() && list == shown {
                reopen(&a);
            }
        })?;
    }
    Ok(())
}

/// The online / offline badge (the browser's events; the forwarder
/// listens to the same ones), the storage badge (`watch_durable`) and the
/// forwarding badge (polled: the Web Lock changes hands silently).
fn watch_badges(app: &Rc<App>) -> Result<(), JsValue> {
    let online_badge = by_id(&app.doc, "online-badge")?;
    let show_online = move |online: bool| {
        set_attr(&online_badge, "data-online", if online { "true" } else { "false" });
        online_badge.set_text_content(Some(if online {
            "Online"
        } else {
            "Offline: changes wait on this device"
        }));
    };
    let root = app.root.clone();
    let show = Rc::new(move |online: bool| {
        show_online(online);
        set_attr(&root, "data-online", if online { "true" } else { "false" });
    });
    show(app.window.navigator().on_line());
    let s = show.clone();
    listen(&app.window, "online", move |_| s(true))?;
    let s = show.clone();
    listen(&app.window, "offline", move |_| s(false))?;

    let durable_badge = by_id(&app.doc, "durable-badge")?;
    let a = app.clone();
    let mut durable = app.outbox.watch_durable();
    spawn_local(async move {
        loop {
            let d = *durable.borrow_and_update();
            set_attr(&durable_badge, "data-durable", if d { "true" } else { "false" });
            set_attr(&a.root, "data-durable", if d { "true" } else { "false" });
            durable_badge.set_text_content(Some(if d {
                "Saved on this device"
            } else {
                "Memory only: storage is full"
            }));
            if durable.changed().await.is_err() {
                return;
            }
        }
    });

    let leader_badge = by_id(&app.doc, "leader-badge")?;
    let a = app.clone();
    let tick = move || {
        let f = a.outbox.is_forwarding();
        if leader_badge.get_attribute("data-leader").as_deref() != Some(if f { "true" } else { "false" }) {
            set_attr(&leader_badge, "data-leader", if f { "true" } else { "false" });
            set_attr(&a.root, "data-forwarding", if f { "true" } else { "false" });
            leader_badge.set_text_content(Some(if f { "This tab syncs" } else { "Another tab syncs" }));
        }
    };
    tick();
    let cb = Closure::<dyn FnMut()>::new(tick);
    app.window.set_interval_with_callback_and_timeout_and_arguments_0(cb.as_ref().unchecked_ref(), 500)?;
    cb.forget();
    Ok(())
}
