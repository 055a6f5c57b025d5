//! `cairn-orchestrator up` as a user runs it (root): one process brings up the store, the API
//! server, the scheduler, the controller manager and an agent; a Deployment's pods run as real
//! processes and their logs come back through the API; Ctrl-C stops everything, pods included;
//! started again on the same data directory, the same pods run again. Pods get addresses from the
//! node's podCIDR, which the controller manager cut from `up`'s cluster CIDR. The cluster DNS answers
//! behind kube-system/kube-dns, reached through the service proxy's rules on this machine.

mod common;
mod kube_api;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_orchestrator::runtime::{Runtime, RuntimeConfig};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, LogParams, PostParams};
use kube_api::converge;
use serde_json::json;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One `up` process and what it leaves on the machine, cleaned up when the test ends.
struct Up {
    dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    cgroup_parent: String,
}

impl Up {
    fn new(dir: &Path) -> Up {
        let cgroup_parent = format!("cairn-up-{}", std::process::id());
        let args = vec![
            "up".into(),
            "--data-dir".into(),
            dir.join("data").display().to_string(),
            "--kubeconfig".into(),
            dir.join("cairn.kubeconfig").display().to_string(),
            "--store-port".into(),
            free_port().to_string(),
            "--store-peer-port".into(),
            free_port().to_string(),
            "--secure-port".into(),
            free_port().to_string(),
            "--agent-port".into(),
            free_port().to_string(),
            "--node-name".into(),
            format!("up-{}", std::process::id()),
            "--cgroup-parent".into(),
            cgroup_parent.clone(),
            "--cluster-dns-listen".into(),
            "127.0.0.1:0".into(),
        ];
        Up {
            dir: dir.to_path_buf(),
            args,
            child: None,
            cgroup_parent,
        }
    }

    fn start(&mut self) {
        let log = std::fs::File::create(self.dir.join("up.log")).unwrap();
        let _ = std::fs::remove_file(self.dir.join("cairn.kubeconfig"));
        self.child = Some(
            Command::new(common::HELPER)
                .args(&self.args)
                .current_dir(&self.dir)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("up.log")).unwrap_or_default()
    }

    async fn client(&self) -> kube::Client {
        let path = self.dir.join("cairn.kubeconfig");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !path.exists() {
            assert!(Instant::now() < deadline, "no kubeconfig: {}", self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(cfg).unwrap()
    }

    /// Ctrl-C, then the process must end on its own, successfully.
    fn interrupt(&mut self) {
        let mut child = self.child.take().expect("running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "up exited {status}: {}", self.log());
                return;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("up did not stop within 60 s: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn runtime(&self) -> Runtime {
        let mut cfg = RuntimeConfig::new(self.dir.join("data/agent"), common::HELPER);
        cfg.cgroup_parent = self.cgroup_parent.clone();
        Runtime::new(cfg).unwrap()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let rt = self.runtime();
        let parent = self.cgroup_parent.clone();
        let _ = std::thread::spawn(move || {
            let r = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            r.block_on(async {
                for p in rt.list().unwrap_or_default() {
                    let _ = rt.remove_pod(&p.name).await;
                }
                let _ = rt.cgroups().remove(Path::new(&parent));
            });
        })
        .join();
    }
}

async fn running_pods(pods: &Api<Pod>) -> Vec<String> {
    let mut names: Vec<String> = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter_map(|p| p.metadata.name)
        .collect();
    names.sort();
    names
}

#[test]
fn up_runs_a_deployment_stops_on_ctrl_c_and_resumes() {
    let name = "up_runs_a_deployment_stops_on_ctrl_c_and_resumes";
    if !common::can_run(name) {
        return;
    }
    // `up` gives its pods a bridge, forwarding and a masquerade table: in a namespace of the
    // test's own, not on this machine.
    common::in_own_netns(name, up_and_resume);
}

async fn up_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = Up::new(dir.path());
    up.start();
    let client = up.client().await;
    let deps: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let dep: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "web", "image": "/",
                    "command": ["/bin/sh", "-c", "echo serving; exec sleep 300"]}]}}},
    }))
    .unwrap();
    let created = Instant::now();
    let deadline = created + Duration::from_secs(60);
    // The API server may still be coming up.
    while let Err(e) = deps.create(&PostParams::default(), &dep).await {
        assert!(Instant::now() < deadline, "create: {e}: {}", up.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    converge("2 pods Running", 60, async || {
        running_pods(&pods).await.len() == 2
    })
    .await;
    let before = running_pods(&pods).await;
    // The node got the first range of the cluster CIDR, and the pods their addresses from it.
    let node: k8s_openapi::api::core::v1::Node = Api::all(client.clone())
        .get(&format!("up-{}", std::process::id()))
        .await
        .unwrap();
    let cidr = node.spec.and_then(|s| s.pod_cidr);
    assert_eq!(cidr.as_deref(), Some("10.244.0.0/24"));
    let mut ips = Vec::new();
    for name in &before {
        let p = pods.get(name).await.unwrap();
        let ip = p.status.and_then(|s| s.pod_ip).unwrap_or_default();
        assert!(ip.starts_with("10.244.0."), "{name}: {ip:?}");
        ips.push(ip);
    }
    ips.dedup();
    assert_eq!(ips.len(), 2);
    let logs = pods.logs(&before[0], &LogParams::default()).await.unwrap();
    assert_eq!(logs, "serving\n");
    assert_eq!(up.runtime().list().unwrap().len(), 2);

    // kube-dns: the tenth address of the service range, its slice naming the server.
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "kube-system");
    let slice = kube_api::eventually("kube-dns's EndpointSlice", 30, async || {
        slices.get("kube-dns-server").await.ok()
    })
    .await;
    let svc: Service = Api::namespaced(client.clone(), "kube-system")
        .get("kube-dns")
        .await
        .unwrap();
    assert_eq!(svc.spec.unwrap().cluster_ip.as_deref(), Some("10.96.0.10"));
    let port = slice.ports.unwrap()[0].port.unwrap() as u16;
    let name = "kube-dns.kube-system.svc.cluster.local.";
    let direct: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(dns_a(direct, name).await, Some([10, 96, 0, 10].into()));
    // Through the Service's address, the proxy's rules on this machine DNAT to the server.
    let routed = Command::new("ip")
        .args(["route", "get", "10.96.0.10"])
        .output()
        .is_ok_and(|o| o.status.success());
    if routed {
        let vip: std::net::SocketAddr = "10.96.0.10:53".parse().unwrap();
        converge("DNS through 10.96.0.10:53", 30, async || {
            dns_a(vip, name).await == Some([10, 96, 0, 10].into())
        })
        .await;
    } else {
        println!(
            "no route to 10.96.0.10 on this machine: DNS checked at the server's address only"
        );
    }
    assert!(nft_table_exists(), "the proxy's table while up runs");

    up.interrupt();
    assert!(
        !nft_table_exists(),
        "the proxy's table is removed on Ctrl-C"
    );
    assert!(
        up.runtime().list().unwrap().is_empty(),
        "pods still running after Ctrl-C"
    );

    up.start();
    let client = up.client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    // Their status says Running from before the stop: what counts is the processes again.
    converge("the same 2 pods running again", 90, async || {
        running_pods(&pods).await == before && up.runtime().list().unwrap_or_default().len() == 2
    })
    .await;
    up.interrupt();
}

fn nft_table_exists() -> bool {
    Command::new("nft")
        .args(["list", "table", "ip", "cairn-proxy"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The A record a DNS server at `server` gives `name` over UDP (None: no answer within 2 s).
async fn dns_a(server: std::net::SocketAddr, name: &str) -> Option<std::net::Ipv4Addr> {
    use hickory_server::proto::op::{Message, MessageType, OpCode, Query};
    use hickory_server::proto::rr::{Name, RData, RecordType};
    let mut m = Message::new();
    m.set_id(fastrand::u16(..))
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).ok()?, RecordType::A));
    let sock = tokio::net::UdpSocket::bind("0.0.0.0:0").await.ok()?;
    sock.connect(server).await.ok()?;
    sock.send(&m.to_vec().ok()?).await.ok()?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    let reply = Message::from_vec(&buf[..n]).ok()?;
    reply.answers().iter().find_map(|r| match r.data() {
        RData::A(a) => Some(a.0),
        _ => None,
    })
}
