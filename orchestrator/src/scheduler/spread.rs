//! SelectorSpread: pods of the same controller (ReplicaSet, ...) prefer nodes that hold fewer of
//! their siblings, so replicas land on different nodes when they can.

use k8s_openapi::api::core::v1::Pod;

use super::{NodeInfo, Plugin, PodInfo};

pub struct SelectorSpread;

pub fn controller_uid(pod: &Pod) -> Option<&str> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

impl Plugin for SelectorSpread {
    fn score(&self, info: &PodInfo, node: &NodeInfo) -> Option<i64> {
        let pod = info.pod;
        let owner = controller_uid(pod)?;
        let siblings = node.owners.get(owner).copied().unwrap_or(0) as i64;
        // Weighted above the resource scores so that spreading decides between similar nodes.
        Some(200 / (1 + siblings))
    }
}
