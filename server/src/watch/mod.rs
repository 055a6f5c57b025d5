//! Watch: fan-out of applied changes to watchers, with history catch-up from the store.

pub mod hub;

pub use hub::{History, WatchHub, WatchMessage, WatchSpec};
