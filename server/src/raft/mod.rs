//! Consensus: everything that names openraft lives under this module.
//!
//! [`RaftHandle`] is what the gRPC services use: `propose` a command (forwarded to the leader when this
//! member is a follower) and `read_index` before a linearizable read (the leader confirms its
//! leadership with a heartbeat round and names a log index; this member waits until it has applied it,
//! then serves the read from its own state).

pub mod log_store;
pub mod network;
pub mod service;
pub mod state_machine;
pub mod types;

use std::sync::Arc;
use std::time::Duration;

use cairn_proto::raftpb::RaftPayload;
use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::time::Instant;

use self::network::PeerChannels;
use self::service::{forward_error, ForwardError};
use self::state_machine::StoreState;
use self::types::{decode, encode, Command, CommandResponse, NodeId, Raft};

/// Why a proposal or read-index request did not complete. Display texts are etcd's.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProposeError {
    #[error("etcdserver: no leader")]
    NoLeader,
    /// The request may or may not have taken effect.
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: {0}")]
    Internal(String),
}

/// A member's handle on its Raft node and state machine.
#[derive(Clone)]
pub struct RaftHandle {
    pub raft: Raft,
    pub id: NodeId,
    pub(crate) channels: PeerChannels,
    pub state: Arc<StoreState>,
    pub request_timeout: Duration,
}

impl RaftHandle {
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Waits until some member is known to lead, or the deadline passes.
    async fn wait_leader(&self, deadline: Instant) -> Result<NodeId, ProposeError> {
        let mut rx = self.raft.metrics();
        let found =
            tokio::time::timeout_at(deadline, rx.wait_for(|m| m.current_leader.is_some())).await;
        match found {
            Ok(Ok(m)) => m.current_leader.ok_or(ProposeError::NoLeader),
            Ok(Err(_)) => Err(ProposeError::Internal("raft stopped".into())),
            Err(_) => Err(ProposeError::NoLeader),
        }
    }

    fn peer_url(&self, id: NodeId) -> Option<String> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.membership_config
            .membership()
            .get_node(&id)
            .and_then(|n| n.peer_urls.first().cloned())
    }

    async fn call_leader(
        &self,
        leader: NodeId,
        method: PeerMethod,
        data: Vec<u8>,
        deadline: Instant,
    ) -> Result<Vec<u8>, ProposeError> {
        let url = self.peer_url(leader).ok_or(ProposeError::NoLeader)?;
        let mut client = self
            .channels
            .client(&url)
            .map_err(|e| ProposeError::Internal(e.to_string()))?;
        let mut req = tonic::Request::new(RaftPayload { data });
        req.set_timeout(deadline.saturating_duration_since(Instant::now()));
        let reply = match method {
            PeerMethod::Forward => client.forward(req).await,
            PeerMethod::ReadIndex => client.read_index(req).await,
        };
        match reply {
            Ok(r) => Ok(r.into_inner().data),
            Err(status) if status.code() == tonic::Code::DeadlineExceeded => {
                Err(ProposeError::Timeout)
            }
            Err(_) => Err(ProposeError::LeaderChanged),
        }
    }

    /// Replicates and applies `cmd`, returning its result. A command this member cannot propose is
    /// handed to the leader. It is retried only when it certainly was not committed.
    #[tracing::instrument(level = "debug", skip_all, fields(cmd = %cmd))]
    pub async fn propose(&self, cmd: Command) -> Result<CommandResponse, ProposeError> {
        let deadline = Instant::now() + self.request_timeout;
        loop {
            let leader = self.wait_leader(deadline).await?;
            let outcome = if leader == self.id {
                match self.raft.client_write(cmd.clone()).await {
                    Ok(r) => return Ok(r.data),
                    Err(e) => forward_error(e),
                }
            } else {
                let data = encode(&cmd).map_err(|e| ProposeError::Internal(e.to_string()))?;
                let reply = self
                    .call_leader(leader, PeerMethod::Forward, data, deadline)
                    .await?;
                match decode::<Result<CommandResponse, ForwardError>>(&reply) {
                    Ok(Ok(r)) => return Ok(r),
                    Ok(Err(e)) => e,
                    Err(e) => return Err(ProposeError::Internal(e.to_string())),
                }
            };
            match outcome {
                // Not appended, or appended and then truncated: never committed, safe to retry.
                ForwardError::NotLeader(_) => self.backoff(deadline).await?,
                ForwardError::LeaderChanged => return Err(ProposeError::LeaderChanged),
                ForwardError::Failed(m) => return Err(ProposeError::Internal(m)),
            }
        }
    }

    /// Returns once this member's state machine reflects every write committed before the call.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn read_index(&self) -> Result<(), ProposeError> {
        let deadline = Instant::now() + self.request_timeout;
        loop {
            let leader = self.wait_leader(deadline).await?;
            let index = if leader == self.id {
                match self.raft.get_read_log_id().await {
                    Ok((read, _)) => Ok(read.map(|l| l.index)),
                    Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => Err(()),
                    Err(RaftError::APIError(e)) => {
                        return Err(ProposeError::Internal(e.to_string()))
                    }
                    Err(RaftError::Fatal(e)) => return Err(ProposeError::Internal(e.to_string())),
                }
            } else {
                let reply = self
                    .call_leader(leader, PeerMethod::ReadIndex, Vec::new(), deadline)
                    .await?;
                match decode::<Result<u64, ForwardError>>(&reply) {
                    Ok(Ok(i)) => Ok(Some(i)),
                    Ok(Err(ForwardError::NotLeader(_))) => Err(()),
                    Ok(Err(e)) => return Err(ProposeError::Internal(e.to_string())),
                    Err(e) => return Err(ProposeError::Internal(e.to_string())),
                }
            };
            match index {
                Ok(index) => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    return self
                        .raft
                        .wait(Some(remaining))
                        .applied_index_at_least(index, "read index")
                        .await
                        .map(|_| ())
                        .map_err(|_| ProposeError::Timeout);
                }
                Err(()) => self.backoff(deadline).await?,
            }
        }
    }

    async fn backoff(&self, deadline: Instant) -> Result<(), ProposeError> {
        if Instant::now() + Duration::from_millis(20) >= deadline {
            return Err(ProposeError::Timeout);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(())
    }
}

enum PeerMethod {
    Forward,
    ReadIndex,
}

#[cfg(test)]
mod storage_test;
