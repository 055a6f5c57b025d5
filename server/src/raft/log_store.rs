//! The Raft log on sled.
//!
//! An append is written to sled at once (so it is readable) and acknowledged to openraft only after a
//! flush has made it durable. Flushes are grouped: a single flusher task takes every append that
//! arrived while the previous flush ran and completes them all with one flush, so 256 concurrent
//! writers cost a handful of fsyncs, not 256.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, RaftLogReader, StorageIOError, Vote};
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::types::{Entry, LogId, NodeId, StorageError, TypeConfig};
use crate::backend::Backend;
use crate::codec::{decode, encode};

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"last_purged";

fn io_err(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    io_err(ErrorSubject::Logs, ErrorVerb::Read, e)
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    io_err(ErrorSubject::Logs, ErrorVerb::Write, e)
}

/// The log storage handed to openraft.
#[derive(Clone)]
pub struct LogStore {
    backend: Backend,
    log: sled::Tree,
    raft: sled::Tree,
    flusher: mpsc::UnboundedSender<LogFlushed<TypeConfig>>,
}

impl LogStore {
    /// Also returns the flusher task, which ends once every clone of the store is dropped.
    pub(crate) fn new(backend: &Backend, fsync: Histogram) -> (LogStore, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        // A thread of its own: the flush blocks, and a wake-up here is one hop where an async task
        // handing the flush to a blocking thread would be two.
        let flush_backend = backend.clone();
        let flusher = tokio::task::spawn_blocking(move || flush_loop(flush_backend, rx, fsync));
        let store = LogStore {
            backend: backend.clone(),
            log: backend.log.clone(),
            raft: backend.raft.clone(),
            flusher: tx,
        };
        (store, flusher)
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        match self.raft.get(key).map_err(read_err)? {
            Some(bytes) => Ok(Some(decode(&bytes).map_err(read_err)?)),
            None => Ok(None),
        }
    }

    async fn write_meta<T: serde::Serialize>(
        &self,
        key: &[u8],
        value: &T,
        flush: bool,
    ) -> Result<(), StorageError> {
        let bytes = encode(value).map_err(write_err)?;
        self.raft.insert(key, bytes).map_err(write_err)?;
        if flush {
            self.backend.flush().await.map_err(write_err)?;
        }
        Ok(())
    }
}

/// Completes appends in groups: wait for one, take all that queued behind it, flush once.
fn flush_loop(
    backend: Backend,
    mut rx: mpsc::UnboundedReceiver<LogFlushed<TypeConfig>>,
    fsync: Histogram,
) {
    let mut pending = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        pending.push(first);
        while let Ok(more) = rx.try_recv() {
            pending.push(more);
        }
        let started = std::time::Instant::now();
        let result = backend.flush_blocking();
        fsync.observe(started.elapsed().as_secs_f64());
        for cb in pending.drain(..) {
            let r = match &result {
                Ok(_) => Ok(()),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            cb.log_io_completed(r);
        }
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => *i + 1,
            Bound::Unbounded => 0,
        };
        let iter = match range.end_bound() {
            Bound::Included(i) => self.log.range(index_key(start)..=index_key(*i)),
            Bound::Excluded(i) => self.log.range(index_key(start)..index_key(*i)),
            Bound::Unbounded => self.log.range(index_key(start)..),
        };
        let mut entries = Vec::new();
        for item in iter {
            let (_, value) = item.map_err(read_err)?;
            entries.push(decode::<Entry>(&value).map_err(read_err)?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.read_meta(KEY_PURGED)?;
        let last = match self.log.last().map_err(read_err)? {
            Some((_, value)) => Some(decode::<Entry>(&value).map_err(read_err)?.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.write_meta(KEY_VOTE, vote, true)
            .await
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.read_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not flushed: the committed index only speeds up re-applying after a restart.
        self.write_meta(KEY_COMMITTED, &committed, false).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.read_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        // Plain inserts, not a sled batch (which forces log writes of its own): sled recovers a
        // prefix of its log and this one task appends in index order, so a crash leaves a log
        // without holes; the flush that follows makes the whole append durable.
        for entry in entries {
            self.log
                .insert(
                    index_key(entry.log_id.index),
                    encode(&entry).map_err(write_err)?,
                )
                .map_err(write_err)?;
        }
        self.flusher
            .send(callback)
            .map_err(|_| write_err(std::io::Error::other("log flusher stopped")))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Newest first, so a crash part way leaves a shorter log, never a hole.
        let keys: Vec<_> = self
            .log
            .range(index_key(log_id.index)..)
            .keys()
            .collect::<Result<_, _>>()
            .map_err(read_err)?;
        for key in keys.into_iter().rev() {
            self.log.remove(key).map_err(write_err)?;
        }
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: a crash in between leaves extra entries, never a hole.
        self.write_meta(KEY_PURGED, &log_id, false).await?;
        // Oldest first, so a crash part way leaves the log contiguous.
        for key in self.log.range(..=index_key(log_id.index)).keys() {
            self.log.remove(key.map_err(read_err)?).map_err(write_err)?;
        }
        Ok(())
    }
}
