//! The Raft log as consensus sees it: entries in the write-ahead file (`wal`), and the `raft`
//! tree's few values in sled (vote, committed and purged positions, this member's identity).
//! Entries and values are encoded here as consensus hands them over; what they mean is
//! consensus' business.
//!
//! Must never import `raft/` or `grpc/`.

use std::ops::Bound;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::backend::Backend;
use super::error::StoreError;
use super::wal::Wal;
use crate::codec::{decode, encode};

/// Values of the `raft` tree.
#[derive(Clone, Copy, Debug)]
pub enum LogMeta {
    Vote,
    Committed,
    Purged,
    /// This member's (member id, cluster id), fixed at first start.
    Identity,
}

/// The index of [`LogMeta::Purged`], kept beside it in this layer's own encoding: the log file
/// forgets entries up to it when it is opened.
const PURGED_INDEX: &[u8] = b"purged_index";

impl LogMeta {
    fn key(self) -> &'static [u8] {
        match self {
            LogMeta::Vote => b"vote",
            LogMeta::Committed => b"committed",
            LogMeta::Purged => b"last_purged",
            LogMeta::Identity => b"identity",
        }
    }
}

/// The log (in the write-ahead file) and its metadata (in sled).
#[derive(Clone)]
pub struct LogRows {
    backend: Backend,
    wal: Wal,
    raft: sled::Tree,
}

impl LogRows {
    /// Also forgets entries up to the recorded purge point that a crash left in the log.
    pub fn new(backend: &Backend) -> Result<LogRows, StoreError> {
        let rows = LogRows {
            backend: backend.clone(),
            wal: backend.wal.clone(),
            raft: backend.raft.clone(),
        };
        if let Some(bytes) = rows.raft.get(PURGED_INDEX)? {
            rows.wal.purge_to(decode::<u64>(&bytes)?)?;
        }
        Ok(rows)
    }

    pub fn meta<T: DeserializeOwned>(&self, which: LogMeta) -> Result<Option<T>, StoreError> {
        match self.raft.get(which.key())? {
            Some(bytes) => Ok(Some(decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Stores a value, not yet durable: see [`LogRows::flush`].
    pub fn set_meta<T: Serialize>(&self, which: LogMeta, value: &T) -> Result<(), StoreError> {
        self.raft.insert(which.key(), encode(value)?)?;
        Ok(())
    }

    /// Entries with indexes from `start` up to `end`.
    pub fn entries<T: DeserializeOwned>(
        &self,
        start: u64,
        end: Bound<u64>,
    ) -> Result<Vec<T>, StoreError> {
        let end = match end {
            Bound::Included(i) => Some(i.saturating_add(1)),
            Bound::Excluded(i) => Some(i),
            Bound::Unbounded => None,
        };
        self.wal
            .read(start, end)?
            .iter()
            .map(|bytes| Ok(decode(bytes)?))
            .collect()
    }

    pub fn last<T: DeserializeOwned>(&self) -> Result<Option<T>, StoreError> {
        let Some((_, last)) = self.wal.bounds() else {
            return Ok(None);
        };
        Ok(self
            .wal
            .read(last, None)?
            .first()
            .map(|b| decode(b))
            .transpose()?)
    }

    /// Writes entries (index, entry) in index order, readable at once, durable after
    /// [`LogRows::sync_log`].
    pub fn append<T: Serialize>(
        &self,
        entries: impl IntoIterator<Item = (u64, T)>,
    ) -> Result<(), StoreError> {
        let encoded: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|(i, e)| Ok((i, encode(&e)?)))
            .collect::<Result<_, StoreError>>()?;
        self.wal
            .append(encoded.iter().map(|(i, b)| (*i, b.as_slice())))?;
        Ok(())
    }

    /// Removes the entries from `index` on, durably.
    pub fn truncate_from(&self, index: u64) -> Result<(), StoreError> {
        Ok(self.wal.truncate_from(index)?)
    }

    /// Removes the entries up to `index`, inclusive. The purge point (`purged`, stored under
    /// [`LogMeta::Purged`]) and the state machine, which then holds the only copy of what those
    /// entries did, are made durable first.
    pub async fn purge_to<T: Serialize>(&self, index: u64, purged: &T) -> Result<(), StoreError> {
        self.set_meta(LogMeta::Purged, purged)?;
        self.raft.insert(PURGED_INDEX, encode(&index)?)?;
        self.flush().await?;
        Ok(self.wal.purge_to(index)?)
    }

    /// Makes every appended entry durable (one `fdatasync` of the log file; sled is untouched).
    pub fn sync_log(&self) -> std::io::Result<()> {
        self.wal.sync()
    }

    /// Makes the metadata and the state machine durable.
    pub async fn flush(&self) -> std::io::Result<()> {
        self.backend.flush().await
    }
}
