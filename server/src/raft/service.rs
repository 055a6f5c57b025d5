//! Incoming peer traffic: the `RaftTransport` gRPC service.
//!
//! Must never import `grpc/` or `storage/`: it hands calls to Raft and the [`super::RaftHandle`].

use cairn_proto::raftpb::raft_transport_server::RaftTransport;
use cairn_proto::raftpb::RaftPayload;
use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::ReadPolicy;
use openraft_legacy::network_v1::{ChunkedSnapshotReceiver, InstallSnapshotRequest};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status, Streaming};

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
    /// Set when the member stops: forward streams end then, since the peer server's graceful
    /// shutdown waits for every open stream, and a follower keeps its stream open for good.
    pub(crate) stop: tokio::sync::watch::Receiver<bool>,
}

fn bad_payload(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("undecodable peer message: {e}"))
}

fn reply<T: Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    let data = encode(value).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftPayload { data }))
}

type PayloadStream = Pin<Box<dyn Stream<Item = Result<RaftPayload, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl RaftTransport for PeerService {
    /// Each answer is openraft's stream result for the request at the same position. The stream
    /// ends after the first refused request (a conflict or a higher vote), as openraft's does; an
    /// undecodable request ends the input there, and its error follows the answers to the requests
    /// before it.
    async fn append_stream(
        &self,
        req: Request<Streaming<RaftPayload>>,
    ) -> Result<Response<PayloadStream>, Status> {
        let undecodable: Arc<Mutex<Option<Status>>> = Arc::default();
        let seen = undecodable.clone();
        let input = req.into_inner().scan((), move |_, item| {
            let rpc = match item {
                Ok(p) => match decode::<AppendEntriesRequest<TypeConfig>>(&p.data) {
                    Ok(rpc) => Some(rpc),
                    Err(e) => {
                        *seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(bad_payload(e));
                        None
                    }
                },
                // The leader reset the stream or went away: nothing more will be answered.
                Err(_) => None,
            };
            std::future::ready(rpc)
        });
        let answers = self.raft.stream_append(input).map(|r| match r {
            Ok(result) => reply(&result).map(Response::into_inner),
            Err(fatal) => Err(Status::unavailable(format!("consensus stopped: {fatal}"))),
        });
        let tail = futures::stream::once(async move {
            undecodable.lock().unwrap_or_else(|p| p.into_inner()).take()
        })
        .filter_map(|e| std::future::ready(e.map(Err)));
        Ok(Response::new(Box::pin(answers.chain(tail))))
    }

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

    /// Each request is `(id, command)`; each answer `(id, result)`, sent when that write
    /// completes, so answers may overtake one another. Writes are proposed as they arrive and join
    /// this member's batches like its own clients' writes. The stream of answers does the work
    /// itself (reading requests, waiting on their proposals), so a write costs no task of its own.
    /// An undecodable request ends the stream with its error; writes still pending then go
    /// unanswered, as on any broken stream.
    async fn forward_stream(
        &self,
        req: Request<Streaming<RaftPayload>>,
    ) -> Result<Response<PayloadStream>, Status> {
        struct Forwarding {
            input: Streaming<RaftPayload>,
            /// The follower closed its side (or went away): answer what is pending, then end.
            input_ended: bool,
            pending: FuturesUnordered<BoxFuture<'static, Result<RaftPayload, Status>>>,
            handle: super::RaftHandle,
            stop: tokio::sync::watch::Receiver<bool>,
        }
        let state = Forwarding {
            input: req.into_inner(),
            input_ended: false,
            pending: FuturesUnordered::new(),
            handle: self.handle.clone(),
            stop: self.stop.clone(),
        };
        let answers = futures::stream::unfold(state, |mut s| async move {
            loop {
                // On stop, writes still pending go unanswered: the follower takes them as
                // undetermined.
                if *s.stop.borrow() || (s.input_ended && s.pending.is_empty()) {
                    return None;
                }
                tokio::select! {
                    biased;
                    changed = s.stop.changed() => if changed.is_err() {
                        return None;
                    },
                    Some(answer) = s.pending.next(), if !s.pending.is_empty() => {
                        return Some((answer, s));
                    }
                    request = s.input.next(), if !s.input_ended => match request {
                        Some(Ok(p)) => match decode::<(u64, Command)>(&p.data) {
                            Ok((id, cmd)) => {
                                let (handle, bytes) = (s.handle.clone(), p.data.len());
                                s.pending.push(Box::pin(async move {
                                    let result: Result<CommandResponse, ForwardError> = handle
                                        .propose(cmd, bytes)
                                        .await
                                        .map_err(ForwardError::Rejected);
                                    encode(&(id, &result))
                                        .map(|data| RaftPayload { data })
                                        .map_err(|e| Status::internal(e.to_string()))
                                }));
                            }
                            Err(e) => {
                                s.input_ended = true;
                                s.pending = FuturesUnordered::new();
                                return Some((Err(bad_payload(e)), s));
                            }
                        },
                        _ => s.input_ended = true,
                    },
                }
            }
        });
        Ok(Response::new(Box::pin(answers)))
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
