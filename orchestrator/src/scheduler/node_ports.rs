//! NodePorts: a pod asking for host ports goes only where no placed pod holds the same port and
//! protocol on an overlapping host address.

use k8s_openapi::api::core::v1::Pod;

use super::{NodeInfo, Plugin, PodInfo};

pub struct NodePorts;

fn host_ports(pod: &Pod) -> Vec<(String, String, i32)> {
    pod.spec
        .iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            p.host_port.filter(|h| *h > 0).map(|h| {
                let ip = p
                    .host_ip
                    .clone()
                    .filter(|i| !i.is_empty())
                    .unwrap_or_else(|| "0.0.0.0".into());
                (ip, p.protocol.clone().unwrap_or_else(|| "TCP".into()), h)
            })
        })
        .collect()
}

impl Plugin for NodePorts {
    fn filter(&self, info: &PodInfo, node: &NodeInfo) -> Result<(), String> {
        let pod = info.pod;
        let wanted = host_ports(pod);
        if wanted.is_empty() {
            return Ok(());
        }
        for placed in &node.pods {
            for (ip, proto, port) in host_ports(placed) {
                let clash = wanted.iter().any(|(wi, wp, wport)| {
                    *wport == port
                        && *wp == proto
                        && (wi == &ip || wi == "0.0.0.0" || ip == "0.0.0.0")
                });
                if clash {
                    return Err("node(s) didn't have free ports for the requested pod ports".into());
                }
            }
        }
        Ok(())
    }
}
