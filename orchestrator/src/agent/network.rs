//! The node's side of the pod network, in the roles kubenet and flannel's host-gw backend play:
//! waits for the Node's `spec.podCIDR` (given by the controller manager's node IPAM), gives its
//! first address to the pods' bridge as their gateway, turns on IPv4 forwarding, masquerades what
//! pods send outside every node's pod range (an nftables table of its own, one per bridge), and
//! keeps one route per other node: its podCIDR via its InternalIP, removed when the node goes.
//! Those routes need the nodes to share a link (one L2 segment), as host-gw does.
//!
//! Routes it installs carry their own routing protocol number, so a restarted agent finds and
//! removes the ones of nodes deleted while it was away. A client of the API server; the kernel is
//! reached through the runtime's netlink building blocks and the `nft` command. Never imports
//! `registry` or `apiserver`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::runtime::{reflector, watcher, WatchStreamExt};
use tokio::io::AsyncWriteExt;

use crate::runtime::network::{self, Ipv4Net, NetworkConfig, NetworkError};

/// The routing protocol number (`ip route ... proto 202`) marking routes to other nodes' pods.
pub const ROUTE_PROTOCOL: u8 = 202;

/// How often the node is looked at while it has no podCIDR yet.
const CIDR_POLL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum PodNetworkError {
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error("node {node}: podCIDR {cidr:?}: {message}")]
    BadCidr {
        node: String,
        cidr: String,
        message: String,
    },
    #[error("enabling IPv4 forwarding: {0}")]
    Forwarding(std::io::Error),
    #[error("nft: {0}")]
    Nft(String),
}

/// The node's pod range, read from its `spec.podCIDRs` (the IPv4 one) or `spec.podCIDR`.
fn pod_cidr(node: &Node) -> Option<String> {
    let spec = node.spec.as_ref()?;
    spec.pod_cidrs
        .iter()
        .flatten()
        .chain(spec.pod_cidr.iter())
        .find(|c| !c.contains(':'))
        .cloned()
}

fn internal_ip(node: &Node) -> Option<Ipv4Addr> {
    node.status
        .as_ref()?
        .addresses
        .iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse().ok())
}

/// Waits until node `name` has a pod range; says once that it waits.
pub async fn wait_for_pod_cidr(client: &kube::Client, name: &str) -> Result<Ipv4Net, kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut said = false;
    loop {
        match nodes.get_opt(name).await {
            Ok(Some(n)) => {
                if let Some(c) = pod_cidr(&n) {
                    match Ipv4Net::parse(&c) {
                        Ok(net) => return Ok(net),
                        Err(e) => {
                            tracing::warn!(node = name, cidr = c, error = %e, "unusable podCIDR")
                        }
                    }
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(node = name, error = %e, "cannot read the node"),
        }
        if !said {
            tracing::info!(
                node = name,
                "network is not ready: waiting for the node's podCIDR (the controller manager's --cluster-cidr)"
            );
            said = true;
        }
        tokio::time::sleep(CIDR_POLL).await;
    }
}

/// The pods' bridge with its gateway address, forwarding on and the masquerade table in place
/// (with only this node's range until the routes task learns the others).
pub async fn prepare(bridge: &str, cidr: Ipv4Net) -> Result<NetworkConfig, PodNetworkError> {
    let cfg = NetworkConfig {
        bridge: bridge.to_string(),
        cidr: cidr.to_string(),
    };
    network::ensure_bridge(&cfg).await?;
    tokio::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .await
        .map_err(PodNetworkError::Forwarding)?;
    masquerade(bridge, cidr, &BTreeSet::from([cidr])).await?;
    tracing::info!(bridge, %cidr, gateway = %cidr.gateway(), "pod network ready");
    Ok(cfg)
}

/// The nftables table of the pods on `bridge`.
pub fn table_name(bridge: &str) -> String {
    format!("cairn-{bridge}")
}

/// The table's full text: pods' packets to anything but a pod range leave with the node's
/// address. Replaced as a whole, in one transaction.
fn masquerade_rules(bridge: &str, own: Ipv4Net, ranges: &BTreeSet<Ipv4Net>) -> String {
    let table = table_name(bridge);
    let elements: Vec<String> = ranges.iter().map(Ipv4Net::to_string).collect();
    format!(
        "table ip {table}\ndelete table ip {table}\ntable ip {table} {{\n\
         \tset pod-ranges {{ type ipv4_addr; flags interval; elements = {{ {} }} }}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {own} ip daddr != @pod-ranges masquerade\n\
         \t}}\n}}\n",
        elements.join(", ")
    )
}

async fn masquerade(
    bridge: &str,
    own: Ipv4Net,
    ranges: &BTreeSet<Ipv4Net>,
) -> Result<(), PodNetworkError> {
    let mut ranges = ranges.clone();
    ranges.insert(own);
    let rules = masquerade_rules(bridge, own, &ranges);
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| PodNetworkError::Nft(format!("cannot run nft: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(rules.as_bytes())
            .await
            .map_err(|e| PodNetworkError::Nft(e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| PodNetworkError::Nft(e.to_string()))?;
    if !out.status.success() {
        return Err(PodNetworkError::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

/// Brings the kernel's routes (those marked [`ROUTE_PROTOCOL`]) to exactly `want`.
async fn sync_routes(want: &BTreeMap<Ipv4Net, Ipv4Addr>) -> Result<(), NetworkError> {
    let have: BTreeMap<Ipv4Net, Ipv4Addr> =
        network::routes(ROUTE_PROTOCOL).await?.into_iter().collect();
    for (dst, via) in &have {
        if want.get(dst) != Some(via) {
            tracing::info!(%dst, %via, "removing the route of a node that is gone");
            network::delete_route(*dst, *via, ROUTE_PROTOCOL).await?;
        }
    }
    for (dst, via) in want {
        if have.get(dst) != Some(via) {
            tracing::info!(%dst, %via, "route to a node's pods");
            network::replace_route(*dst, *via, ROUTE_PROTOCOL).await?;
        }
    }
    Ok(())
}

/// Follows every Node: routes to the others' pod ranges through their InternalIP, and the set of
/// ranges that are not masqueraded. Runs until dropped; failures are retried on the next change
/// or after a few seconds.
pub async fn keep_routes(client: kube::Client, node_name: String, bridge: String, own: Ipv4Net) {
    let (store, writer) = reflector::store();
    let changed = std::sync::Arc::new(tokio::sync::Notify::new());
    let c = changed.clone();
    let watch = watcher(Api::<Node>::all(client), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .for_each(move |_| {
            c.notify_one();
            futures::future::ready(())
        });
    tokio::pin!(watch);
    // The watch runs only while polled: it is polled while the cache fills, too.
    tokio::select! {
        _ = &mut watch => return,
        ready = store.wait_until_ready() => if ready.is_err() {
            return;
        },
    }
    let mut applied: Option<(BTreeMap<Ipv4Net, Ipv4Addr>, BTreeSet<Ipv4Net>)> = None;
    loop {
        let mut routes = BTreeMap::new();
        let mut ranges = BTreeSet::new();
        for n in store.state() {
            let Some(cidr) = pod_cidr(&n).and_then(|c| Ipv4Net::parse(&c).ok()) else {
                continue;
            };
            ranges.insert(cidr);
            if n.metadata.name.as_deref() == Some(node_name.as_str()) || cidr == own {
                continue;
            }
            match internal_ip(&n) {
                Some(ip) => {
                    routes.insert(cidr, ip);
                }
                None => {
                    tracing::warn!(node = ?n.metadata.name, "a node without an InternalIP gets no route")
                }
            }
        }
        let want = (routes, ranges);
        let mut retry = false;
        if applied.as_ref() != Some(&want) {
            let routed = sync_routes(&want.0).await;
            let masq = masquerade(&bridge, own, &want.1).await;
            if let Err(e) = &routed {
                tracing::warn!(error = %e, "cannot route to other nodes' pods");
            }
            if let Err(e) = &masq {
                tracing::warn!(error = %e, "cannot update the masquerade table");
            }
            retry = routed.is_err() || masq.is_err();
            applied = (!retry).then_some(want);
        }
        let wait = if retry {
            Duration::from_secs(5)
        } else {
            Duration::from_secs(60)
        };
        tokio::select! {
            _ = &mut watch => return,
            _ = changed.notified() => {}
            // Now and then everything is applied again, in case someone else changed it.
            _ = tokio::time::sleep(wait) => applied = None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masquerade_spares_every_pod_range() {
        let own = Ipv4Net::parse("10.244.1.0/24").unwrap();
        let other = Ipv4Net::parse("10.244.0.0/24").unwrap();
        let rules = masquerade_rules("cairn0", own, &BTreeSet::from([own, other]));
        assert!(rules.starts_with("table ip cairn-cairn0\ndelete table ip cairn-cairn0\n"));
        assert!(rules.contains("elements = { 10.244.0.0/24, 10.244.1.0/24 }"));
        assert!(rules.contains("ip saddr 10.244.1.0/24 ip daddr != @pod-ranges masquerade"));
    }

    #[test]
    fn the_ipv4_pod_range_and_internal_ip_are_read_from_the_node() {
        let n: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a"},
            "spec": {"podCIDR": "fd00::/64", "podCIDRs": ["fd00::/64", "10.244.3.0/24"]},
            "status": {"addresses": [{"type": "Hostname", "address": "a"},
                {"type": "InternalIP", "address": "192.0.2.7"}]}}))
        .unwrap();
        assert_eq!(pod_cidr(&n).as_deref(), Some("10.244.3.0/24"));
        assert_eq!(internal_ip(&n), Some(Ipv4Addr::new(192, 0, 2, 7)));
    }
}
