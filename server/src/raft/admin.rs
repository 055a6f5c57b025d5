//! Membership changes, carried out by the leader through openraft's joint consensus.
//!
//! etcd's single-step configuration changes let a voter be added before it runs; under joint
//! consensus that would stall every write until the new member caught up. So a member added as a
//! voter joins as a learner marked `promote`, and the leader promotes it as soon as its log has caught
//! up ([`promote_loop`]). A member added as a learner waits for an explicit MemberPromote, which is
//! refused until it is in sync, as etcd refuses.
//!
//! Must never import `grpc/` or `storage/`; ids come from `members`.

use openraft::async_runtime::WatchReceiver;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};

use super::types::{Member, NodeId, Raft};
use super::Core;

/// A member as MemberList reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub id: NodeId,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

/// A request only the leader can serve (except `Members`, which any member answers).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum AdminCall {
    Members,
    Add {
        peer_urls: Vec<String>,
        learner: bool,
    },
    Promote(NodeId),
    Remove(NodeId),
    Update {
        id: NodeId,
        peer_urls: Vec<String>,
    },
    /// Hands leadership to this voter (etcd's MoveLeader).
    MoveLeader(NodeId),
    /// Sent by a leader handing over: stand for election now.
    Campaign,
    /// Sent by a leader handing over: do not start elections of your own for this many
    /// milliseconds, so that the chosen member is the one that wins.
    HoldElections(u64),
    /// Sent by the leader to a member it just removed: a removed follower stops hearing from the
    /// cluster and would not learn of its removal otherwise.
    Removed(NodeId),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
/// What a served [`AdminCall`] returns.
pub enum AdminReply {
    Members {
        cluster_id: u64,
        members: Vec<MemberInfo>,
    },
    Added(MemberInfo),
    Done,
}

/// Why a membership change was refused. Display texts are etcd's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AdminError {
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    #[error("etcdserver: given member URLs are invalid")]
    BadUrls,
    #[error("etcdserver: can only promote a learner member")]
    NotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStarted,
    #[error("etcdserver: {0}")]
    Failed(String),
    #[error("etcdserver: leadership transfer failed")]
    TransferFailed,
}

/// Every member of `raft`'s current membership, with the attributes each published.
pub(super) fn members(core: &Core) -> Vec<MemberInfo> {
    let metrics = core.raft.metrics().borrow_watched().clone();
    let membership = metrics.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    membership
        .nodes()
        .map(|(id, node)| {
            let (name, client_urls) = core
                .state
                .member_attrs(*id)
                .unwrap_or_else(|| (node.name.clone(), node.client_urls.clone()));
            MemberInfo {
                id: *id,
                name,
                peer_urls: node.peer_urls.clone(),
                client_urls,
                // A member added as a voter is one, as far as the operator is concerned, even while
                // it catches up as a learner.
                is_learner: !voters.contains(id) && !node.promote,
            }
        })
        .collect()
}

fn failed(e: impl std::fmt::Display) -> AdminError {
    AdminError::Failed(e.to_string())
}

fn valid_urls(urls: &[String]) -> bool {
    !urls.is_empty() && urls.iter().all(|u| crate::members::parse_url(u).is_ok())
}

/// A fresh member id: etcd derives it from the peer URLs and the time of the request, so re-adding
/// a member under the same URLs gets a new id.
fn new_member_id(peer_urls: &[String], token: &str) -> NodeId {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    crate::members::member_id(&format!("{now}"), peer_urls, token)
}

/// How far behind the leader's log a learner may be and still be promoted (etcd: 90% of it).
fn in_sync(raft: &Raft, id: NodeId) -> bool {
    let m = raft.metrics().borrow_watched().clone();
    let last = m.last_log_index.unwrap_or(0);
    let matched = m
        .replication
        .as_ref()
        .and_then(|r| r.get(&id).cloned().flatten())
        .map(|l| l.index);
    matches!(matched, Some(i) if i as f64 >= last as f64 * 0.9)
}

/// Serves `call` as the leader.
pub(super) async fn execute(core: &Core, call: AdminCall) -> Result<AdminReply, AdminError> {
    let raft = &core.raft;
    let metrics = raft.metrics().borrow_watched().clone();
    let membership = metrics.membership_config.membership().clone();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let nodes: BTreeMap<NodeId, Member> =
        membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
    match call {
        AdminCall::Members => Ok(AdminReply::Members {
            cluster_id: core.cluster_id,
            members: members(core),
        }),
        AdminCall::Add { peer_urls, learner } => {
            if !valid_urls(&peer_urls) {
                return Err(AdminError::BadUrls);
            }
            if nodes
                .values()
                .any(|n| n.peer_urls.iter().any(|u| peer_urls.contains(u)))
            {
                return Err(AdminError::PeerUrlExists);
            }
            let id = new_member_id(&peer_urls, &core.cluster_token);
            let member = Member {
                name: String::new(),
                peer_urls: peer_urls.clone(),
                client_urls: Vec::new(),
                promote: !learner,
            };
            raft.add_learner(id, member, false).await.map_err(failed)?;
            Ok(AdminReply::Added(MemberInfo {
                id,
                name: String::new(),
                peer_urls,
                client_urls: Vec::new(),
                is_learner: learner,
            }))
        }
        AdminCall::Promote(id) => {
            if !nodes.contains_key(&id) {
                return Err(AdminError::MemberNotFound);
            }
            if voters.contains(&id) {
                return Err(AdminError::NotLearner);
            }
            if !in_sync(raft, id) {
                return Err(AdminError::LearnerNotReady);
            }
            raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
                .await
                .map_err(failed)?;
            Ok(AdminReply::Done)
        }
        AdminCall::Remove(id) => {
            if !nodes.contains_key(&id) {
                return Err(AdminError::MemberNotFound);
            }
            let change = if voters.contains(&id) {
                if voters.len() == 1 {
                    return Err(AdminError::NotEnoughStarted);
                }
                ChangeMembers::RemoveVoters(BTreeSet::from([id]))
            } else {
                ChangeMembers::RemoveNodes(BTreeSet::from([id]))
            };
            raft.change_membership(change, false)
                .await
                .map_err(failed)?;
            if id != core.id {
                // Best effort: a member that is down learns nothing, and only serves stale reads
                // until it is stopped.
                if let Err(e) = core
                    .call_member_at(&nodes[&id], AdminCall::Removed(id))
                    .await
                {
                    tracing::info!(member = format!("{id:x}"), error = %e, "telling a removed member");
                }
            }
            Ok(AdminReply::Done)
        }
        AdminCall::MoveLeader(target) => {
            if !nodes.contains_key(&target) {
                return Err(AdminError::MemberNotFound);
            }
            if !voters.contains(&target) {
                return Err(AdminError::Failed(
                    "leadership can only move to a voting member".into(),
                ));
            }
            if target == core.id {
                return Ok(AdminReply::Done);
            }
            move_leader(core, target, &voters).await?;
            Ok(AdminReply::Done)
        }
        AdminCall::Removed(id) => {
            if id == core.id && !core.removed.send_replace(true) {
                tracing::warn!("this member has been removed from the cluster");
            }
            Ok(AdminReply::Done)
        }
        AdminCall::Campaign => {
            raft.trigger().elect(false).await.map_err(failed)?;
            Ok(AdminReply::Done)
        }
        AdminCall::HoldElections(ms) => {
            raft.runtime_config().elect(false);
            let raft = raft.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                raft.runtime_config().elect(true);
            });
            Ok(AdminReply::Done)
        }
        AdminCall::Update { id, peer_urls } => {
            if !valid_urls(&peer_urls) {
                return Err(AdminError::BadUrls);
            }
            let Some(current) = nodes.get(&id) else {
                return Err(AdminError::MemberNotFound);
            };
            if nodes
                .iter()
                .any(|(other, n)| *other != id && n.peer_urls.iter().any(|u| peer_urls.contains(u)))
            {
                return Err(AdminError::PeerUrlExists);
            }
            let member = Member {
                peer_urls,
                ..current.clone()
            };
            raft.change_membership(
                ChangeMembers::SetNodes(BTreeMap::from([(id, member)])),
                true,
            )
            .await
            .map_err(failed)?;
            Ok(AdminReply::Done)
        }
    }
}

/// Hands leadership from this member (the leader) to `target`.
///
/// The peer protocol does not carry openraft's leadership-transfer message, and followers refuse to
/// vote while their leader lease (the longest election timeout) runs. So the leader goes quiet: it
/// holds back new proposals until `target` has its whole log, then its heartbeats too until every
/// follower's lease has run out; the other followers hold their own elections back, and `target`
/// stands for election and wins. Writes wait (they are not refused) for the two or so election
/// timeouts this takes.
async fn move_leader(
    core: &Core,
    target: NodeId,
    voters: &BTreeSet<NodeId>,
) -> Result<(), AdminError> {
    let raft = &core.raft;
    let election_max = Duration::from_millis(raft.config().election_timeout_max);
    let deadline = tokio::time::Instant::now() + 4 * election_max;
    // New writes wait from here on, so the log stops growing and the target can catch up with it
    // (under steady load the leader's last entry is always one the target has not answered yet).
    core.hold_proposals(true);
    // The target must hold every entry the leader has, or it cannot win.
    loop {
        let m = raft.metrics().borrow_watched().clone();
        let last = m.last_log_index;
        let matched = m
            .replication
            .as_ref()
            .and_then(|r| r.get(&target).cloned().flatten())
            .map(|l| l.index);
        if matched.is_some() && matched == last {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            core.hold_proposals(false);
            return Err(AdminError::TransferFailed);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hold = (3 * election_max).as_millis() as u64;
    for id in voters.iter().filter(|id| **id != target && **id != core.id) {
        // A follower that misses this may win the election itself: leadership still moves.
        if let Err(e) = core.call_member(*id, AdminCall::HoldElections(hold)).await {
            tracing::debug!(member = format!("{id:x}"), error = %e, "holding elections back");
        }
    }
    raft.runtime_config().heartbeat(false);
    tokio::time::sleep(election_max + Duration::from_millis(200)).await;
    let campaign = core.call_member(target, AdminCall::Campaign).await;
    let moved = match campaign {
        Ok(_) => {
            let mut rx = raft.metrics();
            tokio::time::timeout(
                2 * election_max,
                rx.wait_until(|m| m.current_leader.is_some() && m.current_leader != Some(core.id)),
            )
            .await
            .is_ok_and(|r| r.is_ok())
        }
        Err(e) => {
            tracing::warn!(error = %e, "asking the new leader to campaign");
            false
        }
    };
    raft.runtime_config().heartbeat(true);
    core.hold_proposals(false);
    if moved {
        tracing::info!(to = format!("{target:x}"), "moved leadership");
        Ok(())
    } else {
        Err(AdminError::TransferFailed)
    }
}

/// On the leader, promotes learners that were added as voters once they have caught up.
pub(super) async fn promote_loop(core: Arc<Core>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if core.leader() != Some(core.id) {
            continue;
        }
        let pending: Vec<NodeId> = {
            let m = core.raft.metrics();
            let m = m.borrow_watched();
            let membership = m.membership_config.membership();
            let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
            membership
                .nodes()
                .filter(|(id, n)| n.promote && !voters.contains(id))
                .map(|(id, _)| *id)
                .collect()
        };
        for id in pending {
            if !in_sync(&core.raft, id) {
                continue;
            }
            match core
                .raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
                .await
            {
                Ok(_) => tracing::info!(member = format!("{id:x}"), "promoted member to voter"),
                Err(e) => tracing::debug!(error = %e, "promoting member; retrying"),
            }
        }
    }
}
