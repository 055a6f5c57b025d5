//! Containers in a sandbox: their environment and root filesystem, the init config the helper's
//! monitor and container process read, starting, waiting for, stopping and exec'ing into them.
//!
//! Must never import anything outside `runtime/`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt};

use super::caps;
use super::cgroup::Resources;
use super::init::{self, BindMount, InitConfig, Overlay};
use super::records::{
    alive, kill, proc_start_time, read_json, write_json, ContainerRecord, ContainerState,
    ContainerStatus, ExecOutput, PodRecord,
};
use super::spec;
use super::spec::SpecError;
use super::{ioc, Result, Runtime, RuntimeError};

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub(super) fn container_resources(c: &spec::Container, default_pids: Option<u64>) -> Resources {
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

/// The container's writable layer over an image, and overlayfs' work directory beside it.
fn writable_layer(cdir: &Path) -> (PathBuf, PathBuf) {
    (cdir.join("overlay/upper"), cdir.join("overlay/work"))
}

impl Runtime {
    pub(super) fn resolve_env(&self, rec: &PodRecord, c: &spec::Container) -> Result<Vec<String>> {
        let mut env: Vec<String> = vec![
            DEFAULT_PATH.to_string(),
            format!("HOSTNAME={}", self.hostname_of(rec)),
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

    /// The hostname the sandbox was given (the host's, for a host-network pod).
    fn hostname_of(&self, rec: &PodRecord) -> String {
        fs::read_to_string(self.pod_dir(rec.pod.name()).join("etc/hostname"))
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| rec.pod.hostname().to_string())
    }

    /// Image `""` is the host root; a directory is used as is; a tarball is
    /// unpacked once into the container's state directory.
    pub(super) async fn rootfs_for(&self, image: &str, cdir: &Path) -> Result<Option<PathBuf>> {
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

    pub(super) async fn init_config(
        &self,
        rec: &PodRecord,
        c: &spec::Container,
    ) -> Result<InitConfig> {
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
        if let Some(path) = &c.termination_message_path {
            mounts.push(BindMount {
                source: cdir.join("termination-log"),
                target: path.clone(),
                read_only: false,
                is_file: true,
            });
        }
        if rec.pod.spec.dns_config.is_some() {
            mounts.push(BindMount {
                source: pdir.join("etc/resolv.conf"),
                target: "/etc/resolv.conf".into(),
                read_only: true,
                is_file: true,
            });
        }
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
        let (rootfs, overlay) = if c.image_layers.is_empty() {
            (self.rootfs_for(&c.image, &cdir).await?, None)
        } else {
            let layer = |l: &String| -> Result<PathBuf> {
                let p = PathBuf::from(l);
                if p.is_dir() {
                    Ok(p)
                } else {
                    Err(RuntimeError::NotFound(format!(
                        "image layer {l} of container {}",
                        c.name
                    )))
                }
            };
            let lower = c.image_layers.iter().map(layer).collect::<Result<_>>()?;
            let (upper, work) = writable_layer(&cdir);
            (None, Some(Overlay { lower, upper, work }))
        };
        Ok(InitConfig {
            holder_pid: rec.holder_pid,
            rootfs,
            rootfs_mount: cdir.join("rootfs"),
            overlay,
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
        // Each run starts with an empty message, writable whatever user the container runs as.
        let message_file = c
            .termination_message_path
            .as_ref()
            .map(|_| cdir.join("termination-log"));
        if let Some(f) = &message_file {
            fs::write(f, b"").map_err(ioc("create termination-log"))?;
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(f, fs::Permissions::from_mode(0o666))
                .map_err(ioc("chmod termination-log"))?;
        }
        if !c.image_layers.is_empty() {
            // Every run starts from the image, as a new container does: the last run's writes go.
            let (upper, work) = writable_layer(&cdir);
            if let Some(dir) = upper.parent() {
                if dir.exists() {
                    fs::remove_dir_all(dir).map_err(ioc("remove the old writable layer"))?;
                }
            }
            for d in [&upper, &work] {
                fs::create_dir_all(d).map_err(ioc("create the writable layer"))?;
            }
        }
        let cg = self.container_cgroup(pod, container);
        self.cgroups
            .create(&cg, &container_resources(&c, self.cfg.default_pids_limit))?;
        let cfg = self.init_config(&rec, &c).await?;
        let cfg_path = cdir.join("init.json");
        write_json(&cfg_path, &cfg)?;

        let mut child = self.spawn_helper(init::INIT, cfg_path.as_os_str())?;
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
            message_file,
            fallback_to_logs: c.termination_message_fallback_to_logs,
        };
        write_json(&cdir.join("state.json"), &cr)?;
        tracing::info!(pod, container, pid, "container started");
        self.container_status(pod, container)
    }

    pub(super) async fn wait_exit(
        &self,
        pod: &str,
        container: &str,
        timeout: Duration,
    ) -> Result<bool> {
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
}
