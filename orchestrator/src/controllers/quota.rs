//! ResourceQuota controller: a quota whose status does not yet state its `hard` limits or the usage
//! of each of them gets both, counted from the namespace's objects. Admission keeps usage exact from
//! then on (it changes in the same Txn as each create and delete), so the count is written with the
//! quota's resourceVersion as precondition: a create that lands meanwhile moves that version, the
//! write fails, and the count is taken again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ResourceQuota;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use serde_json::json;

use super::garbage::api_for;
use super::{ControllerError, Shared};
use crate::api::quota::{is_memory, usage};
use crate::api::{quantity, RESOURCES};

pub async fn run(
    shared: Arc<Shared>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = shared.controller_client();
    Controller::new(
        Api::<ResourceQuota>::all(client),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(stop)
    .run(reconcile, error_policy, shared)
    .for_each(|r| {
        if let Err(e) = r {
            tracing::debug!(error = %e, "quota reconcile");
        }
        futures::future::ready(())
    })
    .await;
}

fn error_policy(_q: Arc<ResourceQuota>, e: &ControllerError, _: Arc<Shared>) -> Action {
    tracing::warn!(error = %e, "quota sync failed");
    Action::requeue(Duration::from_secs(1))
}

fn counts_toward(key: &str, r: &crate::api::Resource) -> bool {
    let pod_compute = key.starts_with("requests.")
        || key.starts_with("limits.")
        || key == "cpu"
        || key == "memory";
    (r.kind == "Pod" && pod_compute) || usage(r, &json!({})).iter().any(|(k, _)| k == key)
}

async fn reconcile(q: Arc<ResourceQuota>, ctx: Arc<Shared>) -> Result<Action, ControllerError> {
    let hard = q
        .spec
        .as_ref()
        .and_then(|s| s.hard.clone())
        .unwrap_or_default();
    let status = q.status.clone().unwrap_or_default();
    let used = status.used.clone().unwrap_or_default();
    if status.hard.as_ref() == Some(&hard) && hard.keys().all(|k| used.contains_key(k)) {
        return Ok(Action::await_change());
    }
    let ns = q.metadata.namespace.clone().unwrap_or_default();
    let mut totals: BTreeMap<String, quantity::Milli> =
        hard.keys().map(|k| (k.clone(), 0)).collect();
    for r in RESOURCES
        .iter()
        .filter(|r| r.namespaced && hard.keys().any(|k| counts_toward(k, r)))
    {
        for o in api_for(&ctx.client, r, Some(&ns))
            .list(&ListParams::default())
            .await?
            .items
        {
            if r.kind == "Pod" && o.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let v =
                serde_json::to_value(&o).map_err(|e| ControllerError::Invalid(e.to_string()))?;
            for (k, n) in usage(r, &v) {
                if let Some(t) = totals.get_mut(&k) {
                    *t += n;
                }
            }
        }
    }
    let used: BTreeMap<String, String> = totals
        .into_iter()
        .map(|(k, n)| {
            let text = quantity::format(n, is_memory(&k));
            (k, text)
        })
        .collect();
    let mut next = (*q).clone();
    next.status = Some(
        serde_json::from_value(json!({"hard": hard, "used": used}))
            .map_err(|e| ControllerError::Invalid(e.to_string()))?,
    );
    let api: Api<ResourceQuota> = Api::namespaced(ctx.client.clone(), &ns);
    match api
        .replace_status(
            q.metadata.name.as_deref().unwrap_or(""),
            &PostParams::default(),
            &next,
        )
        .await
    {
        Ok(_) => Ok(Action::await_change()),
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {
            Ok(Action::requeue(Duration::from_millis(100)))
        }
        Err(e) => Err(e.into()),
    }
}
