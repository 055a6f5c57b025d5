//! cgroup v1 and v2 drivers behind one trait.
//!
//! Paths handed to a driver are relative (`cairn/pod-web/app`); the driver maps
//! them onto its hierarchy. Both drivers take their root as a parameter so that
//! a fake cgroup filesystem in a temp dir can stand in for `/sys/fs/cgroup`.
//!
//! Must never import anything outside `runtime/`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no usable cgroup hierarchy under {0}")]
    NotFound(PathBuf),
    #[error("cgroup {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cgroup {path} still busy after {secs}s")]
    Busy { path: PathBuf, secs: u64 },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    /// v1 controllers plus a controller-less v2 mount at `unified/`.
    Hybrid,
    V2,
}

/// Limits for one cgroup. `None` leaves the kernel default (unlimited).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub memory_limit: Option<u64>,
    pub cpu_limit_millis: Option<u64>,
    pub cpu_request_millis: Option<u64>,
    pub pids_limit: Option<u64>,
}

pub const CPU_PERIOD_US: u64 = 100_000;

/// Kubernetes' conversion: 1000 millicores = 1024 shares, at least 2.
pub fn millis_to_shares(millis: u64) -> u64 {
    (millis * 1024 / 1000).max(2)
}

/// Maps v1 shares [2, 262144] onto v2 weight [1, 10000] (the formula used by
/// runc and the kubelet so that both hierarchies give the same ratios).
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

pub fn millis_to_quota_us(millis: u64) -> u64 {
    (millis * CPU_PERIOD_US / 1000).max(1000)
}

pub trait CgroupDriver: Send + Sync + std::fmt::Debug {
    fn version(&self) -> CgroupVersion;
    /// Creates the cgroup (and missing parents) and applies the limits.
    fn create(&self, rel: &Path, res: &Resources) -> Result<(), CgroupError>;
    /// The `cgroup.procs` files a process must be written to in order to join.
    fn procs_files(&self, rel: &Path) -> Vec<PathBuf>;
    fn add_pid(&self, rel: &Path, pid: i32) -> Result<(), CgroupError> {
        for f in self.procs_files(rel) {
            fs::write(&f, pid.to_string()).map_err(io_err("join", &f))?;
        }
        Ok(())
    }
    /// File and key of the kernel's OOM-kill counter (`key value` lines).
    fn oom_counter(&self, rel: &Path) -> (PathBuf, &'static str);
    fn oom_kills(&self, rel: &Path) -> u64 {
        let (file, key) = self.oom_counter(rel);
        read_keyed(&file, key).unwrap_or(0)
    }
    fn cpu_usage_ns(&self, rel: &Path) -> Result<u64, CgroupError>;
    fn pids_current(&self, rel: &Path) -> Result<u64, CgroupError>;
    /// Every directory that makes up this cgroup (one per v1 controller).
    fn dirs(&self, rel: &Path) -> Vec<PathBuf>;
    fn exists(&self, rel: &Path) -> bool {
        self.dirs(rel).iter().any(|d| d.exists())
    }
    /// Removes the cgroup and its children. Waits (bounded) for the kernel to
    /// release cgroups whose last task has just died.
    fn remove(&self, rel: &Path) -> Result<(), CgroupError> {
        for d in self.dirs(rel) {
            remove_tree(&d)?;
        }
        Ok(())
    }
}

/// Removes cgroup directories recorded earlier (absolute paths), e.g. by a
/// runtime instance that ran in a different cgroup of its own.
pub fn remove_dirs(dirs: &[PathBuf]) -> Result<(), CgroupError> {
    for d in dirs {
        remove_tree(d)?;
    }
    Ok(())
}

fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("read", dir)(e)),
    };
    for entry in entries.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_tree(&entry.path())?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            // A fake hierarchy in a temp dir holds regular files.
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) && !is_cgroupfs(dir) => {
                return fs::remove_dir_all(dir).map_err(io_err("remove", dir));
            }
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                return Err(CgroupError::Busy {
                    path: dir.to_path_buf(),
                    secs: 5,
                })
            }
            Err(e) => return Err(io_err("remove", dir)(e)),
        }
    }
}

fn is_cgroupfs(p: &Path) -> bool {
    nix::sys::statfs::statfs(p)
        .map(|s| {
            let t = s.filesystem_type();
            t == nix::sys::statfs::CGROUP_SUPER_MAGIC || t == nix::sys::statfs::CGROUP2_SUPER_MAGIC
        })
        .unwrap_or(false)
}

/// Reads `key value` lines (memory.events, memory.oom_control, cpu.stat).
pub fn read_keyed(file: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(key)).then(|| it.next()?.parse().ok())?
    })
}

fn read_u64(file: &Path) -> Result<u64, CgroupError> {
    let s = fs::read_to_string(file).map_err(io_err("read", file))?;
    s.trim().parse().map_err(|_| CgroupError::Io {
        op: "parse",
        path: file.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidData, s.trim().to_string()),
    })
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let p = dir.join(file);
    fs::write(&p, value).map_err(io_err("write", &p))
}

/// Detects the hierarchy under `root` by its control files, which works on
/// the real `/sys/fs/cgroup` and on a fake one alike.
pub fn detect(root: &Path) -> Result<CgroupVersion, CgroupError> {
    if root.join("cgroup.controllers").exists() {
        return Ok(CgroupVersion::V2);
    }
    if root.join("memory").is_dir() || root.join("pids").is_dir() {
        if root.join("unified/cgroup.controllers").exists() {
            return Ok(CgroupVersion::Hybrid);
        }
        return Ok(CgroupVersion::V1);
    }
    Err(CgroupError::NotFound(root.to_path_buf()))
}

/// Builds the driver for whatever hierarchy `root` holds. Paths are relative
/// to the hierarchy's root (to each controller's root on v1), independent of
/// the calling process's own cgroup, so every runtime instance computes the
/// same paths.
pub fn open(root: &Path) -> Result<Arc<dyn CgroupDriver>, CgroupError> {
    match detect(root)? {
        CgroupVersion::V2 => Ok(Arc::new(CgroupV2::new(root))),
        v => Ok(Arc::new(CgroupV1::new(root, v))),
    }
}

const V1_CONTROLLERS: [&str; 4] = ["memory", "cpu", "cpuacct", "pids"];

#[derive(Debug)]
pub struct CgroupV1 {
    root: PathBuf,
    version: CgroupVersion,
}

impl CgroupV1 {
    pub fn new(root: &Path, version: CgroupVersion) -> Self {
        CgroupV1 {
            root: root.to_path_buf(),
            version,
        }
    }

    fn dir(&self, ctrl: &str, rel: &Path) -> PathBuf {
        self.root.join(ctrl).join(rel)
    }
}

impl CgroupDriver for CgroupV1 {
    fn version(&self) -> CgroupVersion {
        self.version
    }

    fn create(&self, rel: &Path, res: &Resources) -> Result<(), CgroupError> {
        for c in V1_CONTROLLERS {
            let d = self.dir(c, rel);
            fs::create_dir_all(&d).map_err(io_err("create", &d))?;
        }
        let mem = self.dir("memory", rel);
        if let Some(limit) = res.memory_limit {
            write(&mem, "memory.limit_in_bytes", &limit.to_string())?;
            // Without this a limited cgroup would swap instead of being
            // OOM-killed on machines with swap.
            if mem.join("memory.memsw.limit_in_bytes").exists() {
                write(&mem, "memory.memsw.limit_in_bytes", &limit.to_string())?;
            }
        }
        let cpu = self.dir("cpu", rel);
        if let Some(millis) = res.cpu_limit_millis {
            write(&cpu, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
            write(
                &cpu,
                "cpu.cfs_quota_us",
                &millis_to_quota_us(millis).to_string(),
            )?;
        }
        if let Some(millis) = res.cpu_request_millis {
            write(&cpu, "cpu.shares", &millis_to_shares(millis).to_string())?;
        }
        if let Some(pids) = res.pids_limit {
            write(&self.dir("pids", rel), "pids.max", &pids.to_string())?;
        }
        Ok(())
    }

    fn procs_files(&self, rel: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = V1_CONTROLLERS
            .iter()
            .map(|c| self.dir(c, rel).join("cgroup.procs"))
            .collect();
        v.dedup();
        v
    }

    fn oom_counter(&self, rel: &Path) -> (PathBuf, &'static str) {
        (
            self.dir("memory", rel).join("memory.oom_control"),
            "oom_kill",
        )
    }

    fn cpu_usage_ns(&self, rel: &Path) -> Result<u64, CgroupError> {
        read_u64(&self.dir("cpuacct", rel).join("cpuacct.usage"))
    }

    fn pids_current(&self, rel: &Path) -> Result<u64, CgroupError> {
        read_u64(&self.dir("pids", rel).join("pids.current"))
    }

    fn dirs(&self, rel: &Path) -> Vec<PathBuf> {
        V1_CONTROLLERS.iter().map(|c| self.dir(c, rel)).collect()
    }
}

#[derive(Debug)]
pub struct CgroupV2 {
    root: PathBuf,
}

impl CgroupV2 {
    pub fn new(root: &Path) -> Self {
        CgroupV2 {
            root: root.to_path_buf(),
        }
    }
}

impl CgroupDriver for CgroupV2 {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V2
    }

    fn create(&self, rel: &Path, res: &Resources) -> Result<(), CgroupError> {
        // Controllers must be enabled in every ancestor's subtree_control
        // before the leaf gets the interface files.
        let mut dir = self.root.clone();
        let available =
            fs::read_to_string(self.root.join("cgroup.controllers")).unwrap_or_default();
        let wanted: Vec<&str> = ["cpu", "memory", "pids"]
            .into_iter()
            .filter(|c| available.split_whitespace().any(|a| a == *c))
            .collect();
        let enable = wanted
            .iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(" ");
        for comp in rel.components() {
            if !enable.is_empty() {
                write(&dir, "cgroup.subtree_control", &enable)?;
            }
            dir.push(comp);
            if !dir.exists() {
                fs::create_dir(&dir).map_err(io_err("create", &dir))?;
            }
        }
        if let Some(limit) = res.memory_limit {
            write(&dir, "memory.max", &limit.to_string())?;
            if dir.join("memory.swap.max").exists() {
                write(&dir, "memory.swap.max", "0")?;
            }
        }
        if let Some(millis) = res.cpu_limit_millis {
            write(
                &dir,
                "cpu.max",
                &format!("{} {}", millis_to_quota_us(millis), CPU_PERIOD_US),
            )?;
        }
        if let Some(millis) = res.cpu_request_millis {
            write(
                &dir,
                "cpu.weight",
                &shares_to_weight(millis_to_shares(millis)).to_string(),
            )?;
        }
        if let Some(pids) = res.pids_limit {
            write(&dir, "pids.max", &pids.to_string())?;
        }
        Ok(())
    }

    fn procs_files(&self, rel: &Path) -> Vec<PathBuf> {
        vec![self.root.join(rel).join("cgroup.procs")]
    }

    fn oom_counter(&self, rel: &Path) -> (PathBuf, &'static str) {
        (self.root.join(rel).join("memory.events"), "oom_kill")
    }

    fn cpu_usage_ns(&self, rel: &Path) -> Result<u64, CgroupError> {
        let f = self.root.join(rel).join("cpu.stat");
        read_keyed(&f, "usage_usec")
            .map(|us| us * 1000)
            .ok_or_else(|| {
                io_err("read", &f)(io::Error::new(io::ErrorKind::InvalidData, "no usage_usec"))
            })
    }

    fn pids_current(&self, rel: &Path) -> Result<u64, CgroupError> {
        read_u64(&self.root.join(rel).join("pids.current"))
    }

    fn dirs(&self, rel: &Path) -> Vec<PathBuf> {
        vec![self.root.join(rel)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cairn-cg-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn conversions() {
        assert_eq!(millis_to_shares(1000), 1024);
        assert_eq!(millis_to_shares(1), 2);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10000);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(millis_to_quota_us(200), 20_000);
    }

    #[test]
    fn fake_v2_root() {
        let root = tempdir("v2");
        fs::write(
            root.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        assert_eq!(detect(&root).unwrap(), CgroupVersion::V2);
        let cg = open(&root).unwrap();
        assert_eq!(cg.version(), CgroupVersion::V2);
        let rel = Path::new("cairn/pod-a/app");
        let res = Resources {
            memory_limit: Some(64 << 20),
            cpu_limit_millis: Some(200),
            cpu_request_millis: Some(100),
            pids_limit: Some(32),
        };
        cg.create(rel, &res).unwrap();
        let leaf = root.join(rel);
        let read = |p: PathBuf| fs::read_to_string(p).unwrap();
        assert_eq!(read(leaf.join("memory.max")), (64u64 << 20).to_string());
        assert_eq!(read(leaf.join("cpu.max")), "20000 100000");
        assert_eq!(
            read(leaf.join("cpu.weight")),
            shares_to_weight(102).to_string()
        );
        assert_eq!(read(leaf.join("pids.max")), "32");
        assert_eq!(
            read(root.join("cgroup.subtree_control")),
            "+cpu +memory +pids"
        );
        assert_eq!(
            read(root.join("cairn/pod-a/cgroup.subtree_control")),
            "+cpu +memory +pids"
        );
        assert_eq!(cg.procs_files(rel), vec![leaf.join("cgroup.procs")]);
        fs::write(
            leaf.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert_eq!(cg.oom_kills(rel), 1);
        fs::write(leaf.join("cpu.stat"), "usage_usec 1500\nuser_usec 1000\n").unwrap();
        assert_eq!(cg.cpu_usage_ns(rel).unwrap(), 1_500_000);
        cg.remove(Path::new("cairn/pod-a")).unwrap();
        assert!(!root.join("cairn/pod-a").exists());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn fake_v1_root() {
        let root = tempdir("v1");
        for c in ["memory", "cpu", "cpuacct", "pids", "unified"] {
            fs::create_dir_all(root.join(c)).unwrap();
        }
        fs::write(root.join("unified/cgroup.controllers"), "").unwrap();
        assert_eq!(detect(&root).unwrap(), CgroupVersion::Hybrid);
        fs::remove_dir_all(root.join("unified")).unwrap();
        assert_eq!(detect(&root).unwrap(), CgroupVersion::V1);
        let cg = CgroupV1::new(&root, CgroupVersion::V1);
        let rel = Path::new("cairn/pod-b/app");
        let res = Resources {
            memory_limit: Some(1 << 20),
            cpu_limit_millis: Some(1500),
            cpu_request_millis: Some(250),
            pids_limit: Some(10),
        };
        cg.create(rel, &res).unwrap();
        let read = |c: &str, f: &str| fs::read_to_string(root.join(c).join(rel).join(f)).unwrap();
        assert_eq!(read("memory", "memory.limit_in_bytes"), "1048576");
        assert_eq!(read("cpu", "cpu.cfs_quota_us"), "150000");
        assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
        assert_eq!(read("cpu", "cpu.shares"), "256");
        assert_eq!(read("pids", "pids.max"), "10");
        assert_eq!(cg.procs_files(rel).len(), 4);
        fs::write(
            root.join("memory").join(rel).join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        assert_eq!(cg.oom_kills(rel), 2);
        cg.remove(Path::new("cairn")).unwrap();
        for c in V1_CONTROLLERS {
            assert!(!root.join(c).join("cairn").exists());
        }
        fs::remove_dir_all(&root).unwrap();
    }
}
