//! The Raft type configuration: log entries carry a [`Command`], applying one returns a
//! [`CommandResponse`] (both in [`crate::command`]), and a member is described by a [`Member`].
//!
//! Must never import anything above `command`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::command::{Command, CommandResponse};

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
