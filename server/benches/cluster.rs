//! Cairn beside etcd on the same machine in the same run: 3 members on loopback each, fsync on.
//! Measures Put throughput and latency at 1, 16 and 256 concurrent clients, linearizable point reads
//! at 256 clients, and idle memory per member. Prints a markdown table.
//!
//! `cargo bench -p cairn-server --bench cluster` (etcd comes from Debian's `etcd-server`; without it
//! only Cairn is measured). `CAIRN_BENCH_SECS` sets the seconds per measurement (default 10),
//! `CAIRN_BENCH_SYSTEMS=cairn` skips etcd, `CAIRN_BENCH_CLIENTS=256` picks put concurrency levels.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, KvClient};

const KEY_SPACE: u64 = 100_000;
const VALUE_SIZE: usize = 256;
const CONNECTIONS: usize = 16;

#[derive(Clone, Copy, PartialEq)]
enum System {
    Cairn,
    Etcd,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Cairn => "cairn",
            System::Etcd => "etcd 3.4",
        }
    }
}

struct Cluster {
    children: Vec<Child>,
    client_urls: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

fn start(system: System, members: usize) -> Cluster {
    let dir = tempfile::tempdir().expect("temp dir");
    let ports = free_ports(2 * members);
    let initial: Vec<String> = (0..members)
        .map(|i| format!("m{i}=http://127.0.0.1:{}", ports[2 * i + 1]))
        .collect();
    let mut children = Vec::new();
    let mut client_urls = Vec::new();
    for i in 0..members {
        let client = format!("http://127.0.0.1:{}", ports[2 * i]);
        let peer = format!("http://127.0.0.1:{}", ports[2 * i + 1]);
        let bin = match system {
            System::Cairn => env!("CARGO_BIN_EXE_cairn"),
            System::Etcd => "etcd",
        };
        let mut cmd = Command::new(bin);
        cmd.arg("--name")
            .arg(format!("m{i}"))
            .arg("--data-dir")
            .arg(dir.path().join(format!("m{i}")))
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(initial.join(","))
            .arg("--initial-cluster-state")
            .arg("new")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if system == System::Cairn {
            cmd.arg("--log-level").arg("warn");
        }
        children.push(cmd.spawn().expect("spawn member"));
        client_urls.push(client);
    }
    Cluster {
        children,
        client_urls,
        _dir: dir,
    }
}

async fn connect(url: &str) -> Client {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut c) = Client::connect([url], Some(opts.clone())).await {
            if c.get("bench-probe", None).await.is_ok() {
                return c;
            }
        }
        assert!(Instant::now() < deadline, "{url} did not serve within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status"))
        .unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct Measured {
    ops_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

#[derive(Clone, Copy)]
enum Op {
    Put,
    Get,
}

async fn load(kvs: &[KvClient], clients: usize, op: Op, secs: u64) -> Measured {
    let value = Arc::new(vec![b'v'; VALUE_SIZE]);
    let stop = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut kv = kvs[c % kvs.len()].clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ (c as u64 + 1);
            while Instant::now() < stop {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let key = format!("{:08}", x % KEY_SPACE);
                let t = Instant::now();
                let ok = match op {
                    Op::Put => kv.put(key, value.as_slice(), None).await.is_ok(),
                    Op::Get => kv.get(key, None).await.is_ok(),
                };
                if ok {
                    latencies.push(t.elapsed().as_micros() as u32);
                }
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.is_empty() {
            return f64::NAN;
        }
        all[((all.len() as f64 * p) as usize).min(all.len() - 1)] as f64 / 1000.0
    };
    Measured {
        ops_per_sec: all.len() as f64 / elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    }
}

struct Row {
    workload: String,
    results: Vec<(System, String)>,
}

fn record(rows: &mut Vec<Row>, workload: &str, system: System, cell: String) {
    match rows.iter_mut().find(|r| r.workload == workload) {
        Some(r) => r.results.push((system, cell)),
        None => rows.push(Row {
            workload: workload.to_string(),
            results: vec![(system, cell)],
        }),
    }
}

async fn bench(system: System, secs: u64, rows: &mut Vec<Row>) {
    let cluster = start(system, members());
    let mut clients = Vec::new();
    for url in &cluster.client_urls {
        clients.push(connect(url).await);
    }
    // Idle memory: settled members with an empty store.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss: Vec<u64> = cluster.children.iter().map(|c| rss_kib(c.id())).collect();
    let max_rss = *rss.iter().max().unwrap() as f64 / 1024.0;
    record(
        rows,
        "idle RSS per member (max of 3)",
        system,
        format!("{max_rss:.1} MiB"),
    );

    // Connections spread over all members, as a client given every endpoint would.
    let mut kvs = Vec::new();
    for i in 0..CONNECTIONS {
        let url = &cluster.client_urls[i % cluster.client_urls.len()];
        kvs.push(connect(url).await.kv_client());
    }
    for &n in &client_counts() {
        let m = load(&kvs, n, Op::Put, secs).await;
        eprintln!(
            "{} put x{n}: {:.0}/s p50 {:.2} ms p99 {:.2} ms",
            system.name(),
            m.ops_per_sec,
            m.p50_ms,
            m.p99_ms
        );
        record(
            rows,
            &format!("put, {n} clients: ops/s (p50 / p99 ms)"),
            system,
            format!("{:.0} ({:.1} / {:.1})", m.ops_per_sec, m.p50_ms, m.p99_ms),
        );
    }
    let m = load(&kvs, 256, Op::Get, secs).await;
    eprintln!(
        "{} get x256: {:.0}/s p50 {:.2} ms p99 {:.2} ms",
        system.name(),
        m.ops_per_sec,
        m.p50_ms,
        m.p99_ms
    );
    record(
        rows,
        "linearizable get, 256 clients: ops/s (p50 / p99 ms)",
        system,
        format!("{:.0} ({:.1} / {:.1})", m.ops_per_sec, m.p50_ms, m.p99_ms),
    );
    let rss: Vec<u64> = cluster.children.iter().map(|c| rss_kib(c.id())).collect();
    let max_rss = *rss.iter().max().unwrap() as f64 / 1024.0;
    record(
        rows,
        "RSS per member after load (max of 3)",
        system,
        format!("{max_rss:.1} MiB"),
    );
}

/// `CAIRN_BENCH_MEMBERS` (default 3) sets the cluster size.
fn members() -> usize {
    std::env::var("CAIRN_BENCH_MEMBERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
}

/// `CAIRN_BENCH_CLIENTS=1,16,256` (the default) picks the put concurrency levels.
fn client_counts() -> Vec<usize> {
    std::env::var("CAIRN_BENCH_CLIENTS")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 16, 256])
}

fn main() {
    // `cargo test --all-targets` runs bench targets without `--bench`: nothing to measure then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("cluster bench: run with `cargo bench -p cairn-server --bench cluster`");
        return;
    }
    let secs: u64 = std::env::var("CAIRN_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let only = std::env::var("CAIRN_BENCH_SYSTEMS").unwrap_or_else(|_| "cairn,etcd".into());
    let mut systems = Vec::new();
    if only.contains("cairn") {
        systems.push(System::Cairn);
    }
    let etcd_installed = || {
        Command::new("etcd")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if only.contains("etcd") {
        if etcd_installed() {
            systems.push(System::Etcd);
        } else {
            eprintln!("etcd not installed (apt-get install etcd-server): measuring Cairn only");
        }
    }
    let mut rows = Vec::new();
    rt.block_on(async {
        for s in &systems {
            bench(*s, secs, &mut rows).await;
        }
    });
    println!();
    println!(
        "{} members on 127.0.0.1, fsync on, {VALUE_SIZE}-byte values, 8-byte keys from {KEY_SPACE}, {CONNECTIONS} connections, {secs} s per row",
        members()
    );
    println!();
    print!("| workload |");
    for s in &systems {
        print!(" {} |", s.name());
    }
    println!();
    print!("|---|");
    for _ in &systems {
        print!("---|");
    }
    println!();
    for r in rows {
        print!("| {} |", r.workload);
        for s in &systems {
            let cell = r
                .results
                .iter()
                .find(|(x, _)| x == s)
                .map(|(_, c)| c.as_str())
                .unwrap_or("-");
            print!(" {cell} |");
        }
        println!();
    }
}
