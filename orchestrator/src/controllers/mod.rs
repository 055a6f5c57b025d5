//! The controller manager: controllers that turn desired state into actual state, each a
//! kube-runtime `Controller` (watches, per-object reconcile queue, retries) or a reconcile loop over
//! reflector caches, as Kubernetes' kube-controller-manager runs them. They are clients of the API
//! server only: this module never imports `registry` or `apiserver`.

pub mod bootstrap;
pub mod deployment;
pub mod endpoints;
pub mod garbage;
pub mod informer;
pub mod namespace;
pub mod node_ipam;
pub mod node_lifecycle;
pub mod quota;
pub mod replicaset;
pub mod root_ca;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::api::Api;
use kube::runtime::reflector::Store;

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("API: {0}")]
    Api(#[from] kube::Error),
    #[error("invalid object: {0}")]
    Invalid(String),
    #[error(transparent)]
    Client(#[from] crate::client::ClientError),
}

/// Caches shared by the controllers.
pub struct Shared {
    /// The informers' client.
    pub client: kube::Client,
    clients: crate::client::Clients,
    pub pods: informer::PodInformer,
    pub replicasets: Store<ReplicaSet>,
    pub expectations: Expectations,
    pub config: ControllerConfig,
}

/// What a controller is still waiting to see in its caches after its own writes, per owner uid, so
/// that it never acts twice on one gap (Kubernetes' ControllerExpectations). An expectation not met
/// within five minutes is dropped, as Kubernetes does.
#[derive(Default)]
pub struct Expectations(Mutex<HashMap<String, Pending>>);

/// Names of pods created and uids of pods deleted that the cache does not show yet, and when the
/// last of them was recorded.
struct Pending {
    created: HashSet<String>,
    deleted: HashSet<String>,
    at: Instant,
}

const EXPECTATION_TTL: Duration = Duration::from_secs(300);

impl Expectations {
    /// Records pods created (by name) and deleted (by uid) for `owner`.
    pub fn expect(&self, owner: &str, created: Vec<String>, deleted: Vec<String>) {
        let mut m = self.0.lock().expect("not poisoned");
        let e = m.entry(owner.to_string()).or_insert_with(|| Pending {
            created: HashSet::new(),
            deleted: HashSet::new(),
            at: Instant::now(),
        });
        e.created.extend(created);
        e.deleted.extend(deleted);
        e.at = Instant::now();
    }

    /// Whether every expected change is visible in `pods` (the owner's pods from the cache).
    pub fn satisfied(&self, owner: &str, pods: &[Arc<Pod>]) -> bool {
        let mut m = self.0.lock().expect("not poisoned");
        let Some(e) = m.get_mut(owner) else {
            return true;
        };
        let names: HashSet<&str> = pods
            .iter()
            .filter_map(|p| p.metadata.name.as_deref())
            .collect();
        let uids: HashSet<&str> = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| p.metadata.uid.as_deref())
            .collect();
        e.created.retain(|n| !names.contains(n.as_str()));
        e.deleted.retain(|u| uids.contains(u.as_str()));
        if (e.created.is_empty() && e.deleted.is_empty()) || e.at.elapsed() > EXPECTATION_TTL {
            m.remove(owner);
            return true;
        }
        false
    }
}

/// How many objects of one kind a controller reconciles at once (kube-controller-manager's
/// `--concurrent-replicaset-syncs`, `--concurrent-deployment-syncs` and
/// `--concurrent-endpoint-syncs` defaults).
const WORKERS: u16 = 5;

fn workers() -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default().concurrency(WORKERS)
}

/// Settings of the controllers (kube-controller-manager's flags).
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// How long a node may go without renewing its Lease before it is unreachable.
    pub node_monitor_grace_period: Duration,
    /// The most endpoints one EndpointSlice holds.
    pub max_endpoints_per_slice: usize,
    /// The range nodes' pod CIDRs are cut from; none: nodes get no podCIDR from here
    /// (kube-controller-manager without `--allocate-node-cidrs`).
    pub cluster_cidr: Option<String>,
    /// The prefix length of each node's pod CIDR.
    pub node_cidr_mask_size: u8,
    /// The CA bundle (PEM) published as `kube-root-ca.crt` in every namespace; none: not
    /// published (kube-controller-manager's `--root-ca-file`).
    pub root_ca: Option<String>,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            node_monitor_grace_period: Duration::from_secs(40),
            max_endpoints_per_slice: 100,
            cluster_cidr: None,
            node_cidr_mask_size: 24,
            root_ca: None,
        }
    }
}

impl Shared {
    /// A client for one controller, throttled on its own when `clients` makes one per part.
    pub fn controller_client(&self) -> kube::Client {
        self.clients.client().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "a controller's own client: using the shared one");
            self.client.clone()
        })
    }
}

/// Runs every controller until `stop` resolves.
pub async fn run(
    clients: impl Into<crate::client::Clients>,
    config: ControllerConfig,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), ControllerError> {
    // Bad flags stop the start, before any controller runs.
    let cidrs = config
        .cluster_cidr
        .as_deref()
        .map(|c| node_ipam::CidrSet::new(c, config.node_cidr_mask_size))
        .transpose()
        .map_err(ControllerError::Invalid)?;
    let clients = clients.into();
    let client = clients.client()?;
    let (pods, pod_task) = informer::PodInformer::start(client.clone());
    let (replicasets, rs_task) =
        crate::client::reflect(Api::<ReplicaSet>::all(client.clone()), None);
    let _guard = AbortOnDrop(vec![pod_task, rs_task]);
    let _ = pods.store().wait_until_ready().await;
    let _ = replicasets.wait_until_ready().await;
    let shared = Arc::new(Shared {
        client: client.clone(),
        clients: clients.clone(),
        pods,
        replicasets,
        expectations: Expectations::default(),
        config: config.clone(),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut tasks = vec![
        tokio::spawn(replicaset::run(shared.clone(), stopped(stop_rx.clone()))),
        tokio::spawn(deployment::run(shared.clone(), stopped(stop_rx.clone()))),
        tokio::spawn(endpoints::run(shared.clone(), stopped(stop_rx.clone()))),
        tokio::spawn(namespace::run(shared.clone(), stopped(stop_rx.clone()))),
        tokio::spawn(garbage::run(
            shared.controller_client(),
            stopped(stop_rx.clone()),
        )),
        tokio::spawn(bootstrap::run(
            shared.controller_client(),
            stopped(stop_rx.clone()),
        )),
        tokio::spawn(quota::run(shared.clone(), stopped(stop_rx.clone()))),
        tokio::spawn(node_lifecycle::run(
            shared.clone(),
            config.node_monitor_grace_period,
            stopped(stop_rx.clone()),
        )),
    ];
    if let Some(ca) = config.root_ca.clone() {
        tasks.push(tokio::spawn(root_ca::run(
            shared.controller_client(),
            ca,
            stopped(stop_rx.clone()),
        )));
    }
    if let Some(set) = cidrs {
        tasks.push(tokio::spawn(node_ipam::run(
            shared.controller_client(),
            set,
            stopped(stop_rx.clone()),
        )));
    }
    stop.await;
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// The controller reference among an object's owner references.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
}

/// A metav1.LabelSelector worked out once, to be matched against many pods. An empty or invalid
/// selector matches nothing, as for workloads.
pub struct Selector(Option<crate::api::selector::LabelSelector>);

impl Selector {
    pub fn new(sel: &LabelSelector) -> Selector {
        let parsed = serde_json::to_value(sel)
            .ok()
            .and_then(|v| crate::api::selector::LabelSelector::from_object(&v).ok())
            .filter(|p| !p.is_empty());
        Selector(parsed)
    }

    pub fn matches(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        let Some(sel) = &self.0 else {
            return false;
        };
        let map: serde_json::Map<String, serde_json::Value> = labels
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        sel.matches(Some(&map))
    }
}

/// Whether `labels` match a metav1.LabelSelector (an empty selector matches nothing, as for
/// workloads).
pub fn selects(sel: &LabelSelector, labels: Option<&BTreeMap<String, String>>) -> bool {
    Selector::new(sel).matches(labels)
}

pub fn owner_ref(api_version: &str, kind: &str, meta: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Ready for at least `min_ready` seconds.
pub fn is_available(pod: &Pod, min_ready: i32, now: i64) -> bool {
    if !is_ready(pod) {
        return false;
    }
    if min_ready <= 0 {
        return true;
    }
    let since = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0.as_second());
    since.is_some_and(|t| now - t >= i64::from(min_ready))
}

pub fn is_active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && !matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}
