//! The browser side: the same [`TodoList`](crate::TodoList) on IndexedDB,
//! its events POSTed to a URL by the tab forwarder.

use std::sync::Arc;

use outbox::{ActorId, OutboxConfig, configure_outbox};
use outbox_sink_http::HttpSink;
use wasm_bindgen::prelude::*;

use crate::{TodoList, TodoMsg};

/// Adds `title` to the list `list` in the IndexedDB database `todo`,
/// delivering the events to `sink_url`; resolves to the list as JSON once
/// committed.
#[wasm_bindgen]
pub async fn add_todo(list: String, title: String, sink_url: String) -> Result<String, JsError> {
    let sink = HttpSink::new(sink_url)?;
    let outbox = configure_outbox(OutboxConfig::default().app_name("todo"), Arc::new(sink)).await?;
    let actor = outbox.spawn_actor(ActorId::new(list)?, TodoList).await?;
    actor.send(TodoMsg::Add(title)).await.map_err(|e| JsError::new(&e.to_string()))?;
    Ok(serde_json::to_string(&*actor.state())?)
}
