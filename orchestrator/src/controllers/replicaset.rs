//! ReplicaSet controller: keeps `spec.replicas` active pods matching the selector. It adopts
//! matching orphans and releases owned pods that stopped matching (through ownerReferences),
//! creates missing pods in slow-start batches (1, 2, 4, ... so a failing create costs one call, not
//! hundreds), deletes surplus pods least valuable first (unscheduled, pending, not ready, newest),
//! and never acts twice for one gap: it waits until its earlier creates and deletes show in the
//! cache (expectations). Status reports replicas, ready and available counts.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use serde_json::json;

use super::{
    controller_of, is_active, is_available, is_ready, owner_ref, selects, ControllerError,
    Selector, Shared,
};

const BURST: usize = 500;

pub async fn run(
    shared: Arc<Shared>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = shared.controller_client();
    let replicasets = shared.replicasets.clone();
    // A pod change wakes the ReplicaSet that controls it (before and after the change), or, for a
    // pod without a controller, the ReplicaSets whose selector would adopt it.
    let triggers = shared.pods.subscribe().flat_map(move |c| {
        let mut refs = Vec::new();
        for p in std::iter::once(&c.pod).chain(c.before.as_ref()) {
            let ns = p.metadata.namespace.as_deref().unwrap_or_default();
            match controller_of(&p.metadata) {
                Some(o) if o.kind == "ReplicaSet" => {
                    refs.push(ObjectRef::<ReplicaSet>::new(&o.name).within(ns))
                }
                Some(_) => {}
                None => refs.extend(
                    replicasets
                        .state()
                        .iter()
                        .filter(|rs| rs.metadata.namespace.as_deref() == Some(ns))
                        .filter(|rs| {
                            rs.spec
                                .as_ref()
                                .is_some_and(|s| selects(&s.selector, p.metadata.labels.as_ref()))
                        })
                        .map(|rs| ObjectRef::from_obj(&**rs)),
                ),
            }
        }
        refs.dedup();
        futures::stream::iter(refs)
    });
    Controller::new(
        Api::<ReplicaSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .reconcile_on(triggers)
    .with_config(super::workers())
    .graceful_shutdown_on(stop)
    .run(reconcile, error_policy, shared)
    .for_each(|r| {
        if let Err(e) = r {
            tracing::debug!(error = %e, "replicaset reconcile");
        }
        futures::future::ready(())
    })
    .await;
}

fn error_policy(_rs: Arc<ReplicaSet>, e: &ControllerError, _: Arc<Shared>) -> Action {
    tracing::warn!(error = %e, "replicaset sync failed");
    Action::requeue(Duration::from_secs(1))
}

fn pod_from_template(rs: &ReplicaSet) -> Result<Pod, ControllerError> {
    let t = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .ok_or_else(|| ControllerError::Invalid("replicaset without a template".into()))?;
    let meta = t.metadata.unwrap_or_default();
    let name = rs.metadata.name.clone().unwrap_or_default();
    let v = json!({
        "metadata": {
            "generateName": format!("{name}-"),
            "namespace": rs.metadata.namespace,
            "labels": meta.labels,
            "annotations": meta.annotations,
            "ownerReferences": [owner_ref("apps/v1", "ReplicaSet", &rs.metadata)],
        },
        "spec": t.spec,
    });
    serde_json::from_value(v).map_err(|e| ControllerError::Invalid(e.to_string()))
}

/// Surplus pods to delete first: unscheduled, then pending, then not ready, then the newest.
fn deletion_rank(p: &Pod) -> (bool, bool, bool, std::cmp::Reverse<Option<i64>>) {
    let scheduled = p
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_ref())
        .is_some_and(|n| !n.is_empty());
    let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    (
        scheduled,
        running,
        is_ready(p),
        std::cmp::Reverse(
            p.metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second()),
        ),
    )
}

async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Shared>) -> Result<Action, ControllerError> {
    if rs.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = rs.metadata.namespace.clone().unwrap_or_default();
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    let spec = rs.spec.clone().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let selector = Selector::new(&spec.selector);
    let mut owned: Vec<Arc<Pod>> = Vec::new();
    for p in ctx.pods.controlled_by(&uid) {
        if p.metadata.namespace.as_deref() != Some(ns.as_str()) {
            continue;
        }
        if selector.matches(p.metadata.labels.as_ref()) {
            owned.push(p);
            continue;
        }
        // No longer ours: release it.
        let refs: Vec<_> = p
            .metadata
            .owner_references
            .iter()
            .flatten()
            .filter(|o| o.uid != uid)
            .cloned()
            .collect();
        let patch = json!({"metadata": {"ownerReferences": refs, "uid": p.metadata.uid}});
        pods_api
            .patch(
                p.metadata.name.as_deref().unwrap_or(""),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await?;
    }
    for p in ctx.pods.orphans_in(&ns) {
        if !selector.matches(p.metadata.labels.as_ref()) || !is_active(&p) {
            continue;
        }
        // An orphan the selector matches: adopt it (the uid guards against a replaced pod).
        let mut refs: Vec<_> = p.metadata.owner_references.clone().unwrap_or_default();
        refs.push(owner_ref("apps/v1", "ReplicaSet", &rs.metadata));
        let patch = json!({"metadata": {"ownerReferences": refs, "uid": p.metadata.uid}});
        match pods_api
            .patch(
                p.metadata.name.as_deref().unwrap_or(""),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
        {
            Ok(adopted) => owned.push(Arc::new(adopted)),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if !ctx.expectations.satisfied(&uid, &owned) {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let active: Vec<Arc<Pod>> = owned.iter().filter(|p| is_active(p)).cloned().collect();
    let want = spec.replicas.unwrap_or(1).max(0) as usize;
    if active.len() < want {
        let missing = (want - active.len()).min(BURST);
        let template = pod_from_template(&rs)?;
        let pp = PostParams::default();
        let mut batch = 1;
        let mut done = 0;
        'batches: while done < missing {
            let n = batch.min(missing - done);
            let creates = (0..n).map(|_| pods_api.create(&pp, &template));
            let results = futures::future::join_all(creates).await;
            let mut created = Vec::new();
            let mut failed = None;
            for r in results {
                match r {
                    Ok(p) => created.push(p.metadata.name.unwrap_or_default()),
                    Err(e) => failed = Some(e),
                }
            }
            done += created.len();
            ctx.expectations.expect(&uid, created, Vec::new());
            if let Some(e) = failed {
                // Stop at the first failing batch (quota, invalid template): retried later.
                tracing::warn!(replicaset = ?rs.metadata.name, error = %e, "pod creation failed");
                break 'batches;
            }
            batch *= 2;
        }
    } else if active.len() > want {
        let mut victims = active.clone();
        victims.sort_by_key(|p| deletion_rank(p));
        let victims: Vec<Arc<Pod>> = victims.into_iter().take(active.len() - want).collect();
        ctx.expectations.expect(
            &uid,
            Vec::new(),
            victims
                .iter()
                .filter_map(|p| p.metadata.uid.clone())
                .collect(),
        );
        let dp = DeleteParams::default();
        let deletes = victims
            .iter()
            .map(|p| pods_api.delete(p.metadata.name.as_deref().unwrap_or(""), &dp));
        for r in futures::future::join_all(deletes).await {
            match r {
                Ok(_) | Err(kube::Error::Api(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    // Status from what the cache shows now.
    let now = jiff::Timestamp::now().as_second();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let labels = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let fully_labeled = active
        .iter()
        .filter(|p| {
            labels
                .iter()
                .all(|(k, v)| p.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v))
        })
        .count();
    let status = json!({
        "replicas": active.len(),
        "fullyLabeledReplicas": fully_labeled,
        "readyReplicas": active.iter().filter(|p| is_ready(p)).count(),
        "availableReplicas": active.iter().filter(|p| is_available(p, min_ready, now)).count(),
        "observedGeneration": rs.metadata.generation,
    });
    let current = serde_json::to_value(&rs.status).unwrap_or_default();
    let differs = [
        "replicas",
        "fullyLabeledReplicas",
        "readyReplicas",
        "availableReplicas",
        "observedGeneration",
    ]
    .iter()
    .any(|k| {
        current.get(k).cloned().unwrap_or(json!(0)) != status.get(k).cloned().unwrap_or(json!(0))
    });
    if differs {
        let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
        api.patch_status(
            rs.metadata.name.as_deref().unwrap_or(""),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await?;
    }
    // Pods that are ready but not yet available need a look once minReadySeconds pass.
    Ok(if min_ready > 0 {
        Action::requeue(Duration::from_secs(min_ready as u64))
    } else {
        Action::requeue(Duration::from_secs(30))
    })
}
