//! The Raft type configuration: what a log entry carries (a [`Command`]), what applying it returns
//! (a [`CommandResponse`]), and how a member is described ([`Member`]).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::mvcc::{
    DeleteRangeRequest, DeleteRangeResponse, MvccError, PutRequest, PutResponse, RequestOp,
    TxnRequest, TxnResponse,
};

/// Member ids are etcd-style 64-bit ids derived from the member's name and peer URLs.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Cairn's Raft types.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        Node = Member,
        SnapshotData = tokio::fs::File,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;
pub type StorageError = openraft::StorageError<NodeId>;

/// How a member is known to the cluster: what `etcdctl member list` shows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    /// Added as a voter: it joins as a learner and the leader promotes it once it has caught up, so
    /// an added member that has not started yet never counts toward (and blocks) the quorum.
    pub promote: bool,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.peer_urls.join(","))
    }
}

/// A state-machine command: one entry in the replicated log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(i64),
    /// Creates a lease; the TTL is already clamped to the allowed range.
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    /// Deletes a lease and every key attached to it, in one revision.
    LeaseRevoke(i64),
    /// A member announces how clients reach it (etcd's "publish"): stored beside the membership.
    Publish {
        id: NodeId,
        name: String,
        client_urls: Vec<String>,
    },
    /// Raises (`activate`) or clears an alarm of a member; `alarm` is etcd's AlarmType number.
    Alarm {
        activate: bool,
        member: NodeId,
        alarm: i32,
    },
    /// Several client commands in one log entry, applied in order as if they were separate entries:
    /// each write still gets its own revision. Batching amortizes the per-entry cost of consensus
    /// and storage across concurrent clients.
    Batch(Vec<Command>),
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Put(p) => write!(f, "put({} bytes key)", p.key.len()),
            Command::DeleteRange(_) => f.write_str("delete_range"),
            Command::Txn(t) => write!(f, "txn({} compares)", t.compare.len()),
            Command::Compact(rev) => write!(f, "compact({rev})"),
            Command::Batch(cmds) => write!(f, "batch({})", cmds.len()),
            Command::LeaseGrant { id, ttl } => write!(f, "lease_grant({id:x}, {ttl}s)"),
            Command::LeaseRevoke(id) => write!(f, "lease_revoke({id:x})"),
            Command::Publish { id, .. } => write!(f, "publish({id:x})"),
            Command::Alarm {
                activate,
                member,
                alarm,
            } => write!(f, "alarm({member:x}, {alarm}, activate={activate})"),
        }
    }
}

/// The outcome of applying a [`Command`]. Expected failures (compacted, key not found) are values:
/// every member computes the same one, so they are part of the replicated result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResponse {
    /// The store revision after the command.
    pub revision: i64,
    pub result: Result<Applied, ApplyError>,
}

/// Deterministic failures of a command: part of the replicated result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Mvcc(#[from] MvccError),
    #[error("lease already exists")]
    LeaseExists,
    /// A write while the NOSPACE alarm is raised.
    #[error("database space exceeded")]
    NoSpace,
}

impl Command {
    /// Whether the command deletes stored revisions (a compaction, perhaps inside a batch).
    pub fn compacts(&self) -> bool {
        match self {
            Command::Compact(_) => true,
            Command::Batch(cmds) => cmds.iter().any(Command::compacts),
            _ => false,
        }
    }

    /// Whether the command adds data (and so is refused while the NOSPACE alarm is raised).
    /// Deletes, compactions and revokes free space and stay allowed, as in etcd.
    pub fn grows_store(&self) -> bool {
        fn txn_puts(t: &TxnRequest) -> bool {
            t.success.iter().chain(&t.failure).any(|op| match op {
                RequestOp::Put(_) => true,
                RequestOp::Txn(t) => txn_puts(t),
                _ => false,
            })
        }
        match self {
            Command::Put(_) | Command::LeaseGrant { .. } => true,
            Command::Txn(t) => txn_puts(t),
            Command::Batch(cmds) => cmds.iter().any(Command::grows_store),
            _ => false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact,
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    LeaseRevoke,
    /// One response per command of a [`Command::Batch`], in order.
    Batch(Vec<CommandResponse>),
    /// Blank and membership entries.
    Nothing,
}

/// bincode settings shared by the log, the snapshots and the peer transport.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::error::EncodeError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<T, bincode::error::DecodeError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard()).map(|(v, _)| v)
}
