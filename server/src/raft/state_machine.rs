//! The state machine handed to openraft: an adapter over [`StoreState`] (in `storage/`), which
//! holds, applies and snapshots the data. This file only translates: log entries to
//! [`Payload`]s, openraft's snapshot meta to what storage keeps, storage errors to openraft's.
//!
//! Owns the applied position and membership as openraft types (storage keeps them encoded). Must
//! never name sled: everything below consensus goes through `storage/`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, StorageIOError,
};
use prometheus_client::metrics::histogram::Histogram;

use super::types::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::codec::encode;
use crate::command::CommandResponse;
use crate::storage::store::Capture;
use crate::storage::{Backend, ConsensusRows, Payload, StoreError, StoreState};

fn sm_err(verb: ErrorVerb) -> impl FnOnce(StoreError) -> StorageError {
    move |e| StorageIOError::new(ErrorSubject::StateMachine, verb, AnyError::new(&e)).into()
}

fn snap_err(verb: ErrorVerb) -> impl FnOnce(StoreError) -> StorageError {
    move |e| StorageIOError::new(ErrorSubject::Snapshot(None), verb, AnyError::new(&e)).into()
}

impl crate::storage::SnapshotMeta for SnapshotMeta {
    fn snapshot_id(&self) -> &str {
        &self.snapshot_id
    }

    fn newer_than(&self, other: &Self) -> bool {
        self.last_log_id > other.last_log_id
    }

    fn meta_rows(&self) -> Result<ConsensusRows, StoreError> {
        Ok(ConsensusRows {
            applied: encode(&self.last_log_id)?,
            membership: encode(&self.last_membership)?,
        })
    }
}

type AppliedState = (Option<LogId>, StoredMembership);

/// Reads the applied position and membership the store holds.
fn stored_applied(state: &StoreState) -> Result<AppliedState, StoreError> {
    let (applied, membership) = state.consensus_rows::<Option<LogId>, StoredMembership>()?;
    Ok((applied.flatten(), membership.unwrap_or_default()))
}

/// The state machine handed to openraft.
#[derive(Clone)]
pub struct StateMachineStore {
    state: Arc<StoreState>,
    /// What the store has applied, as openraft asks for it; changed only on the apply task.
    applied: Arc<Mutex<AppliedState>>,
    apply_duration: Histogram,
}

impl StateMachineStore {
    pub(crate) fn open(
        backend: Backend,
        progress_interval: Duration,
        apply_duration: Histogram,
    ) -> Result<StateMachineStore, StorageError> {
        let state = StoreState::open::<SnapshotMeta>(backend, progress_interval)
            .map_err(sm_err(ErrorVerb::Read))?;
        let applied = stored_applied(&state).map_err(sm_err(ErrorVerb::Read))?;
        Ok(StateMachineStore {
            state,
            applied: Arc::new(Mutex::new(applied)),
            apply_duration,
        })
    }

    pub fn state(&self) -> Arc<StoreState> {
        self.state.clone()
    }

    fn applied(&self) -> std::sync::MutexGuard<'_, AppliedState> {
        self.applied.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<AppliedState, StorageError> {
        Ok(self.applied().clone())
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut responses = Vec::new();
        for entry in entries {
            let started = std::time::Instant::now();
            let applied = Some(entry.log_id);
            let (response, membership) = match entry.payload {
                EntryPayload::Blank => {
                    (self.state.apply(&applied, Payload::<()>::Blank).await, None)
                }
                EntryPayload::Membership(m) => {
                    let stored = StoredMembership::new(applied, m);
                    let response = self
                        .state
                        .apply(&applied, Payload::Membership(&stored))
                        .await;
                    (response, Some(stored))
                }
                EntryPayload::Normal(cmd) => (
                    self.state
                        .apply(&applied, Payload::<()>::Command(cmd))
                        .await,
                    None,
                ),
            };
            let response = response.map_err(sm_err(ErrorVerb::Write))?;
            let mut current = self.applied();
            current.0 = applied;
            if let Some(membership) = membership {
                current.1 = membership;
            }
            drop(current);
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
            applied: self.applied().clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let file = self
            .state
            .begin_receiving_snapshot()
            .await
            .map_err(snap_err(ErrorVerb::Write))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let file = snapshot.into_std().await;
        let bytes = self
            .state
            .install_snapshot(meta, file)
            .await
            .map_err(snap_err(ErrorVerb::Write))?;
        *self.applied() = stored_applied(&self.state).map_err(sm_err(ErrorVerb::Read))?;
        tracing::info!(last_log_id = ?meta.last_log_id, snapshot_id = %meta.snapshot_id, bytes, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let current = self
            .state
            .open_current_snapshot::<SnapshotMeta>()
            .await
            .map_err(snap_err(ErrorVerb::Read))?;
        Ok(current.map(|(meta, file)| Snapshot {
            meta,
            snapshot: Box::new(file),
        }))
    }
}

/// Completes, encodes and stores a snapshot captured by
/// [`StateMachineStore::get_snapshot_builder`].
pub struct SnapshotBuilder {
    state: Arc<StoreState>,
    capture: Option<Result<Capture, StoreError>>,
    applied: AppliedState,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let capture = self
            .capture
            .take()
            .ok_or_else(|| {
                snap_err(ErrorVerb::Read)(StoreError::Io(std::io::Error::other(
                    "snapshot built twice",
                )))
            })?
            .map_err(snap_err(ErrorVerb::Read))?;
        let (applied, membership) = self.applied.clone();
        let seq = self.state.next_snapshot_seq();
        let snapshot_id = match applied {
            Some(id) => format!("{}-{}-{}", id.leader_id, id.index, seq),
            None => format!("empty-{seq}"),
        };
        let state = self.state.clone();
        let written = tokio::task::spawn_blocking(move || state.write_snapshot_file(capture))
            .await
            .map_err(|e| snap_err(ErrorVerb::Write)(e.into()))?
            .map_err(|e| snap_err(ErrorVerb::Write)(e.into()))?;
        let meta = SnapshotMeta {
            last_log_id: applied,
            last_membership: membership,
            snapshot_id,
        };
        let file = self
            .state
            .adopt_snapshot(&meta, written, false)
            .await
            .map_err(snap_err(ErrorVerb::Write))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}
