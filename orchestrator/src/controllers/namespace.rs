//! Namespace controller (with the service account controller's one duty): a namespace being deleted
//! is emptied kind by kind, then its `kubernetes` finalizer is removed through the `finalize`
//! subresource, which lets the API server remove it; every active namespace gets a `default`
//! ServiceAccount.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, PostParams, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;

use super::garbage::api_for;
use super::{ControllerError, Shared};
use crate::api::RESOURCES;

pub async fn run(
    shared: Arc<Shared>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = shared.controller_client();
    Controller::new(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    // A deleted `default` account is created again, as Kubernetes' serviceaccount controller
    // does.
    .watches(
        Api::<ServiceAccount>::all(client),
        watcher::Config::default().fields("metadata.name=default"),
        |sa| sa.namespace().map(|ns| ObjectRef::new(&ns)),
    )
    .graceful_shutdown_on(stop)
    .run(reconcile, error_policy, shared)
    .for_each(|r| {
        if let Err(e) = r {
            tracing::debug!(error = %e, "namespace reconcile");
        }
        futures::future::ready(())
    })
    .await;
}

fn error_policy(_ns: Arc<Namespace>, e: &ControllerError, _: Arc<Shared>) -> Action {
    tracing::warn!(error = %e, "namespace sync failed");
    Action::requeue(Duration::from_secs(1))
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Shared>) -> Result<Action, ControllerError> {
    let name = ns.metadata.name.clone().unwrap_or_default();
    if ns.metadata.deletion_timestamp.is_none() {
        let sas: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &name);
        if sas.get_opt("default").await?.is_none() {
            let sa: ServiceAccount =
                serde_json::from_value(json!({"metadata": {"name": "default", "namespace": name}}))
                    .map_err(|e| ControllerError::Invalid(e.to_string()))?;
            match sas.create(&PostParams::default(), &sa).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 403 => {}
                Err(e) => return Err(e.into()),
            }
        }
        return Ok(Action::await_change());
    }
    // Empty the namespace; what still has finalizers is waited for.
    let mut remaining = 0usize;
    for r in RESOURCES.iter().filter(|r| r.namespaced) {
        let api = api_for(&ctx.client, r, Some(&name));
        let items = api.list(&ListParams::default()).await?.items;
        remaining += items.len();
        for o in items
            .iter()
            .filter(|o| o.metadata.deletion_timestamp.is_none())
        {
            let dp = DeleteParams {
                propagation_policy: Some(PropagationPolicy::Background),
                ..Default::default()
            };
            match api
                .delete(o.metadata.name.as_deref().unwrap_or(""), &dp)
                .await
            {
                Ok(_) | Err(kube::Error::Api(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    if remaining > 0 {
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    let finalizers: Vec<String> = ns
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|f| f != "kubernetes")
        .collect();
    let body = json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "resourceVersion": ns.metadata.resource_version},
        "spec": {"finalizers": finalizers}});
    let req = axum::http::Request::put(format!("/api/v1/namespaces/{name}/finalize"))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).map_err(|e| ControllerError::Invalid(e.to_string()))?)
        .map_err(|e| ControllerError::Invalid(e.to_string()))?;
    match ctx.client.request_text(req).await {
        Ok(_) => Ok(Action::await_change()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Action::await_change()),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            Ok(Action::requeue(Duration::from_millis(100)))
        }
        Err(e) => Err(e.into()),
    }
}
