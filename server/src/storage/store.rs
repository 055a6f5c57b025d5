//! The persisted MVCC store: the key index over sled's rows, leases, member attributes, alarms and
//! the auth store (users, roles), loaded at open and kept in step by apply (`apply`); the read paths
//! (ranges, hashes, watch history, point-in-time captures for snapshots and backups).
//!
//! Consensus' own rows (the applied position, the membership, snapshot metadata) are stored here
//! but never interpreted: they reach storage encoded, or through [`SnapshotMeta`]. Must never
//! import `raft/` or `grpc/`.
//!
//! What etcd's `Maintenance.Hash` means here ([`StoreState::hash`]): etcd hashes its bbolt file
//! bucket by bucket, less the consistent index and term, so that members holding the same data
//! report the same number. sled's files differ between members holding the same data, so Cairn
//! hashes a canonical serialization of the replicated state instead, with the same CRC-32C
//! (Castagnoli): the rows of a point-in-time copy ([`StoreState::capture`]) in their fixed order,
//! first the `sm` rows other than key revisions in key order (member attributes, leases, the
//! auth flag and revision, the compaction and store revisions, auth roles, auth users, alarms),
//! then every stored key revision (puts and tombstones, up to the copy's revision) in revision
//! order; each row as its key and its value, each preceded
//! by its length (u32 big-endian). Left out are consensus' rows, which differ between members
//! holding the same data: the applied log position (like etcd's consistent index, it moves with
//! entries that change no data, such as an election's blank entry) and the membership (encoded
//! with the log id it was recorded under, and every founder records the founding membership under
//! its own id); and this member's own rows: the redo record of the last apply and the markers of
//! an install or restore in progress. So members that applied the same log give the same hash at
//! the same revision, whether they applied it entry by entry or installed a snapshot of it, and a
//! restart leaves it unchanged. Only equality between Cairn members means anything: the number is
//! not etcd's for the same data.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::backend::{Backend, RowWrites};
use super::error::StoreError;
use super::etcd_snapshot::{Export, DIGEST_LEN};
use super::keys::{
    decode_alarm_key, decode_lease_key, decode_member_key, kv_key, StoredKv, ALARM_PREFIX,
    KV_PREFIX, LEASE_PREFIX, MEMBER_PREFIX, META_APPLIED, META_APPLY_RECORD, META_AUTH,
    META_COMPACT, META_INSTALLING, META_MEMBERSHIP, META_RESTORING, META_REVISION, ROLE_PREFIX,
    USER_PREFIX,
};
use super::revisions;
use super::snapshot_file;
use crate::auth::{AuthState, AuthStore};
use crate::codec::decode;
use crate::lease::{Lease, LeaseTable};
use crate::mvcc::{
    Event, EventType, KeyValue, KvIndex, MvccError, RangeRequest, RangeResponse, Revision,
    ValueReader,
};
use crate::watch::{History, WatchHub, WatchSpec};

/// What storage needs of consensus' description of a snapshot, which it stores but does not
/// interpret.
pub trait SnapshotMeta: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Names the log position the snapshot covers (its file name is made from it).
    fn position(&self) -> String;
    /// Whether this snapshot covers a later log position than `other`.
    fn newer_than(&self, other: &Self) -> bool;
    /// Consensus' rows of a store replaced by this snapshot.
    fn meta_rows(&self) -> Result<ConsensusRows, StoreError>;
}

/// The applied position and the membership, as consensus encodes them: stored in the `sm` tree
/// beside the data they describe.
pub struct ConsensusRows {
    pub applied: Vec<u8>,
    pub membership: Vec<u8>,
}

/// Rows of the `sm` tree.
pub(crate) type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// State shared between the state machine (the only writer) and the read paths.
pub struct StoreState {
    pub(super) backend: Backend,
    pub(super) hub: Arc<WatchHub>,
    pub(super) index: RwLock<KvIndex>,
    pub(super) leases: Mutex<LeaseTable>,
    /// Name and client URLs each member published.
    pub(super) member_attrs: Mutex<BTreeMap<u64, (String, Vec<String>)>>,
    pub(super) snapshot_seq: AtomicU64,
    /// Raised alarms: (member id, etcd AlarmType number).
    pub(super) alarms: Mutex<BTreeSet<(u64, i32)>>,
    /// Bytes of stored key revisions (keys and values as stored): what the space quota limits.
    /// Compaction lowers it.
    pub(super) bytes_in_use: AtomicU64,
    /// Held (shared) by copies in progress; compaction, defragmentation and snapshot installs,
    /// which delete or rewrite stored revisions, take it exclusively and count themselves in it.
    pub(super) rewrite_guard: Arc<tokio::sync::RwLock<u64>>,
    /// The last Raft snapshot this member built; see [`BuiltSnapshot`].
    pub(super) built: Mutex<Option<BuiltSnapshot>>,
    /// The key revisions applied since the last snapshot build began; see [`Delta`].
    pub(super) delta: Mutex<Option<Delta>>,
    /// The temporary file a snapshot is being received into.
    pub(super) receiving: Mutex<Option<PathBuf>>,
    /// Serializes changes of the current snapshot (a build may finish while a newer one installs).
    pub(super) snapshot_lock: tokio::sync::Mutex<()>,
    /// Users, roles and permissions; changed only by apply and loads.
    pub(super) auth: Arc<AuthStore>,
}

/// A copy of the store being taken; see [`StoreState::capture`].
pub(crate) struct Capture {
    rows: Rows,
    pub revision: i64,
    /// The rewrite count the copy was taken at.
    pub(super) rewrites: u64,
    /// A snapshot file holding the stored revisions up to the given one as they still are.
    base: Option<(Arc<std::fs::File>, i64)>,
    /// With `base`: a file whose first given bytes hold the revisions after it, up to `revision`.
    delta: Option<(Arc<std::fs::File>, u64)>,
    _guard: tokio::sync::OwnedRwLockReadGuard<u64>,
}

/// A snapshot file this member built, kept open (a newer snapshot unlinks it), with what it holds:
/// the stored revisions up to `revision`, as they were at rewrite count `rewrites`. Stored
/// revisions never change between rewrites, so while the count stays the same the next copy reads
/// them from this file, in order, instead of from sled: reading every revision through sled pulled
/// the whole tree into memory at each snapshot (sled 0.34 evicts by counting accesses, and a scan
/// touches each page once), which was a member's peak memory.
pub(super) struct BuiltSnapshot {
    pub(super) file: Arc<std::fs::File>,
    pub(super) revision: i64,
    pub(super) rewrites: u64,
}

/// The key revisions applied since a snapshot build was captured at revision `from`, as that
/// snapshot file's rows, in an unlinked file of their own (not synced: a restart starts without
/// one). Once that build is the last built snapshot, the next build (or copy) reads its file and
/// then this one and nothing through sled, which keeps what a scan reads in memory until later
/// accesses push it out: a build reading the revisions of a busy minute through sled lifted every
/// member's memory by tens of MiB at once. Valid at rewrite count `rewrites`, like the snapshot.
pub(super) struct Delta {
    out: snapshot_file::RowWriter<std::io::BufWriter<std::fs::File>>,
    /// The same file, for readers.
    file: Arc<std::fs::File>,
    /// Bytes written through `out`.
    len: u64,
    from: i64,
    rewrites: u64,
}

impl Delta {
    fn create(dir: &Path, from: i64, rewrites: u64) -> std::io::Result<Delta> {
        let path = snapshot_file::temp_path(dir, "delta");
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)?;
        // Unlinked at once: the open handles keep it, and a crash leaves nothing behind.
        std::fs::remove_file(&path)?;
        let reader = Arc::new(file.try_clone()?);
        let out =
            snapshot_file::RowWriter::new(std::io::BufWriter::with_capacity(256 << 10, file))?;
        Ok(Delta {
            out,
            file: reader,
            len: snapshot_file::START_LEN,
            from,
            rewrites,
        })
    }
}

impl StoreState {
    /// Opens the store on `backend`: removes snapshot files left unfinished or superseded, redoes
    /// an install a crash cut short and loads the in-memory state. `M` is the snapshot meta
    /// consensus stores beside each snapshot.
    pub(crate) fn open<M: SnapshotMeta>(
        backend: Backend,
        progress_interval: Duration,
    ) -> Result<Arc<StoreState>, StoreError> {
        let state = Arc::new(StoreState {
            backend,
            hub: WatchHub::new(1, progress_interval),
            index: RwLock::new(KvIndex::new()),
            leases: Mutex::new(LeaseTable::default()),
            member_attrs: Mutex::new(BTreeMap::new()),
            snapshot_seq: AtomicU64::new(0),
            alarms: Mutex::new(BTreeSet::new()),
            bytes_in_use: AtomicU64::new(0),
            rewrite_guard: Arc::new(tokio::sync::RwLock::new(0)),
            built: Mutex::new(None),
            delta: Mutex::new(None),
            receiving: Mutex::new(None),
            snapshot_lock: tokio::sync::Mutex::new(()),
            auth: Arc::new(AuthStore::default()),
        });
        let current = state.current_snapshot::<M>()?.map(|(_, name)| name);
        snapshot_file::remove_others(&state.backend.snap_dir, current.as_deref(), true)?;
        state.load::<M>()?;
        Ok(state)
    }

    /// Consensus' rows as the last apply or install left them: the applied position and the
    /// membership, decoded as the types consensus wrote them with.
    pub fn consensus_rows<A: DeserializeOwned, M: DeserializeOwned>(
        &self,
    ) -> Result<(Option<A>, Option<M>), StoreError> {
        // Under the index lock, which a defragmentation holds while it swaps the database.
        let _index = self.index.read().unwrap_or_else(|p| p.into_inner());
        let sm = &self.backend.sm();
        let applied = sm.get(META_APPLIED)?.map(|b| decode(&b)).transpose()?;
        let membership = sm.get(META_MEMBERSHIP)?.map(|b| decode(&b)).transpose()?;
        Ok((applied, membership))
    }
    /// Serves a read from local state.
    pub fn range(&self, req: &RangeRequest) -> Result<(RangeResponse, i64), MvccError> {
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        let resp = index.range(req, &SledValues(&self.backend.sm()))?;
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

    /// The auth store this state machine's applies keep.
    pub fn auth(&self) -> &Arc<AuthStore> {
        &self.auth
    }

    /// The watch hub fed by this state machine's applies.
    pub fn hub(&self) -> &Arc<WatchHub> {
        &self.hub
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

    /// etcd's HashKV: a CRC-32C (Castagnoli, as etcd's) over every stored key revision up to
    /// `revision` (0 = the current one), each row's key then value, as stored, in revision order. Members that applied the same log (and the same compactions) hash alike.
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
            let mut crc = 0;
            let end = Revision::new(revision + 1, 0);
            // One row per revision, as stored before packs: members hash alike however they
            // store them.
            for item in revisions::scan(&state.backend.sm(), Revision::new(0, 0), end)? {
                let (rev, value) = item?;
                crc = crc32c::crc32c_append(crc, &kv_key(rev));
                crc = crc32c::crc32c_append(crc, &value);
            }
            Ok::<_, StoreError>(crc)
        })
        .await
        .map_err(|e| storage(&e))?
        .map_err(|e| storage(&e))?;
        Ok((hash, compact, revision))
    }

    /// etcd's Hash: a CRC-32C over the replicated state as of the current revision (see the
    /// module comment for what it covers). Returns (hash, revision).
    pub async fn hash(self: &Arc<Self>) -> Result<(u32, i64), MvccError> {
        let storage = |e: &dyn std::fmt::Display| MvccError::Storage(e.to_string());
        let capture = self.capture().await.map_err(|e| storage(&e))?;
        let revision = capture.revision;
        let state = self.clone();
        let hash = tokio::task::spawn_blocking(move || {
            let mut crc = 0;
            state.captured_rows(capture, |key, value| {
                if key != META_APPLIED && key != META_MEMBERSHIP && key != META_RESTORING {
                    for part in [key, value] {
                        crc = crc32c::crc32c_append(crc, &(part.len() as u32).to_be_bytes());
                        crc = crc32c::crc32c_append(crc, part);
                    }
                }
                Ok(())
            })?;
            Ok::<_, std::io::Error>(crc)
        })
        .await
        .map_err(|e| storage(&e))?
        .map_err(|e| storage(&e))?;
        Ok((hash, revision))
    }

    /// Adds an entry's new key revisions to the revisions kept since the last build began; called
    /// under the index lock, before the entry's rows are stored.
    pub(super) fn keep_revisions(&self, revisions: &[(Revision, Vec<u8>)]) {
        let mut slot = self.delta.lock().unwrap_or_else(|p| p.into_inner());
        let Some(delta) = slot.as_mut() else { return };
        for (rev, value) in revisions {
            let key = kv_key(*rev);
            if let Err(e) = delta.out.row(&key, value) {
                tracing::warn!(error = %e, "cannot keep the revisions applied after the last snapshot; the next build reads them from the store");
                *slot = None;
                return;
            }
            delta.len += snapshot_file::row_len(&key, value);
        }
    }

    /// Stops keeping revisions for the next build: stored revisions are being rewritten, so it
    /// reads them all from the store.
    pub(super) fn drop_kept_revisions(&self) {
        *self.delta.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Starts a point-in-time copy of the store: takes the small rows (meta, leases, members,
    /// alarms) and the current revision now; [`StoreState::complete`] adds the key revisions up to
    /// that revision later, without holding up applies.
    ///
    /// Stored revisions never change once written, except when compaction deletes them or a
    /// snapshot install replaces the store; both wait for the capture to be completed or dropped.
    /// Taken on the apply task, it matches the applied position consensus holds at that moment.
    pub(crate) async fn capture(self: &Arc<Self>) -> Result<Capture, StoreError> {
        self.capture_with(false).await
    }

    /// A capture for a Raft snapshot build: as [`StoreState::capture`], and the revisions applied
    /// from now on are kept for the build after it (see [`Delta`]).
    pub(crate) async fn capture_for_snapshot(self: &Arc<Self>) -> Result<Capture, StoreError> {
        self.capture_with(true).await
    }

    async fn capture_with(self: &Arc<Self>, for_snapshot: bool) -> Result<Capture, StoreError> {
        let guard = self.rewrite_guard.clone().read_owned().await;
        // Held while the delta is read and started: applying holds it while it adds to the delta.
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        let revision = index.current_revision();
        let rewrites = *guard;
        let base = self
            .built
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|built| built.rewrites == rewrites && built.revision <= revision)
            .map(|built| (built.file.clone(), built.revision));
        let delta = {
            let mut slot = self.delta.lock().unwrap_or_else(|p| p.into_inner());
            let usable = match (&base, slot.as_mut()) {
                (Some((_, built)), Some(d)) if d.rewrites == rewrites && d.from == *built => {
                    d.out.flush().map(|()| Some((d.file.clone(), d.len)))
                }
                _ => Ok(None),
            };
            let usable = usable.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "revisions since the last snapshot unreadable; reading them from the store");
                *slot = None;
                None
            });
            if for_snapshot {
                *slot = match Delta::create(&self.backend.snap_dir, revision, rewrites) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot keep the revisions applied after this snapshot; the next build reads them from the store");
                        None
                    }
                };
            }
            usable
        };
        let sm = &self.backend.sm();
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
        drop(index);
        Ok(Capture {
            rows,
            revision,
            rewrites,
            base,
            delta,
            _guard: guard,
        })
    }

    /// Feeds a capture's rows to `row`: the small rows taken with it, then the key revisions up to
    /// its revision, those the last built snapshot holds from its file and the rest from the
    /// revisions kept since that build or else from sled, as they go (blocking; run off the async
    /// threads).
    pub(super) fn captured_rows(
        &self,
        capture: Capture,
        mut row: impl FnMut(&[u8], &[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        for (k, v) in &capture.rows {
            row(k, v)?;
        }
        let mut from = Revision::new(0, 0);
        if let Some((file, revision)) = &capture.base {
            let mut earlier = snapshot_file::RowReader::shared(file.clone())?;
            while let Some((k, v)) = earlier.next_row()? {
                if revisions::is_revision_key(&k) {
                    row(&k, &v)?;
                }
            }
            from = Revision::new(revision + 1, 0);
            if let Some((file, len)) = &capture.delta {
                let mut later = snapshot_file::shared_prefix(file.clone(), *len)?;
                while let Some((k, v)) = later.next_row()? {
                    row(&k, &v)?;
                }
                return Ok(());
            }
        }
        let end = Revision::new(capture.revision + 1, 0);
        let sm = self.backend.sm();
        for item in revisions::scan(&sm, from, end).map_err(std::io::Error::other)? {
            let (rev, v) = item.map_err(std::io::Error::other)?;
            row(&kv_key(rev), &v)?;
        }
        Ok(())
    }

    /// A consistent copy of the whole store as an etcd snapshot (see [`super::etcd_snapshot`]), in
    /// chunks of up to `chunk` bytes, the SHA-256 trailer last. The database is first written to an
    /// unlinked file in the snapshot directory (rows streamed from sled into pages, so memory stays
    /// bounded whatever the store's size), which frees compaction and snapshot installs as soon as
    /// it is written, not when a slow client has read it. Returns the revision it reflects, the
    /// size of the whole stream, and the chunks.
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
        let (file, db_len) = tokio::task::spawn_blocking(move || {
            let written = std::fs::File::create(&path)
                .and_then(Export::create)
                .and_then(|mut export| {
                    state.captured_rows(capture, |k, v| export.row(k, v))?;
                    export.finish()
                });
            let opened = written.and_then(|(_, len)| Ok((std::fs::File::open(&path)?, len)));
            // Unlinked at once: the open handle keeps it readable, and nothing is left behind.
            let _ = std::fs::remove_file(&path);
            opened
        })
        .await
        .map_err(|e| storage(&e))?
        .map_err(|e| storage(&e))?;
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::task::spawn_blocking(move || {
            use sha2::Digest;
            use std::io::Read;
            let mut input = file.take(db_len);
            let mut hasher = sha2::Sha256::new();
            loop {
                let mut buf = vec![0; chunk];
                let n = match input.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                };
                buf.truncate(n);
                hasher.update(&buf);
                if tx.blocking_send(Ok(buf)).is_err() {
                    return;
                }
            }
            let _ = tx.blocking_send(Ok(hasher.finalize().to_vec()));
        });
        Ok((revision, db_len + DIGEST_LEN, rx))
    }

    /// Rebuilds the in-memory key index, leases, members and alarms from the `sm` tree; with `M`,
    /// the snapshot meta consensus stores, redoes a snapshot install a crash cut short.
    pub(super) fn load<M: SnapshotMeta>(&self) -> Result<(), StoreError> {
        let sm = &self.backend.sm();
        if sm.get(META_RESTORING)?.is_some() {
            return Err(StoreError::RestoreCutShort);
        }
        if sm.get(META_INSTALLING)?.is_some() {
            let (meta, name) = self
                .current_snapshot::<M>()?
                .ok_or(StoreError::InstallFileGone)?;
            tracing::warn!(snapshot = %meta.position(), "redoing a snapshot install cut short");
            let file = std::fs::File::open(self.backend.snap_dir.join(name))?;
            self.replace_from_snapshot(file, &meta.meta_rows()?)?;
        }
        RowWrites::replay(sm)?;
        let stored_revision: i64 = match sm.get(META_REVISION)? {
            Some(b) => decode(&b)?,
            None => 1,
        };
        let dropped = RowWrites::drop_unfinished_revisions(sm, stored_revision)?;
        if dropped > 0 {
            tracing::info!(
                dropped,
                "removed key revisions of an entry a crash cut short"
            );
        }
        let mut index = KvIndex::new();
        let mut in_use = 0u64;
        for item in revisions::scan_all(sm)? {
            let (rev, value) = item?;
            let stored: StoredKv = decode(&value)?;
            index.restore(rev, &stored.kv, stored.tombstone);
            in_use += revisions::stored_size(value.len());
        }
        let mut alarms = BTreeSet::new();
        for item in sm.scan_prefix(ALARM_PREFIX) {
            let (key, _) = item?;
            alarms.insert(decode_alarm_key(&key).ok_or(StoreError::Corrupt("bad alarm key"))?);
        }
        *self.alarms.lock().unwrap_or_else(|p| p.into_inner()) = alarms;
        self.bytes_in_use.store(in_use, Ordering::Relaxed);
        let revision = match sm.get(META_REVISION)? {
            Some(b) => decode::<i64>(&b)?,
            None => 0,
        }
        .max(1);
        let compact = match sm.get(META_COMPACT)? {
            Some(b) => decode(&b)?,
            None => KvIndex::new().compact_revision(),
        };
        index.set_restored_meta(revision, compact);
        let mut leases = LeaseTable::default();
        for item in sm.scan_prefix(LEASE_PREFIX) {
            let (key, value) = item?;
            let id = decode_lease_key(&key).ok_or(StoreError::Corrupt("bad lease key"))?;
            leases.insert(id, decode(&value)?);
        }
        if !leases.is_empty() {
            let all = RangeRequest {
                key: vec![0],
                range_end: vec![0],
                ..Default::default()
            };
            let live = index.range(&all, &SledValues(sm))?;
            for kv in live.kvs.iter().filter(|kv| kv.lease != 0) {
                leases.attach(kv.lease, &kv.key);
            }
        }
        *self.leases.lock().unwrap_or_else(|p| p.into_inner()) = leases;
        let mut attrs = BTreeMap::new();
        for item in sm.scan_prefix(MEMBER_PREFIX) {
            let (key, value) = item?;
            let id = decode_member_key(&key).ok_or(StoreError::Corrupt("bad member key"))?;
            attrs.insert(id, decode(&value)?);
        }
        *self.member_attrs.lock().unwrap_or_else(|p| p.into_inner()) = attrs;
        let mut auth = AuthState::default();
        if let Some(b) = sm.get(META_AUTH)? {
            (auth.enabled, auth.revision) = decode(&b)?;
        }
        for item in sm.scan_prefix(USER_PREFIX) {
            let (_, value) = item?;
            let user: crate::auth::User = decode(&value)?;
            auth.users.insert(user.name.clone(), user);
        }
        for item in sm.scan_prefix(ROLE_PREFIX) {
            let (_, value) = item?;
            let role: crate::auth::Role = decode(&value)?;
            auth.roles.insert(role.name.clone(), role);
        }
        self.auth.replace(auth);
        *self.index.write().unwrap_or_else(|p| p.into_inner()) = index;
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
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        let sm = self.backend.sm();
        let values = SledValues(&sm);
        let mut events = Vec::new();
        let mut last_main = from - 1;
        let mut bytes = 0;
        let (start, end) = (Revision::new(from, 0), Revision::new(to + 1, 0));
        for item in revisions::scan(&sm, start, end).map_err(|e| storage(&e))? {
            let (rev, value) = item.map_err(|e| storage(&e))?;
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

/// Reads MVCC values from the `sm` tree.
pub(crate) struct SledValues<'a>(pub &'a sled::Tree);

impl ValueReader for SledValues<'_> {
    fn read(&self, rev: Revision) -> Result<Option<KeyValue>, MvccError> {
        match revisions::get(self.0, rev) {
            Ok(Some(bytes)) => crate::codec::decode::<StoredKv>(&bytes)
                .map(|s| Some(s.kv))
                .map_err(|e| MvccError::Storage(e.to_string())),
            Ok(None) => Ok(None),
            Err(e) => Err(MvccError::Storage(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    /// Snapshot meta as a consensus layer might keep it.
    #[derive(Serialize, Deserialize)]
    struct Meta {
        id: String,
        applied: u64,
    }

    impl SnapshotMeta for Meta {
        fn position(&self) -> String {
            self.id.clone()
        }

        fn newer_than(&self, other: &Self) -> bool {
            self.applied > other.applied
        }

        fn meta_rows(&self) -> Result<ConsensusRows, StoreError> {
            Ok(ConsensusRows {
                applied: crate::codec::encode(&self.applied)?,
                membership: Vec::new(),
            })
        }
    }

    /// Writes applied as one entry (their revisions packed into shared rows) and the same writes
    /// one entry each (a row per revision) make the same store: the same reads at every
    /// revision, history, hashes and size in use, before and after a compaction that empties
    /// some packs and thins others, and after reopening.
    #[tokio::test]
    async fn packed_revisions_read_hash_and_compact_as_rows_of_their_own() {
        use crate::command::Command;
        use crate::mvcc::{PutRequest, RangeRequest};
        use crate::storage::Payload;
        let put = |i: usize| {
            Command::Put(PutRequest {
                key: format!("k{}", i % 7).into_bytes(),
                value: vec![b'a' + (i % 26) as u8; 40 + i * 13],
                ..Default::default()
            })
        };
        let writes = 60;
        let (packed_dir, single_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let open = |dir: &std::path::Path| {
            let backend = Backend::open(dir, 1024 * 1024).unwrap();
            StoreState::open::<Meta>(backend, Duration::from_secs(600)).unwrap()
        };
        let (packed, single) = (open(packed_dir.path()), open(single_dir.path()));
        let batch = Command::Batch((0..writes).map(put).collect());
        packed
            .apply(&1u64, Payload::<()>::Command(batch))
            .await
            .unwrap();
        for i in 0..writes {
            single
                .apply(&(i as u64 + 1), Payload::<()>::Command(put(i)))
                .await
                .unwrap();
        }
        let rows = |s: &StoreState| s.backend.sm().scan_prefix([KV_PREFIX]).count();
        assert!(rows(&packed) < writes / 2, "{} rows", rows(&packed));
        assert_eq!(rows(&single), writes);

        async fn same(a: &Arc<StoreState>, b: &Arc<StoreState>, from: i64) {
            let all = RangeRequest {
                key: vec![0],
                range_end: vec![0],
                ..Default::default()
            };
            let current = a.index.read().unwrap().current_revision();
            for at in from..=current {
                let read = |s: &Arc<StoreState>| {
                    let r = RangeRequest {
                        revision: at,
                        ..all.clone()
                    };
                    let index = s.index.read().unwrap();
                    index.range(&r, &SledValues(&s.backend.sm())).unwrap()
                };
                assert_eq!(read(a), read(b), "at {at}");
            }
            let spec = WatchSpec {
                key: vec![0],
                range_end: vec![0],
                prev_kv: true,
                ..Default::default()
            };
            for start in [from, from + 5, from + 17] {
                let history = |s: &Arc<StoreState>| s.events(&spec, start, current, 1000, 1 << 20);
                assert_eq!(history(a).unwrap(), history(b).unwrap(), "from {start}");
            }
            assert_eq!(a.hash_kv(0).await.unwrap(), b.hash_kv(0).await.unwrap());
            assert_eq!(a.hash().await.unwrap(), b.hash().await.unwrap());
            assert_eq!(
                a.bytes_in_use.load(Ordering::Relaxed),
                b.bytes_in_use.load(Ordering::Relaxed)
            );
        }
        same(&packed, &single, 2).await;
        // Compacted in the middle of a pack: every key's older revisions go.
        let compact = Command::Compact(40);
        packed
            .apply(&2u64, Payload::<()>::Command(compact.clone()))
            .await
            .unwrap();
        single
            .apply(&(writes as u64 + 1), Payload::<()>::Command(compact))
            .await
            .unwrap();
        same(&packed, &single, 40).await;
        drop(packed);
        let packed = open(packed_dir.path());
        same(&packed, &single, 40).await;
    }

    /// Commands of one entry read what the commands before them wrote, before any of it is
    /// stored: values, previous values and compares, and a compaction within the entry.
    #[tokio::test]
    async fn commands_of_a_batch_read_each_others_writes() {
        use crate::command::{Applied, Command};
        use crate::mvcc::{
            Compare, CompareResult, CompareTarget, PutRequest, RangeRequest, RequestOp, ResponseOp,
            TxnRequest,
        };
        use crate::storage::Payload;
        let dir = tempfile::tempdir().unwrap();
        let backend = Backend::open(dir.path(), 1024 * 1024).unwrap();
        let state = StoreState::open::<Meta>(backend, Duration::from_secs(600)).unwrap();
        let put = |value: &str, prev_kv: bool| PutRequest {
            key: b"k".to_vec(),
            value: value.as_bytes().to_vec(),
            prev_kv,
            ..Default::default()
        };
        let get = RangeRequest {
            key: b"k".to_vec(),
            ..Default::default()
        };
        let batch = Command::Batch(vec![
            Command::Put(put("a", false)),
            Command::Txn(TxnRequest {
                compare: vec![Compare {
                    key: b"k".to_vec(),
                    range_end: Vec::new(),
                    result: CompareResult::Equal,
                    target: CompareTarget::Value(b"a".to_vec()),
                }],
                success: vec![
                    RequestOp::Put(put("b", true)),
                    RequestOp::Range(get.clone()),
                ],
                failure: Vec::new(),
            }),
            Command::Compact(3),
            Command::Put(PutRequest {
                ignore_value: true,
                ..put("", true)
            }),
        ]);
        let response = state
            .apply(&1u64, Payload::<()>::Command(batch))
            .await
            .unwrap();
        let Ok(Applied::Batch(responses)) = response.result else {
            panic!("{response:?}");
        };
        let Ok(Applied::Txn(txn)) = &responses[1].result else {
            panic!("{responses:?}");
        };
        assert!(txn.succeeded);
        let ResponseOp::Put(put_b) = &txn.responses[0] else {
            panic!("{txn:?}");
        };
        assert_eq!(put_b.prev_kv.as_ref().unwrap().value, b"a");
        let ResponseOp::Range(read) = &txn.responses[1] else {
            panic!("{txn:?}");
        };
        assert_eq!(read.kvs[0].value, b"b");
        let Ok(Applied::Put(last)) = &responses[3].result else {
            panic!("{responses:?}");
        };
        // Compacted at the transaction's revision, which stays readable.
        let prev = last.prev_kv.as_ref().unwrap();
        assert_eq!((prev.value.as_slice(), prev.version), (&b"b"[..], 2));
        let index = state.index.read().unwrap();
        let now = index.range(&get, &SledValues(&state.backend.sm())).unwrap();
        assert_eq!(
            (now.kvs[0].value.as_slice(), now.kvs[0].version),
            (&b"b"[..], 3)
        );
    }

    #[tokio::test]
    async fn hash_kv_is_crc32c_over_the_stored_revisions_up_to_its_revision() {
        use crate::command::Command;
        use crate::mvcc::PutRequest;
        use crate::storage::Payload;
        let dir = tempfile::tempdir().unwrap();
        let backend = Backend::open(dir.path(), 1024 * 1024).unwrap();
        let state = StoreState::open::<Meta>(backend, Duration::from_secs(600)).unwrap();
        for (i, key) in ["a", "b", "a"].iter().enumerate() {
            let put = Command::Put(PutRequest {
                key: key.as_bytes().to_vec(),
                value: vec![i as u8; 10],
                lease: 0,
                prev_kv: false,
                ignore_value: false,
                ignore_lease: false,
            });
            state
                .apply(&(i as u64), Payload::<()>::Command(put))
                .await
                .unwrap();
        }
        // Revisions 2 and 3 (the store starts at 1): the third put is left out.
        let mut bytes = Vec::new();
        let end = kv_key(Revision::new(4, 0));
        for row in state.backend.sm().range(&[KV_PREFIX][..]..&end[..]) {
            let (k, v) = row.unwrap();
            bytes.extend_from_slice(&k);
            bytes.extend_from_slice(&v);
        }
        let (hash, compact, revision) = state.hash_kv(3).await.unwrap();
        // Never compacted: -1, as etcd reports it.
        assert_eq!((compact, revision), (-1, 3));
        assert_eq!(hash, crc32c::crc32c(&bytes));
        assert_ne!(hash, crc32fast::hash(&bytes));
        assert_ne!(state.hash_kv(0).await.unwrap().0, hash);
    }

    #[tokio::test]
    async fn once_auth_is_enabled_writes_need_credentials_that_allow_them() {
        use crate::auth::{AuthError, AuthOp, ROOT};
        use crate::command::{ApplyError, Command};
        use crate::mvcc::PutRequest;
        use crate::storage::Payload;
        let dir = tempfile::tempdir().unwrap();
        let backend = Backend::open(dir.path(), 1024 * 1024).unwrap();
        let state = StoreState::open::<Meta>(backend, Duration::from_secs(600)).unwrap();
        let mut index = 0u64;
        let mut apply = |cmd: Command| {
            index += 1;
            let state = state.clone();
            async move {
                state
                    .apply(&index, Payload::<()>::Command(cmd))
                    .await
                    .unwrap()
                    .result
            }
        };
        let put = |key: &str| {
            Command::Put(PutRequest {
                key: key.as_bytes().to_vec(),
                value: b"v".to_vec(),
                lease: 0,
                prev_kv: false,
                ignore_value: false,
                ignore_lease: false,
            })
        };
        for op in [
            AuthOp::UserAdd {
                name: ROOT.into(),
                hash: "h".into(),
                no_password: false,
            },
            AuthOp::UserGrantRole {
                user: ROOT.into(),
                role: ROOT.into(),
            },
            AuthOp::Enable,
        ] {
            apply(Command::Auth(op)).await.unwrap();
        }
        let revision = state.auth().revision();
        // Sent before its member saw auth enabled: no credentials.
        assert_eq!(
            apply(put("a")).await,
            Err(ApplyError::Auth(AuthError::UserEmpty))
        );
        let as_root = |cmd: Command, revision: u64| Command::Authed {
            user: ROOT.into(),
            revision,
            cmd: Box::new(cmd),
        };
        apply(as_root(put("a"), revision)).await.unwrap();
        apply(as_root(
            Command::Auth(AuthOp::RoleAdd("r".into())),
            revision,
        ))
        .await
        .unwrap();
        assert_eq!(
            apply(as_root(put("b"), revision)).await,
            Err(ApplyError::Auth(AuthError::AuthOldRevision))
        );
        // Users, roles and the flag come back from the rows at the next open.
        let before = state.auth().read().clone();
        state.flush().await.unwrap();
        let sm = state.backend.sm();
        assert!(sm
            .get(crate::storage::keys::prefixed(
                crate::storage::keys::USER_PREFIX,
                ROOT
            ))
            .unwrap()
            .is_some());
        state.load::<Meta>().unwrap();
        assert_eq!(*state.auth().read(), before);
        assert!(state.auth().is_enabled());
    }

    #[test]
    fn a_store_left_by_a_restore_cut_short_does_not_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let backend = Backend::open(dir.path(), 1024 * 1024).unwrap();
            backend.sm().insert(META_RESTORING, &[]).unwrap();
            backend.flush_blocking().unwrap();
        }
        let backend = Backend::open(dir.path(), 1024 * 1024).unwrap();
        let err = StoreState::open::<Meta>(backend, Duration::from_secs(600))
            .err()
            .expect("refused");
        assert!(err.to_string().contains("restore"), "{err}");
    }

    /// A snapshot built after another reads the revisions that one holds from its file and the
    /// ones applied since from the revisions kept for it, never through sled, and holds exactly
    /// what a copy read wholly from sled holds; a compaction (which changes stored revisions)
    /// sends the next one wholly to sled again. Copies between builds (backups, hashes) read the
    /// same way without disturbing what is kept.
    #[tokio::test]
    async fn a_snapshot_after_another_reads_its_revisions_from_it_and_holds_the_same_rows() {
        use crate::command::Command;
        use crate::mvcc::{DeleteRangeRequest, PutRequest};
        use crate::storage::Payload;
        let dir = tempfile::tempdir().unwrap();
        let backend = Backend::open(dir.path(), 1024 * 1024).unwrap();
        let state = StoreState::open::<Meta>(backend, Duration::from_secs(600)).unwrap();
        let mut applied = 0u64;
        let mut apply = |cmd: Command| {
            applied += 1;
            let (state, at) = (state.clone(), applied);
            async move { state.apply(&at, Payload::<()>::Command(cmd)).await.unwrap() }
        };
        let put = |i: usize| {
            Command::Put(PutRequest {
                key: format!("k{}", i % 11).into_bytes(),
                value: vec![b'a' + (i % 26) as u8; 30 + i * 7],
                ..Default::default()
            })
        };
        // Entries of one write and entries of many (their revisions packed in shared rows).
        let mut written = 0;
        let mut write = |n: usize| {
            let cmds: Vec<Command> = (written..written + n).map(put).collect();
            written += n;
            if n == 1 {
                cmds.into_iter().next().unwrap()
            } else {
                Command::Batch(cmds)
            }
        };
        for n in [1, 5, 1, 12] {
            apply(write(n)).await;
        }
        // Built from a capture, the way consensus builds one.
        let build = |state: &Arc<StoreState>, capture: Capture| {
            std::fs::read(state.write_snapshot_file(capture).unwrap()).unwrap()
        };
        let wholly_from_sled = |state: &Arc<StoreState>| {
            let state = state.clone();
            async move {
                let kept = state.built.lock().unwrap().take();
                let capture = state.capture().await.unwrap();
                assert!(capture.base.is_none());
                let file = build(&state, capture);
                *state.built.lock().unwrap() = kept;
                file
            }
        };
        let capture = state.capture_for_snapshot().await.unwrap();
        assert!(capture.base.is_none(), "nothing built yet");
        assert!(capture.delta.is_none());
        let first_revision = capture.revision;
        build(&state, capture);

        for n in [3, 1, 20] {
            apply(write(n)).await;
        }
        apply(Command::DeleteRange(DeleteRangeRequest {
            key: b"k3".to_vec(),
            ..Default::default()
        }))
        .await;
        let capture = state.capture_for_snapshot().await.unwrap();
        assert_eq!(capture.base.as_ref().map(|b| b.1), Some(first_revision));
        assert!(capture.delta.is_some(), "the revisions since were not kept");
        let second_revision = capture.revision;
        assert!(second_revision > first_revision);
        let second = build(&state, capture);
        assert_eq!(second, wholly_from_sled(&state).await);

        // Nothing written since: the file alone.
        let capture = state.capture_for_snapshot().await.unwrap();
        assert_eq!(capture.base.as_ref().map(|b| b.1), Some(second_revision));
        assert_eq!(build(&state, capture), second);

        apply(write(4)).await;
        apply(Command::Compact(second_revision - 10)).await;
        apply(write(2)).await;
        let capture = state.capture_for_snapshot().await.unwrap();
        assert!(capture.base.is_none(), "compacted since the last build");
        assert!(capture.delta.is_none());
        let after_compaction = build(&state, capture);
        assert_eq!(after_compaction, wholly_from_sled(&state).await);

        apply(write(6)).await;
        let capture = state.capture_for_snapshot().await.unwrap();
        assert!(capture.base.is_some() && capture.delta.is_some());
        let last = build(&state, capture);
        assert_eq!(last, wholly_from_sled(&state).await);

        // A copy between builds reads what is kept and leaves it for the next build.
        apply(write(7)).await;
        apply(write(1)).await;
        // The key revisions a copy holds.
        let revisions_of = |state: &Arc<StoreState>, copy: Capture| {
            let mut rows = Vec::new();
            state
                .captured_rows(copy, |k, v| {
                    if revisions::is_revision_key(k) {
                        rows.push((k.to_vec(), v.to_vec()));
                    }
                    Ok(())
                })
                .unwrap();
            rows
        };
        let copy = state.capture().await.unwrap();
        assert!(copy.base.is_some() && copy.delta.is_some());
        let copied = revisions_of(&state, copy);
        apply(write(3)).await;
        let capture = state.capture_for_snapshot().await.unwrap();
        assert!(
            capture.delta.is_some(),
            "a copy took what the next build needs"
        );
        let next = build(&state, capture);
        assert_eq!(next, wholly_from_sled(&state).await);
        let kept = state.built.lock().unwrap().take();
        let copy = state.capture().await.unwrap();
        *state.built.lock().unwrap() = kept;
        let from_sled = revisions_of(&state, copy);
        // The copy was taken three revisions before the store was read wholly.
        assert_eq!(copied.len() + 3, from_sled.len());
        assert!(
            copied[..] == from_sled[..copied.len()],
            "the copy's revisions differ from the store's"
        );
    }
}
