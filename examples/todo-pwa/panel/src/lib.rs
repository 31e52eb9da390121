#![doc = include_str!("../README.md")]

#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
mod format;
#[cfg(target_arch = "wasm32")]
mod panel;

#[cfg(target_arch = "wasm32")]
pub use panel::{PanelHandle, PanelOptions, mount, mount_with};
