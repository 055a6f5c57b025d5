//! Leader election built only on KV, Txn, Watch and a session lease, as etcd's concurrency package does it.
//!
//! A candidate writes `<prefix>/<lease id in hex>` with its value under its session lease; the leader is the
//! key under the prefix with the lowest create revision. Campaigning waits for every earlier key to go.
//! The leader changes its value with `proclaim` (guarded by its key's create revision, so a deposed leader
//! cannot overwrite anything) and steps down with `resign`. `observe` streams the current leader's value and
//! every later change.

use cairn_proto::mvccpb::KeyValue;
use futures::Stream;
use tokio::sync::mpsc;

use crate::client::Client;
use crate::concurrency::mutex::{create_and_find_owner, wait_deletes};
use crate::concurrency::session::Session;
use crate::error::{Error, Result};
use crate::kv::{GetOptions, PutOptions, SortOrder, SortTarget};
use crate::txn::{Compare, Txn, TxnOp};
use crate::watch::WatchOptions;

/// The leader's key and its create revision (the term of its leadership).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderKey {
    /// The key under the election prefix.
    pub key: Vec<u8>,
    /// Its create revision: larger for every later leader.
    pub revision: i64,
}

/// One election, named by a key prefix.
#[derive(Debug, Clone)]
pub struct Election {
    client: Client,
    prefix: Vec<u8>,
    leader: Option<LeaderKey>,
    lease: i64,
}

impl Election {
    /// An election named `prefix` for `session`'s lease.
    pub fn new(session: &Session, prefix: impl Into<Vec<u8>>) -> Election {
        Election {
            client: session.client().clone(),
            prefix: with_slash(prefix.into()),
            leader: None,
            lease: session.lease(),
        }
    }

    /// An election handle with no session, for `leader` and `observe` only.
    pub fn observer(client: &Client, prefix: impl Into<Vec<u8>>) -> Election {
        Election {
            client: client.clone(),
            prefix: with_slash(prefix.into()),
            leader: None,
            lease: 0,
        }
    }

    /// Waits until this candidate is the leader, announcing `value`.
    pub async fn campaign(&mut self, value: impl Into<Vec<u8>>) -> Result<LeaderKey> {
        if self.lease == 0 {
            return Err(Error::InvalidArgument(
                "an observer cannot campaign; make the election with a session".into(),
            ));
        }
        let value = value.into();
        let key = [
            self.prefix.as_slice(),
            format!("{:x}", self.lease).as_bytes(),
        ]
        .concat();
        let (own, _) =
            create_and_find_owner(&self.client, &self.prefix, &key, &value, self.lease).await?;
        let leader = LeaderKey {
            key,
            revision: own.create_revision,
        };
        self.leader = Some(leader.clone());
        // Campaigning again with the same session resumes the candidacy: bring the value up to date.
        if own.value != value {
            self.proclaim(value).await?;
        }
        if let Err(e) = wait_deletes(&self.client, &self.prefix, leader.revision).await {
            let _ = self.resign().await;
            return Err(e);
        }
        Ok(leader)
    }

    /// Changes the leader's value; fails with `InvalidArgument` when this candidate is not the leader.
    pub async fn proclaim(&self, value: impl Into<Vec<u8>>) -> Result<()> {
        let leader = self.leader.as_ref().ok_or_else(not_leader)?;
        let resp = self
            .client
            .txn(
                Txn::new()
                    .when([Compare::create_revision(leader.key.clone()).eq(leader.revision)])
                    .and_then([TxnOp::put(
                        leader.key.clone(),
                        value.into(),
                        Some(PutOptions::new().with_lease(self.lease)),
                    )]),
            )
            .await?;
        if !resp.succeeded {
            return Err(not_leader());
        }
        Ok(())
    }

    /// Steps down (deletes this candidate's key if it is still the same key).
    pub async fn resign(&mut self) -> Result<()> {
        let Some(leader) = self.leader.take() else {
            return Ok(());
        };
        self.client
            .txn(
                Txn::new()
                    .when([Compare::create_revision(leader.key.clone()).eq(leader.revision)])
                    .and_then([TxnOp::delete(leader.key, None)]),
            )
            .await?;
        Ok(())
    }

    /// The current leader's key-value, if any.
    pub async fn leader(&self) -> Result<Option<KeyValue>> {
        Ok(self
            .client
            .get(self.prefix.clone(), Some(first_by_create()))
            .await?
            .kvs
            .into_iter()
            .next())
    }

    /// This candidate's leadership, once `campaign` has returned.
    pub fn leader_key(&self) -> Option<&LeaderKey> {
        self.leader.as_ref()
    }

    /// Streams the leader's key-value now and after every change (new value or new leader), until dropped.
    pub fn observe(&self) -> impl Stream<Item = Result<KeyValue>> + Send + Unpin + 'static {
        let (tx, rx) = mpsc::channel(16);
        let client = self.client.clone();
        let prefix = self.prefix.clone();
        tokio::spawn(async move {
            if let Err(e) = observe_loop(&client, &prefix, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

fn with_slash(mut prefix: Vec<u8>) -> Vec<u8> {
    if !prefix.ends_with(b"/") {
        prefix.push(b'/');
    }
    prefix
}

fn not_leader() -> Error {
    Error::InvalidArgument("election: not leader".into())
}

fn first_by_create() -> GetOptions {
    GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend)
        .with_limit(1)
}

async fn observe_loop(
    client: &Client,
    prefix: &[u8],
    tx: &mpsc::Sender<Result<KeyValue>>,
) -> Result<()> {
    let mut last_sent: Option<KeyValue> = None;
    loop {
        let resp = client.get(prefix.to_vec(), Some(first_by_create())).await?;
        let at = resp.header.map(|h| h.revision).unwrap_or(0);
        let leader = match resp.kvs.into_iter().next() {
            Some(kv) => kv,
            None => {
                // No leader: the first key created under the prefix becomes the leader.
                let mut w = client
                    .watch(
                        prefix.to_vec(),
                        Some(
                            WatchOptions::new()
                                .with_prefix()
                                .with_start_revision(at + 1)
                                .with_no_delete(),
                        ),
                    )
                    .await?;
                let mut found = None;
                while found.is_none() {
                    let Some(batch) = w.message().await else {
                        return Ok(());
                    };
                    found = batch?.events.into_iter().find_map(|e| e.kv);
                }
                found.expect("loop exits only with a key")
            }
        };
        if last_sent.as_ref() != Some(&leader) {
            if tx.send(Ok(leader.clone())).await.is_err() {
                return Ok(());
            }
            last_sent = Some(leader.clone());
        }
        // Follow the leader's key until it is deleted.
        let mut w = client
            .watch(
                leader.key.clone(),
                Some(WatchOptions::new().with_start_revision(leader.mod_revision + 1)),
            )
            .await?;
        'follow: loop {
            tokio::select! {
                _ = tx.closed() => return Ok(()),
                m = w.message() => {
                    let Some(batch) = m else { return Ok(()) };
                    for e in batch?.events {
                        if e.r#type == cairn_proto::mvccpb::event::EventType::Delete as i32 {
                            break 'follow;
                        }
                        if let Some(kv) = e.kv {
                            if tx.send(Ok(kv.clone())).await.is_err() {
                                return Ok(());
                            }
                            last_sent = Some(kv);
                        }
                    }
                }
            }
        }
    }
}
