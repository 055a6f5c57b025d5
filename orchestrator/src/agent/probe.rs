//! Container probes as the kubelet runs them: startup, liveness and readiness, each an exec, an
//! httpGet or a tcpSocket check with its initialDelaySeconds, periodSeconds, timeoutSeconds,
//! successThreshold and failureThreshold. Results are counted per container run (a restarted
//! container starts over); the sync loop reads the verdicts: not started yet, to be restarted
//! (startup or liveness failed), ready or not. Probes run in tasks of their own, so a slow one never
//! holds the sync loop. It never imports `registry` or `apiserver`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::runtime::Runtime;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

#[derive(Default)]
struct State {
    /// The container run (its start time) these counts belong to.
    run: u64,
    next_at: Option<Instant>,
    successes: i32,
    failures: i32,
    /// The verdict so far: `None` until the thresholds decide.
    ok: Option<bool>,
    inflight: bool,
}

/// What the probes say about one container run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The startup probe passed (or there is none).
    pub started: bool,
    /// Readiness passed (or there is none) and the container has started.
    pub ready: bool,
    /// Liveness or startup failed: the container is to be killed and restarted.
    pub restart: bool,
}

/// Which probe: pod (runtime name), container, kind.
type Key = (String, String, Kind);

/// Probe states of every container, shared with the probe tasks.
#[derive(Clone, Default)]
pub struct Probes(Arc<Mutex<HashMap<Key, State>>>);

struct Target<'a> {
    rt: &'a Arc<Runtime>,
    pod: &'a str,
    container: &'a str,
    pod_ip: Option<&'a str>,
}

impl Probes {
    /// Looks at one running container (started at `run`, in ms), starts the probes that are due,
    /// and says what the finished ones concluded.
    pub fn check(
        &self,
        rt: &Arc<Runtime>,
        pod: &str,
        c: &Container,
        run: u64,
        pod_ip: Option<&str>,
    ) -> Verdict {
        let target = Target {
            rt,
            pod,
            container: &c.name,
            pod_ip,
        };
        let startup = c.startup_probe.as_ref().map(|p| by_number(p, c));
        let started = match &startup {
            None => true,
            Some(p) => self.tick(&target, Kind::Startup, p, run) == Some(true),
        };
        let mut restart =
            startup.is_some() && self.verdict(pod, &c.name, Kind::Startup, run) == Some(false);
        let mut ready = started;
        if started {
            if let Some(p) = c.liveness_probe.as_ref() {
                restart |= self.tick(&target, Kind::Liveness, &by_number(p, c), run) == Some(false);
            }
            if let Some(p) = c.readiness_probe.as_ref() {
                ready = self.tick(&target, Kind::Readiness, &by_number(p, c), run) == Some(true);
            }
        }
        Verdict {
            started,
            ready,
            restart,
        }
    }

    fn verdict(&self, pod: &str, c: &str, kind: Kind, run: u64) -> Option<bool> {
        let m = self.0.lock().expect("not poisoned");
        m.get(&(pod.to_string(), c.to_string(), kind))
            .filter(|s| s.run == run)
            .and_then(|s| s.ok)
    }

    /// Starts the probe if due; returns its verdict so far for this run.
    fn tick(&self, t: &Target, kind: Kind, probe: &Probe, run: u64) -> Option<bool> {
        let key = (t.pod.to_string(), t.container.to_string(), kind);
        let now = Instant::now();
        let mut m = self.0.lock().expect("not poisoned");
        let s = m.entry(key.clone()).or_default();
        if s.run != run {
            // A new run of the container: counts start over after the initial delay.
            let delay = Duration::from_secs(probe.initial_delay_seconds.unwrap_or(0).max(0) as u64);
            let started = std::time::UNIX_EPOCH + Duration::from_millis(run);
            let elapsed = std::time::SystemTime::now()
                .duration_since(started)
                .unwrap_or_default();
            *s = State {
                run,
                next_at: Some(now + delay.saturating_sub(elapsed)),
                ..Default::default()
            };
        }
        let verdict = s.ok;
        if s.inflight || s.next_at.is_some_and(|at| at > now) {
            return verdict;
        }
        s.inflight = true;
        let period = Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64);
        s.next_at = Some(now + period);
        drop(m);
        let (probes, probe, rt) = (self.clone(), probe.clone(), t.rt.clone());
        let (pod, container, ip) = (
            t.pod.to_string(),
            t.container.to_string(),
            t.pod_ip.map(str::to_string),
        );
        tokio::spawn(async move {
            let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
            let passed = tokio::time::timeout(
                timeout,
                run_probe(&rt, &pod, &container, ip.as_deref(), &probe),
            )
            .await
            .unwrap_or(false);
            probes.record(&key, run, passed, &probe);
        });
        verdict
    }

    fn record(&self, key: &Key, run: u64, passed: bool, probe: &Probe) {
        let mut m = self.0.lock().expect("not poisoned");
        let Some(s) = m.get_mut(key).filter(|s| s.run == run) else {
            return;
        };
        s.inflight = false;
        if passed {
            s.successes += 1;
            s.failures = 0;
            // Liveness and startup need one success, as Kubernetes requires of them.
            let need = match key.2 {
                Kind::Readiness => probe.success_threshold.unwrap_or(1).max(1),
                _ => 1,
            };
            if s.successes >= need {
                s.ok = Some(true);
            }
        } else {
            s.failures += 1;
            s.successes = 0;
            if s.failures >= probe.failure_threshold.unwrap_or(3).max(1) {
                s.ok = Some(false);
            }
        }
    }

    /// Forgets a pod's probes (it is gone).
    pub fn forget(&self, pod: &str) {
        self.0
            .lock()
            .expect("not poisoned")
            .retain(|k, _| k.0 != pod);
    }
}

/// The probe with its named ports replaced by the container's port of that name, as the kubelet
/// resolves them (a name the container does not declare stays, and the probe fails).
fn by_number<'a>(p: &'a Probe, c: &Container) -> std::borrow::Cow<'a, Probe> {
    let named = |port: &IntOrString| -> Option<IntOrString> {
        let IntOrString::String(name) = port else {
            return None;
        };
        c.ports
            .iter()
            .flatten()
            .find(|cp| cp.name.as_deref() == Some(name.as_str()))
            .map(|cp| IntOrString::Int(cp.container_port))
    };
    let http = p.http_get.as_ref().and_then(|h| named(&h.port));
    let tcp = p.tcp_socket.as_ref().and_then(|t| named(&t.port));
    if http.is_none() && tcp.is_none() {
        return std::borrow::Cow::Borrowed(p);
    }
    let mut p = p.clone();
    if let (Some(h), Some(port)) = (p.http_get.as_mut(), http) {
        h.port = port;
    }
    if let (Some(t), Some(port)) = (p.tcp_socket.as_mut(), tcp) {
        t.port = port;
    }
    std::borrow::Cow::Owned(p)
}

fn port_of(port: &IntOrString, c: &str) -> Option<u16> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(s) => {
            tracing::debug!(container = c, port = %s, "a probe port named nothing the container declares");
            s.parse().ok()
        }
    }
}

async fn run_probe(
    rt: &Runtime,
    pod: &str,
    container: &str,
    pod_ip: Option<&str>,
    probe: &Probe,
) -> bool {
    if let Some(e) = &probe.exec {
        let argv = e.command.clone().unwrap_or_default();
        return rt
            .exec(pod, container, &argv)
            .await
            .is_ok_and(|o| o.exit_code == 0);
    }
    if let Some(t) = &probe.tcp_socket {
        let host = t.host.as_deref().or(pod_ip).unwrap_or("127.0.0.1");
        let Some(port) = port_of(&t.port, container) else {
            return false;
        };
        return tokio::net::TcpStream::connect((host, port)).await.is_ok();
    }
    if let Some(h) = &probe.http_get {
        let host = h.host.as_deref().or(pod_ip).unwrap_or("127.0.0.1");
        let Some(port) = port_of(&h.port, container) else {
            return false;
        };
        let path = h.path.as_deref().unwrap_or("/");
        return http_ok(host, port, path).await;
    }
    false
}

/// A plain HTTP/1.1 GET: 200-399 passes, as the kubelet judges it.
pub(crate) async fn http_ok(host: &str, port: u16, path: &str) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect((host, port)).await else {
        return false;
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 32];
    let Ok(n) = s.read(&mut head).await else {
        return false;
    };
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .is_some_and(|c| (200..400).contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_probe_ports_are_the_containers_ports_of_that_name() {
        let c: Container = serde_json::from_value(serde_json::json!({"name": "c",
            "ports": [{"name": "http", "containerPort": 8080}]}))
        .unwrap();
        let p: Probe = serde_json::from_value(serde_json::json!({
            "httpGet": {"path": "/", "port": "http"}}))
        .unwrap();
        assert_eq!(
            by_number(&p, &c).http_get.as_ref().unwrap().port,
            IntOrString::Int(8080)
        );
        let other: Probe = serde_json::from_value(serde_json::json!({
            "tcpSocket": {"port": "metrics"}}))
        .unwrap();
        assert_eq!(
            by_number(&other, &c).tcp_socket.as_ref().unwrap().port,
            IntOrString::String("metrics".into())
        );
    }

    /// An HTTP server on loopback answering every request with `status`.
    async fn answering(status: u16) -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let reply = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn http_probes_pass_on_2xx_and_3xx_only() {
        assert!(http_ok("127.0.0.1", answering(200).await, "/healthz").await);
        assert!(http_ok("127.0.0.1", answering(302).await, "/").await);
        assert!(!http_ok("127.0.0.1", answering(500).await, "/").await);
        assert!(!http_ok("127.0.0.1", answering(404).await, "/").await);
    }

    #[tokio::test]
    async fn an_http_probe_to_a_closed_port_fails() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        assert!(!http_ok("127.0.0.1", port, "/").await);
    }
}
