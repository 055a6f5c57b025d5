//! Incoming peer traffic: the `RaftTransport` gRPC service.
//!
//! Must never import `grpc/` or `storage/`: it hands calls to Raft and the [`super::RaftHandle`].

use cairn_proto::raftpb::raft_transport_server::RaftTransport;
use cairn_proto::raftpb::RaftPayload;
use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::ReadPolicy;
use openraft_legacy::network_v1::{ChunkedSnapshotReceiver, InstallSnapshotRequest};
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

use super::types::{NodeId, Raft, TypeConfig};
use crate::codec::{decode, encode};
use crate::command::{Command, CommandResponse};

/// Why a leader did not serve a forwarded request.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub(crate) enum ForwardError {
    #[error("not the leader")]
    NotLeader(Option<NodeId>),
    /// The proposal may or may not have been committed (leadership was lost while it was pending).
    #[error("leader changed")]
    LeaderChanged,
    #[error("{0}")]
    Failed(String),
    /// The leader's own proposal failed this way.
    #[error(transparent)]
    Rejected(super::ProposeError),
}

pub(crate) fn forward_error(
    e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
) -> ForwardError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            ForwardError::NotLeader(f.leader_id)
        }
        RaftError::APIError(other) => ForwardError::Failed(other.to_string()),
        RaftError::Fatal(f) => ForwardError::Failed(f.to_string()),
    }
}

pub struct PeerService {
    pub(crate) raft: Raft,
    /// Forwarded commands join this member's own batches rather than becoming entries of their own.
    pub(crate) handle: super::RaftHandle,
}

fn bad_payload(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("undecodable peer message: {e}"))
}

fn reply<T: Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    let data = encode(value).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftPayload { data }))
}

#[tonic::async_trait]
impl RaftTransport for PeerService {
    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> =
            decode(&req.into_inner().data).map_err(bad_payload)?;
        reply(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc: VoteRequest<TypeConfig> = decode(&req.into_inner().data).map_err(bad_payload)?;
        reply(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> =
            decode(&req.into_inner().data).map_err(bad_payload)?;
        reply(&self.raft.install_snapshot(rpc).await)
    }

    async fn forward(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let req = req.into_inner();
        let cmd: Command = decode(&req.data).map_err(bad_payload)?;
        let result: Result<CommandResponse, ForwardError> = self
            .handle
            .propose(cmd, req.data.len())
            .await
            .map_err(ForwardError::Rejected);
        reply(&result)
    }

    async fn lease(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let call: super::LeaseCall = decode(&req.into_inner().data).map_err(bad_payload)?;
        reply(&self.handle.local_lease_call(call).await)
    }

    async fn admin(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let call: super::admin::AdminCall = decode(&req.into_inner().data).map_err(bad_payload)?;
        reply(&self.handle.local_admin(call).await)
    }

    async fn read_index(
        &self,
        _req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let result: Result<u64, ForwardError> =
            match self.raft.get_read_log_id(ReadPolicy::ReadIndex).await {
                Ok((read_log_id, _)) => Ok(read_log_id.log_id().index),
                Err(RaftError::APIError(e)) => match e {
                    openraft::error::LinearizableReadError::ForwardToLeader(f) => {
                        Err(ForwardError::NotLeader(f.leader_id))
                    }
                    other => Err(ForwardError::Failed(other.to_string())),
                },
                Err(RaftError::Fatal(f)) => Err(ForwardError::Failed(f.to_string())),
            };
        reply(&result)
    }
}
