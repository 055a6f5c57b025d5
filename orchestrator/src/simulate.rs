//! Simulated nodes, the way kwok fakes kubelets: each registers a Node, renews its Lease in
//! `kube-node-lease`, moves the pods bound to it to Running and Ready, and finishes their deletion.
//! So the scheduler, the controllers, the API server and the store can be exercised at a scale no
//! single machine could run for real, and a node's loss simulated by stopping its heartbeats.
//! It is an API client like any other: it never imports `registry` or `apiserver`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::json;

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
            "addresses": [{"type": "InternalIP", "address": format!("10.250.{}.{}", i / 250, i % 250 + 1)},
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

async fn heartbeats(
    client: kube::Client,
    names: Vec<String>,
    silenced: Arc<Mutex<HashSet<String>>>,
    every: Duration,
) {
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    loop {
        for name in &names {
            if is_silenced(&silenced, name) {
                continue;
            }
            let now =
                k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(jiff::Timestamp::now());
            let patch = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now}});
            let pp = PatchParams::apply("simulated-kubelet").force();
            if let Err(e) = leases.patch(name, &pp, &Patch::Apply(patch)).await {
                tracing::warn!(node = %name, error = %e, "lease renewal failed");
            }
        }
        tokio::time::sleep(every).await;
    }
}

async fn pod_worker(
    client: kube::Client,
    names: Vec<String>,
    silenced: Arc<Mutex<HashSet<String>>>,
) {
    let mine: HashSet<String> = names.into_iter().collect();
    let pods: Api<Pod> = Api::all(client.clone());
    let mut stream = watcher(pods, watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .boxed();
    while let Some(item) = stream.next().await {
        let Ok(pod) = item else { continue };
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        if !mine.contains(&node) || is_silenced(&silenced, &node) {
            continue;
        }
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
            continue;
        }
        if pod.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Pending") {
            continue;
        }
        let now = meta::now();
        let cond = |ty: &str| json!({"type": ty, "status": "True", "lastProbeTime": null, "lastTransitionTime": now});
        let statuses: Vec<serde_json::Value> = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .map(|c| json!({"name": c.name, "image": c.image, "imageID": "", "ready": true, "started": true,
                "restartCount": 0, "state": {"running": {"startedAt": now}}}))
            .collect();
        let ip = fake_ip(pod.metadata.uid.as_deref().unwrap_or(&name));
        let status = json!({"status": {"phase": "Running", "startTime": now, "podIP": ip, "podIPs": [{"ip": ip}],
            "hostIP": "10.250.0.1",
            "conditions": [cond("PodReadyToStartContainers"), cond("Initialized"), cond("ContainersReady"), cond("Ready"), cond("PodScheduled")],
            "containerStatuses": statuses}});
        if let Err(e) = api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
            .await
        {
            tracing::debug!(pod = %name, error = %e, "status");
        }
    }
}

/// A stable made-up pod address in 10.244.0.0/16.
fn fake_ip(seed: &str) -> String {
    let h = seed.bytes().fold(2166136261u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(16777619)
    });
    format!("10.244.{}.{}", (h >> 8) % 256, h % 254 + 1)
}
