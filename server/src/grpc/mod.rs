//! The etcd v3 client API: one file per service. Each handler validates, proposes or reads, fills
//! the response header and maps errors to etcd's statuses.

pub(crate) mod authority;
pub(crate) mod cluster;
pub(crate) mod convert;
pub(crate) mod election;
pub(crate) mod kv;
pub(crate) mod lease;
pub(crate) mod lock;
pub(crate) mod maintenance;
pub(crate) mod recipes;
pub(crate) mod watch;

use std::sync::Arc;

use cairn_proto::etcdserverpb::ResponseHeader;

use crate::raft::RaftHandle;

/// What every service handler needs.
#[derive(Clone)]
pub(crate) struct ServerContext {
    pub raft: RaftHandle,
    pub cluster_id: u64,
    pub member_id: u64,
    pub limits: Arc<Limits>,
    /// Ids for watch streams, including the private ones of the lock and election services.
    pub streams: Arc<std::sync::atomic::AtomicU64>,
}

pub(crate) struct Limits {
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    /// Shorter lease TTLs are raised to this (seconds): 1.5 election timeouts, as etcd.
    pub min_lease_ttl: i64,
    /// Space quota in bytes of stored key revisions; 0 = none.
    pub quota_bytes: u64,
}

impl ServerContext {
    pub fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.raft.term(),
        })
    }
}
