//! Storage, below consensus: everything that names sled. The database and its durability
//! (`backend`) and its compacting rewrite (`defrag`), how rows are keyed (`keys`) and key revisions laid out (`revisions`), the persisted
//! MVCC store and its loading (`store`),
//! deterministic apply (`apply`), Raft snapshot files (`snapshot_file`, `snapshots`), backups
//! (`backup`: etcd's snapshot format, `etcd_snapshot` over the `bbolt` file format, and Cairn's
//! own older one), the Raft log's write-ahead file (`wal`) and its metadata rows (`log`), with its
//! own error type.
//!
//! Arrows point down only: `raft/` adapts this layer to openraft, and this layer must never import
//! `raft/`, `grpc/` or `node`. It uses `mvcc` (the index), `lease` and `watch` (the tables and the
//! hub that apply keeps in step) and the shared `command` and `codec` vocabularies.

pub(crate) mod apply;
pub(crate) mod backend;
pub mod backup;
pub(crate) mod bbolt;
pub(crate) mod defrag;
pub(crate) mod error;
pub(crate) mod etcd_snapshot;
pub(crate) mod keys;
pub(crate) mod log;
pub(crate) mod revisions;
pub(crate) mod snapshot_file;
pub(crate) mod snapshots;
pub(crate) mod store;
pub(crate) mod wal;

pub use apply::Payload;
pub(crate) use backend::Backend;
pub use error::StoreError;
pub(crate) use log::{LogMeta, LogRows};
pub use store::{ConsensusRows, SnapshotMeta, StoreState};
