//! Simulated nodes, the way kwok fakes kubelets: each registers a Node, renews its Lease in
//! `kube-node-lease`, moves the pods bound to it to Running and Ready, and finishes their deletion.
//! So the scheduler, the controllers, the API server and the store can be exercised at a scale no
//! single machine could run for real, and a node's loss simulated by stopping its heartbeats.
//! It is an API client like any other: it never imports `registry` or `apiserver`; it renews its
//! Leases as the agent does (`agent::node`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::api::meta;

/// What the simulated nodes look like.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub prefix: String,
    pub count: usize,
    pub cpu: String,
    pub memory: String,
    pub pods: String,
    /// How often each node renews its Lease (the kubelet's 10 s).
    pub heartbeat: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            prefix: "sim-".into(),
            count: 3,
            cpu: "4".into(),
            memory: "16Gi".into(),
            pods: "110".into(),
            heartbeat: Duration::from_secs(10),
        }
    }
}

/// Running simulated nodes; dropping this stops them all (their heartbeats stop too).
pub struct SimulatedNodes {
    names: Vec<String>,
    silenced: Arc<Mutex<HashSet<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for SimulatedNodes {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn node_object(cfg: &SimConfig, name: &str, i: usize) -> Result<Node, serde_json::Error> {
    let now = meta::now();
    let cond = |ty: &str, status: &str, reason: &str| json!({"type": ty, "status": status, "reason": reason, "lastHeartbeatTime": now, "lastTransitionTime": now});
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64", "type": "simulated"}},
        "spec": {"podCIDR": format!("10.244.{}.0/24", i % 256)},
        "status": {
            "capacity": {"cpu": cfg.cpu, "memory": cfg.memory, "pods": cfg.pods},
            "allocatable": {"cpu": cfg.cpu, "memory": cfg.memory, "pods": cfg.pods},
            "conditions": [
                cond("Ready", "True", "KubeletReady"),
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID"),
            ],
            "addresses": [{"type": "InternalIP", "address": node_ip(i)},
                {"type": "Hostname", "address": name}],
            "nodeInfo": {"kubeletVersion": "v1.33.0-sim", "kubeProxyVersion": "", "osImage": "simulated",
                "kernelVersion": "simulated", "containerRuntimeVersion": "simulated://1", "operatingSystem": "linux",
                "architecture": "amd64", "machineID": "", "systemUUID": "", "bootID": ""},
        }
    }))
}

impl SimulatedNodes {
    /// Registers the nodes and starts their heartbeats and pod handling.
    pub async fn start(
        client: kube::Client,
        cfg: SimConfig,
    ) -> Result<SimulatedNodes, kube::Error> {
        let nodes: Api<Node> = Api::all(client.clone());
        let mut names = Vec::new();
        for i in 0..cfg.count {
            let name = format!("{}{i}", cfg.prefix);
            let obj = node_object(&cfg, &name, i).map_err(kube::Error::SerdeError)?;
            match nodes.create(&PostParams::default(), &obj).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    let status = json!({"status": serde_json::to_value(&obj.status).map_err(kube::Error::SerdeError)?});
                    nodes
                        .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                        .await?;
                }
                Err(e) => return Err(e),
            }
            names.push(name);
        }
        let silenced = Arc::new(Mutex::new(HashSet::new()));
        let tasks = vec![
            tokio::spawn(heartbeats(
                client.clone(),
                names.clone(),
                silenced.clone(),
                cfg.heartbeat,
            )),
            tokio::spawn(pod_worker(client, names.clone(), silenced.clone())),
        ];
        Ok(SimulatedNodes {
            names,
            silenced,
            tasks,
        })
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The node stops renewing its Lease and handling its pods, as a node that lost power would.
    pub fn silence(&self, node: &str) {
        self.silenced
            .lock()
            .expect("not poisoned")
            .insert(node.to_string());
    }
}

fn is_silenced(s: &Mutex<HashSet<String>>, node: &str) -> bool {
    s.lock().expect("not poisoned").contains(node)
}

/// How many of a simulated node's API calls are in flight at once (the real kubelets each have
/// their own connection; a fleet of them is concurrent).
const CONCURRENCY: usize = 64;

/// The address node `i` reports.
fn node_ip(i: usize) -> String {
    format!("10.250.{}.{}", i / 250, i % 250 + 1)
}

/// Renews every node's Lease once per `every`, spread evenly over the period as independent
/// kubelets would be, so the API server sees a steady trickle rather than a burst each period.
async fn heartbeats(
    client: kube::Client,
    names: Vec<String>,
    silenced: Arc<Mutex<HashSet<String>>>,
    every: Duration,
) {
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let step = every / u32::try_from(names.len().max(1)).unwrap_or(u32::MAX);
    let mut tick = tokio::time::interval(step.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    // Owned here, so stopping the nodes also stops their renewals in flight.
    let mut inflight = JoinSet::new();
    for name in names.iter().cycle() {
        tick.tick().await;
        while inflight.try_join_next().is_some() {}
        if is_silenced(&silenced, name) {
            continue;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (leases, name) = (leases.clone(), name.clone());
        inflight.spawn(async move {
            renew(&leases, &name).await;
            drop(permit);
        });
    }
}

async fn renew(leases: &Api<Lease>, name: &str) {
    if let Err(e) = crate::agent::node::renew(leases, name).await {
        tracing::warn!(node = %name, error = %e, "lease renewal failed");
    }
}

async fn pod_worker(
    client: kube::Client,
    names: Vec<String>,
    silenced: Arc<Mutex<HashSet<String>>>,
) {
    let mine: HashMap<String, String> = names
        .into_iter()
        .enumerate()
        .map(|(i, n)| (n, node_ip(i)))
        .collect();
    let pods: Api<Pod> = Api::all(client.clone());
    let mut stream = watcher(pods, watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .boxed();
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    // Pods with a call in flight, so a second event for one of them does not send a second call.
    let busy = Arc::new(Mutex::new(HashSet::<String>::new()));
    let mut inflight = JoinSet::new();
    while let Some(item) = stream.next().await {
        while inflight.try_join_next().is_some() {}
        let Ok(pod) = item else { continue };
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        let Some(host_ip) = mine.get(&node).cloned() else {
            continue;
        };
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if is_silenced(&silenced, &node)
            || (pod.metadata.deletion_timestamp.is_none() && phase != Some("Pending"))
        {
            continue;
        }
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if !busy.lock().expect("not poisoned").insert(uid.clone()) {
            continue;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (client, busy) = (client.clone(), busy.clone());
        inflight.spawn(async move {
            handle_pod(&client, &pod, &host_ip).await;
            busy.lock().expect("not poisoned").remove(&uid);
            drop(permit);
        });
    }
}

/// Finishes a deletion, or moves a pending pod to Running with every container started and ready.
async fn handle_pod(client: &kube::Client, pod: &Pod, host_ip: &str) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    if pod.metadata.deletion_timestamp.is_some() {
        // The containers are gone at once: finish the graceful deletion.
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        if let Err(e) = api.delete(&name, &dp).await {
            tracing::debug!(pod = %name, error = %e, "delete");
        }
        return;
    }
    let now = meta::now();
    let cond = |ty: &str| json!({"type": ty, "status": "True", "lastProbeTime": null, "lastTransitionTime": now});
    let statuses: Vec<serde_json::Value> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| {
            json!({"name": c.name, "image": c.image, "imageID": "", "ready": true, "started": true,
            "restartCount": 0, "state": {"running": {"startedAt": now}}})
        })
        .collect();
    let ip = fake_ip(pod.metadata.uid.as_deref().unwrap_or(&name));
    let status = json!({"status": {"phase": "Running", "startTime": now, "podIP": ip, "podIPs": [{"ip": ip}],
        "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
        "conditions": [cond("PodReadyToStartContainers"), cond("Initialized"), cond("ContainersReady"), cond("Ready"), cond("PodScheduled")],
        "containerStatuses": statuses}});
    if let Err(e) = api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
        .await
    {
        tracing::debug!(pod = %name, error = %e, "status");
    }
}

/// A stable made-up pod address in 10.244.0.0/16.
fn fake_ip(seed: &str) -> String {
    let h = seed.bytes().fold(2166136261u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(16777619)
    });
    format!("10.244.{}.{}", (h >> 8) % 256, h % 254 + 1)
}
