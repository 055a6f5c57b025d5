//! The service proxy's data path: TCP through a ClusterIP (DNAT by the proxy's rules) against the
//! same traffic sent to the endpoints' own addresses. Network namespaces stand for a node, a client
//! and two backends (veth pairs, a /24 each, the node forwarding between them, as in
//! `tests/proxy.rs`); a one-member Cairn store and `cairn-orchestrator apiserver` run as processes
//! on 127.0.0.1; the proxy runs in this process and programs the node namespace's nftables (its
//! `nft` through `ip netns exec`), with `CAIRN_BENCH_PROXY_SERVICES` (default 1000) other Services
//! in its table so the lookup is not that of a one-Service table.
//!
//! Both paths cross the node namespace with its conntrack and the proxy's hooks: only the DNAT
//! differs. Each measurement runs for `CAIRN_BENCH_SECS` (default 5) seconds per path, the two
//! paths alternating (direct, proxied, proxied, direct, ...) for `CAIRN_BENCH_ROUNDS` (default 3)
//! rounds so that load from elsewhere on the machine falls on both:
//! - new connections: `CAIRN_BENCH_CLIENTS` (default 32) concurrent clients, each connecting,
//!   sending a 64-byte request, reading the 256-byte answer and closing with a reset (no
//!   TIME_WAIT, so neither the client's ports nor the conntrack table fill up); latency is connect
//!   to answer read. Directly, client `i` uses backend `i % 2`, as the Service spreads them.
//! - bulk: `CAIRN_BENCH_STREAMS` (default 4) long-lived connections streaming to the backends;
//!   the backends count what they read.
//!
//! `CAIRN_BENCH_PATHS=proxied` (or `direct`) runs one path only, for a system-wide profile of it;
//! adding `bare` (e.g. `bare,direct,proxied`) first measures the direct path before the proxy has
//! started, when the node's namespace has no netfilter hooks at all.
//!
//! Clients and servers are tokio runtimes of this process: the client runtime's threads join the
//! client namespace as they start; the servers' listeners are bound by threads that joined a
//! backend namespace, so their sockets live there whichever thread then serves them. CPU use of
//! the machine, of the client threads and of the server threads is reported per path.
//!
//! Needs root (network namespaces and nftables). `cargo build --release -p cairn-server --bin
//! cairn` first, then `sudo cargo bench -p cairn-orchestrator --bench proxy_path`.

mod common;
#[path = "../tests/netlab/mod.rs"]
mod netlab;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_orchestrator::proxy::{NodePortAddresses, Proxy, ProxyConfig, SyncStats};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PostParams};
use netlab::enter;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = "bench";
const NODE_IP: &str = "10.232.1.1";
const BACKENDS: [&str; 2] = ["10.232.2.2", "10.232.3.2"];
const RR_PORT: u16 = 8080;
const BULK_PORT: u16 = 8081;
const REQUEST: usize = 64;
const ANSWER: usize = 256;
const CLIENT_THREADS: &str = "path-client";
const SERVER_THREADS: &str = "path-server";

/// The bench's namespaces, deleted (with their links, rules and conntrack) on drop, unwinding
/// included.
struct Net(netlab::Hosts);

impl std::ops::Deref for Net {
    type Target = netlab::Hosts;

    fn deref(&self) -> &netlab::Hosts {
        &self.0
    }
}

impl Net {
    fn new() -> Net {
        let hosts = netlab::Hosts::new(&format!("cpb{}", std::process::id()), "10.232", 2);
        for (i, (_, ip)) in hosts.backends.iter().enumerate() {
            assert_eq!(ip, BACKENDS[i]);
        }
        Net(hosts)
    }

    /// Connections conntrack tracks in the node namespace now.
    fn conntrack_count(&self) -> String {
        self.on_node(&["cat", "/proc/sys/net/netfilter/nf_conntrack_count"])
            .trim()
            .to_string()
    }

    /// Rules (lines holding a statement) and chains in the node namespace's ruleset.
    fn ruleset_size(&self) -> (usize, usize) {
        let text = self.on_node(&["nft", "list", "ruleset"]);
        let chains = text
            .lines()
            .filter(|l| l.trim_start().starts_with("chain "))
            .count();
        let rules = text
            .lines()
            .map(str::trim)
            .filter(|l| {
                !l.is_empty()
                    && !l.starts_with("chain ")
                    && !l.starts_with("table ")
                    && !l.starts_with("map ")
                    && !l.starts_with("set ")
                    && !l.starts_with("type ")
                    && !l.starts_with("elements ")
                    && !l.starts_with("flags ")
                    && *l != "}"
            })
            .count();
        (chains, rules)
    }
}

/// Binds `addr` from a thread inside network namespace `ns`.
fn listen_in(ns: &str, addr: SocketAddr) -> std::net::TcpListener {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter(&ns);
        let l = std::net::TcpListener::bind(addr).unwrap();
        l.set_nonblocking(true).unwrap();
        l
    })
    .join()
    .unwrap()
}

/// Each connection: one request, one answer, then whatever the client sends until it closes.
async fn serve_requests(l: tokio::net::TcpListener) {
    let answer: Arc<[u8]> = vec![b'a'; ANSWER].into();
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            continue;
        };
        let answer = answer.clone();
        tokio::spawn(async move {
            let _ = s.set_nodelay(true);
            let mut req = [0u8; REQUEST];
            if s.read_exact(&mut req).await.is_err() || s.write_all(&answer).await.is_err() {
                return;
            }
            let mut rest = [0u8; 64];
            while matches!(s.read(&mut rest).await, Ok(n) if n > 0) {}
        });
    }
}

/// Reads every connection to its end, counting the bytes into `read`.
async fn serve_bulk(l: tokio::net::TcpListener, read: Arc<AtomicU64>) {
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            continue;
        };
        let read = read.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 256 * 1024];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    return;
                }
                read.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
    }
}

/// One connection with one request and its answer, closed with a reset.
async fn exchange(to: SocketAddr) -> std::io::Result<()> {
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(to))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    s.set_nodelay(true)?;
    s.write_all(&[b'q'; REQUEST]).await?;
    let mut answer = [0u8; ANSWER];
    tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut answer))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    s.set_zero_linger()?;
    Ok(())
}

/// CPU seconds of this process's threads whose name starts with `prefix`.
fn threads_cpu(prefix: &str) -> f64 {
    let mut ticks = 0u64;
    for t in std::fs::read_dir("/proc/self/task").into_iter().flatten() {
        let Ok(t) = t else { continue };
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with(prefix) {
            continue;
        }
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        ticks += n(11) + n(12);
    }
    ticks as f64 / 100.0
}

/// CPU use over one measurement.
#[derive(Default, Clone, Copy)]
struct Cpu {
    wall: f64,
    busy: f64,
    softirq: f64,
    all: f64,
    client: f64,
    server: f64,
}

impl Cpu {
    fn measure<T>(f: impl FnOnce() -> T) -> (T, Cpu) {
        let (b0, s0, a0) = common::machine_ticks();
        let (c0, v0) = (threads_cpu(CLIENT_THREADS), threads_cpu(SERVER_THREADS));
        let t = Instant::now();
        let out = f();
        let (b1, s1, a1) = common::machine_ticks();
        let cpu = Cpu {
            wall: t.elapsed().as_secs_f64(),
            busy: (b1 - b0) as f64 / 100.0,
            softirq: (s1 - s0) as f64 / 100.0,
            all: (a1 - a0) as f64 / 100.0,
            client: threads_cpu(CLIENT_THREADS) - c0,
            server: threads_cpu(SERVER_THREADS) - v0,
        };
        (out, cpu)
    }

    fn add(&mut self, o: Cpu) {
        self.wall += o.wall;
        self.busy += o.busy;
        self.softirq += o.softirq;
        self.all += o.all;
        self.client += o.client;
        self.server += o.server;
    }

    /// "machine busy B % (softirq S %), client threads C %, server threads V %", the machine's
    /// shares of all its CPUs, the threads' of one CPU.
    fn describe(&self) -> String {
        let all = self.all.max(0.01);
        let wall = self.wall.max(0.001);
        format!(
            "machine {:.0} % busy ({:.0} % softirq); client threads {:.0} %, server threads {:.0} % of a CPU",
            100.0 * self.busy / all,
            100.0 * self.softirq / all,
            100.0 * self.client / wall,
            100.0 * self.server / wall
        )
    }
}

/// What one path measured, summed over its runs.
#[derive(Default)]
struct Path {
    connections: u64,
    errors: u64,
    secs: f64,
    latencies_us: Vec<u32>,
    rates: Vec<f64>,
    bulk_bytes: u64,
    bulk_secs: f64,
    bulk_rates: Vec<f64>,
    short_cpu: Cpu,
    bulk_cpu: Cpu,
}

struct Bench {
    clients: tokio::runtime::Runtime,
    servers: tokio::runtime::Runtime,
    bulk_read: Arc<AtomicU64>,
}

impl Bench {
    /// `clients` concurrent clients, client `i` to `targets[i % targets.len()]`, for `secs`.
    fn short(&self, targets: &[SocketAddr], clients: usize, secs: f64) -> (u64, u64, Vec<u32>) {
        let until = Instant::now() + Duration::from_secs_f64(secs);
        let tasks: Vec<_> = (0..clients)
            .map(|i| {
                let to = targets[i % targets.len()];
                self.clients.spawn(async move {
                    let (mut lat, mut errors) = (Vec::new(), 0u64);
                    while Instant::now() < until {
                        let t = Instant::now();
                        match exchange(to).await {
                            Ok(()) => {
                                lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32)
                            }
                            Err(_) => errors += 1,
                        }
                    }
                    (lat, errors)
                })
            })
            .collect();
        let mut all = Vec::new();
        let mut errors = 0;
        for t in tasks {
            let (lat, e) = self.clients.block_on(t).unwrap();
            all.extend(lat);
            errors += e;
        }
        (all.len() as u64, errors, all)
    }

    /// `streams` connections writing as fast as they can, stream `i` to `targets[i % len]`;
    /// the bytes the servers read in `secs` after a quarter-second start.
    fn bulk(&self, targets: &[SocketAddr], streams: usize, secs: f64) -> (u64, f64) {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks: Vec<_> = (0..streams)
            .map(|i| {
                let to = targets[i % targets.len()];
                let stop = stop.clone();
                self.clients.spawn(async move {
                    let mut s = tokio::net::TcpStream::connect(to).await.unwrap();
                    let buf = vec![b'b'; 128 * 1024];
                    while !stop.load(Ordering::Relaxed) {
                        s.write_all(&buf).await.unwrap();
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(250));
        let b0 = self.bulk_read.load(Ordering::Relaxed);
        let t = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(secs));
        let bytes = self.bulk_read.load(Ordering::Relaxed) - b0;
        let took = t.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            self.clients.block_on(t).unwrap();
        }
        (bytes, took)
    }
}

fn slice_of(ips: &[&str], ports: &[(&str, u16)], name: &str, service: &str) -> EndpointSlice {
    let eps: Vec<serde_json::Value> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
        .collect();
    let ports: Vec<serde_json::Value> = ports
        .iter()
        .map(|(n, p)| json!({"name": n, "port": p, "protocol": "TCP"}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": eps,
    }))
    .unwrap()
}

/// The measured Service (`web`, two ports on both backends) and `others` Services whose endpoints
/// are nowhere; the ClusterIP of `web`.
async fn services(client: &kube::Client, others: usize) -> String {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let svcs: Api<Service> = Api::namespaced(client.clone(), NS);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NS);
    futures::stream::iter(0..others)
        .for_each_concurrent(64, |i| {
            let (svcs, slices) = (svcs.clone(), slices.clone());
            async move {
                let svc: Service = serde_json::from_value(json!({
                    "metadata": {"name": format!("other-{i}")},
                    "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
                }))
                .unwrap();
                svcs.create(&PostParams::default(), &svc).await.unwrap();
                let a = format!("10.{}.{}.{}", 100, (i / 250) % 250, i % 250 + 1);
                let b = format!("10.{}.{}.{}", 101, (i / 250) % 250, i % 250 + 1);
                let s = slice_of(
                    &[&a, &b],
                    &[("http", 8080)],
                    &format!("other-{i}-x"),
                    &format!("other-{i}"),
                );
                slices.create(&PostParams::default(), &s).await.unwrap();
            }
        })
        .await;
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"ports": [
            {"name": "rr", "port": 80, "targetPort": RR_PORT, "protocol": "TCP"},
            {"name": "bulk", "port": 81, "targetPort": BULK_PORT, "protocol": "TCP"}
        ]}
    }))
    .unwrap();
    let created = svcs.create(&PostParams::default(), &svc).await.unwrap();
    slices
        .create(
            &PostParams::default(),
            &slice_of(
                &BACKENDS,
                &[("rr", RR_PORT), ("bulk", BULK_PORT)],
                "web-x",
                "web",
            ),
        )
        .await
        .unwrap();
    created.spec.unwrap().cluster_ip.unwrap()
}

fn proxy_config(net: &Net) -> ProxyConfig {
    let mut cfg = ProxyConfig::new("bench");
    cfg.nft = net.nft();
    cfg.cluster_cidr = Some("10.232.0.0/16".into());
    cfg.nodeport_addresses = NodePortAddresses::Cidrs(vec![format!("{NODE_IP}/32")]);
    cfg
}

fn ms(us: f64) -> String {
    format!("{:.3} ms", us / 1000.0)
}

fn quantile_us(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)] as f64
}

/// The ratios proxied / direct of each round's pair of runs: median (min–max). A pair shares the
/// machine's load of its moment better than the sums over all rounds do.
fn paired(direct: &[f64], proxied: &[f64]) -> String {
    let mut r: Vec<f64> = direct
        .iter()
        .zip(proxied)
        .map(|(d, p)| 100.0 * p / d)
        .collect();
    if r.is_empty() {
        return String::new();
    }
    r.sort_by(f64::total_cmp);
    let median = if r.len() % 2 == 1 {
        r[r.len() / 2]
    } else {
        (r[r.len() / 2 - 1] + r[r.len() / 2]) / 2.0
    };
    format!(
        "; per round: median {median:.1} %, {:.0}–{:.0} %",
        r[0],
        r[r.len() - 1]
    )
}

fn spread(rates: &[f64]) -> String {
    let min = rates.iter().copied().fold(f64::INFINITY, f64::min);
    let max = rates.iter().copied().fold(0.0, f64::max);
    format!("{min:.0}–{max:.0}")
}

/// Which paths run (`CAIRN_BENCH_PATHS`, default `direct,proxied`; `bare` adds the direct path
/// before the proxy starts): one alone lets a system-wide profile see only its traffic.
struct Paths {
    direct: bool,
    proxied: bool,
    bare: bool,
}

impl Paths {
    fn from_env() -> Paths {
        let v = std::env::var("CAIRN_BENCH_PATHS").unwrap_or_else(|_| "direct,proxied".into());
        let has = |w: &str| v.split(',').any(|p| p.trim() == w);
        let p = Paths {
            direct: has("direct"),
            proxied: has("proxied"),
            bare: has("bare"),
        };
        assert!(
            p.direct || p.proxied || p.bare,
            "CAIRN_BENCH_PATHS={v:?}: name direct, proxied, bare or several"
        );
        p
    }

    fn wants(&self, via_proxy: bool) -> bool {
        if via_proxy {
            self.proxied
        } else {
            self.direct
        }
    }
}

fn main() {
    if !common::benchmarking("proxy_path") {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED: proxy_path bench: needs root (network namespaces and nftables)");
        return;
    }
    let secs = common::knob("CAIRN_BENCH_SECS", 5).max(1) as f64;
    let rounds = common::knob("CAIRN_BENCH_ROUNDS", 3).max(1) as usize;
    let clients = common::knob("CAIRN_BENCH_CLIENTS", 32).max(1) as usize;
    let streams = common::knob("CAIRN_BENCH_STREAMS", 4).max(1) as usize;
    let others = common::knob("CAIRN_BENCH_PROXY_SERVICES", 1000) as usize;
    let paths = Paths::from_env();
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let net = Net::new();
    let client_ns = net.client.clone();
    let bench = Bench {
        clients: tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(CLIENT_THREADS)
            .on_thread_start(move || enter(&client_ns))
            .enable_all()
            .build()
            .unwrap(),
        servers: tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(SERVER_THREADS)
            .enable_all()
            .build()
            .unwrap(),
        bulk_read: Arc::new(AtomicU64::new(0)),
    };
    for (ns, ip) in net.backends.iter() {
        let rr = listen_in(ns, format!("{ip}:{RR_PORT}").parse().unwrap());
        let bulk = listen_in(ns, format!("{ip}:{BULK_PORT}").parse().unwrap());
        let read = bench.bulk_read.clone();
        bench.servers.spawn(async move {
            serve_requests(tokio::net::TcpListener::from_std(rr).unwrap()).await
        });
        bench.servers.spawn(async move {
            serve_bulk(tokio::net::TcpListener::from_std(bulk).unwrap(), read).await
        });
    }

    let control = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (_cluster, _api, client) = control.block_on(common::cluster_and_apiserver(1));
    let vip = control.block_on(services(&client, others));
    let rr_direct: Vec<SocketAddr> = BACKENDS
        .iter()
        .map(|ip| format!("{ip}:{RR_PORT}").parse().unwrap())
        .collect();
    let bulk_direct: Vec<SocketAddr> = BACKENDS
        .iter()
        .map(|ip| format!("{ip}:{BULK_PORT}").parse().unwrap())
        .collect();

    // Before the proxy's table exists the node's namespace has no netfilter hooks and tracks
    // nothing: what the direct path costs on a node without the proxy.
    let mut bare = Path::default();
    if paths.bare {
        bench.short(&rr_direct, clients, 1.0);
        for round in 0..rounds {
            let ((n, errors, lat), cpu) = Cpu::measure(|| bench.short(&rr_direct, clients, secs));
            let rate = n as f64 / cpu.wall;
            eprintln!(
                "round {round} direct without the proxy: {rate:.0} connections/s ({errors} errors); {}",
                cpu.describe()
            );
            bare.connections += n;
            bare.errors += errors;
            bare.secs += cpu.wall;
            bare.latencies_us.extend(lat);
            bare.rates.push(rate);
            bare.short_cpu.add(cpu);
            let ((bytes, took), cpu) = Cpu::measure(|| bench.bulk(&bulk_direct, streams, secs));
            let rate = bytes as f64 / took / 1e6;
            eprintln!(
                "round {round} direct without the proxy bulk: {rate:.0} MB/s; {}",
                cpu.describe()
            );
            bare.bulk_bytes += bytes;
            bare.bulk_secs += took;
            bare.bulk_rates.push(rate);
            bare.bulk_cpu.add(cpu);
        }
    }
    let proxy = {
        let _guard = control.enter();
        Proxy::start(client.clone(), proxy_config(&net)).unwrap()
    };
    let first: SyncStats = control.block_on(async {
        let mut stats = proxy.stats();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let s = stats.borrow_and_update().clone();
            assert_eq!(s.failures, 0, "sync failed: {s:?}");
            if s.syncs >= 1 && s.service_ports >= others + 2 {
                return s;
            }
            tokio::time::timeout_at(deadline, stats.changed())
                .await
                .expect("the proxy's first sync within 120 s")
                .unwrap();
        }
    });

    let rr_vip: Vec<SocketAddr> = vec![format!("{vip}:80").parse().unwrap()];
    let bulk_vip: Vec<SocketAddr> = vec![format!("{vip}:81").parse().unwrap()];

    // Both paths answer before anything is timed; the rules are in once the ClusterIP does.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let to = rr_vip[0];
        let ok = bench
            .clients
            .block_on(
                bench
                    .clients
                    .spawn(async move { exchange(to).await.is_ok() }),
            )
            .unwrap();
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "{vip}:80 never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
    if paths.direct {
        bench.short(&rr_direct, clients, 1.0);
    }
    if paths.proxied {
        bench.short(&rr_vip, clients, 1.0);
    }

    let mut direct = Path::default();
    let mut proxied = Path::default();
    for round in 0..rounds {
        // direct, proxied, proxied, direct, ...: a drift in the machine's load favours neither.
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for via_proxy in order.into_iter().filter(|&p| paths.wants(p)) {
            let (path, targets, name) = if via_proxy {
                (&mut proxied, &rr_vip, "proxied")
            } else {
                (&mut direct, &rr_direct, "direct")
            };
            let ((n, errors, lat), cpu) = Cpu::measure(|| bench.short(targets, clients, secs));
            let rate = n as f64 / cpu.wall;
            eprintln!(
                "round {round} {name}: {rate:.0} connections/s ({errors} errors); {}",
                cpu.describe()
            );
            path.connections += n;
            path.errors += errors;
            path.secs += cpu.wall;
            path.latencies_us.extend(lat);
            path.rates.push(rate);
            path.short_cpu.add(cpu);
        }
        for via_proxy in order.into_iter().filter(|&p| paths.wants(p)) {
            let (path, targets, name) = if via_proxy {
                (&mut proxied, &bulk_vip, "proxied")
            } else {
                (&mut direct, &bulk_direct, "direct")
            };
            let ((bytes, took), cpu) = Cpu::measure(|| bench.bulk(targets, streams, secs));
            let rate = bytes as f64 / took / 1e6;
            eprintln!(
                "round {round} {name} bulk: {rate:.0} MB/s; {}",
                cpu.describe()
            );
            path.bulk_bytes += bytes;
            path.bulk_secs += took;
            path.bulk_rates.push(rate);
            path.bulk_cpu.add(cpu);
        }
    }
    let conntrack = net.conntrack_count();
    let (chains, rules) = net.ruleset_size();
    control.block_on(proxy.shutdown()).unwrap();

    for p in [&mut direct, &mut proxied, &mut bare] {
        p.latencies_us.sort_unstable();
    }
    let conn_rate = |p: &Path| p.connections as f64 / p.secs;
    let mb = |p: &Path| p.bulk_bytes as f64 / p.bulk_secs / 1e6;
    let q = |p: &Path, x: f64| quantile_us(&p.latencies_us, x);
    println!();
    println!(
        "TCP from a client namespace through a node namespace to 2 backend namespaces (veth); \
         direct to the endpoints vs through the ClusterIP (the proxy's DNAT; {} other Services, \
         {chains} chains and {rules} rules in the node's ruleset, first sync {:.2} s); \
         {rounds} rounds of {secs:.0} s per path, interleaved; load average before: {}",
        others,
        first.duration.as_secs_f64(),
        load_before
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!();
    println!(
        "| measurement | direct to the endpoints | through the ClusterIP | proxied / direct |"
    );
    println!("|---|---|---|---|");
    println!(
        "| new connections/s, {clients} clients (spread of the runs) | {:.0} ({}) | {:.0} ({}) | {:.1} %{} |",
        conn_rate(&direct),
        spread(&direct.rates),
        conn_rate(&proxied),
        spread(&proxied.rates),
        100.0 * conn_rate(&proxied) / conn_rate(&direct),
        paired(&direct.rates, &proxied.rates)
    );
    for (what, x) in [("p50", 0.5), ("p99", 0.99)] {
        println!(
            "| connect + request + answer, {what} | {} | {} | {:.1} % |",
            ms(q(&direct, x)),
            ms(q(&proxied, x)),
            100.0 * q(&proxied, x) / q(&direct, x)
        );
    }
    println!(
        "| failed connections | {} | {} | |",
        direct.errors, proxied.errors
    );
    println!(
        "| bulk MB/s, {streams} streams (spread of the runs) | {:.0} ({}) | {:.0} ({}) | {:.1} %{} |",
        mb(&direct),
        spread(&direct.bulk_rates),
        mb(&proxied),
        spread(&proxied.bulk_rates),
        100.0 * mb(&proxied) / mb(&direct),
        paired(&direct.bulk_rates, &proxied.bulk_rates)
    );
    // The bench's own threads carry the kernel's work for their packets (veth hands a packet to
    // the next namespace in the sender's softirq), so their CPU per unit of work is the path's
    // cost, whatever else the machine runs.
    let per_conn =
        |p: &Path| 1e6 * (p.short_cpu.client + p.short_cpu.server) / p.connections as f64;
    let per_gb = |p: &Path| 1e9 * (p.bulk_cpu.client + p.bulk_cpu.server) / p.bulk_bytes as f64;
    println!(
        "| client + server threads' CPU per connection | {:.1} µs | {:.1} µs | {:.1} % |",
        per_conn(&direct),
        per_conn(&proxied),
        100.0 * per_conn(&proxied) / per_conn(&direct)
    );
    println!(
        "| client + server threads' CPU per GB streamed | {:.2} s | {:.2} s | {:.1} % |",
        per_gb(&direct),
        per_gb(&proxied),
        100.0 * per_gb(&proxied) / per_gb(&direct)
    );
    println!(
        "| CPU during the connection runs | {} | {} | |",
        direct.short_cpu.describe(),
        proxied.short_cpu.describe()
    );
    println!(
        "| CPU during the bulk runs | {} | {} | |",
        direct.bulk_cpu.describe(),
        proxied.bulk_cpu.describe()
    );
    if paths.bare && paths.direct {
        println!();
        println!(
            "The direct path on a node without the proxy's table ({rounds} rounds before the proxy \
             started, so not interleaved with the runs above):"
        );
        println!();
        println!("| measurement | direct, no proxy table | direct, the proxy's table in place | with / without |");
        println!("|---|---|---|---|");
        println!(
            "| new connections/s, {clients} clients | {:.0} ({}) | {:.0} | {:.1} % |",
            conn_rate(&bare),
            spread(&bare.rates),
            conn_rate(&direct),
            100.0 * conn_rate(&direct) / conn_rate(&bare)
        );
        for (what, x) in [("p50", 0.5), ("p99", 0.99)] {
            println!(
                "| connect + request + answer, {what} | {} | {} | {:.1} % |",
                ms(q(&bare, x)),
                ms(q(&direct, x)),
                100.0 * q(&direct, x) / q(&bare, x)
            );
        }
        println!(
            "| bulk MB/s, {streams} streams | {:.0} ({}) | {:.0} | {:.1} % |",
            mb(&bare),
            spread(&bare.bulk_rates),
            mb(&direct),
            100.0 * mb(&direct) / mb(&bare)
        );
        println!(
            "| client + server threads' CPU per connection | {:.1} µs | {:.1} µs | {:.1} % |",
            per_conn(&bare),
            per_conn(&direct),
            100.0 * per_conn(&direct) / per_conn(&bare)
        );
        println!(
            "| client + server threads' CPU per GB streamed | {:.2} s | {:.2} s | {:.1} % |",
            per_gb(&bare),
            per_gb(&direct),
            100.0 * per_gb(&direct) / per_gb(&bare)
        );
    }
    println!();
    println!("conntrack entries in the node namespace at the end: {conntrack}");
    drop(bench);
    drop(net);
}
