//! SelectorSpread: pods of the same controller (ReplicaSet, ...) prefer nodes that hold fewer of
//! their siblings, so replicas land on different nodes when they can.

use k8s_openapi::api::core::v1::Pod;

use super::{NodeInfo, Plugin};

pub struct SelectorSpread;

fn controller_uid(pod: &Pod) -> Option<&str> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

impl Plugin for SelectorSpread {
    fn score(&self, pod: &Pod, node: &NodeInfo) -> Option<i64> {
        let owner = controller_uid(pod)?;
        let siblings = node
            .pods
            .iter()
            .filter(|p| controller_uid(p) == Some(owner))
            .count() as i64;
        // Weighted above the resource scores so that spreading decides between similar nodes.
        Some(200 / (1 + siblings))
    }
}
