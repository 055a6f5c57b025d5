//! The service proxy against the real kernel (root): network namespaces stand for a node, a client
//! and two backends (veth pairs, a /24 each, the node routing between them), real TCP servers run
//! in the backends and answer with their name, Services and EndpointSlices go through a real API
//! server, and the proxy programs the node namespace's nftables (its `nft` runs there through
//! `ip netns exec`). Connections from the client show where the rules send them.

use crate::kube_api;
use crate::netlab;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_orchestrator::proxy::{NodePortAddresses, Proxy, ProxyConfig};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use netlab::enter;
use serde_json::json;

const NODE_IP: &str = "10.231.1.1";
const B1: &str = "10.231.2.2";
const B2: &str = "10.231.3.2";

/// Returns false (after printing why) when the kernel or the tools are missing.
fn can_run(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED: {test}: needs root (CAP_NET_ADMIN)");
        return false;
    }
    for tool in ["nft", "ip"] {
        let ok = Command::new(tool)
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            println!("SKIPPED: {test}: no `{tool}` binary");
            return false;
        }
    }
    true
}

/// The test's namespaces (deleted, with their links and nftables, when it ends) and the stop
/// flag of the backends' servers.
struct Net {
    hosts: netlab::Hosts,
    stop: Arc<AtomicBool>,
}

impl std::ops::Deref for Net {
    type Target = netlab::Hosts;

    fn deref(&self) -> &netlab::Hosts {
        &self.hosts
    }
}

impl Net {
    fn new(tag: &str) -> Net {
        let hosts = netlab::Hosts::new(&format!("cp{}{tag}", std::process::id()), "10.231", 2);
        assert_eq!(hosts.backends[0].1, B1);
        assert_eq!(hosts.backends[1].1, B2);
        Net {
            hosts,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Each backend answers every line (and the connection itself) with its name.
    fn serve_backends(&self) {
        for (ns, ip) in &self.backends {
            let (ns, ip, stop) = (ns.clone(), ip.clone(), self.stop.clone());
            let name = ns.rsplit('-').next().unwrap().to_string();
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                enter(&ns);
                let l = std::net::TcpListener::bind(format!("{ip}:8080")).unwrap();
                l.set_nonblocking(true).unwrap();
                ready_tx.send(()).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((s, _)) => {
                            let name = name.clone();
                            std::thread::spawn(move || answer(s, &name));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            });
            ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        }
    }

    /// Runs `f` in a thread that has joined the client's network namespace.
    fn in_client<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = self.client.clone();
        std::thread::spawn(move || {
            enter(&ns);
            f()
        })
        .join()
        .unwrap()
    }

    fn conntrack(&self) -> String {
        self.on_node(&["cat", "/proc/net/nf_conntrack"])
    }

    fn ruleset(&self) -> String {
        self.on_node(&["nft", "list", "ruleset"])
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn answer(s: TcpStream, name: &str) {
    let mut w = s.try_clone().unwrap();
    if writeln!(w, "{name}").is_err() {
        return;
    }
    for line in BufReader::new(s).lines() {
        if line.is_err() || writeln!(w, "{name}").is_err() {
            return;
        }
    }
}

/// One connection: the name the backend greets with, or the error.
fn ask(addr: SocketAddr) -> std::io::Result<String> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(line.trim().to_string())
}

/// The names `n` new connections to `addr` reach (errors as `error: <kind>`).
fn spread(net: &Net, addr: SocketAddr, n: usize) -> Vec<String> {
    net.in_client(move || {
        (0..n)
            .map(|_| ask(addr).unwrap_or_else(|e| format!("error: {:?}", e.kind())))
            .collect()
    })
}

fn distinct(v: &[String]) -> Vec<String> {
    let mut d = v.to_vec();
    d.sort();
    d.dedup();
    d
}

/// Waits (bounded) until `n` connections to `addr` reach exactly `want`.
async fn until_answers(net: &Net, addr: SocketAddr, want: &[&str], what: &str) {
    let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = distinct(&spread(net, addr, 30));
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: connections reach {got:?}, want {want:?}\n{}\nconntrack:\n{}",
            net.ruleset(),
            net.conntrack()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn slice(endpoints: &[(&str, bool)]) -> EndpointSlice {
    let eps: Vec<serde_json::Value> = endpoints
        .iter()
        .map(|(ip, ready)| json!({"addresses": [ip], "conditions": {"ready": ready}}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps,
    }))
    .unwrap()
}

fn start_proxy(net: &Net, client: kube::Client) -> Proxy {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("cairn_orchestrator::proxy=debug")
        .with_test_writer()
        .try_init();
    let mut cfg = ProxyConfig::new("node-1");
    cfg.nft = net.nft();
    cfg.min_sync_period = Duration::from_millis(250);
    cfg.cluster_cidr = Some("10.231.0.0/16".into());
    cfg.nodeport_addresses = NodePortAddresses::Cidrs(vec![format!("{NODE_IP}/32")]);
    Proxy::start(client, cfg).unwrap()
}

async fn cluster_ip(svcs: &Api<Service>, port: u16) -> SocketAddr {
    let s = svcs.get("web").await.unwrap();
    let ip = s.spec.unwrap().cluster_ip.unwrap();
    format!("{ip}:{port}").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_balances_follows_endpoints_rejects_and_cleans_up() {
    if !can_run("proxy_balances_follows_endpoints_rejects_and_cleans_up") {
        return;
    }
    let net = Net::new("a");
    net.serve_backends();
    let cluster = kube_api::Cluster::start().await;
    let client = cluster.kube().await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"type": "NodePort",
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}
    }))
    .unwrap();
    let created = svcs.create(&PostParams::default(), &svc).await.unwrap();
    let node_port = created.spec.unwrap().ports.unwrap()[0].node_port.unwrap();
    slices
        .create(&PostParams::default(), &slice(&[(B1, true)]))
        .await
        .unwrap();
    let proxy = start_proxy(&net, client.clone());
    let vip = cluster_ip(&svcs, 80).await;
    until_answers(&net, vip, &["b1"], "one endpoint").await;

    // A connection made now must outlive the endpoint update below.
    let mut held = net.in_client(move || {
        let s = TcpStream::connect_timeout(&vip, Duration::from_secs(2)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    });
    let mut reader = BufReader::new(held.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "b1");

    slices
        .replace("web-1", &PostParams::default(), &{
            let mut s = slice(&[(B1, true), (B2, true)]);
            s.metadata.resource_version =
                slices.get("web-1").await.unwrap().metadata.resource_version;
            s
        })
        .await
        .unwrap();
    until_answers(&net, vip, &["b1", "b2"], "both endpoints").await;
    writeln!(held, "still there?").unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert_eq!(
        line.trim(),
        "b1",
        "the established connection kept its backend"
    );

    // NodePort on the node's address, from outside the node.
    let np: SocketAddr = format!("{NODE_IP}:{node_port}").parse().unwrap();
    until_answers(&net, np, &["b1", "b2"], "NodePort").await;

    // Not ready: out of the rotation.
    let patch = json!({"endpoints": [
        {"addresses": [B1], "conditions": {"ready": false}},
        {"addresses": [B2], "conditions": {"ready": true}}
    ]});
    slices
        .patch("web-1", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    until_answers(&net, vip, &["b2"], "b1 not ready").await;

    // No endpoints: refused at once, not a timeout.
    let patch = json!({"endpoints": []});
    slices
        .patch("web-1", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    until_answers(&net, vip, &["error: ConnectionRefused"], "no endpoints").await;
    let t = Instant::now();
    let got = spread(&net, np, 5);
    assert!(
        got.iter().all(|g| g == "error: ConnectionRefused"),
        "{got:?}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "refusals took {:?}",
        t.elapsed()
    );

    // The Service's rules go with it (chains and map elements both).
    let patch = json!({"endpoints": [{"addresses": [B2], "conditions": {"ready": true}}]});
    slices
        .patch("web-1", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    until_answers(&net, vip, &["b2"], "b2 back").await;
    assert!(net.ruleset().contains("default/web/tcp/http"));
    svcs.delete("web", &DeleteParams::default()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while net.ruleset().contains("default/web/tcp/http")
        || net.ruleset().contains(&vip.ip().to_string())
    {
        assert!(Instant::now() < deadline, "rules left:\n{}", net.ruleset());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(net.ruleset().contains("table ip cairn-proxy"));
    drop(held);

    proxy.shutdown().await.unwrap();
    assert!(
        !net.ruleset().contains("cairn-proxy"),
        "table left after shutdown:\n{}",
        net.ruleset()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_client_ip_affinity_sticks_to_one_backend() {
    if !can_run("proxy_client_ip_affinity_sticks_to_one_backend") {
        return;
    }
    let net = Net::new("b");
    net.serve_backends();
    let cluster = kube_api::Cluster::start().await;
    let client = cluster.kube().await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}
    }))
    .unwrap();
    svcs.create(&PostParams::default(), &svc).await.unwrap();
    slices
        .create(&PostParams::default(), &slice(&[(B1, true), (B2, true)]))
        .await
        .unwrap();
    let proxy = start_proxy(&net, client.clone());
    let vip = cluster_ip(&svcs, 80).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let first = loop {
        let got = spread(&net, vip, 1);
        if got[0] == "b1" || got[0] == "b2" {
            break got[0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "no answer: {got:?}\n{}",
            net.ruleset()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let got = spread(&net, vip, 40);
    assert_eq!(distinct(&got), vec![first.clone()], "affinity to {first}");
    assert!(net.ruleset().contains("timeout 1m"), "{}", net.ruleset());
    proxy.shutdown().await.unwrap();
}
