//! What the API server bench needs around it: a 3-member `cairn` cluster of real processes on
//! 127.0.0.1 (as `server/benches/common` starts them), the API server as a real process in front of
//! it, memory and CPU readings of those processes, knobs from the environment, the table.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `--bench` is among the arguments: `cargo test --all-targets` runs bench targets without it, and
/// then there is nothing to measure.
pub fn benchmarking(name: &str) -> bool {
    let yes = std::env::args().any(|a| a == "--bench");
    if !yes {
        println!("{name} bench: run with `cargo bench -p cairn-orchestrator --bench {name}`");
    }
    yes
}

/// A number from the environment variable `name`, or `default`.
pub fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}

pub fn orchestrator_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cairn-orchestrator"))
}

/// The `cairn` binary beside `cairn-orchestrator` in the same target directory (cargo builds only
/// this package's binaries for its benches), or `CAIRN_BIN`.
pub fn cairn_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CAIRN_BIN") {
        return PathBuf::from(p);
    }
    let p = orchestrator_bin().with_file_name("cairn");
    assert!(
        p.exists(),
        "{} is missing: build it first with `cargo build --release -p cairn-server --bin cairn` \
         (or point CAIRN_BIN at a cairn binary)",
        p.display()
    );
    p
}

pub fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// Store members as child processes, killed on drop.
pub struct Cluster {
    pub children: Vec<Child>,
    pub client_urls: Vec<String>,
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

impl Cluster {
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

/// Starts `members` `cairn` processes forming one new cluster on loopback (fsync on, default flags).
pub fn start_cluster(members: usize) -> Cluster {
    let bin = cairn_bin();
    let dir = tempfile::tempdir().expect("temp dir");
    let ports = free_ports(2 * members);
    let initial: Vec<String> = (0..members)
        .map(|i| format!("m{i}=http://127.0.0.1:{}", ports[2 * i + 1]))
        .collect();
    let mut cluster = Cluster {
        children: Vec::new(),
        client_urls: Vec::new(),
        _dir: dir,
    };
    for i in 0..members {
        let name = format!("m{i}");
        let client = format!("http://127.0.0.1:{}", ports[2 * i]);
        let peer = format!("http://127.0.0.1:{}", ports[2 * i + 1]);
        let child = Command::new(&bin)
            .arg("--name")
            .arg(&name)
            .arg("--data-dir")
            .arg(cluster._dir.path().join(&name))
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
            .arg("--log-level")
            .arg("warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn member");
        // Pushed before the next spawn, so Drop reaps whatever already started.
        cluster.children.push(child);
        cluster.client_urls.push(client);
    }
    cluster
}

/// Waits until the member at `url` answers a linearizable read (so the cluster has a leader).
pub async fn wait_serving(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(c) = cairn_client::Client::connect([url], None).await {
            if c.get("bench-probe", None).await.is_ok() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{url} did not serve within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `cairn-orchestrator apiserver` as a child process, killed on drop.
pub struct ApiServer {
    pub child: Child,
    pub kubeconfig: PathBuf,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ApiServer {
    /// Starts the API server on a free port of 127.0.0.1 in front of `store_urls`; it writes a
    /// kubeconfig (CA and admin token) once it listens. Its stderr goes to a file in its directory.
    pub fn start(store_urls: &[String]) -> ApiServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_ports(1)[0];
        let kubeconfig = dir.path().join("kubeconfig");
        let log = dir.path().join("apiserver.log");
        let child = Command::new(orchestrator_bin())
            .arg("apiserver")
            .arg("--etcd-servers")
            .arg(store_urls.join(","))
            .arg("--bind-address")
            .arg("127.0.0.1")
            .arg("--secure-port")
            .arg(port.to_string())
            .arg("--cert-dir")
            .arg(dir.path().join("certs"))
            .arg("--write-kubeconfig")
            .arg(&kubeconfig)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn cairn-orchestrator apiserver");
        ApiServer {
            child,
            kubeconfig,
            log,
            dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A new kube client (its own connection pool) from the written kubeconfig.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        Ok(kube::Client::try_from(cfg)?)
    }

    /// Waits until the kubeconfig is written and `/readyz` answers "ok" (the store is reachable).
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the API server exited ({status}): {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if self.kubeconfig.exists() {
                if let Ok(c) = self.client().await {
                    let req = axum::http::Request::get("/readyz")
                        .body(Vec::new())
                        .unwrap();
                    if c.request_text(req).await.is_ok_and(|t| t.trim() == "ok") {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "the API server was not ready within 30 s: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// VmRSS of a process in KiB (0 when unreadable).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status"))
        .unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// User plus system CPU time of a process in seconds; the kernel counts in ticks of 1/100 s on
/// Linux.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat"))
        .unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3; utime and stime are
    // fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// CPU ticks (1/100 s) of the whole machine from /proc/stat: busy (all but idle and iowait),
/// softirq, all.
pub fn machine_ticks() -> (u64, u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    // user nice system idle iowait irq softirq steal
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .take(8)
        .collect();
    let all: u64 = f.iter().sum();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    (all - idle, f.get(6).copied().unwrap_or(0), all)
}

/// CPU seconds the whole machine spent busy (every process, kernel included).
pub fn machine_busy_secs() -> f64 {
    machine_ticks().0 as f64 / 100.0
}

/// The value at quantile `q` of sorted microsecond samples, in milliseconds.
pub fn pct_ms(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)] as f64 / 1000.0
}

/// One line of the table: what was measured, the value, the target.
pub struct Row {
    pub what: String,
    pub value: String,
    pub target: String,
}

pub fn row(rows: &mut Vec<Row>, what: &str, value: String, target: &str) {
    eprintln!("{what}: {value}");
    rows.push(Row {
        what: what.to_string(),
        value,
        target: target.to_string(),
    });
}

/// Prints the results as a markdown table under a one-line description.
pub fn print_table(description: &str, rows: &[Row]) {
    println!();
    println!("{description}");
    println!();
    println!("| measurement | measured | target |");
    println!("|---|---|---|");
    for r in rows {
        println!("| {} | {} | {} |", r.what, r.value, r.target);
    }
}

/// A `cairn-orchestrator` subcommand as a child process, killed on drop; stderr goes to a file.
pub struct Component {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Drop for Component {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // CAIRN_BENCH_LOGS=<dir> keeps each component's log, which is otherwise lost with the
        // run's temporary directory.
        if let Some(keep) = std::env::var_os("CAIRN_BENCH_LOGS") {
            let _ = std::fs::create_dir_all(&keep);
            let _ = std::fs::copy(
                &self.log,
                Path::new(&keep).join(format!("{}.log", self.name)),
            );
        }
    }
}

impl Component {
    pub fn start(name: &'static str, args: &[&str], kubeconfig: &Path, dir: &Path) -> Component {
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(orchestrator_bin())
            .args(args)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            // CAIRN_BENCH_RUST_LOG sets the components' log filter (default: warnings only).
            .env(
                "RUST_LOG",
                std::env::var("CAIRN_BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn cairn-orchestrator {name}: {e}"));
        Component { name, child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics with the log when the process has exited.
    pub fn check(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "cairn-orchestrator {} exited ({status}): {}",
                self.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// A Cairn cluster of `members` serving, and an API server in front of it, ready, with a client.
pub async fn cluster_and_apiserver(members: usize) -> (Cluster, ApiServer, kube::Client) {
    let cluster = start_cluster(members);
    for u in &cluster.client_urls {
        wait_serving(u).await;
    }
    let mut api = ApiServer::start(&cluster.client_urls);
    api.wait_ready().await;
    let client = api.client().await.expect("kube client");
    (cluster, api, client)
}

/// The `q` quantile in seconds of sorted durations (NaN when there are none).
pub fn quantile_secs(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)].as_secs_f64()
}
