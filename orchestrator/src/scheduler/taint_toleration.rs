//! TaintToleration: a node's NoSchedule and NoExecute taints keep off pods that do not tolerate
//! them. A node whose Ready condition is not True counts as tainted `node.kubernetes.io/not-ready`
//! (or `unreachable` when Unknown), the taints Kubernetes' node lifecycle puts on such nodes.

use k8s_openapi::api::core::v1::{Pod, Taint, Toleration};

use super::{NodeInfo, Plugin, PodInfo};

pub struct TaintToleration;

/// Whether `t` tolerates `taint`.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    let effect_ok = t
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == taint.effect);
    let key = t.key.as_deref().unwrap_or("");
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => effect_ok && (key.is_empty() || key == taint.key),
        _ => {
            effect_ok
                && key == taint.key
                && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
    }
}

pub fn pod_tolerates(pod: &Pod, taint: &Taint) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.tolerations.as_ref())
        .is_some_and(|ts| ts.iter().any(|t| tolerates(t, taint)))
}

/// The node's taints, with the not-ready / unreachable taint its Ready condition implies.
pub fn effective_taints(node: &NodeInfo) -> Vec<Taint> {
    let mut taints: Vec<Taint> = node
        .node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let ready = node
        .node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.clone());
    let implied = match ready.as_deref() {
        Some("True") => None,
        Some("False") => Some("node.kubernetes.io/not-ready"),
        _ => Some("node.kubernetes.io/unreachable"),
    };
    if let Some(key) = implied {
        if !taints
            .iter()
            .any(|t| t.key == key && t.effect == "NoSchedule")
        {
            taints.push(Taint {
                key: key.into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            });
        }
    }
    taints
}

impl Plugin for TaintToleration {
    fn filter(&self, info: &PodInfo, node: &NodeInfo) -> Result<(), String> {
        let pod = info.pod;
        for taint in effective_taints(node) {
            if taint.effect == "PreferNoSchedule" || taint.key == "node.kubernetes.io/unschedulable"
            {
                continue;
            }
            if !pod_tolerates(pod, &taint) {
                return Err(format!(
                    "node(s) had untolerated taint {{{}: {}}}",
                    taint.key,
                    taint.value.as_deref().unwrap_or("")
                ));
            }
        }
        Ok(())
    }
}
