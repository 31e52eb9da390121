//! The todo list actor: the same code natively and in a browser.

use outbox::{Actor, Context, async_trait};
use serde::{Deserialize, Serialize};

/// One item.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// Its id within the list.
    pub id: u32,
    /// What to do.
    pub title: String,
    /// Whether it is done.
    pub done: bool,
}

/// A list's committed state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TodoState {
    /// The items, in order of creation.
    pub items: Vec<Item>,
    /// The id the next item gets.
    pub next_id: u32,
}

/// What a list can be asked to do.
#[derive(Clone, Debug)]
pub enum TodoMsg {
    /// Adds an item.
    Add(String),
    /// Marks an item done.
    Complete(u32),
    /// Renames an item.
    Rename(u32, String),
    /// Deletes an item.
    Delete(u32),
}

/// Why a message was refused (nothing was committed).
#[derive(Debug, thiserror::Error)]
pub enum TodoError {
    /// An empty title.
    #[error("a todo needs a title")]
    EmptyTitle,
    /// No item has this id.
    #[error("no todo {0}")]
    NoSuchItem(u32),
}

/// The actor: one per list.
#[derive(Debug, Default)]
pub struct TodoList;

#[async_trait]
impl Actor for TodoList {
    type State = TodoState;
    type Message = TodoMsg;
    type Error = TodoError;

    async fn handle(
        &mut self,
        list: &mut TodoState,
        msg: TodoMsg,
        ctx: &mut Context,
    ) -> Result<(), TodoError> {
        match msg {
            TodoMsg::Add(title) => {
                let title = non_empty(title)?;
                let id = list.next_id;
                list.next_id += 1;
                list.items.push(Item { id, title: title.clone(), done: false });
                ctx.emit("TODO_ADDED", &serde_json::json!({ "id": id, "title": title }));
            }
            TodoMsg::Complete(id) => {
                find(list, id)?.done = true;
                ctx.emit("TODO_COMPLETED", &serde_json::json!({ "id": id }));
            }
            TodoMsg::Rename(id, title) => {
                let title = non_empty(title)?;
                find(list, id)?.title = title.clone();
                ctx.emit("TODO_RENAMED", &serde_json::json!({ "id": id, "title": title }));
            }
            TodoMsg::Delete(id) => {
                let before = list.items.len();
                list.items.retain(|i| i.id != id);
                if list.items.len() == before {
                    return Err(TodoError::NoSuchItem(id));
                }
                ctx.emit("TODO_DELETED", &serde_json::json!({ "id": id }));
            }
        }
        Ok(())
    }
}

fn non_empty(title: String) -> Result<String, TodoError> {
    let t = title.trim();
    if t.is_empty() { Err(TodoError::EmptyTitle) } else { Ok(t.to_owned()) }
}

fn find(list: &mut TodoState, id: u32) -> Result<&mut Item, TodoError> {
    list.items.iter_mut().find(|i| i.id == id).ok_or(TodoError::NoSuchItem(id))
}
