//! The etcd v3 client API: one file per service. Each handler validates, proposes or reads, fills
//! the response header and maps errors to etcd's statuses.
//!
//! The top of the server: it may use `raft` (propose, read index, membership), `storage` (local
//! reads), `mvcc`, `watch` and `lease`; nothing below may import it. Protobuf types stay here.

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

use crate::command::{Command, ALARM_NOSPACE};
use crate::error::ServerError;
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

    /// Refuses a write that would grow the store while the space quota is exhausted, raising the
    /// NOSPACE alarm (through Raft, for every member to see) the first time the quota is passed.
    pub async fn check_quota(&self, cost: usize) -> Result<(), ServerError> {
        let state = self.raft.state();
        if state.has_alarm(ALARM_NOSPACE) {
            return Err(ServerError::NoSpace);
        }
        let quota = self.limits.quota_bytes;
        if quota > 0 && state.bytes_in_use() + cost as u64 > quota {
            tracing::warn!(
                quota,
                in_use = state.bytes_in_use(),
                "space quota exceeded; raising the NOSPACE alarm"
            );
            let cmd = Command::Alarm {
                activate: true,
                member: self.member_id,
                alarm: ALARM_NOSPACE,
            };
            self.raft.propose(cmd, 32).await?;
            return Err(ServerError::NoSpace);
        }
        Ok(())
    }
}
