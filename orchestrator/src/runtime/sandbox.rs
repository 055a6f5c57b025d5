//! The pod sandbox: the holder process that owns the pod's UTS, IPC and network namespaces, the
//! pod cgroup, network and volumes; running a whole pod; stopping and removing it.
//!
//! Must never import anything outside `runtime/`.

use std::fs;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt};

use super::cgroup::{self, Resources};
use super::container::container_resources;
use super::init;
use super::network::{self, NetworkConfig};
use super::records::{alive, kill, proc_start_time, write_json, PodRecord, PodStatus};
use super::spec::{ConfigMaps, Pod};
use super::{ioc, Result, Runtime, RuntimeError};

/// Sums a per-container quantity for the pod cgroup; `None` if any container
/// is unlimited (then the pod as a whole is too).
pub(super) fn sum_all(values: impl Iterator<Item = Option<u64>>) -> Option<u64> {
    values.sum::<Option<u64>>()
}

/// The pod's share of one resource: the app containers' sum or the largest init container's,
/// whichever is larger; `None` (unlimited) if any container is.
fn pod_total(
    app: &[Resources],
    init: &[Resources],
    f: impl Fn(&Resources) -> Option<u64>,
) -> Option<u64> {
    let sum = sum_all(app.iter().map(&f))?;
    init.iter()
        .map(&f)
        .try_fold(sum, |acc, v| v.map(|v| acc.max(v)))
}

impl Runtime {
    pub(super) fn ipam(&self, net: &NetworkConfig) -> Result<network::Ipam> {
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

    pub(super) async fn create_sandbox_inner(
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
        let host_network = pod.spec.host_network;
        let hostname = if host_network {
            // The host's UTS namespace is shared too, as the kubelet does for host-network pods.
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default()
        } else {
            pod.hostname().to_string()
        };
        fs::write(etc.join("hostname"), format!("{hostname}\n")).map_err(ioc("write hostname"))?;
        if let Some(dns) = &pod.spec.dns_config {
            fs::write(etc.join("resolv.conf"), dns.resolv_conf())
                .map_err(ioc("write resolv.conf"))?;
        }

        let default_pids = self.cfg.default_pids_limit;
        let per = |cs: &[super::spec::Container]| -> Vec<Resources> {
            cs.iter()
                .map(|c| container_resources(c, default_pids))
                .collect()
        };
        let (app, init) = (per(&pod.spec.containers), per(&pod.spec.init_containers));
        // Init containers run alone, before the app containers: the pod needs the larger of the
        // biggest init container and the app containers together, as Kubernetes sizes it.
        let pod_res = Resources {
            memory_limit: pod_total(&app, &init, |r| r.memory_limit),
            cpu_limit_millis: pod_total(&app, &init, |r| r.cpu_limit_millis),
            cpu_request_millis: pod_total(&app, &init, |r| r.cpu_request_millis),
            pids_limit: pod_total(&app, &init, |r| r.pids_limit),
        };
        self.cgroups.create(&cg, &pod_res)?;

        let holder_arg = if host_network {
            init::HOST_NETWORK
        } else {
            pod.hostname()
        };
        let mut child = self.spawn_helper(init::HOLDER, holder_arg.as_ref())?;
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
            _ if host_network => rec.network_config = None,
            Some(net) => {
                let ipam = self.ipam(net)?;
                rec.network =
                    Some(network::attach_pod(net, &ipam, name, pid, &self.cfg.helper).await?);
            }
            None => network::loopback_only(pid, &self.cfg.helper).await?,
        }
        fs::write(etc.join("hosts"), hosts_file(pod, rec.network.as_ref()))
            .map_err(ioc("write hosts"))?;
        write_json(&dir.join("pod.json"), &rec)?;
        tracing::info!(pod = %name, holder = pid, ip = ?rec.network.as_ref().map(|n| n.ip), "sandbox created");
        self.pod_status(&rec)
    }

    /// Creates the sandbox and starts every app container in spec order (init containers are
    /// the caller's to sequence).
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

    /// Stops all containers (in parallel) and the sandbox holder. `grace`
    /// defaults to the pod's terminationGracePeriodSeconds (30 s if unset).
    pub async fn stop_pod(&self, pod: &str, grace: Option<Duration>) -> Result<PodStatus> {
        let rec = self.load(pod)?;
        let grace = grace.unwrap_or_else(|| {
            Duration::from_secs(rec.pod.spec.termination_grace_period_seconds.unwrap_or(30))
        });
        let stops = rec
            .pod
            .all_containers()
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
                super::volumes::unmount_files(&dir);
                return remove_state_dir(&dir);
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
        super::volumes::unmount_files(&dir);
        remove_state_dir(&dir)?;
        tracing::info!(pod, "pod removed");
        Ok(())
    }
}

/// Removal is idempotent: a state directory another removal already took is removed.
fn remove_state_dir(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(ioc(format!("remove {}", dir.display()))(e))
        }
        _ => Ok(()),
    }
}

/// The pod's /etc/hosts: the host's own for a host-network pod, otherwise localhost and the pod's
/// address under its hostname (and its fully qualified name when it has a domain); then its
/// host aliases.
fn hosts_file(pod: &Pod, net: Option<&network::PodNetwork>) -> String {
    let mut out;
    if pod.spec.host_network {
        out = fs::read_to_string("/etc/hosts").unwrap_or_default();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
    } else {
        out = String::from(
            "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n\
             ::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n\
             fe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
        );
        let ip = net.map_or_else(|| "127.0.1.1".to_string(), |n| n.ip.to_string());
        let host = pod.hostname();
        match &pod.spec.host_domain {
            Some(d) => out.push_str(&format!("{ip}\t{host}.{d}\t{host}\n")),
            None => out.push_str(&format!("{ip}\t{host}\n")),
        }
    }
    if !pod.spec.host_aliases.is_empty() {
        out.push_str("\n# Entries added by HostAliases.\n");
        for a in &pod.spec.host_aliases {
            out.push_str(&format!("{}\t{}\n", a.ip, a.hostnames.join("\t")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: &str) -> Pod {
        Pod::from_yaml(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p-1}}\nspec:\n  containers: \
             [{{name: c, command: [x]}}]\n{spec}"
        ))
        .unwrap()
    }

    #[test]
    fn hosts_name_the_pod_by_its_hostname_and_domain() {
        let net = network::PodNetwork {
            ip: std::net::Ipv4Addr::new(10, 244, 1, 7),
            prefix: 24,
            gateway: std::net::Ipv4Addr::new(10, 244, 1, 1),
            host_veth: "v".into(),
        };
        let h = hosts_file(
            &pod(
                "  hostname: web-0\n  hostDomain: web.default.svc.cluster.local\n  \
                  hostAliases: [{ip: 10.1.2.3, hostnames: [a, b]}]",
            ),
            Some(&net),
        );
        assert!(h.starts_with("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"));
        assert!(h.contains("\n10.244.1.7\tweb-0.web.default.svc.cluster.local\tweb-0\n"));
        assert!(
            h.ends_with("# Entries added by HostAliases.\n10.1.2.3\ta\tb\n"),
            "{h}"
        );
        let h = hosts_file(&pod(""), None);
        assert!(h.ends_with("\n127.0.1.1\tp-1\n"), "{h}");
    }

    #[test]
    fn pod_sums() {
        assert_eq!(sum_all([Some(1), Some(2)].into_iter()), Some(3));
        assert_eq!(sum_all([Some(1), None].into_iter()), None);
        let r = |m: Option<u64>| Resources {
            memory_limit: m,
            ..Default::default()
        };
        let mem = |r: &Resources| r.memory_limit;
        assert_eq!(
            pod_total(&[r(Some(2)), r(Some(3))], &[r(Some(4))], mem),
            Some(5)
        );
        assert_eq!(
            pod_total(&[r(Some(2))], &[r(Some(9)), r(Some(1))], mem),
            Some(9)
        );
        assert_eq!(pod_total(&[r(Some(2))], &[r(None)], mem), None);
    }
}
