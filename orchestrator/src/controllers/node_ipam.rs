//! Node IPAM controller (kube-controller-manager's range allocator, `--allocate-node-cidrs`): cuts
//! the cluster CIDR into ranges of `--node-cidr-mask-size` bits and gives each Node one of them as
//! `spec.podCIDR` / `spec.podCIDRs`, never one that another node holds. A deleted node's range is
//! released. Its allocations live only in memory: every (re)list rebuilds them from the ranges the
//! nodes already have, before any new one is handed out. When no range is left, the node gets a
//! `CIDRNotAvailable` event and waits until one is released. IPv4 only. A client of the API
//! server; never imports `registry` or `apiserver`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, Node};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::json;

/// The event source, as kube-controller-manager's range allocator names it.
const COMPONENT: &str = "cidrAllocator";
/// How often nodes still without a range are tried again.
const RETRY: Duration = Duration::from_secs(2);

/// The cluster CIDR's ranges and which node holds each.
#[derive(Debug, Clone)]
pub struct CidrSet {
    base: u32,
    cluster_prefix: u8,
    mask: u8,
    owners: BTreeMap<u32, String>,
    /// Where the next search for a free range starts, so a released range is not handed out
    /// again at once.
    next: u32,
}

/// Why no range could be given.
pub const NO_CIDRS_LEFT: &str =
    "CIDR allocation failed; there are no remaining CIDRs left to allocate in the accepted range";

fn parse_v4(cidr: &str) -> Result<(u32, u8), String> {
    let bad = || format!("invalid CIDR address: {cidr}");
    let (a, p) = cidr.split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
    let prefix: u8 = p.parse().map_err(|_| bad())?;
    if prefix > 32 {
        return Err(bad());
    }
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    Ok((u32::from(addr) & mask, prefix))
}

impl CidrSet {
    /// Ranges of `/mask` in `cluster_cidr`; at most 2^16 of them, as Kubernetes allows.
    pub fn new(cluster_cidr: &str, mask: u8) -> Result<CidrSet, String> {
        if cluster_cidr.contains(':') {
            return Err(format!(
                "cluster CIDR {cluster_cidr}: only IPv4 pod networks are supported"
            ));
        }
        let (base, cluster_prefix) = parse_v4(cluster_cidr)?;
        if mask < cluster_prefix || mask > 32 {
            return Err(format!(
                "--node-cidr-mask-size {mask} must lie between the cluster CIDR's /{cluster_prefix} and /32"
            ));
        }
        if mask - cluster_prefix > 16 {
            return Err(format!(
                "CIDRSet: subnet mask size too big: /{mask} in {cluster_cidr} gives more than 65536 ranges"
            ));
        }
        Ok(CidrSet {
            base,
            cluster_prefix,
            mask,
            owners: BTreeMap::new(),
            next: 0,
        })
    }

    fn count(&self) -> u32 {
        1 << (self.mask - self.cluster_prefix)
    }

    /// The text of range `i`.
    pub fn range(&self, i: u32) -> String {
        let step = if self.mask == 0 {
            0
        } else {
            1u32 << (32 - self.mask)
        };
        format!("{}/{}", Ipv4Addr::from(self.base + i * step), self.mask)
    }

    /// The index of `cidr` if it is one of the set's ranges.
    fn index_of(&self, cidr: &str) -> Result<u32, String> {
        let (net, prefix) = parse_v4(cidr)?;
        let cluster_mask = if self.cluster_prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.cluster_prefix)
        };
        if prefix != self.mask || net & cluster_mask != self.base {
            return Err(format!(
                "CIDR {cidr} is out of the range of cluster CIDR {}/{} with node mask /{}",
                Ipv4Addr::from(self.base),
                self.cluster_prefix,
                self.mask
            ));
        }
        Ok(if self.mask == 0 {
            0
        } else {
            (net - self.base) >> (32 - self.mask)
        })
    }

    /// The range `node` holds, if any.
    pub fn of(&self, node: &str) -> Option<String> {
        self.owners
            .iter()
            .find(|(_, n)| *n == node)
            .map(|(i, _)| self.range(*i))
    }

    /// Marks `cidr` as `node`'s. A range another node holds stays with it (the error says whose).
    pub fn occupy(&mut self, node: &str, cidr: &str) -> Result<(), String> {
        let i = self.index_of(cidr)?;
        match self.owners.get(&i) {
            Some(other) if other != node => Err(format!(
                "CIDR {cidr} of node {node} is already allocated to node {other}"
            )),
            _ => {
                self.owners.insert(i, node.to_string());
                Ok(())
            }
        }
    }

    /// The next free range for `node` (its own if it has one already).
    pub fn allocate(&mut self, node: &str) -> Option<String> {
        if let Some(r) = self.of(node) {
            return Some(r);
        }
        let n = self.count();
        let i = (0..n)
            .map(|k| (self.next + k) % n)
            .find(|i| !self.owners.contains_key(i))?;
        self.owners.insert(i, node.to_string());
        self.next = (i + 1) % n;
        Some(self.range(i))
    }

    pub fn release(&mut self, node: &str) {
        self.owners.retain(|_, n| n != node);
    }

    fn clear(&mut self) {
        self.owners.clear();
    }
}

fn pod_cidr(node: &Node) -> Option<String> {
    let spec = node.spec.as_ref()?;
    spec.pod_cidrs
        .iter()
        .flatten()
        .chain(spec.pod_cidr.iter())
        .find(|c| !c.is_empty())
        .cloned()
}

fn name(node: &Node) -> String {
    node.metadata.name.clone().unwrap_or_default()
}

struct Allocator {
    nodes: Api<Node>,
    events: Api<Event>,
    set: CidrSet,
    /// Nodes still without a range, by name.
    waiting: HashMap<String, Node>,
    /// Nodes already told there is no range left (told again only after they got one).
    told: HashSet<String>,
}

impl Allocator {
    /// A node's status change as the range allocator records it: a Normal event on the node.
    async fn record(&self, node: &Node, status: &str) {
        let n = name(node);
        let now = crate::api::meta::now();
        let ev = json!({
            "metadata": {"generateName": format!("{n}."), "namespace": "default"},
            "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": n, "uid": node.metadata.uid},
            "reason": status, "message": format!("Node {n} status is now: {status}"), "type": "Normal",
            "source": {"component": COMPONENT}, "reportingComponent": COMPONENT,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        });
        let created = match serde_json::from_value::<Event>(ev) {
            Ok(ev) => self
                .events
                .create(&PostParams::default(), &ev)
                .await
                .map(|_| ()),
            Err(e) => Err(kube::Error::SerdeError(e)),
        };
        if let Err(e) = created {
            tracing::warn!(node = %n, status, error = %e, "cannot record the node's event");
        }
    }

    /// Takes note of a range the node has; a node without one gets the next free one.
    async fn node_seen(&mut self, node: Node) {
        let n = name(&node);
        if node.metadata.deletion_timestamp.is_some() {
            return;
        }
        if let Some(cidr) = pod_cidr(&node) {
            self.waiting.remove(&n);
            self.told.remove(&n);
            self.set.release(&n);
            if let Err(e) = self.set.occupy(&n, &cidr) {
                tracing::warn!(node = %n, error = %e, "a node's podCIDR cannot be marked as allocated");
            }
            return;
        }
        let Some(cidr) = self.set.allocate(&n) else {
            tracing::error!(node = %n, "failed to allocate a pod CIDR: {NO_CIDRS_LEFT}");
            if self.told.insert(n.clone()) {
                self.record(&node, "CIDRNotAvailable").await;
            }
            self.waiting.insert(n, node);
            return;
        };
        let patch = json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}});
        match self
            .nodes
            .patch(&n, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {
                tracing::info!(node = %n, %cidr, "set the node's podCIDR");
                self.waiting.remove(&n);
                self.told.remove(&n);
            }
            Err(kube::Error::Api(s)) if s.code == 404 => self.set.release(&n),
            Err(e) => {
                tracing::warn!(node = %n, %cidr, error = %e, "failed to update the node's podCIDR");
                self.set.release(&n);
                self.record(&node, "CIDRAssignmentFailed").await;
                self.waiting.insert(n, node);
            }
        }
    }

    async fn retry_waiting(&mut self) {
        let waiting: Vec<Node> = self.waiting.values().cloned().collect();
        for node in waiting {
            self.node_seen(node).await;
        }
    }

    /// A fresh list: every allocation is rebuilt from it, ranges the nodes hold first.
    async fn relisted(&mut self, list: Vec<Node>) {
        self.set.clear();
        self.waiting.clear();
        let (with, without): (Vec<Node>, Vec<Node>) =
            list.into_iter().partition(|n| pod_cidr(n).is_some());
        for node in with {
            self.node_seen(node).await;
        }
        for node in without {
            self.node_seen(node).await;
        }
    }
}

/// Runs the allocator over `set` until `stop` resolves.
pub async fn run(client: kube::Client, set: CidrSet, stop: impl std::future::Future<Output = ()>) {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut a = Allocator {
        nodes: nodes.clone(),
        events: Api::namespaced(client, "default"),
        set,
        waiting: HashMap::new(),
        told: HashSet::new(),
    };
    let mut stream = watcher(nodes, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut relist: Option<Vec<Node>> = None;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            ev = stream.next() => match ev {
                None => return,
                Some(Err(e)) => tracing::warn!(error = %e, "node watch"),
                Some(Ok(watcher::Event::Init)) => relist = Some(Vec::new()),
                Some(Ok(watcher::Event::InitApply(n))) => relist.get_or_insert_default().push(n),
                Some(Ok(watcher::Event::InitDone)) => {
                    let list = relist.take().unwrap_or_default();
                    a.relisted(list).await;
                }
                Some(Ok(watcher::Event::Apply(n))) => a.node_seen(n).await,
                Some(Ok(watcher::Event::Delete(n))) => {
                    let n = name(&n);
                    if let Some(cidr) = a.set.of(&n) {
                        tracing::info!(node = %n, %cidr, "released the deleted node's podCIDR");
                    }
                    a.set.release(&n);
                    a.waiting.remove(&n);
                    a.told.remove(&n);
                    a.retry_waiting().await;
                }
            },
            _ = tokio::time::sleep(RETRY), if !a.waiting.is_empty() => a.retry_waiting().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_handed_out_once_and_released() {
        let mut s = CidrSet::new("10.244.0.0/23", 24).unwrap();
        assert_eq!(s.allocate("a").as_deref(), Some("10.244.0.0/24"));
        assert_eq!(s.allocate("a").as_deref(), Some("10.244.0.0/24"));
        assert_eq!(s.allocate("b").as_deref(), Some("10.244.1.0/24"));
        assert_eq!(s.allocate("c"), None);
        s.release("a");
        assert_eq!(s.allocate("c").as_deref(), Some("10.244.0.0/24"));
    }

    #[test]
    fn occupied_ranges_are_skipped_and_foreign_ones_refused() {
        let mut s = CidrSet::new("10.244.0.0/16", 24).unwrap();
        s.occupy("a", "10.244.0.0/24").unwrap();
        s.occupy("a", "10.244.0.0/24").unwrap();
        assert!(s
            .occupy("b", "10.244.0.0/24")
            .unwrap_err()
            .contains("node a"));
        assert!(s.occupy("b", "10.9.0.0/24").is_err());
        assert!(s.occupy("b", "10.244.0.0/25").is_err());
        assert_eq!(s.allocate("b").as_deref(), Some("10.244.1.0/24"));
        assert_eq!(s.of("a").as_deref(), Some("10.244.0.0/24"));
    }

    #[test]
    fn flags_are_checked() {
        assert!(CidrSet::new("10.244.0.0/16", 8).is_err());
        assert!(CidrSet::new("10.0.0.0/8", 30).is_err());
        assert!(CidrSet::new("fd00::/48", 64).is_err());
        assert!(CidrSet::new("nope", 24).is_err());
        assert_eq!(CidrSet::new("10.0.0.0/8", 24).unwrap().count(), 65536);
    }
}
