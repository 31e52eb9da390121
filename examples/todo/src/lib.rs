#![doc = include_str!("../README.md")]

pub mod list;
#[cfg(all(target_arch = "wasm32", feature = "web"))]
pub mod web;

pub use list::{Item, TodoError, TodoList, TodoMsg, TodoState};
