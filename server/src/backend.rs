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

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
    disk: Arc<Disk>,
}

/// What it takes to make sled's writes durable.
///
/// sled's flush writes its log with `sync_file_range`, which neither empties the drive's write
/// cache nor commits file metadata, and it writes large values to blob files it never syncs. A
/// power cut could then lose writes Cairn acknowledged. So after each flush the data file is
/// `fdatasync`ed, and blob files (and their directory) are synced once, when they first appear.
struct Disk {
    data: std::fs::File,
    blobs: PathBuf,
    synced_blobs: Mutex<HashSet<std::ffi::OsString>>,
}

impl Disk {
    fn sync(&self) -> std::io::Result<()> {
        self.data.sync_data()?;
        let entries = match std::fs::read_dir(&self.blobs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut synced = self.synced_blobs.lock().unwrap_or_else(|p| p.into_inner());
        let mut present = HashSet::new();
        let mut new_files = false;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if !synced.contains(&name) {
                match std::fs::File::open(entry.path()) {
                    Ok(f) => f.sync_all()?,
                    // Removed by sled since it was listed: nothing left to make durable.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                new_files = true;
            }
            present.insert(name);
        }
        if new_files {
            std::fs::File::open(&self.blobs)?.sync_all()?;
        }
        *synced = present;
        Ok(())
    }
}

impl Backend {
    pub fn open(dir: &Path, cache_bytes: u64) -> sled::Result<Backend> {
        let path = dir.join("db");
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(cache_bytes)
            // Durability is driven by explicit flushes after log appends; a timer adds nothing.
            .flush_every_ms(None)
            .open()?;
        // The data dir's own entries (sled's files) must survive a power cut too.
        std::fs::File::open(&path)?.sync_all()?;
        std::fs::File::open(dir)?.sync_all()?;
        let disk = Disk {
            data: std::fs::File::open(path.join("db"))?,
            blobs: path.join("blobs"),
            synced_blobs: Mutex::new(HashSet::new()),
        };
        Ok(Backend {
            log: db.open_tree("log")?,
            raft: db.open_tree("raft")?,
            sm: db.open_tree("sm")?,
            snapshot: db.open_tree("snapshot")?,
            db,
            disk: Arc::new(disk),
        })
    }

    /// Makes every write so far durable: sled's flush, then an `fdatasync` (see [`Disk`]).
    pub async fn flush(&self) -> std::io::Result<()> {
        self.db.flush_async().await.map_err(std::io::Error::other)?;
        let disk = self.disk.clone();
        tokio::task::spawn_blocking(move || disk.sync())
            .await
            .map_err(std::io::Error::other)?
    }

    /// [`Backend::flush`] for callers outside an async runtime.
    pub fn flush_blocking(&self) -> std::io::Result<()> {
        self.db.flush().map_err(std::io::Error::other)?;
        self.disk.sync()
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
