//! Shared fixtures: every test gets its own state dir, cgroup parent and
//! (optionally) bridge and CIDR, all removed by a Drop guard.

#![allow(dead_code)]

pub mod image;
pub mod node;
pub mod up;

use cairn_orchestrator::runtime::{ContainerState, NetworkConfig, Pod, Runtime, RuntimeConfig};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const HELPER: &str = env!("CARGO_BIN_EXE_cairn-orchestrator");

/// Returns false (after printing why) when the test cannot run here.
pub fn can_run(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED: {test}: needs root");
        return false;
    }
    let root = Path::new("/sys/fs/cgroup");
    let Ok(version) = cairn_orchestrator::runtime::cgroup::detect(root) else {
        println!("SKIPPED: {test}: no cgroup hierarchy at /sys/fs/cgroup");
        return false;
    };
    // Every pod gets cgroups in all of these (at least a default pids limit).
    let missing: Vec<&str> = match version {
        cairn_orchestrator::runtime::CgroupVersion::V2 => {
            let have = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
            ["cpu", "memory", "pids"]
                .into_iter()
                .filter(|c| !have.split_whitespace().any(|h| h == *c))
                .collect()
        }
        _ => ["memory", "cpu", "cpuacct", "pids"]
            .into_iter()
            .filter(|c| !root.join(c).is_dir())
            .collect(),
    };
    if !missing.is_empty() {
        println!("SKIPPED: {test}: cgroup controllers missing: {missing:?}");
        return false;
    }
    for ns in ["pid", "net", "uts", "ipc", "mnt"] {
        if !Path::new("/proc/self/ns").join(ns).exists() {
            println!("SKIPPED: {test}: kernel without {ns} namespaces");
            return false;
        }
    }
    true
}

pub struct TestEnv {
    pub runtime: Runtime,
    pub state_dir: PathBuf,
    pub cgroup_parent: String,
    pub bridge: Option<String>,
    pods: Vec<String>,
}

impl TestEnv {
    /// `subnet` picks 10.213.<subnet>.0/24 for the test's own bridge.
    pub fn new(tag: &str, subnet: Option<u8>) -> Self {
        Self::with(tag, subnet, |_| {})
    }

    pub fn with(tag: &str, subnet: Option<u8>, tweak: impl FnOnce(&mut RuntimeConfig)) -> Self {
        let id = format!("{}-{tag}", std::process::id());
        let state_dir = std::env::temp_dir().join(format!("cairn-it-{id}"));
        let _ = std::fs::remove_dir_all(&state_dir);
        let mut cfg = RuntimeConfig::new(&state_dir, HELPER);
        cfg.cgroup_parent = format!("cairn-it-{id}");
        let bridge = subnet.map(|n| {
            let b = format!("ctb{}{}", std::process::id() % 100000, n);
            cfg.network = Some(NetworkConfig {
                bridge: b.clone(),
                cidr: format!("10.213.{n}.0/24"),
            });
            b
        });
        tweak(&mut cfg);
        let cgroup_parent = cfg.cgroup_parent.clone();
        let runtime = Runtime::new(cfg).expect("runtime");
        TestEnv {
            runtime,
            state_dir,
            cgroup_parent,
            bridge,
            pods: vec![],
        }
    }

    pub async fn run(&mut self, yaml: &str) -> Pod {
        self.run_with(yaml, &Default::default()).await
    }

    pub async fn run_with(
        &mut self,
        yaml: &str,
        cms: &cairn_orchestrator::runtime::ConfigMaps,
    ) -> Pod {
        let pod = Pod::from_yaml(yaml).expect("pod yaml");
        self.pods.push(pod.name().to_string());
        self.runtime.run_pod(&pod, cms).await.expect("run pod");
        pod
    }

    pub fn log(&self, pod: &str, c: &str) -> String {
        String::from_utf8_lossy(&self.runtime.logs(pod, c, None).unwrap()).to_string()
    }

    /// Waits (bounded) until the log contains `needle`.
    pub async fn wait_log(&self, pod: &str, c: &str, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let l = self.log(pod, c);
            if l.contains(needle) || Instant::now() > deadline {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_exited(&self, pod: &str, c: &str, timeout: Duration) -> ContainerState {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.runtime.container_status(pod, c).unwrap().state;
            if !matches!(st, ContainerState::Running) || Instant::now() > deadline {
                return st;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn exec(&self, pod: &str, c: &str, script: &str) -> (i32, String) {
        let out = self
            .runtime
            .exec(pod, c, &["/bin/sh".into(), "-c".into(), script.into()])
            .await
            .expect("exec");
        let mut s = String::from_utf8_lossy(&out.stdout).to_string();
        s.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.exit_code, s)
    }

    pub fn forget(&mut self, pod: &str) {
        self.pods.retain(|p| p != pod);
    }

    /// Every cgroup directory of the test's parent, across controllers.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        self.runtime.cgroups().dirs(Path::new(&self.cgroup_parent))
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let pods = std::mem::take(&mut self.pods);
        let state_dir = self.state_dir.clone();
        let mut cfg = self.runtime.config().clone();
        let cgroup_parent = self.cgroup_parent.clone();
        let bridge = self.bridge.clone();
        // Drop may run inside the test's async runtime, which cannot be
        // blocked on; clean up from a separate thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                cfg.state_dir = state_dir.clone();
                if let Ok(runtime) = Runtime::new(cfg) {
                    for p in pods {
                        let _ = runtime.remove_pod(&p).await;
                    }
                    let _ = runtime.cgroups().remove(Path::new(&cgroup_parent));
                }
                if let Some(b) = bridge {
                    let _ = cairn_orchestrator::runtime::network::delete_link(&b).await;
                }
            });
            let _ = std::fs::remove_dir_all(&state_dir);
        })
        .join();
    }
}

/// Mount points whose path contains `needle` (host mount namespace).
pub fn mounts_containing(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// The network tests use the host's python3 inside containers.
pub fn has_python(test: &str) -> bool {
    if Path::new("/usr/bin/python3").exists() {
        return true;
    }
    println!("SKIPPED: {test}: /usr/bin/python3 is needed inside the container");
    false
}

/// Runs `body` on a thread of its own moved into a fresh network namespace (loopback up), with a
/// tokio runtime started there, so every socket, link, route and nftables table the test or its
/// processes make lives in that namespace and goes with it. False (after saying why) when `ip` is
/// missing.
pub fn in_own_netns<F, Fut>(test: &str, body: F) -> bool
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let have_ip = std::process::Command::new("ip")
        .arg("-V")
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok();
    if !have_ip {
        println!("SKIPPED: {test}: iproute2's ip is not installed");
        return false;
    }
    let t = std::thread::spawn(move || {
        // Only this thread moves; threads and processes it starts afterwards follow it.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare net");
        let up = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .expect("ip runs");
        assert!(up.success(), "ip link set lo up");
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(body())
    });
    if let Err(panic) = t.join() {
        std::panic::resume_unwind(panic);
    }
    true
}
