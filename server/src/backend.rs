//! sled layout. One sled database per member, so one write-ahead log orders every write: a flush
//! that makes a log append durable also makes every earlier state-machine batch durable.
//!
//! Trees:
//! - `log`: Raft log, key = index (u64 big-endian), value = bincode entry.
//! - `raft`: vote, committed and last purged log ids; this member's identity.
//! - `sm`: the state machine, replaced whole when a snapshot is installed. Keys starting with
//!   [`KV_PREFIX`] hold MVCC revisions (`r` + 16-byte revision -> bincode [`StoredKv`]); keys
//!   starting with `m/` hold the applied log id, membership and store revisions. Everything an apply
//!   changes goes into one `apply_batch`, so data, applied index and membership move together.
//! - `snapshot`: the last built or installed snapshot (meta and data).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::mvcc::{KeyValue, MvccError, Revision, ValueReader};

/// Sorts after the `m/` meta keys: revisions are appended at the right edge of the tree, and meta keys,
/// rewritten on every apply, stay in a small leaf of their own instead of the growing last one.
pub(crate) const KV_PREFIX: u8 = b'r';
/// Lease rows: `l/` + id (i64 big-endian) -> bincode TTL.
pub(crate) const LEASE_PREFIX: &[u8] = b"l/";
/// Published member attributes: `a/` + member id (u64 big-endian) -> bincode (name, client URLs).
pub(crate) const MEMBER_PREFIX: &[u8] = b"a/";
/// Raised alarms: `x/` + member id (u64 big-endian) + alarm type (i32 big-endian) -> empty.
pub(crate) const ALARM_PREFIX: &[u8] = b"x/";
pub(crate) const META_APPLIED: &[u8] = b"m/applied";
pub(crate) const META_MEMBERSHIP: &[u8] = b"m/membership";
pub(crate) const META_REVISION: &[u8] = b"m/revision";
pub(crate) const META_COMPACT: &[u8] = b"m/compact";

/// One stored revision of a key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct StoredKv {
    pub kv: KeyValue,
    pub tombstone: bool,
}

pub(crate) fn kv_key(rev: Revision) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[0] = KV_PREFIX;
    key[1..].copy_from_slice(&rev.to_bytes());
    key
}

#[derive(Clone)]
pub(crate) struct Backend {
    pub db: sled::Db,
    pub log: sled::Tree,
    pub raft: sled::Tree,
    pub sm: sled::Tree,
    pub snapshot: sled::Tree,
}

impl Backend {
    pub fn open(dir: &Path, cache_bytes: u64) -> sled::Result<Backend> {
        let db = sled::Config::new()
            .path(dir.join("db"))
            .cache_capacity(cache_bytes)
            // Durability is driven by explicit flushes after log appends; a timer adds nothing.
            .flush_every_ms(None)
            .open()?;
        Ok(Backend {
            log: db.open_tree("log")?,
            raft: db.open_tree("raft")?,
            sm: db.open_tree("sm")?,
            snapshot: db.open_tree("snapshot")?,
            db,
        })
    }

    /// Bytes the database occupies on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

/// Reads MVCC values from the `sm` tree.
pub(crate) struct SledValues<'a>(pub &'a sled::Tree);

impl ValueReader for SledValues<'_> {
    fn read(&self, rev: Revision) -> Result<Option<KeyValue>, MvccError> {
        match self.0.get(kv_key(rev)) {
            Ok(Some(bytes)) => crate::raft::types::decode::<StoredKv>(&bytes)
                .map(|s| Some(s.kv))
                .map_err(|e| MvccError::Storage(e.to_string())),
            Ok(None) => Ok(None),
            Err(e) => Err(MvccError::Storage(e.to_string())),
        }
    }
}
