//! The pod network across nodes (root). The test runs in a network namespace of its own, which
//! plays the segment's switch and the control plane's host: a bridge on 10.123.1.0/24, the store
//! and API server (on 10.123.1.1) and the controller manager with `--cluster-cidr`. Two more
//! namespaces stand in for nodes, each joined to the bridge by a veth pair, each running a real
//! `cairn-orchestrator agent` process. Pods get addresses from their node's podCIDR and reach pods
//! on the same and on the other node, and what leaves for the segment is masqueraded as the node;
//! a host-network pod has the node's address; resolv.conf and /etc/hosts are the kubelet's; a
//! restarted agent keeps its pods' addresses; a deleted node's route goes.

use crate::common;
use crate::kube_api;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cairn_orchestrator::runtime::{Runtime, RuntimeConfig};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube_api::{converge, eventually, Cluster, Options};
use serde_json::json;

const SEGMENT: &str = "10.123.1";
const CLUSTER_DNS: &str = "10.96.0.10";
const CLUSTER_CIDR: &str = "10.244.0.0/16";

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Why the test cannot run here, if it cannot.
fn missing_tools() -> Option<String> {
    for tool in ["ip", "nsenter", "nft"] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    let applets = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for a in ["httpd", "nc"] {
        if !applets.lines().any(|l| l == a) {
            return Some(format!("/bin/busybox without {a}"));
        }
    }
    None
}

/// One stand-in host: its namespace, address and agent.
struct Host {
    netns: String,
    name: String,
    ip: String,
    root: PathBuf,
    cgroup_parent: String,
    agent: Option<Child>,
    proxy: Option<Child>,
}

/// Everything the test made outside its own namespace (which goes with its last process): the
/// node namespaces, the agents and their pods and cgroups, the controller manager.
struct Lab {
    dir: PathBuf,
    hosts: Vec<Host>,
    others: Vec<Child>,
}

impl Lab {
    /// `tag` keeps the node namespaces of tests running side by side apart.
    fn new(dir: &Path, tag: &str) -> Lab {
        sh(&["ip", "link", "add", "seg0", "type", "bridge"]);
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{SEGMENT}.1/24"),
            "dev",
            "seg0",
        ]);
        sh(&["ip", "link", "set", "seg0", "up"]);
        let resolv = dir.join("resolv.conf");
        std::fs::write(
            &resolv,
            format!("nameserver {SEGMENT}.254\nsearch corp.example\n"),
        )
        .unwrap();
        let mut lab = Lab {
            dir: dir.to_path_buf(),
            hosts: Vec::new(),
            others: Vec::new(),
        };
        let pid = std::process::id();
        for (i, n) in ["a", "b"].iter().enumerate() {
            let host = Host {
                netns: format!("cairn-{tag}-{pid}-{n}"),
                name: format!("node-{n}"),
                ip: format!("{SEGMENT}.{}", i + 2),
                root: dir.join(format!("agent-{n}")),
                cgroup_parent: format!("cairn-{tag}-{pid}-{n}"),
                agent: None,
                proxy: None,
            };
            // Pushed first, so that a failure below still removes the namespace.
            lab.hosts.push(host);
            let h = lab.hosts.last().unwrap();
            sh(&["ip", "netns", "add", &h.netns]);
            let veth = format!("seg0{n}");
            sh(&[
                "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
                &h.netns,
            ]);
            sh(&["ip", "link", "set", &veth, "master", "seg0", "up"]);
            let cidr = format!("{}/24", h.ip);
            sh(&["ip", "-n", &h.netns, "addr", "add", &cidr, "dev", "eth0"]);
            sh(&["ip", "-n", &h.netns, "link", "set", "eth0", "up"]);
            sh(&["ip", "-n", &h.netns, "link", "set", "lo", "up"]);
        }
        lab
    }

    fn start_agent(&mut self, i: usize, kubeconfig: &Path) {
        let h = &mut self.hosts[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", h.name)))
            .unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", h.netns))
            .arg(common::HELPER)
            .args(["agent", "--kubeconfig"])
            .arg(kubeconfig)
            .args(["--node-name", &h.name, "--node-ip", &h.ip, "--root-dir"])
            .arg(&h.root)
            .args(["--cgroup-parent", &h.cgroup_parent, "--port", "0"])
            .args(["--pod-bridge", "cairn0", "--cluster-dns", CLUSTER_DNS])
            .arg("--resolv-conf")
            .arg(self.dir.join("resolv.conf"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        h.agent = Some(child);
    }

    /// The service proxy of host `i`, logging beside its agent.
    fn start_proxy(&mut self, i: usize, kubeconfig: &Path) {
        let h = &mut self.hosts[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}-proxy.log", h.name)))
            .unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", h.netns))
            .arg(common::HELPER)
            .args(["proxy", "--kubeconfig"])
            .arg(kubeconfig)
            .args(["--node-name", &h.name, "--cluster-cidr", CLUSTER_CIDR])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        h.proxy = Some(child);
    }

    /// A control-plane process on the segment's host, logging to `<name>.log`.
    fn start_control(&mut self, name: &str, args: &[&str], kubeconfig: &Path) {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        self.others.push(
            Command::new(common::HELPER)
                .args(args)
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .arg("--leader-elect=false")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }

    /// Host `i` goes down: its agent and proxy are killed and its pods die with it.
    async fn power_off(&mut self, i: usize) {
        let h = &mut self.hosts[i];
        for mut c in [h.agent.take(), h.proxy.take()].into_iter().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let rt = self.runtime(i);
        for p in rt.list().unwrap() {
            rt.remove_pod(&p.name).await.unwrap();
        }
    }

    /// SIGTERM, as a service manager stops the agent; its pods keep running.
    fn stop_agent(&mut self, i: usize) {
        let mut child = self.hosts[i].agent.take().expect("running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        for _ in 0..100 {
            if child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the agent did not stop on SIGTERM");
    }

    /// The agents' logs and the nodes' routes and rules, for a failure's message.
    fn diagnose(&self) -> String {
        let mut out = String::new();
        for (i, h) in self.hosts.iter().enumerate() {
            for args in [&["route"][..], &["addr"], &["link"]] {
                let o = Command::new("ip")
                    .args(["-n", &h.netns])
                    .args(args)
                    .output();
                out.push_str(&format!(
                    "--- {} ip {args:?}:\n{}",
                    h.name,
                    o.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                        .unwrap_or_default()
                ));
            }
            let o = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", h.netns))
                .args(["nft", "list", "ruleset"])
                .output();
            out.push_str(&format!(
                "--- {} nft:\n{}",
                h.name,
                o.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default()
            ));
            out.push_str(&format!("--- {} log:\n{}", h.name, self.log(i)));
            let proxy = std::fs::read_to_string(self.dir.join(format!("{}-proxy.log", h.name)));
            if let Ok(proxy) = proxy {
                out.push_str(&format!("--- {} proxy log:\n{proxy}", h.name));
            }
        }
        out
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("{}.log", self.hosts[i].name)))
            .unwrap_or_default()
    }

    fn runtime(&self, i: usize) -> Runtime {
        let h = &self.hosts[i];
        let mut cfg = RuntimeConfig::new(&h.root, common::HELPER);
        cfg.cgroup_parent = h.cgroup_parent.clone();
        Runtime::new(cfg).unwrap()
    }

    /// Runs `script` in the pod's container on host `i` (through the runtime, as kubectl exec
    /// would reach it).
    async fn exec(&self, i: usize, pod: &Pod, script: &str) -> (i32, String) {
        let uid = pod.metadata.uid.clone().unwrap();
        let out = self
            .runtime(i)
            .exec(
                &uid,
                "main",
                &[
                    "/bin/busybox".into(),
                    "sh".into(),
                    "-c".into(),
                    script.into(),
                ],
            )
            .await
            .unwrap();
        let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
        s.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.exit_code, s)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in self
            .hosts
            .iter_mut()
            .flat_map(|h| [h.agent.as_mut(), h.proxy.as_mut()])
            .flatten()
            .chain(self.others.iter_mut())
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        let runtimes: Vec<(Runtime, String)> = (0..self.hosts.len())
            .filter_map(|i| Some((self.runtime_opt(i)?, self.hosts[i].cgroup_parent.clone())))
            .collect();
        let _ = std::thread::spawn(move || {
            let r = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            r.block_on(async {
                for (rt, parent) in runtimes {
                    for p in rt.list().unwrap_or_default() {
                        let _ = rt.remove_pod(&p.name).await;
                    }
                    let _ = rt.cgroups().remove(Path::new(&parent));
                }
            });
        })
        .join();
        // The namespaces' bridges, routes and nftables tables go with them.
        for h in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", &h.netns]).status();
        }
    }
}

impl Lab {
    fn runtime_opt(&self, i: usize) -> Option<Runtime> {
        let h = &self.hosts[i];
        let mut cfg = RuntimeConfig::new(&h.root, common::HELPER);
        cfg.cgroup_parent = h.cgroup_parent.clone();
        Runtime::new(cfg).ok()
    }
}

fn pod(name: &str, node: &str, script: &str, extra: serde_json::Value) -> Pod {
    let mut spec = json!({"nodeName": node, "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "main", "image": "/", "command": ["/bin/busybox", "sh", "-c", script]}]});
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

/// A shell line fetching `path` over HTTP with busybox nc (its wget crashes when linked
/// statically).
fn get(ip: &str, port: u16, path: &str) -> String {
    format!("printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' | /bin/busybox nc -w 3 {ip} {port}")
}

/// The body of an HTTP answer, if it was a 200.
fn body((code, out): (i32, String)) -> (i32, String) {
    match out.split_once("\r\n\r\n") {
        Some((head, body)) if code == 0 && head.contains(" 200 ") => (0, body.to_string()),
        _ => (code.max(1), out),
    }
}

fn pod_cidr(n: &Node) -> Option<String> {
    n.spec.as_ref()?.pod_cidr.clone()
}

fn in_cidr(ip: &str, cidr: &str) -> bool {
    let (net, bits) = cidr.split_once('/').unwrap();
    let mask = u32::MAX << (32 - bits.parse::<u32>().unwrap());
    let ip: std::net::Ipv4Addr = ip.parse().unwrap();
    let net: std::net::Ipv4Addr = net.parse().unwrap();
    u32::from(ip) & mask == u32::from(net) & mask
}

async fn running_ip(pods: &Api<Pod>, name: &str) -> (Pod, String) {
    eventually(&format!("{name} Running with an IP"), 60, || async {
        let p = pods.get(name).await.ok()?;
        let st = p.status.as_ref()?;
        (st.phase.as_deref() == Some("Running")).then_some(())?;
        let ip = st.pod_ip.clone()?;
        Some((p, ip))
    })
    .await
}

#[test]
fn pods_on_two_nodes_reach_each_other() {
    if !common::can_run("pods_on_two_nodes_reach_each_other") {
        return;
    }
    if let Some(why) = missing_tools() {
        println!("SKIPPED: pods_on_two_nodes_reach_each_other: {why}");
        return;
    }
    common::in_own_netns("pods_on_two_nodes_reach_each_other", two_nodes);
}

async fn two_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let mut lab = Lab::new(dir.path(), "net");
    let c = Cluster::start_with(Options {
        bind: Some(format!("{SEGMENT}.1").parse().unwrap()),
        ..Default::default()
    })
    .await;
    let client = c.kube().await;
    let cm_log = std::fs::File::create(dir.path().join("cm.log")).unwrap();
    lab.others.push(
        Command::new(common::HELPER)
            .args(["controller-manager", "--kubeconfig"])
            .arg(&c.kubeconfig)
            .args(["--leader-elect=false", "--cluster-cidr", CLUSTER_CIDR])
            .stdout(Stdio::null())
            .stderr(cm_log)
            .spawn()
            .unwrap(),
    );
    lab.start_agent(0, &c.kubeconfig);
    lab.start_agent(1, &c.kubeconfig);

    let nodes: Api<Node> = Api::all(client.clone());
    let mut cidrs = Vec::new();
    for i in 0..2 {
        let name = lab.hosts[i].name.clone();
        let cidr = eventually(&format!("{name} with a podCIDR"), 30, || async {
            pod_cidr(&nodes.get_opt(&name).await.ok()??)
        })
        .await;
        cidrs.push(cidr);
    }
    assert_ne!(cidrs[0], cidrs[1]);

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let serve = "exec /bin/busybox httpd -f -p 8080 -h /";
    for p in [
        pod(
            "client",
            "node-a",
            "exec sleep 600",
            json!({"hostname": "client", "subdomain": "net"}),
        ),
        pod("server-a", "node-a", serve, json!({})),
        pod("server-b", "node-b", serve, json!({})),
        pod(
            "host-b",
            "node-b",
            "exec /bin/busybox httpd -f -p 8081 -h /",
            json!({"hostNetwork": true}),
        ),
    ] {
        pods.create(&PostParams::default(), &p).await.unwrap();
    }
    let (client_pod, client_ip) = running_ip(&pods, "client").await;
    let (_, server_a_ip) = running_ip(&pods, "server-a").await;
    let (_, server_b_ip) = running_ip(&pods, "server-b").await;
    let (host_b, host_b_ip) = running_ip(&pods, "host-b").await;
    for ip in [&client_ip, &server_a_ip] {
        assert!(in_cidr(ip, &cidrs[0]), "{ip} not in node-a's {}", cidrs[0]);
    }
    assert!(
        in_cidr(&server_b_ip, &cidrs[1]),
        "{server_b_ip} not in {}",
        cidrs[1]
    );
    assert_ne!(client_ip, server_a_ip);
    // The bridge took the range's first address.
    for ip in [&client_ip, &server_a_ip, &server_b_ip] {
        assert!(!ip.ends_with(".0") && !ip.ends_with(".1"), "{ip}");
    }
    assert_eq!(host_b_ip, lab.hosts[1].ip);
    assert_eq!(
        host_b.status.as_ref().unwrap().host_ip.as_deref(),
        Some(lab.hosts[1].ip.as_str())
    );

    // Same node, the other node, the other node's own address: each answers with its own name.
    let fetch = |ip: &str, port: u16| get(ip, port, "/etc/hostname");
    for (ip, port, want) in [
        (&server_a_ip, 8080, "server-a".to_string()),
        (&server_b_ip, 8080, "server-b".to_string()),
        (
            &host_b_ip,
            8081,
            nix::unistd::gethostname().unwrap().into_string().unwrap(),
        ),
    ] {
        let mut last = (0, String::new());
        for _ in 0..20 {
            last = body(lab.exec(0, &client_pod, &fetch(ip, port)).await);
            if last.0 == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert_eq!(
            last,
            (0, format!("{want}\n")),
            "client -> {ip}:{port}\n{}",
            lab.diagnose()
        );
    }

    // Off the pod network, the pod's packets carry the node's address.
    let listener = std::net::TcpListener::bind(format!("{SEGMENT}.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().unwrap();
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf);
        let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nhi\n");
        peer.ip().to_string()
    });
    let got = body(
        lab.exec(0, &client_pod, &get(&format!("{SEGMENT}.1"), port, "/"))
            .await,
    );
    assert_eq!(got, (0, "hi\n".to_string()));
    assert_eq!(accepted.join().unwrap(), lab.hosts[0].ip);

    // The kubelet's files.
    let (_, resolv) = lab.exec(0, &client_pod, "cat /etc/resolv.conf").await;
    assert_eq!(
        resolv,
        format!("search default.svc.cluster.local svc.cluster.local cluster.local corp.example\nnameserver {CLUSTER_DNS}\noptions ndots:5\n")
    );
    let (_, hosts) = lab.exec(0, &client_pod, "cat /etc/hosts; hostname").await;
    assert!(
        hosts.contains(&format!(
            "\n{client_ip}\tclient.net.default.svc.cluster.local\tclient\n"
        )),
        "{hosts}"
    );
    assert!(hosts.ends_with("\nclient\n"), "{hosts}");
    let (_, resolv) = lab.exec(1, &host_b, "cat /etc/resolv.conf").await;
    assert_eq!(
        resolv,
        format!("search corp.example\nnameserver {SEGMENT}.254\n")
    );

    // A restarted agent finds its pods where they were, with the same addresses.
    lab.stop_agent(0);
    lab.start_agent(0, &c.kubeconfig);
    let holder = lab
        .runtime(0)
        .status(client_pod.metadata.uid.as_deref().unwrap())
        .unwrap();
    assert_eq!(holder.ip.map(|i| i.to_string()), Some(client_ip.clone()));
    converge("node-a's agent back", 30, async || {
        lab.log(0)
            .matches("agent registered and watching its pods")
            .count()
            == 2
    })
    .await;
    let (_, again) = running_ip(&pods, "client").await;
    assert_eq!(again, client_ip);
    let still = body(lab.exec(0, &client_pod, &fetch(&server_b_ip, 8080)).await);
    assert_eq!(still, (0, "server-b\n".to_string()));

    // A node that goes takes its route along.
    let route_to_b = || {
        sh(&[
            "ip",
            "-n",
            &lab.hosts[0].netns,
            "route",
            "show",
            "proto",
            "202",
        ])
    };
    let before = route_to_b();
    assert!(
        before.contains(&format!("{} via {}", cidrs[1], lab.hosts[1].ip)),
        "{before}"
    );
    nodes
        .delete("node-b", &DeleteParams::default())
        .await
        .unwrap();
    converge("node-b's route removed", 30, async || {
        route_to_b().trim().is_empty()
    })
    .await;
    c.shutdown().await;
}

#[test]
fn a_service_spans_two_nodes_follows_readiness_and_survives_a_node() {
    let name = "a_service_spans_two_nodes_follows_readiness_and_survives_a_node";
    if !common::can_run(name) {
        return;
    }
    if let Some(why) = missing_tools() {
        println!("SKIPPED: {name}: {why}");
        return;
    }
    common::in_own_netns(name, service_on_two_nodes);
}

/// The pods of `app=web` that are not being deleted: (name, node, ready).
async fn web_pods(pods: &Api<Pod>) -> Vec<(String, String, bool)> {
    let list = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    list.items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let node = p.spec.and_then(|s| s.node_name).unwrap_or_default();
            (p.metadata.name.unwrap(), node, ready)
        })
        .collect()
}

/// Asks the Service `n` times from the client pod; the names of the pods that answered, in order
/// (an empty line for a request that failed).
async fn ask_service(lab: &Lab, client: &Pod, ip: &str, n: usize) -> Vec<String> {
    let script = format!(
        "for i in $(/bin/busybox seq {n}); do r=$({} | /bin/busybox tail -n 1); echo \"answer:$r\"; done",
        get(ip, 80, "/name")
    );
    let (_, out) = lab.exec(0, client, &script).await;
    out.lines()
        .filter_map(|l| l.strip_prefix("answer:"))
        .map(|l| l.trim().to_string())
        .collect()
}

/// Two nodes with agents and service proxies, a scheduler and a controller manager: a Deployment
/// spread over both nodes serves one ClusterIP from pods on both; a pod whose readiness fails stops
/// getting requests; a node that goes down has its pods replaced on the other, which then serves
/// every request.
async fn service_on_two_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let mut lab = Lab::new(dir.path(), "svc");
    let c = Cluster::start_with(Options {
        bind: Some(format!("{SEGMENT}.1").parse().unwrap()),
        ..Default::default()
    })
    .await;
    let client = c.kube().await;
    // Above the agents' 10 s Lease renewal with room for a loaded machine, short enough to wait.
    lab.start_control(
        "cm",
        &[
            "controller-manager",
            "--cluster-cidr",
            CLUSTER_CIDR,
            "--node-monitor-grace-period",
            "20s",
        ],
        &c.kubeconfig,
    );
    lab.start_control("scheduler", &["scheduler"], &c.kubeconfig);
    for i in 0..2 {
        lab.start_agent(i, &c.kubeconfig);
        lab.start_proxy(i, &c.kubeconfig);
    }

    // Each replica serves its own name and says it is ready while /www/ready exists.
    let web = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 4,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    // Unreachable nodes' pods are evicted after 2 s instead of 300 s.
                    "tolerations": [
                        {"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                         "effect": "NoExecute", "tolerationSeconds": 2},
                        {"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                         "effect": "NoExecute", "tolerationSeconds": 2}],
                    "volumes": [{"name": "www", "emptyDir": {}}],
                    "containers": [{
                        "name": "main", "image": "/",
                        "command": ["/bin/busybox", "sh", "-c",
                            "hostname > /www/name; echo ok > /www/ready; exec /bin/busybox httpd -f -p 8080 -h /www"],
                        "volumeMounts": [{"name": "www", "mountPath": "/www"}],
                        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080},
                            "periodSeconds": 1, "failureThreshold": 1}
                    }]
                }
            }
        }
    });
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), "default");
    deployments
        .create(
            &PostParams::default(),
            &serde_json::from_value(web).unwrap(),
        )
        .await
        .unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc = services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "web"},
                "spec": {"selector": {"app": "web"},
                         "ports": [{"port": 80, "targetPort": 8080}]}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let cluster_ip = svc.spec.unwrap().cluster_ip.unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let placed = eventually("4 ready replicas, 2 per node", 120, || async {
        let web = web_pods(&pods).await;
        let on = |n: &str| web.iter().filter(|p| p.1 == n && p.2).count();
        (web.len() == 4 && on("node-a") == 2 && on("node-b") == 2).then_some(web)
    })
    .await;
    pods.create(
        &PostParams::default(),
        &pod("client", "node-a", "exec sleep 600", json!({})),
    )
    .await
    .unwrap();
    let (client_pod, _) = running_ip(&pods, "client").await;

    // Requests to the ClusterIP from node-a reach the replicas on both nodes.
    let all: std::collections::BTreeSet<String> = placed.iter().map(|p| p.0.clone()).collect();
    let seen = eventually(
        "every replica answering through the Service",
        60,
        || async {
            let got = ask_service(&lab, &client_pod, &cluster_ip, 40).await;
            let seen: std::collections::BTreeSet<String> = got.into_iter().collect();
            (seen == all).then_some(seen)
        },
    )
    .await;
    assert_eq!(seen, all, "{}", lab.diagnose());

    // A replica on node-b stops being ready: it leaves the endpoints and gets no more requests.
    let (unready, _, _) = placed.iter().find(|p| p.1 == "node-b").unwrap().clone();
    let unready_pod = pods.get(&unready).await.unwrap();
    let (code, out) = lab.exec(1, &unready_pod, "rm /www/ready").await;
    assert_eq!(code, 0, "{out}");
    eventually("the replica not ready", 30, || async {
        web_pods(&pods)
            .await
            .iter()
            .any(|p| p.0 == unready && !p.2)
            .then_some(())
    })
    .await;
    let others: std::collections::BTreeSet<String> =
        all.iter().filter(|n| **n != unready).cloned().collect();
    // The proxy applies the endpoints' change within its sync period; after that, 40 requests
    // in a row reach only the ready replicas, all of them.
    eventually("traffic only to the ready replicas", 30, || async {
        let got = ask_service(&lab, &client_pod, &cluster_ip, 40).await;
        let seen: std::collections::BTreeSet<String> = got.into_iter().collect();
        (seen == others).then_some(())
    })
    .await;
    let got = ask_service(&lab, &client_pod, &cluster_ip, 40).await;
    assert!(
        got.iter().all(|n| others.contains(n)),
        "a request went to the unready {unready} or failed: {got:?}"
    );

    // node-b goes down: after the grace period and the pods' 2 s toleration, its replicas are
    // replaced on node-a, and the Service is served from there alone.
    lab.power_off(1).await;
    let moved = eventually("4 ready replicas on node-a", 120, || async {
        let web = web_pods(&pods).await;
        (web.len() == 4 && web.iter().all(|p| p.1 == "node-a" && p.2)).then_some(web)
    })
    .await;
    let nodes: Api<Node> = Api::all(client.clone());
    let b = nodes.get("node-b").await.unwrap();
    let ready = b
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "Unknown");
    let now: std::collections::BTreeSet<String> = moved.iter().map(|p| p.0.clone()).collect();
    eventually(
        "every request answered by node-a's replicas",
        60,
        || async {
            let got = ask_service(&lab, &client_pod, &cluster_ip, 40).await;
            let seen: std::collections::BTreeSet<String> = got.iter().cloned().collect();
            (got.len() == 40 && seen == now).then_some(())
        },
    )
    .await;
    c.shutdown().await;
}
