//! Bundled namespace runtime: runs pods as Linux processes isolated by
//! namespaces and limited by cgroups.
//!
//! This module depends on nothing else in the crate. The async [`Runtime`]
//! keeps all state on disk under its state directory, so a new instance
//! (after an agent restart) sees and manages the pods a previous one started.
//! Namespace work happens in the helper binary's hidden subcommands (see
//! [`helper_main`]), never on an async thread.
//!
//! By concern: `records` (what is kept on disk, and statuses), `volumes`,
//! `sandbox` (the pod's holder, cgroup and network), `container` (start,
//! stop, exec), `session` (exec with streams open while it runs), `logs`; `init` is the helper's single-threaded side, and it
//! reaches the kernel's namespace calls only through `syscall`'s seam.
//! `cgroup`, `network`, `caps` and `spec` are the building blocks.
//!
//! This module must never import anything else of the crate.

// Raw syscalls (capabilities, namespaces, fork and exec) are confined to these modules.
#[allow(unsafe_code)]
pub mod caps;
pub mod cgroup;
mod container;
#[allow(unsafe_code)]
mod init;
mod logs;
pub mod network;
mod records;
mod sandbox;
// Receiving descriptors and sizing terminals are raw calls too.
#[allow(unsafe_code)]
mod session;
pub mod spec;
mod syscall;
mod volumes;

pub use cgroup::{CgroupDriver, CgroupError, CgroupVersion, Resources};
pub use init::helper_main;
pub use init::Streams as ExecStreams;
pub use logs::tail_lines;
pub use network::{NetworkConfig, NetworkError, PodNetwork};
pub use records::{ContainerState, ContainerStatus, ExecOutput, ExitReason, PodStatus};
pub use session::{ExecExit, ExecInput, ExecReader, ExecSession, Terminal};
pub use spec::{ConfigMaps, Pod, SpecError};
pub use volumes::VolumeFile;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

    /// Starts one of the helper's hidden subcommands in a process group of its own, its output
    /// piped back.
    fn spawn_helper(&self, sub: &str, arg: &std::ffi::OsStr) -> Result<tokio::process::Child> {
        tokio::process::Command::new(&self.cfg.helper)
            .arg(sub)
            .arg(arg)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(ioc(format!("spawn helper {}", self.cfg.helper.display())))
    }
}
