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

/// Cairn's Raft types, spelled out rather than declared through openraft's macro, which cannot
/// name a responder of our own. Errors carry `AnyError` sources: they cross the peer transport,
/// so they must serialize.
#[derive(Debug, Clone, Copy, Default, Eq, PartialEq, Ord, PartialOrd)]
pub struct TypeConfig {}

impl openraft::RaftTypeConfig for TypeConfig {
    type D = Command;
    type R = CommandResponse;
    type NodeId = NodeId;
    type Node = Member;
    type Term = u64;
    type LeaderId = openraft::impls::leader_id_adv::LeaderId<Self::Term, Self::NodeId>;
    type Vote = openraft::impls::Vote<Self::LeaderId>;
    type Payload = openraft::EntryPayload<Self::D, Self::NodeId, Self::Node>;
    type Entry =
        openraft::Entry<<Self::LeaderId as openraft::vote::RaftLeaderId>::Committed, Self::Payload>;
    type AsyncRuntime = openraft::impls::TokioRuntime;
    type Responder<T>
        = Callback<T>
    where
        T: openraft::OptionalSend + 'static;
    type Batch<T>
        = openraft::impls::InlineBatch<T>
    where
        T: openraft::OptionalSend + 'static;
    type ErrorSource = openraft::AnyError;
}

/// Completes a client write by calling back into whoever proposed it, on the task that applied
/// (or refused) the entry: no task of the proposer's has to wait on a channel for it.
pub struct Callback<T>(Box<dyn FnOnce(T) + Send>);

impl<T> Callback<T> {
    pub fn new(f: impl FnOnce(T) + Send + 'static) -> Self {
        Callback(Box::new(f))
    }
}

impl<T: Send + 'static> openraft::raft::responder::Responder<TypeConfig, T> for Callback<T> {
    fn on_complete(self, result: T) {
        (self.0)(result)
    }
}

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
