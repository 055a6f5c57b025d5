//! The scheduler: places pods that have no node on a node that can run them, as kube-scheduler does.
//!
//! It keeps reflector caches of nodes and pods (the kube crate's watchers, against the API server
//! only), and on every change runs a scheduling pass: each pending pod is filtered against every
//! node by the filter plugins, the feasible nodes are scored by the score plugins, and the pod is
//! bound to the best one through the `pods/binding` subresource (which refuses a second binding, so a
//! pod is never bound twice). A bound pod is assumed on its node at once, so the next pod in the
//! same pass sees the resources it took. A pod that fits nowhere gets `PodScheduled=False`
//! (`Unschedulable`) and a `FailedScheduling` event in kube-scheduler's words, and is tried again on
//! the next change. Plugins are one file each; this file never imports `registry` or `apiserver`.

mod node_affinity;
mod node_ports;
mod node_unschedulable;
mod resources;
mod spread;
mod taint_toleration;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use serde_json::json;
use tokio::sync::Notify;

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

/// Filters and scores `pod` over `nodes`. Ties go to the node that sorts first, so a pass is
/// deterministic for a given cache.
pub fn decide(pod: &Pod, nodes: &[NodeInfo]) -> Decision {
    let plugins = plugins();
    let info = PodInfo {
        pod,
        requests: Resources::of_pod(pod),
    };
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut best: Option<(i64, &str)> = None;
    for n in nodes {
        if let Some(why) = plugins.iter().find_map(|p| p.filter(&info, n).err()) {
            *reasons.entry(why).or_default() += 1;
            continue;
        }
        let score: i64 = plugins.iter().filter_map(|p| p.score(&info, n)).sum();
        if best.is_none_or(|(s, name)| score > s || (score == s && n.name.as_str() < name)) {
            best = Some((score, &n.name));
        }
    }
    match best {
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
    }
}

/// Builds the node view from the caches: every node with the pods bound to it.
fn snapshot(
    nodes: &[Arc<Node>],
    pods: &[Arc<Pod>],
    assumed: &HashMap<String, (String, Arc<Pod>)>,
) -> Vec<NodeInfo> {
    let mut infos: Vec<NodeInfo> = nodes.iter().cloned().map(NodeInfo::new).collect();
    infos.sort_by(|a, b| a.name.cmp(&b.name));
    let index: HashMap<String, usize> = infos
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.clone(), i))
        .collect();
    let mut seen = std::collections::HashSet::new();
    for p in pods {
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .unwrap_or("");
        let terminal = matches!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        if node.is_empty() || terminal {
            continue;
        }
        seen.insert(uid(p));
        if let Some(i) = index.get(node) {
            infos[*i].add(p.clone());
        }
    }
    for (u, (node, p)) in assumed {
        if !seen.contains(u) {
            if let Some(i) = index.get(node) {
                infos[*i].add(p.clone());
            }
        }
    }
    infos
}

/// Runs the scheduler until `stop` resolves (leadership lost, shutdown).
pub async fn run(
    client: kube::Client,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), SchedulerError> {
    let pods_api: Api<Pod> = Api::all(client.clone());
    let nodes_api: Api<Node> = Api::all(client.clone());
    let wake = Arc::new(Notify::new());
    let (pod_store, pod_writer) = reflector::store();
    let (node_store, node_writer) = reflector::store();
    let watch_cfg = watcher::Config::default();
    let w = wake.clone();
    let pod_task = tokio::spawn(
        watcher(pods_api.clone(), watch_cfg.clone())
            .default_backoff()
            .reflect(pod_writer)
            .for_each(move |_| {
                w.notify_one();
                futures::future::ready(())
            }),
    );
    let w = wake.clone();
    let node_task = tokio::spawn(
        watcher(nodes_api, watch_cfg)
            .default_backoff()
            .reflect(node_writer)
            .for_each(move |_| {
                w.notify_one();
                futures::future::ready(())
            }),
    );
    let _guard = AbortOnDrop(vec![pod_task, node_task]);
    pod_store
        .wait_until_ready()
        .await
        .map_err(|e| SchedulerError::Sync(e.to_string()))?;
    node_store
        .wait_until_ready()
        .await
        .map_err(|e| SchedulerError::Sync(e.to_string()))?;
    tracing::info!("scheduler caches synced");
    let mut assumed: HashMap<String, (String, Arc<Pod>)> = HashMap::new();
    let mut reported: HashMap<String, String> = HashMap::new();
    tokio::pin!(stop);
    loop {
        let pods = pod_store.state();
        let nodes = node_store.state();
        // Forget assumptions the cache has caught up with (or whose pod is gone).
        let bound: std::collections::HashSet<String> = pods
            .iter()
            .filter(|p| !pending(p))
            .map(|p| uid(p))
            .collect();
        let present: std::collections::HashSet<String> = pods.iter().map(|p| uid(p)).collect();
        assumed.retain(|u, _| !bound.contains(u) && present.contains(u));
        reported.retain(|u, _| present.contains(u));
        let mut infos = snapshot(&nodes, &pods, &assumed);
        let mut queue: Vec<&Arc<Pod>> = pods
            .iter()
            .filter(|p| pending(p) && !assumed.contains_key(&uid(p)))
            .collect();
        queue.sort_by_key(|p| {
            (
                std::cmp::Reverse(p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)),
                p.metadata.creation_timestamp.as_ref().map(|t| t.0),
                p.metadata.name.clone(),
            )
        });
        // Decisions are made one pod at a time, each assuming the ones before it; the bindings
        // then go out together, as kube-scheduler's binding cycles run beside its scheduling cycle.
        let mut binds: Vec<(Arc<Pod>, String)> = Vec::new();
        for pod in queue {
            match decide(pod, &infos) {
                Decision::Bind(node) => {
                    let mut placed = (**pod).clone();
                    placed.spec.get_or_insert_with(Default::default).node_name = Some(node.clone());
                    let placed = Arc::new(placed);
                    if let Some(n) = infos.iter_mut().find(|n| n.name == node) {
                        n.add(placed.clone());
                    }
                    assumed.insert(uid(pod), (node.clone(), placed));
                    reported.remove(&uid(pod));
                    binds.push((pod.clone(), node));
                }
                Decision::Unschedulable(msg) => {
                    if reported.get(&uid(pod)) != Some(&msg) {
                        if let Err(e) = report_unschedulable(&client, pod, &msg).await {
                            tracing::warn!(pod = ?pod.metadata.name, error = %e, "cannot record the failure");
                        } else {
                            reported.insert(uid(pod), msg);
                        }
                    }
                }
            }
        }
        let results: Vec<(String, Result<(), kube::Error>)> =
            futures::stream::iter(binds.into_iter().map(|(pod, node)| {
                let client = client.clone();
                async move { (uid(&pod), bind(&client, &pod, &node).await) }
            }))
            .buffer_unordered(BINDING_CONCURRENCY)
            .collect()
            .await;
        for (u, r) in results {
            if let Err(e) = r {
                // Not bound (already bound elsewhere, deleted, API unreachable): forget the
                // assumption, so the next pass sees the pod as it really is.
                tracing::warn!(pod = %u, error = %e, "binding failed");
                assumed.remove(&u);
            }
        }
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = wake.notified() => {}
            // Assumptions and retries are revisited even when nothing changes.
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
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
