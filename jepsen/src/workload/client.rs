//! The workloads' only door to the store: a small connection type with the operations they
//! need (get, put, guarded transactions, prefix reads, watches, leases, membership), speaking
//! etcd's v3 gRPC API to exactly one member so a fault is seen rather than retried elsewhere.
//!
//! Errors carry whether the request certainly did not take effect ([`ClientError::definite`]):
//! workloads record those as `fail` and every other error as `info`.

use std::time::Duration;

use cairn_proto::etcdserverpb::cluster_client::ClusterClient;
use cairn_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn_proto::etcdserverpb::kv_client::KvClient;
use cairn_proto::etcdserverpb::lease_client::LeaseClient;
use cairn_proto::etcdserverpb::request_op::Request;
use cairn_proto::etcdserverpb::watch_client::WatchClient;
use cairn_proto::etcdserverpb::watch_request::RequestUnion;
use cairn_proto::etcdserverpb::{
    Compare, LeaseGrantRequest, LeaseKeepAliveRequest, Member, MemberAddRequest, MemberListRequest,
    MemberRemoveRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, TxnResponse,
    WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// A failed request.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ClientError {
    pub code: tonic::Code,
    pub message: String,
    /// True when the request certainly had no effect.
    pub definite: bool,
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        use tonic::Code::*;
        let message = s.message().to_string();
        let refused =
            message.contains("onnection refused") || message.contains("tcp connect error");
        let definite = match s.code() {
            InvalidArgument | FailedPrecondition | NotFound | AlreadyExists | PermissionDenied
            | Unauthenticated | OutOfRange | Unimplemented => true,
            Unavailable => refused,
            _ => false,
        };
        ClientError {
            code: s.code(),
            message,
            definite,
        }
    }
}

/// A key-value pair as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: String,
    pub mod_revision: i64,
    pub lease: i64,
}

/// A connection to one member.
#[derive(Clone)]
pub struct Conn {
    channel: Channel,
}

/// A guarded write: compare each key's mod_revision, then put.
#[derive(Clone, Debug, Default)]
pub struct Guarded {
    pub mod_revisions: Vec<(String, i64)>,
    pub values: Vec<(String, String)>,
    pub puts: Vec<(String, String)>,
    pub reads: Vec<String>,
}

impl Conn {
    /// A lazily connected channel: connection failures surface per request.
    pub fn connect(url: &str, timeout: Duration) -> Conn {
        let channel = tonic::transport::Endpoint::from_shared(url.to_string())
            .expect("member URLs are valid")
            .connect_timeout(Duration::from_millis(500))
            .timeout(timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        Conn { channel }
    }

    /// Reads one key; `serializable` reads the member's local state without a quorum round.
    pub async fn get(
        &self,
        key: &str,
        serializable: bool,
    ) -> Result<(Option<Kv>, i64), ClientError> {
        let r = KvClient::new(self.channel.clone())
            .range(RangeRequest {
                key: key.as_bytes().to_vec(),
                serializable,
                ..Default::default()
            })
            .await?
            .into_inner();
        let rev = r.header.map(|h| h.revision).unwrap_or(0);
        Ok((r.kvs.into_iter().next().map(kv), rev))
    }

    /// Every key under `prefix`.
    pub async fn get_prefix(&self, prefix: &str) -> Result<(Vec<Kv>, i64), ClientError> {
        let r = KvClient::new(self.channel.clone())
            .range(RangeRequest {
                key: prefix.as_bytes().to_vec(),
                range_end: prefix_end(prefix),
                ..Default::default()
            })
            .await?
            .into_inner();
        let rev = r.header.map(|h| h.revision).unwrap_or(0);
        Ok((r.kvs.into_iter().map(kv).collect(), rev))
    }

    /// Puts `key`, optionally attached to a lease; returns the revision.
    pub async fn put(&self, key: &str, value: &str, lease: i64) -> Result<i64, ClientError> {
        let r = KvClient::new(self.channel.clone())
            .put(PutRequest {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
                lease,
                ..Default::default()
            })
            .await?
            .into_inner();
        Ok(r.header.map(|h| h.revision).unwrap_or(0))
    }

    /// A transaction: when every guard holds, the puts and then reads run; returns whether the
    /// guards held, the revision and (on success) the values read.
    pub async fn guarded(&self, g: &Guarded) -> Result<(bool, i64, Vec<Option<Kv>>), ClientError> {
        let mut compare: Vec<Compare> = g
            .mod_revisions
            .iter()
            .map(|(k, r)| Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Mod as i32,
                key: k.as_bytes().to_vec(),
                target_union: Some(TargetUnion::ModRevision(*r)),
                ..Default::default()
            })
            .collect();
        compare.extend(g.values.iter().map(|(k, v)| Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Value as i32,
            key: k.as_bytes().to_vec(),
            target_union: Some(TargetUnion::Value(v.as_bytes().to_vec())),
            ..Default::default()
        }));
        let mut success: Vec<RequestOp> = g
            .puts
            .iter()
            .map(|(k, v)| RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: k.as_bytes().to_vec(),
                    value: v.as_bytes().to_vec(),
                    ..Default::default()
                })),
            })
            .collect();
        success.extend(g.reads.iter().map(|k| RequestOp {
            request: Some(Request::RequestRange(RangeRequest {
                key: k.as_bytes().to_vec(),
                ..Default::default()
            })),
        }));
        let r: TxnResponse = KvClient::new(self.channel.clone())
            .txn(TxnRequest {
                compare,
                success,
                failure: vec![],
            })
            .await?
            .into_inner();
        let rev = r.header.map(|h| h.revision).unwrap_or(0);
        let reads = r
            .responses
            .into_iter()
            .filter_map(|op| match op.response {
                Some(cairn_proto::etcdserverpb::response_op::Response::ResponseRange(rr)) => {
                    Some(rr.kvs.into_iter().next().map(kv))
                }
                _ => None,
            })
            .collect();
        Ok((r.succeeded, rev, reads))
    }

    /// Grants a lease; returns (id, ttl).
    pub async fn lease_grant(&self, ttl: i64) -> Result<(i64, i64), ClientError> {
        let r = LeaseClient::new(self.channel.clone())
            .lease_grant(LeaseGrantRequest { ttl, id: 0 })
            .await?
            .into_inner();
        if !r.error.is_empty() {
            return Err(ClientError {
                code: tonic::Code::Unknown,
                message: r.error,
                definite: false,
            });
        }
        Ok((r.id, r.ttl))
    }

    /// One keep-alive round on a fresh stream; returns the TTL (<= 0: the lease is gone).
    pub async fn lease_keep_alive(&self, id: i64) -> Result<i64, ClientError> {
        let (tx, rx) = mpsc::channel(1);
        tx.send(LeaseKeepAliveRequest { id })
            .await
            .map_err(|_| ClientError {
                code: tonic::Code::Internal,
                message: "keep-alive channel closed".into(),
                definite: true,
            })?;
        let mut stream = LeaseClient::new(self.channel.clone())
            .lease_keep_alive(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let r = stream.message().await?.ok_or_else(|| ClientError {
            code: tonic::Code::Unavailable,
            message: "keep-alive stream ended".into(),
            definite: false,
        })?;
        drop(tx);
        Ok(r.ttl)
    }

    /// Opens a watch on `prefix` from revision `from`.
    pub async fn watch(
        &self,
        prefix: &str,
        from: i64,
        prev_kv: bool,
    ) -> Result<Watch, ClientError> {
        let (tx, rx) = mpsc::channel(16);
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: prefix.as_bytes().to_vec(),
                range_end: prefix_end(prefix),
                start_revision: from,
                prev_kv,
                progress_notify: true,
                ..Default::default()
            })),
        };
        let _ = tx.send(create).await;
        // The stream itself has no deadline; only its setup is bounded.
        let mut client = WatchClient::new(self.channel.clone());
        let stream = tokio::time::timeout(
            Duration::from_secs(5),
            client.watch(ReceiverStream::new(rx)),
        )
        .await
        .map_err(|_| ClientError {
            code: tonic::Code::DeadlineExceeded,
            message: "watch setup timed out".into(),
            definite: true,
        })??
        .into_inner();
        Ok(Watch { tx, stream })
    }

    /// The cluster's members.
    pub async fn member_list(&self) -> Result<Vec<Member>, ClientError> {
        Ok(ClusterClient::new(self.channel.clone())
            .member_list(MemberListRequest::default())
            .await?
            .into_inner()
            .members)
    }

    /// Removes a member.
    pub async fn member_remove(&self, id: u64) -> Result<(), ClientError> {
        ClusterClient::new(self.channel.clone())
            .member_remove(MemberRemoveRequest { id })
            .await?;
        Ok(())
    }

    /// Adds a member with the given peer URL; returns its id.
    pub async fn member_add(&self, peer_url: &str) -> Result<u64, ClientError> {
        let r = ClusterClient::new(self.channel.clone())
            .member_add(MemberAddRequest {
                peer_ur_ls: vec![peer_url.to_string()],
                is_learner: false,
            })
            .await?
            .into_inner();
        Ok(r.member.map(|m| m.id).unwrap_or(0))
    }
}

/// An open watch stream.
pub struct Watch {
    tx: mpsc::Sender<WatchRequest>,
    stream: tonic::Streaming<WatchResponse>,
}

impl Watch {
    /// The next response; `None` when the stream ended.
    pub async fn next(&mut self) -> Result<Option<WatchResponse>, ClientError> {
        Ok(self.stream.message().await?)
    }

    /// Asks for a progress notification.
    pub async fn request_progress(&self) {
        let _ = self
            .tx
            .send(WatchRequest {
                request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
            })
            .await;
    }
}

fn kv(k: cairn_proto::mvccpb::KeyValue) -> Kv {
    Kv {
        key: String::from_utf8_lossy(&k.key).into_owned(),
        value: String::from_utf8_lossy(&k.value).into_owned(),
        mod_revision: k.mod_revision,
        lease: k.lease,
    }
}

/// The end of the range covering every key with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
