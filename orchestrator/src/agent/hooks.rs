//! Container lifecycle hooks as the kubelet runs them: `postStart` right after a container
//! starts (a failure kills the container, reported as a `FailedPostStartHook` event, and the
//! restart policy takes it from there), `preStop` before the container is signalled to stop,
//! its time counted against the grace period. Handlers: exec (in the container), httpGet (2xx
//! and 3xx pass, as for probes) and sleep. Never imports `registry` or `apiserver`.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{LifecycleHandler, Pod};

use crate::runtime::Runtime;

/// A postStart hook has no deadline of its own in Kubernetes; one that hangs this long is
/// treated as failed rather than holding the pod's worker for ever.
const POST_START_LIMIT: Duration = Duration::from_secs(120);
/// What the kubelet leaves the container to stop in after a preStop hook used up the grace.
const MIN_GRACE_AFTER_HOOK: Duration = Duration::from_secs(2);

fn handler<'a>(
    pod: &'a Pod,
    container: &str,
    which: fn(&k8s_openapi::api::core::v1::Lifecycle) -> Option<&LifecycleHandler>,
) -> Option<&'a LifecycleHandler> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == container)?
        .lifecycle
        .as_ref()
        .and_then(which)
}

/// Runs one handler; the error says what failed in the kubelet's manner.
async fn run(rt: &Runtime, uid: &str, container: &str, h: &LifecycleHandler) -> Result<(), String> {
    if let Some(e) = &h.exec {
        let argv = e.command.clone().unwrap_or_default();
        let out = rt
            .exec(uid, container, &argv)
            .await
            .map_err(|e| format!("Exec lifecycle hook ({argv:?}) failed: {e}"))?;
        if out.exit_code != 0 {
            return Err(format!(
                "Exec lifecycle hook ({argv:?}) for Container {container:?} failed - error: command '{}' exited with {}: {}",
                argv.join(" "),
                out.exit_code,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        return Ok(());
    }
    if let Some(g) = &h.http_get {
        let ip = rt
            .status(uid)
            .ok()
            .and_then(|s| s.ip)
            .map(|ip| ip.to_string());
        let host = g
            .host
            .clone()
            .filter(|h| !h.is_empty())
            .or(ip)
            .unwrap_or_else(|| "127.0.0.1".into());
        let port = match &g.port {
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => {
                u16::try_from(*n).ok()
            }
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => s.parse().ok(),
        }
        .ok_or_else(|| format!("HTTP lifecycle hook: invalid port {:?}", g.port))?;
        let path = g.path.as_deref().unwrap_or("/");
        if !super::probe::http_ok(&host, port, path).await {
            return Err(format!(
                "HTTP lifecycle hook ({path}) for Container {container:?} failed - error: GET http://{host}:{port}{path} did not succeed"
            ));
        }
        return Ok(());
    }
    if let Some(s) = &h.sleep {
        tokio::time::sleep(Duration::from_secs(s.seconds.max(0) as u64)).await;
        return Ok(());
    }
    Err(format!(
        "lifecycle hook for Container {container:?}: tcpSocket handlers are not supported"
    ))
}

/// Runs the container's postStart hook, if it has one. `Err` carries the message of the
/// `FailedPostStartHook` event; the caller kills the container.
pub async fn post_start(rt: &Runtime, pod: &Pod, uid: &str, container: &str) -> Result<(), String> {
    let Some(h) = handler(pod, container, |l| l.post_start.as_ref()) else {
        return Ok(());
    };
    match tokio::time::timeout(POST_START_LIMIT, run(rt, uid, container, h)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "postStart hook for Container {container:?} did not finish within {}s",
            POST_START_LIMIT.as_secs()
        )),
    }
}

/// Runs the preStop hooks of the given running containers concurrently, within `grace`; returns
/// the grace left for the stop itself (at least the kubelet's 2 s after a hook ran) and the
/// failures, as `FailedPreStopHook` messages.
pub async fn pre_stop(
    rt: &Runtime,
    pod: &Pod,
    uid: &str,
    running: &[String],
    grace: Duration,
) -> (Duration, Vec<String>) {
    let hooks: Vec<(&String, &LifecycleHandler)> = running
        .iter()
        .filter_map(|c| handler(pod, c, |l| l.pre_stop.as_ref()).map(|h| (c, h)))
        .collect();
    if hooks.is_empty() {
        return (grace, Vec::new());
    }
    let began = Instant::now();
    let runs = hooks.iter().map(|(c, h)| async move {
        match tokio::time::timeout(grace, run(rt, uid, c, h)).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "PreStopHook for Container {c:?} did not complete within the {}s grace period",
                grace.as_secs()
            )),
        }
    });
    let failures = futures::future::join_all(runs)
        .await
        .into_iter()
        .filter_map(Result::err)
        .collect();
    let left = grace
        .saturating_sub(began.elapsed())
        .max(MIN_GRACE_AFTER_HOOK);
    (left, failures)
}
