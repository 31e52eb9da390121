//! The todo list actor: its state and its events commit together.

use outbox::{Actor, Context, async_trait};
use serde::{Deserialize, Serialize};

/// One item.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Item {
    pub(crate) id: u32,
    pub(crate) title: String,
    pub(crate) done: bool,
}

/// A list's committed state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TodoState {
    pub(crate) items: Vec<Item>,
    pub(crate) next_id: u32,
}

/// What the list can be asked to do.
#[derive(Clone, Debug)]
pub(crate) enum TodoMsg {
    Add(String),
    Complete(u32),
}

/// Why a message was refused (nothing was committed).
#[derive(Debug, thiserror::Error)]
pub(crate) enum TodoError {
    #[error("a todo needs a title")]
    EmptyTitle,
    #[error("no todo {0}")]
    NoSuchItem(u32),
}

/// The actor: one per list.
#[derive(Debug, Default)]
pub(crate) struct TodoList;

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
                let title = title.trim().to_owned();
                if title.is_empty() {
                    return Err(TodoError::EmptyTitle);
                }
                let id = list.next_id;
                list.next_id += 1;
                list.items.push(Item { id, title: title.clone(), done: false });
                ctx.emit("TODO_ADDED", &serde_json::json!({ "id": id, "title": title }));
            }
            TodoMsg::Complete(id) => {
                let item = list.items.iter_mut().find(|i| i.id == id).ok_or(TodoError::NoSuchItem(id))?;
                item.done = true;
                ctx.emit("TODO_COMPLETED", &serde_json::json!({ "id": id }));
            }
        }
        Ok(())
    }
}
