//! A cluster of real `cairn` processes on loopback: each member has its own data dir and log
//! file, its peer traffic goes through the harness's proxies ([`crate::net`]), and members are
//! killed, restarted, paused and resumed by pid.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_client::ConnectOptions;

use crate::net::{Net, Pids};
use crate::security::{Secrets, Security, SecurityError};
use crate::workload::client::Conn;

/// Errors of the harness itself; never a test outcome.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cairn binary not found at {0}")]
    NoBinary(PathBuf),
    #[error("cluster i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The members, the wait, and the tails of their logs (why they did not serve).
    #[error("members {0:?} did not serve within {1:?}{2}")]
    NotServing(Vec<usize>, Duration, String),
    #[error("signal {0} to pid {1} failed")]
    Signal(&'static str, u32),
    #[error(transparent)]
    Security(#[from] SecurityError),
}

/// How to start a cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub nodes: usize,
    pub cairn_bin: PathBuf,
    /// Logs (and data dirs, unless `data_root` says otherwise) go here.
    pub dir: PathBuf,
    /// Where data dirs live; a FUSE mount for power-loss runs.
    pub data_root: Option<PathBuf>,
    pub extra_args: Vec<String>,
    pub security: Security,
}

/// One member process.
#[derive(Debug)]
pub struct Member {
    pub name: String,
    pub client_port: u16,
    /// The member's own peer listener; peers reach it through `proxy_port`.
    pub peer_port: u16,
    pub proxy_port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    paused: bool,
    /// `new` for founders; `existing` after a member was removed and re-added.
    pub state: &'static str,
    /// `http` or `https`.
    scheme: &'static str,
}

impl Member {
    /// The client URL.
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.client_port)
    }

    /// The advertised peer URL (the proxy in front of the member).
    pub fn peer_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.proxy_port)
    }
}

/// A running cluster; every process is killed when it is dropped.
pub struct Cluster {
    pub members: Vec<Member>,
    pub net: Net,
    pids: Pids,
    cfg: ClusterConfig,
    secrets: Secrets,
    options: ConnectOptions,
}

/// Ports for the members, held until the proxies are bound so the OS cannot hand one of them
/// to a proxy; released just before the members start.
///
/// Drawn from below the kernel's ephemeral range (`ip_local_port_range`, 32768 and up by default):
/// a member keeps its port across kills and power cuts and binds it again on restart, and a port
/// from the ephemeral range could meanwhile become the source port of any outgoing connection on
/// the machine, leaving the restarted member unable to bind.
fn reserve_ports(n: usize) -> std::io::Result<(Vec<u16>, Vec<std::net::TcpListener>)> {
    const LOW: u16 = 10_000;
    const HIGH: u16 = 32_000;
    let mut held = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    for _ in 0..10_000 {
        if held.len() == n {
            break;
        }
        let port = fastrand::u16(LOW..HIGH);
        if ports.contains(&port) {
            continue;
        }
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            ports.push(port);
            held.push(l);
        }
    }
    if held.len() < n {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("no {n} free ports between {LOW} and {HIGH}"),
        ));
    }
    Ok((ports, held))
}

impl Cluster {
    /// Starts the proxies and every member; does not wait for them to serve.
    pub async fn start(cfg: ClusterConfig) -> Result<Cluster, ClusterError> {
        if !cfg.cairn_bin.is_file() {
            return Err(ClusterError::NoBinary(cfg.cairn_bin.clone()));
        }
        std::fs::create_dir_all(&cfg.dir)?;
        let n = cfg.nodes;
        let (ports, held) = reserve_ports(2 * n)?;
        let pids: Pids = Arc::new(Mutex::new(vec![None; n]));
        let net = Net::start((0..n).map(|i| ports[2 * i + 1]).collect(), pids.clone()).await?;
        drop(held);
        let data_root = cfg.data_root.clone().unwrap_or_else(|| cfg.dir.clone());
        let secrets = Secrets::create(&cfg.dir, cfg.security)?;
        let members = (0..n)
            .map(|i| Member {
                name: format!("n{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                proxy_port: net.proxy_ports[i],
                data_dir: data_root.join(format!("n{i}.data")),
                log: cfg.dir.join(format!("n{i}.log")),
                child: None,
                paused: false,
                state: "new",
                scheme: secrets.scheme(),
            })
            .collect();
        let mut c = Cluster {
            members,
            net,
            pids,
            cfg,
            options: secrets.options(),
            secrets,
        };
        for i in 0..n {
            c.spawn(i)?;
        }
        Ok(c)
    }

    fn initial_cluster(&self, only: Option<&[usize]>) -> String {
        self.members
            .iter()
            .enumerate()
            .filter(|(i, _)| only.is_none_or(|o| o.contains(i)))
            .map(|(_, m)| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts member `i` (again), keeping its data dir.
    pub fn spawn(&mut self, i: usize) -> Result<(), ClusterError> {
        self.spawn_with(i, None)
    }

    /// Starts member `i` as a member joining the members `view` (after a re-add).
    pub fn spawn_joining(&mut self, i: usize, view: &[usize]) -> Result<(), ClusterError> {
        self.members[i].state = "existing";
        self.spawn_with(i, Some(view))
    }

    fn spawn_with(&mut self, i: usize, view: Option<&[usize]>) -> Result<(), ClusterError> {
        if self.members[i].child.is_some() {
            return Ok(());
        }
        let initial = self.initial_cluster(view);
        let m = &mut self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)?;
        let child = Command::new(&self.cfg.cairn_bin)
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .arg("--listen-client-urls")
            .arg(m.url())
            .arg("--listen-peer-urls")
            .arg(format!("{}://127.0.0.1:{}", m.scheme, m.peer_port))
            .arg("--initial-advertise-peer-urls")
            .arg(m.peer_url())
            .arg("--initial-cluster")
            .arg(initial)
            .arg("--initial-cluster-state")
            .arg(m.state)
            .args(self.secrets.member_args())
            .args(&self.cfg.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.pids.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(child.id());
        tracing::info!(member = i, pid = child.id(), "member started");
        m.child = Some(child);
        m.paused = false;
        Ok(())
    }

    /// SIGKILL: nothing but what reached the disk survives.
    pub fn kill(&mut self, i: usize) {
        let m = &mut self.members[i];
        if let Some(mut child) = m.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            tracing::info!(member = i, "member killed");
        }
        m.paused = false;
        self.pids.lock().unwrap_or_else(|p| p.into_inner())[i] = None;
    }

    /// Whether member `i` has a process.
    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    /// The pid of member `i`.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    fn signal(&self, i: usize, sig: &'static str) -> Result<bool, ClusterError> {
        let Some(pid) = self.pid(i) else {
            return Ok(false);
        };
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()?
            .success();
        if ok {
            Ok(true)
        } else {
            Err(ClusterError::Signal(sig, pid))
        }
    }

    /// SIGSTOP; false when the member is not running.
    pub fn pause(&mut self, i: usize) -> Result<bool, ClusterError> {
        let done = self.signal(i, "STOP")?;
        self.members[i].paused |= done;
        Ok(done)
    }

    /// SIGCONT.
    pub fn resume(&mut self, i: usize) -> Result<bool, ClusterError> {
        let done = self.signal(i, "CONT")?;
        self.members[i].paused = false;
        Ok(done)
    }

    /// Resumes paused members and restarts dead ones.
    pub fn revive_all(&mut self) -> Result<(), ClusterError> {
        for i in 0..self.members.len() {
            if self.members[i].paused {
                self.resume(i)?;
            }
            if !self.is_running(i) && self.members[i].state == "new" {
                self.spawn(i)?;
            }
        }
        Ok(())
    }

    /// Client URLs of all members.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::url).collect()
    }

    /// Turns authentication on (with `--security auth`); from then on every connection,
    /// the harness's own included, authenticates as the workloads' user.
    pub async fn enable_auth(&mut self) -> Result<(), ClusterError> {
        if self.cfg.security == Security::Auth {
            let endpoint = self.members[0].url();
            self.options = crate::security::enable_auth(&endpoint, &self.options).await?;
            tracing::info!("authentication enabled");
        }
        Ok(())
    }

    /// How clients connect to the members (TLS and the user, when the cluster is secured).
    pub fn options(&self) -> &ConnectOptions {
        &self.options
    }

    /// The harness's working dir.
    pub fn dir(&self) -> &Path {
        &self.cfg.dir
    }

    /// The last `lines` lines of each member's log, for an error's message.
    fn log_tails(&self, members: &[usize], lines: usize) -> String {
        let mut out = String::new();
        for &i in members {
            let m = &self.members[i];
            let log = std::fs::read_to_string(&m.log).unwrap_or_default();
            let all: Vec<&str> = log.lines().collect();
            out.push_str(&format!("\n--- {} log, last {lines} lines:\n", m.name));
            out.push_str(&all[all.len().saturating_sub(lines)..].join("\n"));
        }
        out
    }

    /// Waits until each of `members` answers a linearizable read.
    pub async fn wait_serving(
        &self,
        members: &[usize],
        limit: Duration,
    ) -> Result<(), ClusterError> {
        let deadline = Instant::now() + limit;
        for &i in members {
            let conn = Conn::connect(
                &self.members[i].url(),
                &self.options,
                Duration::from_secs(2),
            );
            loop {
                if conn.get("jepsen-probe", false).await.is_ok() {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(ClusterError::NotServing(
                        members.to_vec(),
                        limit,
                        self.log_tails(members, 20),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// The member that `members` agree is leader, if they do.
    pub async fn leader(&self, members: &[usize]) -> Option<usize> {
        let mut leaders = Vec::new();
        let mut ids = Vec::new();
        for &i in members {
            let conn = Conn::connect(
                &self.members[i].url(),
                &self.options,
                Duration::from_secs(1),
            );
            let (leader, id) = conn.status().await.ok()?;
            leaders.push(leader);
            ids.push((i, id));
        }
        let first = *leaders.first()?;
        if leaders.iter().any(|l| *l != first) {
            return None;
        }
        ids.iter().find(|(_, id)| *id == first).map(|(i, _)| *i)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].paused {
                let _ = self.resume(i);
            }
            self.kill(i);
        }
    }
}
