//! The node agent, in the kubelet's role: registers this machine as a Node and keeps its Lease
//! renewed (`node`), watches the pods bound to it (field selector `spec.nodeName`), runs them
//! through the bundled runtime (`convert` translates both ways), restarts exited containers as
//! their restartPolicy says with the kubelet's crash-loop back-off (10 s doubling to 5 min,
//! forgotten after 10 min of running), writes each pod's status back with a resourceVersion
//! precondition, and on deletion stops the processes within the grace period before it removes
//! the pod object. The runtime keeps its state on disk, so a restarted agent re-adopts running
//! pods without restarting them. A client of the API server only: this module never imports
//! `registry` or `apiserver`.

pub mod convert;
pub mod env;
pub mod join;
pub mod node;
pub mod probe;
pub mod server;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::runtime::{self, ConfigMaps, ContainerState, Runtime, RuntimeConfig, RuntimeError};
use convert::{Refusal, Restarts};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("runtime: {0}")]
    Runtime(#[from] RuntimeError),
    #[error("API: {0}")]
    Api(#[from] kube::Error),
    #[error("the pod cache never synced: {0}")]
    Sync(String),
    #[error("serving: {0}")]
    Tls(String),
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_name: String,
    /// The node's InternalIP, shown as each pod's hostIP.
    pub address: String,
    pub runtime: RuntimeConfig,
    /// How often the node's Lease is renewed (the kubelet's 10 s).
    pub heartbeat: Duration,
    /// How often every pod is looked at even when nothing in the API changed (exits, restarts).
    pub sync_period: Duration,
    /// The port logs are served on (the kubelet's 10250; 0 picks a free one).
    pub port: u16,
    /// DER certificates of the CA whose client certificates may read logs (the cluster's CA).
    /// Empty: no logs are served.
    pub client_ca: Vec<Vec<u8>>,
}

impl AgentConfig {
    pub fn new(node_name: impl Into<String>, runtime: RuntimeConfig) -> AgentConfig {
        AgentConfig {
            node_name: node_name.into(),
            address: "127.0.0.1".into(),
            runtime,
            heartbeat: Duration::from_secs(10),
            sync_period: Duration::from_secs(1),
            port: 10250,
            client_ca: Vec::new(),
        }
    }
}

const BACKOFF_START: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// Status writes in flight at once.
const STATUS_WRITES: usize = 16;
/// How long a pod whose start failed waits before the next attempt.
const START_RETRY: Duration = Duration::from_secs(10);

/// What the agent remembers of one container between syncs.
#[derive(Default)]
struct ContainerTrack {
    restarts: i32,
    /// The next back-off; zero until the first restart, which happens at once.
    backoff: Duration,
    retry_at: Option<Instant>,
    /// The exit (by finish time) already acted on.
    seen_exit: Option<u64>,
    last: Option<Value>,
}

#[derive(Default)]
struct PodTrack {
    containers: HashMap<String, ContainerTrack>,
    /// Why the last start failed, and when to try again.
    refused: Option<(Refusal, Instant)>,
}

/// Work finished in the background, reported back to the sync loop.
enum Done {
    Started(String, Result<(), Refusal>),
    /// A container restarted; for a probe's restart, how the killed run ended.
    Restarted(String, String, Option<Value>),
    Removed(String),
}

struct Agent {
    client: kube::Client,
    rt: Arc<Runtime>,
    cfg: AgentConfig,
    pods: HashMap<String, PodTrack>,
    /// Pods with background work in flight (start, restart, stop): not touched until it ends.
    busy: HashSet<String>,
    tasks: JoinSet<Done>,
    probes: probe::Probes,
    services: Store<Service>,
}

/// Runs the agent until `stop` resolves. Pods keep running when it stops.
pub async fn run(
    client: kube::Client,
    cfg: AgentConfig,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let rt = Arc::new(Runtime::new(cfg.runtime.clone())?);
    let (store, writer) = reflector::store();
    let serving = if cfg.client_ca.is_empty() {
        None
    } else {
        let ip: std::net::IpAddr = cfg
            .address
            .parse()
            .map_err(|_| AgentError::Tls(format!("node address {:?}", cfg.address)))?;
        Some(
            server::start(
                (ip, cfg.port).into(),
                &cfg.address,
                &cfg.client_ca,
                store.clone(),
                rt.clone(),
            )
            .await?,
        )
    };
    let port = serving.as_ref().map_or(0, |s| s.port);
    node::register(&client, &cfg.node_name, &cfg.address, port).await?;
    let mut background = JoinSet::new();
    background.spawn(node::heartbeat(
        client.clone(),
        cfg.node_name.clone(),
        cfg.heartbeat,
    ));
    let wake = Arc::new(Notify::new());
    let w = wake.clone();
    let selector = format!("spec.nodeName={}", cfg.node_name);
    background.spawn(
        watcher(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().fields(&selector),
        )
        .default_backoff()
        .reflect(writer)
        .for_each(move |_| {
            w.notify_one();
            futures::future::ready(())
        }),
    );
    // Every Service, for pods' service-link environment (the kubelet's service lister).
    let (services, services_writer) = reflector::store();
    background.spawn(
        watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(services_writer)
        .for_each(|_| futures::future::ready(())),
    );
    store
        .wait_until_ready()
        .await
        .map_err(|e| AgentError::Sync(e.to_string()))?;
    services
        .wait_until_ready()
        .await
        .map_err(|e| AgentError::Sync(e.to_string()))?;
    tracing::info!(node = %cfg.node_name, "agent registered and watching its pods");
    let period = cfg.sync_period;
    let mut agent = Agent {
        client,
        rt,
        cfg,
        services,
        pods: HashMap::new(),
        busy: HashSet::new(),
        tasks: JoinSet::new(),
        probes: probe::Probes::default(),
    };
    tokio::pin!(stop);
    loop {
        agent.sync(&store).await;
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = wake.notified() => {}
            Some(done) = agent.tasks.join_next() => {
                if let Ok(done) = done {
                    agent.finished(done);
                }
            }
            _ = tokio::time::sleep(period) => {}
        }
    }
}

impl Agent {
    fn finished(&mut self, done: Done) {
        match done {
            Done::Started(uid, r) => {
                self.busy.remove(&uid);
                if let Err(why) = r {
                    tracing::warn!(pod = %uid, reason = why.reason, message = %why.message, "pod start failed");
                    self.pods.entry(uid).or_default().refused =
                        Some((why, Instant::now() + START_RETRY));
                }
            }
            Done::Restarted(uid, container, last) => {
                self.busy.remove(&uid);
                if let Some(last) = last {
                    let t = self.pods.entry(uid).or_default();
                    t.containers.entry(container).or_default().last = Some(last);
                }
            }
            Done::Removed(uid) => {
                self.busy.remove(&uid);
                self.probes.forget(&uid);
                self.pods.remove(&uid);
            }
        }
    }

    async fn sync(&mut self, store: &Store<Pod>) {
        while let Some(Ok(done)) = self.tasks.try_join_next() {
            self.finished(done);
        }
        let pods = store.state();
        let running: HashMap<String, runtime::PodStatus> = match self.rt.list() {
            Ok(l) => l.into_iter().map(|p| (p.name.clone(), p)).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the runtime's pods");
                return;
            }
        };
        let known: HashSet<String> = pods.iter().map(|p| convert::runtime_name(p)).collect();
        // Pods the API no longer has (deleted while the agent was away, or forced): their
        // processes go too.
        for name in running.keys() {
            if !known.contains(name) && self.busy.insert(name.clone()) {
                let (rt, name) = (self.rt.clone(), name.clone());
                self.tasks.spawn(async move {
                    if let Err(e) = rt.remove_pod(&name).await {
                        tracing::warn!(pod = %name, error = %e, "cannot remove an orphaned pod");
                    }
                    Done::Removed(name)
                });
            }
        }
        let mut writes = Vec::new();
        for pod in pods {
            let uid = convert::runtime_name(&pod);
            if uid.is_empty() || self.busy.contains(&uid) {
                continue;
            }
            if let Some(st) = self.sync_pod(&pod, &uid, running.get(&uid)) {
                writes.push((pod, st));
            }
        }
        let client = &self.client;
        futures::stream::iter(writes)
            .for_each_concurrent(STATUS_WRITES, |(pod, st)| async move {
                write_status(client, &pod, st).await;
            })
            .await;
    }

    /// Acts on one pod; returns the status to write for it, if any (written together with the
    /// other pods', concurrently).
    fn sync_pod(
        &mut self,
        pod: &Arc<Pod>,
        uid: &str,
        rt: Option<&runtime::PodStatus>,
    ) -> Option<Value> {
        if pod.metadata.deletion_timestamp.is_some() {
            self.busy.insert(uid.to_string());
            let grace = pod
                .metadata
                .deletion_grace_period_seconds
                .map(|s| Duration::from_secs(s.max(0) as u64));
            let (rt_, client, pod, uid, present) = (
                self.rt.clone(),
                self.client.clone(),
                pod.clone(),
                uid.to_string(),
                rt.is_some(),
            );
            self.tasks.spawn(async move {
                if present {
                    if let Err(e) = rt_.stop_pod(&uid, grace).await {
                        tracing::warn!(pod = %uid, error = %e, "stop");
                    }
                    if let Err(e) = rt_.remove_pod(&uid).await {
                        tracing::warn!(pod = %uid, error = %e, "remove");
                    }
                }
                finish_deletion(&client, &pod).await;
                Done::Removed(uid)
            });
            return None;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        let track = self.pods.entry(uid.to_string()).or_insert_with(|| {
            // Restart counts survive an agent restart through the pod's own status.
            let mut t = PodTrack::default();
            for cs in pod
                .status
                .iter()
                .flat_map(|s| s.container_statuses.iter().flatten())
            {
                t.containers.entry(cs.name.clone()).or_default().restarts = cs.restart_count;
            }
            t
        });
        let Some(rt) = rt else {
            if matches!(phase, Some("Succeeded" | "Failed")) {
                return None;
            }
            if let Some((why, retry_at)) = &track.refused {
                if Instant::now() < *retry_at {
                    return Some(convert::refused(pod, why, &self.cfg.address));
                }
            }
            track.refused = None;
            self.busy.insert(uid.to_string());
            let (rt, client, services, pod, uid, host_ip) = (
                self.rt.clone(),
                self.client.clone(),
                self.services.clone(),
                pod.clone(),
                uid.to_string(),
                self.cfg.address.clone(),
            );
            self.tasks.spawn(async move {
                let r = start(&rt, &client, &services, &pod, &host_ip).await;
                Done::Started(uid, r)
            });
            return None;
        };
        let policy = pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into());
        let now = Instant::now();
        // (container, kill the running process first: a failed liveness or startup probe)
        let mut restart: Option<(String, bool)> = None;
        let mut restarts: HashMap<String, Restarts> = HashMap::new();
        let pod_ip = rt.ip.map(|ip| ip.to_string());
        for c in &rt.containers {
            let t = track.containers.entry(c.name.clone()).or_default();
            let spec_c = pod
                .spec
                .iter()
                .flat_map(|s| s.containers.iter())
                .find(|x| x.name == c.name);
            let mut probed = None;
            if let (ContainerState::Running, Some(spec_c), Some(run)) =
                (&c.state, spec_c, c.started_at_ms)
            {
                let v = self
                    .probes
                    .check(&self.rt, uid, spec_c, run, pod_ip.as_deref());
                probed = Some((v.started, v.ready));
                if v.restart && restart.is_none() && policy != "Never" {
                    t.restarts += 1;
                    restart = Some((c.name.clone(), true));
                }
            }
            let exited = match &c.state {
                ContainerState::Exited { exit_code, .. } => Some(*exit_code),
                ContainerState::Unknown => Some(137),
                _ => None,
            };
            let mut backing_off = None;
            match exited {
                None => {
                    // Up long enough: the next crash starts the back-off afresh.
                    let up = c.started_at_ms.map(|s| now_ms().saturating_sub(s));
                    if up.is_some_and(|ms| ms >= BACKOFF_RESET.as_millis() as u64) {
                        t.backoff = Duration::ZERO;
                    }
                }
                Some(code) => {
                    let again = policy == "Always" || (policy == "OnFailure" && code != 0);
                    if again {
                        if t.seen_exit != c.finished_at_ms {
                            t.seen_exit = c.finished_at_ms;
                            t.last = convert::terminated(c);
                            t.retry_at = Some(now + t.backoff);
                        }
                        match t.retry_at {
                            Some(at) if at <= now && restart.is_none() => {
                                t.retry_at = None;
                                t.restarts += 1;
                                t.backoff = if t.backoff.is_zero() {
                                    BACKOFF_START
                                } else {
                                    (t.backoff * 2).min(BACKOFF_MAX)
                                };
                                restart = Some((c.name.clone(), false));
                            }
                            Some(at) => {
                                let wait = at.saturating_duration_since(now).as_secs().max(1);
                                backing_off = Some(format!(
                                    "back-off {wait}s restarting failed container={} pod={}_{}({})",
                                    c.name,
                                    pod.metadata.name.as_deref().unwrap_or(""),
                                    pod.metadata.namespace.as_deref().unwrap_or(""),
                                    uid
                                ));
                            }
                            None => {}
                        }
                    }
                }
            }
            restarts.insert(
                c.name.clone(),
                Restarts {
                    count: t.restarts,
                    backing_off,
                    last: t.last.clone(),
                    probed,
                },
            );
        }
        let st = convert::status(pod, rt, &restarts, &self.cfg.address);
        if let Some((container, kill)) = restart {
            self.busy.insert(uid.to_string());
            let grace = Duration::from_secs(
                pod.spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
                    .unwrap_or(30)
                    .max(0) as u64,
            );
            let (rt, uid) = (self.rt.clone(), uid.to_string());
            self.tasks.spawn(async move {
                let mut last = None;
                if kill {
                    tracing::info!(pod = %uid, container, "probe failed: restarting the container");
                    match rt.stop_container(&uid, &container, grace).await {
                        Ok(st) => last = convert::terminated(&st),
                        Err(e) => tracing::warn!(pod = %uid, container, error = %e, "stop failed"),
                    }
                }
                if let Err(e) = rt.start_container(&uid, &container).await {
                    tracing::warn!(pod = %uid, container, error = %e, "restart failed");
                }
                Done::Restarted(uid, container, last)
            });
        }
        Some(st)
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Resolves what the pod reads (environments, ConfigMaps for volumes), translates it for the
/// runtime and starts it.
async fn start(
    rt: &Runtime,
    client: &kube::Client,
    services: &Store<Service>,
    pod: &Pod,
    host_ip: &str,
) -> Result<(), Refusal> {
    let envs = env::resolve(client, services, pod, host_ip).await?;
    let mut literal = pod.clone();
    for c in literal
        .spec
        .iter_mut()
        .flat_map(|s| s.containers.iter_mut())
    {
        c.env_from = None;
        c.env = Some(
            envs.get(&c.name)
                .into_iter()
                .flatten()
                .map(|(name, value)| k8s_openapi::api::core::v1::EnvVar {
                    name: name.clone(),
                    value: Some(value.clone()),
                    value_from: None,
                })
                .collect(),
        );
    }
    let spec = convert::to_runtime(&literal)?;
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let mut config_maps = ConfigMaps::new();
    for name in convert::config_maps_used(pod) {
        match cms.get_opt(&name).await {
            Ok(Some(cm)) => {
                config_maps.insert(name, cm.data.unwrap_or_default().into_iter().collect());
            }
            // A missing optional one is the runtime's to judge.
            Ok(None) => {}
            Err(e) => {
                return Err(Refusal {
                    reason: "CreateContainerConfigError",
                    message: format!("configmap {name:?}: {e}"),
                })
            }
        }
    }
    rt.run_pod(&spec, &config_maps)
        .await
        .map(|_| ())
        .map_err(|e| Refusal {
            reason: "CreateContainerError",
            message: e.to_string(),
        })
}

/// Conditions keep their transition time while their status stays the same.
fn keep_transition_times(pod: &Pod, st: &mut Value) {
    let current = serde_json::to_value(&pod.status).unwrap_or_default();
    let Some(conds) = st.get_mut("conditions").and_then(Value::as_array_mut) else {
        return;
    };
    for c in conds {
        let old = current["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|o| o["type"] == c["type"]);
        if let Some(o) = old.filter(|o| o["status"] == c["status"]) {
            c["lastTransitionTime"] = o["lastTransitionTime"].clone();
        }
    }
}

/// Writes `st` as the pod's status when it differs from what the API shows, guarded by the
/// pod's resourceVersion (a conflict is settled by the next sync, with the newer pod).
async fn write_status(client: &kube::Client, pod: &Pod, mut st: Value) {
    keep_transition_times(pod, &mut st);
    let current = serde_json::to_value(&pod.status).unwrap_or_default();
    let same = st
        .as_object()
        .is_some_and(|m| m.iter().all(|(k, v)| current.get(k) == Some(v)));
    if same {
        return;
    }
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or("");
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let patch =
        json!({"metadata": {"resourceVersion": pod.metadata.resource_version}, "status": st});
    match api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {}
        Err(e) => tracing::warn!(pod = %name, error = %e, "status update failed"),
    }
}

/// The processes are gone: the pod object goes too (grace 0, only this very pod).
async fn finish_deletion(client: &kube::Client, pod: &Pod) {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or("");
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) | Err(kube::Error::Api(_)) => {}
        Err(e) => tracing::warn!(pod = %name, error = %e, "cannot finish the deletion"),
    }
}
