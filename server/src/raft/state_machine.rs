//! The replicated state machine: MVCC over sled.
//!
//! Apply is deterministic: it reads only the entry and stored state. Each entry's effects, the applied
//! log id, the membership and the store revisions go to sled as one crash-atomic change set
//! ([`RowWrites`]), so after a crash (and the replay on open) the stored state is exactly the state
//! after some applied prefix of the log, and openraft re-applies the rest from the log.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, StorageIOError,
};
use prometheus_client::metrics::histogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::snapshot_file;
use super::types::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::backend::{
    kv_key, Backend, RowWrites, SledValues, StoredKv, ALARM_PREFIX, KV_PREFIX, LEASE_PREFIX,
    MEMBER_PREFIX, META_APPLIED, META_APPLY_RECORD, META_COMPACT, META_MEMBERSHIP, META_REVISION,
};
use crate::codec::{decode, encode};
use crate::command::{Applied, ApplyError, Command, CommandResponse, ALARM_NOSPACE};
use crate::lease::{Lease, LeaseTable};
use crate::mvcc::{
    BackendOp, DeleteRangeRequest, Event, EventType, KeyValue, KvIndex, MvccError, RangeRequest,
    RangeResponse, RequestOp, Revision, TxnRequest, ValueReader,
};
use crate::snapshot::{BackupFile, META_RESTORING};
use crate::watch::{History, WatchHub, WatchSpec};

fn sm_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(ErrorSubject::StateMachine, verb, AnyError::new(&e)).into()
}

fn snap_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(ErrorSubject::Snapshot(None), verb, AnyError::new(&e)).into()
}

/// The current snapshot: bincode (meta, file name in the snapshot directory), one value so the two
/// move together.
const SNAP_CURRENT: &[u8] = b"current";
/// Where snapshots lived before they moved to files: meta and the whole image as sled values.
const LEGACY_SNAP_META: &[u8] = b"meta";
const LEGACY_SNAP_DATA: &[u8] = b"data";
/// Present in `sm` while a received snapshot replaces the store: the store is then torn, and opening
/// it redoes the install from the current snapshot file.
const META_INSTALLING: &[u8] = b"m/installing";

/// Rows of the `sm` tree.
pub(crate) type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// How snapshots were stored before they moved to files: every row of the `sm` tree.
#[derive(Serialize, Deserialize)]
struct SnapshotImage {
    entries: Rows,
}

/// The `sm` tree rows of a snapshot stored the old way (see `migrate_legacy_snapshot`).
fn decode_image(bytes: &[u8]) -> Result<Rows, String> {
    decode::<SnapshotImage>(bytes)
        .map(|i| i.entries)
        .map_err(|e| e.to_string())
}

/// State shared between the state machine (the only writer) and the read paths.
pub struct StoreState {
    backend: Backend,
    hub: Arc<WatchHub>,
    index: RwLock<KvIndex>,
    leases: Mutex<LeaseTable>,
    /// Name and client URLs each member published.
    member_attrs: Mutex<BTreeMap<u64, (String, Vec<String>)>>,
    applied: Mutex<(Option<LogId>, StoredMembership)>,
    revision_tx: watch::Sender<i64>,
    snapshot_seq: AtomicU64,
    /// Raised alarms: (member id, etcd AlarmType number).
    alarms: Mutex<BTreeSet<(u64, i32)>>,
    /// Bytes of stored key revisions (keys and values as stored): what the space quota limits.
    /// Compaction lowers it.
    bytes_in_use: AtomicU64,
    /// Held (shared) by copies in progress; compaction and snapshot installs, which delete stored
    /// revisions, take it exclusively.
    rewrite_guard: Arc<tokio::sync::RwLock<()>>,
    /// The temporary file a snapshot is being received into.
    receiving: Mutex<Option<PathBuf>>,
    /// Serializes changes of the current snapshot (a build may finish while a newer one installs).
    snapshot_lock: tokio::sync::Mutex<()>,
}

/// A copy of the store being taken; see [`StoreState::capture`].
pub(crate) struct Capture {
    rows: Rows,
    revision: i64,
    applied: Option<LogId>,
    membership: StoredMembership,
    _guard: tokio::sync::OwnedRwLockReadGuard<()>,
}

impl StoreState {
    /// Serves a read from local state.
    pub fn range(&self, req: &RangeRequest) -> Result<(RangeResponse, i64), MvccError> {
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        let resp = index.range(req, &SledValues(&self.backend.sm))?;
        Ok((resp, index.current_revision()))
    }

    pub fn current_revision(&self) -> i64 {
        self.index
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .current_revision()
    }

    pub fn compact_revision(&self) -> i64 {
        self.index
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .compact_revision()
    }

    /// What a member published about itself: its name and client URLs.
    pub fn member_attrs(&self, id: u64) -> Option<(String, Vec<String>)> {
        self.member_attrs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// `(id, ttl)` of every lease.
    pub fn lease_ttls(&self) -> Vec<(i64, i64)> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner()).ttls()
    }

    /// A lease's granted TTL and attached keys.
    pub fn lease(&self, id: i64) -> Option<Lease> {
        self.leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// The watch hub fed by this state machine's applies.
    pub fn hub(&self) -> &Arc<WatchHub> {
        &self.hub
    }

    /// Follows the store revision as entries are applied.
    pub fn subscribe_revision(&self) -> watch::Receiver<i64> {
        self.revision_tx.subscribe()
    }

    pub fn membership(&self) -> StoredMembership {
        self.applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    pub fn backend_size(&self) -> u64 {
        self.backend.size_on_disk()
    }

    /// Makes everything applied so far durable.
    pub async fn flush(&self) -> std::io::Result<()> {
        self.backend.flush().await
    }

    /// Bytes of stored key revisions, what the space quota counts.
    pub fn bytes_in_use(&self) -> u64 {
        self.bytes_in_use.load(Ordering::Relaxed)
    }

    /// Raised alarms as (member id, AlarmType number).
    pub fn alarms(&self) -> Vec<(u64, i32)> {
        self.alarms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect()
    }

    pub fn has_alarm(&self, alarm: i32) -> bool {
        self.alarms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|(_, a)| *a == alarm)
    }

    /// Number of keys that currently exist.
    pub fn key_count(&self) -> usize {
        self.index
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .key_count()
    }

    /// etcd's HashKV: a CRC-32 over every stored key revision up to `revision` (0 = the current one),
    /// as stored. Members that applied the same log (and the same compactions) hash alike.
    /// Returns (hash, compact revision, hashed revision).
    pub async fn hash_kv(self: &Arc<Self>, revision: i64) -> Result<(u32, i64, i64), MvccError> {
        let storage = |e: &dyn std::fmt::Display| MvccError::Storage(e.to_string());
        // Revisions up to the current one do not change while compaction is held off, so they
        // are read without holding up applies.
        let guard = self.rewrite_guard.clone().read_owned().await;
        let (current, compact) = {
            let index = self.index.read().unwrap_or_else(|p| p.into_inner());
            (index.current_revision(), index.compact_revision())
        };
        let revision = if revision <= 0 { current } else { revision };
        if revision > current {
            return Err(MvccError::FutureRevision);
        }
        if revision < compact {
            return Err(MvccError::Compacted);
        }
        let state = self.clone();
        let hash = tokio::task::spawn_blocking(move || {
            let _guard = guard;
            let mut hasher = crc32fast::Hasher::new();
            let end = kv_key(Revision::new(revision + 1, 0));
            for item in state.backend.sm.range(&[KV_PREFIX][..]..&end[..]) {
                let (key, value) = item?;
                hasher.update(&key);
                hasher.update(&value);
            }
            Ok::<_, sled::Error>(hasher.finalize())
        })
        .await
        .map_err(|e| storage(&e))?
        .map_err(|e| storage(&e))?;
        Ok((hash, compact, revision))
    }

    /// Starts a point-in-time copy of the store: takes the small rows (meta, leases, members,
    /// alarms) and the current revision now; [`StoreState::complete`] adds the key revisions up to
    /// that revision later, without holding up applies.
    ///
    /// Stored revisions never change once written, except when compaction deletes them or a
    /// snapshot install replaces the store; both wait for the capture to be completed or dropped.
    /// `applied` matches the rows only when no apply is in progress (on the apply task).
    pub(crate) async fn capture(self: &Arc<Self>) -> Result<Capture, sled::Error> {
        let guard = self.rewrite_guard.clone().read_owned().await;
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        let revision = index.current_revision();
        let sm = &self.backend.sm;
        let mut rows = Vec::new();
        let after_kv = [KV_PREFIX + 1];
        for item in sm
            .range(..&[KV_PREFIX][..])
            .chain(sm.range(&after_kv[..]..))
        {
            let (k, v) = item?;
            // These belong to this store's own crash recovery, not to its content.
            if k != META_APPLY_RECORD && k != META_INSTALLING {
                rows.push((k.to_vec(), v.to_vec()));
            }
        }
        let (applied, membership) = self
            .applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        drop(index);
        Ok(Capture {
            rows,
            revision,
            applied,
            membership,
            _guard: guard,
        })
    }

    /// Feeds a capture's rows to `row`: the small rows taken with it, then the key revisions up to
    /// its revision, read from sled as they go (blocking; run off the async threads).
    fn captured_rows(
        &self,
        capture: Capture,
        mut row: impl FnMut(&[u8], &[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        for (k, v) in &capture.rows {
            row(k, v)?;
        }
        let end = kv_key(Revision::new(capture.revision + 1, 0));
        for item in self.backend.sm.range(&[KV_PREFIX][..]..&end[..]) {
            let (k, v) = item.map_err(std::io::Error::other)?;
            row(&k, &v)?;
        }
        Ok(())
    }

    /// A consistent copy of the whole store as a backup file (see [`crate::snapshot`]), in chunks of
    /// up to `chunk` bytes. The copy is first written to an unlinked file in the snapshot directory
    /// (rows streamed from sled, so memory stays bounded whatever the store's size), which frees
    /// compaction and snapshot installs as soon as it is written, not when a slow client has read
    /// it. Returns the revision it reflects, the file's size, and the chunks.
    pub(crate) async fn backup(
        self: &Arc<Self>,
        chunk: usize,
    ) -> Result<
        (
            i64,
            u64,
            tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
        ),
        MvccError,
    > {
        let storage = |e: &dyn std::fmt::Display| MvccError::Storage(e.to_string());
        let capture = self.capture().await.map_err(|e| storage(&e))?;
        let revision = capture.revision;
        let path = snapshot_file::temp_path(&self.backend.snap_dir, "backup");
        let state = self.clone();
        let (file, size) = tokio::task::spawn_blocking(move || {
            let written = BackupFile::create(&path).and_then(|mut rows| {
                state.captured_rows(capture, |k, v| rows.row(k, v))?;
                BackupFile::finish(rows)
            });
            let opened = written.and_then(|size| Ok((std::fs::File::open(&path)?, size)));
            // Unlinked at once: the open handle keeps it readable, and nothing is left behind.
            let _ = std::fs::remove_file(&path);
            opened
        })
        .await
        .map_err(|e| storage(&e))?
        .map_err(|e| storage(&e))?;
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut input = file;
            loop {
                let mut buf = vec![0; chunk];
                let n = match input.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                };
                buf.truncate(n);
                if tx.blocking_send(Ok(buf)).is_err() {
                    return;
                }
            }
        });
        Ok((revision, size, rx))
    }

    /// The current snapshot's meta and file name.
    fn current_snapshot(&self) -> Result<Option<(SnapshotMeta, String)>, StorageError> {
        match self
            .backend
            .snapshot
            .get(SNAP_CURRENT)
            .map_err(|e| snap_err(ErrorVerb::Read, e))?
        {
            Some(bytes) => Ok(Some(
                decode(&bytes).map_err(|e| snap_err(ErrorVerb::Read, e))?,
            )),
            None => Ok(None),
        }
    }

    /// Moves a finished snapshot file from `from` to its own name and makes it current unless a
    /// newer one already is (an install always becomes current), durably, then removes the files
    /// of the others; with `installing`, also marks the store as being replaced by it. Returns the
    /// file, opened. Renaming and opening happen under the same lock as the removal, so a build and
    /// an install finishing together never remove each other's file before it is open.
    async fn adopt_snapshot(
        &self,
        meta: &SnapshotMeta,
        from: PathBuf,
        installing: bool,
    ) -> Result<tokio::fs::File, StorageError> {
        let _changing = self.snapshot_lock.lock().await;
        let dir = self.backend.snap_dir.clone();
        let name = snapshot_file::file_name(&meta.snapshot_id);
        let path = dir.join(&name);
        let (sync_dir, target) = (dir.clone(), path.clone());
        tokio::task::spawn_blocking(move || {
            std::fs::rename(from, &target)?;
            snapshot_file::sync_dir(&sync_dir)
        })
        .await
        .map_err(|e| snap_err(ErrorVerb::Write, e))?
        .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| snap_err(ErrorVerb::Read, e))?;
        let keep = match self.current_snapshot()? {
            Some((current, current_name))
                if current.last_log_id > meta.last_log_id && !installing =>
            {
                Some(current_name)
            }
            _ => {
                let value = encode(&(meta, &name)).map_err(|e| snap_err(ErrorVerb::Write, e))?;
                self.backend
                    .snapshot
                    .insert(SNAP_CURRENT, value)
                    .map_err(|e| snap_err(ErrorVerb::Write, e))?;
                Some(name.clone())
            }
        };
        if installing {
            self.backend
                .sm
                .insert(META_INSTALLING, name.as_bytes())
                .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        }
        // openraft purges the log up to a snapshot once it is reported, so it must be durable first.
        self.backend
            .flush()
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        tokio::task::spawn_blocking(move || {
            snapshot_file::remove_others(&dir, keep.as_deref(), false)
        })
        .await
        .map_err(|e| snap_err(ErrorVerb::Write, e))?
        .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        Ok(file)
    }

    /// Writes a capture to a new snapshot file (durable, under a temporary name, which it returns),
    /// streaming the key revisions from sled.
    fn write_snapshot_file(&self, capture: Capture) -> std::io::Result<PathBuf> {
        let tmp = snapshot_file::temp_path(&self.backend.snap_dir, "build");
        let mut out = snapshot_file::RowWriter::create(&tmp)?;
        self.captured_rows(capture, |k, v| out.row(k, v))?;
        out.finish_file()?;
        Ok(tmp)
    }

    /// Replaces the `sm` tree with a snapshot file's rows, row by row (blocking). Run under the
    /// install marker, so a crash part way is redone when the store opens.
    fn replace_from_snapshot(
        &self,
        file: std::fs::File,
        meta: &SnapshotMeta,
    ) -> Result<(), StorageError> {
        let sm = &self.backend.sm;
        let read = |e: std::io::Error| snap_err(ErrorVerb::Read, e);
        let write = |e: sled::Error| sm_err(ErrorVerb::Write, e);
        for key in sm.iter().keys() {
            let key = key.map_err(|e| sm_err(ErrorVerb::Read, e))?;
            if key != META_INSTALLING {
                sm.remove(key).map_err(write)?;
            }
        }
        let mut rows = snapshot_file::RowReader::open(file).map_err(read)?;
        while let Some((k, v)) = rows.next_row().map_err(read)? {
            sm.insert(k, v).map_err(write)?;
        }
        sm.insert(
            META_APPLIED,
            encode(&meta.last_log_id).map_err(|e| sm_err(ErrorVerb::Write, e))?,
        )
        .map_err(write)?;
        sm.insert(
            META_MEMBERSHIP,
            encode(&meta.last_membership).map_err(|e| sm_err(ErrorVerb::Write, e))?,
        )
        .map_err(write)?;
        sm.remove(META_INSTALLING).map_err(write)?;
        Ok(())
    }

    /// Moves a snapshot stored the old way (whole, inside sled) into a file.
    fn migrate_legacy_snapshot(&self) -> Result<(), StorageError> {
        let tree = &self.backend.snapshot;
        let read = |e: sled::Error| snap_err(ErrorVerb::Read, e);
        let (Some(meta), Some(data)) = (
            tree.get(LEGACY_SNAP_META).map_err(read)?,
            tree.get(LEGACY_SNAP_DATA).map_err(read)?,
        ) else {
            return Ok(());
        };
        let meta: SnapshotMeta = decode(&meta).map_err(|e| snap_err(ErrorVerb::Read, e))?;
        let rows =
            decode_image(&data).map_err(|e| snap_err(ErrorVerb::Read, std::io::Error::other(e)))?;
        let name = snapshot_file::file_name(&meta.snapshot_id);
        let io = |e: std::io::Error| snap_err(ErrorVerb::Write, e);
        let tmp = snapshot_file::temp_path(&self.backend.snap_dir, "migrate");
        let mut out = snapshot_file::RowWriter::create(&tmp).map_err(io)?;
        for (k, v) in &rows {
            out.row(k, v).map_err(io)?;
        }
        out.finish_file().map_err(io)?;
        std::fs::rename(&tmp, self.backend.snap_dir.join(&name)).map_err(io)?;
        snapshot_file::sync_dir(&self.backend.snap_dir).map_err(io)?;
        let write = |e: sled::Error| snap_err(ErrorVerb::Write, e);
        tree.insert(
            SNAP_CURRENT,
            encode(&(&meta, &name)).map_err(|e| snap_err(ErrorVerb::Write, e))?,
        )
        .map_err(write)?;
        tree.remove(LEGACY_SNAP_DATA).map_err(write)?;
        tree.remove(LEGACY_SNAP_META).map_err(write)?;
        self.backend.flush_blocking().map_err(io)
    }

    /// Rebuilds the in-memory key index and applied state from the `sm` tree.
    fn load(&self) -> Result<(), StorageError> {
        let sm = &self.backend.sm;
        if sm
            .get(META_RESTORING)
            .map_err(|e| sm_err(ErrorVerb::Read, e))?
            .is_some()
        {
            return Err(sm_err(
                ErrorVerb::Read,
                std::io::Error::other(
                    "a restore into this data dir was cut short: remove the data dir and restore again",
                ),
            ));
        }
        if sm
            .get(META_INSTALLING)
            .map_err(|e| sm_err(ErrorVerb::Read, e))?
            .is_some()
        {
            let (meta, name) = self.current_snapshot()?.ok_or_else(|| {
                snap_err(
                    ErrorVerb::Read,
                    std::io::Error::other("a snapshot install was cut short and its file is gone"),
                )
            })?;
            tracing::warn!(snapshot_id = %meta.snapshot_id, "redoing a snapshot install cut short");
            let file = std::fs::File::open(self.backend.snap_dir.join(name))
                .map_err(|e| snap_err(ErrorVerb::Read, e))?;
            self.replace_from_snapshot(file, &meta)?;
        }
        RowWrites::replay(sm).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let stored_revision: i64 = match sm
            .get(META_REVISION)
            .map_err(|e| sm_err(ErrorVerb::Read, e))?
        {
            Some(b) => decode(&b).map_err(|e| sm_err(ErrorVerb::Read, e))?,
            None => 1,
        };
        let dropped = RowWrites::drop_unfinished_revisions(sm, stored_revision)
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        if dropped > 0 {
            tracing::info!(
                dropped,
                "removed key revisions of an entry a crash cut short"
            );
        }
        let mut index = KvIndex::new();
        let mut in_use = 0u64;
        for item in sm.scan_prefix([KV_PREFIX]) {
            let (key, value) = item.map_err(|e| sm_err(ErrorVerb::Read, e))?;
            let rev = Revision::from_bytes(&key[1..]).ok_or_else(|| {
                sm_err(ErrorVerb::Read, std::io::Error::other("bad revision key"))
            })?;
            let stored: StoredKv = decode(&value).map_err(|e| sm_err(ErrorVerb::Read, e))?;
            index.restore(rev, &stored.kv.key, stored.tombstone);
            in_use += (key.len() + value.len()) as u64;
        }
        let mut alarms = BTreeSet::new();
        for item in sm.scan_prefix(ALARM_PREFIX) {
            let (key, _) = item.map_err(|e| sm_err(ErrorVerb::Read, e))?;
            alarms.insert(
                decode_alarm_key(&key).ok_or_else(|| {
                    sm_err(ErrorVerb::Read, std::io::Error::other("bad alarm key"))
                })?,
            );
        }
        *self.alarms.lock().unwrap_or_else(|p| p.into_inner()) = alarms;
        self.bytes_in_use.store(in_use, Ordering::Relaxed);
        let read = |key: &[u8]| -> Result<Option<sled::IVec>, StorageError> {
            sm.get(key).map_err(|e| sm_err(ErrorVerb::Read, e))
        };
        let decode_or = |bytes: Option<sled::IVec>| -> Result<i64, StorageError> {
            match bytes {
                Some(b) => decode(&b).map_err(|e| sm_err(ErrorVerb::Read, e)),
                None => Ok(0),
            }
        };
        let revision = decode_or(read(META_REVISION)?)?.max(1);
        let compact = match read(META_COMPACT)? {
            Some(b) => decode(&b).map_err(|e| sm_err(ErrorVerb::Read, e))?,
            None => KvIndex::new().compact_revision(),
        };
        index.set_restored_meta(revision, compact);
        let applied: Option<LogId> = match read(META_APPLIED)? {
            Some(b) => decode(&b).map_err(|e| sm_err(ErrorVerb::Read, e))?,
            None => None,
        };
        let membership: StoredMembership = match read(META_MEMBERSHIP)? {
            Some(b) => decode(&b).map_err(|e| sm_err(ErrorVerb::Read, e))?,
            None => StoredMembership::default(),
        };
        let mut leases = LeaseTable::default();
        for item in sm.scan_prefix(LEASE_PREFIX) {
            let (key, value) = item.map_err(|e| sm_err(ErrorVerb::Read, e))?;
            let id = key[LEASE_PREFIX.len()..]
                .try_into()
                .map(i64::from_be_bytes)
                .map_err(|e| sm_err(ErrorVerb::Read, e))?;
            leases.insert(id, decode(&value).map_err(|e| sm_err(ErrorVerb::Read, e))?);
        }
        if !leases.is_empty() {
            let all = RangeRequest {
                key: vec![0],
                range_end: vec![0],
                ..Default::default()
            };
            let live = index
                .range(&all, &SledValues(sm))
                .map_err(|e| sm_err(ErrorVerb::Read, e))?;
            for kv in live.kvs.iter().filter(|kv| kv.lease != 0) {
                leases.attach(kv.lease, &kv.key);
            }
        }
        *self.leases.lock().unwrap_or_else(|p| p.into_inner()) = leases;
        let mut attrs = BTreeMap::new();
        for item in sm.scan_prefix(MEMBER_PREFIX) {
            let (key, value) = item.map_err(|e| sm_err(ErrorVerb::Read, e))?;
            let id = key[MEMBER_PREFIX.len()..]
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|e| sm_err(ErrorVerb::Read, e))?;
            attrs.insert(id, decode(&value).map_err(|e| sm_err(ErrorVerb::Read, e))?);
        }
        *self.member_attrs.lock().unwrap_or_else(|p| p.into_inner()) = attrs;
        *self.index.write().unwrap_or_else(|p| p.into_inner()) = index;
        *self.applied.lock().unwrap_or_else(|p| p.into_inner()) = (applied, membership);
        self.revision_tx.send_replace(revision);
        self.hub.reset_published(revision);
        Ok(())
    }
}

impl History for StoreState {
    fn events(
        &self,
        spec: &WatchSpec,
        from: i64,
        to: i64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Event>, i64), MvccError> {
        let storage = |e: &dyn std::fmt::Display| MvccError::Storage(e.to_string());
        let start = kv_key(Revision::new(from, 0));
        let end = kv_key(Revision::new(to + 1, 0));
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        let values = SledValues(&self.backend.sm);
        let mut events = Vec::new();
        let mut last_main = from - 1;
        let mut bytes = 0;
        for item in self.backend.sm.range(start..end) {
            let (key, value) = item.map_err(|e| storage(&e))?;
            let rev = Revision::from_bytes(&key[1..])
                .ok_or_else(|| MvccError::Storage("bad revision key".into()))?;
            // Stop only between revisions: one revision's events always travel together.
            if (events.len() >= max_events || bytes >= max_bytes) && rev.main > last_main {
                return Ok((events, rev.main - 1));
            }
            last_main = rev.main;
            let stored: StoredKv = decode(&value).map_err(|e| storage(&e))?;
            let event = Event {
                kind: if stored.tombstone {
                    EventType::Delete
                } else {
                    EventType::Put
                },
                prev_kv: None,
                kv: stored.kv,
            };
            if !spec.wants(&event) {
                continue;
            }
            let prev_kv = match (spec.prev_kv, index.revision_at(&event.kv.key, rev.main - 1)) {
                (true, Some(prev)) => values.read(prev)?,
                _ => None,
            };
            bytes += event.kv.key.len()
                + event.kv.value.len()
                + prev_kv.as_ref().map_or(0, |p| p.value.len());
            events.push(Event { prev_kv, ..event });
        }
        Ok((events, to))
    }

    fn compact_revision(&self) -> i64 {
        StoreState::compact_revision(self)
    }
}

/// The state machine handed to openraft.
#[derive(Clone)]
pub struct StateMachineStore {
    state: Arc<StoreState>,
    apply_duration: Histogram,
}

impl StateMachineStore {
    pub(crate) fn open(
        backend: Backend,
        progress_interval: Duration,
        apply_duration: Histogram,
    ) -> Result<StateMachineStore, StorageError> {
        let (revision_tx, _) = watch::channel(1);
        let state = Arc::new(StoreState {
            backend,
            hub: WatchHub::new(1, progress_interval),
            index: RwLock::new(KvIndex::new()),
            leases: Mutex::new(LeaseTable::default()),
            member_attrs: Mutex::new(BTreeMap::new()),
            applied: Mutex::new((None, StoredMembership::default())),
            revision_tx,
            snapshot_seq: AtomicU64::new(0),
            alarms: Mutex::new(BTreeSet::new()),
            bytes_in_use: AtomicU64::new(0),
            rewrite_guard: Arc::new(tokio::sync::RwLock::new(())),
            receiving: Mutex::new(None),
            snapshot_lock: tokio::sync::Mutex::new(()),
        });
        state.migrate_legacy_snapshot()?;
        let current = state.current_snapshot()?.map(|(_, name)| name);
        snapshot_file::remove_others(&state.backend.snap_dir, current.as_deref(), true)
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        state.load()?;
        Ok(StateMachineStore {
            state,
            apply_duration,
        })
    }

    pub fn state(&self) -> Arc<StoreState> {
        self.state.clone()
    }

    /// Runs one command against the index; its writes go to `pending` so that later commands of the
    /// same entry read them before they reach sled.
    fn execute(index: &mut KvIndex, pending: &mut Pending<'_>, cmd: Command) -> CommandResponse {
        let no_space = pending.alarms.iter().any(|(_, a)| *a == ALARM_NOSPACE);
        if no_space && !matches!(cmd, Command::Batch(_)) && cmd.grows_store() {
            return CommandResponse {
                revision: index.current_revision(),
                result: Err(ApplyError::NoSpace),
            };
        }
        let result = match cmd {
            Command::Alarm {
                activate,
                member,
                alarm,
            } => {
                let changed = if activate {
                    pending.alarms.insert((member, alarm))
                } else {
                    pending.alarms.remove(&(member, alarm))
                };
                if changed {
                    pending.alarm_ops.push((activate, member, alarm));
                }
                Ok(Applied::Nothing)
            }
            Command::Put(req) => index.put(req, pending).map_err(ApplyError::from).map(|w| {
                pending.record(w.ops, w.events);
                Applied::Put(w.response)
            }),
            Command::DeleteRange(req) => index
                .delete_range(req, pending)
                .map_err(ApplyError::from)
                .map(|w| {
                    pending.record(w.ops, w.events);
                    Applied::DeleteRange(w.response)
                }),
            Command::Txn(req) => index.txn(req, pending).map_err(ApplyError::from).map(|w| {
                pending.record(w.ops, w.events);
                Applied::Txn(w.response)
            }),
            Command::Compact(rev) => index.compact(rev).map_err(ApplyError::from).map(|ops| {
                pending.record(ops, Vec::new());
                Applied::Compact
            }),
            Command::Batch(cmds) => Ok(Applied::Batch(
                cmds.into_iter()
                    .map(|c| Self::execute(index, pending, c))
                    .collect(),
            )),
            Command::LeaseGrant { id, ttl } => {
                if pending.leases.contains(id) {
                    Err(ApplyError::LeaseExists)
                } else {
                    pending.leases.insert(id, ttl);
                    pending.lease_ops.push((id, Some(ttl)));
                    Ok(Applied::LeaseGrant { id, ttl })
                }
            }
            Command::Publish {
                id,
                name,
                client_urls,
            } => {
                pending.published.push((id, name, client_urls));
                Ok(Applied::Nothing)
            }
            Command::LeaseRevoke(id) => match pending.leases.get(id) {
                None => Err(ApplyError::Mvcc(MvccError::LeaseNotFound)),
                Some(lease) => {
                    let deletes = lease
                        .keys
                        .iter()
                        .map(|k| {
                            RequestOp::DeleteRange(DeleteRangeRequest {
                                key: k.clone(),
                                ..Default::default()
                            })
                        })
                        .collect();
                    let txn = TxnRequest {
                        success: deletes,
                        ..Default::default()
                    };
                    index.txn(txn, pending).map_err(ApplyError::from).map(|w| {
                        pending.record(w.ops, w.events);
                        pending.leases.remove(id);
                        pending.lease_ops.push((id, None));
                        Applied::LeaseRevoke
                    })
                }
            },
        };
        CommandResponse {
            revision: index.current_revision(),
            result,
        }
    }
}

/// Writes of the entry being applied, not yet in sled, layered over the stored values.
struct Pending<'a> {
    stored: SledValues<'a>,
    /// `None` marks a revision deleted by compaction.
    overlay: HashMap<Revision, Option<KeyValue>>,
    ops: Vec<BackendOp>,
    events: Vec<Event>,
    leases: &'a mut LeaseTable,
    /// Lease rows to write (`Some(ttl)`) or delete (`None`).
    lease_ops: Vec<(i64, Option<i64>)>,
    /// Member attributes announced by this entry.
    published: Vec<(u64, String, Vec<String>)>,
    /// Alarms as this entry leaves them, and the rows to write (`true`) or delete.
    alarms: BTreeSet<(u64, i32)>,
    alarm_ops: Vec<(bool, u64, i32)>,
}

impl Pending<'_> {
    fn record(&mut self, ops: Vec<BackendOp>, events: Vec<Event>) {
        self.leases.track(&events);
        self.events.extend(events);
        for op in &ops {
            match op {
                BackendOp::Put { rev, kv, .. } => self.overlay.insert(*rev, Some(kv.clone())),
                BackendOp::Delete { rev } => self.overlay.insert(*rev, None),
            };
        }
        self.ops.extend(ops);
    }
}

impl ValueReader for Pending<'_> {
    fn read(&self, rev: Revision) -> Result<Option<KeyValue>, MvccError> {
        match self.overlay.get(&rev) {
            Some(v) => Ok(v.clone()),
            None => self.stored.read(rev),
        }
    }

    fn lease_exists(&self, id: i64) -> bool {
        self.leases.contains(id)
    }
}

fn member_key(id: u64) -> [u8; 10] {
    let mut key = [0u8; 10];
    key[..2].copy_from_slice(MEMBER_PREFIX);
    key[2..].copy_from_slice(&id.to_be_bytes());
    key
}

fn alarm_key(member: u64, alarm: i32) -> [u8; 14] {
    let mut key = [0u8; 14];
    key[..2].copy_from_slice(ALARM_PREFIX);
    key[2..10].copy_from_slice(&member.to_be_bytes());
    key[10..].copy_from_slice(&alarm.to_be_bytes());
    key
}

fn decode_alarm_key(key: &[u8]) -> Option<(u64, i32)> {
    let rest = key.strip_prefix(ALARM_PREFIX)?;
    let member = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    let alarm = i32::from_be_bytes(rest.get(8..12)?.try_into().ok()?);
    Some((member, alarm))
}

fn lease_key(id: i64) -> [u8; 10] {
    let mut key = [0u8; 10];
    key[..2].copy_from_slice(LEASE_PREFIX);
    key[2..].copy_from_slice(&id.to_be_bytes());
    key
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok(self
            .state
            .applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone())
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let state = &self.state;
        let sm = &state.backend.sm;
        let mut responses = Vec::new();
        for entry in entries {
            let started = std::time::Instant::now();
            // A compaction deletes stored revisions: it waits for copies in progress.
            let _rewriting = match &entry.payload {
                EntryPayload::Normal(cmd) if cmd.compacts() => {
                    Some(state.rewrite_guard.write().await)
                }
                _ => None,
            };
            let mut batch = RowWrites::default();
            let mut events = Vec::new();
            let mut index = state.index.write().unwrap_or_else(|p| p.into_inner());
            let response = match entry.payload {
                EntryPayload::Blank => CommandResponse {
                    revision: index.current_revision(),
                    result: Ok(Applied::Nothing),
                },
                EntryPayload::Membership(m) => {
                    let stored = StoredMembership::new(Some(entry.log_id), m);
                    batch.insert(
                        META_MEMBERSHIP,
                        encode(&stored).map_err(|e| sm_err(ErrorVerb::Write, e))?,
                    );
                    state.applied.lock().unwrap_or_else(|p| p.into_inner()).1 = stored;
                    CommandResponse {
                        revision: index.current_revision(),
                        result: Ok(Applied::Nothing),
                    }
                }
                EntryPayload::Normal(cmd) => {
                    let mut leases = state.leases.lock().unwrap_or_else(|p| p.into_inner());
                    let mut pending = Pending {
                        stored: SledValues(sm),
                        overlay: HashMap::new(),
                        ops: Vec::new(),
                        events: Vec::new(),
                        leases: &mut leases,
                        lease_ops: Vec::new(),
                        published: Vec::new(),
                        alarms: state
                            .alarms
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .clone(),
                        alarm_ops: Vec::new(),
                    };
                    let response = Self::execute(&mut index, &mut pending, cmd);
                    events = pending.events;
                    let mut attrs = state.member_attrs.lock().unwrap_or_else(|p| p.into_inner());
                    for (id, name, client_urls) in pending.published {
                        let row = encode(&(&name, &client_urls))
                            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
                        batch.insert(member_key(id), row);
                        attrs.insert(id, (name, client_urls));
                    }
                    drop(attrs);
                    for (activate, member, alarm) in pending.alarm_ops {
                        let key = alarm_key(member, alarm);
                        if activate {
                            batch.insert(key, []);
                        } else {
                            batch.remove(key);
                        }
                    }
                    if !pending.alarms.is_empty()
                        || !state
                            .alarms
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .is_empty()
                    {
                        *state.alarms.lock().unwrap_or_else(|p| p.into_inner()) = pending.alarms;
                    }
                    let (mut added, mut freed) = (0u64, 0u64);
                    for (id, ttl) in pending.lease_ops {
                        match ttl {
                            Some(ttl) => batch.insert(
                                lease_key(id),
                                encode(&ttl).map_err(|e| sm_err(ErrorVerb::Write, e))?,
                            ),
                            None => batch.remove(lease_key(id)),
                        }
                    }
                    for op in pending.ops {
                        match op {
                            BackendOp::Put { rev, kv, tombstone } => {
                                let stored = StoredKv { kv, tombstone };
                                let value =
                                    encode(&stored).map_err(|e| sm_err(ErrorVerb::Write, e))?;
                                added += (17 + value.len()) as u64;
                                batch.insert_new_revision(rev, value);
                            }
                            BackendOp::Delete { rev } => {
                                let key = kv_key(rev);
                                if let Some(old) =
                                    sm.get(key).map_err(|e| sm_err(ErrorVerb::Read, e))?
                                {
                                    freed += (key.len() + old.len()) as u64;
                                }
                                batch.remove(key);
                            }
                        }
                    }
                    let in_use = state.bytes_in_use.load(Ordering::Relaxed);
                    state
                        .bytes_in_use
                        .store((in_use + added).saturating_sub(freed), Ordering::Relaxed);
                    batch.insert(
                        META_REVISION,
                        encode(&index.current_revision())
                            .map_err(|e| sm_err(ErrorVerb::Write, e))?,
                    );
                    batch.insert(
                        META_COMPACT,
                        encode(&index.compact_revision())
                            .map_err(|e| sm_err(ErrorVerb::Write, e))?,
                    );
                    response
                }
            };
            batch.insert(
                META_APPLIED,
                encode(&Some(entry.log_id)).map_err(|e| sm_err(ErrorVerb::Write, e))?,
            );
            batch.commit(sm).map_err(|e| sm_err(ErrorVerb::Write, e))?;
            let revision = index.current_revision();
            drop(index);
            // Only now is the entry readable from sled, which watchers catching up depend on.
            state.hub.publish(&events, revision);
            state.applied.lock().unwrap_or_else(|p| p.into_inner()).0 = Some(entry.log_id);
            state.revision_tx.send_if_modified(|r| {
                let changed = *r != revision;
                *r = revision;
                changed
            });
            self.apply_duration.observe(started.elapsed().as_secs_f64());
            responses.push(response);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        // Capture the point in time now, on the apply task (so `applied` matches the rows); the
        // key revisions are copied while applying goes on.
        SnapshotBuilder {
            state: self.state.clone(),
            capture: Some(self.state.capture().await),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = snapshot_file::temp_path(&self.state.backend.snap_dir, "recv");
        let file = tokio::fs::File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        let abandoned = self
            .state
            .receiving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(path);
        if let Some(old) = abandoned {
            // A transfer that never finished: nothing will install it.
            let _ = tokio::fs::remove_file(old).await;
        }
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let state = &self.state;
        let dir = state.backend.snap_dir.clone();
        let received = state
            .receiving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let file = snapshot.into_std().await;
        let (ready, bytes) =
            tokio::task::spawn_blocking(move || keep_snapshot_file(file, received, &dir))
                .await
                .map_err(|e| snap_err(ErrorVerb::Write, e))?
                .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        // Replacing the store must not happen under a copy in progress.
        let _rewriting = state.rewrite_guard.write().await;
        let file = state
            .adopt_snapshot(meta, ready, true)
            .await?
            .into_std()
            .await;
        let (replacer, owned_meta) = (state.clone(), meta.clone());
        tokio::task::spawn_blocking(move || replacer.replace_from_snapshot(file, &owned_meta))
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))??;
        state.load()?;
        tracing::info!(last_log_id = ?meta.last_log_id, snapshot_id = %meta.snapshot_id, bytes, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        // A newer snapshot may replace the file between reading its name and opening it.
        for _ in 0..3 {
            let Some((meta, name)) = self.state.current_snapshot()? else {
                return Ok(None);
            };
            match tokio::fs::File::open(self.state.backend.snap_dir.join(&name)).await {
                Ok(file) => {
                    return Ok(Some(Snapshot {
                        meta,
                        snapshot: Box::new(file),
                    }))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(snap_err(ErrorVerb::Read, e)),
            }
        }
        Err(snap_err(
            ErrorVerb::Read,
            std::io::Error::other("the current snapshot file keeps disappearing"),
        ))
    }
}

/// Makes a received snapshot durable in `dir` under a temporary name, returned with its size: the
/// file it was received into (a snapshot handed over some other way is copied).
fn keep_snapshot_file(
    mut file: std::fs::File,
    received: Option<PathBuf>,
    dir: &Path,
) -> std::io::Result<(PathBuf, u64)> {
    use std::os::unix::fs::MetadataExt;
    file.sync_all()?;
    let meta = file.metadata()?;
    let same = received
        .as_ref()
        .and_then(|p| std::fs::metadata(p).ok())
        .is_some_and(|m| (m.dev(), m.ino()) == (meta.dev(), meta.ino()));
    match received {
        Some(path) if same => Ok((path, meta.len())),
        other => {
            if let Some(path) = other {
                let _ = std::fs::remove_file(path);
            }
            use std::io::Seek;
            file.rewind()?;
            let tmp = snapshot_file::temp_path(dir, "copy");
            let mut out = std::fs::File::create(&tmp)?;
            std::io::copy(&mut file, &mut out)?;
            out.sync_all()?;
            Ok((tmp, meta.len()))
        }
    }
}

/// Completes, encodes and stores a snapshot captured by
/// [`StateMachineStore::get_snapshot_builder`].
pub struct SnapshotBuilder {
    state: Arc<StoreState>,
    capture: Option<Result<Capture, sled::Error>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let capture = self
            .capture
            .take()
            .ok_or_else(|| {
                snap_err(
                    ErrorVerb::Read,
                    std::io::Error::other("snapshot built twice"),
                )
            })?
            .map_err(|e| snap_err(ErrorVerb::Read, e))?;
        let (applied, membership) = (capture.applied, capture.membership.clone());
        let seq = self.state.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match applied {
            Some(id) => format!("{}-{}-{}", id.leader_id, id.index, seq),
            None => format!("empty-{seq}"),
        };
        let state = self.state.clone();
        let written = tokio::task::spawn_blocking(move || state.write_snapshot_file(capture))
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))?
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        let meta = SnapshotMeta {
            last_log_id: applied,
            last_membership: membership,
            snapshot_id,
        };
        let file = self.state.adopt_snapshot(&meta, written, false).await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload};
    use prometheus_client::metrics::histogram::Histogram;

    use super::*;
    use crate::mvcc::PutRequest;

    fn open(dir: &Path) -> (Backend, StateMachineStore) {
        let backend = Backend::open(dir, 1024 * 1024).expect("open sled");
        let sm = StateMachineStore::open(
            backend.clone(),
            Duration::from_secs(600),
            Histogram::new([1.0]),
        )
        .expect("open state machine");
        (backend, sm)
    }

    #[tokio::test]
    async fn a_snapshot_stored_inside_sled_moves_to_a_file() {
        let src = tempfile::tempdir().unwrap();
        let (_, mut source) = open(src.path());
        let entries = (1..=20)
            .map(|i| Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
                payload: EntryPayload::Normal(Command::Put(PutRequest {
                    key: format!("k{i}").into(),
                    value: b"v".to_vec(),
                    ..Default::default()
                })),
            })
            .collect::<Vec<_>>();
        source.apply(entries).await.unwrap();
        // The image format snapshots were stored in: every row of the tree, bincode-encoded.
        let entries: Rows = source
            .state()
            .backend
            .sm
            .iter()
            .map(|r| r.unwrap())
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        let image = encode(&SnapshotImage { entries }).unwrap();
        let meta = SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), 20)),
            last_membership: StoredMembership::default(),
            snapshot_id: "1-1-20-0".into(),
        };

        let dir = tempfile::tempdir().unwrap();
        {
            let backend = Backend::open(dir.path(), 1024 * 1024).unwrap();
            backend
                .snapshot
                .insert(LEGACY_SNAP_META, encode(&meta).unwrap())
                .unwrap();
            backend
                .snapshot
                .insert(LEGACY_SNAP_DATA, image.clone())
                .unwrap();
            backend.flush_blocking().unwrap();
        }
        let (backend, mut sm) = open(dir.path());
        assert!(backend.snapshot.get(LEGACY_SNAP_DATA).unwrap().is_none());
        let current = sm.get_current_snapshot().await.unwrap().expect("migrated");
        assert_eq!(current.meta, meta);
        let mut rows = snapshot_file::RowReader::open(current.snapshot.into_std().await).unwrap();
        let mut read = Vec::new();
        while let Some(row) = rows.next_row().unwrap() {
            read.push(row);
        }
        assert_eq!(read, decode_image(&image).unwrap());
    }

    #[test]
    fn a_store_left_by_a_restore_cut_short_does_not_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let backend = Backend::open(dir.path(), 1024 * 1024).unwrap();
            backend.sm.insert(META_RESTORING, &[]).unwrap();
            backend.flush_blocking().unwrap();
        }
        let backend = Backend::open(dir.path(), 1024 * 1024).unwrap();
        let err = StateMachineStore::open(backend, Duration::from_secs(600), Histogram::new([1.0]))
            .err()
            .expect("refused");
        assert!(err.to_string().contains("restore"), "{err}");
    }
}
