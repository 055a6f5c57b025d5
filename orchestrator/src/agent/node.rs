//! The agent's Node: registered with what the machine has (cpu, memory, pods 110), its addresses
//! and the kubelet's conditions, then kept alive through a Lease in `kube-node-lease` renewed every
//! 10 s, and its conditions' heartbeat refreshed every minute, as the kubelet does. It never
//! imports `registry` or `apiserver`.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

/// How often the conditions' heartbeat time is refreshed in the Node's status.
const STATUS_EVERY: Duration = Duration::from_secs(60);

fn read(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// MemTotal from /proc/meminfo, in Ki as the kubelet reports it.
fn memory_ki() -> u64 {
    read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn os_image() -> String {
    read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".into())
}

/// What the node offers its pods, as registered (cpu, memory): the value of a `resourceFieldRef`
/// to a limit the container does not set.
pub fn allocatable() -> super::volumes::Allocatable {
    let cpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    super::volumes::Allocatable {
        cpu_milli: cpu as u64 * 1000,
        memory: memory_ki() * 1024,
    }
}

/// The Node's status as this machine has it.
pub fn status(address: &str, name: &str, port: u16) -> Value {
    let now = crate::api::meta::now();
    let cond = |ty: &str, status: &str, reason: &str, message: &str| {
        json!({"type": ty, "status": status,
        "reason": reason, "message": message, "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    let cpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let capacity =
        json!({"cpu": cpu.to_string(), "memory": format!("{}Ki", memory_ki()), "pods": "110"});
    json!({
        "capacity": capacity,
        "allocatable": capacity,
        "conditions": [
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
        ],
        "addresses": [{"type": "InternalIP", "address": address}, {"type": "Hostname", "address": name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
        "nodeInfo": {
            "kubeletVersion": concat!("v1.33.0-cairn.", env!("CARGO_PKG_VERSION")),
            "kubeProxyVersion": "",
            "containerRuntimeVersion": concat!("cairn://", env!("CARGO_PKG_VERSION")),
            "osImage": os_image(),
            "kernelVersion": read("/proc/sys/kernel/osrelease"),
            "operatingSystem": "linux",
            "architecture": match std::env::consts::ARCH { "x86_64" => "amd64", "aarch64" => "arm64", a => a },
            "machineID": read("/etc/machine-id"),
            "systemUUID": read("/sys/class/dmi/id/product_uuid"),
            "bootID": read("/proc/sys/kernel/random/boot_id"),
        },
    })
}

/// Creates the Node, or brings an existing one's status up to date (an agent restart).
pub async fn register(
    client: &kube::Client,
    name: &str,
    address: &str,
    port: u16,
) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let st = status(address, name, port);
    let obj = json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
            "kubernetes.io/arch": st["nodeInfo"]["architecture"]}},
        "status": st});
    let node: Node = serde_json::from_value(obj).map_err(kube::Error::SerdeError)?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            nodes
                .patch_status(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": st})),
                )
                .await?;
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Renews node `name`'s Lease (creating it the first time), as the kubelet's heartbeat does.
pub async fn renew(leases: &Api<Lease>, name: &str) -> Result<(), kube::Error> {
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(jiff::Timestamp::now());
    let spec = json!({"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now});
    match leases
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": spec})),
        )
        .await
    {
        Err(kube::Error::Api(s)) if s.code == 404 => {
            let lease: Lease = serde_json::from_value(
                json!({"metadata": {"name": name, "namespace": "kube-node-lease"}, "spec": spec}),
            )
            .map_err(kube::Error::SerdeError)?;
            leases
                .create(&PostParams::default(), &lease)
                .await
                .map(|_| ())
        }
        r => r.map(|_| ()),
    }
}

/// Renews the Lease every `every` and refreshes the Node's conditions every minute, until dropped.
pub async fn heartbeat(client: kube::Client, name: String, every: Duration) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let nodes: Api<Node> = Api::all(client);
    let mut last_status = tokio::time::Instant::now();
    loop {
        if let Err(e) = renew(&leases, &name).await {
            tracing::warn!(node = %name, error = %e, "lease renewal failed");
        }
        if last_status.elapsed() >= STATUS_EVERY {
            // Conditions merge by type, so only their heartbeat moves, not their transition time.
            let now = crate::api::meta::now();
            let conditions: Vec<Value> = ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"]
                .iter()
                .map(|t| json!({"type": t, "lastHeartbeatTime": now}))
                .collect();
            let st = json!({"status": {"conditions": conditions}});
            match nodes
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(st))
                .await
            {
                Ok(_) => last_status = tokio::time::Instant::now(),
                Err(e) => tracing::warn!(node = %name, error = %e, "node status update failed"),
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// Replaces the Node's `status.images` (names and sizes of the images this node holds).
pub async fn set_images(
    client: &kube::Client,
    name: &str,
    images: Value,
) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"images": images}})),
        )
        .await
        .map(|_| ())
}
