//! The state machine handed to openraft: an adapter over [`StoreState`] (in `storage/`), which
//! holds, applies and snapshots the data. This file only translates: log entries to
//! [`Payload`]s, openraft's snapshot meta to what storage keeps, storage errors to openraft's.
//!
//! Owns the applied position and membership as openraft types (storage keeps them encoded). Must
//! never name sled: everything below consensus goes through `storage/`.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, RaftSnapshotBuilder};
use openraft_legacy::network_v1::SnapshotReceiverFactory;
use prometheus_client::metrics::histogram::Histogram;

use super::types::{LogId, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig};
use crate::codec::encode;
use crate::storage::store::Capture;
use crate::storage::{Backend, ConsensusRows, Payload, StoreError, StoreState};

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl crate::storage::SnapshotMeta for SnapshotMeta {
    fn position(&self) -> String {
        match &self.last_log_id {
            Some(id) => format!("{}-{}", id.leader_id, id.index),
            None => "empty".to_string(),
        }
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
    ) -> io::Result<StateMachineStore> {
        let state = StoreState::open::<SnapshotMeta>(backend, progress_interval).map_err(io_err)?;
        let applied = stored_applied(&state).map_err(io_err)?;
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
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> io::Result<AppliedState> {
        Ok(self.applied().clone())
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn apply<S>(&mut self, mut entries: S) -> io::Result<()>
    where
        S: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + Send,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
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
            let response = response.map_err(io_err)?;
            let mut current = self.applied();
            current.0 = applied;
            if let Some(membership) = membership {
                current.1 = membership;
            }
            drop(current);
            self.apply_duration.observe(started.elapsed().as_secs_f64());
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        // Capture the point in time now, on the apply task (so `applied` matches the rows); the
        // key revisions are copied while applying goes on.
        SnapshotBuilder {
            state: self.state.clone(),
            capture: Some(self.state.capture_for_snapshot().await),
            applied: self.applied().clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> io::Result<()> {
        let file = snapshot.into_std().await;
        let bytes = self
            .state
            .install_snapshot(meta, file)
            .await
            .map_err(io_err)?;
        *self.applied() = stored_applied(&self.state).map_err(io_err)?;
        tracing::info!(last_log_id = ?meta.last_log_id, bytes, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        let current = self
            .state
            .open_current_snapshot::<SnapshotMeta>()
            .await
            .map_err(io_err)?;
        Ok(current.map(|(meta, snapshot)| Snapshot { meta, snapshot }))
    }
}

/// A snapshot sent in chunks is received into a file of its own.
impl SnapshotReceiverFactory<TypeConfig> for StateMachineStore {
    type SnapshotReceiver = SnapshotData;

    async fn begin_receiving_snapshot(&mut self) -> io::Result<SnapshotData> {
        self.state.begin_receiving_snapshot().await.map_err(io_err)
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
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        let capture = self
            .capture
            .take()
            .ok_or_else(|| io::Error::other("snapshot built twice"))?
            .map_err(io_err)?;
        let (last_log_id, last_membership) = self.applied.clone();
        let state = self.state.clone();
        let written = tokio::task::spawn_blocking(move || state.write_snapshot_file(capture))
            .await
            .map_err(io::Error::other)??;
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
        };
        let snapshot = self
            .state
            .adopt_snapshot(&meta, written, false)
            .await
            .map_err(io_err)?;
        Ok(Snapshot { meta, snapshot })
    }
}
