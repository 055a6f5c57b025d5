//! One typed client for the calls Cairn adds beside Raft's own between members: forwarding a
//! proposal to the leader, asking it for a read index, lease calls only the leader's clock can
//! answer, and membership (admin) calls. Each call encodes its request, sends it with a timeout and
//! decodes the typed answer; `service` serves them on the other side.
//!
//! Must never import `grpc/` or `storage/`.

use std::time::Duration;

use cairn_proto::raftpb::raft_transport_client::RaftTransportClient;
use cairn_proto::raftpb::RaftPayload;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;

use super::admin::{AdminCall, AdminError, AdminReply};
use super::network::PeerChannels;
use super::service::ForwardError;
use super::{LeaseCall, LeaseReply, ProposeError};
use crate::codec::{decode, encode};
use crate::command::{Command, CommandResponse};

/// Why a call got no answer from the member.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    #[error("{0}")]
    Connect(#[from] tonic::transport::Error),
    /// The call's timeout passed.
    #[error("{0}")]
    Timeout(tonic::Status),
    /// Any other failure of the transport: the member may or may not have acted on the call.
    #[error("{0}")]
    Status(tonic::Status),
    #[error("{0}")]
    Codec(String),
}

impl From<CallError> for ProposeError {
    fn from(e: CallError) -> ProposeError {
        match e {
            CallError::Timeout(_) => ProposeError::Timeout,
            CallError::Status(_) => ProposeError::LeaderChanged,
            CallError::Connect(e) => ProposeError::Internal(e.to_string()),
            CallError::Codec(m) => ProposeError::Internal(m),
        }
    }
}

/// A member's answer to an admin call: refused by the transport layer (not the leader) or served.
pub(crate) type AdminAnswer = Result<Result<AdminReply, AdminError>, ForwardError>;

/// The calls, typed, to one member.
pub(crate) struct PeerClient {
    client: RaftTransportClient<Channel>,
}

impl PeerClient {
    pub fn new(channels: &PeerChannels, url: &str) -> Result<PeerClient, CallError> {
        Ok(PeerClient {
            client: channels.client(url)?,
        })
    }

    pub async fn forward(
        &mut self,
        cmd: &Command,
        timeout: Duration,
    ) -> Result<Result<CommandResponse, ForwardError>, CallError> {
        self.call(Method::Forward, cmd, timeout).await
    }

    pub async fn read_index(
        &mut self,
        timeout: Duration,
    ) -> Result<Result<u64, ForwardError>, CallError> {
        self.call(Method::ReadIndex, &(), timeout).await
    }

    pub async fn lease(
        &mut self,
        call: &LeaseCall,
        timeout: Duration,
    ) -> Result<Result<LeaseReply, ForwardError>, CallError> {
        self.call(Method::Lease, call, timeout).await
    }

    pub async fn admin(
        &mut self,
        call: &AdminCall,
        timeout: Duration,
    ) -> Result<AdminAnswer, CallError> {
        self.call(Method::Admin, call, timeout).await
    }

    async fn call<Q: Serialize, A: DeserializeOwned>(
        &mut self,
        method: Method,
        request: &Q,
        timeout: Duration,
    ) -> Result<A, CallError> {
        let data = match method {
            // The read-index request carries nothing.
            Method::ReadIndex => Vec::new(),
            _ => encode(request).map_err(|e| CallError::Codec(e.to_string()))?,
        };
        let mut req = tonic::Request::new(RaftPayload { data });
        req.set_timeout(timeout);
        let client = &mut self.client;
        let reply = match method {
            Method::Forward => client.forward(req).await,
            Method::ReadIndex => client.read_index(req).await,
            Method::Lease => client.lease(req).await,
            Method::Admin => client.admin(req).await,
        };
        let data = match reply {
            Ok(r) => r.into_inner().data,
            Err(status) if status.code() == tonic::Code::DeadlineExceeded => {
                return Err(CallError::Timeout(status))
            }
            Err(status) => return Err(CallError::Status(status)),
        };
        decode(&data).map_err(|e| CallError::Codec(e.to_string()))
    }
}

enum Method {
    Forward,
    ReadIndex,
    Lease,
    Admin,
}
