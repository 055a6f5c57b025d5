//! What a log entry carries ([`Command`]) and what applying it returns ([`CommandResponse`]).
//!
//! Owns the replicated vocabulary shared by the gRPC services, consensus and storage. It must never
//! import openraft, sled, tonic or any module above `mvcc` and `auth` (whose changes and errors it
//! carries): every layer speaks it, so it depends on none of them.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::auth::{AuthError, AuthOp};
use crate::mvcc::{
    DeleteRangeRequest, DeleteRangeResponse, MvccError, PutRequest, PutResponse, RequestOp,
    TxnRequest, TxnResponse,
};

/// etcd's AlarmType NOSPACE.
pub const ALARM_NOSPACE: i32 = 1;

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
        id: u64,
        name: String,
        client_urls: Vec<String>,
    },
    /// Raises (`activate`) or clears an alarm of a member; `alarm` is etcd's AlarmType number.
    Alarm {
        activate: bool,
        member: u64,
        alarm: i32,
    },
    /// Several client commands in one log entry, applied in order as if they were separate entries:
    /// each write still gets its own revision. Batching amortizes the per-entry cost of consensus
    /// and storage across concurrent clients.
    Batch(Vec<Command>),
    // Later variants go here, after the ones already on members' disks: bincode numbers
    // variants by position.
    /// A change of users, roles, permissions or the enabled flag, or an Authenticate.
    Auth(AuthOp),
    /// A client's command with the credentials it came with, checked at apply against the auth
    /// state of that moment (etcd's request header username and auth revision). Commands sent
    /// while auth is disabled, and the members' own (lease expiry, compaction, publish), travel
    /// without.
    Authed {
        user: String,
        revision: u64,
        cmd: Box<Command>,
    },
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Put(p) => write!(f, "put({} bytes key)", p.key.len()),
            Command::DeleteRange(_) => f.write_str("delete_range"),
            Command::Txn(t) => write!(f, "txn({} compares)", t.compare.len()),
            Command::Compact(rev) => write!(f, "compact({rev})"),
            Command::Batch(cmds) => write!(f, "batch({})", cmds.len()),
            Command::Auth(op) => write!(f, "auth({})", op.name()),
            Command::Authed { cmd, .. } => write!(f, "authed({cmd})"),
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
    #[error(transparent)]
    Auth(#[from] AuthError),
}

impl Command {
    /// How many client commands this carries (a batch, perhaps a follower's, counts its own).
    pub fn count(&self) -> usize {
        match self {
            Command::Batch(cmds) => cmds.iter().map(Command::count).sum(),
            _ => 1,
        }
    }

    /// Whether the command deletes stored revisions (a compaction, perhaps inside a batch).
    pub fn compacts(&self) -> bool {
        match self {
            Command::Compact(_) => true,
            Command::Batch(cmds) => cmds.iter().any(Command::compacts),
            Command::Authed { cmd, .. } => cmd.compacts(),
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
            Command::Authed { cmd, .. } => cmd.grows_store(),
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
    /// An auth change or Authenticate applied; the auth revision after it.
    Auth {
        revision: u64,
    },
    /// One response per command of a [`Command::Batch`], in order.
    Batch(Vec<CommandResponse>),
    /// Blank and membership entries.
    Nothing,
}
