//! The Raft log's rows: entries in the `log` tree (key = index, u64 big-endian), and the `raft`
//! tree's few values (vote, committed and purged positions, this member's identity). Entries and
//! values are encoded here as consensus hands them over; what they mean is consensus' business.
//!
//! Must never import `raft/` or `grpc/`.

use std::ops::Bound;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::backend::Backend;
use super::error::StoreError;
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

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The log and its metadata on sled.
#[derive(Clone)]
pub struct LogRows {
    backend: Backend,
    log: sled::Tree,
    raft: sled::Tree,
}

impl LogRows {
    pub fn new(backend: &Backend) -> LogRows {
        LogRows {
            backend: backend.clone(),
            log: backend.log.clone(),
            raft: backend.raft.clone(),
        }
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
        let iter = match end {
            Bound::Included(i) => self.log.range(index_key(start)..=index_key(i)),
            Bound::Excluded(i) => self.log.range(index_key(start)..index_key(i)),
            Bound::Unbounded => self.log.range(index_key(start)..),
        };
        let mut entries = Vec::new();
        for item in iter {
            let (_, value) = item?;
            entries.push(decode(&value)?);
        }
        Ok(entries)
    }

    pub fn last<T: DeserializeOwned>(&self) -> Result<Option<T>, StoreError> {
        match self.log.last()? {
            Some((_, value)) => Ok(Some(decode(&value)?)),
            None => Ok(None),
        }
    }

    /// Writes an entry, not yet durable. Plain inserts, not a sled batch (which forces log writes
    /// of its own): sled recovers a prefix of its log and one task appends in index order, so a
    /// crash leaves a log without holes; the flush that follows makes the whole append durable.
    pub fn append<T: Serialize>(&self, index: u64, entry: &T) -> Result<(), StoreError> {
        self.log.insert(index_key(index), encode(entry)?)?;
        Ok(())
    }

    /// Removes the entries from `index` on.
    pub fn truncate_from(&self, index: u64) -> Result<(), StoreError> {
        // Newest first, so a crash part way leaves a shorter log, never a hole.
        let keys: Vec<_> = self
            .log
            .range(index_key(index)..)
            .keys()
            .collect::<Result<_, _>>()?;
        for key in keys.into_iter().rev() {
            self.log.remove(key)?;
        }
        Ok(())
    }

    /// Removes the entries up to `index`, inclusive.
    pub fn purge_to(&self, index: u64) -> Result<(), StoreError> {
        // Oldest first, so a crash part way leaves the log contiguous.
        for key in self.log.range(..=index_key(index)).keys() {
            self.log.remove(key?)?;
        }
        Ok(())
    }

    /// Makes every write so far durable (the state machine's too: one database orders them all).
    pub async fn flush(&self) -> std::io::Result<()> {
        self.backend.flush().await
    }

    /// [`LogRows::flush`] for a thread of its own.
    pub fn flush_blocking(&self) -> std::io::Result<()> {
        self.backend.flush_blocking()
    }
}
