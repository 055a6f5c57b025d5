//! The Raft log handed to openraft: an adapter over `storage`'s log rows.
//!
//! An append is written to the log file at once (so it is readable) and acknowledged to openraft only
//! after an `fdatasync` has made it durable. Syncs are grouped: a single flusher thread takes every
//! append that arrived while the previous sync ran and completes them all with one, so 256
//! concurrent writers cost a handful of fsyncs, not 256.
//!
//! Must never name sled: the rows are `storage/`'s.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::RaftLogReader;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::types::{Entry, LogId, TypeConfig, Vote};
use crate::storage::{Backend, LogMeta, LogRows};

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// The log storage handed to openraft.
#[derive(Clone)]
pub struct LogStore {
    rows: LogRows,
    flusher: mpsc::UnboundedSender<IOFlushed<TypeConfig>>,
}

impl LogStore {
    /// Also returns the flusher task, which ends once every clone of the store is dropped.
    pub(crate) fn new(
        backend: &Backend,
        fsync: Histogram,
    ) -> io::Result<(LogStore, JoinHandle<()>)> {
        let (tx, rx) = mpsc::unbounded_channel();
        // A thread of its own: the sync blocks, and a wake-up here is one hop where an async task
        // handing the sync to a blocking thread would be two.
        let rows = LogRows::new(backend).map_err(io_err)?;
        let flush_rows = rows.clone();
        let flusher = tokio::task::spawn_blocking(move || flush_loop(flush_rows, rx, fsync));
        let store = LogStore { rows, flusher: tx };
        Ok((store, flusher))
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, which: LogMeta) -> io::Result<Option<T>> {
        self.rows.meta(which).map_err(io_err)
    }

    async fn write_meta<T: serde::Serialize>(
        &self,
        which: LogMeta,
        value: &T,
        flush: bool,
    ) -> io::Result<()> {
        self.rows.set_meta(which, value).map_err(io_err)?;
        if flush {
            self.rows.flush().await?;
        }
        Ok(())
    }
}

/// Completes appends in groups: wait for one, take all that queued behind it, sync once.
fn flush_loop(
    rows: LogRows,
    mut rx: mpsc::UnboundedReceiver<IOFlushed<TypeConfig>>,
    fsync: Histogram,
) {
    let mut pending = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        pending.push(first);
        while let Ok(more) = rx.try_recv() {
            pending.push(more);
        }
        let started = std::time::Instant::now();
        let result = rows.sync_log();
        fsync.observe(started.elapsed().as_secs_f64());
        for cb in pending.drain(..) {
            let r = match &result {
                Ok(_) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            cb.io_completed(r);
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => *i + 1,
            Bound::Unbounded => 0,
        };
        self.rows
            .entries(start, range.end_bound().cloned())
            .map_err(io_err)
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        self.read_meta(LogMeta::Vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId> = self.read_meta(LogMeta::Purged)?;
        let last = match self.rows.last::<Entry>().map_err(io_err)? {
            Some(entry) => Some(entry.log_id),
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

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        self.write_meta(LogMeta::Vote, vote, true).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        // Not flushed: the committed index only speeds up re-applying after a restart.
        self.write_meta(LogMeta::Committed, &committed, false).await
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        Ok(self
            .read_meta::<Option<LogId>>(LogMeta::Committed)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        self.rows
            .append(entries.into_iter().map(|e| (e.log_id.index, e)))
            .map_err(io_err)?;
        self.flusher
            .send(callback)
            .map_err(|_| io::Error::other("log flusher stopped"))?;
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let from = last_log_id.map_or(0, |id| id.index + 1);
        self.rows.truncate_from(from).map_err(io_err)
    }

    /// The purge point may lie past the last entry: after a power loss the state machine can hold
    /// entries the leader's own log had not made durable yet (they were committed on the
    /// followers' copies), and openraft then purges up to what was applied.
    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        self.rows
            .purge_to(log_id.index, &log_id)
            .await
            .map_err(io_err)
    }
}
