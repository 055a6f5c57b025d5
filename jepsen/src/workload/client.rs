//! The workloads' door to the store: a thin layer over `cairn-client` with the operations they
//! need (get, put, guarded transactions, prefix reads, watches, leases, membership). Each
//! connection talks to exactly one member, so a fault is seen rather than failed over.
//!
//! Errors carry whether the request certainly did not take effect ([`ClientError::definite`]):
//! workloads record those as `fail` and every other error as `info`. `cairn-client` never
//! retries a write that may have left the client and reports it as `OutcomeUnknown`, so
//! "unavailable" and "no leader" on a write mean it was not applied.

use std::sync::Arc;
use std::time::Duration;

use cairn_client::proto::{Event, Member};
use cairn_client::{
    Client, Compare, ConnectOptions, Error, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
    WatchStream,
};
use tokio::sync::Mutex;

/// A failed request.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ClientError {
    pub code: tonic::Code,
    pub message: String,
    /// True when the request certainly had no effect.
    pub definite: bool,
}

impl From<Error> for ClientError {
    fn from(e: Error) -> Self {
        use tonic::Code::*;
        let definite = match &e {
            Error::OutcomeUnknown { .. } | Error::DeadlineExceeded { .. } => false,
            Error::Server { code, .. } => matches!(
                code,
                InvalidArgument
                    | FailedPrecondition
                    | NotFound
                    | AlreadyExists
                    | PermissionDenied
                    | Unauthenticated
                    | OutOfRange
                    | Unimplemented
            ),
            _ => true,
        };
        ClientError {
            code: e.code(),
            message: e.to_string(),
            definite,
        }
    }
}

/// A key-value pair as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: String,
    pub mod_revision: i64,
    pub lease: i64,
}

/// A guarded write: compare mod_revisions and values, then put and read.
#[derive(Clone, Debug, Default)]
pub struct Guarded {
    pub mod_revisions: Vec<(String, i64)>,
    pub values: Vec<(String, String)>,
    pub puts: Vec<(String, String)>,
    pub reads: Vec<String>,
}

/// A connection to one member, dialed on first use (the member may be down when a client
/// starts).
#[derive(Clone)]
pub struct Conn {
    url: String,
    options: ConnectOptions,
    timeout: Duration,
    client: Arc<Mutex<Option<Client>>>,
}

fn kv(k: cairn_client::proto::KeyValue) -> Kv {
    Kv {
        key: String::from_utf8_lossy(&k.key).into_owned(),
        value: String::from_utf8_lossy(&k.value).into_owned(),
        mod_revision: k.mod_revision,
        lease: k.lease,
    }
}

impl Conn {
    /// A connection to `url` with `options` (TLS, user) whose requests time out after `timeout`.
    pub fn connect(url: &str, options: &ConnectOptions, timeout: Duration) -> Conn {
        Conn {
            url: url.to_string(),
            options: options.clone(),
            timeout,
            client: Arc::default(),
        }
    }

    /// Bounds a call: a request the client library does not time out (or a dial that hangs)
    /// must not stall a workload; it becomes an unknown outcome.
    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        match tokio::time::timeout(self.timeout * 2 + Duration::from_secs(1), fut).await {
            Ok(r) => r,
            Err(_) => Err(ClientError {
                code: tonic::Code::DeadlineExceeded,
                message: "no answer within the harness's bound".into(),
                definite: false,
            }),
        }
    }

    async fn client(&self) -> Result<Client, ClientError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let options = self
            .options
            .clone()
            .with_dial_timeout(Duration::from_millis(500))
            .with_request_timeout(self.timeout);
        let c = Client::connect([self.url.as_str()], Some(options)).await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Reads one key; `serializable` reads the member's local state without a quorum round.
    pub async fn get(
        &self,
        key: &str,
        serializable: bool,
    ) -> Result<(Option<Kv>, i64), ClientError> {
        self.bounded(async {
            let mut opts = GetOptions::new();
            if serializable {
                opts = opts.with_serializable();
            }
            let r = self.client().await?.get(key, Some(opts)).await?;
            let rev = r.header.map(|h| h.revision).unwrap_or(0);
            Ok((r.kvs.into_iter().next().map(kv), rev))
        })
        .await
    }

    /// Every key under `prefix`.
    pub async fn get_prefix(&self, prefix: &str) -> Result<(Vec<Kv>, i64), ClientError> {
        self.bounded(async {
            let r = self
                .client()
                .await?
                .get(prefix, Some(GetOptions::new().with_prefix()))
                .await?;
            let rev = r.header.map(|h| h.revision).unwrap_or(0);
            Ok((r.kvs.into_iter().map(kv).collect(), rev))
        })
        .await
    }

    /// Puts `key`, optionally attached to a lease; returns the revision.
    pub async fn put(&self, key: &str, value: &str, lease: i64) -> Result<i64, ClientError> {
        self.bounded(async {
            let opts = (lease != 0).then(|| PutOptions::new().with_lease(lease));
            let r = self.client().await?.put(key, value, opts).await?;
            Ok(r.header.map(|h| h.revision).unwrap_or(0))
        })
        .await
    }

    /// A transaction: when every guard holds, the puts and then the reads run; returns whether
    /// the guards held, the revision and (on success) the values read.
    pub async fn guarded(&self, g: &Guarded) -> Result<(bool, i64, Vec<Option<Kv>>), ClientError> {
        self.bounded(async {
            let mut when: Vec<Compare> = g
                .mod_revisions
                .iter()
                .map(|(k, r)| Compare::mod_revision(k.as_str()).eq(*r))
                .collect();
            when.extend(
                g.values
                    .iter()
                    .map(|(k, v)| Compare::value(k.as_str()).eq(v.as_str())),
            );
            let mut then: Vec<TxnOp> = g
                .puts
                .iter()
                .map(|(k, v)| TxnOp::put(k.as_str(), v.as_str(), None))
                .collect();
            then.extend(g.reads.iter().map(|k| TxnOp::get(k.as_str(), None)));
            let r = self
                .client()
                .await?
                .txn(Txn::new().when(when).and_then(then))
                .await?;
            let rev = r.header.map(|h| h.revision).unwrap_or(0);
            let reads = r
                .responses
                .into_iter()
                .filter_map(|op| match op.response {
                    Some(cairn_client::proto::response_op::Response::ResponseRange(rr)) => {
                        Some(rr.kvs.into_iter().next().map(kv))
                    }
                    _ => None,
                })
                .collect();
            Ok((r.succeeded, rev, reads))
        })
        .await
    }

    /// Grants a lease; returns (id, ttl).
    pub async fn lease_grant(&self, ttl: i64) -> Result<(i64, i64), ClientError> {
        self.bounded(async {
            let r = self.client().await?.lease_grant(ttl, 0).await?;
            Ok((r.id, r.ttl))
        })
        .await
    }

    /// One keep-alive round; returns the TTL (<= 0: the lease is gone).
    pub async fn lease_keep_alive(&self, id: i64) -> Result<i64, ClientError> {
        self.bounded(async {
            match self.client().await?.lease_keep_alive_once(id).await {
                Ok(r) => Ok(r.ttl),
                Err(Error::LeaseNotFound) => Ok(0),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    /// Opens a watch on `prefix` from revision `from`, with progress notifications.
    pub async fn watch(
        &self,
        prefix: &str,
        from: i64,
        prev_kv: bool,
    ) -> Result<Watch, ClientError> {
        self.bounded(async {
            let mut opts = WatchOptions::new()
                .with_prefix()
                .with_start_revision(from)
                .with_progress_notify();
            if prev_kv {
                opts = opts.with_prev_kv();
            }
            let stream = self.client().await?.watch(prefix, Some(opts)).await?;
            Ok(Watch { stream })
        })
        .await
    }

    /// (leader id, this member's id) as the member reports them.
    pub async fn status(&self) -> Result<(u64, u64), ClientError> {
        self.bounded(async {
            let s = self.client().await?.status().await?;
            Ok((s.leader, s.header.map(|h| h.member_id).unwrap_or(0)))
        })
        .await
    }

    /// The cluster's members.
    pub async fn member_list(&self) -> Result<Vec<Member>, ClientError> {
        self.bounded(async { Ok(self.client().await?.member_list().await?.members) })
            .await
    }

    /// Removes a member.
    pub async fn member_remove(&self, id: u64) -> Result<(), ClientError> {
        self.bounded(async {
            self.client().await?.member_remove(id).await?;
            Ok(())
        })
        .await
    }

    /// Adds a voting member with the given peer URL; returns its id.
    pub async fn member_add(&self, peer_url: &str) -> Result<u64, ClientError> {
        self.bounded(async {
            let r = self
                .client()
                .await?
                .member_add(vec![peer_url.to_string()], false)
                .await?;
            Ok(r.member.map(|m| m.id).unwrap_or(0))
        })
        .await
    }
}

/// One watch batch: the events of whole revisions, or a progress notification (no events).
#[derive(Debug)]
pub struct Batch {
    /// The store revision the server reported with the batch.
    pub revision: i64,
    pub events: Vec<Event>,
}

/// An open watch; `cairn-client` resumes it by itself after a lost stream.
pub struct Watch {
    stream: WatchStream,
}

impl Watch {
    /// The next batch; `None` when the watch ended.
    pub async fn next(&mut self) -> Result<Option<Batch>, ClientError> {
        match self.stream.message().await {
            None => Ok(None),
            Some(Err(e)) => Err(e.into()),
            Some(Ok(r)) => Ok(Some(Batch {
                revision: r.revision(),
                events: r.events,
            })),
        }
    }

    /// Asks for a progress notification.
    pub async fn request_progress(&self) {
        let _ = self.stream.request_progress();
    }

    /// How many times the stream was reopened after a failure.
    pub fn resumes(&self) -> u64 {
        self.stream.resumes()
    }
}
