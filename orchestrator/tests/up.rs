//! `cairn-orchestrator up` as a user runs it (root): one process brings up the store, the API
//! server, the scheduler, the controller manager and an agent; a Deployment's pods run as real
//! processes and their logs come back through the API; Ctrl-C stops everything, pods included;
//! started again on the same data directory, the same pods run again. Pods get addresses from the
//! node's podCIDR, which the controller manager cut from `up`'s cluster CIDR. The cluster DNS answers
//! behind kube-system/kube-dns, reached through the service proxy's rules on this machine.

use crate::common;
use crate::kube_api;

use common::up::Up;

use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, LogParams, PostParams};
use kube_api::converge;
use serde_json::json;

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
    let mut up = Up::new(dir.path(), "up");
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
    let node: k8s_openapi::api::core::v1::Node =
        Api::all(client.clone()).get(up.node_name()).await.unwrap();
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
    // It answers on the pods' gateway, the first address of the node's range.
    assert_eq!(slice.endpoints[0].addresses, ["10.244.0.1"]);
    assert_eq!(port, 53);
    let name = "kube-dns.kube-system.svc.cluster.local.";
    let direct: std::net::SocketAddr = format!("10.244.0.1:{port}").parse().unwrap();
    assert_eq!(dns_a(direct, name).await, Some([10, 96, 0, 10].into()));
    // A pod resolves Services' names through kube-dns, as its resolv.conf (ClusterFirst) says.
    let resolver: Pod = serde_json::from_value(json!({
        "metadata": {"name": "resolver"},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "/",
            "command": ["/bin/sh", "-c",
                "cat /etc/resolv.conf; /bin/busybox nslookup kubernetes.default.svc.cluster.local"]}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &resolver)
        .await
        .unwrap();
    converge("the resolver pod to finish", 60, async || {
        let p = pods.get("resolver").await.unwrap();
        matches!(
            p.status.and_then(|s| s.phase).as_deref(),
            Some("Succeeded" | "Failed")
        )
    })
    .await;
    let out = pods.logs("resolver", &LogParams::default()).await.unwrap();
    assert!(out.contains("nameserver 10.96.0.10"), "{out}");
    assert!(out.contains("search default.svc.cluster.local"), "{out}");
    assert!(
        out.contains("10.96.0.1"),
        "kubernetes.default's address: {out}"
    );
    pods.delete("resolver", &Default::default()).await.unwrap();
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
    let left = up.runtime().list().unwrap();
    assert!(
        left.is_empty(),
        "pods still running after Ctrl-C: {left:?}\n{}",
        up.log()
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
