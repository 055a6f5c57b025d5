//! Objects in the store, over `cairn-client` (the etcd API) only.
//!
//! Layout and versioning follow Kubernetes: an object lives at `/registry/<resource>/<namespace>/<name>`
//! (cluster-scoped: `/registry/<resource>/<name>`) as JSON without its `resourceVersion`, which is the
//! key's mod_revision when read; a list's resourceVersion is the revision it was read at. Every write
//! is one Txn guarded on the key's revision (create: `create_revision == 0`; update and delete:
//! `mod_revision == expected`), and side effects that must move with the object (quota usage, IP and
//! port allocations) ride in the same Txn as [`SideEffects`], so a failed or retried write leaves none of
//! them behind. This module never imports `apiserver`.

pub mod alloc;
pub mod encryption;

use std::time::Duration;

use cairn_client::proto::EventType;
use cairn_client::{
    prefix_end, Client, Compare, DeleteOptions, Error as ClientError, GetOptions, Txn, TxnOp,
    WatchOptions, WatchStream,
};
use serde_json::Value;

use crate::api::{meta, Resource};
use encryption::Transformer;

/// What can go wrong reading or writing objects.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("already exists")]
    AlreadyExists,
    /// A revision precondition failed: the object changed since it was read.
    #[error("the object has been modified")]
    Conflict,
    /// The requested revision was compacted; `current` is the store's revision when known.
    #[error("too old resource version: {requested} ({current})")]
    Expired { requested: i64, current: i64 },
    /// The store could not be reached or had no leader.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store did not answer in time, or a write's outcome is unknown.
    #[error("store timeout: {0}")]
    Timeout(String),
    /// A stored value could not be decoded or decrypted.
    #[error("stored object is corrupt: {0}")]
    Corrupt(String),
    #[error("store error: {0}")]
    Internal(String),
}

impl From<ClientError> for StoreError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Compacted { compact_revision } => StoreError::Expired {
                requested: 0,
                current: compact_revision,
            },
            ClientError::Unavailable { .. } | ClientError::NoLeader => {
                StoreError::Unavailable(e.to_string())
            }
            ClientError::DeadlineExceeded { .. } | ClientError::OutcomeUnknown { .. } => {
                StoreError::Timeout(e.to_string())
            }
            other => StoreError::Internal(other.to_string()),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Compares and operations that must commit together with an object write.
#[derive(Default)]
pub struct SideEffects {
    pub compares: Vec<Compare>,
    pub ops: Vec<TxnOp>,
}

/// What list and watch read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReadRevision {
    /// The latest, confirmed with the leader.
    Latest,
    /// Whatever the member has (resourceVersion "0").
    Any,
    /// Exactly this revision.
    At(i64),
}

/// One page of a list.
pub struct ListPage {
    pub items: Vec<Value>,
    /// The revision the page was read at.
    pub revision: i64,
    /// The key to continue from, when more keys remain.
    pub next_key: Option<String>,
    /// Keys left after this page (an upper bound of the matching objects left).
    pub remaining: i64,
}

/// An object change seen by a watch.
#[derive(Debug)]
pub enum Change {
    /// The key was created or updated; `prev` is the state before (absent for a create).
    Put { object: Value, prev: Option<Prior> },
    /// The key was deleted; `object` is its last state with the deletion's resourceVersion.
    Delete { object: Value },
}

/// The state of an object before a change, parsed only when someone looks inside it (a watch with
/// a selector deciding between ADDED, MODIFIED and DELETED). Most watchers only need to know that
/// it existed, and parsing every previous state cost as much as parsing the changes themselves.
#[derive(Debug)]
pub struct Prior {
    plain: Vec<u8>,
    revision: i64,
    parsed: std::sync::OnceLock<Value>,
}

impl Prior {
    /// The object as it was (`null` if what was stored is not JSON, which `decode` would have
    /// refused for the object itself).
    pub fn object(&self) -> &Value {
        self.parsed.get_or_init(|| {
            let mut v: Value = serde_json::from_slice(&self.plain).unwrap_or(Value::Null);
            meta::set_resource_version(&mut v, self.revision);
            v
        })
    }
}

/// The object store.
#[derive(Clone)]
pub struct Registry {
    client: Client,
    transformer: Transformer,
}

/// Store keys of a resource's objects.
pub fn key(r: &Resource, namespace: &str, name: &str) -> String {
    if r.namespaced {
        format!("/registry/{}/{namespace}/{name}", r.plural)
    } else {
        format!("/registry/{}/{name}", r.plural)
    }
}

/// The key prefix of a resource's objects, in one namespace or all.
pub fn prefix(r: &Resource, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) if r.namespaced => format!("/registry/{}/{ns}/", r.plural),
        _ => r.key_prefix(),
    }
}

impl Registry {
    pub fn new(client: Client, transformer: Transformer) -> Registry {
        Registry {
            client,
            transformer,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    fn encode(&self, r: &Resource, key: &str, obj: &Value) -> Result<Vec<u8>> {
        let mut stored = obj.clone();
        if let Some(m) = stored.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        let bytes = serde_json::to_vec(&stored).map_err(|e| StoreError::Internal(e.to_string()))?;
        self.transformer.encrypt(r.plural, key, bytes)
    }

    fn decode(&self, r: &Resource, key: &[u8], value: &[u8], rev: i64) -> Result<Value> {
        let key = String::from_utf8_lossy(key);
        let plain = self.transformer.decrypt(r.plural, &key, value)?;
        let mut obj: Value = serde_json::from_slice(&plain)
            .map_err(|e| StoreError::Corrupt(format!("{key}: {e}")))?;
        meta::set_resource_version(&mut obj, rev);
        Ok(obj)
    }

    /// The object, read linearizably; its resourceVersion is the key's mod_revision.
    pub async fn get(&self, r: &Resource, namespace: &str, name: &str) -> Result<Value> {
        self.get_at(r, namespace, name, ReadRevision::Latest).await
    }

    /// The object as of `rev` (`Any`: whatever the member has).
    pub async fn get_at(
        &self,
        r: &Resource,
        namespace: &str,
        name: &str,
        rev: ReadRevision,
    ) -> Result<Value> {
        let k = key(r, namespace, name);
        let opts = match rev {
            ReadRevision::Latest => GetOptions::new(),
            ReadRevision::Any => GetOptions::new().with_serializable(),
            ReadRevision::At(n) => GetOptions::new().with_revision(n),
        };
        let resp = self.client.get(k.as_str(), Some(opts)).await?;
        let kv = resp.kvs.first().ok_or(StoreError::NotFound)?;
        self.decode(r, &kv.key, &kv.value, kv.mod_revision)
    }

    /// Runs `guard` and `op` on `key`, with the side effects, as one Txn. On failure, tells whether
    /// the key exists, so the caller can tell a missing object from a moved one.
    async fn guarded(
        &self,
        key: &str,
        guard: Compare,
        op: TxnOp,
        side: SideEffects,
    ) -> Result<Guarded> {
        let txn = Txn::new()
            .when(std::iter::once(guard).chain(side.compares))
            .and_then(std::iter::once(op).chain(side.ops))
            .or_else([TxnOp::get(key, Some(GetOptions::new().with_count_only()))]);
        let resp = self.client.txn(txn).await?;
        let revision = resp.header.as_ref().map(|h| h.revision).unwrap_or(0);
        Ok(if resp.succeeded {
            Guarded::Done(revision)
        } else {
            Guarded::Failed {
                exists: first_count(&resp.responses) > 0,
            }
        })
    }

    /// Stores a new object; fails with `AlreadyExists` when the key exists, `Conflict` when only a
    /// side effect's guard failed.
    pub async fn create(&self, r: &Resource, obj: Value, side: SideEffects) -> Result<Value> {
        let k = key(r, meta::namespace(&obj), meta::name(&obj));
        let bytes = self.encode(r, &k, &obj)?;
        let guard = Compare::create_revision(k.as_str()).eq(0);
        let guarded_side = !side.compares.is_empty();
        match self
            .guarded(&k, guard, TxnOp::put(k.as_str(), bytes, None), side)
            .await?
        {
            Guarded::Done(rev) => Ok(with_rv(obj, rev)),
            Guarded::Failed { exists } if exists || !guarded_side => Err(StoreError::AlreadyExists),
            Guarded::Failed { .. } => Err(StoreError::Conflict),
        }
    }

    /// Replaces the object stored at revision `expected`; `Conflict` when it changed, `NotFound` when
    /// it is gone.
    pub async fn update(
        &self,
        r: &Resource,
        obj: Value,
        expected: i64,
        side: SideEffects,
    ) -> Result<Value> {
        let k = key(r, meta::namespace(&obj), meta::name(&obj));
        let bytes = self.encode(r, &k, &obj)?;
        let guard = Compare::mod_revision(k.as_str()).eq(expected);
        match self
            .guarded(&k, guard, TxnOp::put(k.as_str(), bytes, None), side)
            .await?
        {
            Guarded::Done(rev) => Ok(with_rv(obj, rev)),
            Guarded::Failed { exists: false } => Err(StoreError::NotFound),
            Guarded::Failed { exists: true } => Err(StoreError::Conflict),
        }
    }

    /// Deletes the object stored at revision `expected`; returns the deletion's revision.
    pub async fn delete(
        &self,
        r: &Resource,
        namespace: &str,
        name: &str,
        expected: i64,
        side: SideEffects,
    ) -> Result<i64> {
        let k = key(r, namespace, name);
        let guard = Compare::mod_revision(k.as_str()).eq(expected);
        let op = TxnOp::delete(k.as_str(), Some(DeleteOptions::new()));
        match self.guarded(&k, guard, op, side).await? {
            Guarded::Done(rev) => Ok(rev),
            Guarded::Failed { exists: false } => Err(StoreError::NotFound),
            Guarded::Failed { exists: true } => Err(StoreError::Conflict),
        }
    }

    /// Reads up to `limit` objects (0: all) from `start_key` (inclusive) within `prefix` at `rev`.
    pub async fn list_page(
        &self,
        r: &Resource,
        prefix: &str,
        start_key: Option<&str>,
        rev: ReadRevision,
        limit: i64,
    ) -> Result<ListPage> {
        let end = prefix_end(prefix.as_bytes());
        let start = start_key.unwrap_or(prefix);
        let mut opts = GetOptions::new().with_range(end);
        match rev {
            ReadRevision::Latest => {}
            ReadRevision::Any => opts = opts.with_serializable(),
            ReadRevision::At(n) => opts = opts.with_revision(n),
        }
        if limit > 0 {
            opts = opts.with_limit(limit);
        }
        let resp = self
            .client
            .get(start, Some(opts))
            .await
            .map_err(|e| match e {
                ClientError::Compacted { .. } => StoreError::Expired {
                    requested: match rev {
                        ReadRevision::At(n) => n,
                        _ => 0,
                    },
                    current: 0,
                },
                ClientError::FutureRevision => StoreError::Timeout(format!(
                    "Too large resource version: {}",
                    match rev {
                        ReadRevision::At(n) => n,
                        _ => 0,
                    }
                )),
                other => other.into(),
            })?;
        let revision = resp.header.as_ref().map(|h| h.revision).unwrap_or(0);
        let mut items = Vec::with_capacity(resp.kvs.len());
        for kv in &resp.kvs {
            items.push(self.decode(r, &kv.key, &kv.value, kv.mod_revision)?);
        }
        let next_key = if resp.more {
            resp.kvs.last().map(|kv| {
                let mut k = String::from_utf8_lossy(&kv.key).into_owned();
                k.push('\0');
                k
            })
        } else {
            None
        };
        let remaining = resp.count - resp.kvs.len() as i64;
        Ok(ListPage {
            items,
            revision: match rev {
                ReadRevision::At(n) => n,
                _ => revision,
            },
            next_key,
            remaining,
        })
    }

    /// Every object under `prefix`, read in chunks at one revision.
    pub async fn list_all(
        &self,
        r: &Resource,
        prefix: &str,
        rev: ReadRevision,
    ) -> Result<ListPage> {
        let mut page = self.list_page(r, prefix, None, rev, 1000).await?;
        let mut next = page.next_key.take();
        while let Some(k) = next {
            let more = self
                .list_page(r, prefix, Some(&k), ReadRevision::At(page.revision), 1000)
                .await?;
            page.items.extend(more.items);
            next = more.next_key;
        }
        page.remaining = 0;
        Ok(page)
    }

    /// Watches `prefix` from revision `from` (inclusive).
    pub async fn watch(&self, r: &'static Resource, prefix: &str, from: i64) -> Result<Watch> {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_prev_kv()
            .with_progress_notify()
            .with_start_revision(from);
        let stream = self.client.watch(prefix, Some(opts)).await?;
        Ok(Watch {
            stream,
            resource: r,
            registry: self.clone(),
        })
    }

    /// The store's current revision.
    pub async fn current_revision(&self) -> Result<i64> {
        let resp = self
            .client
            .get(
                "/registry/",
                Some(GetOptions::new().with_count_only().with_limit(1)),
            )
            .await?;
        Ok(resp.header.map(|h| h.revision).unwrap_or(0))
    }

    /// The decode path, for callers that read raw key-values (side-effect reads in a Txn).
    pub fn decode_kv(&self, r: &Resource, kv: &cairn_client::proto::KeyValue) -> Result<Value> {
        self.decode(r, &kv.key, &kv.value, kv.mod_revision)
    }

    pub fn encode_for(&self, r: &Resource, obj: &Value) -> Result<(String, Vec<u8>)> {
        let k = key(r, meta::namespace(obj), meta::name(obj));
        let bytes = self.encode(r, &k, obj)?;
        Ok((k, bytes))
    }
}

enum Guarded {
    Done(i64),
    Failed { exists: bool },
}

fn with_rv(mut obj: Value, rev: i64) -> Value {
    meta::set_resource_version(&mut obj, rev);
    obj
}

fn first_count(responses: &[cairn_client::proto::ResponseOp]) -> i64 {
    use cairn_client::proto::response_op::Response;
    match responses.first().and_then(|r| r.response.as_ref()) {
        Some(Response::ResponseRange(rr)) => rr.count,
        _ => 0,
    }
}

/// A watch on one resource's keys, decoding store events into object changes.
pub struct Watch {
    stream: WatchStream,
    resource: &'static Resource,
    registry: Registry,
}

/// One batch of changes, or a progress mark (no changes) at `revision`.
pub struct ChangeBatch {
    pub changes: Vec<Change>,
    pub revision: i64,
}

impl Watch {
    /// The next batch; `None` when the watch ended. Compaction of the requested history is `Expired`.
    pub async fn next(&mut self) -> Option<Result<ChangeBatch>> {
        let resp = match self.stream.message().await? {
            Ok(r) => r,
            Err(ClientError::Compacted { compact_revision }) => {
                return Some(Err(StoreError::Expired {
                    requested: 0,
                    current: compact_revision,
                }))
            }
            Err(e) => return Some(Err(e.into())),
        };
        let mut changes = Vec::with_capacity(resp.events.len());
        let mut revision = resp.revision();
        for ev in resp.events {
            let Some(kv) = ev.kv else { continue };
            revision = kv.mod_revision;
            let decoded = if ev.r#type == EventType::Delete as i32 {
                let Some(prev) = ev.prev_kv else { continue };
                self.registry
                    .decode(self.resource, &prev.key, &prev.value, kv.mod_revision)
                    .map(|object| Change::Delete { object })
            } else {
                let prev = match ev.prev_kv {
                    Some(p) => Some(
                        self.registry
                            .transformer
                            .decrypt(
                                self.resource.plural,
                                &String::from_utf8_lossy(&p.key),
                                &p.value,
                            )
                            .map(|plain| Prior {
                                plain,
                                revision: p.mod_revision,
                                parsed: std::sync::OnceLock::new(),
                            }),
                    ),
                    None => None,
                }
                .transpose();
                prev.and_then(|prev| {
                    self.registry
                        .decode(self.resource, &kv.key, &kv.value, kv.mod_revision)
                        .map(|object| Change::Put { object, prev })
                })
            };
            match decoded {
                Ok(c) => changes.push(c),
                Err(e) => return Some(Err(e)),
            }
        }
        Some(Ok(ChangeBatch { changes, revision }))
    }

    /// Asks the store for a progress mark.
    pub fn request_progress(&self) {
        let _ = self.stream.request_progress();
    }
}

/// How long store calls may take before the API server answers 504.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
