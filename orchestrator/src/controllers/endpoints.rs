//! Endpoints and EndpointSlice controllers: each Service with a selector gets an Endpoints object and
//! EndpointSlices listing the addresses of the pods it selects (ready ones as addresses, the others
//! as not-ready), with the Service's ports resolved against each pod's container ports (named
//! target ports included). As in Kubernetes, a slice holds at most `--max-endpoints-per-slice`
//! endpoints (100), so a change to one pod of a large Service rewrites one small object, not one
//! huge one, and the Endpoints object stops at 1,000 addresses, marked
//! `endpoints.kubernetes.io/over-capacity: truncated`. Services without a selector are left to
//! whoever manages them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use serde_json::{json, Value};

use super::{is_ready, ControllerError, Shared};

const MANAGER: &str = "endpointslice-controller.k8s.io";
/// The most addresses an Endpoints object carries (Kubernetes' maxCapacity).
const ENDPOINTS_CAPACITY: usize = 1000;

pub async fn run(
    shared: Arc<Shared>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = shared.controller_client();
    let controller = Controller::new(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    );
    let services = controller.store();
    let (slices, slice_writer) = kube::runtime::reflector::store();
    let slice_task = tokio::spawn(
        kube::runtime::watcher(
            Api::<EndpointSlice>::all(shared.client.clone()),
            watcher::Config::default()
                .labels(&format!("endpointslice.kubernetes.io/managed-by={MANAGER}")),
        )
        .default_backoff()
        .reflect(slice_writer)
        .for_each(|_| futures::future::ready(())),
    );
    let _guard = super::AbortOnDrop(vec![slice_task]);
    let _ = slices.wait_until_ready().await;
    let ctx = Arc::new(Context {
        shared: shared.clone(),
        slices,
    });
    // A pod change touches the services in its namespace whose selector picks it, before or after.
    let triggers = shared.pods.subscribe().flat_map(move |c| {
        let mut refs: Vec<ObjectRef<Service>> = Vec::new();
        for p in std::iter::once(&c.pod).chain(c.before.as_ref()) {
            let ns = p.metadata.namespace.as_deref();
            let labels = p.metadata.labels.clone().unwrap_or_default();
            refs.extend(
                services
                    .state()
                    .into_iter()
                    .filter(|s| s.metadata.namespace.as_deref() == ns)
                    .filter(|s| {
                        s.spec
                            .as_ref()
                            .and_then(|sp| sp.selector.as_ref())
                            .is_some_and(|sel| {
                                !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
                            })
                    })
                    .map(|s| ObjectRef::from_obj(&*s)),
            );
        }
        refs.dedup();
        futures::stream::iter(refs)
    });
    controller
        .reconcile_on(triggers)
        .with_config(super::workers())
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, ctx)
        .for_each(|r| {
            if let Err(e) = r {
                tracing::debug!(error = %e, "endpoints reconcile");
            }
            futures::future::ready(())
        })
        .await;
}

/// What a sync reads: the shared caches, and the slices this controller wrote.
pub struct Context {
    shared: Arc<Shared>,
    slices: Store<EndpointSlice>,
}

fn error_policy(_s: Arc<Service>, e: &ControllerError, _: Arc<Context>) -> Action {
    tracing::warn!(error = %e, "endpoints sync failed");
    Action::requeue(Duration::from_secs(1))
}

/// The port a Service port reaches on `pod`: its number, or the container port of that name.
fn target_port(sp: &k8s_openapi::api::core::v1::ServicePort, pod: &Pod) -> Option<i32> {
    match &sp.target_port {
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port),
        None => Some(sp.port),
    }
}

/// A resolved port: name, number, protocol.
type ResolvedPort = (String, i32, String);

/// Ready and not-ready addresses of pods that resolve the Service's ports the same way.
type Subset = (Vec<Value>, Vec<Value>);

async fn reconcile(svc: Arc<Service>, cx: Arc<Context>) -> Result<Action, ControllerError> {
    let ctx = &cx.shared;
    let Some(selector) = svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .filter(|s| !s.is_empty())
    else {
        return Ok(Action::await_change());
    };
    if svc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.metadata.name.clone().unwrap_or_default();
    let mut pods: Vec<Arc<Pod>> = ctx
        .pods
        .in_namespace(&ns)
        .into_iter()
        .filter(|p| {
            let l = p.metadata.labels.clone().unwrap_or_default();
            selector.iter().all(|(k, v)| l.get(k) == Some(v))
        })
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.pod_ip.as_ref())
                .is_some_and(|ip| !ip.is_empty())
        })
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .collect();
    pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    // Endpoints: pods grouped by the port numbers they resolve to.
    let mut subsets: BTreeMap<Vec<ResolvedPort>, Subset> = BTreeMap::new();
    let mut slice_endpoints = Vec::new();
    let truncated = pods.len() > ENDPOINTS_CAPACITY;
    for (i, p) in pods.iter().enumerate() {
        let resolved: Vec<ResolvedPort> = ports
            .iter()
            .filter_map(|sp| {
                target_port(sp, p).map(|n| {
                    (
                        sp.name.clone().unwrap_or_default(),
                        n,
                        sp.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    )
                })
            })
            .collect();
        let ip = p
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default();
        let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
        let target =
            json!({"kind": "Pod", "namespace": ns, "name": p.metadata.name, "uid": p.metadata.uid});
        let addr = json!({"ip": ip, "nodeName": node, "targetRef": target});
        let terminating = p.metadata.deletion_timestamp.is_some();
        let ready = is_ready(p) && !terminating;
        if i < ENDPOINTS_CAPACITY {
            let entry = subsets.entry(resolved).or_default();
            if ready {
                entry.0.push(addr);
            } else {
                entry.1.push(addr);
            }
        }
        slice_endpoints.push(json!({"addresses": [ip], "conditions": {"ready": ready, "serving": is_ready(p), "terminating": terminating},
            "nodeName": node, "targetRef": target}));
    }
    let subsets: Vec<Value> = subsets
        .into_iter()
        .map(|(ports, (ready, not_ready))| {
            let ports: Vec<Value> = ports
                .into_iter()
                .map(|(n, p, proto)| {
                    let mut v = json!({"port": p, "protocol": proto});
                    if !n.is_empty() {
                        v["name"] = json!(n);
                    }
                    v
                })
                .collect();
            let mut s = json!({"ports": ports});
            if !ready.is_empty() {
                s["addresses"] = json!(ready);
            }
            if !not_ready.is_empty() {
                s["notReadyAddresses"] = json!(not_ready);
            }
            s
        })
        .collect();
    let owner = json!([{"apiVersion": "v1", "kind": "Service", "name": name, "uid": svc.metadata.uid, "controller": true, "blockOwnerDeletion": true}]);
    let pp = PatchParams::apply(MANAGER).force();
    let eps: Api<Endpoints> = Api::namespaced(ctx.client.clone(), &ns);
    // Owned by the Service (Kubernetes relies on this controller to remove them; here the garbage
    // collector does).
    let annotations = if truncated {
        json!({"endpoints.kubernetes.io/over-capacity": "truncated"})
    } else {
        json!({})
    };
    let ep = json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name, "namespace": ns,
        "labels": svc.metadata.labels, "annotations": annotations, "ownerReferences": owner}, "subsets": subsets});
    eps.patch(&name, &pp, &Patch::Apply(ep)).await?;
    let slice_ports: Vec<Value> = ports
        .iter()
        .map(|sp| {
            let port = match &sp.target_port {
                Some(IntOrString::Int(n)) => Some(*n),
                None => Some(sp.port),
                // A named port may differ per pod; the first pod's resolution stands for the slice.
                Some(IntOrString::String(_)) => pods.first().and_then(|p| target_port(sp, p)),
            };
            json!({"name": sp.name.clone().unwrap_or_default(), "port": port, "protocol": sp.protocol.clone().unwrap_or_else(|| "TCP".into())})
        })
        .collect();
    let slices: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    let per_slice = ctx.config.max_endpoints_per_slice.max(1);
    // A Service with no endpoints still has one (empty) slice, as in Kubernetes.
    let chunks: Vec<&[Value]> = if slice_endpoints.is_empty() {
        vec![&[]]
    } else {
        slice_endpoints.chunks(per_slice).collect()
    };
    let mut wanted = std::collections::HashSet::new();
    for (i, chunk) in chunks.into_iter().enumerate() {
        let slice_name = format!("{name}-{i}");
        let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": slice_name, "namespace": ns, "ownerReferences": owner,
                "labels": {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": MANAGER}},
            "addressType": "IPv4", "endpoints": chunk, "ports": slice_ports});
        slices.patch(&slice_name, &pp, &Patch::Apply(slice)).await?;
        wanted.insert(slice_name);
    }
    // Slices no longer needed (the Service shrank).
    let stale: Vec<String> = cx
        .slices
        .state()
        .iter()
        .filter(|s| s.metadata.namespace.as_deref() == Some(ns.as_str()))
        .filter(|s| {
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/service-name"))
                == Some(&name)
        })
        .filter_map(|s| s.metadata.name.clone())
        .filter(|n| !wanted.contains(n))
        .collect();
    for n in stale {
        match slices.delete(&n, &Default::default()).await {
            Ok(_) | Err(kube::Error::Api(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Action::requeue(Duration::from_secs(60)))
}
