//! The controller manager's one watch of pods, shared as Kubernetes' shared informers are: a
//! reflector cache, indexes of pods by their controller's uid and by namespace, and a fan-out of every change
//! (deletions included) to the controllers that react to pods. With tens of thousands of pods,
//! one decode per change and lookups by owner instead of walks over every pod are what keep the
//! controllers cheap. It never imports `registry` or `apiserver`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use tokio::sync::mpsc;

use super::controller_of;

/// Where a pod is filed: its controller's uid, or its namespace when it has no controller (the
/// orphans a controller may adopt).
#[derive(Clone, PartialEq, Eq, Hash)]
enum Owner {
    Controller(String),
    Orphan(String),
}

fn owner_key(pod: &Pod) -> Owner {
    match controller_of(&pod.metadata) {
        Some(o) => Owner::Controller(o.uid.clone()),
        None => Owner::Orphan(pod.metadata.namespace.clone().unwrap_or_default()),
    }
}

#[derive(Default)]
struct OwnerIndex {
    owner_of: HashMap<ObjectRef<Pod>, Owner>,
    members: HashMap<Owner, HashSet<ObjectRef<Pod>>>,
    by_namespace: HashMap<String, HashSet<ObjectRef<Pod>>>,
}

impl OwnerIndex {
    fn insert(&mut self, pod: &Pod) {
        let r = ObjectRef::from_obj(pod);
        let key = owner_key(pod);
        if let Some(old) = self.owner_of.insert(r.clone(), key.clone()) {
            if old != key {
                self.unfile(&old, &r);
            }
        }
        self.by_namespace
            .entry(r.namespace.clone().unwrap_or_default())
            .or_default()
            .insert(r.clone());
        self.members.entry(key).or_default().insert(r);
    }

    fn remove(&mut self, pod: &Pod) {
        let r = ObjectRef::from_obj(pod);
        if let Some(old) = self.owner_of.remove(&r) {
            self.unfile(&old, &r);
        }
        let ns = r.namespace.clone().unwrap_or_default();
        if let Some(set) = self.by_namespace.get_mut(&ns) {
            set.remove(&r);
            if set.is_empty() {
                self.by_namespace.remove(&ns);
            }
        }
    }

    fn unfile(&mut self, key: &Owner, r: &ObjectRef<Pod>) {
        if let Some(set) = self.members.get_mut(key) {
            set.remove(r);
            if set.is_empty() {
                self.members.remove(key);
            }
        }
    }
}

/// A pod change as the subscribers see it: the pod now (or as it was last seen, when deleted) and
/// as it was before, so a controller that just lost a pod hears of it too.
#[derive(Clone)]
pub struct PodChange {
    pub pod: Arc<Pod>,
    pub before: Option<Arc<Pod>>,
}

struct Inner {
    index: Mutex<OwnerIndex>,
    subscribers: Mutex<Vec<mpsc::UnboundedSender<PodChange>>>,
}

/// The shared pod cache. Clones share one watch.
#[derive(Clone)]
pub struct PodInformer {
    store: Store<Pod>,
    inner: Arc<Inner>,
}

impl PodInformer {
    /// Starts the watch; the task ends with the returned handle.
    pub fn start(client: kube::Client) -> (PodInformer, tokio::task::JoinHandle<()>) {
        let mut writer = reflector::store::Writer::<Pod>::default();
        let store = writer.as_reader();
        let inner = Arc::new(Inner {
            index: Mutex::new(OwnerIndex::default()),
            subscribers: Mutex::new(Vec::new()),
        });
        let informer = PodInformer {
            store: store.clone(),
            inner: inner.clone(),
        };
        let task = tokio::spawn(async move {
            let mut events = watcher(Api::<Pod>::all(client), watcher::Config::default())
                .default_backoff()
                .boxed();
            // A relist fills a fresh index that replaces the old one when the list is complete,
            // as the reflector does with its store, so no reader ever sees a half-built index.
            let mut relisting = OwnerIndex::default();
            while let Some(ev) = events.next().await {
                let Ok(ev) = ev else { continue };
                let mut changes = Vec::new();
                match &ev {
                    watcher::Event::Apply(p) => {
                        let before = store.get(&ObjectRef::from_obj(p));
                        inner.index.lock().expect("not poisoned").insert(p);
                        changes.push((p.clone(), before));
                    }
                    watcher::Event::Delete(p) => {
                        inner.index.lock().expect("not poisoned").remove(p);
                        changes.push((p.clone(), None));
                    }
                    watcher::Event::Init => relisting = OwnerIndex::default(),
                    watcher::Event::InitApply(p) => relisting.insert(p),
                    watcher::Event::InitDone => {}
                }
                writer.apply_watcher_event(&ev);
                if matches!(ev, watcher::Event::InitDone) {
                    *inner.index.lock().expect("not poisoned") = std::mem::take(&mut relisting);
                    // Everything may have changed while the watch was down.
                    changes = store
                        .state()
                        .into_iter()
                        .map(|p| ((*p).clone(), None))
                        .collect();
                }
                if changes.is_empty() {
                    continue;
                }
                let mut subs = inner.subscribers.lock().expect("not poisoned");
                for (pod, before) in changes {
                    let change = PodChange {
                        pod: Arc::new(pod),
                        before,
                    };
                    subs.retain(|s| s.send(change.clone()).is_ok());
                }
            }
        });
        (informer, task)
    }

    pub fn store(&self) -> &Store<Pod> {
        &self.store
    }

    /// Every pod change from now on, deletions included.
    pub fn subscribe(&self) -> impl futures::Stream<Item = PodChange> + Send + 'static {
        let (tx, rx) = mpsc::unbounded_channel();
        self.inner
            .subscribers
            .lock()
            .expect("not poisoned")
            .push(tx);
        tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
    }

    /// The pods whose controller has this uid.
    pub fn controlled_by(&self, uid: &str) -> Vec<Arc<Pod>> {
        self.filed(&Owner::Controller(uid.to_string()))
    }

    /// The pods in `ns` that have no controller.
    pub fn orphans_in(&self, ns: &str) -> Vec<Arc<Pod>> {
        self.filed(&Owner::Orphan(ns.to_string()))
    }

    /// The pods in `ns`.
    pub fn in_namespace(&self, ns: &str) -> Vec<Arc<Pod>> {
        let refs = self.refs(|i| i.by_namespace.get(ns));
        refs.iter().filter_map(|r| self.store.get(r)).collect()
    }

    fn filed(&self, key: &Owner) -> Vec<Arc<Pod>> {
        let refs = self.refs(|i| i.members.get(key));
        refs.iter().filter_map(|r| self.store.get(r)).collect()
    }

    fn refs(
        &self,
        pick: impl FnOnce(&OwnerIndex) -> Option<&HashSet<ObjectRef<Pod>>>,
    ) -> Vec<ObjectRef<Pod>> {
        let index = self.inner.index.lock().expect("not poisoned");
        pick(&index)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }
}
