//! The single-threaded side of the runtime: hidden subcommands of the helper
//! binary that create and join namespaces. They run before any async runtime
//! exists, so `unshare`, `setns` and `fork` act on a process with one thread.
//!
//! Processes of a running container:
//! - the *monitor* (`__init`, host PID namespace): joins the sandbox's UTS, IPC
//!   and network namespaces, unshares a PID namespace, forks the container
//!   process, moves it into its cgroup, copies its output into the size-capped
//!   log file, and records the exit status on disk;
//! - the *container process* (PID 1 of the new PID namespace): unshares its
//!   mount namespace, builds the root filesystem, `pivot_root`s, drops
//!   privileges and execs the command, which therefore runs as PID 1.
//!
//! Namespace, mount and root-switch calls go through [`Syscall`] (the kernel's in [`Linux`]), so
//! their order and arguments are unit-tested without root. Must never import anything outside
//! `runtime/`.

use super::caps;
use super::syscall::{Linux, Syscall};
use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{ForkResult, Gid, Pid, Uid};

pub const HOLDER: &str = "__holder";
pub const INIT: &str = "__init";
pub const EXEC: &str = "__exec";
pub const EXEC_STREAM: &str = "__exec_stream";
pub const NETCFG: &str = "__netcfg";
/// The holder's argument, instead of a hostname, for a pod on the host's network.
pub const HOST_NETWORK: &str = "--host-network";

/// Everything the monitor and container process need, written by the
/// runtime as JSON next to the container's other state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitConfig {
    pub holder_pid: i32,
    /// Directory (or host root when `None`) that becomes `/`.
    pub rootfs: Option<PathBuf>,
    /// Empty directory used as the mount point of the new root.
    pub rootfs_mount: PathBuf,
    /// An image's layers under a writable layer: the root is an overlayfs mount (and `rootfs`
    /// is not used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay: Option<Overlay>,
    pub mounts: Vec<BindMount>,
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub no_new_privs: bool,
    pub caps: Vec<u32>,
    pub cgroup_procs: Vec<PathBuf>,
    pub oom_counter: (PathBuf, String),
    pub log_path: PathBuf,
    pub log_max_bytes: u64,
    pub exit_path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Overlay {
    /// Topmost first.
    pub lower: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BindMount {
    pub source: PathBuf,
    /// Absolute path inside the container.
    pub target: String,
    pub read_only: bool,
    pub is_file: bool,
}

/// Written by the monitor when the container process has exited.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExitRecord {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub finished_at_ms: u64,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs a hidden subcommand if the process was started as one. Must be
/// called first thing in `main`, before any thread is spawned.
pub fn helper_main() -> Option<i32> {
    let args: Vec<String> = std::env::args().collect();
    let sub = args.get(1)?.as_str();
    let rest = &args[2..];
    let result = match sub {
        HOLDER => holder(&Linux, rest),
        INIT => monitor(&Linux, rest),
        EXEC => exec(&Linux, rest),
        EXEC_STREAM => exec_stream(&Linux, rest),
        NETCFG => return Some(super::network::netcfg_main(rest)),
        _ => return None,
    };
    Some(match result {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(io::stderr(), "cairn {sub}: {e}");
            126
        }
    })
}

fn ctx<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> io::Result<T> {
    r.map_err(|e| io::Error::other(format!("{what}: {e}")))
}

/// Namespace syscalls fail with EPERM for missing privilege and EINVAL for a
/// namespace type the kernel was built without; say which.
fn ns_ctx<T>(r: nix::Result<T>, what: &str) -> io::Result<T> {
    r.map_err(|e| {
        let why = match e {
            nix::errno::Errno::EPERM => " (missing privilege: CAP_SYS_ADMIN is required)",
            nix::errno::Errno::EINVAL => " (namespace type not supported by this kernel)",
            nix::errno::Errno::ENOSPC | nix::errno::Errno::EUSERS => " (namespace limit reached)",
            _ => "",
        };
        io::Error::other(format!("{what}: {e}{why}"))
    })
}

/// Sandbox holder: owns the pod's UTS, IPC and network namespaces and sleeps
/// until killed. It is not a PID-namespace init (each container has its own
/// PID namespace); it still reaps any child it may acquire.
fn holder(sys: &dyn Syscall, args: &[String]) -> io::Result<i32> {
    holder_namespaces(sys, args)?;
    let mut out = io::stdout();
    out.write_all(b"ready\n")?;
    out.flush()?;
    // Nothing else will be written; the runtime closes its ends of these
    // pipes once the holder is ready.
    if let Ok(devnull) = File::options().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&devnull);
        let _ = nix::unistd::dup2_stderr(&devnull);
    }
    loop {
        match waitpid(None::<Pid>, None) {
            Ok(_) => continue,
            Err(_) => nix::unistd::pause(),
        }
    }
}

/// A host-network pod keeps the host's network and UTS namespaces and gets only its own IPC.
fn holder_namespaces(sys: &dyn Syscall, args: &[String]) -> io::Result<()> {
    let hostname = args
        .first()
        .ok_or_else(|| io::Error::other("hostname argument missing"))?;
    if hostname == HOST_NETWORK {
        return ns_ctx(sys.unshare(CloneFlags::CLONE_NEWIPC), "unshare ipc");
    }
    ns_ctx(
        sys.unshare(CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWNET),
        "unshare uts/ipc/net",
    )?;
    ctx(sys.sethostname(hostname), "sethostname")
}

fn open_ns(pid: i32, kind: &str) -> io::Result<File> {
    let p = format!("/proc/{pid}/ns/{kind}");
    File::open(&p).map_err(|e| io::Error::other(format!("open {p}: {e}")))
}

/// Namespace join order (fixed): uts, ipc, net, then (exec only) pid and
/// mnt. Mount last because joining it changes how `/proc` paths resolve.
fn join_pod_namespaces(sys: &dyn Syscall, holder_pid: i32) -> io::Result<()> {
    let fds = [
        (open_ns(holder_pid, "uts")?, CloneFlags::CLONE_NEWUTS),
        (open_ns(holder_pid, "ipc")?, CloneFlags::CLONE_NEWIPC),
        (open_ns(holder_pid, "net")?, CloneFlags::CLONE_NEWNET),
    ];
    for (f, kind) in &fds {
        ns_ctx(sys.setns(f.as_fd(), *kind), &format!("setns {kind:?}"))?;
    }
    Ok(())
}

fn read_config(args: &[String]) -> io::Result<InitConfig> {
    let path = args
        .first()
        .ok_or_else(|| io::Error::other("config path missing"))?;
    let text = fs::read(path)?;
    serde_json::from_slice(&text).map_err(|e| io::Error::other(format!("{path}: {e}")))
}

fn monitor(sys: &dyn Syscall, args: &[String]) -> io::Result<i32> {
    let cfg = read_config(args)?;
    join_pod_namespaces(sys, cfg.holder_pid)?;
    ns_ctx(sys.unshare(CloneFlags::CLONE_NEWPID), "unshare pid")?;

    let (log_r, log_w) = ctx(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC), "pipe")?;
    let (go_r, go_w) = ctx(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC), "pipe")?;
    let (err_r, err_w) = ctx(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC), "pipe")?;
    let log = LogWriter::open(&cfg.log_path, cfg.log_max_bytes)?;

    // SAFETY: this process is single-threaded (no runtime, no threads have
    // been started), so the child may run arbitrary code after fork.
    let child = match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => {
            drop((log_r, go_w, err_r));
            let code = match container_process(sys, &cfg, log_w, go_r) {
                Ok(never) => match never {},
                Err(e) => {
                    let _ = nix::unistd::write(&err_w, e.to_string().as_bytes());
                    127
                }
            };
            // SAFETY: _exit skips atexit handlers and buffered-stream flushing
            // that belong to the parent.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => return Err(io::Error::other(format!("fork: {e}"))),
    };
    drop((log_w, go_r, err_w));

    // Join the cgroup from outside so that the monitor itself is not
    // charged to the container's memory and pids limits.
    let mut setup_err = None;
    for f in &cfg.cgroup_procs {
        if let Err(e) = fs::write(f, child.as_raw().to_string()) {
            setup_err = Some(format!("join cgroup {}: {e}", f.display()));
            break;
        }
    }
    if setup_err.is_none() {
        let _ = nix::unistd::write(&go_w, b"g");
    }
    drop(go_w);
    // EOF without data means exec succeeded (the pipe is close-on-exec).
    let mut msg = String::new();
    let _ = File::from(err_r).read_to_string(&mut msg);
    if setup_err.is_none() && !msg.is_empty() {
        setup_err = Some(msg);
    }
    let mut out = io::stdout();
    if let Some(e) = setup_err {
        let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
        let _ = waitpid(child, None);
        writeln!(out, "err {}", e.replace('\n', " "))?;
        return Ok(1);
    }
    writeln!(out, "ok {}", child.as_raw())?;
    out.flush()?;
    if let Ok(devnull) = File::options().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&devnull);
        let _ = nix::unistd::dup2_stderr(&devnull);
    }

    log.copy_from(File::from(log_r));
    let status = loop {
        match waitpid(child, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other,
        }
    };
    let (exit_code, signal) = match status {
        Ok(WaitStatus::Exited(_, c)) => (c, None),
        Ok(WaitStatus::Signaled(_, s, _)) => (128 + s as i32, Some(s as i32)),
        _ => (255, None),
    };
    let oom_killed =
        super::cgroup::read_keyed(&cfg.oom_counter.0, &cfg.oom_counter.1).unwrap_or(0) > 0;
    let rec = ExitRecord {
        exit_code,
        signal,
        oom_killed,
        finished_at_ms: now_ms(),
    };
    let tmp = cfg.exit_path.with_extension("tmp");
    fs::write(&tmp, serde_json::to_vec(&rec).map_err(io::Error::other)?)?;
    fs::rename(&tmp, &cfg.exit_path)?;
    Ok(0)
}

/// Appends to the log file, rotating it to `<name>.1` when it would exceed
/// the cap, so at most twice the cap is kept on disk.
struct LogWriter {
    path: PathBuf,
    file: File,
    size: u64,
    max: u64,
}

impl LogWriter {
    fn open(path: &Path, max: u64) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(LogWriter {
            path: path.to_path_buf(),
            file,
            size,
            max: max.max(1024),
        })
    }

    fn write(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            if self.size >= self.max {
                let mut old = self.path.clone().into_os_string();
                old.push(".1");
                fs::rename(&self.path, &old)?;
                self.file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?;
                self.size = 0;
            }
            let n = ((self.max - self.size) as usize).min(buf.len());
            self.file.write_all(&buf[..n])?;
            self.size += n as u64;
            buf = &buf[n..];
        }
        Ok(())
    }

    fn copy_from(mut self, mut src: File) {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match src.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if self.write(&buf[..n]).is_err() {
                        // Keep draining so the container never blocks on a
                        // full pipe when the log disk is unusable.
                        continue;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    }
}

fn mkdir_p(p: &Path) -> io::Result<()> {
    fs::create_dir_all(p).map_err(|e| io::Error::other(format!("mkdir {}: {e}", p.display())))
}

fn ensure_mountpoint(p: &Path, is_file: bool) -> io::Result<()> {
    if p.symlink_metadata().is_ok() {
        return Ok(());
    }
    if is_file {
        if let Some(parent) = p.parent() {
            mkdir_p(parent)?;
        }
        File::create(p).map_err(|e| io::Error::other(format!("create {}: {e}", p.display())))?;
        Ok(())
    } else {
        mkdir_p(p)
    }
}

fn do_mount(
    sys: &dyn Syscall,
    src: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> io::Result<()> {
    sys.mount(src, target, fstype, flags, data).map_err(|e| {
        io::Error::other(format!(
            "mount {} on {} ({}): {e}",
            src.map(|s| s.display().to_string()).unwrap_or_default(),
            target.display(),
            fstype.unwrap_or("bind")
        ))
    })
}

fn bind(sys: &dyn Syscall, src: &Path, target: &Path, read_only: bool) -> io::Result<()> {
    do_mount(
        sys,
        Some(src),
        target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    if read_only {
        do_mount(
            sys,
            None,
            target,
            None,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV,
            None,
        )?;
    }
    Ok(())
}

/// Targets under the container's own tmpfs mounts get their mount points
/// created after those mounts, so nothing is created on the host below them.
fn under_fresh_fs(target: &str) -> bool {
    target.starts_with("/tmp/") || target.starts_with("/dev/")
}

fn inside(root: &Path, abs: &str) -> PathBuf {
    root.join(abs.trim_start_matches('/'))
}

/// Where a mount lands inside `root`: every symlink on the way (a host's /etc/resolv.conf
/// pointing into /run, an image's /var/run pointing at /run) is followed as it will resolve once
/// `root` is `/`, never out of it. Resolving only the last component would let the kernel follow
/// an absolute link in the middle against the host's root, and the mount would land there,
/// outside what the container sees.
fn mount_target(root: &Path, target: &str) -> PathBuf {
    use std::collections::VecDeque;
    use std::ffi::OsString;
    use std::path::Component;
    fn parts(p: &Path) -> Vec<OsString> {
        p.components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                Component::ParentDir => Some(OsString::from("..")),
                _ => None,
            })
            .collect()
    }
    let mut pending: VecDeque<OsString> = parts(Path::new(target)).into();
    let mut resolved = PathBuf::new();
    let mut hops = 0;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        match fs::read_link(root.join(&candidate)) {
            // Bounded, as the kernel bounds link chains (a loop ends here).
            Ok(link) if hops < 40 => {
                hops += 1;
                if link.is_absolute() {
                    resolved = PathBuf::new();
                }
                for p in parts(&link).into_iter().rev() {
                    pending.push_front(p);
                }
            }
            _ => resolved = candidate,
        }
    }
    root.join(resolved)
}

/// Builds the container's root under `cfg.rootfs_mount` and pivots into it.
fn setup_rootfs(sys: &dyn Syscall, cfg: &InitConfig) -> io::Result<()> {
    ns_ctx(sys.unshare(CloneFlags::CLONE_NEWNS), "unshare mnt")?;
    // Nothing done below may propagate back to the host.
    do_mount(
        sys,
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;
    let root = cfg.rootfs_mount.as_path();
    match &cfg.rootfs {
        _ if cfg.overlay.is_some() => {}
        // Non-recursive: only the root filesystem, not the host's other mounts.
        None => do_mount(
            sys,
            Some(Path::new("/")),
            root,
            None,
            MsFlags::MS_BIND,
            None,
        )?,
        Some(dir) => do_mount(
            sys,
            Some(dir),
            root,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?,
    }
    if let Some(o) = &cfg.overlay {
        mount_overlay(sys, o, root)?;
    }
    // Mount points must exist before the root becomes read-only.
    for d in ["proc", "dev", "tmp"] {
        ensure_mountpoint(&root.join(d), false)?;
    }
    for m in cfg.mounts.iter().filter(|m| !under_fresh_fs(&m.target)) {
        ensure_mountpoint(&mount_target(root, &m.target), m.is_file)?;
    }
    // An image's root is writable, into the container's own layer, as with any runtime.
    if cfg.overlay.is_none() {
        do_mount(
            sys,
            None,
            root,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None,
        )?;
    }

    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    do_mount(
        sys,
        Some(Path::new("proc")),
        &root.join("proc"),
        Some("proc"),
        nosuid_nodev_noexec,
        None,
    )?;
    do_mount(
        sys,
        Some(Path::new("tmpfs")),
        &root.join("tmp"),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    setup_dev(sys, &root.join("dev"))?;
    for m in &cfg.mounts {
        let target = if under_fresh_fs(&m.target) {
            inside(root, &m.target)
        } else {
            mount_target(root, &m.target)
        };
        ensure_mountpoint(&target, m.is_file)?;
        bind(sys, &m.source, &target, m.read_only)?;
    }

    ctx(sys.chdir(root), "chdir new root")?;
    // pivot_root(".", ".") stacks the old root on top of the new one; the
    // detach below then removes it without needing a put_old directory.
    let here = Path::new(".");
    ctx(sys.pivot_root(here, here), "pivot_root")?;
    ctx(sys.umount2(here, MntFlags::MNT_DETACH), "detach old root")?;
    ctx(sys.chdir(Path::new("/")), "chdir /")?;
    Ok(())
}

/// Mounts the image's layers with the container's writable layer on `root`.
fn mount_overlay(sys: &dyn Syscall, o: &Overlay, root: &Path) -> io::Result<()> {
    // The options must fit in a page: layers sharing a directory (the image store's) are named
    // relative to it, which the kernel resolves from the working directory.
    let parent = o.lower.first().and_then(|l| l.parent());
    let lower: Vec<String> = match parent {
        Some(p) if o.lower.iter().all(|l| l.parent() == Some(p)) => {
            ctx(sys.chdir(p), "chdir to the image layers")?;
            o.lower
                .iter()
                .map(|l| l.file_name().unwrap_or_default().to_string_lossy().into())
                .collect()
        }
        _ => o.lower.iter().map(|l| l.display().to_string()).collect(),
    };
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        o.upper.display(),
        o.work.display()
    );
    do_mount(
        sys,
        Some(Path::new("overlay")),
        root,
        Some("overlay"),
        MsFlags::empty(),
        Some(&data),
    )
}

fn setup_dev(sys: &dyn Syscall, dev: &Path) -> io::Result<()> {
    do_mount(
        sys,
        Some(Path::new("tmpfs")),
        dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    // Bind-mounting the host's nodes avoids mknod and keeps their exact
    // device numbers and permissions.
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = dev.join(name);
        File::create(&target)?;
        bind(sys, &Path::new("/dev").join(name), &target, false)?;
    }
    let pts = dev.join("pts");
    mkdir_p(&pts)?;
    do_mount(
        sys,
        Some(Path::new("devpts")),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    std::os::unix::fs::symlink("pts/ptmx", dev.join("ptmx"))?;
    let shm = dev.join("shm");
    mkdir_p(&shm)?;
    do_mount(
        sys,
        Some(Path::new("shm")),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )?;
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link))?;
    }
    Ok(())
}

/// Looks `cmd` up in the container's PATH (from its env), as a shell would.
fn resolve_command(cmd: &str, env: &[String]) -> io::Result<CString> {
    let found = if cmd.contains('/') {
        Some(PathBuf::from(cmd))
    } else {
        let path = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        path.split(':').map(|d| Path::new(d).join(cmd)).find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
    };
    let p = found.ok_or_else(|| {
        io::Error::other(format!("exec: {cmd:?}: executable file not found in $PATH"))
    })?;
    CString::new(p.into_os_string().into_encoded_bytes()).map_err(io::Error::other)
}

fn cstrings(v: &[String]) -> io::Result<Vec<CString>> {
    v.iter()
        .map(|s| CString::new(s.as_bytes()).map_err(io::Error::other))
        .collect()
}

/// Identity and privileges, in the only order that works: the bounding set
/// needs CAP_SETPCAP, the id change needs CAP_SETUID/SETGID, and capset must
/// come after setuid (which clears the sets for a non-root uid).
fn drop_privileges(uid: u32, gid: u32, caps_keep: &[u32], no_new_privs: bool) -> io::Result<()> {
    ctx(caps::drop_bounding(caps_keep), "drop bounding capabilities")?;
    ctx(nix::unistd::setgroups(&[Gid::from_raw(gid)]), "setgroups")?;
    ctx(nix::unistd::setgid(Gid::from_raw(gid)), "setgid")?;
    ctx(nix::unistd::setuid(Uid::from_raw(uid)), "setuid")?;
    if uid == 0 {
        ctx(caps::set_process_caps(caps_keep), "capset")?;
    }
    if no_new_privs {
        ctx(nix::sys::prctl::set_no_new_privs(), "no_new_privs")?;
    }
    Ok(())
}

fn exec_command(argv: &[String], env: &[String]) -> io::Result<std::convert::Infallible> {
    let first = argv
        .first()
        .ok_or_else(|| io::Error::other("empty command"))?;
    let path = resolve_command(first, env)?;
    let args = cstrings(argv)?;
    let envs = cstrings(env)?;
    nix::unistd::execve(&path, &args, &envs)
        .map_err(|e| io::Error::other(format!("exec {first}: {e}")))
}

fn container_process(
    sys: &dyn Syscall,
    cfg: &InitConfig,
    log_w: OwnedFd,
    go_r: OwnedFd,
) -> io::Result<std::convert::Infallible> {
    let _ = nix::unistd::setsid();
    let mut go = [0u8; 1];
    if !matches!(nix::unistd::read(&go_r, &mut go), Ok(1)) {
        return Err(io::Error::other("monitor did not release the container"));
    }
    drop(go_r);
    setup_rootfs(sys, cfg)?;
    let devnull = File::open("/dev/null")?;
    ctx(nix::unistd::dup2_stdin(&devnull), "stdin")?;
    ctx(nix::unistd::dup2_stdout(&log_w), "stdout")?;
    ctx(nix::unistd::dup2_stderr(&log_w), "stderr")?;
    drop(log_w);
    nix::unistd::chdir(cfg.cwd.as_str())
        .map_err(|e| io::Error::other(format!("workingDir {}: {e}", cfg.cwd)))?;
    drop_privileges(cfg.uid, cfg.gid, &cfg.caps, cfg.no_new_privs)?;
    exec_command(&cfg.argv, &cfg.env)
}

/// Joins a running container from outside: its cgroup first (so that every process forked from
/// here on is charged to it), then its namespaces, after which the root and working directory
/// are the container's own.
fn enter_container(sys: &dyn Syscall, cfg: &InitConfig, pid: i32) -> io::Result<()> {
    // Open every namespace before joining any: after joining the mount
    // namespace /proc/<pid> no longer names the same process.
    let order = [
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ];
    let fds = order
        .iter()
        .map(|(k, f)| open_ns(pid, k).map(|fd| (fd, *f)))
        .collect::<io::Result<Vec<_>>>()?;
    for f in &cfg.cgroup_procs {
        fs::write(f, std::process::id().to_string())
            .map_err(|e| io::Error::other(format!("join cgroup {}: {e}", f.display())))?;
    }
    for (fd, kind) in &fds {
        ns_ctx(sys.setns(fd.as_fd(), *kind), &format!("setns {kind:?}"))?;
    }
    Ok(())
}

fn exit_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, c) => Some(c),
        WaitStatus::Signaled(_, s, _) => Some(128 + s as i32),
        _ => None,
    }
}

fn wait_for(child: Pid) -> io::Result<i32> {
    loop {
        match waitpid(child, None) {
            Ok(status) => {
                if let Some(code) = exit_code(status) {
                    return Ok(code);
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(io::Error::other(format!("wait: {e}"))),
        }
    }
}

fn pid_arg(args: &[String]) -> io::Result<i32> {
    args.get(1)
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| io::Error::other("container pid missing"))
}

/// `__exec <config> <container pid> <argv...>`: runs a command inside a
/// running container with its namespaces, cgroup, identity and privileges.
fn exec(sys: &dyn Syscall, args: &[String]) -> io::Result<i32> {
    let cfg = read_config(args)?;
    let pid = pid_arg(args)?;
    let argv = &args[2..];
    enter_container(sys, &cfg, pid)?;
    // SAFETY: single-threaded process; the child only execs or exits.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => {
            let r = (|| -> io::Result<std::convert::Infallible> {
                nix::unistd::chdir(cfg.cwd.as_str())
                    .or_else(|_| nix::unistd::chdir("/"))
                    .map_err(io::Error::other)?;
                drop_privileges(cfg.uid, cfg.gid, &cfg.caps, cfg.no_new_privs)?;
                exec_command(argv, &cfg.env)
            })();
            let Err(e) = r;
            let _ = writeln!(io::stderr(), "cairn exec: {e}");
            // SAFETY: see the monitor's child.
            unsafe { libc::_exit(127) }
        }
        Ok(ForkResult::Parent { child }) => wait_for(child),
        Err(e) => Err(io::Error::other(format!("fork: {e}"))),
    }
}

/// Which of a streaming exec's standard streams are wired to the caller, as the helper's third
/// argument spells them: `i` stdin, `o` stdout, `e` stderr, `t` a terminal (stdout and stderr
/// both go to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Streams {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl Streams {
    pub fn encode(self) -> String {
        let mut s = String::from("-");
        for (on, c) in [
            (self.stdin, 'i'),
            (self.stdout, 'o'),
            (self.stderr && !self.tty, 'e'),
            (self.tty, 't'),
        ] {
            if on {
                s.push(c);
            }
        }
        s
    }

    fn decode(s: &str) -> Streams {
        Streams {
            stdin: s.contains('i'),
            stdout: s.contains('o'),
            stderr: s.contains('e'),
            tty: s.contains('t'),
        }
    }
}

/// What the streaming exec helper's single control message starts with: the process runs, and
/// the caller's ends of its streams ride along (stdin, stdout, stderr as asked, or the
/// terminal's master side alone).
pub const STREAM_OK: &str = "ok";
/// The command could not be started; the rest of the message says why.
pub const STREAM_ERR: &str = "err ";

/// `__exec_stream <config> <container pid> <streams> <argv...>`, its standard input a Unix
/// socket to the runtime: like `__exec`, but the command's standard streams are pipes (or a
/// terminal made in the container's own devpts) whose other ends are passed back over the
/// socket, so they can be read and written as the command runs. The helper's exit code is the
/// command's; if the helper is killed the command is too (its parent-death signal).
fn exec_stream(sys: &dyn Syscall, args: &[String]) -> io::Result<i32> {
    use nix::fcntl::OFlag;
    let cfg = read_config(args)?;
    let pid = pid_arg(args)?;
    let streams = Streams::decode(args.get(2).map(String::as_str).unwrap_or(""));
    let argv = &args[3..];
    if argv.is_empty() {
        return Err(io::Error::other("empty command"));
    }
    enter_container(sys, &cfg, pid)?;
    let cloexec = OFlag::O_CLOEXEC;
    // The command's ends (stdin, stdout, stderr) and the caller's.
    let mut theirs: Vec<OwnedFd> = Vec::new();
    let (child_in, child_out, child_err): (OwnedFd, OwnedFd, OwnedFd);
    if streams.tty {
        // Made after joining the mount namespace, so the terminal belongs to the container's
        // devpts and is named there (`tty` prints a path that exists inside).
        let master = ctx(
            nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | cloexec),
            "open /dev/ptmx",
        )?;
        ctx(nix::pty::grantpt(&master), "grantpt")?;
        ctx(nix::pty::unlockpt(&master), "unlockpt")?;
        let name = ctx(nix::pty::ptsname_r(&master), "ptsname")?;
        let slave: OwnedFd = ctx(
            nix::fcntl::open(
                name.as_str(),
                OFlag::O_RDWR | OFlag::O_NOCTTY | cloexec,
                nix::sys::stat::Mode::empty(),
            ),
            &format!("open {name}"),
        )?;
        child_in = slave.try_clone()?;
        child_out = slave.try_clone()?;
        child_err = slave;
        theirs.push(OwnedFd::from(master));
    } else {
        let null = || -> io::Result<OwnedFd> {
            Ok(OwnedFd::from(
                File::options().read(true).write(true).open("/dev/null")?,
            ))
        };
        child_in = if streams.stdin {
            let (r, w) = ctx(nix::unistd::pipe2(cloexec), "pipe")?;
            theirs.push(w);
            r
        } else {
            null()?
        };
        let mut out = |on: bool| -> io::Result<OwnedFd> {
            if on {
                let (r, w) = ctx(nix::unistd::pipe2(cloexec), "pipe")?;
                theirs.push(r);
                Ok(w)
            } else {
                null()
            }
        };
        child_out = out(streams.stdout)?;
        child_err = out(streams.stderr)?;
    }
    let (err_r, err_w) = ctx(nix::unistd::pipe2(cloexec), "pipe")?;
    // SAFETY: single-threaded process; the child only execs or exits.
    let child = match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => {
            // As the child sees it: 0, the helper being outside its PID namespace.
            let parent = nix::unistd::getppid();
            drop(err_r);
            let r = stream_child(
                &cfg,
                streams.tty,
                parent,
                [child_in, child_out, child_err],
                argv,
            );
            let Err(e) = r;
            let _ = nix::unistd::write(&err_w, e.to_string().as_bytes());
            // SAFETY: see the monitor's child.
            unsafe { libc::_exit(127) }
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => return Err(io::Error::other(format!("fork: {e}"))),
    };
    drop((child_in, child_out, child_err, err_w));
    // EOF without data means exec succeeded (the pipe is close-on-exec).
    let mut msg = String::new();
    let _ = File::from(err_r).read_to_string(&mut msg);
    let control = io::stdin();
    if !msg.is_empty() {
        let _ = wait_for(child);
        send_control(
            &control,
            format!("{STREAM_ERR}{}", msg.replace('\n', " ")),
            &[],
        )?;
        return Ok(127);
    }
    let raw: Vec<i32> = theirs.iter().map(|f| f.as_raw_fd()).collect();
    send_control(&control, STREAM_OK.to_string(), &raw)?;
    drop(theirs);
    wait_for(child)
}

fn send_control(sock: &io::Stdin, text: String, fds: &[i32]) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
    let line = format!("{text}\n");
    let iov = [io::IoSlice::new(line.as_bytes())];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    ctx(
        sendmsg::<UnixAddr>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None),
        "send to the runtime",
    )?;
    Ok(())
}

/// The command's side of a streaming exec: a session of its own (with the terminal as its
/// controlling one), its streams on 0, 1 and 2, then the container's identity.
fn stream_child(
    cfg: &InitConfig,
    tty: bool,
    parent: Pid,
    [stdin, stdout, stderr]: [OwnedFd; 3],
    argv: &[String],
) -> io::Result<std::convert::Infallible> {
    ctx(nix::unistd::setsid(), "setsid")?;
    if tty {
        // SAFETY: TIOCSCTTY takes an integer argument and touches no memory.
        let r = unsafe { libc::ioctl(stdin.as_raw_fd(), libc::TIOCSCTTY, 0) };
        if r != 0 {
            return Err(io::Error::other(format!(
                "set controlling terminal: {}",
                io::Error::last_os_error()
            )));
        }
    }
    ctx(nix::unistd::dup2_stdin(&stdin), "stdin")?;
    ctx(nix::unistd::dup2_stdout(&stdout), "stdout")?;
    ctx(nix::unistd::dup2_stderr(&stderr), "stderr")?;
    drop((stdin, stdout, stderr));
    nix::unistd::chdir(cfg.cwd.as_str())
        .or_else(|_| nix::unistd::chdir("/"))
        .map_err(io::Error::other)?;
    drop_privileges(cfg.uid, cfg.gid, &cfg.caps, cfg.no_new_privs)?;
    // After the identity change, which clears it; the check closes the race with a helper
    // that died before the signal was armed (the child would have been reparented).
    ctx(
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL),
        "parent-death signal",
    )?;
    if nix::unistd::getppid() != parent {
        return Err(io::Error::other("the exec helper went away"));
    }
    // The helper, a Rust program, ignores SIGPIPE; a command must not inherit that.
    // SAFETY: restoring the default disposition installs no handler.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        );
    }
    exec_command(argv, &cfg.env)
}

/// Makes sure the state directory a config points into is not world-readable.
pub fn private_dir(p: &Path) -> io::Result<()> {
    fs::create_dir_all(p)?;
    fs::set_permissions(p, fs::Permissions::from_mode(0o711))
}

#[cfg(test)]
mod tests {
    use super::super::syscall::testing::{Call, Recorder};
    use super::*;

    fn config(dir: &Path) -> InitConfig {
        let data = dir.join("data");
        fs::create_dir_all(&data).unwrap();
        let root = dir.join("root");
        fs::create_dir_all(&root).unwrap();
        InitConfig {
            holder_pid: 0,
            rootfs: None,
            rootfs_mount: root,
            overlay: None,
            mounts: vec![
                BindMount {
                    source: data.clone(),
                    target: "/data".into(),
                    read_only: true,
                    is_file: false,
                },
                BindMount {
                    source: data,
                    target: "/tmp/scratch".into(),
                    read_only: false,
                    is_file: false,
                },
            ],
            argv: vec!["/bin/true".into()],
            env: Vec::new(),
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            no_new_privs: true,
            caps: Vec::new(),
            cgroup_procs: Vec::new(),
            oom_counter: (PathBuf::new(), String::new()),
            log_path: PathBuf::new(),
            log_max_bytes: 0,
            exit_path: PathBuf::new(),
        }
    }

    fn mount_target_of(call: &Call) -> Option<&Path> {
        match call {
            Call::Mount { target, .. } => Some(target),
            _ => None,
        }
    }

    #[test]
    fn the_root_is_built_in_a_private_mount_namespace_then_pivoted_into() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let root = cfg.rootfs_mount.clone();
        let sys = Recorder::default();
        setup_rootfs(&sys, &cfg).unwrap();
        let calls = sys.calls();

        assert_eq!(calls[0], Call::Unshare(CloneFlags::CLONE_NEWNS));
        assert!(matches!(&calls[1], Call::Mount { target, flags, .. }
            if target == Path::new("/") && *flags == MsFlags::MS_REC | MsFlags::MS_PRIVATE));
        let position = |pred: &dyn Fn(&Call) -> bool| calls.iter().position(pred).unwrap();
        let read_only_root = position(&|c| {
            matches!(c, Call::Mount { target, flags, .. }
                if *target == root && flags.contains(MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY))
        });
        let proc = position(&|c| mount_target_of(c) == Some(&root.join("proc")));
        let dev = position(&|c| mount_target_of(c) == Some(&root.join("dev")));
        let data = position(&|c| mount_target_of(c) == Some(&root.join("data")));
        let scratch = position(&|c| mount_target_of(c) == Some(&root.join("tmp/scratch")));
        assert!(read_only_root < proc && proc < dev && dev < data && data < scratch);
        // The user's read-only bind is remounted read-only right after it is made.
        assert!(matches!(&calls[data + 1], Call::Mount { target, flags, .. }
            if *target == root.join("data") && flags.contains(MsFlags::MS_RDONLY)));
        let here = PathBuf::from(".");
        assert_eq!(
            calls[calls.len() - 4..],
            [
                Call::Chdir(root.clone()),
                Call::PivotRoot(here.clone(), here.clone()),
                Call::Umount(here, MntFlags::MNT_DETACH),
                Call::Chdir(PathBuf::from("/")),
            ]
        );
        // Mount points were made inside the new root, not on the host.
        for made in [
            "proc",
            "dev",
            "tmp",
            "data",
            "dev/pts",
            "dev/shm",
            "tmp/scratch",
        ] {
            assert!(root.join(made).is_dir(), "{made}");
        }
    }

    #[test]
    fn an_image_root_is_a_writable_overlay_of_its_layers() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        let root = cfg.rootfs_mount.clone();
        let layers = Path::new("/var/lib/cairn/agent/images/layers");
        cfg.overlay = Some(Overlay {
            lower: vec![layers.join("top"), layers.join("base")],
            upper: dir.path().join("upper"),
            work: dir.path().join("work"),
        });
        let sys = Recorder::default();
        setup_rootfs(&sys, &cfg).unwrap();
        let calls = sys.calls();
        let at = calls
            .iter()
            .position(|c| matches!(c, Call::Mount { fstype: Some(t), .. } if t == "overlay"))
            .unwrap();
        assert_eq!(calls[at - 1], Call::Chdir(layers.to_path_buf()));
        let Call::Mount { target, data, .. } = &calls[at] else {
            unreachable!()
        };
        assert_eq!(*target, root);
        let upper = dir.path().join("upper");
        let work = dir.path().join("work");
        assert_eq!(
            data.as_deref(),
            Some(
                format!(
                    "lowerdir=top:base,upperdir={},workdir={}",
                    upper.display(),
                    work.display()
                )
                .as_str()
            )
        );
        // Nothing bind-mounts another root over it, and it stays writable.
        assert!(!calls
            .iter()
            .any(|c| matches!(c, Call::Mount { target, flags, .. }
            if *target == root && flags.intersects(MsFlags::MS_BIND | MsFlags::MS_RDONLY))));
    }

    #[test]
    fn a_refused_unshare_names_the_missing_privilege_and_mounts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let sys = Recorder {
            fail: Some((|c| matches!(c, Call::Unshare(_)), nix::errno::Errno::EPERM)),
            ..Recorder::default()
        };
        let err = setup_rootfs(&sys, &config(dir.path())).unwrap_err();
        assert!(err.to_string().contains("CAP_SYS_ADMIN"), "{err}");
        assert_eq!(sys.calls().len(), 1);
    }

    #[test]
    fn a_mount_on_a_symlink_lands_where_it_points_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        let root = cfg.rootfs_mount.clone();
        fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink("../run/resolve/stub.conf", root.join("etc/resolv.conf"))
            .unwrap();
        std::os::unix::fs::symlink("/etc/../../../outside", root.join("etc/hosts")).unwrap();
        // A directory on the way that is an absolute link, as many images' /var/run is.
        fs::create_dir_all(root.join("var")).unwrap();
        std::os::unix::fs::symlink("/run", root.join("var/run")).unwrap();
        cfg.mounts = ["/etc/resolv.conf", "/etc/hosts", "/var/run/secrets/sa"]
            .iter()
            .map(|t| BindMount {
                source: dir.path().join("data"),
                target: t.to_string(),
                read_only: true,
                is_file: !t.ends_with("/sa"),
            })
            .collect();
        let sys = Recorder::default();
        setup_rootfs(&sys, &cfg).unwrap();
        let targets: Vec<PathBuf> = sys
            .calls()
            .iter()
            .filter_map(|c| mount_target_of(c).map(Path::to_path_buf))
            .collect();
        let resolv = root.join("run/resolve/stub.conf");
        assert!(targets.contains(&resolv) && resolv.is_file());
        assert!(targets.contains(&root.join("outside")));
        assert!(!dir.path().join("outside").exists());
        let secrets = root.join("run/secrets/sa");
        assert!(
            targets.contains(&secrets) && secrets.is_dir(),
            "{targets:?}"
        );
    }

    #[test]
    fn a_host_network_holder_keeps_the_hosts_network_and_name() {
        let sys = Recorder::default();
        holder_namespaces(&sys, &[HOST_NETWORK.to_string()]).unwrap();
        assert_eq!(sys.calls(), [Call::Unshare(CloneFlags::CLONE_NEWIPC)]);
        let sys = Recorder::default();
        holder_namespaces(&sys, &["web".to_string()]).unwrap();
        assert_eq!(
            sys.calls()[0],
            Call::Unshare(
                CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWNET
            )
        );
    }

    #[test]
    fn pod_namespaces_are_joined_in_a_fixed_order() {
        let sys = Recorder::default();
        join_pod_namespaces(&sys, std::process::id() as i32).unwrap();
        assert_eq!(
            sys.calls(),
            [
                Call::Setns(CloneFlags::CLONE_NEWUTS),
                Call::Setns(CloneFlags::CLONE_NEWIPC),
                Call::Setns(CloneFlags::CLONE_NEWNET),
            ]
        );
    }

    #[test]
    fn a_failed_mount_says_what_was_mounted_where() {
        let dir = tempfile::tempdir().unwrap();
        let sys = Recorder {
            fail: Some((
                |c| matches!(c, Call::Mount { fstype: Some(t), .. } if t == "proc"),
                nix::errno::Errno::EACCES,
            )),
            ..Recorder::default()
        };
        let err = setup_rootfs(&sys, &config(dir.path())).unwrap_err();
        assert!(err.to_string().contains("(proc)"), "{err}");
        assert!(!sys.calls().iter().any(|c| matches!(c, Call::PivotRoot(..))));
    }
}
