//! The effect of each event on the server's copy of the lists.

use std::collections::BTreeMap;

use outbox::consumer::{Handler, HandlerError, Tx};
use outbox::{ActorId, Envelope, async_trait};
use outbox_example_todo::{Item, TodoState};
use serde::{Deserialize, Serialize};

/// What the server has applied: its one piece of state, kept in its
/// SQLite file and changed by each event in the same commit as the
/// event's inbox mark.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// Each list (by the id of the actor that emitted its events) as the
    /// server sees it: the same shape as the app's committed state.
    pub lists: BTreeMap<String, TodoState>,
    /// How many events were applied.
    pub applied: u64,
    /// Every applied event, in the order applied.
    pub log: Vec<LogEntry>,
}

/// One applied event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The event id.
    pub id: String,
    /// The list (actor) it came from.
    pub origin: String,
    /// Its type.
    #[serde(rename = "type")]
    pub event_type: String,
}

/// The payload of the todo events (`TODO_ADDED` and `TODO_RENAMED` carry a
/// title).
#[derive(Deserialize)]
struct TodoPayload {
    id: u32,
    title: Option<String>,
}

impl Applied {
    /// Applies one todo event of list `origin`. An event the list's
    /// actor could not have emitted (an unknown type, a malformed
    /// payload) is refused; one about an item the list no longer has is a
    /// no-op (it is still applied, once).
    pub(crate) fn apply(&mut self, event: &Envelope) -> Result<(), String> {
        let p: TodoPayload =
            event.payload.decode_json().map_err(|e| format!("{} payload: {e}", event.event_type))?;
        let ty = event.event_type.as_str();
        let title = match (ty, p.title) {
            ("TODO_ADDED" | "TODO_RENAMED", Some(t)) => Some(t),
            ("TODO_ADDED" | "TODO_RENAMED", None) => return Err(format!("{ty} without a title")),
            ("TODO_COMPLETED" | "TODO_DELETED", _) => None,
            _ => return Err(format!("unknown event type {ty:?}")),
        };
        let list = self.lists.entry(event.origin.to_string()).or_default();
        let item = list.items.iter_mut().find(|i| i.id == p.id);
        match (ty, item, title) {
            ("TODO_ADDED", None, Some(title)) => list.items.push(Item { id: p.id, title, done: false }),
            ("TODO_COMPLETED", Some(i), _) => i.done = true,
            ("TODO_RENAMED", Some(i), Some(title)) => i.title = title,
            ("TODO_DELETED", Some(_), _) => list.items.retain(|i| i.id != p.id),
            // Added twice, or about an item the list no longer has: no-op.
            _ => {}
        }
        if ty == "TODO_ADDED" {
            list.next_id = list.next_id.max(p.id.saturating_add(1));
        }
        self.applied += 1;
        self.log.push(LogEntry {
            id: event.id.to_string(),
            origin: event.origin.to_string(),
            event_type: event.event_type.clone(),
        });
        Ok(())
    }
}

/// The consumer's handler: loads [`Applied`], applies the event, stages
/// the new state (committed with the inbox mark by `once_per_event`).
pub(crate) struct ApplyTodo {
    pub(crate) state: ActorId,
}

#[async_trait]
impl Handler for ApplyTodo {
    async fn handle(&self, event: &Envelope, tx: &mut Tx<'_>) -> Result<(), HandlerError> {
        let mut applied: Applied = tx.load(&self.state).await?;
        applied.apply(event).map_err(HandlerError::NonRetriable)?;
        tx.save(&applied)
    }
}

#[cfg(test)]
mod tests {
    use outbox::{NewEvent, Timestamp};

    use super::*;

    fn event(list: &str, ty: &str, payload: serde_json::Value) -> Envelope {
        let e = NewEvent::json(ActorId::new(list).expect("id"), ty, &payload).expect("event");
        Envelope::committed(e, Timestamp::EPOCH)
    }

    #[test]
    fn each_todo_event_changes_its_list_like_the_actor_does() {
        let mut a = Applied::default();
        a.apply(&event("inbox", "TODO_ADDED", serde_json::json!({"id": 0, "title": "milk"}))).expect("add");
        a.apply(&event("inbox", "TODO_ADDED", serde_json::json!({"id": 1, "title": "bread"}))).expect("add");
        a.apply(&event("inbox", "TODO_COMPLETED", serde_json::json!({"id": 0}))).expect("complete");
        a.apply(&event("inbox", "TODO_RENAMED", serde_json::json!({"id": 1, "title": "rye"})))
            .expect("rename");
        a.apply(&event("work", "TODO_ADDED", serde_json::json!({"id": 0, "title": "mail"}))).expect("add");
        a.apply(&event("work", "TODO_DELETED", serde_json::json!({"id": 0}))).expect("delete");
        let inbox = &a.lists["inbox"];
        assert_eq!(inbox.next_id, 2);
        assert_eq!(
            inbox.items,
            vec![
                Item { id: 0, title: "milk".into(), done: true },
                Item { id: 1, title: "rye".into(), done: false }
            ]
        );
        assert!(a.lists["work"].items.is_empty());
        assert_eq!(a.lists["work"].next_id, 1);
        assert_eq!(a.applied, 6);
        assert_eq!(a.log.len(), 6);
    }

    #[test]
    fn an_event_the_actor_cannot_emit_is_refused_and_changes_nothing() {
        let mut a = Applied::default();
        assert!(a.apply(&event("inbox", "TODO_EXPLODED", serde_json::json!({"id": 0}))).is_err());
        assert!(a.apply(&event("inbox", "TODO_ADDED", serde_json::json!({"id": 0}))).is_err());
        assert!(a.apply(&event("inbox", "TODO_ADDED", serde_json::json!("milk"))).is_err());
        assert_eq!(a, Applied::default());
    }
}
