//! Consensus: everything that names openraft lives under this module.
//!
//! [`RaftHandle`] is what the gRPC services use: `propose` a command (forwarded to the leader when this
//! member is a follower) and `read_index` before a linearizable read (the leader confirms its
//! leadership with a heartbeat round and names a log index; this member waits until it has applied it,
//! then serves the read from its own state).
//!
//! Consensus adapts `storage/` to openraft and never names sled; it must never import `grpc/`,
//! `metrics` or `node` (what it counts goes to [`crate::counters::Counters`]).

// openraft's trait signatures fix `StorageError`'s size; boxing it here would only add conversions.
#![allow(clippy::result_large_err)]

pub mod admin;
pub mod log_store;
pub mod network;
pub(crate) mod peer;
pub mod service;
pub mod state_machine;
pub mod types;

use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::error::{LinearizableReadError, RaftError};
use openraft::raft::ClientWriteResult;
use openraft::ReadPolicy;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use self::admin::{AdminCall, AdminError, AdminReply};
use self::network::PeerChannels;
use self::peer::{AdminAnswer, CallError, ForwardStreams, PeerClient};
use self::service::{forward_error, ForwardError};
use self::types::{Callback, NodeId, Raft, TypeConfig};
use crate::command::{Applied, Command, CommandResponse};
use crate::counters::Counters;
use crate::lease::expiry::{self, ExpiryHost};
use crate::lease::lessor::{Lessor, Renewal};
use crate::storage::StoreState;

/// Why a proposal or read-index request did not complete. Display texts are etcd's.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ProposeError {
    #[error("etcdserver: no leader")]
    NoLeader,
    /// The request may or may not have taken effect.
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: {0}")]
    Internal(String),
}

/// Most commands one log entry carries, and roughly how many request bytes.
const MAX_BATCH: usize = 512;
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Batches proposed but not yet applied. An entry costs the members about a millisecond of CPU
/// whatever it carries (three syncs, the replication messages, the wake-ups between tasks), so under
/// load a batch gathers for the whole of the previous one's round: one batch in flight instead of
/// two cut the context switches per write at 16 clients by a fifth. But a few clients then take
/// turns, each write waiting out another's round, so while recent batches carried fewer than
/// [`SMALL_BATCH`] commands on average a second batch may start. Judging by the batch in flight
/// alone measured worse: a small batch let the next start early, which was small in turn.
const MAX_BATCHES_IN_FLIGHT: usize = 2;
const SMALL_BATCH: usize = 4;
/// A follower's batches merge into the leader's, so forwarding them eagerly costs no extra entries.
const MAX_FORWARDS_IN_FLIGHT: usize = 16;

/// A member's handle on its Raft node and state machine.
///
/// Client commands are batched: concurrent proposals share one log entry, and concurrent
/// linearizable reads share one read-index round (each round starts after all of its reads arrived,
/// so every read still observes every write committed before it began).
#[derive(Clone)]
pub struct RaftHandle {
    core: Arc<Core>,
    proposals: mpsc::UnboundedSender<Proposal>,
    /// Keeps the read loop alive; the core only holds a weak sender, so the loop (and the storage
    /// it keeps open) ends once every handle is dropped.
    _reads: mpsc::UnboundedSender<ReadWaiter>,
}

type ReadWaiter = oneshot::Sender<Result<(), ProposeError>>;

struct Proposal {
    cmd: Command,
    bytes: usize,
    reply: Reply,
}

impl RaftHandle {
    pub(crate) fn new(
        raft: Raft,
        id: NodeId,
        channels: PeerChannels,
        state: Arc<StoreState>,
        settings: HandleSettings,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> (RaftHandle, Vec<JoinHandle<()>>) {
        let core = Arc::new(Core {
            raft,
            id,
            channels,
            forwards: ForwardStreams::default(),
            state,
            request_timeout: settings.request_timeout,
            lessor: Arc::new(Lessor::new(settings.election_timeout)),
            cluster_id: settings.cluster_id,
            cluster_token: settings.cluster_token,
            counters: settings.counters,
            holding: tokio::sync::watch::channel(false).0,
            removed: tokio::sync::watch::channel(false).0,
            reads: std::sync::OnceLock::new(),
        });
        let expiry = tokio::spawn(expiry::run(core.clone(), core.lessor.clone(), stop.clone()));
        let promoter = tokio::spawn(admin::promote_loop(core.clone(), stop.clone()));
        let addresses = tokio::spawn(track_addresses(core.clone(), stop));
        let (proposals, rx) = mpsc::unbounded_channel();
        let proposer = tokio::spawn(proposal_loop(core.clone(), rx));
        let (reads, rx) = mpsc::unbounded_channel();
        let _ = core.reads.set(reads.downgrade());
        let reader = tokio::spawn(read_loop(core.clone(), rx));
        let handle = RaftHandle {
            core,
            proposals,
            _reads: reads,
        };
        // Both loops end once every handle is dropped.
        (handle, vec![proposer, reader, expiry, promoter, addresses])
    }

    pub fn raft(&self) -> &Raft {
        &self.core.raft
    }

    pub fn state(&self) -> &Arc<StoreState> {
        &self.core.state
    }

    /// What Raft reports of this member now.
    pub fn metrics(&self) -> types::RaftMetrics {
        self.core.raft.metrics().borrow_watched().clone()
    }

    /// This member's id.
    pub fn id(&self) -> NodeId {
        self.core.id
    }

    pub fn term(&self) -> u64 {
        self.core.term()
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.core.leader()
    }

    /// Replicates and applies `cmd` (of about `bytes` request bytes), batched with concurrent ones.
    pub async fn propose(
        &self,
        cmd: Command,
        bytes: usize,
    ) -> Result<CommandResponse, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.proposals
            .send(Proposal { cmd, bytes, reply })
            .map_err(|_| ProposeError::Internal("proposer stopped".into()))?;
        let metrics = &self.core.counters;
        metrics.proposals_pending.inc();
        let result = rx
            .await
            .map_err(|_| ProposeError::Internal("proposer stopped".into()))
            .and_then(|r| r);
        metrics.proposals_pending.dec();
        if result.is_err() {
            metrics.proposals_failed.inc();
        }
        result
    }

    /// Restarts a lease's TTL on the leader; returns the TTL, or 0 if the lease does not exist.
    pub async fn lease_keep_alive(&self, id: i64) -> Result<i64, ProposeError> {
        match self.core.lease_call(LeaseCall::KeepAlive(id)).await? {
            LeaseReply::KeepAlive(ttl) => Ok(ttl),
            other => Err(ProposeError::Internal(format!(
                "unexpected lease reply {other:?}"
            ))),
        }
    }

    /// `(remaining seconds, granted TTL, keys)` as the leader sees the lease, if it exists.
    pub async fn lease_time_to_live(
        &self,
        id: i64,
    ) -> Result<Option<(i64, i64, Vec<Vec<u8>>)>, ProposeError> {
        match self.core.lease_call(LeaseCall::TimeToLive(id)).await? {
            LeaseReply::TimeToLive(t) => Ok(t),
            other => Err(ProposeError::Internal(format!(
                "unexpected lease reply {other:?}"
            ))),
        }
    }

    /// Carries out a membership change on the leader (wherever it is).
    pub async fn admin(&self, call: AdminCall) -> Result<AdminReply, AdminError> {
        self.core.admin_call(call).await
    }

    /// Becomes true once this member has been removed from the cluster.
    pub fn removed(&self) -> tokio::sync::watch::Receiver<bool> {
        self.core.removed.subscribe()
    }

    /// Records that this member was removed from the cluster.
    pub(crate) fn mark_removed(&self) {
        if !self.core.removed.send_replace(true) {
            tracing::warn!("this member has been removed from the cluster");
        }
    }

    /// The current members, as this member knows them.
    pub fn members(&self) -> Vec<admin::MemberInfo> {
        admin::members(&self.core)
    }

    /// Serves a membership call from another member: `Members` anywhere, changes on the leader only.
    pub(crate) async fn local_admin(
        &self,
        call: AdminCall,
    ) -> Result<Result<AdminReply, AdminError>, ForwardError> {
        let anywhere = matches!(
            call,
            AdminCall::Members
                | AdminCall::Campaign
                | AdminCall::HoldElections(_)
                | AdminCall::Removed(_)
        );
        if !anywhere && self.leader() != Some(self.core.id) {
            return Err(ForwardError::NotLeader(self.leader()));
        }
        Ok(admin::execute(&self.core, call).await)
    }

    /// Answers a lease call from a follower, as the leader.
    pub(crate) async fn local_lease_call(
        &self,
        call: LeaseCall,
    ) -> Result<LeaseReply, ForwardError> {
        self.core.confirmed_lease_call(call).await
    }

    /// Returns once this member's state reflects every write committed before the call.
    pub async fn read_index(&self) -> Result<(), ProposeError> {
        self.core.read_index().await
    }
}

/// Keeps the peer channels' addresses in step with the membership.
async fn track_addresses(core: Arc<Core>, mut stop: tokio::sync::watch::Receiver<bool>) {
    // Server metrics change with leadership and membership only, not with every write.
    let mut rx = core.raft.server_metrics();
    let mut seen = None;
    loop {
        {
            let m = rx.borrow_watched();
            let config = &m.membership_config;
            if seen.as_ref() != Some(config.log_id()) {
                seen = Some(*config.log_id());
                core.channels.set_addresses(config.membership().nodes());
            }
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Gathers queued proposals into batches and proposes each as one entry.
async fn proposal_loop(core: Arc<Core>, mut rx: mpsc::UnboundedReceiver<Proposal>) {
    let leader_slots = Arc::new(InFlight::default());
    let forward_slots = Arc::new(Semaphore::new(MAX_FORWARDS_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        // While no batch may start, more proposals queue up and join this one.
        let slot = if core.leader() == Some(core.id) {
            Slot::Leader(leader_slots.admit().await)
        } else {
            let Ok(permit) = forward_slots.clone().acquire_owned().await else {
                return;
            };
            Slot::Forward { _permit: permit }
        };
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.bytes;
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        if let Slot::Leader(admitted) = &slot {
            // A follower's forwarded batch counts as the commands it carries.
            admitted.carries(batch.iter().map(|p| p.cmd.count()).sum());
        }
        let (cmds, replies): (Vec<Command>, Vec<Reply>) =
            batch.into_iter().map(|p| (p.cmd, p.reply)).unzip();
        let cmd = if cmds.len() == 1 {
            cmds.into_iter().next().expect("one command")
        } else {
            Command::Batch(cmds)
        };
        match slot {
            Slot::Leader(admitted) if !*core.holding.borrow() => {
                submit(&core, cmd, replies, admitted).await;
            }
            slot => {
                let core = core.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    answer(replies, core.propose(cmd).await);
                });
            }
        }
    }
}

type Reply = oneshot::Sender<Result<CommandResponse, ProposeError>>;

/// Hands a batch to Raft on the leader with no task waiting for it: the task that applies the
/// entry answers its proposers itself, one hand-off fewer per entry on the way to the clients.
/// A batch Raft refuses or drops before committing (leadership moved) is proposed again the way
/// [`Core::propose`] retries, through whichever member leads by then.
async fn submit(core: &Arc<Core>, cmd: Command, replies: Vec<Reply>, admitted: Admitted) {
    let again = cmd.clone();
    let retry = core.clone();
    let responder = Callback::new(move |result: ClientWriteResult<TypeConfig>| {
        // The batch's place is given back once its proposers are answered.
        let _slot = admitted;
        let e = match result {
            Ok(written) => return answer(replies, Ok(written.data)),
            Err(e) => forward_error(RaftError::APIError(e)),
        };
        match (e, tokio::runtime::Handle::try_current()) {
            (ForwardError::NotLeader(_), Ok(runtime)) => {
                runtime.spawn(async move { answer(replies, retry.propose(again).await) });
            }
            (ForwardError::NotLeader(_), Err(_)) => {
                answer(replies, Err(ProposeError::LeaderChanged))
            }
            (other, _) => answer(replies, Err(ProposeError::Internal(other.to_string()))),
        }
    });
    // A stopped Raft drops the responder, and with it the replies: their proposers see the
    // proposer stopped.
    if let Err(fatal) = core.raft.client_write_ff(cmd, Some(responder)).await {
        tracing::warn!(error = %fatal, "consensus stopped; proposals dropped");
    }
}

/// Gives each proposer of a batch its own response (a lone command's batch is the command).
fn answer(replies: Vec<Reply>, result: Result<CommandResponse, ProposeError>) {
    let single = replies.len() == 1;
    match result {
        Ok(resp) if single => {
            let _ = replies
                .into_iter()
                .next()
                .expect("one reply")
                .send(Ok(resp));
        }
        Ok(CommandResponse {
            result: Ok(Applied::Batch(responses)),
            ..
        }) if responses.len() == replies.len() => {
            for (reply, resp) in replies.into_iter().zip(responses) {
                let _ = reply.send(Ok(resp));
            }
        }
        Ok(other) => {
            let e = ProposeError::Internal(format!("unexpected batch result {other:?}"));
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// What lets a batch start: a place among the leader's batches in flight, or a forward's permit.
enum Slot {
    Leader(Admitted),
    Forward {
        _permit: tokio::sync::OwnedSemaphorePermit,
    },
}

/// The leader's batches in flight, and how many commands recent batches carried (see
/// [`SMALL_BATCH`]).
#[derive(Default)]
struct InFlight {
    state: std::sync::Mutex<InFlightState>,
    freed: tokio::sync::Notify,
}

#[derive(Default)]
struct InFlightState {
    batches: usize,
    /// Commands per batch, a moving average over about the last eight, in sixteenths.
    average: usize,
}

impl InFlight {
    fn state(&self) -> std::sync::MutexGuard<'_, InFlightState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until a batch may start. Only the proposal loop calls it, one at a time.
    async fn admit(self: &Arc<Self>) -> Admitted {
        loop {
            {
                let mut state = self.state();
                let small = state.average < SMALL_BATCH * 16;
                if state.batches == 0 || (state.batches < MAX_BATCHES_IN_FLIGHT && small) {
                    state.batches += 1;
                    return Admitted {
                        in_flight: self.clone(),
                    };
                }
            }
            // `notify_one` keeps a wake-up for a batch that ends between the check and this wait.
            self.freed.notified().await;
        }
    }
}

/// A leader's batch in flight; its place is given back when it is dropped.
struct Admitted {
    in_flight: Arc<InFlight>,
}

impl Admitted {
    fn carries(&self, commands: usize) {
        let mut state = self.in_flight.state();
        let sample = commands.min(MAX_BATCH) * 16;
        state.average = (state.average * 7 + sample) / 8;
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.in_flight.state().batches -= 1;
        self.in_flight.freed.notify_one();
    }
}

/// Serves queued linearizable reads one read-index round at a time; a round covers exactly the
/// reads that were queued when it started.
async fn read_loop(core: Arc<Core>, mut rx: mpsc::UnboundedReceiver<ReadWaiter>) {
    while let Some(first) = rx.recv().await {
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        let deadline = Instant::now() + core.request_timeout;
        let index = core.read_log_index(deadline).await;
        let core = core.clone();
        // Waiting for the local apply does not hold up the next round.
        tokio::spawn(async move {
            let result = match index {
                Ok(index) => core.wait_applied(index, deadline).await,
                Err(e) => Err(e),
            };
            for w in waiters {
                let _ = w.send(result.clone());
            }
        });
    }
}

/// What a [`RaftHandle`] works with besides Raft itself.
pub struct HandleSettings {
    pub request_timeout: Duration,
    pub election_timeout: Duration,
    pub cluster_id: u64,
    /// Mixed into the ids of added members.
    pub cluster_token: String,
    pub counters: Counters,
}

struct Core {
    raft: Raft,
    id: NodeId,
    channels: PeerChannels,
    /// Writes handed to the leader, on one stream per leader.
    forwards: ForwardStreams,
    state: Arc<StoreState>,
    request_timeout: Duration,
    lessor: Arc<Lessor>,
    cluster_id: u64,
    /// Mixed into the ids of added members, as into the founders'.
    cluster_token: String,
    counters: Counters,
    /// Set while leadership is being handed over: new proposals wait, so the leader stays quiet.
    holding: tokio::sync::watch::Sender<bool>,
    /// Set once this member knows it was removed from the cluster.
    removed: tokio::sync::watch::Sender<bool>,
    /// Queue of the read-index batching loop (set once it runs).
    reads: std::sync::OnceLock<mpsc::WeakUnboundedSender<ReadWaiter>>,
}

/// Lease operations only the leader's clock can answer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) enum LeaseCall {
    KeepAlive(i64),
    TimeToLive(i64),
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) enum LeaseReply {
    KeepAlive(i64),
    TimeToLive(Option<(i64, i64, Vec<Vec<u8>>)>),
}

impl ExpiryHost for Core {
    fn leading_term(&self) -> Option<u64> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        (m.current_leader == Some(self.id)).then_some(m.current_term)
    }

    fn lease_ttls(&self) -> Vec<(i64, i64)> {
        self.state.lease_ttls()
    }

    async fn propose_revokes(&self, ids: Vec<i64>) -> Result<(), String> {
        let revokes = Command::Batch(ids.into_iter().map(Command::LeaseRevoke).collect());
        self.propose(revokes)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

impl Core {
    async fn lease_call(&self, call: LeaseCall) -> Result<LeaseReply, ProposeError> {
        let deadline = Instant::now() + self.request_timeout;
        loop {
            let leader = self.wait_leader(deadline).await?;
            let outcome = if leader == self.id {
                self.confirmed_lease_call(call.clone()).await
            } else {
                match self.peer(leader)?.lease(&call, until(deadline)).await {
                    Ok(answer) => answer,
                    // Keep-alives and queries are idempotent: a leader that vanished mid-call is
                    // simply asked again once another one is known.
                    Err(CallError::Status(_)) => Err(ForwardError::NotLeader(None)),
                    Err(e) => return Err(e.into()),
                }
            };
            match outcome {
                Ok(reply) => return Ok(reply),
                Err(ForwardError::NotLeader(_)) => self.backoff(deadline).await?,
                Err(ForwardError::Rejected(e)) => return Err(e),
                Err(e) => return Err(ProposeError::Internal(e.to_string())),
            }
        }
    }

    async fn admin_call(&self, call: AdminCall) -> Result<AdminReply, AdminError> {
        let deadline = Instant::now() + self.request_timeout;
        let unavailable = |e: ProposeError| AdminError::Failed(e.to_string());
        loop {
            let leader = self.wait_leader(deadline).await.map_err(unavailable)?;
            let outcome = if leader == self.id {
                Ok(admin::execute(self, call.clone()).await)
            } else {
                let mut peer = self.peer(leader).map_err(unavailable)?;
                match peer.admin(&call, until(deadline)).await {
                    Ok(answer) => answer,
                    Err(e) => return Err(unavailable(e.into())),
                }
            };
            match outcome {
                Ok(result) => return result,
                Err(ForwardError::NotLeader(_)) => {
                    self.backoff(deadline).await.map_err(unavailable)?
                }
                Err(e) => return Err(AdminError::Failed(e.to_string())),
            }
        }
    }

    fn hold_proposals(&self, hold: bool) {
        self.holding.send_replace(hold);
    }

    /// Sends an admin call to one member (not necessarily the leader).
    async fn call_member(&self, id: NodeId, call: AdminCall) -> Result<AdminReply, AdminError> {
        let failed = |e: ProposeError| AdminError::Failed(e.to_string());
        let mut peer = self.peer(id).map_err(failed)?;
        let answer = peer
            .admin(&call, Duration::from_secs(2))
            .await
            .map_err(|e| failed(e.into()))?;
        Self::admin_result(answer)
    }

    /// Sends an admin call to a member that may no longer be in the membership.
    async fn call_member_at(
        &self,
        member: &types::Member,
        call: AdminCall,
    ) -> Result<AdminReply, AdminError> {
        let failed = |e: CallError| AdminError::Failed(e.to_string());
        let url = member.peer_urls.first().ok_or(AdminError::BadUrls)?;
        let mut peer = PeerClient::new(&self.channels, url).map_err(failed)?;
        let answer = peer
            .admin(&call, Duration::from_secs(2))
            .await
            .map_err(failed)?;
        Self::admin_result(answer)
    }

    fn admin_result(answer: AdminAnswer) -> Result<AdminReply, AdminError> {
        answer.unwrap_or_else(|e| Err(AdminError::Failed(e.to_string())))
    }

    async fn read_index(&self) -> Result<(), ProposeError> {
        let stopped = || ProposeError::Internal("read loop stopped".into());
        let (tx, rx) = oneshot::channel();
        self.reads
            .get()
            .and_then(|weak| weak.upgrade())
            .ok_or_else(stopped)?
            .send(tx)
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// A lease call as the leader. A keep-alive first confirms that this member still leads (a
    /// heartbeat round, shared with concurrent linearizable reads): a leader cut off from its
    /// followers must not renew a lease that the new leader's clock will expire (etcd too checks
    /// its leadership before renewing). A new leader cannot be elected until the followers'
    /// leader leases from that round have run out, and it then adds TTL plus an election timeout.
    async fn confirmed_lease_call(&self, call: LeaseCall) -> Result<LeaseReply, ForwardError> {
        if matches!(call, LeaseCall::KeepAlive(_)) {
            if self.leader() != Some(self.id) {
                return Err(ForwardError::NotLeader(self.leader()));
            }
            self.read_index().await.map_err(ForwardError::Rejected)?;
        }
        self.local_lease_call(call)
    }

    fn local_lease_call(&self, call: LeaseCall) -> Result<LeaseReply, ForwardError> {
        // The clock starts within a tick of promotion; until then this member cannot answer.
        if self.leader() != Some(self.id) || !self.lessor.is_leading() {
            return Err(ForwardError::NotLeader(None));
        }
        let now = std::time::Instant::now();
        Ok(match call {
            LeaseCall::KeepAlive(id) => match self.state.lease(id) {
                Some(lease) => match self.lessor.renew(id, lease.ttl, now) {
                    Renewal::Renewed => LeaseReply::KeepAlive(lease.ttl),
                    // Answered as etcd does for a lease it is revoking: not found (TTL 0).
                    Renewal::Expired => LeaseReply::KeepAlive(0),
                    Renewal::NotLeading => return Err(ForwardError::NotLeader(None)),
                },
                None => LeaseReply::KeepAlive(0),
            },
            LeaseCall::TimeToLive(id) => {
                LeaseReply::TimeToLive(self.state.lease(id).map(|lease| {
                    let remaining = self
                        .lessor
                        .remaining(id, now)
                        .map_or(lease.ttl, |d| d.as_secs() as i64);
                    (remaining, lease.ttl, lease.keys.into_iter().collect())
                }))
            }
        })
    }

    fn term(&self) -> u64 {
        self.raft.metrics().borrow_watched().current_term
    }

    fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow_watched().current_leader
    }

    /// Waits until some member is known to lead, or the deadline passes.
    async fn wait_leader(&self, deadline: Instant) -> Result<NodeId, ProposeError> {
        let mut rx = self.raft.metrics();
        let found =
            tokio::time::timeout_at(deadline, rx.wait_until(|m| m.current_leader.is_some())).await;
        match found {
            Ok(Ok(m)) => m.current_leader.ok_or(ProposeError::NoLeader),
            Ok(Err(_)) => Err(ProposeError::Internal("raft stopped".into())),
            Err(_) => Err(ProposeError::NoLeader),
        }
    }

    fn peer_url(&self, id: NodeId) -> Option<String> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        m.membership_config
            .membership()
            .get_node(&id)
            .and_then(|n| n.peer_urls.first().cloned())
    }

    /// The typed client for calls to member `id`, found in the membership.
    fn peer(&self, id: NodeId) -> Result<PeerClient, ProposeError> {
        let url = self.peer_url(id).ok_or(ProposeError::NoLeader)?;
        PeerClient::new(&self.channels, &url).map_err(|e| ProposeError::Internal(e.to_string()))
    }

    /// Replicates and applies `cmd` as one entry, returning its result. A command this member cannot propose is
    /// handed to the leader. It is retried only when it certainly was not committed.
    #[tracing::instrument(level = "debug", skip_all, fields(cmd = %cmd))]
    async fn propose(&self, cmd: Command) -> Result<CommandResponse, ProposeError> {
        let deadline = Instant::now() + self.request_timeout;
        loop {
            let leader = self.wait_leader(deadline).await?;
            let outcome = if leader == self.id {
                // While leadership is handed over, wait rather than keep followers' leases alive.
                let mut holding = self.holding.subscribe();
                let _ = tokio::time::timeout_at(deadline, holding.wait_for(|h| !*h)).await;
                match self.raft.client_write(cmd.clone()).await {
                    Ok(r) => return Ok(r.data),
                    Err(e) => forward_error(e),
                }
            } else {
                let url = self.peer_url(leader).ok_or(ProposeError::NoLeader)?;
                let forwarded = self
                    .forwards
                    .forward(&self.channels, &url, &cmd, until(deadline));
                match forwarded.await? {
                    Ok(r) => return Ok(r),
                    Err(e) => e,
                }
            };
            match outcome {
                // Not appended, or appended and then truncated: never committed, safe to retry.
                ForwardError::NotLeader(_) => self.backoff(deadline).await?,
                ForwardError::LeaderChanged => return Err(ProposeError::LeaderChanged),
                ForwardError::Failed(m) => return Err(ProposeError::Internal(m)),
                ForwardError::Rejected(e) => return Err(e),
            }
        }
    }

    /// Asks the leader (perhaps this member) for a log index that covers every write committed so far.
    async fn read_log_index(&self, deadline: Instant) -> Result<Option<u64>, ProposeError> {
        loop {
            let leader = self.wait_leader(deadline).await?;
            if leader == self.id {
                match self.raft.get_read_log_id(ReadPolicy::ReadIndex).await {
                    Ok((read, _)) => return Ok(Some(read.log_id().index)),
                    Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(_))) => {}
                    Err(RaftError::APIError(e)) => {
                        return Err(ProposeError::Internal(e.to_string()))
                    }
                    Err(RaftError::Fatal(e)) => return Err(ProposeError::Internal(e.to_string())),
                }
            } else {
                let answer = match self.peer(leader)?.read_index(until(deadline)).await {
                    Ok(answer) => answer,
                    // Asking for a read index has no effect: safe to ask the next leader.
                    Err(CallError::Status(_)) => {
                        self.backoff(deadline).await?;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                match answer {
                    Ok(i) => return Ok(Some(i)),
                    Err(ForwardError::NotLeader(_)) => {}
                    Err(ForwardError::Rejected(e)) => return Err(e),
                    Err(e) => return Err(ProposeError::Internal(e.to_string())),
                }
            }
            self.backoff(deadline).await?;
        }
    }

    async fn wait_applied(
        &self,
        index: Option<u64>,
        deadline: Instant,
    ) -> Result<(), ProposeError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(remaining))
            .applied_index_at_least(index, "read index")
            .await
            .map(|_| ())
            .map_err(|_| ProposeError::Timeout)
    }

    async fn backoff(&self, deadline: Instant) -> Result<(), ProposeError> {
        if Instant::now() + Duration::from_millis(20) >= deadline {
            return Err(ProposeError::Timeout);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(())
    }
}

/// What is left of the time until `deadline`.
fn until(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

#[cfg(test)]
mod format_test;
#[cfg(test)]
mod storage_test;

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::{InFlight, SMALL_BATCH};

    /// Whether `admit` returns within a short wait (it never returns late: only a drop frees it).
    async fn admitted_now(in_flight: &Arc<InFlight>) -> Option<super::Admitted> {
        tokio::time::timeout(Duration::from_millis(50), in_flight.admit())
            .await
            .ok()
    }

    #[tokio::test]
    async fn a_second_batch_starts_only_while_batches_are_small() {
        let in_flight = Arc::new(InFlight::default());
        let first = admitted_now(&in_flight).await.expect("nothing in flight");
        first.carries(1);
        let second = admitted_now(&in_flight)
            .await
            .expect("batches have been small");
        second.carries(1);
        assert!(
            admitted_now(&in_flight).await.is_none(),
            "never more than two batches"
        );
        // Load arrives: batches fill up, and from then on each gathers while one is in flight.
        drop(second);
        for _ in 0..8 {
            first.carries(4 * SMALL_BATCH);
        }
        assert!(
            admitted_now(&in_flight).await.is_none(),
            "full batches: the next one gathers"
        );
        // A waiter is woken by the drop, not left parked.
        let waiter = tokio::spawn({
            let in_flight = in_flight.clone();
            async move { in_flight.admit().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter was woken")
            .expect("waiter task");
        // Load goes: a few small batches and a second may start beside one again.
        for _ in 0..16 {
            third.carries(1);
        }
        assert!(admitted_now(&in_flight).await.is_some());
    }
}
