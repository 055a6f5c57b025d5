//! Deployment controller: a Deployment's pod template lives in ReplicaSets, one per template
//! revision (named `<deployment>-<pod-template-hash>`, revision in the
//! `deployment.kubernetes.io/revision` annotation). Rolling updates move replicas from the old
//! ReplicaSets to the new one without exceeding `replicas + maxSurge` pods in total or dropping below
//! `replicas - maxUnavailable` available pods; Recreate scales the old ones to zero first. Old
//! ReplicaSets beyond `revisionHistoryLimit` are deleted; a paused Deployment is left as it is; the
//! status (replicas, updated, ready, available, conditions, observedGeneration) is what `kubectl
//! rollout status` waits on.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use serde_json::json;

use super::{controller_of, owner_ref, selects, ControllerError, Shared};

const REVISION: &str = "deployment.kubernetes.io/revision";
const HASH_LABEL: &str = "pod-template-hash";

pub async fn run(
    shared: Arc<Shared>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = shared.controller_client();
    Controller::new(
        Api::<Deployment>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<ReplicaSet>::all(client), watcher::Config::default())
    .with_config(super::workers())
    .graceful_shutdown_on(stop)
    .run(reconcile, error_policy, shared)
    .for_each(|r| {
        if let Err(e) = r {
            tracing::debug!(error = %e, "deployment reconcile");
        }
        futures::future::ready(())
    })
    .await;
}

fn error_policy(_d: Arc<Deployment>, e: &ControllerError, _: Arc<Shared>) -> Action {
    tracing::warn!(error = %e, "deployment sync failed");
    Action::requeue(Duration::from_secs(1))
}

/// Kubernetes' pod-template-hash: a 32-bit FNV-1a of the template, spelled in the alphabet of
/// generated names.
pub fn template_hash(t: &PodTemplateSpec) -> String {
    let bytes = serde_json::to_vec(t).unwrap_or_default();
    let mut h: u32 = 2166136261;
    for b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(16777619);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut n = u64::from(h);
    let mut out = String::new();
    while n > 0 || out.is_empty() {
        out.push(ALPHABET[(n % ALPHABET.len() as u64) as usize] as char);
        n /= ALPHABET.len() as u64;
    }
    out
}

/// The template without the hash label, as the Deployment states it.
fn without_hash(t: &PodTemplateSpec) -> PodTemplateSpec {
    let mut t = t.clone();
    if let Some(l) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        l.remove(HASH_LABEL);
        if l.is_empty() {
            t.metadata.as_mut().expect("checked above").labels = None;
        }
    }
    t
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn status_of(rs: &ReplicaSet) -> (i32, i32, i32) {
    let s = rs.status.as_ref();
    (
        s.map(|s| s.replicas).unwrap_or(0),
        s.and_then(|s| s.ready_replicas).unwrap_or(0),
        s.and_then(|s| s.available_replicas).unwrap_or(0),
    )
}

/// maxSurge / maxUnavailable against `replicas`: percentages round up for surge, down otherwise.
fn resolve(v: Option<&IntOrString>, replicas: i32, round_up: bool, default_pct: i32) -> i32 {
    match v {
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => {
            let pct: i32 = s.trim_end_matches('%').parse().unwrap_or(default_pct);
            let scaled = i64::from(pct) * i64::from(replicas);
            (if round_up {
                (scaled + 99) / 100
            } else {
                scaled / 100
            }) as i32
        }
        None => {
            let scaled = i64::from(default_pct) * i64::from(replicas);
            (if round_up {
                (scaled + 99) / 100
            } else {
                scaled / 100
            }) as i32
        }
    }
}

/// Sets a ReplicaSet's replicas; whether anything changed.
async fn scale(
    api: &Api<ReplicaSet>,
    rs: &ReplicaSet,
    to: i32,
    d: &Deployment,
) -> Result<bool, ControllerError> {
    if spec_replicas(rs) == to {
        return Ok(false);
    }
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let patch = json!({"metadata": {"annotations": {"deployment.kubernetes.io/desired-replicas": desired.to_string()}},
        "spec": {"replicas": to}});
    api.patch(
        rs.metadata.name.as_deref().unwrap_or(""),
        &PatchParams::default(),
        &Patch::Merge(patch),
    )
    .await?;
    Ok(true)
}

async fn reconcile(d: Arc<Deployment>, ctx: Arc<Shared>) -> Result<Action, ControllerError> {
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = d.metadata.namespace.clone().unwrap_or_default();
    let name = d.metadata.name.clone().unwrap_or_default();
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let spec = d.spec.clone().unwrap_or_default();
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let mut rss: Vec<ReplicaSet> = Vec::new();
    for rs in ctx.replicasets.state() {
        if rs.metadata.namespace.as_deref() != Some(ns.as_str()) {
            continue;
        }
        let labels = rs
            .spec
            .as_ref()
            .and_then(|s| s.template.as_ref())
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.labels.as_ref());
        match controller_of(&rs.metadata) {
            Some(o) if o.uid == uid => rs_push(&mut rss, &rs),
            None if selects(&spec.selector, labels) && rs.metadata.deletion_timestamp.is_none() => {
                let mut refs = rs.metadata.owner_references.clone().unwrap_or_default();
                refs.push(owner_ref("apps/v1", "Deployment", &d.metadata));
                let patch = json!({"metadata": {"ownerReferences": refs, "uid": rs.metadata.uid}});
                if let Ok(adopted) = api
                    .patch(
                        rs.metadata.name.as_deref().unwrap_or(""),
                        &PatchParams::default(),
                        &Patch::Merge(patch),
                    )
                    .await
                {
                    rss.push(adopted);
                }
            }
            _ => {}
        }
    }
    let template = spec.template.clone();
    let desired = spec.replicas.unwrap_or(1).max(0);
    let max_rev = rss.iter().map(revision).max().unwrap_or(0);
    let new = rss
        .iter()
        .find(|rs| {
            rs.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .map(without_hash)
                .as_ref()
                == Some(&template)
        })
        .cloned();
    if spec.paused == Some(true) {
        return update_status(&ctx, &d, &rss, new.as_ref()).await;
    }
    let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
    let ru = spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.clone())
        .unwrap_or_default();
    let mut surge = resolve(ru.max_surge.as_ref(), desired, true, 25);
    let mut unavailable = resolve(ru.max_unavailable.as_ref(), desired, false, 25);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    if recreate {
        surge = 0;
    }
    let change_cause = d
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("kubernetes.io/change-cause"))
        .cloned();
    match &new {
        None => {
            let hash = template_hash(&template);
            let mut t = template.clone();
            let tm = t.metadata.get_or_insert_with(Default::default);
            tm.labels
                .get_or_insert_with(BTreeMap::new)
                .insert(HASH_LABEL.into(), hash.clone());
            let mut selector = spec.selector.clone();
            selector
                .match_labels
                .get_or_insert_with(BTreeMap::new)
                .insert(HASH_LABEL.into(), hash.clone());
            let olds_total: i32 = rss.iter().map(spec_replicas).sum();
            let start = if recreate {
                0
            } else {
                (desired + surge - olds_total).clamp(0, desired)
            };
            let mut annotations = BTreeMap::from([
                (REVISION.to_string(), (max_rev + 1).to_string()),
                (
                    "deployment.kubernetes.io/desired-replicas".to_string(),
                    desired.to_string(),
                ),
                (
                    "deployment.kubernetes.io/max-replicas".to_string(),
                    (desired + surge).to_string(),
                ),
            ]);
            if let Some(c) = &change_cause {
                annotations.insert("kubernetes.io/change-cause".into(), c.clone());
            }
            let rs: ReplicaSet = serde_json::from_value(json!({
                "metadata": {"name": format!("{name}-{hash}"), "namespace": ns, "labels": t.metadata.as_ref().and_then(|m| m.labels.clone()),
                    "annotations": annotations, "ownerReferences": [owner_ref("apps/v1", "Deployment", &d.metadata)]},
                "spec": {"replicas": start, "minReadySeconds": spec.min_ready_seconds, "selector": selector, "template": t},
            }))
            .map_err(|e| ControllerError::Invalid(e.to_string()))?;
            // The next pass finds it in the cache (a 409: an earlier pass created it already).
            match api.create(&PostParams::default(), &rs).await {
                Ok(_) => return Ok(Action::requeue(Duration::from_millis(100))),
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    return Ok(Action::requeue(Duration::from_millis(200)))
                }
                Err(e) => return Err(e.into()),
            }
        }
        Some(n)
            if revision(n) < max_rev
                || change_cause.is_some()
                    && n.metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get("kubernetes.io/change-cause"))
                        != change_cause.as_ref() =>
        {
            // Rolled back to an older template: it becomes the newest revision.
            let mut ann = json!({});
            if revision(n) < max_rev {
                ann[REVISION] = json!((max_rev + 1).to_string());
            }
            if let Some(c) = &change_cause {
                ann["kubernetes.io/change-cause"] = json!(c);
            }
            api.patch(
                n.metadata.name.as_deref().unwrap_or(""),
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": ann}})),
            )
            .await?;
            return Ok(Action::requeue(Duration::from_millis(100)));
        }
        _ => {}
    }
    let Some(new) = new else {
        return Ok(Action::requeue(Duration::from_millis(100)));
    };
    // The Deployment carries its current revision too (kubectl rollout reads and patches it).
    let rev = revision(&new).to_string();
    if d.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        != Some(&rev)
    {
        let deploys: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({"metadata": {"annotations": {REVISION: rev}}});
        deploys
            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
    }
    let new_name = new.metadata.name.clone();
    let mut olds: Vec<&ReplicaSet> = rss.iter().filter(|r| r.metadata.name != new_name).collect();
    olds.sort_by_key(|r| {
        (
            revision(r),
            r.metadata.creation_timestamp.as_ref().map(|t| t.0),
        )
    });
    if recreate {
        for o in &olds {
            scale(&api, o, 0, &d).await?;
        }
        // New pods only once every old pod is gone.
        if olds
            .iter()
            .all(|o| status_of(o).0 == 0 && spec_replicas(o) == 0)
        {
            scale(&api, &new, desired, &d).await?;
        }
    } else {
        // One step a pass, as Kubernetes does: scale the new ReplicaSet up within maxSurge, and only
        // when it cannot grow, scale old ones down while replicas - maxUnavailable stay available.
        let total: i32 = rss.iter().map(spec_replicas).sum();
        let new_spec = spec_replicas(&new);
        let target = if new_spec > desired {
            desired
        } else {
            (new_spec + (desired + surge - total).max(0)).min(desired)
        };
        if scale(&api, &new, target, &d).await? {
            return Ok(Action::requeue(Duration::from_millis(100)));
        }
        let min_available = desired - unavailable;
        let new_unavailable = (new_spec - status_of(&new).2).max(0);
        let mut budget = total - min_available - new_unavailable;
        // First the old replicas that are not available anyway.
        for o in &olds {
            if budget <= 0 {
                break;
            }
            let unhealthy = (spec_replicas(o) - status_of(o).2).max(0).min(budget);
            if unhealthy > 0 {
                scale(&api, o, spec_replicas(o) - unhealthy, &d).await?;
                budget -= unhealthy;
            }
        }
        let available: i32 = rss.iter().map(|r| status_of(r).2).sum();
        let mut excess = (available - min_available).min(budget).max(0);
        for o in &olds {
            if excess <= 0 {
                break;
            }
            let cut = spec_replicas(o).min(excess);
            if cut > 0 {
                scale(&api, o, spec_replicas(o) - cut, &d).await?;
                excess -= cut;
            }
        }
    }
    // History: old, empty ReplicaSets beyond revisionHistoryLimit go, oldest first.
    let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
    let empty: Vec<&&ReplicaSet> = olds
        .iter()
        .filter(|o| spec_replicas(o) == 0 && status_of(o).0 == 0)
        .collect();
    if empty.len() > limit {
        for o in empty.iter().take(empty.len() - limit) {
            let _ = api
                .delete(
                    o.metadata.name.as_deref().unwrap_or(""),
                    &DeleteParams::background(),
                )
                .await;
        }
    }
    update_status(&ctx, &d, &rss, Some(&new)).await
}

fn rs_push(rss: &mut Vec<ReplicaSet>, rs: &Arc<ReplicaSet>) {
    if rs.metadata.deletion_timestamp.is_none() {
        rss.push((**rs).clone());
    }
}

async fn update_status(
    ctx: &Shared,
    d: &Deployment,
    rss: &[ReplicaSet],
    new: Option<&ReplicaSet>,
) -> Result<Action, ControllerError> {
    let spec = d.spec.clone().unwrap_or_default();
    let desired = spec.replicas.unwrap_or(1);
    let replicas: i32 = rss.iter().map(|r| status_of(r).0).sum();
    let ready: i32 = rss.iter().map(|r| status_of(r).1).sum();
    let available: i32 = rss.iter().map(|r| status_of(r).2).sum();
    let updated = new.map(|n| status_of(n).0).unwrap_or(0);
    let ru = spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.clone())
        .unwrap_or_default();
    let max_unavailable =
        if spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate") {
            0
        } else {
            resolve(ru.max_unavailable.as_ref(), desired, false, 25)
        };
    let now = crate::api::meta::now();
    let old = d.status.clone().unwrap_or_default();
    let old_cond = |ty: &str| {
        old.conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == ty)
            .cloned()
    };
    let complete = updated == desired
        && replicas == desired
        && available >= desired
        && new.is_some_and(|n| status_of(n).2 >= desired);
    let avail_ok = available >= desired - max_unavailable;
    let available_cond = {
        let status = if avail_ok { "True" } else { "False" };
        let prev = old_cond("Available");
        let changed = prev.as_ref().map(|c| c.status.as_str()) != Some(status);
        json!({"type": "Available", "status": status,
            "reason": if avail_ok { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" },
            "message": if avail_ok { "Deployment has minimum availability." } else { "Deployment does not have minimum availability." },
            "lastUpdateTime": if changed { now.clone() } else { prev.as_ref().and_then(|c| c.last_update_time.as_ref()).map(|t| crate::api::meta::format_time(t.0.as_second())).unwrap_or(now.clone()) },
            "lastTransitionTime": if changed { now.clone() } else { prev.as_ref().and_then(|c| c.last_transition_time.as_ref()).map(|t| crate::api::meta::format_time(t.0.as_second())).unwrap_or(now.clone()) }})
    };
    let new_name = new
        .and_then(|n| n.metadata.name.clone())
        .unwrap_or_default();
    let prev = old_cond("Progressing");
    let progressed = old.updated_replicas != Some(updated)
        || old.available_replicas != Some(available)
        || old.replicas != Some(replicas);
    let deadline = i64::from(spec.progress_deadline_seconds.unwrap_or(600));
    let last_update = prev
        .as_ref()
        .and_then(|c| c.last_update_time.as_ref())
        .map(|t| t.0.as_second());
    let (status, reason, message) = if complete {
        (
            "True",
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{new_name}\" has successfully progressed."),
        )
    } else if !progressed
        && last_update.is_some_and(|t| jiff::Timestamp::now().as_second() - t > deadline)
    {
        (
            "False",
            "ProgressDeadlineExceeded",
            format!("ReplicaSet \"{new_name}\" has timed out progressing."),
        )
    } else {
        (
            "True",
            "ReplicaSetUpdated",
            format!("ReplicaSet \"{new_name}\" is progressing."),
        )
    };
    let same = prev
        .as_ref()
        .is_some_and(|c| c.status == status && c.reason.as_deref() == Some(reason));
    let keep_time = |t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
        t.map(|t| crate::api::meta::format_time(t.0.as_second()))
            .unwrap_or(now.clone())
    };
    let progressing_cond = json!({"type": "Progressing", "status": status, "reason": reason, "message": message,
        "lastUpdateTime": if same && !progressed { keep_time(prev.as_ref().and_then(|c| c.last_update_time.as_ref())) } else { now.clone() },
        "lastTransitionTime": if prev.as_ref().is_some_and(|c| c.status == status) { keep_time(prev.as_ref().and_then(|c| c.last_transition_time.as_ref())) } else { now.clone() }});
    let status = json!({
        "observedGeneration": d.metadata.generation,
        "replicas": replicas,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": available,
        "unavailableReplicas": (desired - available).max(0),
        "conditions": [available_cond, progressing_cond],
    });
    let current = serde_json::to_value(&old).unwrap_or_default();
    let strip_times = |v: &serde_json::Value| {
        let mut v = v.clone();
        if let Some(cs) = v.get_mut("conditions").and_then(|c| c.as_array_mut()) {
            for c in cs {
                if let Some(m) = c.as_object_mut() {
                    m.remove("lastUpdateTime");
                    m.remove("lastTransitionTime");
                }
            }
        }
        if let Some(m) = v.as_object_mut() {
            m.retain(|_, x| !x.is_null() && *x != json!(0));
        }
        v
    };
    if strip_times(&current) != strip_times(&status) {
        let api: Api<Deployment> = Api::namespaced(
            ctx.client.clone(),
            d.metadata.namespace.as_deref().unwrap_or(""),
        );
        api.patch_status(
            d.metadata.name.as_deref().unwrap_or(""),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await?;
    }
    Ok(if complete {
        Action::requeue(Duration::from_secs(60))
    } else {
        Action::requeue(Duration::from_secs(5))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surge_rounds_up_and_unavailable_down() {
        let pct = |s: &str| Some(IntOrString::String(s.into()));
        assert_eq!(resolve(pct("25%").as_ref(), 10, true, 25), 3);
        assert_eq!(resolve(pct("25%").as_ref(), 10, false, 25), 2);
        assert_eq!(resolve(Some(&IntOrString::Int(1)), 10, false, 25), 1);
        assert_eq!(resolve(None, 3, false, 25), 0);
    }

    #[test]
    fn template_hashes_are_stable_and_differ_by_template() {
        let a: PodTemplateSpec =
            serde_json::from_value(json!({"spec": {"containers": [{"name": "c", "image": "a"}]}}))
                .unwrap();
        let b: PodTemplateSpec =
            serde_json::from_value(json!({"spec": {"containers": [{"name": "c", "image": "b"}]}}))
                .unwrap();
        assert_eq!(template_hash(&a), template_hash(&a.clone()));
        assert_ne!(template_hash(&a), template_hash(&b));
        assert!(template_hash(&a).chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
