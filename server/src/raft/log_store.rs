//! The Raft log handed to openraft: an adapter over `storage`'s log rows.
//!
//! An append is written to the log file at once (so it is readable) and acknowledged to openraft only
//! after an `fdatasync` has made it durable. Syncs are grouped: a single flusher thread takes every
//! append that arrived while the previous sync ran and completes them all with one, so 256
//! concurrent writers cost a handful of fsyncs, not 256. An append of a single write may be synced
//! by the member's worker instead, as its role allows (see [`LoneWrites`]).
//!
//! Must never name sled: the rows are `storage/`'s.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{EntryPayload, RaftLogReader};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::types::{Entry, LogId, TypeConfig, Vote};
use crate::storage::{Backend, LogMeta, LogRows};

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Where an append that carries at most one client write is synced, by the member's role. Such an
/// append is a lone write's whole path, and handing its sync to the flusher and being woken back
/// costs two cross-CPU wake-ups on it; under load entries carry many writes and always go to the
/// flusher, so the worker keeps reading requests while the disk works and the next entry gathers
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum LoneWrites {
    /// Every append goes to the flusher.
    Flusher = 0,
    /// Synced by the caller at once: a leader that is the only voter, with nothing to overlap
    /// the sync with.
    AtOnce = 1,
    /// At once while no client waits on this member: a follower. One that serves clients would
    /// leave their requests unread for the length of the sync. A leader with followers keeps the
    /// flusher: its own sync is off a lone write's path, which waits for a follower's.
    AtOnceWhileIdle = 2,
}

/// Who syncs one append.
#[derive(Debug, PartialEq, Eq)]
enum SyncBy {
    Flusher,
    Caller,
}

impl LoneWrites {
    /// For an append of `writes` client writes, with `queued` appends in the flusher's hands,
    /// while clients are or are not `waiting` on this member.
    fn sync_by(self, writes: usize, queued: usize, waiting: bool) -> SyncBy {
        // Only with nothing queued: an earlier append must not complete after this one.
        if writes > 1 || queued > 0 {
            return SyncBy::Flusher;
        }
        match self {
            LoneWrites::Flusher => SyncBy::Flusher,
            LoneWrites::AtOnceWhileIdle if waiting => SyncBy::Flusher,
            LoneWrites::AtOnce | LoneWrites::AtOnceWhileIdle => SyncBy::Caller,
        }
    }

    fn from_u8(v: u8) -> LoneWrites {
        match v {
            1 => LoneWrites::AtOnce,
            2 => LoneWrites::AtOnceWhileIdle,
            _ => LoneWrites::Flusher,
        }
    }
}

/// The setting a member's role keeps current (see [`LogStore::lone_writes`]).
#[derive(Clone)]
pub(crate) struct LoneWritesSetting(Arc<AtomicU8>);

impl LoneWritesSetting {
    pub(crate) fn set(&self, to: LoneWrites) {
        self.0.store(to as u8, Ordering::Release);
    }

    fn get(&self) -> LoneWrites {
        LoneWrites::from_u8(self.0.load(Ordering::Acquire))
    }
}

/// Gauges of the client requests a member is serving: while any is above zero, clients wait on
/// its worker.
#[derive(Clone, Default)]
pub(crate) struct ClientWork(pub Vec<Gauge>);

impl ClientWork {
    fn waiting(&self) -> bool {
        self.0.iter().any(|g| g.get() > 0)
    }
}

/// The log storage handed to openraft.
#[derive(Clone)]
pub struct LogStore {
    rows: LogRows,
    flusher: mpsc::UnboundedSender<IOFlushed<TypeConfig>>,
    /// Appends handed to the flusher and not yet completed.
    queued: Arc<AtomicUsize>,
    lone_writes: LoneWritesSetting,
    client_work: ClientWork,
    fsync: Histogram,
}

impl LogStore {
    /// Also returns the flusher task, which ends once every clone of the store is dropped.
    pub(crate) fn new(
        backend: &Backend,
        fsync: Histogram,
        client_work: ClientWork,
    ) -> io::Result<(LogStore, JoinHandle<()>)> {
        let (tx, rx) = mpsc::unbounded_channel();
        // A thread of its own: the sync blocks, and a wake-up here is one hop where an async task
        // handing the sync to a blocking thread would be two.
        let rows = LogRows::new(backend).map_err(io_err)?;
        let flush_rows = rows.clone();
        let queued = Arc::new(AtomicUsize::new(0));
        let (flush_queued, flush_fsync) = (queued.clone(), fsync.clone());
        let flusher = tokio::task::spawn_blocking(move || {
            flush_loop(flush_rows, rx, flush_fsync, flush_queued)
        });
        let store = LogStore {
            rows,
            flusher: tx,
            queued,
            lone_writes: LoneWritesSetting(Arc::new(AtomicU8::new(LoneWrites::Flusher as u8))),
            client_work,
            fsync,
        };
        Ok((store, flusher))
    }

    /// Where this store syncs lone writes; the member's role keeps it current.
    pub(crate) fn lone_writes(&self) -> LoneWritesSetting {
        self.lone_writes.clone()
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

/// Makes every appended entry durable, recording how long the sync took.
fn timed_sync(rows: &LogRows, fsync: &Histogram) -> io::Result<()> {
    let started = std::time::Instant::now();
    let result = rows.sync_log();
    fsync.observe(started.elapsed().as_secs_f64());
    result
}

/// Completes appends in groups: wait for one, take all that queued behind it, sync once.
fn flush_loop(
    rows: LogRows,
    mut rx: mpsc::UnboundedReceiver<IOFlushed<TypeConfig>>,
    fsync: Histogram,
    queued: Arc<AtomicUsize>,
) {
    let mut pending = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        pending.push(first);
        while let Ok(more) = rx.try_recv() {
            pending.push(more);
        }
        let result = timed_sync(&rows, &fsync);
        for cb in pending.drain(..) {
            let r = match &result {
                Ok(_) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            cb.io_completed(r);
            queued.fetch_sub(1, Ordering::AcqRel);
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
        let mut writes = 0;
        self.rows
            .append(entries.into_iter().map(|e| {
                if let EntryPayload::Normal(cmd) = &e.payload {
                    writes += cmd.count();
                }
                (e.log_id.index, e)
            }))
            .map_err(io_err)?;
        let by = self.lone_writes.get().sync_by(
            writes,
            self.queued.load(Ordering::Acquire),
            self.client_work.waiting(),
        );
        if by == SyncBy::Caller {
            callback.io_completed(timed_sync(&self.rows, &self.fsync));
            return Ok(());
        }
        self.queued.fetch_add(1, Ordering::AcqRel);
        if self.flusher.send(callback).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(io::Error::other("log flusher stopped"));
        }
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

#[cfg(test)]
mod tests {
    use super::{LoneWrites, SyncBy};

    #[test]
    fn only_a_lone_write_with_nothing_queued_is_synced_by_its_caller() {
        use LoneWrites::*;
        for mode in [Flusher, AtOnce, AtOnceWhileIdle] {
            assert_eq!(mode.sync_by(2, 0, false), SyncBy::Flusher, "{mode:?}");
            assert_eq!(mode.sync_by(1, 1, false), SyncBy::Flusher, "{mode:?}");
        }
        assert_eq!(Flusher.sync_by(1, 0, false), SyncBy::Flusher);
        assert_eq!(AtOnce.sync_by(1, 0, true), SyncBy::Caller);
        assert_eq!(AtOnceWhileIdle.sync_by(0, 0, false), SyncBy::Caller);
        assert_eq!(AtOnceWhileIdle.sync_by(1, 0, true), SyncBy::Flusher);
    }
}
