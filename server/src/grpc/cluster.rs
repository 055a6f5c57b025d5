//! The `Cluster` service: member list and membership changes (carried out by the leader).

use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::cluster_server::Cluster;
use tonic::{Request, Response, Status};

use super::ServerContext;
use crate::error::ServerError;
use crate::raft::admin::{AdminCall, AdminReply, MemberInfo};

pub(crate) struct ClusterService {
    pub ctx: ServerContext,
}

fn to_pb(m: MemberInfo) -> pb::Member {
    pb::Member {
        id: m.id,
        name: m.name,
        peer_ur_ls: m.peer_urls,
        client_ur_ls: m.client_urls,
        is_learner: m.is_learner,
    }
}

impl ClusterService {
    /// Every member in the current Raft membership, with the client URLs it published.
    pub(crate) fn members(ctx: &ServerContext) -> Vec<pb::Member> {
        ctx.raft.members().into_iter().map(to_pb).collect()
    }

    async fn change(&self, call: AdminCall) -> Result<AdminReply, Status> {
        self.ctx
            .raft
            .admin(call)
            .await
            .map_err(|e| ServerError::from(e).into())
    }

    fn header(&self) -> Option<pb::ResponseHeader> {
        self.ctx.header(self.ctx.raft.state().current_revision())
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    #[tracing::instrument(skip_all, fields(peer_urls = ?req.get_ref().peer_ur_ls))]
    async fn member_add(
        &self,
        req: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        self.ctx.require_admin(&req).await?;
        let req = req.into_inner();
        let reply = self
            .change(AdminCall::Add {
                peer_urls: req.peer_ur_ls,
                learner: req.is_learner,
            })
            .await?;
        let AdminReply::Added(member) = reply else {
            return Err(Status::internal("unexpected reply to a member add"));
        };
        let mut members = Self::members(&self.ctx);
        // This member may not have applied the change yet; the list must include the new member.
        if !members.iter().any(|m| m.id == member.id) {
            members.push(to_pb(member.clone()));
        }
        Ok(Response::new(pb::MemberAddResponse {
            header: self.header(),
            member: Some(to_pb(member)),
            members,
        }))
    }

    #[tracing::instrument(skip_all, fields(id = format!("{:x}", req.get_ref().id)))]
    async fn member_remove(
        &self,
        req: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        self.ctx.require_admin(&req).await?;
        let id = req.into_inner().id;
        self.change(AdminCall::Remove(id)).await?;
        let members = Self::members(&self.ctx)
            .into_iter()
            .filter(|m| m.id != id)
            .collect();
        Ok(Response::new(pb::MemberRemoveResponse {
            header: self.header(),
            members,
        }))
    }

    #[tracing::instrument(skip_all, fields(id = format!("{:x}", req.get_ref().id)))]
    async fn member_update(
        &self,
        req: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        self.ctx.require_admin(&req).await?;
        let req = req.into_inner();
        self.change(AdminCall::Update {
            id: req.id,
            peer_urls: req.peer_ur_ls,
        })
        .await?;
        Ok(Response::new(pb::MemberUpdateResponse {
            header: self.header(),
            members: Self::members(&self.ctx),
        }))
    }

    async fn member_list(
        &self,
        req: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        if req.get_ref().linearizable {
            self.ctx
                .raft
                .read_index()
                .await
                .map_err(ServerError::from)?;
        }
        Ok(Response::new(pb::MemberListResponse {
            header: self.header(),
            members: Self::members(&self.ctx),
        }))
    }

    #[tracing::instrument(skip_all, fields(id = format!("{:x}", req.get_ref().id)))]
    async fn member_promote(
        &self,
        req: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        self.ctx.require_admin(&req).await?;
        self.change(AdminCall::Promote(req.into_inner().id)).await?;
        Ok(Response::new(pb::MemberPromoteResponse {
            header: self.header(),
            members: Self::members(&self.ctx),
        }))
    }
}
