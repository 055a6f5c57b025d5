//! Shared test helpers: in-process members and clusters of real `cairn` processes on loopback.
#![allow(dead_code)]

pub mod damage;
pub mod etcd;
pub mod etcdctl;
pub mod pki;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_server::{Config, Node};
use etcd_client::{Client, ConnectOptions};

/// A single in-process member on OS-assigned ports, with its data in a temp dir.
pub struct TestNode {
    pub node: Option<Node>,
    pub dir: tempfile::TempDir,
}

impl TestNode {
    pub async fn start() -> TestNode {
        Self::start_with(|c| c).await
    }

    /// Starts a member whose configuration `adjust` changed from the ephemeral default.
    pub async fn start_with(adjust: impl FnOnce(Config) -> Config) -> TestNode {
        let dir = tempfile::tempdir().expect("temp dir");
        let node = Node::start(adjust(Config::ephemeral(dir.path())))
            .await
            .expect("start member");
        wait_leader(&node).await;
        TestNode {
            node: Some(node),
            dir,
        }
    }

    pub fn url(&self) -> String {
        self.node.as_ref().expect("running").client_url()
    }

    pub async fn stop(&mut self) {
        if let Some(node) = self.node.take() {
            node.shutdown().await.expect("shutdown");
        }
    }
}

pub async fn wait_leader(node: &Node) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.leader().is_none() {
        assert!(Instant::now() < deadline, "no leader elected within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Ports that were free a moment ago. The OS picks them; a collision with another process in the
/// instant between release and reuse is possible but rare.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}

/// One `cairn` process of a test cluster.
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
}

impl Member {
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
}

/// A cluster of real `cairn` processes on loopback; killed when dropped.
pub struct ProcessCluster {
    pub members: Vec<Member>,
    initial_cluster: String,
    extra_args: Vec<String>,
    _dir: tempfile::TempDir,
}

impl ProcessCluster {
    pub fn start(n: usize) -> ProcessCluster {
        Self::start_with(n, &[])
    }

    /// Starts `n` members, each with `extra_args` on its command line.
    pub fn start_with(n: usize, extra_args: &[&str]) -> ProcessCluster {
        let mut cluster = Self::define(n, extra_args);
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster
    }

    /// Lays out `n` members (names, ports, data dirs) without starting any.
    pub fn define(n: usize, extra_args: &[&str]) -> ProcessCluster {
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
        ProcessCluster {
            members,
            initial_cluster,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            _dir: dir,
        }
    }

    /// `name=peer URL` of the given members, as `--initial-cluster` takes them.
    pub fn initial_cluster_of(&self, members: &[usize]) -> String {
        members
            .iter()
            .map(|&i| {
                let m = &self.members[i];
                format!("{}=http://127.0.0.1:{}", m.name, m.peer_port)
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn peer_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].peer_port)
    }

    pub fn spawn(&mut self, i: usize) {
        let initial = self.initial_cluster.clone();
        self.spawn_with(i, &initial, &[]);
    }

    /// Starts member `i` with its own `--initial-cluster` and extra flags (e.g. to join an
    /// existing cluster).
    pub fn spawn_with(&mut self, i: usize, initial_cluster: &str, args: &[&str]) {
        let m = &mut self.members[i];
        assert!(m.child.is_none(), "member {i} already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .arg("--listen-client-urls")
            .arg(m.url())
            .arg("--listen-peer-urls")
            .arg(format!("http://127.0.0.1:{}", m.peer_port))
            .arg("--initial-cluster")
            .arg(initial_cluster)
            .arg("--log-level")
            .arg("info")
            .args(&self.extra_args)
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn cairn");
        m.child = Some(child);
    }

    /// SIGKILL: no shutdown path runs, only what was flushed survives.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits up to `timeout` for member `i` to exit on its own; returns whether it did.
    pub fn wait_exit(&mut self, i: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(child) = self.members[i].child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    self.members[i].child = None;
                    return true;
                }
            } else {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.url()).collect()
    }

    pub fn log_of(&self, i: usize) -> String {
        std::fs::read_to_string(&self.members[i].log).unwrap_or_default()
    }

    pub fn data_dir(&self, i: usize) -> &Path {
        &self.members[i].data_dir
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

pub fn options() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(Duration::from_secs(5))
}

/// Connects to one member only, so a failure is seen rather than retried elsewhere.
pub async fn connect(url: &str) -> Option<Client> {
    Client::connect([url], Some(options())).await.ok()
}

/// Waits until every running member answers a linearizable read.
pub async fn wait_serving(cluster: &ProcessCluster, members: &[usize]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for &i in members {
        loop {
            if let Some(mut c) = connect(&cluster.members[i].url()).await {
                if c.get("probe", None).await.is_ok() {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "member {i} did not serve within 30 s; log:\n{}",
                cluster.log_of(i)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The leader as the given members see it, once they agree.
pub async fn leader_index(cluster: &ProcessCluster, members: &[usize]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut seen = BTreeSet::new();
        let mut ids = Vec::new();
        for &i in members {
            if let Some(mut c) = connect(&cluster.members[i].url()).await {
                if let Ok(s) = c.status().await {
                    seen.insert(s.leader());
                    ids.push((i, s.header().map(|h| h.member_id()).unwrap_or(0)));
                }
            }
        }
        if seen.len() == 1 && ids.len() == members.len() {
            let leader = *seen.iter().next().unwrap();
            if let Some((i, _)) = ids.iter().find(|(_, id)| *id == leader) {
                return *i;
            }
        }
        assert!(
            Instant::now() < deadline,
            "members {members:?} did not agree on a leader: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The member id of process `i`, as it reports it.
pub async fn member_id(cluster: &ProcessCluster, i: usize) -> u64 {
    connect(&cluster.members[i].url())
        .await
        .expect("connect")
        .status()
        .await
        .expect("status")
        .header()
        .expect("response header")
        .member_id()
}

/// Puts `value` at `key` and returns the revision of the write.
pub async fn put_rev(c: &mut Client, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> i64 {
    c.put(key, value, None)
        .await
        .expect("put")
        .header()
        .expect("response header")
        .revision()
}

/// The gRPC status inside a client error (panics on any other kind of error).
pub fn status(e: etcd_client::Error) -> tonic::Status {
    match e {
        etcd_client::Error::GRpcStatus(s) => s,
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}
