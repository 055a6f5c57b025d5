//! The service proxy and the cluster DNS at scale. For each size (`CAIRN_BENCH_SERVICES`, default
//! `1000,10000`): a one-member Cairn store and `cairn-orchestrator apiserver` as processes on
//! 127.0.0.1, that many ClusterIP Services each with an EndpointSlice of 2 ready endpoints, then
//! - the proxy (in this process, its `nft` in a network namespace of its own, so the host's rules
//!   are untouched): the first sync, which writes the whole table, and the time from the proxy's
//!   start until then (list plus sync); the time from an EndpointSlice update's answer until the
//!   sync that carries it has been applied (`CAIRN_BENCH_UPDATES`, default 10, spaced beyond the 1 s
//!   minimum sync period);
//! - the DNS server (in this process, on 127.0.0.1): A queries for random Services from
//!   `CAIRN_BENCH_DNS_CLIENTS` (default 16) concurrent UDP clients for `CAIRN_BENCH_SECS`
//!   (default 5) seconds.
//!
//! Needs root (the network namespace and nftables). `cargo build --release -p cairn-server --bin
//! cairn` first, then `sudo cargo bench -p cairn-orchestrator --bench services`.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_orchestrator::dns::{DnsConfig, DnsServer};
use cairn_orchestrator::proxy::{Nft, Proxy, ProxyConfig, SyncStats};
use common::{quantile_secs, row, Row};
use futures::StreamExt;
use hickory_server::proto::op::{Message, MessageType, OpCode, Query};
use hickory_server::proto::rr::{Name, RecordType};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

const NS: &str = "bench";
const CREATORS: usize = 64;

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn endpoint_ip(i: usize, which: usize) -> String {
    format!("10.{}.{}.{}", 100 + which, (i / 250) % 250, i % 250 + 1)
}

async fn fill(client: &kube::Client, n: usize) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap();
    let _ = Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), NS);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NS);
    futures::stream::iter(0..n)
        .for_each_concurrent(CREATORS, |i| {
            let (svcs, slices) = (svcs.clone(), slices.clone());
            async move {
                let svc: Service = serde_json::from_value(json!({
                    "metadata": {"name": format!("svc-{i}")},
                    "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
                }))
                .unwrap();
                svcs.create(&PostParams::default(), &svc).await.unwrap();
                slices
                    .create(&PostParams::default(), &slice(i, 0))
                    .await
                    .unwrap();
            }
        })
        .await;
}

fn slice(i: usize, generation: usize) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {"name": format!("svc-{i}-x"),
            "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080 + generation, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [endpoint_ip(i, 0)], "conditions": {"ready": true}},
            {"addresses": [endpoint_ip(i, 1)], "conditions": {"ready": true}}
        ]
    }))
    .unwrap()
}

fn proxy_config(netns: &str) -> ProxyConfig {
    let mut cfg = ProxyConfig::new("bench");
    cfg.nft = Nft {
        command: vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            netns.into(),
            "nft".into(),
        ],
    };
    cfg
}

/// Waits until a sync matching `done` has been reported.
async fn until_sync(
    stats: &mut tokio::sync::watch::Receiver<SyncStats>,
    done: impl Fn(&SyncStats) -> bool,
) -> SyncStats {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        {
            let s = stats.borrow_and_update();
            if done(&s) {
                return s.clone();
            }
            assert!(s.failures == 0, "sync failed: {s:?}");
        }
        tokio::time::timeout_at(deadline, stats.changed())
            .await
            .expect("a sync within 600 s")
            .expect("the proxy runs");
    }
}

async fn bench_proxy(rows: &mut Vec<Row>, client: &kube::Client, n: usize, netns: &str) {
    let started = Instant::now();
    let proxy = Proxy::start(client.clone(), proxy_config(netns)).unwrap();
    let mut stats = proxy.stats();
    let first = until_sync(&mut stats, |s| s.syncs >= 1).await;
    assert!(first.service_ports >= n, "{first:?}");
    row(
        rows,
        &format!("{n} services: first (full) sync, compute + nft -f"),
        format!(
            "{:.3} s ({:.1} MiB of nft commands)",
            first.duration.as_secs_f64(),
            first.script_bytes as f64 / 1048576.0
        ),
        "",
    );
    row(
        rows,
        &format!("{n} services: proxy start to rules applied (list + full sync)"),
        format!("{:.3} s", started.elapsed().as_secs_f64()),
        "",
    );

    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NS);
    let updates = common::knob("CAIRN_BENCH_UPDATES", 10).max(1) as usize;
    let mut latencies = Vec::new();
    let mut partial = Vec::new();
    for k in 0..updates {
        // Past the minimum sync period, so the rate limit is not what is measured.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let i = (k * 7919) % n;
        let before = stats.borrow_and_update().syncs;
        let patch = json!({"ports": [{"name": "http", "port": 9000 + k, "protocol": "TCP"}]});
        let t = Instant::now();
        slices
            .patch(
                &format!("svc-{i}-x"),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .unwrap();
        let answered = t.elapsed();
        let s = until_sync(&mut stats, |s| s.syncs > before && s.changed > 0).await;
        latencies.push(t.elapsed() - answered);
        partial.push(s.duration);
    }
    latencies.sort();
    partial.sort();
    row(
        rows,
        &format!("{n} services: EndpointSlice update answered to its rules applied, p50 / max"),
        format!(
            "{:.3} s / {:.3} s (over {updates})",
            quantile_secs(&latencies, 0.5),
            quantile_secs(&latencies, 1.0)
        ),
        "",
    );
    row(
        rows,
        &format!("{n} services: one changed service's sync (compute + nft -f), p50 / max"),
        format!(
            "{:.3} s / {:.3} s",
            quantile_secs(&partial, 0.5),
            quantile_secs(&partial, 1.0)
        ),
        "",
    );
    proxy.shutdown().await.unwrap();
    let table = Command::new("ip")
        .args(["netns", "exec", netns, "nft", "list", "tables"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&table.stdout).contains("cairn-proxy"),
        "shutdown removes the table"
    );
}

fn query(name: &str) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(fastrand::u16(..))
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

async fn bench_dns(rows: &mut Vec<Row>, client: &kube::Client, n: usize) {
    let server = DnsServer::start(
        client.clone(),
        DnsConfig::new("127.0.0.1:0".parse().unwrap()),
    )
    .await
    .unwrap();
    let addr = server.addr;
    let deadline = Instant::now() + Duration::from_secs(120);
    while server.names().unwrap_or(0) < n {
        assert!(
            Instant::now() < deadline,
            "the DNS zone never held {n} names"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = common::knob("CAIRN_BENCH_SECS", 5).max(1);
    let clients = common::knob("CAIRN_BENCH_DNS_CLIENTS", 16).max(1) as usize;
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (stop, answered, lat) = (stop.clone(), answered.clone(), lat.clone());
        tasks.push(tokio::spawn(async move {
            let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            sock.connect(addr).await.unwrap();
            let mut buf = vec![0u8; 2048];
            let mut mine = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let i = fastrand::usize(..n);
                let q = query(&format!("svc-{i}.{NS}.svc.cluster.local."));
                let t = Instant::now();
                sock.send(&q).await.unwrap();
                match tokio::time::timeout(Duration::from_secs(1), sock.recv(&mut buf)).await {
                    Ok(Ok(len)) => {
                        let m = Message::from_vec(&buf[..len]).unwrap();
                        assert_eq!(m.answers().len(), 1, "svc-{i}");
                        answered.fetch_add(1, Ordering::Relaxed);
                        mine.push(t.elapsed());
                    }
                    _ => continue,
                }
            }
            lat.lock().unwrap().extend(mine);
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let mut l = lat.lock().unwrap().clone();
    l.sort();
    let q = answered.load(Ordering::Relaxed) as f64 / secs as f64;
    row(
        rows,
        &format!("{n} services: DNS A queries/s on loopback ({clients} UDP clients), p50 / p99"),
        format!(
            "{q:.0}/s, {:.3} ms / {:.3} ms",
            quantile_secs(&l, 0.5) * 1000.0,
            quantile_secs(&l, 0.99) * 1000.0
        ),
        "",
    );
    server.shutdown().await;
}

async fn bench(sizes: Vec<usize>) -> Vec<Row> {
    let mut rows = Vec::new();
    let netns = Netns(format!("cairn-bench-proxy-{}", std::process::id()));
    let ok = Command::new("ip")
        .args(["netns", "add", &netns.0])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "ip netns add {}", netns.0);
    for n in sizes {
        let (_cluster, _api, client) = common::cluster_and_apiserver(1).await;
        let t = Instant::now();
        fill(&client, n).await;
        row(
            &mut rows,
            &format!("{n} services: create the Services and their EndpointSlices"),
            format!("{:.1} s", t.elapsed().as_secs_f64()),
            "",
        );
        bench_proxy(&mut rows, &client, n, &netns.0).await;
        bench_dns(&mut rows, &client, n).await;
    }
    rows
}

fn main() {
    if !common::benchmarking("services") {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED: services bench: needs root (a network namespace and nftables)");
        return;
    }
    let sizes: Vec<usize> = std::env::var("CAIRN_BENCH_SERVICES")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let rows = rt.block_on(bench(sizes));
    common::print_table(
        &format!(
            "1 cairn member and cairn-orchestrator apiserver as processes on 127.0.0.1; the proxy and \
             the DNS server in the bench process, nft in a network namespace; 2 endpoints per Service; \
             whole run {:.0} s",
            started.elapsed().as_secs_f64()
        ),
        &rows,
    );
}
