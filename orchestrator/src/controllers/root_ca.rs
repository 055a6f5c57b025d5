//! Root CA publisher (kube-controller-manager's `root-ca-cert-publisher`): every namespace that is
//! not being deleted holds a `kube-root-ca.crt` ConfigMap whose `ca.crt` is the cluster's CA
//! bundle, so pods can trust the API server through their token volume. A missing ConfigMap is
//! created again, a changed one put back.
//!
//! Works from a watch of Namespaces and of the ConfigMaps of that one name; a client of the API
//! server only.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::ResourceExt;

use super::ControllerError;

/// The ConfigMap's name in every namespace.
pub const NAME: &str = "kube-root-ca.crt";

/// Kubernetes' description of the ConfigMap, kept as its annotation.
const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

struct Ctx {
    client: kube::Client,
    ca: String,
}

pub async fn run(
    client: kube::Client,
    ca: String,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        ca,
    });
    Controller::new(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(
        Api::<ConfigMap>::all(client),
        watcher::Config::default().fields(&format!("metadata.name={NAME}")),
        |cm| cm.namespace().map(|ns| ObjectRef::new(&ns)),
    )
    .graceful_shutdown_on(stop)
    .run(reconcile, error_policy, ctx)
    .for_each(|r| {
        if let Err(e) = r {
            tracing::debug!(error = %e, "root CA publish");
        }
        futures::future::ready(())
    })
    .await;
}

fn error_policy(_ns: Arc<Namespace>, e: &ControllerError, _: Arc<Ctx>) -> Action {
    tracing::warn!(error = %e, "root CA publish failed");
    Action::requeue(Duration::from_secs(1))
}

fn wanted(ns: &str, ca: &str) -> ConfigMap {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(NAME.into());
    cm.metadata.namespace = Some(ns.into());
    cm.metadata.annotations = Some(BTreeMap::from([(
        "kubernetes.io/description".to_string(),
        DESCRIPTION.to_string(),
    )]));
    cm.data = Some(BTreeMap::from([("ca.crt".to_string(), ca.to_string())]));
    cm
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, ControllerError> {
    if ns.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &name);
    let want = wanted(&name, &ctx.ca);
    let result = match cms.get_opt(NAME).await? {
        None => cms.create(&PostParams::default(), &want).await.map(|_| ()),
        Some(have) if have.data == want.data && have.binary_data.is_none() => {
            return Ok(Action::await_change())
        }
        Some(mut have) => {
            have.data = want.data;
            have.binary_data = None;
            have.annotations_mut().insert(
                "kubernetes.io/description".to_string(),
                DESCRIPTION.to_string(),
            );
            // The read's resourceVersion guards the write: a change meanwhile is looked at again.
            cms.replace(NAME, &PostParams::default(), &have)
                .await
                .map(|_| ())
        }
    };
    match result {
        Ok(()) => Ok(Action::await_change()),
        // Created or changed meanwhile (409), or the namespace began terminating (403): the
        // watch brings the next look.
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 403 => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_map_holds_the_bundle_under_ca_crt() {
        let cm = wanted("team", "PEM");
        assert_eq!(cm.metadata.name.as_deref(), Some("kube-root-ca.crt"));
        assert_eq!(cm.data.unwrap()["ca.crt"], "PEM");
        assert!(
            cm.metadata.annotations.unwrap()["kubernetes.io/description"]
                .starts_with("Contains a CA bundle")
        );
    }
}
