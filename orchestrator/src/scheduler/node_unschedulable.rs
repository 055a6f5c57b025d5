//! NodeUnschedulable: a cordoned node (`spec.unschedulable`) takes only pods that tolerate the
//! `node.kubernetes.io/unschedulable` taint.

use k8s_openapi::api::core::v1::Taint;

use super::taint_toleration::pod_tolerates;
use super::{NodeInfo, Plugin, PodInfo};

pub struct NodeUnschedulable;

impl Plugin for NodeUnschedulable {
    fn filter(&self, info: &PodInfo, node: &NodeInfo) -> Result<(), String> {
        let pod = info.pod;
        let cordoned = node
            .node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        let taint = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        if cordoned && !pod_tolerates(pod, &taint) {
            return Err("node(s) were unschedulable".into());
        }
        Ok(())
    }
}
