//! Bundled namespace runtime: runs pods as Linux processes isolated by
//! namespaces and limited by cgroups.
//!
//! This module depends on nothing else in the crate. The async [`Runtime`]
//! keeps all state on disk under its state directory, so a new instance
//! (after an agent restart) sees and manages the pods a previous one started.
//! Namespace work happens in the helper binary's hidden subcommands (see
//! [`helper_main`]), never on an async thread.

// Raw syscalls (capabilities, namespaces, fork and exec) are confined to these two modules.
#[allow(unsafe_code)]
pub mod caps;
pub mod cgroup;
#[allow(unsafe_code)]
mod init;
pub mod network;
pub mod spec;

pub use cgroup::{CgroupDriver, CgroupError, CgroupVersion, Resources};
pub use init::helper_main;
pub use network::{NetworkConfig, NetworkError, PodNetwork};
pub use spec::{ConfigMaps, Pod, SpecError};

use init::{BindMount, ExitRecord, InitConfig};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("missing privilege: {0}")]
    Privilege(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidState(String),
    #[error("config map: {0}")]
    ConfigMap(String),
    #[error("starting {what} failed: {message}")]
    Start { what: String, message: String },
}

type Result<T, E = RuntimeError> = std::result::Result<T, E>;

fn ioc(context: impl Into<String>) -> impl FnOnce(io::Error) -> RuntimeError {
    let context = context.into();
    move |source| RuntimeError::Io { context, source }
}

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Pods' state, logs and volumes live below this directory.
    pub state_dir: PathBuf,
    /// Executable whose `main` calls [`helper_main`] first (normally the
    /// agent's own binary).
    pub helper: PathBuf,
    pub cgroup_root: PathBuf,
    /// cgroup directory (relative) that holds all pods' cgroups.
    pub cgroup_parent: String,
    /// `None`: pods get only a loopback interface.
    pub network: Option<NetworkConfig>,
    /// Per-container log cap; one rotated file of the same size is kept.
    pub log_max_bytes: u64,
    /// Applied to every container that sets no `pids` limit.
    pub default_pids_limit: Option<u64>,
}

impl RuntimeConfig {
    pub fn new(state_dir: impl Into<PathBuf>, helper: impl Into<PathBuf>) -> Self {
        RuntimeConfig {
            state_dir: state_dir.into(),
            helper: helper.into(),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            cgroup_parent: "cairn".into(),
            network: None,
            log_max_bytes: 10 << 20,
            default_pids_limit: Some(4096),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    /// Sandbox exists, container not started.
    Created,
    /// Also while the process has exited but its monitor has not yet
    /// recorded how, so that `Exited` always carries the real status.
    Running,
    Exited {
        exit_code: i32,
        reason: ExitReason,
    },
    /// The process is gone without an exit record (e.g. the node rebooted).
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitReason {
    Completed,
    Error,
    OOMKilled,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    pub name: String,
    pub state: ContainerState,
    /// Host PID of the container's PID 1.
    pub pid: Option<i32>,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodStatus {
    pub name: String,
    pub ip: Option<Ipv4Addr>,
    pub sandbox_running: bool,
    pub holder_pid: i32,
    pub created_at_ms: u64,
    pub containers: Vec<ContainerStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PodRecord {
    pod: Pod,
    config_maps: ConfigMaps,
    holder_pid: i32,
    holder_start: u64,
    network: Option<PodNetwork>,
    network_config: Option<NetworkConfig>,
    cgroup: PathBuf,
    /// Absolute directories of the pod cgroup as created. On v1 they depend
    /// on the creating process's own cgroup, so removal must not recompute
    /// them.
    #[serde(default)]
    cgroup_dirs: Vec<PathBuf>,
    created_at_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ContainerRecord {
    pid: i32,
    pid_start: u64,
    started_at_ms: u64,
    /// The monitor outlives the container process by the time it takes to
    /// reap it, drain its log and write the exit record; while it runs, a
    /// dead container process means "exit not recorded yet", not "lost".
    #[serde(default)]
    monitor_pid: i32,
    #[serde(default)]
    monitor_start: u64,
}

impl ContainerRecord {
    /// While either process lives, the exit is still to come or still being
    /// recorded; only when both are gone without a record is it lost.
    fn running(&self) -> bool {
        alive(self.pid, self.pid_start) || alive(self.monitor_pid, self.monitor_start)
    }
}

/// Start time of a live, non-zombie process (guards against PID reuse).
fn proc_start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    if matches!(fields.first(), Some(&"Z") | Some(&"X")) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

fn alive(pid: i32, start: u64) -> bool {
    pid > 0 && proc_start_time(pid) == Some(start)
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let data = serde_json::to_vec_pretty(v)
        .map_err(|e| ioc(path.display().to_string())(io::Error::other(e)))?;
    fs::write(&tmp, data).map_err(ioc(format!("write {}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(ioc(format!("rename {}", path.display())))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| ioc(format!("parse {}", path.display()))(io::Error::other(e))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ioc(format!("read {}", path.display()))(e)),
    }
}

fn kill(pid: i32, sig: nix::sys::signal::Signal) {
    if pid > 0 {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

/// Sums a per-container quantity for the pod cgroup; `None` if any container
/// is unlimited (then the pod as a whole is too).
fn sum_all(values: impl Iterator<Item = Option<u64>>) -> Option<u64> {
    values.sum::<Option<u64>>()
}

fn container_resources(c: &spec::Container, default_pids: Option<u64>) -> Resources {
    let lim = &c.resources.limits;
    let req = &c.resources.requests;
    Resources {
        memory_limit: lim.get("memory").and_then(|q| q.to_units()),
        cpu_limit_millis: lim.get("cpu").and_then(|q| q.to_milli()),
        // Kubernetes defaults the request to the limit when only the limit is set.
        cpu_request_millis: req
            .get("cpu")
            .or_else(|| lim.get("cpu"))
            .and_then(|q| q.to_milli()),
        pids_limit: lim.get("pids").and_then(|q| q.to_units()).or(default_pids),
    }
}

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug)]
pub struct Runtime {
    cfg: RuntimeConfig,
    cgroups: Arc<dyn CgroupDriver>,
}

impl Runtime {
    /// Detects the cgroup hierarchy under `cfg.cgroup_root`.
    pub fn new(cfg: RuntimeConfig) -> Result<Self> {
        let cgroups = cgroup::open(&cfg.cgroup_root)?;
        Ok(Runtime { cfg, cgroups })
    }

    /// Uses a given cgroup driver (e.g. one over a fake hierarchy).
    pub fn with_cgroups(cfg: RuntimeConfig, cgroups: Arc<dyn CgroupDriver>) -> Self {
        Runtime { cfg, cgroups }
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.cfg
    }

    pub fn cgroups(&self) -> &dyn CgroupDriver {
        self.cgroups.as_ref()
    }

    fn pod_dir(&self, pod: &str) -> PathBuf {
        self.cfg.state_dir.join("pods").join(pod)
    }

    fn container_dir(&self, pod: &str, c: &str) -> PathBuf {
        self.pod_dir(pod).join("containers").join(c)
    }

    /// Relative cgroup path of a pod.
    pub fn pod_cgroup(&self, pod: &str) -> PathBuf {
        Path::new(&self.cfg.cgroup_parent).join(format!("pod-{pod}"))
    }

    pub fn container_cgroup(&self, pod: &str, c: &str) -> PathBuf {
        self.pod_cgroup(pod).join(c)
    }

    fn load(&self, pod: &str) -> Result<PodRecord> {
        read_json(&self.pod_dir(pod).join("pod.json"))?
            .ok_or_else(|| RuntimeError::NotFound(format!("pod {pod}")))
    }

    fn ipam(&self, net: &NetworkConfig) -> Result<network::Ipam> {
        Ok(network::Ipam::new(&self.cfg.state_dir.join("ipam"), net)?)
    }

    /// Creates the pod sandbox: holder process with the pod's UTS, IPC and
    /// network namespaces, pod cgroup, network, volumes and `/etc` files.
    pub async fn create_sandbox(&self, pod: &Pod, config_maps: &ConfigMaps) -> Result<PodStatus> {
        pod.validate()?;
        if !nix::unistd::geteuid().is_root() {
            return Err(RuntimeError::Privilege(
                "the runtime must run as root (namespaces, cgroups, mounts)".into(),
            ));
        }
        let name = pod.name().to_string();
        let dir = self.pod_dir(&name);
        if dir.exists() {
            return Err(RuntimeError::AlreadyExists(format!("pod {name}")));
        }
        init::private_dir(&dir).map_err(ioc(format!("create {}", dir.display())))?;
        match self.create_sandbox_inner(pod, config_maps, &dir).await {
            Ok(s) => Ok(s),
            Err(e) => {
                tracing::warn!(pod = %name, error = %e, "sandbox creation failed, cleaning up");
                if let Err(ce) = self.remove_pod(&name).await {
                    tracing::warn!(pod = %name, error = %ce, "cleanup after failed creation");
                }
                Err(e)
            }
        }
    }

    async fn create_sandbox_inner(
        &self,
        pod: &Pod,
        config_maps: &ConfigMaps,
        dir: &Path,
    ) -> Result<PodStatus> {
        let name = pod.name();
        let created_at_ms = init::now_ms();
        let cg = self.pod_cgroup(name);
        // The record is written first so that a failure part-way leaves
        // enough on disk for remove_pod to clean up.
        let mut rec = PodRecord {
            pod: pod.clone(),
            config_maps: config_maps.clone(),
            holder_pid: 0,
            holder_start: 0,
            network: None,
            network_config: self.cfg.network.clone(),
            cgroup: cg.clone(),
            cgroup_dirs: self.cgroups.dirs(&cg),
            created_at_ms,
        };
        write_json(&dir.join("pod.json"), &rec)?;

        self.prepare_volumes(pod, config_maps, dir)?;
        let etc = dir.join("etc");
        fs::create_dir_all(&etc).map_err(ioc("create etc"))?;
        fs::write(etc.join("hostname"), format!("{name}\n")).map_err(ioc("write hostname"))?;

        let default_pids = self.cfg.default_pids_limit;
        let per: Vec<Resources> = pod
            .spec
            .containers
            .iter()
            .map(|c| container_resources(c, default_pids))
            .collect();
        let pod_res = Resources {
            memory_limit: sum_all(per.iter().map(|r| r.memory_limit)),
            cpu_limit_millis: sum_all(per.iter().map(|r| r.cpu_limit_millis)),
            cpu_request_millis: sum_all(per.iter().map(|r| r.cpu_request_millis)),
            pids_limit: sum_all(per.iter().map(|r| r.pids_limit)),
        };
        self.cgroups.create(&cg, &pod_res)?;

        let mut child = tokio::process::Command::new(&self.cfg.helper)
            .arg(init::HOLDER)
            .arg(name)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(ioc(format!("spawn helper {}", self.cfg.helper.display())))?;
        let pid = child.id().unwrap_or(0) as i32;
        let mut line = String::new();
        let mut out = tokio::io::BufReader::new(child.stdout.take().expect("piped"));
        let _ = tokio::time::timeout(Duration::from_secs(10), out.read_line(&mut line)).await;
        if line.trim() != "ready" {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), e.read_to_string(&mut err)).await;
            }
            let _ = child.kill().await;
            return Err(RuntimeError::Start {
                what: format!("sandbox of pod {name}"),
                message: err.trim().to_string(),
            });
        }
        drop(child.stderr.take());
        drop(out);
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        rec.holder_pid = pid;
        rec.holder_start = proc_start_time(pid).unwrap_or(0);
        write_json(&dir.join("pod.json"), &rec)?;
        self.cgroups.add_pid(&cg, pid)?;

        match &self.cfg.network {
            Some(net) => {
                let ipam = self.ipam(net)?;
                rec.network =
                    Some(network::attach_pod(net, &ipam, name, pid, &self.cfg.helper).await?);
            }
            None => network::loopback_only(pid, &self.cfg.helper).await?,
        }
        let mut hosts =
            String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
        match &rec.network {
            Some(n) => hosts.push_str(&format!("{}\t{name}\n", n.ip)),
            None => hosts.push_str(&format!("127.0.1.1\t{name}\n")),
        }
        fs::write(etc.join("hosts"), hosts).map_err(ioc("write hosts"))?;
        write_json(&dir.join("pod.json"), &rec)?;
        tracing::info!(pod = %name, holder = pid, ip = ?rec.network.as_ref().map(|n| n.ip), "sandbox created");
        self.pod_status(&rec)
    }

    fn prepare_volumes(&self, pod: &Pod, config_maps: &ConfigMaps, dir: &Path) -> Result<()> {
        for v in &pod.spec.volumes {
            if v.empty_dir.is_some() {
                let d = dir.join("volumes").join(&v.name);
                fs::create_dir_all(&d).map_err(ioc(format!("create emptyDir {}", v.name)))?;
                // World-writable like Kubernetes' emptyDir so non-root
                // containers can share it.
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(&d, fs::Permissions::from_mode(0o777))
                    .map_err(ioc("chmod emptyDir"))?;
            } else if let Some(cm) = &v.config_map {
                let d = dir.join("configmaps").join(&v.name);
                fs::create_dir_all(&d).map_err(ioc(format!("create configMap dir {}", v.name)))?;
                let data = match config_maps.get(&cm.name) {
                    Some(d) => d.clone(),
                    None if cm.optional => Default::default(),
                    None => {
                        return Err(RuntimeError::ConfigMap(format!(
                            "volume {:?} refers to config map {:?}, which was not provided",
                            v.name, cm.name
                        )))
                    }
                };
                let items: Vec<(String, String)> = if cm.items.is_empty() {
                    data.keys().map(|k| (k.clone(), k.clone())).collect()
                } else {
                    cm.items
                        .iter()
                        .map(|i| (i.key.clone(), i.path.clone()))
                        .collect()
                };
                for (key, path) in items {
                    let value = data.get(&key).ok_or_else(|| {
                        RuntimeError::ConfigMap(format!(
                            "config map {:?} has no key {key:?}",
                            cm.name
                        ))
                    })?;
                    let target = d.join(&path);
                    if let Some(p) = target.parent() {
                        fs::create_dir_all(p).map_err(ioc("create configMap subdir"))?;
                    }
                    fs::write(&target, value)
                        .map_err(ioc(format!("write {}", target.display())))?;
                }
            } else if let Some(hp) = &v.host_path {
                let p = Path::new(&hp.path);
                match hp.kind.as_deref() {
                    Some("DirectoryOrCreate") => {
                        fs::create_dir_all(p).map_err(ioc(format!("create {}", hp.path)))?
                    }
                    Some("FileOrCreate") => {
                        fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(p)
                            .map_err(ioc(format!("create {}", hp.path)))?;
                    }
                    _ if !p.exists() => {
                        return Err(RuntimeError::NotFound(format!("hostPath {}", hp.path)));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn volume_source(&self, pod: &Pod, volume: &str) -> Option<(PathBuf, bool)> {
        let v = pod.spec.volumes.iter().find(|v| v.name == volume)?;
        let dir = self.pod_dir(pod.name());
        if v.empty_dir.is_some() {
            Some((dir.join("volumes").join(volume), false))
        } else if v.config_map.is_some() {
            Some((dir.join("configmaps").join(volume), true))
        } else {
            v.host_path
                .as_ref()
                .map(|h| (PathBuf::from(&h.path), false))
        }
    }

    fn resolve_env(&self, rec: &PodRecord, c: &spec::Container) -> Result<Vec<String>> {
        let mut env: Vec<String> = vec![
            DEFAULT_PATH.to_string(),
            format!("HOSTNAME={}", rec.pod.name()),
            "HOME=/root".to_string(),
        ];
        for e in &c.env {
            let value = match (&e.value, &e.value_from) {
                (_, Some(src)) => {
                    let sel = &src.config_map_key_ref;
                    match rec.config_maps.get(&sel.name).and_then(|m| m.get(&sel.key)) {
                        Some(v) => v.clone(),
                        None if sel.optional => continue,
                        None => {
                            return Err(RuntimeError::ConfigMap(format!(
                            "env {:?} of container {:?}: key {:?} of config map {:?} not provided",
                            e.name, c.name, sel.key, sel.name
                        )))
                        }
                    }
                }
                (Some(v), None) => v.clone(),
                (None, None) => String::new(),
            };
            let prefix = format!("{}=", e.name);
            env.retain(|x| !x.starts_with(&prefix));
            env.push(format!("{}={value}", e.name));
        }
        Ok(env)
    }

    /// Image `""` is the host root; a directory is used as is; a tarball is
    /// unpacked once into the container's state directory.
    async fn rootfs_for(&self, image: &str, cdir: &Path) -> Result<Option<PathBuf>> {
        if image.is_empty() {
            return Ok(None);
        }
        let p = PathBuf::from(image);
        if p.is_dir() {
            return Ok(Some(p));
        }
        if !p.is_file() {
            return Err(RuntimeError::NotFound(format!(
                "image {image:?} (a rootfs directory or tarball)"
            )));
        }
        let target = cdir.join("image");
        if !target.join(".cairn-unpacked").exists() {
            fs::create_dir_all(&target).map_err(ioc("create image dir"))?;
            let out = tokio::process::Command::new("tar")
                .arg("-xf")
                .arg(&p)
                .arg("-C")
                .arg(&target)
                .output()
                .await
                .map_err(ioc("run tar"))?;
            if !out.status.success() {
                return Err(RuntimeError::Start {
                    what: format!("unpacking {image}"),
                    message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                });
            }
            fs::write(target.join(".cairn-unpacked"), "").map_err(ioc("mark image"))?;
        }
        Ok(Some(target))
    }

    async fn init_config(&self, rec: &PodRecord, c: &spec::Container) -> Result<InitConfig> {
        let pod_name = rec.pod.name();
        let pdir = self.pod_dir(pod_name);
        let cdir = self.container_dir(pod_name, &c.name);
        let mut mounts = vec![
            BindMount {
                source: pdir.join("etc/hostname"),
                target: "/etc/hostname".into(),
                read_only: true,
                is_file: true,
            },
            BindMount {
                source: pdir.join("etc/hosts"),
                target: "/etc/hosts".into(),
                read_only: true,
                is_file: true,
            },
        ];
        for m in &c.volume_mounts {
            let (source, forced_ro) = self
                .volume_source(&rec.pod, &m.name)
                .ok_or_else(|| RuntimeError::NotFound(format!("volume {}", m.name)))?;
            let is_file = source.is_file();
            mounts.push(BindMount {
                source,
                target: m.mount_path.clone(),
                read_only: m.read_only || forced_ro,
                is_file,
            });
        }
        let sc = c.security_context.clone().unwrap_or_default();
        let psc = rec.pod.spec.security_context.clone().unwrap_or_default();
        let capset = sc.capabilities.clone().unwrap_or_default();
        let caps = caps::effective_set(&capset.add, &capset.drop).map_err(|e| {
            RuntimeError::Spec(SpecError::Invalid {
                field: format!("container {}: securityContext.capabilities", c.name),
                message: e,
            })
        })?;
        let argv: Vec<String> = c.command.iter().chain(c.args.iter()).cloned().collect();
        let cg = self.container_cgroup(pod_name, &c.name);
        let (oom_file, oom_key) = self.cgroups.oom_counter(&cg);
        Ok(InitConfig {
            holder_pid: rec.holder_pid,
            rootfs: self.rootfs_for(&c.image, &cdir).await?,
            rootfs_mount: cdir.join("rootfs"),
            mounts,
            argv,
            env: self.resolve_env(rec, c)?,
            cwd: c.working_dir.clone().unwrap_or_else(|| "/".into()),
            uid: sc.run_as_user.or(psc.run_as_user).unwrap_or(0),
            gid: sc.run_as_group.or(psc.run_as_group).unwrap_or(0),
            no_new_privs: sc.allow_privilege_escalation != Some(true),
            caps,
            cgroup_procs: self.cgroups.procs_files(&cg),
            oom_counter: (oom_file, oom_key.to_string()),
            log_path: cdir.join("container.log"),
            log_max_bytes: self.cfg.log_max_bytes,
            exit_path: cdir.join("exit.json"),
        })
    }

    /// Starts (or restarts) one container of a created sandbox and returns
    /// once its command has been exec'd.
    pub async fn start_container(&self, pod: &str, container: &str) -> Result<ContainerStatus> {
        let rec = self.load(pod)?;
        if !alive(rec.holder_pid, rec.holder_start) {
            return Err(RuntimeError::InvalidState(format!(
                "sandbox of pod {pod} is not running"
            )));
        }
        let c = rec
            .pod
            .container(container)
            .ok_or_else(|| RuntimeError::NotFound(format!("container {container} in pod {pod}")))?
            .clone();
        let cdir = self.container_dir(pod, container);
        // A monitor still recording the previous run's exit would write its
        // exit record over the new run's state.
        if self.container_status(pod, container)?.state == ContainerState::Running {
            return Err(RuntimeError::InvalidState(format!(
                "container {pod}/{container} is running"
            )));
        }
        fs::create_dir_all(cdir.join("rootfs")).map_err(ioc("create container dir"))?;
        let _ = fs::remove_file(cdir.join("exit.json"));
        let cg = self.container_cgroup(pod, container);
        self.cgroups
            .create(&cg, &container_resources(&c, self.cfg.default_pids_limit))?;
        let cfg = self.init_config(&rec, &c).await?;
        let cfg_path = cdir.join("init.json");
        write_json(&cfg_path, &cfg)?;

        let mut child = tokio::process::Command::new(&self.cfg.helper)
            .arg(init::INIT)
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(ioc(format!("spawn helper {}", self.cfg.helper.display())))?;
        // Read now: the start time is fixed at fork, and the monitor may be
        // gone (and its PID reusable) by the time the container has started.
        let monitor_pid = child.id().map_or(0, |p| p as i32);
        let monitor_start = proc_start_time(monitor_pid).unwrap_or(0);
        let mut out = tokio::io::BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), out.read_line(&mut line)).await;
        let line = line.trim();
        let pid = match line.strip_prefix("ok ").and_then(|p| p.parse::<i32>().ok()) {
            Some(pid) => pid,
            None => {
                let mut err = line.strip_prefix("err ").unwrap_or("").to_string();
                if let Some(mut e) = child.stderr.take() {
                    let mut more = String::new();
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), e.read_to_string(&mut more))
                            .await;
                    err.push_str(more.trim());
                }
                let _ = child.wait().await;
                return Err(RuntimeError::Start {
                    what: format!("container {pod}/{container}"),
                    message: err,
                });
            }
        };
        drop(child.stderr.take());
        drop(out);
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        let started_at_ms = init::now_ms();
        let cr = ContainerRecord {
            pid,
            pid_start: proc_start_time(pid).unwrap_or(0),
            started_at_ms,
            monitor_pid,
            monitor_start,
        };
        write_json(&cdir.join("state.json"), &cr)?;
        tracing::info!(pod, container, pid, "container started");
        self.container_status(pod, container)
    }

    /// Creates the sandbox and starts every container in spec order.
    pub async fn run_pod(&self, pod: &Pod, config_maps: &ConfigMaps) -> Result<PodStatus> {
        self.create_sandbox(pod, config_maps).await?;
        for c in &pod.spec.containers {
            if let Err(e) = self.start_container(pod.name(), &c.name).await {
                let _ = self.remove_pod(pod.name()).await;
                return Err(e);
            }
        }
        self.status(pod.name())
    }

    pub fn container_status(&self, pod: &str, container: &str) -> Result<ContainerStatus> {
        let cdir = self.container_dir(pod, container);
        let cr: Option<ContainerRecord> = read_json(&cdir.join("state.json"))?;
        let Some(cr) = cr else {
            return Ok(ContainerStatus {
                name: container.to_string(),
                state: ContainerState::Created,
                pid: None,
                started_at_ms: None,
                finished_at_ms: None,
            });
        };
        let exit: Option<ExitRecord> = read_json(&cdir.join("exit.json"))?;
        let (state, finished) = match exit {
            Some(x) => {
                let reason = if x.oom_killed {
                    ExitReason::OOMKilled
                } else if x.exit_code == 0 {
                    ExitReason::Completed
                } else {
                    ExitReason::Error
                };
                (
                    ContainerState::Exited {
                        exit_code: x.exit_code,
                        reason,
                    },
                    Some(x.finished_at_ms),
                )
            }
            None if cr.running() => (ContainerState::Running, None),
            None => (ContainerState::Unknown, None),
        };
        Ok(ContainerStatus {
            name: container.to_string(),
            state,
            pid: Some(cr.pid),
            started_at_ms: Some(cr.started_at_ms),
            finished_at_ms: finished,
        })
    }

    fn pod_status(&self, rec: &PodRecord) -> Result<PodStatus> {
        let containers = rec
            .pod
            .spec
            .containers
            .iter()
            .map(|c| self.container_status(rec.pod.name(), &c.name))
            .collect::<Result<Vec<_>>>()?;
        Ok(PodStatus {
            name: rec.pod.name().to_string(),
            ip: rec.network.as_ref().map(|n| n.ip),
            sandbox_running: alive(rec.holder_pid, rec.holder_start),
            holder_pid: rec.holder_pid,
            created_at_ms: rec.created_at_ms,
            containers,
        })
    }

    pub fn status(&self, pod: &str) -> Result<PodStatus> {
        self.pod_status(&self.load(pod)?)
    }

    /// The pod spec as stored at creation.
    pub fn pod_spec(&self, pod: &str) -> Result<Pod> {
        Ok(self.load(pod)?.pod)
    }

    /// All pods recorded on disk, including those started by an earlier
    /// runtime instance (re-adoption needs nothing more: every operation
    /// works from the on-disk state).
    pub fn list(&self) -> Result<Vec<PodStatus>> {
        let dir = self.cfg.state_dir.join("pods");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(ioc(format!("read {}", dir.display()))(e)),
        };
        let mut out = vec![];
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            match self.status(&name) {
                Ok(s) => out.push(s),
                Err(err) => {
                    tracing::warn!(pod = %name, error = %err, "skipping unreadable pod state")
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn wait_exit(&self, pod: &str, container: &str, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        let mut delay = Duration::from_millis(1);
        loop {
            match self.container_status(pod, container)?.state {
                ContainerState::Running => {}
                _ => return Ok(true),
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then SIGKILL once `grace` has passed. The command runs as
    /// PID 1 of its PID namespace, so SIGTERM only acts if it installed a
    /// handler, as with any container init.
    pub async fn stop_container(
        &self,
        pod: &str,
        container: &str,
        grace: Duration,
    ) -> Result<ContainerStatus> {
        let cr: Option<ContainerRecord> =
            read_json(&self.container_dir(pod, container).join("state.json"))?;
        let Some(cr) = cr else {
            return self.container_status(pod, container);
        };
        if self.container_status(pod, container)?.state != ContainerState::Running {
            return self.container_status(pod, container);
        }
        use nix::sys::signal::Signal;
        // The process may already be dead (only its exit not yet recorded)
        // and its PID reused; signal only the process that was started.
        if !grace.is_zero() && alive(cr.pid, cr.pid_start) {
            kill(cr.pid, Signal::SIGTERM);
            if self.wait_exit(pod, container, grace).await? {
                return self.container_status(pod, container);
            }
        }
        if alive(cr.pid, cr.pid_start) {
            kill(cr.pid, Signal::SIGKILL);
        }
        if !self
            .wait_exit(pod, container, Duration::from_secs(10))
            .await?
        {
            return Err(RuntimeError::InvalidState(format!(
                "container {pod}/{container} did not exit after SIGKILL"
            )));
        }
        self.container_status(pod, container)
    }

    /// Stops all containers (in parallel) and the sandbox holder. `grace`
    /// defaults to the pod's terminationGracePeriodSeconds (30 s if unset).
    pub async fn stop_pod(&self, pod: &str, grace: Option<Duration>) -> Result<PodStatus> {
        let rec = self.load(pod)?;
        let grace = grace.unwrap_or_else(|| {
            Duration::from_secs(rec.pod.spec.termination_grace_period_seconds.unwrap_or(30))
        });
        let stops = rec
            .pod
            .spec
            .containers
            .iter()
            .map(|c| self.stop_container(pod, &c.name, grace));
        for r in futures_util::future::join_all(stops).await {
            r?;
        }
        if alive(rec.holder_pid, rec.holder_start) {
            kill(rec.holder_pid, nix::sys::signal::Signal::SIGKILL);
            let deadline = Instant::now() + Duration::from_secs(10);
            while alive(rec.holder_pid, rec.holder_start) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        tracing::info!(pod, "pod stopped");
        self.pod_status(&rec)
    }

    /// Stops whatever still runs (without grace) and deletes the pod's
    /// cgroups, veth, IP allocation, volumes, logs and state.
    pub async fn remove_pod(&self, pod: &str) -> Result<()> {
        let dir = self.pod_dir(pod);
        let rec = match self.load(pod) {
            Ok(r) => r,
            Err(RuntimeError::NotFound(_)) if dir.exists() => {
                fs::remove_dir_all(&dir).map_err(ioc(format!("remove {}", dir.display())))?;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        self.stop_pod(pod, Some(Duration::ZERO)).await?;
        if let Some(net) = &rec.network_config {
            let (host, _) = network::veth_names(&net.bridge, pod);
            network::delete_link(&host).await?;
            self.ipam(net)?.release(pod)?;
        }
        // Removal may wait for the kernel to release just-emptied cgroups.
        let cgroups = Arc::clone(&self.cgroups);
        let (cg, dirs) = (rec.cgroup.clone(), rec.cgroup_dirs.clone());
        tokio::task::spawn_blocking(move || {
            if dirs.is_empty() {
                cgroups.remove(&cg)
            } else {
                cgroup::remove_dirs(&dirs)
            }
        })
        .await
        .map_err(|e| ioc("cgroup removal task")(io::Error::other(e)))??;
        fs::remove_dir_all(&dir).map_err(ioc(format!("remove {}", dir.display())))?;
        tracing::info!(pod, "pod removed");
        Ok(())
    }

    /// Runs a command inside a running container (its namespaces, cgroup,
    /// root, user and capabilities) and collects its output.
    pub async fn exec(&self, pod: &str, container: &str, argv: &[String]) -> Result<ExecOutput> {
        let st = self.container_status(pod, container)?;
        let (ContainerState::Running, Some(pid)) = (&st.state, st.pid) else {
            return Err(RuntimeError::InvalidState(format!(
                "container {pod}/{container} is not running"
            )));
        };
        if argv.is_empty() {
            return Err(RuntimeError::InvalidState("exec needs a command".into()));
        }
        let out = tokio::process::Command::new(&self.cfg.helper)
            .arg(init::EXEC)
            .arg(self.container_dir(pod, container).join("init.json"))
            .arg(pid.to_string())
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(ioc("spawn exec helper"))?;
        Ok(ExecOutput {
            exit_code: out.status.code().unwrap_or(128),
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }

    fn log_paths(&self, pod: &str, container: &str) -> (PathBuf, PathBuf) {
        let p = self.container_dir(pod, container).join("container.log");
        let mut rotated = p.clone().into_os_string();
        rotated.push(".1");
        (PathBuf::from(rotated), p)
    }

    /// The container's combined stdout/stderr; with `tail`, only the last
    /// that many lines.
    pub fn logs(&self, pod: &str, container: &str, tail: Option<usize>) -> Result<Vec<u8>> {
        self.load(pod)?;
        let (old, cur) = self.log_paths(pod, container);
        let mut data = fs::read(&old).unwrap_or_default();
        data.extend(fs::read(&cur).unwrap_or_default());
        Ok(match tail {
            Some(n) => tail_lines(&data, n).to_vec(),
            None => data,
        })
    }

    /// Sends the log (last `tail` lines first) and then new output as it is
    /// written, until the container has exited and everything was sent or
    /// the receiver is dropped.
    pub fn follow_logs(
        &self,
        pod: &str,
        container: &str,
        tail: Option<usize>,
    ) -> Result<tokio::sync::mpsc::Receiver<Vec<u8>>> {
        let initial = self.logs(pod, container, tail)?;
        let (_, cur) = self.log_paths(pod, container);
        use std::os::unix::fs::MetadataExt;
        let meta = fs::metadata(&cur).ok();
        let mut offset = meta.as_ref().map(|m| m.len()).unwrap_or(0);
        let mut inode = meta.map(|m| m.ino()).unwrap_or(0);
        let cdir = self.container_dir(pod, container);
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            if !initial.is_empty() && tx.send(initial).await.is_err() {
                return;
            }
            loop {
                let exited = cdir.join("exit.json").exists() || !cdir.exists();
                let meta = fs::metadata(&cur).ok();
                let len = meta.as_ref().map(|m| m.len()).unwrap_or(0);
                let ino = meta.map(|m| m.ino()).unwrap_or(0);
                if ino != inode || len < offset {
                    // Rotated: the new file starts from zero.
                    inode = ino;
                    offset = 0;
                }
                if len > offset {
                    if let Ok(mut f) = fs::File::open(&cur) {
                        use std::io::{Read, Seek, SeekFrom};
                        let mut buf = vec![];
                        if f.seek(SeekFrom::Start(offset)).is_ok()
                            && f.read_to_end(&mut buf).is_ok()
                        {
                            offset += buf.len() as u64;
                            if tx.send(buf).await.is_err() {
                                return;
                            }
                        }
                    }
                    continue;
                }
                if exited {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Ok(rx)
    }
}

/// The suffix of `data` holding its last `n` lines.
pub fn tail_lines(data: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &[];
    }
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    let mut count = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            count += 1;
            if count == n {
                return &data[i + 1..];
            }
        }
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail() {
        assert_eq!(tail_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail_lines(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(tail_lines(b"a\n", 5), b"a\n");
        assert_eq!(tail_lines(b"a\nb\n", 0), b"");
    }

    #[test]
    fn exit_pending_while_monitor_runs() {
        let me = std::process::id() as i32;
        let me_start = proc_start_time(me).unwrap();
        let gone = ContainerRecord {
            pid: me,
            pid_start: me_start + 1,
            started_at_ms: 0,
            monitor_pid: 0,
            monitor_start: 0,
        };
        assert!(!gone.running());
        let recording = ContainerRecord {
            monitor_pid: me,
            monitor_start: me_start,
            ..gone.clone()
        };
        assert!(recording.running());
        // Records written before the monitor was tracked still parse.
        let old: ContainerRecord =
            serde_json::from_str(r#"{"pid": 1, "pid_start": 2, "started_at_ms": 3}"#).unwrap();
        assert_eq!((old.monitor_pid, old.monitor_start), (0, 0));
    }

    #[test]
    fn pod_sums() {
        assert_eq!(sum_all([Some(1), Some(2)].into_iter()), Some(3));
        assert_eq!(sum_all([Some(1), None].into_iter()), None);
    }
}
