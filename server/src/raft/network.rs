//! Outgoing peer traffic: openraft's RPCs plus write forwarding and read-index requests, over one
//! long-lived HTTP/2 connection per peer (a tonic channel multiplexes every RPC on it).
//!
//! Must never import `grpc/` or `storage/`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_proto::raftpb::raft_transport_client::RaftTransportClient;
use cairn_proto::raftpb::RaftPayload;
use futures::{FutureExt, Stream, StreamExt};
use openraft::base::{BoxFuture, BoxStream};
use openraft::error::{NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::error::{ReplicationClosed, StreamingError};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{stream_append_sequential, Backoff, RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::{SnapshotOf, VoteOf};
use openraft::OptionalSend;
use openraft_legacy::network_v1::{
    Adapter, InstallSnapshotError, InstallSnapshotRequest, InstallSnapshotResponse, RaftNetwork,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use super::types::{Member, NodeId, SnapshotData, TypeConfig};
use crate::codec::{decode, encode};
use crate::tls::PeerDialTls;

/// Largest message on the peer transport: a batch of log entries, each up to the request limit.
pub(crate) const PEER_MAX_MESSAGE: usize = 512 * 1024 * 1024;

/// Channels to peers by URL, shared by replication, forwarding and read-index requests.
#[derive(Clone, Default)]
pub struct PeerChannels {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// How `https://` peer URLs are dialed; without it they fail to connect (never plaintext).
    tls: Option<PeerDialTls>,
    /// Each member's peer URL in the latest membership. Replication to a member outlives a change
    /// of its URL (openraft keeps the stream), so every call looks its address up here.
    addresses: Arc<Mutex<HashMap<NodeId, String>>>,
}

impl PeerChannels {
    pub(crate) fn new(tls: Option<PeerDialTls>) -> PeerChannels {
        PeerChannels {
            channels: Arc::default(),
            tls,
            addresses: Arc::default(),
        }
    }

    /// Records the members' peer URLs from a new membership.
    pub(crate) fn set_addresses<'a>(
        &self,
        members: impl Iterator<Item = (&'a NodeId, &'a Member)>,
    ) {
        let addresses = members
            .filter_map(|(id, m)| Some((*id, m.peer_urls.first()?.clone())))
            .collect();
        *self.addresses.lock().unwrap_or_else(|p| p.into_inner()) = addresses;
    }

    fn address(&self, id: NodeId) -> Option<String> {
        self.addresses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    pub(crate) fn client(
        &self,
        url: &str,
    ) -> Result<RaftTransportClient<Channel>, tonic::transport::Error> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match channels.get(url) {
            Some(c) => c.clone(),
            None => {
                let endpoint = |url: String| {
                    Ok::<_, tonic::transport::Error>(
                        Endpoint::from_shared(url)?
                            .connect_timeout(Duration::from_secs(1))
                            .tcp_nodelay(true)
                            .http2_keep_alive_interval(Duration::from_secs(5))
                            .keep_alive_while_idle(true),
                    )
                };
                let c = match (&self.tls, crate::config::is_https(url)) {
                    (Some(tls), true) => tls.channel(url, endpoint)?,
                    // Plaintext (or https:// with no TLS configured, which then fails to
                    // connect rather than speak plaintext).
                    _ => endpoint(url.to_string())?.connect_lazy(),
                };
                channels.insert(url.to_string(), c.clone());
                c
            }
        };
        Ok(RaftTransportClient::new(channel)
            .max_decoding_message_size(PEER_MAX_MESSAGE)
            .max_encoding_message_size(PEER_MAX_MESSAGE))
    }
}

/// Builds a [`PeerClient`] per replication target.
#[derive(Clone)]
pub struct Network {
    pub(crate) channels: PeerChannels,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Self::Network {
        let url = node.peer_urls.first().cloned().unwrap_or_default();
        PeerNetwork {
            v1: PeerClient {
                target,
                client: self.channels.client(&url).map_err(|e| e.to_string()),
                url,
                channels: self.channels.clone(),
            }
            .into_v2(),
            streams: true,
        }
    }
}

/// openraft's connection to one member. Replication is a pipeline over `AppendStream`: the next
/// append leaves before the previous one is answered, so a write's round trip and the follower's
/// flush overlap with the ones before it. Snapshots go in chunks, as the peer protocol has always
/// sent them.
pub struct PeerNetwork {
    v1: Adapter<TypeConfig, PeerClient, SnapshotData>,
    /// Cleared once the member answers that it has no `AppendStream` (an older build during a
    /// rolling upgrade): from then on appends go one at a time over `AppendEntries`.
    streams: bool,
}

type StreamAnswers<'s> =
    BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>;

impl RaftNetworkV2<TypeConfig> for PeerNetwork {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.v1.append_entries(rpc, option).await
    }

    /// While requests are outstanding the member must answer one within `option`'s time (see
    /// [`next_answer`]); with nothing outstanding (the leader waiting for writes) the stream may
    /// stay idle indefinitely.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<StreamAnswers<'s>, RPCError<TypeConfig>>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        if !self.streams {
            return stream_append_sequential(self, input, option);
        }
        Box::pin(async move {
            // openraft waits out its backoff inside the input stream, before yielding a request:
            // the stream is opened once there is a request, so a member that cannot be reached
            // is retried at the backoff's pace.
            let mut input = input;
            let Some(first) = input.next().await else {
                return Ok(Box::pin(futures::stream::empty()) as StreamAnswers<'s>);
            };
            let input = futures::stream::once(std::future::ready(first)).chain(commits_last(input));
            let ttl = option.hard_ttl();
            let mut client = self.v1.inner_mut().connection()?.clone();
            let in_flight: Arc<Mutex<VecDeque<tokio::time::Instant>>> = Arc::default();
            let sent = in_flight.clone();
            // An unencodable request ends the stream there: the answers must stay in step with
            // the requests openraft produced.
            let outgoing = input.scan((), move |_, rpc| {
                let payload = match encode(&rpc) {
                    Ok(data) => {
                        lock(&sent).push_back(tokio::time::Instant::now());
                        Some(RaftPayload { data })
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot encode an append request");
                        None
                    }
                };
                std::future::ready(payload)
            });
            let inbound = match tokio::time::timeout(
                ttl,
                client.append_stream(tonic::Request::new(outgoing)),
            )
            .await
            {
                Err(_) => return Err(no_answer(ttl)),
                Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                    tracing::info!(
                        member = self.v1.inner().target,
                        "member has no append stream: appending one request at a time"
                    );
                    self.streams = false;
                    return Err(RPCError::Network(NetworkError::new(&status)));
                }
                Ok(Err(status)) => return Err(status_error(status)),
                Ok(Ok(r)) => r.into_inner(),
            };
            let opened = tokio::time::Instant::now();
            let answers = futures::stream::unfold(Some((inbound, opened)), move |state| {
                let in_flight = in_flight.clone();
                async move {
                    let (mut inbound, since) = state?;
                    let answer = next_answer(&mut inbound, &in_flight, since, ttl).await?;
                    let more = answer
                        .is_ok()
                        .then(|| (inbound, tokio::time::Instant::now()));
                    Some((answer, more))
                }
            });
            Ok(Box::pin(answers) as StreamAnswers<'s>)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.v1.vote(rpc, option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, SnapshotData>,
        cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        self.v1.full_snapshot(vote, snapshot, cancel, option).await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.v1.transfer_leader(req, option).await
    }

    fn backoff(&self) -> Option<Backoff> {
        self.v1.backoff()
    }
}

/// The requests after a stream's first, with the commit-index notices put last or left out.
///
/// A request without entries only moves the follower's commit index: nothing here waits on it,
/// so it goes once this member's ready work is done, and the commit it announces is applied and
/// answered first. If by then openraft has the next request ready, the notice is not sent at
/// all: every request carries the leader's commit index, and openraft settles its requests in
/// flight by the log position an answer acknowledges, not by counting answers, so the later
/// request's answer covers the notice. Under load that is two messages fewer per entry and
/// follower, and the follower learns the commit index no later. (A heartbeat, which a read may
/// wait on, is the first and only request of a stream of its own and is never held.)
fn commits_last<S>(input: S) -> impl Stream<Item = AppendEntriesRequest<TypeConfig>>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Unpin,
{
    futures::stream::unfold(input.fuse(), |mut input| async move {
        let mut rpc = input.next().await?;
        while rpc.entries.is_empty() {
            tokio::task::yield_now().await;
            match input.next().now_or_never() {
                Some(Some(later)) => rpc = later,
                // Nothing ready, or openraft ended the stream: the notice goes.
                _ => break,
            }
        }
        Some((rpc, input))
    })
}

/// The next answer on an append stream, or `None` once the member has ended it. With requests
/// outstanding, an answer is due within `ttl` of the later of the oldest one's sending and the
/// previous answer (`since`): a follower working through a queue of appends (catching up after a
/// restart, on a slow disk) answers each in turn and is making progress, though the last in the
/// queue waited longer than `ttl`; one that answers nothing is cut off.
async fn next_answer(
    inbound: &mut tonic::Streaming<RaftPayload>,
    in_flight: &Mutex<VecDeque<tokio::time::Instant>>,
    since: tokio::time::Instant,
    ttl: Duration,
) -> Option<Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>> {
    loop {
        let oldest = lock(in_flight).front().copied();
        let check_at = oldest.map_or_else(tokio::time::Instant::now, |o| o.max(since)) + ttl;
        tokio::select! {
            message = inbound.message() => {
                return match message {
                    Ok(Some(p)) => {
                        lock(in_flight).pop_front();
                        Some(decode(&p.data).map_err(|e| RPCError::Network(NetworkError::new(&e))))
                    }
                    Ok(None) => None,
                    Err(status) => Some(Err(status_error(status))),
                };
            }
            _ = tokio::time::sleep_until(check_at) => {
                if oldest.is_some() {
                    return Some(Err(no_answer(ttl)));
                }
            }
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn no_answer<E: std::error::Error>(ttl: Duration) -> RPCError<TypeConfig, E> {
    RPCError::Network(NetworkError::new(&TransportError(format!(
        "no answer within {ttl:?}"
    ))))
}

/// A refused or failed call. Unreachable (openraft backs off) when the member could not be
/// reached or the connection failed under the call (a status made from a transport error carries
/// it as its source; one the member sent has none): a member that is down is retried at the
/// backoff's pace, not as fast as connections can be refused.
fn status_error<E: std::error::Error>(status: tonic::Status) -> RPCError<TypeConfig, E> {
    use std::error::Error as _;
    if status.code() == tonic::Code::Unavailable || status.source().is_some() {
        RPCError::Unreachable(Unreachable::new(&status))
    } else {
        RPCError::Network(NetworkError::new(&status))
    }
}

pub struct PeerClient {
    target: NodeId,
    url: String,
    client: Result<RaftTransportClient<Channel>, String>,
    channels: PeerChannels,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

type RpcResult<T, E> = Result<T, RPCError<TypeConfig, RaftError<TypeConfig, E>>>;

impl PeerClient {
    /// The client for the member's address in the latest membership.
    fn connection<E: std::error::Error>(
        &mut self,
    ) -> Result<&mut RaftTransportClient<Channel>, RPCError<TypeConfig, E>> {
        if let Some(url) = self.channels.address(self.target) {
            if url != self.url {
                self.client = self.channels.client(&url).map_err(|e| e.to_string());
                self.url = url;
            }
        }
        self.client
            .as_mut()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&TransportError(e.clone()))))
    }

    async fn call<Req, Resp, E>(
        &mut self,
        kind: RpcKind,
        req: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = self.connection()?;
        let data = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = tonic::Request::new(RaftPayload { data });
        request.set_timeout(option.hard_ttl());
        let reply = match kind {
            RpcKind::Append => client.append_entries(request).await,
            RpcKind::Vote => client.vote(request).await,
            RpcKind::Snapshot => client.install_snapshot(request).await,
        };
        let reply = reply.map_err(status_error)?;
        let result: Result<Resp, RaftError<TypeConfig, E>> = decode(&reply.into_inner().data)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

enum RpcKind {
    Append,
    Vote,
    Snapshot,
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<TypeConfig>, openraft::error::Infallible> {
        self.call(RpcKind::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<TypeConfig>, InstallSnapshotError> {
        self.call(RpcKind::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<TypeConfig>, openraft::error::Infallible> {
        self.call(RpcKind::Vote, &rpc, &option).await
    }

    fn backoff(&self) -> Backoff {
        peer_backoff()
    }
}

/// Retries an unreachable peer after 50 ms, doubling up to 1 s: a member that was just added (or
/// restarted) is reached soon after it starts listening, and a dead one is not hammered. The
/// sequence stays at its cap however far it is read: openraft steps it further per failure the
/// worse the failure, and a sequence that kept doubling would overflow `Duration` and panic the
/// replication task.
fn peer_backoff() -> Backoff {
    const CAP: Duration = Duration::from_secs(1);
    Backoff::new(std::iter::successors(
        Some(Duration::from_millis(50)),
        |d| Some((*d * 2).min(CAP)),
    ))
}

/// Serves `transport` (a stand-in member) on a loopback port of its own; returns its URL.
#[cfg(test)]
pub(crate) async fn serve_transport<T>(transport: T) -> String
where
    T: cairn_proto::raftpb::raft_transport_server::RaftTransport,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                cairn_proto::raftpb::raft_transport_server::RaftTransportServer::new(transport),
            )
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    url
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use cairn_proto::raftpb::raft_transport_server::RaftTransport;
    use openraft::error::{Infallible, RaftError};
    use tonic::{Request, Response, Status, Streaming};

    use super::*;
    use crate::raft::types::{Entry, LogId, Vote};

    /// A member that predates `AppendStream` (the generated default answers Unimplemented), or,
    /// with `silent`, one that takes the stream and never answers.
    #[derive(Default, Clone)]
    struct Peer {
        appends: Arc<AtomicUsize>,
        silent: bool,
    }

    type Payloads =
        std::pin::Pin<Box<dyn Stream<Item = Result<RaftPayload, Status>> + Send + 'static>>;

    #[tonic::async_trait]
    impl RaftTransport for Peer {
        async fn append_entries(
            &self,
            _req: Request<RaftPayload>,
        ) -> Result<Response<RaftPayload>, Status> {
            self.appends.fetch_add(1, Ordering::SeqCst);
            let ok: Result<AppendEntriesResponse<TypeConfig>, RaftError<TypeConfig, Infallible>> =
                Ok(AppendEntriesResponse::Success);
            Ok(Response::new(RaftPayload {
                data: encode(&ok).unwrap(),
            }))
        }

        async fn append_stream(
            &self,
            req: Request<Streaming<RaftPayload>>,
        ) -> Result<Response<Payloads>, Status> {
            if !self.silent {
                return Err(Status::unimplemented("Not yet implemented"));
            }
            // Reads the requests and answers none of them.
            let mut incoming = req.into_inner();
            let answers =
                async_stream_of(async move { while let Ok(Some(_)) = incoming.message().await {} });
            Ok(Response::new(answers))
        }
    }

    fn async_stream_of(work: impl std::future::Future<Output = ()> + Send + 'static) -> Payloads {
        Box::pin(futures::stream::once(work).filter_map(|()| async { None }))
    }

    async fn network_to(url: &str) -> PeerNetwork {
        let member = Member {
            name: "b".into(),
            peer_urls: vec![url.to_string()],
            ..Default::default()
        };
        Network {
            channels: PeerChannels::new(None),
        }
        .new_client(2, &member)
        .await
    }

    fn heartbeat() -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            leader_commit: None,
            entries: vec![],
        }
    }

    /// A request from leader 1 of term 1 whose log ends at `last` (carrying the entry `last` when
    /// `with_entry`) and whose commit index is `commit`.
    fn append(last: u64, commit: u64, with_entry: bool) -> AppendEntriesRequest<TypeConfig> {
        use openraft::impls::leader_id_adv::LeaderId;
        let log_id = |index| {
            LogId::new(
                LeaderId {
                    term: 1,
                    node_id: 1,
                },
                index,
            )
        };
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: Some(log_id(if with_entry { last - 1 } else { last })),
            leader_commit: Some(log_id(commit)),
            entries: if with_entry {
                vec![Entry {
                    log_id: log_id(last),
                    payload: openraft::EntryPayload::Blank,
                }]
            } else {
                vec![]
            },
        }
    }

    /// (last log index, commit index, entries) of each request.
    fn shape(rpcs: &[AppendEntriesRequest<TypeConfig>]) -> Vec<(u64, u64, usize)> {
        rpcs.iter()
            .map(|r| {
                let last = r.entries.last().map(|e| e.log_id.index);
                let last = last.or(r.prev_log_id.map(|p| p.index)).unwrap();
                (last, r.leader_commit.unwrap().index, r.entries.len())
            })
            .collect()
    }

    #[tokio::test]
    async fn a_commit_notice_with_a_later_request_ready_is_left_out() {
        let input = futures::stream::iter([
            append(5, 4, true),
            append(5, 5, false),
            append(5, 5, false),
            append(6, 5, true),
            append(6, 6, false),
        ]);
        let sent: Vec<_> = commits_last(input).collect().await;
        // Both notices before the entry 6 are covered by its request, which carries commit 5;
        // the last notice has nothing after it and goes.
        assert_eq!(shape(&sent), vec![(5, 4, 1), (6, 5, 1), (6, 6, 0)]);
    }

    #[tokio::test]
    async fn a_commit_notice_with_nothing_ready_goes() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let mut sent = Box::pin(commits_last(rx));
        let within = Duration::from_secs(5);
        tx.unbounded_send(append(5, 4, true)).unwrap();
        tx.unbounded_send(append(5, 5, false)).unwrap();
        let first = tokio::time::timeout(within, sent.next()).await.unwrap();
        let second = tokio::time::timeout(within, sent.next()).await.unwrap();
        assert_eq!(
            shape(&[first.unwrap(), second.unwrap()]),
            vec![(5, 4, 1), (5, 5, 0)],
            "the notice is sent while openraft has nothing after it"
        );
        tx.unbounded_send(append(6, 5, true)).unwrap();
        drop(tx);
        let rest: Vec<_> = tokio::time::timeout(within, sent.collect::<Vec<_>>())
            .await
            .unwrap();
        assert_eq!(shape(&rest), vec![(6, 5, 1)]);
    }

    #[test]
    fn the_backoff_stays_at_its_cap() {
        let waits: Vec<Duration> = peer_backoff().take(100_000).collect();
        assert_eq!(waits[0], Duration::from_millis(50));
        assert_eq!(waits[1], Duration::from_millis(100));
        assert_eq!(*waits.last().unwrap(), Duration::from_secs(1));
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(1)));
    }

    #[tokio::test]
    async fn a_member_without_append_streams_is_appended_to_one_request_at_a_time() {
        let peer = Peer::default();
        let url = serve_transport(peer.clone()).await;
        let mut net = network_to(&url).await;
        let option = RPCOption::new(Duration::from_secs(5));
        let refused = matches!(
            net.stream_append(futures::stream::iter([heartbeat()]), option.clone())
                .await,
            Err(RPCError::Network(_))
        );
        assert!(refused, "the refused stream is a retryable error");
        let answers: Vec<_> = net
            .stream_append(futures::stream::iter([heartbeat(), heartbeat()]), option)
            .await
            .expect("sequential appends")
            .collect()
            .await;
        assert_eq!(answers.len(), 2, "{answers:?}");
        assert!(
            answers.iter().all(|a| matches!(a, Ok(Ok(None)))),
            "{answers:?}"
        );
        assert_eq!(peer.appends.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_unanswered_append_fails_the_stream_after_its_time() {
        let url = serve_transport(Peer {
            silent: true,
            ..Default::default()
        })
        .await;
        let mut net = network_to(&url).await;
        let ttl = Duration::from_millis(200);
        // The input stays open, as openraft's does while it waits for new entries.
        let input = futures::stream::iter([heartbeat()]).chain(futures::stream::pending());
        let mut answers = net
            .stream_append(Box::pin(input), RPCOption::new(ttl))
            .await
            .expect("stream opened");
        let started = tokio::time::Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(10), answers.next())
            .await
            .expect("an answer or an error within its time");
        assert!(
            matches!(answer, Some(Err(RPCError::Network(_)))),
            "{answer:?}"
        );
        assert!(started.elapsed() >= ttl - Duration::from_millis(50));
        assert!(
            answers.next().await.is_none(),
            "the stream ends after an error"
        );
    }
}
