//! The `Maintenance` service: status, alarms and the space quota, backups, consistency hashes.

use std::pin::Pin;

use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::maintenance_server::Maintenance;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::ServerContext;
use crate::command::Command;
use crate::error::ServerError;
use crate::raft::admin::AdminCall;

/// The etcd API version Cairn reports in Status. Clients (Kubernetes among them) gate features on it.
pub const ETCD_API_VERSION: &str = "3.5.13";

/// Bytes per Snapshot stream message.
const SNAPSHOT_CHUNK: usize = 1024 * 1024;

pub(crate) struct MaintenanceService {
    pub ctx: ServerContext,
}

fn alarm_name(alarm: i32) -> &'static str {
    match pb::AlarmType::try_from(alarm) {
        Ok(pb::AlarmType::Nospace) => "NOSPACE",
        Ok(pb::AlarmType::Corrupt) => "CORRUPT",
        _ => "NONE",
    }
}

impl MaintenanceService {
    fn alarm_members(&self, filter: i32) -> Vec<pb::AlarmMember> {
        self.ctx
            .raft
            .state()
            .alarms()
            .into_iter()
            .filter(|(_, a)| filter == pb::AlarmType::None as i32 || *a == filter)
            .map(|(member_id, alarm)| pb::AlarmMember { member_id, alarm })
            .collect()
    }
}

type SnapshotStream =
    Pin<Box<dyn Stream<Item = Result<pb::SnapshotResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let raft = &self.ctx.raft;
        let metrics = raft.metrics();
        let state = raft.state();
        let is_learner = !metrics
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == self.ctx.member_id);
        let errors = state
            .alarms()
            .into_iter()
            .map(|(member, alarm)| format!("memberID:{member} alarm:{} ", alarm_name(alarm)))
            .collect();
        Ok(Response::new(pb::StatusResponse {
            header: self.ctx.header(state.current_revision()),
            version: ETCD_API_VERSION.to_string(),
            db_size: state.backend_size() as i64,
            leader: metrics.current_leader.unwrap_or(0),
            raft_index: metrics.last_log_index.unwrap_or(0),
            raft_term: metrics.current_term,
            raft_applied_index: metrics.last_applied.map(|l| l.index).unwrap_or(0),
            errors,
            db_size_in_use: state.bytes_in_use() as i64,
            is_learner,
        }))
    }

    #[tracing::instrument(skip_all, fields(action = req.get_ref().action, alarm = req.get_ref().alarm))]
    async fn alarm(
        &self,
        req: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        let req = req.into_inner();
        let action = pb::alarm_request::AlarmAction::try_from(req.action)
            .map_err(|_| Status::invalid_argument("etcdserver: unknown alarm action"))?;
        let alarms = match action {
            pb::alarm_request::AlarmAction::Get => self.alarm_members(req.alarm),
            // etcd 3.5 ignores raising NONE, and no NONE alarm can exist to be cleared: both
            // change nothing and so answer with no alarms (3.4 stored a NONE alarm instead).
            pb::alarm_request::AlarmAction::Activate
            | pb::alarm_request::AlarmAction::Deactivate
                if req.alarm == pb::AlarmType::None as i32 =>
            {
                Vec::new()
            }
            pb::alarm_request::AlarmAction::Activate
            | pb::alarm_request::AlarmAction::Deactivate => {
                let activate = action == pb::alarm_request::AlarmAction::Activate;
                let existed = self
                    .ctx
                    .raft
                    .state()
                    .alarms()
                    .contains(&(req.member_id, req.alarm));
                let cmd = Command::Alarm {
                    activate,
                    member: req.member_id,
                    alarm: req.alarm,
                };
                self.ctx
                    .raft
                    .propose(cmd, 32)
                    .await
                    .map_err(ServerError::from)?;
                // etcd answers with the alarms the request changed.
                if activate != existed {
                    vec![pb::AlarmMember {
                        member_id: req.member_id,
                        alarm: req.alarm,
                    }]
                } else {
                    Vec::new()
                }
            }
        };
        Ok(Response::new(pb::AlarmResponse {
            header: self.ctx.header(self.ctx.raft.state().current_revision()),
            alarms,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn defragment(
        &self,
        req: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        self.ctx.require_admin_untranslated(&req).await?;
        // This member only, as etcd's defrag: the store's database is rewritten compactly and
        // swapped in, giving what compaction freed back to the file system.
        self.ctx
            .raft
            .state()
            .defragment()
            .await
            .map_err(|e| ServerError::Internal(e.to_string()))?;
        // etcd (3.4 to 3.6) answers Defragment and MoveLeader without a header.
        Ok(Response::new(pb::DefragmentResponse { header: None }))
    }

    async fn hash(
        &self,
        req: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        self.ctx.require_admin_untranslated(&req).await?;
        let (hash, revision) = self
            .ctx
            .raft
            .state()
            .hash()
            .await
            .map_err(ServerError::from)?;
        Ok(Response::new(pb::HashResponse {
            header: self.ctx.header(revision),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        req: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        self.ctx.require_admin_untranslated(&req).await?;
        let (hash, compact_revision, revision) = self
            .ctx
            .raft
            .state()
            .hash_kv(req.into_inner().revision)
            .await
            .map_err(ServerError::from)?;
        Ok(Response::new(pb::HashKvResponse {
            header: self.ctx.header(revision),
            hash,
            compact_revision,
        }))
    }

    /// A consistent copy of the store in etcd's snapshot format (a bbolt database, then its
    /// SHA-256), so etcd's own tools and `etcd` itself take it; see `storage::etcd_snapshot`.
    #[tracing::instrument(skip_all)]
    async fn snapshot(
        &self,
        req: Request<pb::SnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        self.ctx.require_admin_untranslated(&req).await?;
        let (revision, size, chunks) = self
            .ctx
            .raft
            .state()
            .backup(SNAPSHOT_CHUNK)
            .await
            .map_err(ServerError::from)?;
        tracing::info!(bytes = size, revision, "sending snapshot");
        let header = self.ctx.header(revision);
        // `sent` is None once the stream has failed: nothing follows an error.
        let messages =
            futures::stream::unfold((chunks, Some(0u64)), move |(mut chunks, sent)| async move {
                let sent = sent?;
                let failure = match chunks.recv().await {
                    Some(Ok(blob)) => {
                        let sent = sent + blob.len() as u64;
                        let message = pb::SnapshotResponse {
                            header,
                            remaining_bytes: size.saturating_sub(sent),
                            blob,
                        };
                        return Some((Ok(message), (chunks, Some(sent))));
                    }
                    Some(Err(e)) => Status::internal(format!("snapshot: {e}")),
                    None if sent >= size => return None,
                    None => Status::internal("snapshot: the copy ended early"),
                };
                Some((Err(failure), (chunks, None)))
            });
        Ok(Response::new(Box::pin(messages)))
    }

    #[tracing::instrument(skip_all, fields(target = format!("{:x}", req.get_ref().target_id)))]
    async fn move_leader(
        &self,
        req: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        // etcd serves MoveLeader on the leader only; etcdctl finds the leader first.
        if self.ctx.raft.leader() != Some(self.ctx.member_id) {
            return Err(Status::failed_precondition("etcdserver: not leader"));
        }
        self.ctx
            .raft
            .admin(AdminCall::MoveLeader(req.into_inner().target_id))
            .await
            .map_err(ServerError::from)?;
        Ok(Response::new(pb::MoveLeaderResponse { header: None }))
    }
}
