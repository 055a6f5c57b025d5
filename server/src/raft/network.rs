//! Outgoing peer traffic: openraft's RPCs plus write forwarding and read-index requests, over one
//! long-lived HTTP/2 connection per peer (a tonic channel multiplexes every RPC on it).
//!
//! Must never import `grpc/` or `storage/`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_proto::raftpb::raft_transport_client::RaftTransportClient;
use cairn_proto::raftpb::RaftPayload;
use openraft::error::{NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};
use openraft_legacy::network_v1::{
    Adapter, InstallSnapshotError, InstallSnapshotRequest, InstallSnapshotResponse, RaftNetwork,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use super::types::{Member, NodeId, SnapshotData, TypeConfig};
use crate::codec::{decode, encode};
use crate::tls::PeerDialTls;

/// Largest message on the peer transport: a batch of log entries, each up to the request limit.
pub(crate) const PEER_MAX_MESSAGE: usize = 512 * 1024 * 1024;

/// Channels to peers by URL, shared by replication, forwarding and read-index requests.
#[derive(Clone, Default)]
pub struct PeerChannels {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// How `https://` peer URLs are dialed; without it they fail to connect (never plaintext).
    tls: Option<PeerDialTls>,
    /// Each member's peer URL in the latest membership. Replication to a member outlives a change
    /// of its URL (openraft keeps the stream), so every call looks its address up here.
    addresses: Arc<Mutex<HashMap<NodeId, String>>>,
}

impl PeerChannels {
    pub(crate) fn new(tls: Option<PeerDialTls>) -> PeerChannels {
        PeerChannels {
            channels: Arc::default(),
            tls,
            addresses: Arc::default(),
        }
    }

    /// Records the members' peer URLs from a new membership.
    pub(crate) fn set_addresses<'a>(
        &self,
        members: impl Iterator<Item = (&'a NodeId, &'a Member)>,
    ) {
        let addresses = members
            .filter_map(|(id, m)| Some((*id, m.peer_urls.first()?.clone())))
            .collect();
        *self.addresses.lock().unwrap_or_else(|p| p.into_inner()) = addresses;
    }

    fn address(&self, id: NodeId) -> Option<String> {
        self.addresses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    pub(crate) fn client(
        &self,
        url: &str,
    ) -> Result<RaftTransportClient<Channel>, tonic::transport::Error> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match channels.get(url) {
            Some(c) => c.clone(),
            None => {
                let endpoint = |url: String| {
                    Ok::<_, tonic::transport::Error>(
                        Endpoint::from_shared(url)?
                            .connect_timeout(Duration::from_secs(1))
                            .tcp_nodelay(true)
                            .http2_keep_alive_interval(Duration::from_secs(5))
                            .keep_alive_while_idle(true),
                    )
                };
                let c = match (&self.tls, crate::config::is_https(url)) {
                    (Some(tls), true) => tls.channel(url, endpoint)?,
                    // Plaintext (or https:// with no TLS configured, which then fails to
                    // connect rather than speak plaintext).
                    _ => endpoint(url.to_string())?.connect_lazy(),
                };
                channels.insert(url.to_string(), c.clone());
                c
            }
        };
        Ok(RaftTransportClient::new(channel)
            .max_decoding_message_size(PEER_MAX_MESSAGE)
            .max_encoding_message_size(PEER_MAX_MESSAGE))
    }
}

/// Builds a [`PeerClient`] per replication target.
#[derive(Clone)]
pub struct Network {
    pub(crate) channels: PeerChannels,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    /// Snapshots go in chunks, as the peer protocol has always sent them.
    type Network = Adapter<TypeConfig, PeerClient, SnapshotData>;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Self::Network {
        let url = node.peer_urls.first().cloned().unwrap_or_default();
        PeerClient {
            target,
            client: self.channels.client(&url).map_err(|e| e.to_string()),
            url,
            channels: self.channels.clone(),
        }
        .into_v2()
    }
}

pub struct PeerClient {
    target: NodeId,
    url: String,
    client: Result<RaftTransportClient<Channel>, String>,
    channels: PeerChannels,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

type RpcResult<T, E> = Result<T, RPCError<TypeConfig, RaftError<TypeConfig, E>>>;

impl PeerClient {
    async fn call<Req, Resp, E>(
        &mut self,
        kind: RpcKind,
        req: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        if let Some(url) = self.channels.address(self.target) {
            if url != self.url {
                self.client = self.channels.client(&url).map_err(|e| e.to_string());
                self.url = url;
            }
        }
        let client = match &mut self.client {
            Ok(c) => c,
            Err(e) => {
                return Err(RPCError::Unreachable(Unreachable::new(&TransportError(
                    e.clone(),
                ))))
            }
        };
        let data = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = tonic::Request::new(RaftPayload { data });
        request.set_timeout(option.hard_ttl());
        let reply = match kind {
            RpcKind::Append => client.append_entries(request).await,
            RpcKind::Vote => client.vote(request).await,
            RpcKind::Snapshot => client.install_snapshot(request).await,
        };
        let reply = reply.map_err(|status| match status.code() {
            tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&status)),
            _ => RPCError::Network(NetworkError::new(&status)),
        })?;
        let result: Result<Resp, RaftError<TypeConfig, E>> = decode(&reply.into_inner().data)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

enum RpcKind {
    Append,
    Vote,
    Snapshot,
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<TypeConfig>, openraft::error::Infallible> {
        self.call(RpcKind::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<TypeConfig>, InstallSnapshotError> {
        self.call(RpcKind::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<TypeConfig>, openraft::error::Infallible> {
        self.call(RpcKind::Vote, &rpc, &option).await
    }

    /// Retries an unreachable peer after 50 ms, doubling up to 1 s: a member that was just added
    /// (or restarted) is reached soon after it starts listening, and a dead one is not hammered.
    fn backoff(&self) -> Backoff {
        Backoff::new(
            std::iter::successors(Some(Duration::from_millis(50)), |d| Some(*d * 2))
                .map(|d| d.min(Duration::from_secs(1))),
        )
    }
}
