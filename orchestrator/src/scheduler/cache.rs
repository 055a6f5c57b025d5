//! The scheduler's view of the cluster, kept up to date from watch events instead of rebuilt for
//! every decision, as kube-scheduler's cache is: every node with the pods placed on it, whether
//! bound (the API server says so) or assumed (the scheduler decided and the binding is in flight,
//! so the next decision already sees what the pod takes). It never imports `registry` or
//! `apiserver`.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};

use super::NodeInfo;

/// Where a pod is counted.
pub struct Placed {
    pub node: String,
    pub pod: Arc<Pod>,
    /// Decided here, not yet seen bound in the API.
    pub assumed: bool,
}

#[derive(Default)]
pub struct Cache {
    /// Sorted by name, so that decisions over a given view are deterministic.
    nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    placed: HashMap<String, Placed>,
}

fn uid_of(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

impl Cache {
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    pub fn placed(&self, uid: &str) -> Option<&Placed> {
        self.placed.get(uid)
    }

    /// Counts `pod` on `node`, replacing wherever it was counted before.
    pub fn place(&mut self, pod: Arc<Pod>, node: &str, assumed: bool) {
        let uid = uid_of(&pod);
        self.unplace(&uid);
        if let Some(&i) = self.index.get(node) {
            self.nodes[i].add(pod.clone());
        }
        self.placed.insert(
            uid,
            Placed {
                node: node.to_string(),
                pod,
                assumed,
            },
        );
    }

    pub fn unplace(&mut self, uid: &str) -> Option<Placed> {
        let p = self.placed.remove(uid)?;
        if let Some(&i) = self.index.get(&p.node) {
            self.nodes[i].remove(uid);
        }
        Some(p)
    }

    /// The pods whose binding is still in flight.
    pub fn assumed(&self) -> Vec<(String, Arc<Pod>)> {
        self.placed
            .values()
            .filter(|p| p.assumed)
            .map(|p| (p.node.clone(), p.pod.clone()))
            .collect()
    }

    /// Forgets every placement (a relist of pods follows).
    pub fn clear_pods(&mut self) {
        self.placed.clear();
        for n in &mut self.nodes {
            *n = NodeInfo::new(n.node.clone());
        }
    }

    /// A node added or changed. A change keeps the pods counted on it.
    pub fn upsert_node(&mut self, node: Arc<Node>) {
        let name = node.metadata.name.clone().unwrap_or_default();
        if let Some(&i) = self.index.get(&name) {
            self.nodes[i].set_node(node);
            return;
        }
        let mut info = NodeInfo::new(node);
        // Pods bound to a node the cache did not know yet (its event came later than theirs).
        for p in self.placed.values().filter(|p| p.node == name) {
            info.add(p.pod.clone());
        }
        let at = self.nodes.partition_point(|n| n.name < name);
        self.nodes.insert(at, info);
        self.reindex();
    }

    pub fn remove_node(&mut self, name: &str) {
        if let Some(i) = self.index.get(name).copied() {
            self.nodes.remove(i);
            self.reindex();
        }
    }

    /// Replaces every node (a relist of nodes).
    pub fn set_nodes(&mut self, nodes: Vec<Arc<Node>>) {
        self.nodes = nodes.into_iter().map(NodeInfo::new).collect();
        self.nodes.sort_by(|a, b| a.name.cmp(&b.name));
        self.reindex();
        for p in self.placed.values() {
            if let Some(&i) = self.index.get(&p.node) {
                self.nodes[i].add(p.pod.clone());
            }
        }
    }

    fn reindex(&mut self) {
        self.index = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i))
            .collect();
    }
}
