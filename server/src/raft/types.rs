//! The Raft type configuration: log entries carry a [`Command`], applying one returns a
//! [`CommandResponse`] (both in [`crate::command`]), and a member is described by a [`Member`].
//!
//! Must never import anything above `command` (but names the state machine type, whose
//! snapshots the Raft handle is typed by).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::command::{Command, CommandResponse};

/// Member ids are etcd-style 64-bit ids derived from the member's name and peer URLs.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Cairn's Raft types. Errors carry `AnyError` sources: they cross the peer transport, so
    /// they must serialize.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        Node = Member,
        ErrorSource = openraft::AnyError,
);

/// A snapshot travels and is installed as a file.
pub type SnapshotData = tokio::fs::File;
pub type Raft = openraft::Raft<TypeConfig, super::state_machine::StateMachineStore>;
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotData>;
pub type StorageError = openraft::StorageError<TypeConfig>;
pub type RaftMetrics = openraft::RaftMetrics<TypeConfig>;

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
