//! A distributed mutex built only on KV, Txn, Watch and a session lease.
//!
//! Each contender writes `<prefix>/<lease id in hex>` under its session lease (if absent) in one Txn that also
//! reads the current owner: the key under the prefix with the lowest create revision. A contender holds the
//! lock when its own key has that lowest create revision; otherwise it waits for the deletion of the key
//! just before its own (the next lower create revision), then checks again. Contenders are served in create
//! order and nobody is woken for a deletion that does not concern it.
//!
//! The create revision of the holder's key is its fencing token: every later holder has a larger one, so a
//! storage service can refuse writes carrying a smaller token than the last it saw.

use cairn_proto::etcdserverpb::response_op::Response;
use cairn_proto::mvccpb::KeyValue;

use crate::client::Client;
use crate::concurrency::session::Session;
use crate::error::{Error, Result};
use crate::kv::{GetOptions, PutOptions, SortOrder, SortTarget};
use crate::txn::{Compare, Txn, TxnOp};
use crate::watch::WatchOptions;

/// Proof of holding a [`Mutex`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The holder's key.
    pub key: Vec<u8>,
    /// The create revision of that key: strictly larger for every later holder.
    pub revision: i64,
}

/// A lock named by a key prefix, held through a [`Session`].
#[derive(Debug)]
pub struct Mutex {
    client: Client,
    prefix: Vec<u8>,
    key: Vec<u8>,
    lease: i64,
    revision: Option<i64>,
}

/// The key under `prefix` with the lowest create revision, and the header revision of the read.
pub(crate) fn first_owner_op(prefix: &[u8]) -> TxnOp {
    TxnOp::get(
        prefix.to_vec(),
        Some(
            GetOptions::new()
                .with_prefix()
                .with_sort(SortTarget::Create, SortOrder::Ascend)
                .with_limit(1),
        ),
    )
}

/// Creates `key` under `lease` with `value` unless it exists; returns (own kv, owner kv).
pub(crate) async fn create_and_find_owner(
    client: &Client,
    prefix: &[u8],
    key: &[u8],
    value: &[u8],
    lease: i64,
) -> Result<(KeyValue, Option<KeyValue>)> {
    let txn = Txn::new()
        .when([Compare::create_revision(key.to_vec()).eq(0)])
        .and_then([
            TxnOp::put(
                key.to_vec(),
                value.to_vec(),
                Some(PutOptions::new().with_lease(lease)),
            ),
            first_owner_op(prefix),
            TxnOp::get(key.to_vec(), None),
        ])
        .or_else([first_owner_op(prefix), TxnOp::get(key.to_vec(), None)]);
    let resp = client.txn(txn).await?;
    let mut ranges = resp.responses.into_iter().filter_map(|r| match r.response {
        Some(Response::ResponseRange(r)) => Some(r),
        _ => None,
    });
    let owner = ranges.next().and_then(|r| r.kvs.into_iter().next());
    let own = ranges
        .next()
        .and_then(|r| r.kvs.into_iter().next())
        .ok_or_else(|| Error::LeaseLost {
            id: lease,
            reason: "own key vanished right after creation".into(),
        })?;
    Ok((own, owner))
}

/// Waits until no key under `prefix` has a create revision below `below`: repeatedly finds the key just
/// before ours and waits for its deletion.
pub(crate) async fn wait_deletes(client: &Client, prefix: &[u8], below: i64) -> Result<()> {
    loop {
        let resp = client
            .get(
                prefix.to_vec(),
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_max_create_revision(below - 1)
                        .with_sort(SortTarget::Create, SortOrder::Descend)
                        .with_limit(1),
                ),
            )
            .await?;
        let Some(prev) = resp.kvs.into_iter().next() else {
            return Ok(());
        };
        let at = resp.header.map(|h| h.revision).unwrap_or(0);
        wait_delete(client, &prev.key, at).await?;
    }
}

/// Waits for a DELETE of `key` after revision `at`.
async fn wait_delete(client: &Client, key: &[u8], at: i64) -> Result<()> {
    let mut watch = client
        .watch(
            key.to_vec(),
            Some(
                WatchOptions::new()
                    .with_start_revision(at + 1)
                    .with_no_put(),
            ),
        )
        .await?;
    while let Some(batch) = watch.message().await {
        if !batch?.events.is_empty() {
            return Ok(());
        }
    }
    Err(Error::WatchCanceled {
        reason: "watch ended while waiting for a deletion".into(),
    })
}

impl Mutex {
    /// A mutex named `prefix` for `session`'s lease.
    pub fn new(session: &Session, prefix: impl Into<Vec<u8>>) -> Mutex {
        let mut prefix = prefix.into();
        if !prefix.ends_with(b"/") {
            prefix.push(b'/');
        }
        let key = [
            prefix.as_slice(),
            format!("{:x}", session.lease()).as_bytes(),
        ]
        .concat();
        Mutex {
            client: session.client().clone(),
            prefix,
            key,
            lease: session.lease(),
            revision: None,
        }
    }

    /// Waits until the lock is held and returns the fencing token. Dropping the future while it waits leaves
    /// the contender key in place: call [`Mutex::unlock`] (or end the session) to withdraw.
    pub async fn lock(&mut self) -> Result<Fence> {
        let (own, owner) =
            create_and_find_owner(&self.client, &self.prefix, &self.key, b"", self.lease).await?;
        let my_rev = own.create_revision;
        self.revision = Some(my_rev);
        let held = owner.map(|o| o.create_revision == my_rev).unwrap_or(false);
        if !held {
            if let Err(e) = wait_deletes(&self.client, &self.prefix, my_rev).await {
                let _ = self.unlock().await;
                return Err(e);
            }
        }
        // The session may have expired while waiting: then our key is gone and someone else may hold it.
        let check = self.client.get(self.key.clone(), None).await?;
        match check.kvs.first() {
            Some(kv) if kv.create_revision == my_rev => Ok(Fence {
                key: self.key.clone(),
                revision: my_rev,
            }),
            _ => Err(Error::LeaseLost {
                id: self.lease,
                reason: "session expired while waiting for the lock".into(),
            }),
        }
    }

    /// Releases the lock (or withdraws from the queue).
    pub async fn unlock(&mut self) -> Result<()> {
        self.client.delete(self.key.clone(), None).await?;
        self.revision = None;
        Ok(())
    }

    /// This contender's key.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The fencing revision of the last successful `lock`, until `unlock`.
    pub fn revision(&self) -> Option<i64> {
        self.revision
    }
}
