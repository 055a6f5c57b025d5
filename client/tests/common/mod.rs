//! Test helpers: clusters of real `cairn` processes and a single real `etcd` process on free loopback ports
//! with temp data dirs, killed by pid when dropped.
#![allow(dead_code)]

// The server's tests make their certificates the same way.
#[path = "../../../server/tests/common/pki.rs"]
pub mod pki;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cairn_client::{Client, ConnectOptions};
use tokio::time::Instant;

/// The `cairn` binary built next to this test executable (target/<profile>/cairn).
pub fn cairn_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/cairn
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps")
        .join("cairn");
    assert!(
        bin.exists(),
        "the `cairn` binary is missing at {}; build it with `cargo build -p cairn-server --bin cairn` \
         (or run the whole workspace's tests, which builds it)",
        bin.display()
    );
    bin
}

/// Looks up a program on PATH.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Ports that were free a moment ago (the OS picks them).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}

/// Client options for tests: short dial timeout, deadline long enough to ride out an election.
pub fn options() -> ConnectOptions {
    ConnectOptions::new()
        .with_dial_timeout(Duration::from_millis(500))
        .with_request_timeout(Duration::from_secs(10))
        .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2))
}

/// One member process.
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
}

impl Member {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
}

/// Which server program a [`Cluster`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Cairn,
    Etcd,
}

/// A cluster of `cairn` or `etcd` processes on loopback; every process is killed when dropped.
pub struct Cluster {
    pub kind: Kind,
    pub members: Vec<Member>,
    program: PathBuf,
    initial_cluster: String,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` cairn members and waits until each serves a linearizable read.
    pub async fn cairn(n: usize) -> Cluster {
        let c = Cluster::spawn_all(Kind::Cairn, cairn_bin(), n);
        c.wait_serving().await;
        c
    }

    /// Starts a single etcd member, or returns None (after printing why) when etcd is not installed.
    pub async fn etcd() -> Option<Cluster> {
        let Some(program) = find_program("etcd") else {
            eprintln!("skipping: `etcd` is not installed (Debian package etcd-server)");
            return None;
        };
        let c = Cluster::spawn_all(Kind::Etcd, program, 1);
        c.wait_serving().await;
        Some(c)
    }

    /// Each backend the suites run against: cairn always, etcd when installed.
    pub async fn each_single() -> Vec<Cluster> {
        let mut out = vec![Cluster::cairn(1).await];
        if let Some(e) = Cluster::etcd().await {
            out.push(e);
        }
        out
    }

    fn spawn_all(kind: Kind, program: PathBuf, n: usize) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports = free_ports(2 * n);
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                data_dir: dir.path().join(format!("m{i}.data")),
                log: dir.path().join(format!("m{i}.log")),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = Cluster {
            kind,
            members,
            program,
            initial_cluster,
            dir,
        };
        for i in 0..n {
            c.start_member(i);
        }
        c
    }

    /// (Re)starts member `i` with its data dir.
    pub fn start_member(&mut self, i: usize) {
        let m = &mut self.members[i];
        assert!(m.child.is_none(), "member {i} already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .expect("log file");
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let mut cmd = Command::new(&self.program);
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .arg("--listen-client-urls")
            .arg(m.url())
            .arg("--advertise-client-urls")
            .arg(m.url())
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(&self.initial_cluster);
        if self.kind == Kind::Etcd {
            cmd.arg("--logger")
                .arg("zap")
                .arg("--log-outputs")
                .arg("stderr");
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn server process");
        m.child = Some(child);
    }

    /// SIGKILL, by pid.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::url).collect()
    }

    pub fn log_of(&self, i: usize) -> String {
        std::fs::read_to_string(&self.members[i].log).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A client over every member.
    pub async fn client(&self) -> Client {
        Client::connect(self.endpoints(), Some(options()))
            .await
            .expect("connect")
    }

    /// A client bound to member `i` alone.
    pub async fn member_client(&self, i: usize) -> Option<Client> {
        let opts = ConnectOptions::new()
            .with_dial_timeout(Duration::from_millis(300))
            .with_request_timeout(Duration::from_secs(1));
        Client::connect([self.members[i].url()], Some(opts))
            .await
            .ok()
    }

    /// Waits until every running member answers a linearizable read.
    pub async fn wait_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for (i, m) in self.members.iter().enumerate() {
            if m.child.is_none() {
                continue;
            }
            loop {
                if let Some(c) = self.member_client(i).await {
                    if c.get("probe", None).await.is_ok() {
                        break;
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "member {i} did not serve within 30 s; log:\n{}",
                    self.log_of(i)
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// The index of the leader, once the running members agree on one.
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut seen = BTreeSet::new();
            let mut ids = Vec::new();
            let running: Vec<usize> = (0..self.members.len())
                .filter(|&i| self.members[i].child.is_some())
                .collect();
            for &i in &running {
                if let Some(c) = self.member_client(i).await {
                    if let Ok(s) = c.status().await {
                        seen.insert(s.leader);
                        ids.push((i, s.header.map(|h| h.member_id).unwrap_or(0)));
                    }
                }
            }
            if seen.len() == 1 && ids.len() == running.len() {
                let leader = *seen.iter().next().expect("one leader");
                if let Some((i, _)) = ids.iter().find(|(_, id)| *id == leader) {
                    return *i;
                }
            }
            assert!(
                Instant::now() < deadline,
                "members did not agree on a leader: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// A name unique within this test process, so suites can share a server without colliding.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}/",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

impl Cluster {
    /// Sends `signal` (e.g. "STOP", "CONT") to member `i`'s process, by pid.
    pub fn signal(&self, i: usize, signal: &str) {
        let pid = self.members[i].child.as_ref().expect("member running").id();
        // The shell's builtin kill: present wherever `sh` is, unlike a separate kill binary.
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -{signal} {pid}"))
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }
}
