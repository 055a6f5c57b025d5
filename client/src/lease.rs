//! Leases: grant, revoke, time-to-live, list, and a [`LeaseKeeper`] that renews a lease on its own.
//!
//! The keeper sends a keep-alive every TTL/3 (TTL as last granted by the server) on one keep-alive stream.
//! When the stream breaks it reopens on another endpoint, for as long as the lease can still be alive. The
//! server is the judge: the keeper reports the lease lost when a member says it is gone (TTL ≤ 0 in the
//! answer, as etcd answers for unknown leases). Without any answer it gives up only after the send time of
//! the last acknowledged keep-alive plus the TTL then granted plus one request deadline: a leader change
//! can take longer than a short TTL, but a new leader extends every lease by its election timeout on
//! promotion, so the lease usually survives a failover the client-side TTL alone would call fatal.

use std::time::Duration;

use cairn_proto::etcdserverpb::lease_client::LeaseClient;
use cairn_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::client::Client;
use crate::error::{Error, Result};

impl Client {
    /// Grants a lease of `ttl` seconds; `id` 0 lets the server choose the id. Not retried once sent.
    pub async fn lease_grant(&self, ttl: i64, id: i64) -> Result<LeaseGrantResponse> {
        let req = LeaseGrantRequest { ttl, id };
        let resp = self
            .unary(false, |ch, _| async move {
                Ok(LeaseClient::new(ch).lease_grant(req).await?.into_inner())
            })
            .await?;
        if !resp.error.is_empty() {
            return Err(Error::Server {
                code: tonic::Code::Unknown,
                message: resp.error,
            });
        }
        Ok(resp)
    }

    /// Revokes a lease, deleting every key attached to it. Not retried once sent.
    pub async fn lease_revoke(&self, id: i64) -> Result<LeaseRevokeResponse> {
        let req = LeaseRevokeRequest { id };
        self.unary(false, |ch, _| async move {
            Ok(LeaseClient::new(ch).lease_revoke(req).await?.into_inner())
        })
        .await
    }

    /// The remaining and granted TTL of a lease (TTL -1: the lease does not exist, as etcd reports it),
    /// with its keys when `keys` is set.
    pub async fn lease_time_to_live(&self, id: i64, keys: bool) -> Result<LeaseTimeToLiveResponse> {
        let req = LeaseTimeToLiveRequest { id, keys };
        self.unary(true, |ch, _| async move {
            Ok(LeaseClient::new(ch)
                .lease_time_to_live(req)
                .await?
                .into_inner())
        })
        .await
    }

    /// Every live lease.
    pub async fn leases(&self) -> Result<LeaseLeasesResponse> {
        self.unary(true, |ch, _| async move {
            Ok(LeaseClient::new(ch)
                .lease_leases(LeaseLeasesRequest {})
                .await?
                .into_inner())
        })
        .await
    }

    /// Renews a lease once. Renewing is idempotent, so this fails over like a read. Fails with
    /// [`Error::LeaseNotFound`] when the lease is gone.
    pub async fn lease_keep_alive_once(&self, id: i64) -> Result<LeaseKeepAliveResponse> {
        let resp = self
            .unary(true, |ch, _| async move {
                let (tx, rx) = mpsc::channel(1);
                // Capacity 1 and nothing sent yet: cannot fail.
                let _ = tx.try_send(LeaseKeepAliveRequest { id });
                let mut stream = LeaseClient::new(ch)
                    .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await?
                    .into_inner();
                match stream.message().await? {
                    Some(resp) => Ok(resp),
                    None => Err(tonic::Status::unavailable(
                        "keep-alive stream closed without an answer",
                    )),
                }
            })
            .await?;
        if resp.ttl <= 0 {
            return Err(Error::LeaseNotFound);
        }
        Ok(resp)
    }

    /// Starts renewing lease `id` in the background until the returned keeper is dropped.
    pub fn lease_keeper(&self, id: i64) -> LeaseKeeper {
        let (state_tx, state_rx) = watch::channel(KeeperState::Starting);
        let task = KeeperTask {
            client: self.clone(),
            id,
            state: state_tx,
        };
        let handle = tokio::spawn(task.run());
        LeaseKeeper {
            id,
            state: state_rx,
            task: handle,
        }
    }
}

/// What a [`LeaseKeeper`] knows about its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeeperState {
    /// No keep-alive acknowledged yet.
    Starting,
    /// The last keep-alive was acknowledged with this TTL in seconds.
    Alive {
        /// The TTL granted by the last renewal.
        ttl: i64,
    },
    /// The lease is gone; the keeper has stopped.
    Lost {
        /// Why the keeper gave up.
        reason: String,
    },
}

/// Keeps a lease alive in the background; stops when dropped. See the module docs.
#[derive(Debug)]
pub struct LeaseKeeper {
    id: i64,
    state: watch::Receiver<KeeperState>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaseKeeper {
    /// The lease id.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The current state.
    pub fn state(&self) -> KeeperState {
        self.state.borrow().clone()
    }

    /// The TTL granted by the last acknowledged renewal.
    pub fn ttl(&self) -> Option<i64> {
        match &*self.state.borrow() {
            KeeperState::Alive { ttl } => Some(*ttl),
            _ => None,
        }
    }

    /// `Err(LeaseLost)` once the lease is lost, `Ok` before.
    pub fn check(&self) -> Result<()> {
        match &*self.state.borrow() {
            KeeperState::Lost { reason } => Err(Error::LeaseLost {
                id: self.id,
                reason: reason.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Waits until the lease is lost and returns why.
    pub async fn lost(&mut self) -> Error {
        loop {
            if let Err(e) = self.check() {
                return e;
            }
            if self.state.changed().await.is_err() {
                return Error::LeaseLost {
                    id: self.id,
                    reason: "keeper stopped".into(),
                };
            }
        }
    }

    /// Waits until the first renewal is acknowledged (or the lease is found lost).
    pub async fn ready(&mut self) -> Result<i64> {
        loop {
            match &*self.state.borrow_and_update() {
                KeeperState::Alive { ttl } => return Ok(*ttl),
                KeeperState::Lost { reason } => {
                    return Err(Error::LeaseLost {
                        id: self.id,
                        reason: reason.clone(),
                    })
                }
                KeeperState::Starting => {}
            }
            if self.state.changed().await.is_err() {
                return Err(Error::LeaseLost {
                    id: self.id,
                    reason: "keeper stopped".into(),
                });
            }
        }
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct KeeperTask {
    client: Client,
    id: i64,
    state: watch::Sender<KeeperState>,
}

enum StreamEnd {
    Lost(String),
    Broken { endpoint: usize },
}

impl KeeperTask {
    async fn run(self) {
        // Until a first answer gives the TTL, give the lease one request deadline to be found.
        let mut expires_at = Instant::now() + self.client.options().request_timeout;
        let mut attempt = 0u32;
        loop {
            let reason = match self.client.pick(expires_at).await {
                Err(e) => format!("no member renewed it within its TTL: {e}"),
                Ok(picked) => match self
                    .stream(
                        self.client.authed(picked.channel),
                        picked.index,
                        &mut expires_at,
                    )
                    .await
                {
                    StreamEnd::Lost(reason) => reason,
                    StreamEnd::Broken { endpoint } => {
                        self.client.mark_failed(endpoint, true).await;
                        attempt += 1;
                        let pause = self.client.backoff(attempt);
                        if Instant::now() + pause < expires_at {
                            tokio::time::sleep(pause).await;
                            continue;
                        }
                        "no member renewed it within its TTL".to_string()
                    }
                },
            };
            tracing::warn!(lease = self.id, %reason, "lease lost");
            let _ = self.state.send(KeeperState::Lost { reason });
            return;
        }
    }

    async fn stream(
        &self,
        channel: crate::client::AuthedChannel,
        endpoint: usize,
        expires_at: &mut Instant,
    ) -> StreamEnd {
        let (tx, rx) = mpsc::channel(4);
        // The first keep-alive is queued before the stream opens: a server may hold back its response
        // headers until it has something to answer.
        let mut sent_at = Instant::now();
        // Capacity 4 and nothing sent yet: cannot fail.
        let _ = tx.try_send(LeaseKeepAliveRequest { id: self.id });
        let open = tokio::time::timeout_at(
            *expires_at,
            LeaseClient::new(channel)
                .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
        .await;
        let mut stream = match open {
            Ok(Ok(s)) => s.into_inner(),
            Ok(Err(status)) if status.code() == tonic::Code::NotFound => {
                return StreamEnd::Lost(status.message().to_string())
            }
            _ => return StreamEnd::Broken { endpoint },
        };
        loop {
            // A member without a leader may hold the request: give it one request deadline, then move on.
            let wait = (*expires_at).min(Instant::now() + self.client.options().request_timeout);
            let answer = tokio::time::timeout_at(wait, stream.message()).await;
            let resp = match answer {
                Ok(Ok(Some(resp))) => resp,
                Ok(Err(status)) if status.code() == tonic::Code::NotFound => {
                    return StreamEnd::Lost(status.message().to_string())
                }
                _ => return StreamEnd::Broken { endpoint },
            };
            if resp.ttl <= 0 {
                return StreamEnd::Lost("lease not found (expired or revoked)".into());
            }
            *expires_at = sent_at
                + Duration::from_secs(resp.ttl as u64)
                + self.client.options().request_timeout;
            let _ = self.state.send(KeeperState::Alive { ttl: resp.ttl });
            let interval = Duration::from_millis((resp.ttl as u64 * 1000 / 3).max(100));
            tokio::time::sleep(interval).await;
            sent_at = Instant::now();
            if tx
                .send(LeaseKeepAliveRequest { id: self.id })
                .await
                .is_err()
            {
                return StreamEnd::Broken { endpoint };
            }
        }
    }
}
