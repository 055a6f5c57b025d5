//! What the runtime keeps on disk about pods and containers, and the statuses read from it: a
//! pod's record (spec, sandbox holder, network, cgroup), each container's record (its processes,
//! guarded against PID reuse) and exit, written atomically as JSON, so a new runtime instance
//! sees what an earlier one started.
//!
//! Must never import anything outside `runtime/`.

use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::init::ExitRecord;
use super::network::{NetworkConfig, PodNetwork};
use super::spec::{ConfigMaps, Pod};
use super::{ioc, Result, Runtime, RuntimeError};

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
    /// Of an exited run: what it wrote to its termination message path (or, when so asked, its
    /// log's tail after a failure).
    pub message: Option<String>,
}

/// The kubelet's caps on a termination message: 4096 bytes from the file, or the last 80 lines
/// and 2048 bytes of the log.
const MESSAGE_MAX: usize = 4096;
const LOG_MESSAGE_LINES: usize = 80;
const LOG_MESSAGE_MAX: usize = 2048;

/// The last `max` bytes of `data` as text, cut at a character boundary.
fn tail_text(data: &[u8], max: usize) -> String {
    let s = String::from_utf8_lossy(&data[data.len().saturating_sub(max)..]).into_owned();
    s.trim_start_matches('\u{fffd}').to_string()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodStatus {
    pub name: String,
    pub ip: Option<Ipv4Addr>,
    pub sandbox_running: bool,
    pub holder_pid: i32,
    pub created_at_ms: u64,
    pub init_containers: Vec<ContainerStatus>,
    pub containers: Vec<ContainerStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct PodRecord {
    pub(super) pod: Pod,
    pub(super) config_maps: ConfigMaps,
    pub(super) holder_pid: i32,
    pub(super) holder_start: u64,
    pub(super) network: Option<PodNetwork>,
    pub(super) network_config: Option<NetworkConfig>,
    pub(super) cgroup: PathBuf,
    /// Absolute directories of the pod cgroup as created. On v1 they depend
    /// on the creating process's own cgroup, so removal must not recompute
    /// them.
    #[serde(default)]
    pub(super) cgroup_dirs: Vec<PathBuf>,
    pub(super) created_at_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ContainerRecord {
    pub(super) pid: i32,
    pub(super) pid_start: u64,
    pub(super) started_at_ms: u64,
    /// The monitor outlives the container process by the time it takes to
    /// reap it, drain its log and write the exit record; while it runs, a
    /// dead container process means "exit not recorded yet", not "lost".
    #[serde(default)]
    pub(super) monitor_pid: i32,
    #[serde(default)]
    pub(super) monitor_start: u64,
    /// The host file bind-mounted at the termination message path, if any.
    #[serde(default)]
    pub(super) message_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) fallback_to_logs: bool,
}

impl ContainerRecord {
    /// While either process lives, the exit is still to come or still being
    /// recorded; only when both are gone without a record is it lost.
    pub(super) fn running(&self) -> bool {
        alive(self.pid, self.pid_start) || alive(self.monitor_pid, self.monitor_start)
    }
}

/// Start time of a live, non-zombie process (guards against PID reuse).
pub(super) fn proc_start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    if matches!(fields.first(), Some(&"Z") | Some(&"X")) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

pub(super) fn alive(pid: i32, start: u64) -> bool {
    pid > 0 && proc_start_time(pid) == Some(start)
}

pub(super) fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let data = serde_json::to_vec_pretty(v)
        .map_err(|e| ioc(path.display().to_string())(io::Error::other(e)))?;
    fs::write(&tmp, data).map_err(ioc(format!("write {}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(ioc(format!("rename {}", path.display())))
}

pub(super) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| ioc(format!("parse {}", path.display()))(io::Error::other(e))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ioc(format!("read {}", path.display()))(e)),
    }
}

pub(super) fn kill(pid: i32, sig: nix::sys::signal::Signal) {
    if pid > 0 {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

impl Runtime {
    pub(super) fn load(&self, pod: &str) -> Result<PodRecord> {
        read_json(&self.pod_dir(pod).join("pod.json"))?
            .ok_or_else(|| RuntimeError::NotFound(format!("pod {pod}")))
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
                message: None,
            });
        };
        let exit: Option<ExitRecord> = read_json(&cdir.join("exit.json"))?;
        let mut message = None;
        let (state, finished) = match exit {
            Some(x) => {
                message = cr
                    .message_file
                    .as_ref()
                    .and_then(|f| fs::read(f).ok())
                    .map(|d| String::from_utf8_lossy(&d[..d.len().min(MESSAGE_MAX)]).into_owned())
                    .filter(|m| !m.is_empty());
                if message.is_none() && cr.fallback_to_logs && x.exit_code != 0 {
                    message = self
                        .logs(pod, container, Some(LOG_MESSAGE_LINES))
                        .ok()
                        .map(|l| tail_text(&l, LOG_MESSAGE_MAX))
                        .filter(|m| !m.is_empty());
                }
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
            message,
        })
    }

    pub(super) fn pod_status(&self, rec: &PodRecord) -> Result<PodStatus> {
        let statuses = |cs: &[super::spec::Container]| {
            cs.iter()
                .map(|c| self.container_status(rec.pod.name(), &c.name))
                .collect::<Result<Vec<_>>>()
        };
        let containers = statuses(&rec.pod.spec.containers)?;
        let init_containers = statuses(&rec.pod.spec.init_containers)?;
        Ok(PodStatus {
            name: rec.pod.name().to_string(),
            ip: rec.network.as_ref().map(|n| n.ip),
            sandbox_running: alive(rec.holder_pid, rec.holder_start),
            holder_pid: rec.holder_pid,
            created_at_ms: rec.created_at_ms,
            init_containers,
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
            message_file: None,
            fallback_to_logs: false,
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
}
