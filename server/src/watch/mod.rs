//! Watch: fan-out of applied changes to watchers, with history catch-up from the store.
//!
//! Reads the store only through [`History`]: it must never import `storage/`, `raft/` or `grpc/`;
//! only `mvcc`.

pub mod hub;

pub use hub::{History, WatchHub, WatchMessage, WatchSpec};
