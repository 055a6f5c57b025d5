//! The scheduler: places pods that have no node on a node that can run them, as kube-scheduler does.
//!
//! It watches nodes and pods (the kube crate's watcher, against the API server only) and keeps
//! from their events a cache of every node with the pods on it (`cache`) and a queue of pods
//! waiting for a node (`queue`). Pods are taken from the queue one at a time: nodes are filtered by
//! the filter plugins, starting where the last decision stopped and only until enough feasible
//! nodes are found (kube-scheduler's percentageOfNodesToScore), the feasible ones are scored by the
//! score plugins, and the pod is assumed on the best one at once, so the next decision sees what it
//! takes, while its binding goes out through the `pods/binding` subresource in the background (the
//! subresource refuses a second binding, so a pod is never bound twice). A pod that fits nowhere
//! gets `PodScheduled=False` (`Unschedulable`) and a `FailedScheduling` event in kube-scheduler's
//! words, and waits until nodes or pods change. Plugins are one file each; this module never
//! imports `registry` or `apiserver`.

mod cache;
mod node_affinity;
mod node_ports;
mod node_unschedulable;
mod queue;
mod resources;
mod spread;
mod taint_toleration;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::json;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use cache::Cache;
use queue::Queue;

pub use resources::Resources;
pub use taint_toleration::tolerates;

/// How many bindings are in flight at once.
const BINDING_CONCURRENCY: usize = 64;

/// The scheduler's name in pods' `spec.schedulerName` and in events.
pub const SCHEDULER_NAME: &str = "default-scheduler";

/// A node with what is already placed on it.
pub struct NodeInfo {
    pub node: Arc<Node>,
    pub name: String,
    pub pods: Vec<Arc<Pod>>,
    pub requested: Resources,
    /// Requests as the scores count them (pods without requests count a default).
    pub scored: Resources,
    /// How many of the node's pods each controller (by uid) owns.
    pub owners: HashMap<String, usize>,
    pub allocatable: Resources,
}

/// The pod being placed, with what the plugins ask of it worked out once.
pub struct PodInfo<'a> {
    pub pod: &'a Pod,
    pub requests: Resources,
}

impl NodeInfo {
    fn new(node: Arc<Node>) -> NodeInfo {
        NodeInfo {
            name: node.metadata.name.clone().unwrap_or_default(),
            allocatable: Resources::allocatable(&node),
            node,
            pods: Vec::new(),
            requested: Resources::default(),
            scored: Resources::default(),
            owners: HashMap::new(),
        }
    }

    fn add(&mut self, pod: Arc<Pod>) {
        let r = Resources::of_pod(&pod);
        self.requested.add(&r);
        self.scored.add(&resources::scored(r));
        if let Some(owner) = spread::controller_uid(&pod) {
            *self.owners.entry(owner.to_string()).or_default() += 1;
        }
        self.pods.push(pod);
    }

    fn remove(&mut self, uid: &str) {
        let Some(i) = self
            .pods
            .iter()
            .position(|p| p.metadata.uid.as_deref() == Some(uid))
        else {
            return;
        };
        let pod = self.pods.swap_remove(i);
        let r = Resources::of_pod(&pod);
        self.requested.sub(&r);
        self.scored.sub(&resources::scored(r));
        if let Some(owner) = spread::controller_uid(&pod) {
            if let Some(n) = self.owners.get_mut(owner) {
                *n -= 1;
                if *n == 0 {
                    self.owners.remove(owner);
                }
            }
        }
    }

    /// The node object changed; what is placed on it stays.
    fn set_node(&mut self, node: Arc<Node>) {
        self.allocatable = Resources::allocatable(&node);
        self.node = node;
    }
}

/// A filter says why a node cannot take the pod; a score ranks the nodes that can (0..=100).
trait Plugin: Send + Sync {
    fn filter(&self, _pod: &PodInfo, _node: &NodeInfo) -> Result<(), String> {
        Ok(())
    }
    fn score(&self, _pod: &PodInfo, _node: &NodeInfo) -> Option<i64> {
        None
    }
}

fn plugins() -> Vec<Box<dyn Plugin>> {
    vec![
        Box::new(node_unschedulable::NodeUnschedulable),
        Box::new(taint_toleration::TaintToleration),
        Box::new(node_affinity::NodeAffinity),
        Box::new(resources::Fit),
        Box::new(node_ports::NodePorts),
        Box::new(resources::LeastAllocated),
        Box::new(resources::BalancedAllocation),
        Box::new(spread::SelectorSpread),
    ]
}

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("the caches never synced: {0}")]
    Sync(String),
}

/// Whether this scheduler should place `pod` now.
fn pending(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    spec.is_some_and(|s| s.node_name.as_deref().unwrap_or("").is_empty())
        && spec
            .and_then(|s| s.scheduler_name.as_deref())
            .unwrap_or(SCHEDULER_NAME)
            == SCHEDULER_NAME
        && pod.metadata.deletion_timestamp.is_none()
        && !matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

/// Where a pass decided a pod goes.
pub enum Decision {
    Bind(String),
    Unschedulable(String),
}

/// How many feasible nodes are enough to choose from among `all`: every node in a small
/// cluster, then a share that shrinks as the cluster grows (50% less 1% per 125 nodes, at least 5%
/// and 100 nodes), as kube-scheduler's adaptive percentageOfNodesToScore.
fn feasible_nodes_to_find(all: usize) -> usize {
    const MIN: usize = 100;
    if all < MIN {
        return all;
    }
    let percent = 50usize.saturating_sub(all / 125).max(5);
    (all * percent / 100).max(MIN)
}

/// Filters and scores `pod` over every node. Ties go to the node that sorts first, so a decision
/// is deterministic for a given cache.
pub fn decide(pod: &Pod, nodes: &[NodeInfo]) -> Decision {
    decide_from(&plugins(), pod, nodes, 0).0
}

/// Filters nodes from `start` on (wrapping) until enough feasible ones are found, and scores those.
/// Returns the decision and how many nodes were looked at, so the next decision starts after them.
fn decide_from(
    plugins: &[Box<dyn Plugin>],
    pod: &Pod,
    nodes: &[NodeInfo],
    start: usize,
) -> (Decision, usize) {
    let info = PodInfo {
        pod,
        requests: Resources::of_pod(pod),
    };
    let enough = feasible_nodes_to_find(nodes.len());
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut feasible: Vec<&NodeInfo> = Vec::new();
    let mut examined = 0;
    for i in 0..nodes.len() {
        if feasible.len() >= enough {
            break;
        }
        let n = &nodes[(start + i) % nodes.len()];
        examined += 1;
        match plugins.iter().find_map(|p| p.filter(&info, n).err()) {
            Some(why) => *reasons.entry(why).or_default() += 1,
            None => feasible.push(n),
        }
    }
    let mut best: Option<(i64, &str)> = None;
    for n in feasible {
        let score: i64 = plugins.iter().filter_map(|p| p.score(&info, n)).sum();
        if best.is_none_or(|(s, name)| score > s || (score == s && n.name.as_str() < name)) {
            best = Some((score, &n.name));
        }
    }
    let decision = match best {
        Some((_, name)) => Decision::Bind(name.to_string()),
        None => {
            let parts: Vec<String> = reasons
                .iter()
                .map(|(why, n)| format!("{n} {why}"))
                .collect();
            let mut msg = format!("0/{} nodes are available", nodes.len());
            if !parts.is_empty() {
                msg.push_str(": ");
                msg.push_str(&parts.join(", "));
            }
            msg.push('.');
            Decision::Unschedulable(msg)
        }
    };
    (decision, examined)
}

/// How many watch events are taken in before the next decisions, so that neither a backlog of
/// events nor a long queue starves the other.
const EVENT_BATCH: usize = 1024;
/// How many pods are decided before events are looked at again.
const DECISION_BATCH: usize = 256;
/// Parked pods are retried at most this often when the cluster changes, and at least this often
/// when it does not.
const RETRY_ON_CHANGE: Duration = Duration::from_secs(1);
const RETRY_ANYWAY: Duration = Duration::from_secs(30);

/// A finished binding: the pod's uid, the pod, and how it went.
type BindingDone = (String, Arc<Pod>, Result<(), kube::Error>);

struct Scheduler {
    client: kube::Client,
    plugins: Vec<Box<dyn Plugin>>,
    cache: Cache,
    queue: Queue,
    /// Where the next decision starts looking among the nodes.
    next_start: usize,
    /// Nodes or placed pods changed since parked pods were last retried.
    changed: bool,
    retried: Instant,
    pods_synced: bool,
    nodes_synced: bool,
    pod_relist: Option<Vec<Pod>>,
    node_relist: Option<Vec<Node>>,
    permits: Arc<Semaphore>,
    tasks: JoinSet<()>,
    done: mpsc::UnboundedSender<BindingDone>,
}

impl Scheduler {
    fn pod_event(&mut self, ev: watcher::Event<Pod>) {
        match ev {
            watcher::Event::Apply(p) => self.pod_seen(Arc::new(p)),
            watcher::Event::Delete(p) => {
                let u = uid(&p);
                self.queue.remove(&u);
                self.changed |= self.cache.unplace(&u).is_some();
            }
            watcher::Event::Init => self.pod_relist = Some(Vec::new()),
            watcher::Event::InitApply(p) => self.pod_relist.get_or_insert_default().push(p),
            watcher::Event::InitDone => {
                let listed = self.pod_relist.take().unwrap_or_default();
                // Bindings in flight stay assumed while their pods are still there unbound.
                let unbound: HashSet<String> =
                    listed.iter().filter(|p| pending(p)).map(uid).collect();
                let assumed = self.cache.assumed();
                self.cache.clear_pods();
                self.queue.clear();
                for (node, p) in assumed {
                    if unbound.contains(&uid(&p)) {
                        self.cache.place(p, &node, true);
                    }
                }
                for p in listed {
                    self.pod_seen(Arc::new(p));
                }
                self.pods_synced = true;
                self.changed = true;
            }
        }
    }

    fn pod_seen(&mut self, pod: Arc<Pod>) {
        let u = uid(&pod);
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        let terminal = matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        if !node.is_empty() {
            self.queue.remove(&u);
            if terminal {
                // A finished pod no longer takes room on its node.
                self.changed |= self.cache.unplace(&u).is_some();
            } else {
                self.cache.place(pod, &node, false);
            }
        } else if pending(&pod) {
            // An unbound pod whose binding is in flight: the event predates the binding.
            if !self.cache.placed(&u).is_some_and(|p| p.assumed) {
                self.queue.upsert(pod);
            }
        } else {
            self.queue.remove(&u);
        }
    }

    fn node_event(&mut self, ev: watcher::Event<Node>) {
        match ev {
            watcher::Event::Apply(n) => self.cache.upsert_node(Arc::new(n)),
            watcher::Event::Delete(n) => self
                .cache
                .remove_node(n.metadata.name.as_deref().unwrap_or("")),
            watcher::Event::Init => self.node_relist = Some(Vec::new()),
            watcher::Event::InitApply(n) => self.node_relist.get_or_insert_default().push(n),
            watcher::Event::InitDone => {
                let listed = self.node_relist.take().unwrap_or_default();
                self.cache
                    .set_nodes(listed.into_iter().map(Arc::new).collect());
                self.nodes_synced = true;
            }
        }
        self.changed = true;
    }

    fn binding_done(&mut self, (u, pod, result): BindingDone) {
        let Err(e) = result else { return };
        // Not bound (bound elsewhere, deleted, API unreachable): forget the assumption and try
        // again shortly, unless the pod's own events already settled it.
        if self.cache.placed(&u).is_some_and(|p| p.assumed) {
            tracing::warn!(pod = ?pod.metadata.name, error = %e, "binding failed");
            self.cache.unplace(&u);
            self.queue.back_off(pod, Instant::now());
        }
    }

    fn retry_parked(&mut self) {
        let now = Instant::now();
        let since = self.retried.elapsed();
        let parked = (self.changed && since >= RETRY_ON_CHANGE) || since >= RETRY_ANYWAY;
        if parked {
            self.changed = false;
            self.retried = now;
        }
        self.queue.activate(parked, now);
    }

    fn can_decide(&self) -> bool {
        self.pods_synced
            && self.nodes_synced
            && self.queue.has_active()
            && self.permits.available_permits() > 0
    }

    /// Decides on up to DECISION_BATCH pods, sending each binding or failure report out as a
    /// task of its own; stops early when BINDING_CONCURRENCY calls are in flight.
    fn decide_some(&mut self) {
        for _ in 0..DECISION_BATCH {
            if !self.can_decide() {
                return;
            }
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                return;
            };
            let Some((pod, reported)) = self.queue.pop() else {
                return;
            };
            let nodes = self.cache.nodes();
            let start = self.next_start % nodes.len().max(1);
            let (decision, examined) = decide_from(&self.plugins, &pod, nodes, start);
            self.next_start = (start + examined) % nodes.len().max(1);
            let client = self.client.clone();
            match decision {
                Decision::Bind(node) => {
                    self.cache.place(pod.clone(), &node, true);
                    let done = self.done.clone();
                    self.tasks.spawn(async move {
                        let r = bind(&client, &pod, &node).await;
                        let _ = done.send((uid(&pod), pod, r));
                        drop(permit);
                    });
                }
                Decision::Unschedulable(msg) => {
                    self.queue.park(pod.clone(), Some(msg.clone()));
                    if reported.as_deref() == Some(msg.as_str()) {
                        continue;
                    }
                    self.tasks.spawn(async move {
                        if let Err(e) = report_unschedulable(&client, &pod, &msg).await {
                            tracing::warn!(pod = ?pod.metadata.name, error = %e, "cannot record the failure");
                        }
                        drop(permit);
                    });
                }
            }
        }
    }
}

/// Runs the scheduler until `stop` resolves (leadership lost, shutdown).
pub async fn run(
    client: kube::Client,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), SchedulerError> {
    let watch_cfg = watcher::Config::default();
    let mut pod_events = watcher(Api::<Pod>::all(client.clone()), watch_cfg.clone())
        .default_backoff()
        .boxed();
    let mut node_events = watcher(Api::<Node>::all(client.clone()), watch_cfg)
        .default_backoff()
        .boxed();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut s = Scheduler {
        client,
        plugins: plugins(),
        cache: Cache::default(),
        queue: Queue::default(),
        next_start: 0,
        changed: false,
        retried: Instant::now(),
        pods_synced: false,
        nodes_synced: false,
        pod_relist: None,
        node_relist: None,
        permits: Arc::new(Semaphore::new(BINDING_CONCURRENCY)),
        tasks: JoinSet::new(),
        done: done_tx,
    };
    let mut tick = tokio::time::interval(RETRY_ON_CHANGE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ended = || SchedulerError::Sync("the watch ended".into());
    tokio::pin!(stop);
    loop {
        if (&mut stop).now_or_never().is_some() {
            return Ok(());
        }
        if !s.can_decide() {
            // Nothing to decide (or no room for another call): wait for something to happen.
            tokio::select! {
                _ = &mut stop => return Ok(()),
                ev = node_events.next() => match ev.ok_or_else(ended)? {
                    Ok(ev) => s.node_event(ev),
                    Err(e) => tracing::debug!(error = %e, "node watch"),
                },
                ev = pod_events.next() => match ev.ok_or_else(ended)? {
                    Ok(ev) => s.pod_event(ev),
                    Err(e) => tracing::debug!(error = %e, "pod watch"),
                },
                Some(done) = done_rx.recv() => s.binding_done(done),
                _ = tick.tick() => {}
            }
        }
        // Take in what else has arrived, up to a bound.
        for _ in 0..EVENT_BATCH {
            let mut any = false;
            if let Some(ev) = node_events.next().now_or_never() {
                any = true;
                match ev.ok_or_else(ended)? {
                    Ok(ev) => s.node_event(ev),
                    Err(e) => tracing::debug!(error = %e, "node watch"),
                }
            }
            if let Some(ev) = pod_events.next().now_or_never() {
                any = true;
                match ev.ok_or_else(ended)? {
                    Ok(ev) => s.pod_event(ev),
                    Err(e) => tracing::debug!(error = %e, "pod watch"),
                }
            }
            while let Ok(done) = done_rx.try_recv() {
                s.binding_done(done);
            }
            if !any {
                break;
            }
        }
        while s.tasks.try_join_next().is_some() {}
        if s.pods_synced && s.nodes_synced {
            s.retry_parked();
            s.decide_some();
        }
    }
}

async fn bind(client: &kube::Client, pod: &Pod, node: &str) -> Result<(), kube::Error> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or("");
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let binding = json!({"apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": name, "namespace": ns, "uid": pod.metadata.uid},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
    api.create_subresource::<_, serde_json::Value>(
        "binding",
        name,
        &PostParams::default(),
        &binding,
    )
    .await
    .map(|_| ())
}

async fn report_unschedulable(
    client: &kube::Client,
    pod: &Pod,
    msg: &str,
) -> Result<(), kube::Error> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or("");
    let now = crate::api::meta::now();
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let patch = json!({"status": {"conditions": [{"type": "PodScheduled", "status": "False",
        "reason": "Unschedulable", "message": msg, "lastProbeTime": null, "lastTransitionTime": now}]}});
    api.patch_status(name, &PatchParams::default(), &Patch::Strategic(patch))
        .await?;
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), ns);
    let ev = json!({
        "metadata": {"generateName": format!("{name}."), "namespace": ns},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": ns, "name": name,
            "uid": pod.metadata.uid, "resourceVersion": pod.metadata.resource_version},
        "reason": "FailedScheduling", "message": msg, "type": "Warning",
        "source": {"component": SCHEDULER_NAME}, "reportingComponent": SCHEDULER_NAME,
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    });
    let ev: k8s_openapi::api::core::v1::Event =
        serde_json::from_value(ev).map_err(kube::Error::SerdeError)?;
    events.create(&PostParams::default(), &ev).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn node(name: &str, cpu: &str, mem: &str, extra: serde_json::Value) -> NodeInfo {
        let mut v = json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {},
            "status": {"allocatable": {"cpu": cpu, "memory": mem, "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True"}]}});
        crate::api::patch::merge_patch(&v.clone(), &extra)
            .map(|m| v = m)
            .unwrap();
        NodeInfo::new(Arc::new(serde_json::from_value(v).unwrap()))
    }

    pub(super) fn pod(cpu: &str, extra: serde_json::Value) -> Pod {
        let v = json!({"metadata": {"name": "p", "namespace": "default", "uid": "u1"},
            "spec": {"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}]}});
        serde_json::from_value(crate::api::patch::merge_patch(&v, &extra).unwrap()).unwrap()
    }

    #[test]
    fn insufficient_cpu_is_reported_in_kube_schedulers_words() {
        let nodes = vec![
            node("a", "1", "1Gi", json!({})),
            node("b", "1", "1Gi", json!({})),
            node("c", "1", "1Gi", json!({})),
        ];
        match decide(&pod("2", json!({})), &nodes) {
            Decision::Unschedulable(m) => {
                assert_eq!(m, "0/3 nodes are available: 3 Insufficient cpu.")
            }
            Decision::Bind(n) => panic!("bound to {n}"),
        }
    }

    #[test]
    fn mixed_reasons_are_counted_and_sorted() {
        let nodes = vec![
            node("a", "1", "1Gi", json!({"spec": {"unschedulable": true}})),
            node(
                "b",
                "4",
                "1Gi",
                json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}),
            ),
            node("c", "1", "1Gi", json!({})),
        ];
        match decide(&pod("2", json!({})), &nodes) {
            Decision::Unschedulable(m) => assert_eq!(
                m,
                "0/3 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {dedicated: gpu}, 1 node(s) were unschedulable."
            ),
            Decision::Bind(n) => panic!("bound to {n}"),
        }
    }

    #[test]
    fn large_clusters_score_a_shrinking_share_of_nodes() {
        assert_eq!(feasible_nodes_to_find(50), 50);
        assert_eq!(feasible_nodes_to_find(100), 100);
        assert_eq!(feasible_nodes_to_find(1000), 420);
        assert_eq!(feasible_nodes_to_find(5000), 500);
        assert_eq!(feasible_nodes_to_find(10000), 500);
    }

    #[test]
    fn a_decision_stops_at_enough_feasible_nodes_and_the_next_starts_after_them() {
        let nodes: Vec<NodeInfo> = (0..1000)
            .map(|i| node(&format!("n{i:04}"), "4", "8Gi", json!({})))
            .collect();
        let plugins = plugins();
        let (d, examined) = decide_from(&plugins, &pod("100m", json!({})), &nodes, 0);
        assert_eq!(examined, 420);
        match d {
            Decision::Bind(n) => assert!(n.as_str() < "n0420", "{n}"),
            Decision::Unschedulable(m) => panic!("{m}"),
        }
        // Starting near the end wraps around to the first nodes.
        let (d, examined) = decide_from(&plugins, &pod("100m", json!({})), &nodes, 900);
        assert_eq!(examined, 420);
        match d {
            Decision::Bind(n) => assert!(n.as_str() >= "n0900" || n.as_str() < "n0320", "{n}"),
            Decision::Unschedulable(m) => panic!("{m}"),
        }
    }

    #[test]
    fn the_least_loaded_feasible_node_wins() {
        let mut busy = node("a", "4", "8Gi", json!({}));
        busy.add(Arc::new(pod("3", json!({"metadata": {"uid": "other"}}))));
        let nodes = vec![
            busy,
            node("b", "4", "8Gi", json!({})),
            node("c", "2", "8Gi", json!({})),
        ];
        match decide(&pod("500m", json!({})), &nodes) {
            Decision::Bind(n) => assert_eq!(n, "b"),
            Decision::Unschedulable(m) => panic!("{m}"),
        }
    }
}
