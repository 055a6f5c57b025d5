//! The `Cluster` service. MemberList is served; membership changes answer Unimplemented for now.

use std::collections::BTreeSet;

use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::cluster_server::Cluster;
use tonic::{Request, Response, Status};

use super::ServerContext;

pub(crate) struct ClusterService {
    pub ctx: ServerContext,
}

impl ClusterService {
    /// Every member in the current Raft membership, with the client URLs it published.
    pub(crate) fn members(ctx: &ServerContext) -> Vec<pb::Member> {
        let metrics = ctx.raft.raft().metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let state = ctx.raft.state();
        membership
            .nodes()
            .map(|(id, node)| {
                let (name, client_urls) = state
                    .member_attrs(*id)
                    .unwrap_or_else(|| (node.name.clone(), node.client_urls.clone()));
                pb::Member {
                    id: *id,
                    name,
                    peer_ur_ls: node.peer_urls.clone(),
                    client_ur_ls: client_urls,
                    is_learner: !voters.contains(id),
                }
            })
            .collect()
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_list(
        &self,
        _req: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        Ok(Response::new(pb::MemberListResponse {
            header: self.ctx.header(self.ctx.raft.state().current_revision()),
            members: Self::members(&self.ctx),
        }))
    }
}
