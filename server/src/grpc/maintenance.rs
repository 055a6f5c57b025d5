//! The `Maintenance` service. Status is served; the rest answer Unimplemented for now.

use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::maintenance_server::Maintenance;
use tonic::{Request, Response, Status};

use super::ServerContext;

/// The etcd API version Cairn reports in Status. Clients (Kubernetes among them) gate features on it.
pub const ETCD_API_VERSION: &str = "3.5.13";

pub(crate) struct MaintenanceService {
    pub ctx: ServerContext,
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let raft = &self.ctx.raft;
        let metrics = raft.raft().metrics().borrow().clone();
        let state = raft.state();
        let db_size = state.backend_size() as i64;
        let is_learner = !metrics
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == self.ctx.member_id);
        Ok(Response::new(pb::StatusResponse {
            header: self.ctx.header(state.current_revision()),
            version: ETCD_API_VERSION.to_string(),
            db_size,
            leader: metrics.current_leader.unwrap_or(0),
            raft_index: metrics.last_log_index.unwrap_or(0),
            raft_term: metrics.current_term,
            raft_applied_index: metrics.last_applied.map(|l| l.index).unwrap_or(0),
            errors: Vec::new(),
            db_size_in_use: db_size,
            is_learner,
        }))
    }
}
