//! One typed client for the calls Cairn adds beside Raft's own between members: forwarding a
//! proposal to the leader, asking it for a read index, lease calls only the leader's clock can
//! answer, and membership (admin) calls. Each call encodes its request, sends it with a timeout and
//! decodes the typed answer; `service` serves them on the other side. Forwarded writes travel on
//! one stream per leader instead ([`ForwardStreams`]): a call of its own per write cost both members
//! an HTTP/2 stream, its headers and trailers, and a task on the leader.
//!
//! Must never import `grpc/` or `storage/`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use cairn_proto::raftpb::raft_transport_client::RaftTransportClient;
use cairn_proto::raftpb::RaftPayload;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;

use super::admin::{AdminCall, AdminError, AdminReply};
use super::network::{lock, PeerChannels};
use super::service::ForwardError;
use super::{LeaseCall, LeaseReply, ProposeError};
use crate::codec::{decode, encode};
use crate::command::{Command, CommandResponse};

/// Why a call got no answer from the member.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    #[error("{0}")]
    Connect(#[from] tonic::transport::Error),
    /// The call's timeout passed.
    #[error("{0}")]
    Timeout(tonic::Status),
    /// Any other failure of the transport: the member may or may not have acted on the call.
    #[error("{0}")]
    Status(tonic::Status),
    #[error("{0}")]
    Codec(String),
}

impl From<CallError> for ProposeError {
    fn from(e: CallError) -> ProposeError {
        match e {
            CallError::Timeout(_) => ProposeError::Timeout,
            CallError::Status(_) => ProposeError::LeaderChanged,
            CallError::Connect(e) => ProposeError::Internal(e.to_string()),
            CallError::Codec(m) => ProposeError::Internal(m),
        }
    }
}

/// A member's answer to an admin call: refused by the transport layer (not the leader) or served.
pub(crate) type AdminAnswer = Result<Result<AdminReply, AdminError>, ForwardError>;

/// The calls, typed, to one member.
pub(crate) struct PeerClient {
    client: RaftTransportClient<Channel>,
}

impl PeerClient {
    pub fn new(channels: &PeerChannels, url: &str) -> Result<PeerClient, CallError> {
        Ok(PeerClient {
            client: channels.client(url)?,
        })
    }

    pub async fn forward(
        &mut self,
        cmd: &Command,
        timeout: Duration,
    ) -> Result<Result<CommandResponse, ForwardError>, CallError> {
        self.call(Method::Forward, cmd, timeout).await
    }

    pub async fn read_index(
        &mut self,
        timeout: Duration,
    ) -> Result<Result<u64, ForwardError>, CallError> {
        self.call(Method::ReadIndex, &(), timeout).await
    }

    pub async fn lease(
        &mut self,
        call: &LeaseCall,
        timeout: Duration,
    ) -> Result<Result<LeaseReply, ForwardError>, CallError> {
        self.call(Method::Lease, call, timeout).await
    }

    pub async fn admin(
        &mut self,
        call: &AdminCall,
        timeout: Duration,
    ) -> Result<AdminAnswer, CallError> {
        self.call(Method::Admin, call, timeout).await
    }

    async fn call<Q: Serialize, A: DeserializeOwned>(
        &mut self,
        method: Method,
        request: &Q,
        timeout: Duration,
    ) -> Result<A, CallError> {
        let data = match method {
            // The read-index request carries nothing.
            Method::ReadIndex => Vec::new(),
            _ => encode(request).map_err(|e| CallError::Codec(e.to_string()))?,
        };
        let mut req = tonic::Request::new(RaftPayload { data });
        req.set_timeout(timeout);
        let client = &mut self.client;
        let reply = match method {
            Method::Forward => client.forward(req).await,
            Method::ReadIndex => client.read_index(req).await,
            Method::Lease => client.lease(req).await,
            Method::Admin => client.admin(req).await,
        };
        let data = match reply {
            Ok(r) => r.into_inner().data,
            Err(status) if status.code() == tonic::Code::DeadlineExceeded => {
                return Err(CallError::Timeout(status))
            }
            Err(status) => return Err(CallError::Status(status)),
        };
        decode(&data).map_err(|e| CallError::Codec(e.to_string()))
    }
}

enum Method {
    Forward,
    ReadIndex,
    Lease,
    Admin,
}

/// A leader's answer to a forwarded write.
type Answer = Result<CommandResponse, ForwardError>;

/// Forwarded writes, one stream per leader's peer URL, opened at the first write to it and
/// replaced once it breaks. A leader that does not serve the stream (Unimplemented) gets a call per
/// write, as before the stream existed.
#[derive(Default)]
pub(crate) struct ForwardStreams {
    routes: Mutex<HashMap<String, Route>>,
}

#[derive(Clone)]
enum Route {
    Stream(Arc<ForwardStream>),
    Unary,
}

/// One open stream: requests go out through `requests`, and a task reading the answers hands each
/// to the waiter registered under its id. That task holds it weakly: once neither the routes nor a
/// waiting write hold it, `requests` drops, which closes the stream.
struct ForwardStream {
    requests: mpsc::UnboundedSender<RaftPayload>,
    /// `None` once the stream ended: nothing registered after that could be answered.
    waiting: Mutex<Option<HashMap<u64, oneshot::Sender<Answer>>>>,
    next_id: AtomicU64,
}

/// Why a write was not sent on a stream: it ended first, so the write certainly never arrived.
struct NotSent;

impl ForwardStreams {
    /// Forwards `cmd` to the leader at `url` and waits up to `timeout` for its result. Errors mean
    /// what they mean for the call per write: a broken stream ([`CallError::Status`]) leaves open
    /// whether the leader committed the write.
    pub async fn forward(
        &self,
        channels: &PeerChannels,
        url: &str,
        cmd: &Command,
        timeout: Duration,
    ) -> Result<Answer, CallError> {
        // A stream found ended is replaced once: the write was not sent on it.
        for _ in 0..2 {
            let route = self.route(url);
            let route = match route {
                Some(route) => route,
                None => self.open(channels, url, timeout).await?,
            };
            let stream = match route {
                Route::Unary => {
                    return PeerClient::new(channels, url)?.forward(cmd, timeout).await;
                }
                Route::Stream(stream) => stream,
            };
            match stream.call(cmd, timeout).await {
                Ok(answer) => return answer,
                Err(NotSent) => self.forget(url, &stream),
            }
        }
        Err(CallError::Status(tonic::Status::unavailable(
            "the forward stream to the leader ended as it opened",
        )))
    }

    fn route(&self, url: &str) -> Option<Route> {
        lock(&self.routes).get(url).cloned()
    }

    fn forget(&self, url: &str, ended: &Arc<ForwardStream>) {
        let mut routes = lock(&self.routes);
        if matches!(routes.get(url), Some(Route::Stream(s)) if Arc::ptr_eq(s, ended)) {
            routes.remove(url);
        }
    }

    async fn open(
        &self,
        channels: &PeerChannels,
        url: &str,
        timeout: Duration,
    ) -> Result<Route, CallError> {
        let mut client = channels.client(url)?;
        let (requests, mut rx) = mpsc::unbounded_channel();
        let outgoing = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let opened = tokio::time::timeout(timeout, client.forward_stream(outgoing)).await;
        let route = match opened {
            Err(_) => {
                return Err(CallError::Timeout(tonic::Status::deadline_exceeded(
                    "opening the forward stream to the leader",
                )))
            }
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => Route::Unary,
            Ok(Err(status)) => return Err(CallError::Status(status)),
            Ok(Ok(answers)) => {
                let stream = Arc::new(ForwardStream {
                    requests,
                    waiting: Mutex::new(Some(HashMap::new())),
                    next_id: AtomicU64::new(0),
                });
                tokio::spawn(read_answers(answers.into_inner(), Arc::downgrade(&stream)));
                Route::Stream(stream)
            }
        };
        // Two writes may have opened one each: the first stays, and the other's is closed once
        // dropped (nothing was sent on it).
        Ok(lock(&self.routes)
            .entry(url.to_string())
            .or_insert(route)
            .clone())
    }
}

impl ForwardStream {
    async fn call(
        &self,
        cmd: &Command,
        timeout: Duration,
    ) -> Result<Result<Answer, CallError>, NotSent> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let data = match encode(&(id, cmd)) {
            Ok(data) => data,
            Err(e) => return Ok(Err(CallError::Codec(e.to_string()))),
        };
        let (tx, rx) = oneshot::channel();
        match lock(&self.waiting).as_mut() {
            Some(waiting) => waiting.insert(id, tx),
            None => return Err(NotSent),
        };
        if self.requests.send(RaftPayload { data }).is_err() {
            self.unregister(id);
            return Err(NotSent);
        }
        Ok(match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(CallError::Status(tonic::Status::unavailable(
                "the forward stream to the leader broke",
            ))),
            Err(_) => {
                self.unregister(id);
                Err(CallError::Timeout(tonic::Status::deadline_exceeded(
                    "no answer from the leader in time",
                )))
            }
        })
    }

    fn unregister(&self, id: u64) {
        if let Some(waiting) = lock(&self.waiting).as_mut() {
            waiting.remove(&id);
        }
    }

    /// The stream ended: every waiter learns it (its sender is dropped), and later writes open a
    /// new one.
    fn end(&self) {
        lock(&self.waiting).take();
    }
}

async fn read_answers(mut answers: tonic::Streaming<RaftPayload>, stream: Weak<ForwardStream>) {
    // Ends when the leader ends the stream, or once the stream is dropped and the leader has
    // answered what was sent.
    while let Ok(Some(p)) = answers.message().await {
        let Ok((id, answer)) = decode::<(u64, Answer)>(&p.data) else {
            tracing::warn!("undecodable answer on the forward stream");
            break;
        };
        let Some(stream) = stream.upgrade() else {
            return;
        };
        let waiter = lock(&stream.waiting).as_mut().and_then(|w| w.remove(&id));
        if let Some(waiter) = waiter {
            // Gone if its write timed out meanwhile.
            let _ = waiter.send(answer);
        }
    }
    if let Some(stream) = stream.upgrade() {
        stream.end();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use cairn_proto::raftpb::raft_transport_server::RaftTransport;
    use futures::StreamExt;
    use tonic::{Request, Response, Status, Streaming};

    use super::*;
    use crate::command::Applied;
    use crate::mvcc::{PutRequest, PutResponse};
    use crate::raft::network::serve_transport;

    /// A leader that answers a write to key `n` with revision `n`, each after `n` milliseconds, so
    /// answers overtake one another; without `streams` it predates `ForwardStream` (the
    /// generated default answers Unimplemented); with `break_after` it ends every stream with an
    /// error once that many writes arrived on it, answering none.
    #[derive(Clone, Default)]
    struct Leader {
        streams: bool,
        break_after: Option<usize>,
        calls: Arc<AtomicUsize>,
        opened: Arc<AtomicUsize>,
        /// Streams whose follower closed its side.
        closed: Arc<AtomicUsize>,
    }

    fn answer(cmd: &Command) -> Answer {
        let Command::Put(p) = cmd else {
            panic!("only puts are forwarded here")
        };
        let n: i64 = std::str::from_utf8(&p.key).unwrap().parse().unwrap();
        Ok(CommandResponse {
            revision: n,
            result: Ok(Applied::Put(PutResponse::default())),
        })
    }

    fn delay(cmd: &Command) -> Duration {
        let revision = answer(cmd).map(|r| r.revision).unwrap_or(0);
        Duration::from_millis(revision as u64)
    }

    type Payloads =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<RaftPayload, Status>> + Send>>;

    #[tonic::async_trait]
    impl RaftTransport for Leader {
        async fn forward(
            &self,
            req: Request<RaftPayload>,
        ) -> Result<Response<RaftPayload>, Status> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let cmd: Command = decode(&req.into_inner().data).unwrap();
            tokio::time::sleep(delay(&cmd)).await;
            Ok(Response::new(RaftPayload {
                data: encode(&answer(&cmd)).unwrap(),
            }))
        }

        async fn forward_stream(
            &self,
            req: Request<Streaming<RaftPayload>>,
        ) -> Result<Response<Payloads>, Status> {
            if !self.streams {
                return Err(Status::unimplemented("Not yet implemented"));
            }
            self.opened.fetch_add(1, Ordering::SeqCst);
            let (tx, mut rx) = mpsc::unbounded_channel();
            let mut input = req.into_inner();
            let leader = self.clone();
            tokio::spawn(async move {
                let mut seen = 0;
                while let Some(Ok(p)) = input.next().await {
                    seen += 1;
                    if leader.break_after == Some(seen) {
                        let _ = tx.send(Err(Status::unavailable("leader went away")));
                        return;
                    }
                    let (id, cmd): (u64, Command) = decode(&p.data).unwrap();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay(&cmd)).await;
                        let data = encode(&(id, &answer(&cmd))).unwrap();
                        let _ = tx.send(Ok(RaftPayload { data }));
                    });
                }
                leader.closed.fetch_add(1, Ordering::SeqCst);
            });
            let answers = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
            Ok(Response::new(Box::pin(answers)))
        }
    }

    fn put(n: usize) -> Command {
        Command::Put(PutRequest {
            key: n.to_string().into_bytes(),
            ..PutRequest::default()
        })
    }

    /// Forwards writes to keys `0..n` at once and returns the revision each got.
    async fn forward_all(streams: &Arc<ForwardStreams>, url: &str, n: usize) -> Vec<i64> {
        let channels = PeerChannels::new(None);
        let calls = (0..n).rev().map(|i| {
            let (streams, channels, url) = (streams.clone(), channels.clone(), url.to_string());
            tokio::spawn(async move {
                let answer = streams
                    .forward(&channels, &url, &put(i), Duration::from_secs(10))
                    .await;
                match answer {
                    Ok(Ok(r)) => r.revision,
                    other => panic!("write {i}: {other:?}"),
                }
            })
        });
        let mut revisions = Vec::new();
        for call in futures::future::join_all(calls).await {
            revisions.push(call.unwrap());
        }
        revisions.reverse();
        revisions
    }

    #[tokio::test]
    async fn forwarded_writes_share_one_stream_and_each_gets_its_own_answer() {
        let leader = Leader {
            streams: true,
            ..Leader::default()
        };
        let url = serve_transport(leader.clone()).await;
        let streams = Arc::new(ForwardStreams::default());
        let want: Vec<i64> = (0..64).collect();
        assert_eq!(forward_all(&streams, &url, 64).await, want);
        assert_eq!(forward_all(&streams, &url, 64).await, want);
        assert_eq!(leader.calls.load(Ordering::SeqCst), 0);
        // Concurrent first writes may each open one; one stays and carries the rest, and the
        // others are closed.
        let opened = leader.opened.load(Ordering::SeqCst);
        assert!((1..=64).contains(&opened), "{opened} streams opened");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while leader.closed.load(Ordering::SeqCst) < opened - 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {} extra streams closed",
                leader.closed.load(Ordering::SeqCst),
                opened - 1
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(leader.closed.load(Ordering::SeqCst), opened - 1);
        let before = opened;
        assert_eq!(forward_all(&streams, &url, 8).await, want[..8]);
        assert_eq!(leader.opened.load(Ordering::SeqCst), before);
    }

    #[tokio::test]
    async fn a_leader_without_the_stream_gets_a_call_per_write() {
        let leader = Leader::default();
        let url = serve_transport(leader.clone()).await;
        let streams = Arc::new(ForwardStreams::default());
        let want: Vec<i64> = (0..16).collect();
        assert_eq!(forward_all(&streams, &url, 16).await, want);
        assert_eq!(forward_all(&streams, &url, 16).await, want);
        assert_eq!(leader.calls.load(Ordering::SeqCst), 32);
    }

    #[tokio::test]
    async fn writes_on_a_stream_that_breaks_fail_as_undetermined_and_the_next_write_reopens() {
        let leader = Leader {
            streams: true,
            break_after: Some(2),
            ..Leader::default()
        };
        let url = serve_transport(leader.clone()).await;
        let streams = ForwardStreams::default();
        let channels = PeerChannels::new(None);
        // Key 500 answers after half a second: the second write breaks the stream first.
        let slow = put(500);
        let first = streams.forward(&channels, &url, &slow, Duration::from_secs(10));
        let second = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            streams
                .forward(&channels, &url, &put(1), Duration::from_secs(10))
                .await
        };
        let (first, second) = tokio::join!(first, second);
        for outcome in [first, second] {
            match outcome {
                // The leader may or may not have committed it: never retried.
                Err(CallError::Status(_)) => {}
                other => panic!("want a broken-stream error, got {other:?}"),
            }
        }
        // The ended stream is replaced; its first write is answered.
        match streams
            .forward(&channels, &url, &put(3), Duration::from_secs(10))
            .await
        {
            Ok(Ok(r)) => assert_eq!(r.revision, 3),
            other => panic!("{other:?}"),
        }
        assert_eq!(leader.opened.load(Ordering::SeqCst), 2);
    }
}
