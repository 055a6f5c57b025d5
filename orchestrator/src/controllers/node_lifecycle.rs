//! Node lifecycle controller: nodes heartbeat by renewing their Lease in `kube-node-lease`. A node
//! whose Lease has not been renewed for the grace period (40 s by default) becomes Ready=Unknown and
//! gets the `node.kubernetes.io/unreachable` NoSchedule and NoExecute taints; its pods are evicted
//! once their toleration of that taint runs out (300 s by default, set on every pod at admission),
//! so their controllers replace them elsewhere. A node that renews again loses the taints.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;

use super::Shared;
use crate::api::meta;

pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";

pub async fn run(
    shared: Arc<Shared>,
    grace: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let client = shared.controller_client();
    loop {
        if let Err(e) = pass(&shared, &client, grace).await {
            tracing::warn!(error = %e, "node lifecycle pass");
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

fn unreachable_taints(node: &Node) -> Vec<Taint> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t.key == UNREACHABLE)
        .collect()
}

async fn pass(ctx: &Shared, client: &kube::Client, grace: Duration) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let now = jiff::Timestamp::now().as_second();
    let renewed: std::collections::HashMap<String, i64> = leases
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|l| Some((l.metadata.name.clone()?, l.spec?.renew_time?.0.as_second())))
        .collect();
    for node in nodes.list(&ListParams::default()).await?.items {
        let name = node.metadata.name.clone().unwrap_or_default();
        let created = node
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second())
            .unwrap_or(now);
        // A node that never renewed is judged from its registration.
        let last = renewed.get(&name).copied().unwrap_or(created);
        let lost = now - last > grace.as_secs() as i64;
        let tainted = unreachable_taints(&node);
        let mut taints: Vec<Taint> = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        if lost && tainted.is_empty() {
            tracing::warn!(node = %name, "node stopped renewing its lease: marking it unreachable");
            let at = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now());
            for effect in ["NoSchedule", "NoExecute"] {
                taints.push(Taint {
                    key: UNREACHABLE.into(),
                    effect: effect.into(),
                    time_added: Some(at.clone()),
                    value: None,
                });
            }
            nodes
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"taints": taints}})),
                )
                .await?;
            let stamp = meta::now();
            let cond = |ty: &str| {
                json!({"type": ty, "status": "Unknown", "reason": "NodeStatusUnknown",
                "message": "Kubelet stopped posting node status.", "lastHeartbeatTime": stamp, "lastTransitionTime": stamp})
            };
            let status = json!({"status": {"conditions": [cond("Ready"), cond("MemoryPressure"), cond("DiskPressure"), cond("PIDPressure")]}});
            nodes
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(status))
                .await?;
        } else if !lost && !tainted.is_empty() {
            tracing::info!(node = %name, "node renews its lease again");
            taints.retain(|t| t.key != UNREACHABLE);
            nodes
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"taints": taints}})),
                )
                .await?;
            let stamp = meta::now();
            let status = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "kubelet is posting ready status", "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}]}});
            nodes
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(status))
                .await?;
        } else if lost {
            evict(ctx, client, &name, &tainted).await?;
        }
    }
    Ok(())
}

/// Deletes the node's pods whose toleration of the NoExecute taint has run out.
async fn evict(
    ctx: &Shared,
    client: &kube::Client,
    node: &str,
    taints: &[Taint],
) -> Result<(), kube::Error> {
    let Some(taint) = taints.iter().find(|t| t.effect == "NoExecute") else {
        return Ok(());
    };
    let added = taint
        .time_added
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or(0);
    let now = jiff::Timestamp::now().as_second();
    let on_node: Vec<Arc<Pod>> = ctx
        .pods
        .store()
        .state()
        .into_iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    for p in on_node {
        let tolerations = p
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.clone())
            .unwrap_or_default();
        let tolerated = tolerations
            .iter()
            .find(|t| crate::scheduler::tolerates(t, taint));
        let due = match tolerated {
            None => true,
            Some(t) => t.toleration_seconds.is_some_and(|s| now - added >= s),
        };
        if due {
            let api: Api<Pod> = Api::namespaced(
                client.clone(),
                p.metadata.namespace.as_deref().unwrap_or(""),
            );
            let name = p.metadata.name.clone().unwrap_or_default();
            tracing::info!(pod = %name, %node, "evicting a pod from an unreachable node");
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) | Err(kube::Error::Api(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}
