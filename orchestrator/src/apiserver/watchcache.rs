//! Watch fan-out, in the manner of kube-apiserver's watch cache: one store watch per resource, each
//! change decoded and encoded once, then offered to every API watch of that resource.
//!
//! A hub starts on the first watch of a resource, from the store's revision then; it keeps the most
//! recent changes so a watch that starts from a resourceVersion the hub has seen replays from its
//! history before going live, without a gap (it subscribes before it reads the history and drops
//! live changes it already replayed). A watch from before the hub's start, or one that falls so far
//! behind that the live channel overflows, is not served here: the caller falls back to a store
//! watch of its own, or ends the stream so the client re-watches from its last resourceVersion.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::api::{meta, Resource};
use crate::registry::{self, Change, Registry};

/// How many recent changes a hub keeps for watches that start a little in the past.
const HISTORY: usize = 4096;
/// How many changes a watch may fall behind the live channel before it is ended.
const CHANNEL: usize = 16384;

/// One change, decoded and encoded once for every watcher.
pub struct Cached {
    pub revision: i64,
    pub change: CachedChange,
}

pub enum CachedChange {
    /// Created or updated: the object, its JSON, and the state before (absent for a create).
    Put {
        object: Value,
        json: Bytes,
        prev: Option<crate::registry::Prior>,
    },
    /// Deleted: the last state (with the deletion's resourceVersion) and its JSON.
    Delete { object: Value, json: Bytes },
    /// No change at or below this revision is still to come.
    Progress,
}

impl Cached {
    pub fn namespace(&self) -> &str {
        match &self.change {
            CachedChange::Put { object, .. } | CachedChange::Delete { object, .. } => {
                meta::namespace(object)
            }
            CachedChange::Progress => "",
        }
    }
}

struct Hub {
    /// Every change from this revision on has been seen.
    start: i64,
    history: Arc<Mutex<VecDeque<Arc<Cached>>>>,
    live: broadcast::Sender<Arc<Cached>>,
    progress: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The hubs of all resources.
#[derive(Default)]
pub struct WatchCache {
    hubs: Mutex<HashMap<&'static str, Arc<Hub>>>,
}

/// A watch served by a hub.
pub struct Subscription {
    /// Changes from the requested revision up to the moment of subscribing.
    pub replay: Vec<Arc<Cached>>,
    /// Live changes; those at or below `replayed` are already in `replay`.
    pub live: broadcast::Receiver<Arc<Cached>>,
    pub replayed: i64,
    progress: Arc<tokio::sync::Notify>,
}

impl Subscription {
    /// Asks the hub's store watch for a progress mark (delivered to every subscriber).
    pub fn request_progress(&self) {
        self.progress.notify_one();
    }
}

fn encode(v: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

pub(crate) fn cached(c: Change) -> Cached {
    match c {
        Change::Put { object, prev } => Cached {
            revision: meta::resource_version(&object).parse().unwrap_or(0),
            change: CachedChange::Put {
                json: encode(&object),
                object,
                prev,
            },
        },
        Change::Delete { object } => Cached {
            revision: meta::resource_version(&object).parse().unwrap_or(0),
            change: CachedChange::Delete {
                json: encode(&object),
                object,
            },
        },
    }
}

impl WatchCache {
    /// Subscribes to `r`'s changes from revision `from` (inclusive); `None` when the hub cannot serve
    /// that start (it began later, or its history no longer reaches back that far).
    pub async fn subscribe(
        &self,
        registry: &Registry,
        r: &'static Resource,
        from: i64,
    ) -> Result<Option<Subscription>, crate::registry::StoreError> {
        let hub = self.hub(registry, r).await?;
        let live = hub.live.subscribe();
        let history = hub.history.lock().expect("not poisoned");
        // The history reaches `from` when it still holds everything since the hub began, or its
        // oldest change is no later than `from`.
        let complete =
            history.front().is_none_or(|c| c.revision >= hub.start) && history.len() < HISTORY;
        let reaches =
            from >= hub.start && (complete || history.front().is_some_and(|c| c.revision <= from));
        if !reaches {
            return Ok(None);
        }
        let replay: Vec<Arc<Cached>> = history
            .iter()
            .filter(|c| c.revision >= from)
            .cloned()
            .collect();
        let replayed = replay.last().map(|c| c.revision).unwrap_or(from - 1);
        drop(history);
        Ok(Some(Subscription {
            replay,
            live,
            replayed,
            progress: hub.progress.clone(),
        }))
    }

    async fn hub(
        &self,
        registry: &Registry,
        r: &'static Resource,
    ) -> Result<Arc<Hub>, crate::registry::StoreError> {
        if let Some(h) = self.hubs.lock().expect("not poisoned").get(r.plural) {
            if !h.task.is_finished() {
                return Ok(h.clone());
            }
        }
        let start = registry.current_revision().await? + 1;
        let mut watch = registry.watch(r, &registry::prefix(r, None), start).await?;
        let (live, _) = broadcast::channel(CHANNEL);
        let progress = Arc::new(tokio::sync::Notify::new());
        let history = Arc::new(Mutex::new(VecDeque::with_capacity(HISTORY)));
        let (tx, wanted, hist) = (live.clone(), progress.clone(), history.clone());
        let task = tokio::spawn(async move {
            loop {
                let batch = tokio::select! {
                    b = watch.next() => b,
                    _ = wanted.notified() => {
                        watch.request_progress();
                        continue;
                    }
                };
                let Some(Ok(batch)) = batch else {
                    // The store watch ended: subscribers see their channel close and re-watch.
                    return;
                };
                let revision = batch.revision;
                let mut out: Vec<Arc<Cached>> = batch
                    .changes
                    .into_iter()
                    .map(|c| Arc::new(cached(c)))
                    .collect();
                if out.is_empty() {
                    out.push(Arc::new(Cached {
                        revision,
                        change: CachedChange::Progress,
                    }));
                }
                let mut h = hist.lock().expect("not poisoned");
                for c in out {
                    if !matches!(c.change, CachedChange::Progress) {
                        if h.len() == HISTORY {
                            h.pop_front();
                        }
                        h.push_back(c.clone());
                    }
                    // Sent under the history lock, so a subscriber that read the history sees every
                    // later change live. No subscriber at all is fine.
                    let _ = tx.send(c);
                }
            }
        });
        let hub = Arc::new(Hub {
            start,
            history,
            live,
            progress,
            task,
        });
        let mut hubs = self.hubs.lock().expect("not poisoned");
        // Two first watches may race; the hub stored first wins and the other is dropped.
        match hubs.get(r.plural) {
            Some(h) if !h.task.is_finished() => Ok(h.clone()),
            _ => {
                hubs.insert(r.plural, hub.clone());
                Ok(hub)
            }
        }
    }
}
