//! Defragmentation: rewrites the store's sled database compactly into a new generation and swaps
//! it in while the member keeps running, so the space compaction freed goes back to the file
//! system (sled reuses freed space but never shrinks its file on its own).
//!
//! Two passes keep the time requests wait short:
//! 1. the stored key revisions up to the current revision are copied while applies and reads go
//!    on. Those rows never change once written except by compaction or a snapshot install, and
//!    both wait for the rewrite guard, held exclusively for the whole defragmentation (as copies
//!    for snapshots and backups hold it shared);
//! 2. then, with every lock under which the store is read or written held (snapshot changes, then
//!    the index), the rest is copied: revisions written meanwhile, the small rows (meta, leases,
//!    members, alarms, the last redo record) and the `snapshot` tree. The new database is made
//!    durable, named in `state/CURRENT` by an atomic rename, and put in use (see
//!    [`Backend::swap_in`]); the old one is removed.
//!
//! So every read or write of the store must take its tree ([`Backend::sm`]) under one of those
//! locks (the index lock, the rewrite guard, the snapshot lock), never before: a tree taken before
//! the swap belongs to the replaced database, and writes through it would be lost.
//!
//! A crash before the rename leaves the old database whole (and the partial new one is removed
//! at open); after it, the new one is complete. Must never import `raft/` or `grpc/`.

use std::sync::Arc;
use std::time::Instant;

#[cfg(doc)]
use super::backend::Backend;
use super::backend::StateDb;
use super::error::StoreError;
use super::keys::{kv_key, KV_PREFIX};
use super::store::StoreState;
use crate::mvcc::Revision;

/// What a defragmentation did.
#[derive(Debug, Clone, Copy)]
pub struct DefragStats {
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Rows copied in the first pass, while requests were served.
    pub rows_live: u64,
    /// Rows copied while requests waited.
    pub rows_paused: u64,
}

impl StoreState {
    /// Rewrites the store's database compactly and swaps it in; see the module comment.
    #[tracing::instrument(skip_all)]
    pub async fn defragment(self: &Arc<Self>) -> Result<DefragStats, StoreError> {
        let started = Instant::now();
        // Held throughout: no compaction, snapshot install or copy changes or reads the revisions.
        let mut rewriting = self.rewrite_guard.clone().write_owned().await;
        // The revisions keep their content but the count keeps the rule simple: every rewrite.
        *rewriting += 1;
        self.drop_kept_revisions();
        let bytes_before = self.backend.size_on_disk();
        let up_to = self.current_revision();
        let state = self.clone();
        let (next, rows_live) = tokio::task::spawn_blocking(move || {
            let next = state.backend.create_next_generation()?;
            let rows = copy_revisions(&state.backend.sm(), &next, None, up_to)?;
            Ok::<_, StoreError>((next, rows))
        })
        .await??;
        let live = started.elapsed();

        let _snapshots = self.snapshot_lock.lock().await;
        let state = self.clone();
        let rows_paused = tokio::task::spawn_blocking(move || {
            let paused = Instant::now();
            let index = state.index.write().unwrap_or_else(|p| p.into_inner());
            let current = state.backend.state_db();
            let mut rows = copy_revisions(&current.sm, &next, Some(up_to), i64::MAX)?;
            let after_kv = [KV_PREFIX + 1];
            for row in current
                .sm
                .range(..&[KV_PREFIX][..])
                .chain(current.sm.range(&after_kv[..]..))
            {
                let (k, v) = row?;
                next.sm.insert(k, v)?;
                rows += 1;
            }
            for row in current.snapshot.iter() {
                let (k, v) = row?;
                next.snapshot.insert(k, v)?;
                rows += 1;
            }
            drop(current);
            state.backend.swap_in(next)?;
            drop(index);
            tracing::debug!(paused = ?paused.elapsed(), rows, "swapped in the rewritten database");
            Ok::<_, StoreError>(rows)
        })
        .await??;
        let stats = DefragStats {
            bytes_before,
            bytes_after: self.backend.size_on_disk(),
            rows_live,
            rows_paused,
        };
        tracing::info!(
            bytes_before = stats.bytes_before,
            bytes_after = stats.bytes_after,
            rows_live,
            rows_paused,
            live_copy = ?live,
            took = ?started.elapsed(),
            "defragmented the store"
        );
        Ok(stats)
    }
}

/// Copies the key revisions with main revision in `(after, up_to]` (`after = None`: from the
/// first) from `from` to `next`. Returns how many.
fn copy_revisions(
    from: &sled::Tree,
    next: &StateDb,
    after: Option<i64>,
    up_to: i64,
) -> Result<u64, StoreError> {
    let start = match after {
        Some(rev) => kv_key(Revision::new(rev.saturating_add(1), 0)).to_vec(),
        None => vec![KV_PREFIX],
    };
    let end = match up_to.checked_add(1) {
        Some(rev) => kv_key(Revision::new(rev, 0)).to_vec(),
        None => vec![KV_PREFIX + 1],
    };
    let mut rows = 0;
    for row in from.range(start..end) {
        let (k, v) = row?;
        next.sm.insert(k, v)?;
        rows += 1;
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::super::backend::Backend;
    use super::*;

    fn fill(backend: &Backend, n: u32) {
        let sm = backend.sm();
        for i in 0..n {
            sm.insert(i.to_be_bytes(), vec![i as u8; 1000]).unwrap();
        }
        sm.insert(b"m/meta", b"kept".to_vec()).unwrap();
        backend
            .snapshot()
            .insert(b"current", b"snap".to_vec())
            .unwrap();
        backend.flush_blocking().unwrap();
    }

    fn copy_all(backend: &Backend) -> StateDb {
        let next = backend.create_next_generation().unwrap();
        let current = backend.state_db();
        for row in current.sm.iter() {
            let (k, v) = row.unwrap();
            next.sm.insert(k, v).unwrap();
        }
        for row in current.snapshot.iter() {
            let (k, v) = row.unwrap();
            next.snapshot.insert(k, v).unwrap();
        }
        next
    }

    fn generations(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join("state"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_crash_before_the_swap_keeps_the_old_database_and_drops_the_new() {
        let dir = tempfile::tempdir().unwrap();
        {
            let backend = Backend::open(dir.path(), 1 << 20).unwrap();
            fill(&backend, 100);
            let next = copy_all(&backend);
            // A write the copy missed, then a crash before the pointer moved.
            backend.sm().insert(b"m/late", b"x".to_vec()).unwrap();
            backend.flush_blocking().unwrap();
            next.flush().unwrap();
        }
        assert_eq!(generations(dir.path()), ["CURRENT", "gen-1", "gen-2"]);
        let backend = Backend::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(backend.state_db().generation, 1);
        assert_eq!(generations(dir.path()), ["CURRENT", "gen-1"]);
        assert_eq!(backend.sm().get(b"m/late").unwrap().unwrap(), &b"x"[..]);
        assert_eq!(backend.sm().len(), 102);
    }

    #[test]
    fn after_the_swap_the_new_database_is_in_use_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let backend = Backend::open(dir.path(), 1 << 20).unwrap();
            fill(&backend, 100);
            let next = copy_all(&backend);
            backend.swap_in(next).unwrap();
            assert_eq!(generations(dir.path()), ["CURRENT", "gen-2"]);
            backend.sm().insert(b"m/after", b"y".to_vec()).unwrap();
            backend.flush_blocking().unwrap();
        }
        let backend = Backend::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(backend.state_db().generation, 2);
        assert_eq!(backend.sm().len(), 102);
        assert_eq!(backend.sm().get(b"m/meta").unwrap().unwrap(), &b"kept"[..]);
        assert_eq!(
            backend.snapshot().get(b"current").unwrap().unwrap(),
            &b"snap"[..]
        );
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Meta {
        id: String,
    }

    impl super::super::store::SnapshotMeta for Meta {
        fn position(&self) -> String {
            self.id.clone()
        }

        fn newer_than(&self, _other: &Self) -> bool {
            true
        }

        fn meta_rows(&self) -> Result<super::super::store::ConsensusRows, StoreError> {
            Ok(super::super::store::ConsensusRows {
                applied: Vec::new(),
                membership: Vec::new(),
            })
        }
    }

    fn put(key: String) -> crate::storage::Payload<'static, ()> {
        crate::storage::Payload::Command(crate::command::Command::Put(crate::mvcc::PutRequest {
            key: key.into_bytes(),
            value: vec![7; 2000],
            lease: 0,
            prev_kv: false,
            ignore_value: false,
            ignore_lease: false,
        }))
    }

    /// Applies racing a defragmentation all land in the database in use, and survive reopening.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_applied_during_a_defragmentation_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let open = |dir: &std::path::Path| {
            let backend = Backend::open(dir, 1 << 22).unwrap();
            StoreState::open::<Meta>(backend, std::time::Duration::from_secs(600)).unwrap()
        };
        let state = open(dir.path());
        for i in 0..500u64 {
            state
                .apply(&i, put(format!("before/{i:04}")))
                .await
                .unwrap();
        }
        let writer = {
            let state = state.clone();
            tokio::spawn(async move {
                for i in 0..2000u64 {
                    state
                        .apply(&(1000 + i), put(format!("during/{i:04}")))
                        .await
                        .unwrap();
                    if i % 50 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        };
        for _ in 0..3 {
            state.defragment().await.unwrap();
        }
        writer.await.unwrap();
        let count = |state: &StoreState| {
            let req = crate::mvcc::RangeRequest {
                key: vec![0],
                range_end: vec![0],
                count_only: true,
                ..Default::default()
            };
            state.range(&req).unwrap().0.count
        };
        assert_eq!(count(&state), 2500);
        assert_eq!(state.backend.state_db().generation, 4);
        state.flush().await.unwrap();
        drop(state);
        let reopened = open(dir.path());
        assert_eq!(count(&reopened), 2500);
        assert_eq!(reopened.current_revision(), 2501);
    }

    #[test]
    fn a_data_dir_with_the_store_in_db_moves_it_to_a_first_generation() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path().join("db")).unwrap();
            db.open_tree("sm").unwrap().insert(b"m/old", b"1").unwrap();
            db.open_tree("snapshot")
                .unwrap()
                .insert(b"current", b"s")
                .unwrap();
            db.open_tree("raft").unwrap().insert(b"vote", b"v").unwrap();
            db.flush().unwrap();
        }
        let backend = Backend::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(backend.sm().get(b"m/old").unwrap().unwrap(), &b"1"[..]);
        assert_eq!(
            backend.snapshot().get(b"current").unwrap().unwrap(),
            &b"s"[..]
        );
        assert_eq!(backend.raft.get(b"vote").unwrap().unwrap(), &b"v"[..]);
        assert!(backend.db.open_tree("sm").unwrap().is_empty());
        assert_eq!(generations(dir.path()), ["CURRENT", "gen-1"]);
    }
}
