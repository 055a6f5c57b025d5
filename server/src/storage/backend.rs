//! The sled database and its durability: opening it, flushing it for real, and the crash-atomic
//! row changes of an applied entry ([`RowWrites`]). Key encodings are in `keys`.
//!
//! Must never import `raft/` or `grpc/`: storage sits below consensus.
//!
//! The Raft log is not in sled but in its own write-ahead file (`wal/`, see `wal`): a log append
//! is made durable without flushing sled. The state machine must be durable only when it is to
//! outlive the log entries that produced it (before a purge, at snapshots, at shutdown), and is
//! flushed then (and once a second by sled); after a crash, sled recovers a prefix of its writes
//! and the entries applied since are applied again from the log.
//!
//! Two sled databases: `db/` holds the trees consensus writes (`log`, `raft`), and
//! `state/<generation>/` the store (`sm`, `snapshot`). The store's database can be rewritten
//! compactly and swapped in while the member runs (see `defrag`): `state/CURRENT` names the
//! generation in use, and is replaced by an atomic rename only once the new one is durable, so a
//! crash at any point leaves one whole database or the other. The consensus trees are held by the
//! log layer for the member's lifetime and stay put. Everything stored in one database keeps
//! sled's prefix recovery; across the two, [`Backend::flush`] makes both durable.
//!
//! Trees:
//! - `log`: where the Raft log lived before `wal/` (index u64 big-endian -> entry); moved to
//!   `wal/` and emptied when a data dir from before is opened.
//! - `raft`: vote, committed and last purged log ids; this member's identity.
//! - `sm`: the state machine, replaced whole when a snapshot is installed. Keys starting with
//!   `KV_PREFIX` hold MVCC revisions (`r` + 16-byte revision -> bincode [`StoredKv`], or a pack
//!   of an entry's revisions keyed by its first: see `revisions`); keys
//!   starting with `m/` hold the applied log id, membership and store revisions. Everything an apply
//!   changes is first written as one redo record (`META_APPLY_RECORD`), then row by row; see
//!   [`RowWrites`].
//! - `snapshot`: the last built or installed snapshot's meta and the name of its file in `snap/`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub(crate) use super::error::RowWriteError;
use super::keys::{kv_key, KV_PREFIX, META_APPLY_RECORD};
use super::revisions;
use super::wal::Wal;
use crate::mvcc::Revision;

/// The row changes of one applied entry, made crash-atomic without a sled batch.
///
/// A sled batch forces two synchronous log writes of its own (it seals sled's IO buffer before and
/// after pinning it) and blocks every reader meanwhile; at one batch per applied entry that was most
/// of a write's latency. Instead:
/// 1. the entry's new key revisions are written first: rows under revisions above the stored
///    store revision, which nothing reads until the entry is complete, and which opening the store
///    removes if the entry never completed ([`RowWrites::drop_unfinished_revisions`]);
/// 2. every other change (meta, leases, deletions, ...) is stored as one value, the redo record;
/// 3. then applied row by row.
///
/// sled recovers a prefix of its log, and one task writes these in order, so after a crash either
/// the record is missing (and so is every row after it), or it is present and replaying it on open
/// ([`RowWrites::replay`]) completes whatever rows were lost. Every change is a plain set or
/// delete, so replaying a record that was already complete changes nothing. Values are written
/// once: the record holds no key revision, so a large value is not stored twice.
///
/// Record layout, per change: key length (u32 LE), key, then 0 for a delete or 1, value length
/// (u32 LE), value.
#[derive(Default)]
pub(crate) struct RowWrites {
    /// Ascending.
    new_revisions: Vec<(Revision, Vec<u8>)>,
    writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl RowWrites {
    /// A key revision this entry creates (above the stored store revision, and above the ones
    /// before it).
    pub fn insert_new_revision(&mut self, rev: Revision, value: Vec<u8>) {
        debug_assert!(self.new_revisions.last().is_none_or(|(r, _)| *r < rev));
        self.new_revisions.push((rev, value));
    }

    /// The key revisions this entry creates, ascending, each with its stored value.
    pub fn new_revisions(&self) -> &[(Revision, Vec<u8>)] {
        &self.new_revisions
    }

    /// Drops a revision this entry created (a compaction later in the entry removed it), and
    /// returns its value's length; `None` if it is not one of them.
    pub fn remove_new_revision(&mut self, rev: Revision) -> Option<usize> {
        let at = self
            .new_revisions
            .binary_search_by_key(&rev, |(r, _)| *r)
            .ok()?;
        Some(self.new_revisions.remove(at).1.len())
    }

    pub fn insert(&mut self, key: impl AsRef<[u8]>, value: impl Into<Vec<u8>>) {
        self.writes
            .push((key.as_ref().to_vec(), Some(value.into())));
    }

    pub fn remove(&mut self, key: impl AsRef<[u8]>) {
        self.writes.push((key.as_ref().to_vec(), None));
    }

    /// Stores the new key revisions (packed, see `revisions`), the redo record, then each other
    /// row.
    pub fn commit(mut self, tree: &sled::Tree) -> Result<(), RowWriteError> {
        for (key, value) in revisions::rows(std::mem::take(&mut self.new_revisions)) {
            tree.insert(key, value)?;
        }
        tree.insert(META_APPLY_RECORD, self.encode())?;
        self.apply(tree)
    }

    /// Removes key revisions above `revision` (the stored store revision): left by an entry whose
    /// redo record never reached the disk. A pack holds one entry's revisions only, so a row keyed
    /// above `revision` holds nothing else.
    pub fn drop_unfinished_revisions(
        tree: &sled::Tree,
        revision: i64,
    ) -> Result<usize, RowWriteError> {
        let from = kv_key(Revision::new(revision + 1, 0));
        let mut dropped = 0;
        let end = [KV_PREFIX + 1];
        for key in tree.range(&from[..]..&end[..]).keys() {
            tree.remove(key?)?;
            dropped += 1;
        }
        Ok(dropped)
    }

    fn apply(self, tree: &sled::Tree) -> Result<(), RowWriteError> {
        debug_assert!(self.new_revisions.is_empty());
        for (key, value) in self.writes {
            match value {
                Some(v) => tree.insert(key, v)?,
                None => tree.remove(key)?,
            };
        }
        Ok(())
    }

    /// Completes the last record's rows, which a crash may have cut short.
    pub fn replay(tree: &sled::Tree) -> Result<(), RowWriteError> {
        if let Some(bytes) = tree.get(META_APPLY_RECORD)? {
            RowWrites::decode(&bytes)?.apply(tree)?;
        }
        Ok(())
    }

    fn encode(&self) -> Vec<u8> {
        let size: usize = self
            .writes
            .iter()
            .map(|(k, v)| 9 + k.len() + v.as_ref().map_or(0, Vec::len))
            .sum();
        let mut out = Vec::with_capacity(size);
        for (key, value) in &self.writes {
            out.extend_from_slice(&(key.len() as u32).to_le_bytes());
            out.extend_from_slice(key);
            match value {
                None => out.push(0),
                Some(v) => {
                    out.push(1);
                    out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                    out.extend_from_slice(v);
                }
            }
        }
        out
    }

    fn decode(mut bytes: &[u8]) -> Result<RowWrites, RowWriteError> {
        fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], RowWriteError> {
            if bytes.len() < n {
                return Err(RowWriteError::Truncated);
            }
            let (head, rest) = bytes.split_at(n);
            *bytes = rest;
            Ok(head)
        }
        fn len(bytes: &mut &[u8]) -> Result<usize, RowWriteError> {
            let raw = take(bytes, 4)?;
            Ok(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize)
        }
        let mut writes = Vec::new();
        while !bytes.is_empty() {
            let n = len(&mut bytes)?;
            let key = take(&mut bytes, n)?.to_vec();
            let value = match take(&mut bytes, 1)?[0] {
                0 => None,
                1 => {
                    let n = len(&mut bytes)?;
                    Some(take(&mut bytes, n)?.to_vec())
                }
                tag => return Err(RowWriteError::Tag(tag)),
            };
            writes.push((key, value));
        }
        Ok(RowWrites {
            new_revisions: Vec::new(),
            writes,
        })
    }
}

#[derive(Clone)]
pub(crate) struct Backend {
    pub db: sled::Db,
    pub raft: sled::Tree,
    /// The store's database, replaced whole by a defragmentation.
    state: Arc<std::sync::RwLock<Arc<StateDb>>>,
    /// Raft snapshot files (the `snapshot` tree names the current one).
    pub snap_dir: PathBuf,
    pub wal: Wal,
    disk: Arc<Disk>,
    /// `<data-dir>/state`: the store's database generations and the `CURRENT` pointer.
    state_dir: PathBuf,
    cache_bytes: u64,
}

/// One generation of the store's database and its trees.
pub(crate) struct StateDb {
    pub db: sled::Db,
    pub sm: sled::Tree,
    pub snapshot: sled::Tree,
    pub generation: u64,
    disk: Disk,
}

impl StateDb {
    fn open(dir: &Path, generation: u64, cache_bytes: u64) -> sled::Result<StateDb> {
        let path = dir.join(generation_name(generation));
        let (db, disk) = open_db(&path, cache_bytes)?;
        Ok(StateDb {
            sm: db.open_tree("sm")?,
            snapshot: db.open_tree("snapshot")?,
            db,
            generation,
            disk,
        })
    }

    /// sled's flush, then an `fdatasync` (see [`Disk`]).
    pub fn flush(&self) -> std::io::Result<()> {
        self.db.flush().map_err(std::io::Error::other)?;
        self.disk.sync()
    }
}

fn generation_name(generation: u64) -> String {
    format!("gen-{generation}")
}

const CURRENT: &str = "CURRENT";

/// Cache of the consensus database (`db/`), which holds only the `raft` tree's few values.
const CONSENSUS_CACHE_BYTES: u64 = 4 * 1024 * 1024;

/// Opens a sled database at `path` with Cairn's settings, and what it takes to make it durable.
fn open_db(path: &Path, cache_bytes: u64) -> sled::Result<(sled::Db, Disk)> {
    let db = sled::Config::new()
        .path(path)
        .cache_capacity(cache_bytes)
        // The state machine needs no flush for safety (the log holds what a crash loses, see
        // the module comment), but one a second bounds how much a restart applies again:
        // without it, up to a snapshot interval of entries.
        .flush_every_ms(Some(1000))
        .open()?;
    // The directory's own entries (sled's files) must survive a power cut too.
    std::fs::File::open(path)?.sync_all()?;
    let disk = Disk {
        data: std::fs::File::open(path.join("db"))?,
        blobs: path.join("blobs"),
        synced_blobs: Mutex::new(HashSet::new()),
    };
    Ok((db, disk))
}

/// The generation `state/CURRENT` names, if any.
fn read_current(state_dir: &Path) -> std::io::Result<Option<u64>> {
    match std::fs::read_to_string(state_dir.join(CURRENT)) {
        Ok(text) => text.trim().parse().map(Some).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "state/CURRENT is damaged")
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Points `state/CURRENT` at `generation`, atomically and durably.
fn write_current(state_dir: &Path, generation: u64) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = state_dir.join("CURRENT.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(generation.to_string().as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, state_dir.join(CURRENT))?;
    std::fs::File::open(state_dir)?.sync_all()
}

/// Removes every entry of `state/` but `CURRENT` and the current generation: generations
/// replaced by a defragmentation, or one a crash left half written.
fn remove_stale_generations(state_dir: &Path, current: u64) -> std::io::Result<()> {
    let keep = generation_name(current);
    for entry in std::fs::read_dir(state_dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == CURRENT || name == keep.as_str() {
            continue;
        }
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    std::fs::File::open(state_dir)?.sync_all()
}

/// Copies every row of `from` into `to`.
fn copy_tree(from: &sled::Tree, to: &sled::Tree) -> sled::Result<()> {
    for row in from.iter() {
        let (k, v) = row?;
        to.insert(k, v)?;
    }
    Ok(())
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

/// Moves a Raft log kept in sled (data dirs from before `wal/`) into the write-ahead file.
fn move_old_log(log: &sled::Tree, wal: &Wal) -> sled::Result<()> {
    if log.is_empty() {
        return Ok(());
    }
    if wal.bounds().is_none() {
        for row in log.iter() {
            let (key, value) = row?;
            let index = u64::from_be_bytes(key.as_ref().try_into().map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "a log key is not an index")
            })?);
            wal.append([(index, value.as_ref())])?;
        }
        wal.sync()?;
    }
    // Only once the copy is durable: a crash before leaves the old log to be moved again.
    log.clear()?;
    log.flush()?;
    Ok(())
}

impl Backend {
    pub fn open(dir: &Path, cache_bytes: u64) -> sled::Result<Backend> {
        let path = dir.join("db");
        // A handful of values: the cache is for the store.
        let (db, disk) = open_db(&path, cache_bytes.min(CONSENSUS_CACHE_BYTES))?;
        let snap_dir = dir.join("snap");
        std::fs::create_dir_all(&snap_dir)?;
        let state_dir = dir.join("state");
        std::fs::create_dir_all(&state_dir)?;
        std::fs::File::open(dir)?.sync_all()?;
        let (wal, recovered) = Wal::open(&dir.join("wal"))?;
        if recovered.dropped_bytes > 0 {
            tracing::warn!(
                entries = recovered.entries,
                dropped_bytes = recovered.dropped_bytes,
                "the Raft log ended in a torn write; cut it there"
            );
        }
        move_old_log(&db.open_tree("log")?, &wal)?;
        let state = open_state(&db, &state_dir, cache_bytes)?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok(Backend {
            wal,
            raft: db.open_tree("raft")?,
            state: Arc::new(std::sync::RwLock::new(Arc::new(state))),
            snap_dir,
            db,
            disk: Arc::new(disk),
            state_dir,
            cache_bytes,
        })
    }

    /// The state machine tree of the database in use.
    ///
    /// A defragmentation swaps the database while holding every lock under which the store reads
    /// or writes it; a tree taken outside those locks may belong to a replaced database.
    pub fn sm(&self) -> sled::Tree {
        self.state_db().sm.clone()
    }

    /// The tree naming the current Raft snapshot, in the database in use.
    pub fn snapshot(&self) -> sled::Tree {
        self.state_db().snapshot.clone()
    }

    pub(crate) fn state_db(&self) -> Arc<StateDb> {
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Opens an empty database for the next generation, removing one a failed attempt left.
    pub(crate) fn create_next_generation(&self) -> sled::Result<StateDb> {
        let next = self.state_db().generation + 1;
        let path = self.state_dir.join(generation_name(next));
        if path.exists() {
            std::fs::remove_dir_all(&path)?;
        }
        StateDb::open(&self.state_dir, next, self.cache_bytes)
    }

    /// Makes `next` durable, points `state/CURRENT` at it and puts it in use; the database it
    /// replaces is closed and removed. The caller guarantees no one reads or writes the store
    /// meanwhile. A crash before the pointer is renamed leaves the old database in use (the new
    /// one is removed when the data dir is opened); after, the new one, complete.
    pub(crate) fn swap_in(&self, next: StateDb) -> std::io::Result<()> {
        next.flush()?;
        std::fs::File::open(self.state_dir.join(generation_name(next.generation)))?.sync_all()?;
        write_current(&self.state_dir, next.generation)?;
        let generation = next.generation;
        let old = std::mem::replace(
            &mut *self.state.write().unwrap_or_else(|p| p.into_inner()),
            Arc::new(next),
        );
        // Closing sled's files first, where nothing else holds the old database.
        drop(old);
        remove_stale_generations(&self.state_dir, generation)
    }

    /// Makes every write so far durable: sled's flush, then an `fdatasync` (see [`Disk`]); the
    /// store's database first, so a purge point in `raft` never outlives the state it relies on.
    pub async fn flush(&self) -> std::io::Result<()> {
        // One blocking task for both steps: sled's flush_async would hop to a thread of its own first.
        let backend = self.clone();
        tokio::task::spawn_blocking(move || backend.flush_blocking())
            .await
            .map_err(std::io::Error::other)?
    }

    /// [`Backend::flush`] for callers outside an async runtime.
    pub fn flush_blocking(&self) -> std::io::Result<()> {
        self.state_db().flush()?;
        self.db.flush().map_err(std::io::Error::other)?;
        self.disk.sync()
    }

    /// Bytes the databases occupy on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0) + self.state_db().db.size_on_disk().unwrap_or(0)
    }
}

/// Opens the store's database in use. A data dir from before `state/` keeps the store in `db/`:
/// its trees are copied to a first generation, made durable and pointed at, and only then emptied
/// in `db/` (a crash in between copies them again, or finds them already moved).
fn open_state(db: &sled::Db, state_dir: &Path, cache_bytes: u64) -> sled::Result<StateDb> {
    let old_sm = db.open_tree("sm")?;
    let old_snapshot = db.open_tree("snapshot")?;
    let state = match read_current(state_dir)? {
        Some(generation) => {
            remove_stale_generations(state_dir, generation)?;
            StateDb::open(state_dir, generation, cache_bytes)?
        }
        None => {
            remove_stale_generations(state_dir, 1)?;
            let path = state_dir.join(generation_name(1));
            if path.exists() {
                std::fs::remove_dir_all(&path)?;
            }
            let first = StateDb::open(state_dir, 1, cache_bytes)?;
            copy_tree(&old_sm, &first.sm)?;
            copy_tree(&old_snapshot, &first.snapshot)?;
            first.flush()?;
            std::fs::File::open(&path)?.sync_all()?;
            write_current(state_dir, 1)?;
            first
        }
    };
    if !old_sm.is_empty() || !old_snapshot.is_empty() {
        old_sm.clear()?;
        old_snapshot.clear()?;
        db.flush()?;
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::keys::META_REVISION;

    fn rows(tree: &sled::Tree) -> Vec<(Vec<u8>, Vec<u8>)> {
        tree.iter()
            .map(|r| r.unwrap())
            .filter(|(k, _)| &k[..] != META_APPLY_RECORD)
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect()
    }

    fn change_set() -> RowWrites {
        let mut w = RowWrites::default();
        w.insert(b"a", b"1".to_vec());
        w.remove(b"gone");
        w.insert(b"big", vec![7u8; 70_000]);
        w.insert(b"empty", Vec::new());
        w
    }

    #[test]
    fn a_log_kept_in_sled_moves_to_the_write_ahead_file() {
        let dir = tempfile::tempdir().unwrap();
        {
            // A data dir from before `wal/`: the log in sled's `log` tree.
            let db = sled::Config::new()
                .path(dir.path().join("db"))
                .open()
                .unwrap();
            let log = db.open_tree("log").unwrap();
            for i in 7u64..=9 {
                log.insert(i.to_be_bytes(), format!("entry {i}").into_bytes())
                    .unwrap();
            }
            db.flush().unwrap();
        }
        for _ in 0..2 {
            let backend = Backend::open(dir.path(), 1 << 20).unwrap();
            assert_eq!(backend.wal.bounds(), Some((7, 9)));
            assert_eq!(
                backend.wal.read(9, None).unwrap(),
                vec![b"entry 9".to_vec()]
            );
            assert!(backend.db.open_tree("log").unwrap().is_empty());
        }
    }

    #[test]
    fn a_record_cut_short_is_completed_on_replay() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Backend::open(dir.path(), 1 << 20).unwrap();
        let sm = &backend.sm();
        sm.insert(b"gone", b"old").unwrap();
        sm.insert(b"a", b"0").unwrap();

        // A crash after the record and the first row: the rest never reached the tree.
        let record = change_set();
        sm.insert(META_APPLY_RECORD, record.encode()).unwrap();
        sm.insert(b"a", b"1").unwrap();
        RowWrites::replay(sm).unwrap();

        let expected = {
            let other = tempfile::tempdir().unwrap();
            let clean = Backend::open(other.path(), 1 << 20).unwrap();
            clean.sm().insert(b"gone", b"old").unwrap();
            change_set().commit(&clean.sm()).unwrap();
            rows(&clean.sm())
        };
        assert_eq!(rows(sm), expected);
        assert!(sm.get(b"gone").unwrap().is_none());
        // Replaying a complete record again changes nothing.
        RowWrites::replay(sm).unwrap();
        assert_eq!(rows(sm), expected);
    }

    #[test]
    fn records_survive_reopening_and_reject_damage() {
        let dir = tempfile::tempdir().unwrap();
        {
            let backend = Backend::open(dir.path(), 1 << 20).unwrap();
            change_set().commit(&backend.sm()).unwrap();
            backend.flush_blocking().unwrap();
        }
        let backend = Backend::open(dir.path(), 1 << 20).unwrap();
        let bytes = backend.sm().get(META_APPLY_RECORD).unwrap().unwrap();
        let decoded = RowWrites::decode(&bytes).unwrap();
        assert_eq!(decoded.writes, change_set().writes);
        assert!(matches!(
            RowWrites::decode(&bytes[..bytes.len() - 1]),
            Err(RowWriteError::Truncated)
        ));
        let mut bad = bytes.to_vec();
        bad[5] = 9; // the first change's tag (after a 4-byte length and the 1-byte key "a")
        assert!(matches!(
            RowWrites::decode(&bad),
            Err(RowWriteError::Tag(9))
        ));
    }

    #[test]
    fn new_revisions_go_first_and_are_dropped_if_their_record_never_landed() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Backend::open(dir.path(), 1 << 20).unwrap();
        let sm = &backend.sm();
        let mut done = RowWrites::default();
        done.insert_new_revision(Revision::new(2, 0), vec![1; 200_000]);
        done.insert(META_REVISION, 2i64.to_le_bytes().to_vec());
        done.commit(sm).unwrap();
        let record = sm.get(META_APPLY_RECORD).unwrap().unwrap();
        assert!(record.len() < 100, "the record does not repeat the value");

        // A crash after the next entry's revisions but before its record.
        sm.insert(kv_key(Revision::new(3, 0)), b"torn".to_vec())
            .unwrap();
        sm.insert(kv_key(Revision::new(3, 1)), b"torn".to_vec())
            .unwrap();
        assert_eq!(RowWrites::drop_unfinished_revisions(sm, 2).unwrap(), 2);
        let revisions: Vec<_> = sm
            .scan_prefix([KV_PREFIX])
            .keys()
            .map(|k| k.unwrap().to_vec())
            .collect();
        assert_eq!(revisions, vec![kv_key(Revision::new(2, 0)).to_vec()]);
        assert!(sm.get(b"m/other").unwrap().is_none());
    }
}
