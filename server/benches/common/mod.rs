//! What both cluster benchmarks share: starting 3-member clusters of `cairn` or etcd processes on
//! loopback, connecting, reading memory, choosing systems from the environment, printing the table.
#![allow(dead_code)]

pub mod load;
#[path = "../../tests/common/pki.rs"]
mod pki;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

#[derive(Clone, Copy, PartialEq)]
pub enum System {
    Cairn,
    Etcd,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Cairn => "cairn",
            System::Etcd => "etcd 3.4",
        }
    }
}

/// How clients and members talk: in the clear, over mutual TLS (client and peer ports), or over
/// mutual TLS with authentication on and a user whose role may read and write every key.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Security {
    Plain,
    Tls,
    TlsAuth,
}

impl Security {
    pub fn name(self) -> &'static str {
        match self {
            Security::Plain => "plaintext",
            Security::Tls => "TLS",
            Security::TlsAuth => "TLS + auth",
        }
    }

    fn scheme(self) -> &'static str {
        match self {
            Security::Plain => "http",
            _ => "https",
        }
    }
}

/// The user the load runs as when authentication is on.
pub const BENCH_USER: (&str, &str) = ("bench", "bench-password");

struct Pki {
    ca: std::path::PathBuf,
    member: pki::Pair,
    client: pki::Pair,
}

pub struct Cluster {
    pub children: Vec<Child>,
    pub client_urls: Vec<String>,
    pub security: Security,
    pki: Option<Pki>,
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

pub fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

pub fn start(system: System, members: usize) -> Cluster {
    start_secured(system, members, Security::Plain)
}

/// Starts a cluster whose ports are secured as `security` says (authentication is turned on
/// afterwards, by [`Cluster::enable_auth`], as an operator would).
pub fn start_secured(system: System, members: usize, security: Security) -> Cluster {
    let dir = tempfile::tempdir().expect("temp dir");
    let ports = free_ports(2 * members);
    let scheme = security.scheme();
    let initial: Vec<String> = (0..members)
        .map(|i| format!("m{i}={scheme}://127.0.0.1:{}", ports[2 * i + 1]))
        .collect();
    let pki = (security != Security::Plain).then(|| {
        let ca = pki::Ca::new(dir.path(), "bench-ca");
        Pki {
            member: ca.issue(dir.path(), "member"),
            client: ca.issue(dir.path(), "client"),
            ca: ca.cert,
        }
    });
    let mut cluster = Cluster {
        children: Vec::new(),
        client_urls: Vec::new(),
        security,
        pki,
        _dir: dir,
    };
    for i in 0..members {
        // Each member is pushed before the next one spawns, so Drop reaps whatever already started
        // if a later spawn panics.
        cluster.spawn_member(
            system,
            &format!("m{i}"),
            (ports[2 * i], ports[2 * i + 1]),
            &initial.join(","),
            "new",
        );
    }
    cluster
}

impl Cluster {
    /// Starts one member (`ports` = client, peer) with the given `--initial-cluster` and state.
    pub fn spawn_member(
        &mut self,
        system: System,
        name: &str,
        ports: (u16, u16),
        initial_cluster: &str,
        state: &str,
    ) {
        let scheme = self.security.scheme();
        let client = format!("{scheme}://127.0.0.1:{}", ports.0);
        let peer = format!("{scheme}://127.0.0.1:{}", ports.1);
        let bin = match system {
            // CAIRN_BENCH_BIN runs another build of `cairn` (an A/B comparison in one run).
            System::Cairn => std::env::var("CAIRN_BENCH_BIN")
                .unwrap_or_else(|_| env!("CARGO_BIN_EXE_cairn").to_string()),
            System::Etcd => "etcd".to_string(),
        };
        let mut cmd = Command::new(bin);
        cmd.arg("--name")
            .arg(name)
            .arg("--data-dir")
            .arg(self._dir.path().join(name))
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(initial_cluster)
            .arg("--initial-cluster-state")
            .arg(state)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if system == System::Cairn {
            cmd.arg("--log-level").arg("warn");
        }
        if let Some(pki) = &self.pki {
            let (cert, key) = (&pki.member.cert, &pki.member.key);
            cmd.arg("--cert-file").arg(cert).arg("--key-file").arg(key);
            cmd.arg("--trusted-ca-file").arg(&pki.ca);
            cmd.arg("--client-cert-auth");
            cmd.arg("--peer-cert-file").arg(cert);
            cmd.arg("--peer-key-file").arg(key);
            cmd.arg("--peer-trusted-ca-file").arg(&pki.ca);
            cmd.arg("--peer-client-cert-auth");
        }
        self.children.push(cmd.spawn().expect("spawn member"));
        self.client_urls.push(client);
    }
}

impl Cluster {
    /// How a client of this cluster connects: with its certificate over TLS, and as the bench
    /// user once authentication is on.
    pub fn options(&self) -> ConnectOptions {
        self.connect_options(self.security == Security::TlsAuth)
    }

    fn connect_options(&self, as_user: bool) -> ConnectOptions {
        let mut opts = options();
        if let Some(pki) = &self.pki {
            let pem = |p: &Path| std::fs::read(p).expect("read PEM");
            opts = opts.with_tls(
                TlsOptions::new()
                    .ca_certificate(Certificate::from_pem(pem(&pki.ca)))
                    .identity(Identity::from_pem(
                        pem(&pki.client.cert),
                        pem(&pki.client.key),
                    )),
            );
        }
        if as_user {
            opts = opts.with_user(BENCH_USER.0, BENCH_USER.1);
        }
        opts
    }

    /// Turns authentication on as an operator would: a root user, and a user whose role may
    /// read and write every key, which the load then runs as.
    pub async fn enable_auth(&self) {
        use etcd_client::{Permission, PermissionType};
        let mut c = connect_with(&self.client_urls[0], self.connect_options(false)).await;
        c.role_add("root").await.expect("role root");
        c.user_add("root", "root-password", None)
            .await
            .expect("user root");
        c.user_grant_role("root", "root").await.expect("grant root");
        c.role_add("readwrite").await.expect("role readwrite");
        let every_key = Permission::new(PermissionType::Readwrite, vec![0u8]).with_from_key();
        c.role_grant_permission("readwrite", every_key)
            .await
            .expect("grant permission");
        c.user_add(BENCH_USER.0, BENCH_USER.1, None)
            .await
            .expect("bench user");
        c.user_grant_role(BENCH_USER.0, "readwrite")
            .await
            .expect("grant readwrite");
        c.auth_enable().await.expect("auth enable");
    }
}

fn options() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(10))
}

pub async fn connect(url: &str) -> Client {
    connect_with(url, options()).await
}

/// Connects and waits until the member answers a read.
pub async fn connect_with(url: &str, opts: ConnectOptions) -> Client {
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

/// The sum and count of an unlabelled histogram on a plaintext member's `/metrics`, (0, 0) if
/// it cannot be read.
pub async fn histogram_totals(url: &str, name: &str) -> (f64, f64) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let read = async {
        let mut s = tokio::net::TcpStream::connect(url.trim_start_matches("http://")).await?;
        // HTTP/1.0: the answer ends with the connection, never chunked.
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await?;
        let mut text = String::new();
        s.read_to_string(&mut text).await?;
        Ok::<_, std::io::Error>(text)
    };
    let Ok(Ok(text)) = tokio::time::timeout(Duration::from_secs(5), read).await else {
        return (0.0, 0.0);
    };
    let value = |suffix: &str| {
        let metric = format!("{name}_{suffix} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&metric))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    (value("sum"), value("count"))
}

pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// The most a process has had resident since it started, in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status"))
        .unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// User plus system CPU time of a process (all its threads) in seconds; the kernel counts in
/// ticks of 1/100 s on Linux.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat"))
        .unwrap_or_default();
    // The command name may hold spaces; the fields after its closing parenthesis do not.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are the 14th and 15th fields, the 12th and 13th after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    ticks as f64 / 100.0
}

/// CPU time the hypervisor gave to others while this machine's CPUs had work (`steal` in
/// `/proc/stat`), in seconds summed over the CPUs. On a shared VM a row's latency tail follows it.
fn stolen_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    // "cpu  user nice system idle iowait irq softirq steal ...", in ticks of 1/100 s.
    stat.lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(8))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0) as f64
        / 100.0
}

/// The share of the machine's CPU time taken by the host since `start`.
#[derive(Clone, Copy)]
pub struct Stolen {
    since: Instant,
    secs: f64,
}

impl Stolen {
    pub fn start() -> Stolen {
        Stolen {
            since: Instant::now(),
            secs: stolen_secs(),
        }
    }

    pub fn percent(self) -> f64 {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let wall = self.since.elapsed().as_secs_f64() * cpus;
        if wall <= 0.0 {
            return 0.0;
        }
        (stolen_secs() - self.secs) * 100.0 / wall
    }
}

/// Context switches (voluntary and involuntary) of every live thread of a process: each is a
/// thread going to sleep or being preempted, the cost of a hand-off between tasks or threads.
pub fn context_switches(pid: u32) -> u64 {
    let tasks = Path::new("/proc").join(pid.to_string()).join("task");
    let Ok(dir) = std::fs::read_dir(tasks) else {
        return 0;
    };
    let mut total = 0;
    for task in dir.flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        total += status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter_map(|v| v.parse::<u64>().ok())
            .sum::<u64>();
    }
    total
}

/// CPU seconds and context switches of a set of processes, read at the start and end of a row.
#[derive(Clone, Copy, Default)]
pub struct Usage {
    pub cpu_secs: f64,
    pub switches: u64,
}

impl Usage {
    pub fn of(pids: &[u32]) -> Usage {
        Usage {
            cpu_secs: pids.iter().map(|&p| cpu_secs(p)).sum(),
            switches: pids.iter().map(|&p| context_switches(p)).sum(),
        }
    }

    pub fn since(self, before: Usage) -> Usage {
        Usage {
            cpu_secs: self.cpu_secs - before.cpu_secs,
            switches: self.switches.saturating_sub(before.switches),
        }
    }
}

pub struct Row {
    pub workload: String,
    pub results: Vec<(System, String)>,
}

pub fn record(rows: &mut Vec<Row>, workload: &str, system: System, cell: String) {
    match rows.iter_mut().find(|r| r.workload == workload) {
        Some(r) => r.results.push((system, cell)),
        None => rows.push(Row {
            workload: workload.to_string(),
            results: vec![(system, cell)],
        }),
    }
}

/// `--bench` is among the arguments: `cargo test --all-targets` runs bench targets without it, and
/// then there is nothing to measure.
pub fn benchmarking(name: &str) -> bool {
    let yes = std::env::args().any(|a| a == "--bench");
    if !yes {
        println!("{name} bench: run with `cargo bench -p cairn-server --bench {name}`");
    }
    yes
}

/// `CAIRN_BENCH_SECS` (default 10).
pub fn secs() -> u64 {
    std::env::var("CAIRN_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
}

/// The systems `CAIRN_BENCH_SYSTEMS` names (default both); etcd only where it is installed.
pub fn systems() -> Vec<System> {
    let only = std::env::var("CAIRN_BENCH_SYSTEMS").unwrap_or_else(|_| "cairn,etcd".into());
    let mut systems = Vec::new();
    if only.contains("cairn") {
        systems.push(System::Cairn);
    }
    if only.contains("etcd") {
        if Command::new("etcd")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            systems.push(System::Etcd);
        } else {
            eprintln!("etcd not installed (apt-get install etcd-server): measuring Cairn only");
        }
    }
    systems
}

/// Runs `bench` for every selected system in one runtime, then prints the table under
/// `describe(secs)`. Does nothing unless invoked by `cargo bench`.
pub fn run<F, Fut>(name: &str, describe: impl FnOnce(u64) -> String, bench: F)
where
    F: Fn(System, u64, Vec<Row>) -> Fut,
    Fut: std::future::Future<Output = Vec<Row>>,
{
    if !benchmarking(name) {
        return;
    }
    let secs = secs();
    let systems = systems();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for s in &systems {
        rows = rt.block_on(bench(*s, secs, rows));
    }
    print_table(&describe(secs), &systems, rows);
}

/// Prints the results as a markdown table under a one-line description.
pub fn print_table(description: &str, systems: &[System], rows: Vec<Row>) {
    println!();
    println!("{description}");
    println!();
    print!("| workload |");
    for s in systems {
        print!(" {} |", s.name());
    }
    println!();
    print!("|---|");
    for _ in systems {
        print!("---|");
    }
    println!();
    for r in rows {
        print!("| {} |", r.workload);
        for s in systems {
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
