#![doc = include_str!("../README.md")]

pub mod list;
#[cfg(target_arch = "wasm32")]
pub mod web;

pub use list::{Item, TodoError, TodoList, TodoMsg, TodoState};
