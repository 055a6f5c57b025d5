//! The current Raft snapshot: which file it is, building one from a capture, receiving and
//! installing one in place of the store, all crash-safe. The file layout is `snapshot_file`.
//!
//! Consensus' snapshot meta is stored beside the file's name and handed back as it was written;
//! storage reads it only through `SnapshotMeta`. Must never import `raft/` or `grpc/`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::StoreError;
use super::keys::{META_APPLIED, META_INSTALLING, META_MEMBERSHIP, SNAP_CURRENT};
use super::snapshot_file;
use super::store::{BuiltSnapshot, Capture, ConsensusRows, SnapshotMeta, StoreState};
use crate::codec::{decode, encode};

impl StoreState {
    /// The current snapshot's meta and file name.
    pub(super) fn current_snapshot<M: SnapshotMeta>(
        &self,
    ) -> Result<Option<(M, String)>, StoreError> {
        match self.backend.snapshot().get(SNAP_CURRENT)? {
            Some(bytes) => Ok(Some(decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Moves a finished snapshot file from `from` to its own name and makes it current unless a
    /// newer one already is (an install always becomes current), durably, then removes the files
    /// of the others; with `installing`, also marks the store as being replaced by it. Returns the
    /// file, opened. Renaming and opening happen under the same lock as the removal, so a build and
    /// an install finishing together never remove each other's file before it is open.
    pub async fn adopt_snapshot<M: SnapshotMeta>(
        &self,
        meta: &M,
        from: PathBuf,
        installing: bool,
    ) -> Result<tokio::fs::File, StoreError> {
        let _changing = self.snapshot_lock.lock().await;
        let dir = self.backend.snap_dir.clone();
        // Two snapshots of one position hold the same state, but a build and an install of it
        // may finish together: the sequence number keeps their files apart.
        let name =
            snapshot_file::file_name(&format!("{}-{}", meta.position(), self.next_snapshot_seq()));
        let path = dir.join(&name);
        let (sync_dir, target) = (dir.clone(), path.clone());
        tokio::task::spawn_blocking(move || {
            std::fs::rename(from, &target)?;
            snapshot_file::sync_dir(&sync_dir)
        })
        .await??;
        let file = tokio::fs::File::open(&path).await?;
        let keep = match self.current_snapshot::<M>()? {
            Some((current, current_name)) if current.newer_than(meta) && !installing => {
                Some(current_name)
            }
            _ => {
                let value = encode(&(meta, &name))?;
                self.backend.snapshot().insert(SNAP_CURRENT, value)?;
                Some(name.clone())
            }
        };
        if installing {
            self.backend.sm().insert(META_INSTALLING, name.as_bytes())?;
        }
        // openraft purges the log up to a snapshot once it is reported, so it must be durable first.
        self.backend.flush().await?;
        tokio::task::spawn_blocking(move || {
            snapshot_file::remove_others(&dir, keep.as_deref(), false)
        })
        .await??;
        Ok(file)
    }

    /// Writes a capture to a new snapshot file (durable, under a temporary name, which it returns),
    /// streaming the key revisions from sled.
    pub(crate) fn write_snapshot_file(&self, capture: Capture) -> std::io::Result<PathBuf> {
        let tmp = snapshot_file::temp_path(&self.backend.snap_dir, "build");
        let mut out = snapshot_file::RowWriter::create(&tmp)?;
        let (revision, rewrites) = (capture.revision, capture.rewrites);
        self.captured_rows(capture, |k, v| out.row(k, v))?;
        out.finish_file()?;
        let file = Arc::new(std::fs::File::open(&tmp)?);
        *self.built.lock().unwrap_or_else(|p| p.into_inner()) = Some(BuiltSnapshot {
            file,
            revision,
            rewrites,
        });
        Ok(tmp)
    }

    /// Replaces the `sm` tree with a snapshot file's rows, row by row (blocking). Run under the
    /// install marker, so a crash part way is redone when the store opens.
    pub(super) fn replace_from_snapshot(
        &self,
        file: std::fs::File,
        consensus: &ConsensusRows,
    ) -> Result<(), StoreError> {
        let sm = &self.backend.sm();
        for key in sm.iter().keys() {
            let key = key?;
            if key != META_INSTALLING {
                sm.remove(key)?;
            }
        }
        let mut rows = snapshot_file::RowReader::open(file)?;
        while let Some((k, v)) = rows.next_row()? {
            sm.insert(k, v)?;
        }
        sm.insert(META_APPLIED, consensus.applied.as_slice())?;
        sm.insert(META_MEMBERSHIP, consensus.membership.as_slice())?;
        sm.remove(META_INSTALLING)?;
        Ok(())
    }

    /// Starts receiving a snapshot into a new file in the snapshot directory; a transfer that was
    /// started before and never installed is abandoned.
    pub async fn begin_receiving_snapshot(&self) -> Result<tokio::fs::File, StoreError> {
        let path = snapshot_file::temp_path(&self.backend.snap_dir, "recv");
        let file = tokio::fs::File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await?;
        let abandoned = self
            .receiving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(path);
        if let Some(old) = abandoned {
            // A transfer that never finished: nothing will install it.
            let _ = tokio::fs::remove_file(old).await;
        }
        Ok(file)
    }

    /// Replaces the store with a received snapshot and makes it current. Returns its size.
    pub async fn install_snapshot<M: SnapshotMeta>(
        self: &std::sync::Arc<Self>,
        meta: &M,
        file: std::fs::File,
    ) -> Result<u64, StoreError> {
        let dir = self.backend.snap_dir.clone();
        let received = self
            .receiving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let (ready, bytes) =
            tokio::task::spawn_blocking(move || keep_snapshot_file(file, received, &dir)).await??;
        // Replacing the store must not happen under a copy in progress.
        let mut rewriting = self.rewrite_guard.write().await;
        *rewriting += 1;
        // Its file no longer holds the store's revisions: let it go.
        *self.built.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.drop_kept_revisions();
        let file = self
            .adopt_snapshot(meta, ready, true)
            .await?
            .into_std()
            .await;
        let (replacer, consensus) = (self.clone(), meta.meta_rows()?);
        tokio::task::spawn_blocking(move || replacer.replace_from_snapshot(file, &consensus))
            .await??;
        self.load::<M>()?;
        Ok(bytes)
    }

    /// The current snapshot's meta and its file, opened.
    pub async fn open_current_snapshot<M: SnapshotMeta>(
        &self,
    ) -> Result<Option<(M, tokio::fs::File)>, StoreError> {
        // A newer snapshot may replace the file between reading its name and opening it.
        for _ in 0..3 {
            let Some((meta, name)) = self.current_snapshot::<M>()? else {
                return Ok(None);
            };
            match tokio::fs::File::open(self.backend.snap_dir.join(&name)).await {
                Ok(file) => return Ok(Some((meta, file))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::SnapshotVanishing)
    }

    /// A number for the next snapshot's id, unique while this store is open.
    fn next_snapshot_seq(&self) -> u64 {
        self.snapshot_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

/// Makes a received snapshot durable in `dir` under a temporary name, returned with its size: the
/// file it was received into (a snapshot handed over some other way is copied).
pub(super) fn keep_snapshot_file(
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
