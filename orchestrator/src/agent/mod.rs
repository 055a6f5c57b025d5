//! The node agent, in the kubelet's role: registers this machine as a Node and keeps its Lease
//! renewed (`node`), watches the pods bound to it (field selector `spec.nodeName`), runs them
//! through the bundled runtime (`convert` translates both ways), restarts exited containers as
//! their restartPolicy says with the kubelet's crash-loop back-off (10 s doubling to 5 min,
//! forgotten after 10 min of running), writes each pod's status back with a resourceVersion
//! precondition, and on deletion runs the preStop hooks (`hooks`) and stops the processes within
//! the grace period before it removes the pod object. Init containers run one at a time, each to
//! success, before the app containers start; a failed one is run again with the same back-off
//! unless the policy is Never. Secret, configMap, downwardAPI and projected volumes (`volumes`)
//! are resolved from watched Secrets and ConfigMaps and rewritten in place whenever they change;
//! projected service account tokens are requested for each pod, bound to it, and renewed before
//! 80 % of their lifetime (`volumes_token`).
//! The runtime keeps its state on disk, so a restarted agent re-adopts running pods without
//! restarting them (or re-running their completed init containers). A client of the API server
//! only: this module never imports `registry` or `apiserver`.
//!
//! Images named by reference are pulled (`images`) as each pod starts, in the background, with
//! the kubelet's ErrImagePull / ImagePullBackOff back-off (10 s doubling to 5 min).
//!
//! With a pod bridge configured (`network`), pods get their addresses from the Node's podCIDR,
//! which the agent waits for before it runs any pod. The path of a pod's packet: its `eth0` (one
//! end of a veth pair) -> the other end on the node's bridge -> the bridge, which is the pods'
//! gateway -> the node's routing table: a pod on this node is on the bridge; a pod on another node
//! is reached through that node's InternalIP (one route per node, `network`); anything else leaves
//! masqueraded as the node. Host-network pods share the node's namespace and its address. Each
//! pod's /etc/hosts and /etc/resolv.conf are formed as the kubelet does (`dns`).

pub mod convert;
pub mod dns;
pub mod env;
mod exec;
pub mod hooks;
pub mod images;
pub mod join;
pub mod network;
pub mod node;
pub mod probe;
pub mod server;
pub mod volumes;
pub mod volumes_token;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::runtime::{
    self, ConfigMaps, ContainerState, Runtime, RuntimeConfig, RuntimeError, VolumeFile,
};
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
    #[error("pod network: {0}")]
    Network(#[from] network::PodNetworkError),
    #[error("images: {0}")]
    Images(#[from] images::ImageError),
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
    /// The port logs and exec sessions are served on (the kubelet's 10250; 0 picks a free one).
    pub port: u16,
    /// DER certificates of the CA whose client certificates may read logs and exec into
    /// containers (the cluster's CA). Empty: neither is served.
    pub client_ca: Vec<Vec<u8>>,
    /// The bridge pods attach to, addressed from the Node's podCIDR. None: pods get only a
    /// loopback interface (and `runtime.network`, if set, is used as it is).
    pub network: Option<String>,
    pub dns: dns::DnsSettings,
    /// When unused images are removed (the kubelet's `--image-gc-high-threshold` and
    /// `--image-gc-low-threshold`, 85 and 80 percent of the disk).
    pub image_gc: images::gc::GcPolicy,
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
            network: None,
            dns: dns::DnsSettings::default(),
            image_gc: images::gc::GcPolicy::default(),
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
/// How long a stopping agent waits for the pod work it has started.
const STOP_GRACE: Duration = Duration::from_secs(20);

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
    /// A digest of the API-backed volumes' files as last written: unchanged sources cost no
    /// writes.
    volumes: Option<u64>,
    /// The last FailedMount message posted as an event (posted once, not every sync).
    mount_event: Option<String>,
    /// The image pull back-off; zero until a pull fails.
    pull_backoff: Duration,
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
    /// Every Secret and ConfigMap, watched: volumes are resolved from here each sync, so a
    /// change reaches the pods' files within a sync period without a read per pod.
    secrets: Store<Secret>,
    config_maps: Store<ConfigMap>,
    images: Arc<images::ImageStore>,
    services: Store<Service>,
    /// Service account tokens for projected volumes, requested before each sync resolves them.
    tokens: volumes_token::Tokens,
}

/// A watched cache of `api`'s objects, its watch a task of `background` (so it ends with the
/// agent), waking `notify` on each change.
fn cache<K>(background: &mut JoinSet<()>, api: Api<K>, notify: Option<Arc<Notify>>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, watch) = crate::client::reflector(api, notify);
    background.spawn(watch);
    store
}

/// Runs the agent until `stop` resolves. Pods keep running when it stops.
pub async fn run(
    client: kube::Client,
    cfg: AgentConfig,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let rt = Arc::new(Runtime::new(cfg.runtime.clone())?);
    let image_store = images::ImageStore::open(&cfg.runtime.state_dir)?;
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
    background.spawn(image_store.clone().housekeeping(
        client.clone(),
        cfg.node_name.clone(),
        rt.clone(),
        cfg.image_gc.clone(),
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
    // Every Service, for pods' service-link environment (the kubelet's service lister); every
    // Secret and ConfigMap, for volumes, whose changes wake the sync loop.
    let services = cache(&mut background, Api::<Service>::all(client.clone()), None);
    let secrets = cache(
        &mut background,
        Api::<Secret>::all(client.clone()),
        Some(wake.clone()),
    );
    let config_maps = cache(
        &mut background,
        Api::<ConfigMap>::all(client.clone()),
        Some(wake.clone()),
    );
    for ready in [
        store.wait_until_ready().await,
        secrets.wait_until_ready().await,
        config_maps.wait_until_ready().await,
        services.wait_until_ready().await,
    ] {
        ready.map_err(|e| AgentError::Sync(e.to_string()))?;
    }
    tokio::pin!(stop);
    let rt = match &cfg.network {
        None => rt,
        Some(bridge) => {
            let cidr = tokio::select! {
                _ = &mut stop => return Ok(()),
                c = network::wait_for_pod_cidr(&client, &cfg.node_name) => c?,
            };
            let mut rcfg = cfg.runtime.clone();
            rcfg.network = Some(network::prepare(bridge, cidr).await?);
            background.spawn(network::keep_routes(
                client.clone(),
                cfg.node_name.clone(),
                bridge.clone(),
                cidr,
            ));
            // The log server keeps the instance it started with: logs and exec read the same
            // state on disk and need no network settings.
            Arc::new(Runtime::new(rcfg)?)
        }
    };
    tracing::info!(node = %cfg.node_name, "agent registered and watching its pods");
    let period = cfg.sync_period;
    let client_for_tokens = client.clone();
    let mut agent = Agent {
        client,
        rt,
        cfg,
        services,
        pods: HashMap::new(),
        busy: HashSet::new(),
        tasks: JoinSet::new(),
        probes: probe::Probes::default(),
        secrets,
        config_maps,
        images: image_store,
        tokens: volumes_token::Tokens::new(client_for_tokens),
    };
    loop {
        agent.sync(&store).await;
        tokio::select! {
            _ = &mut stop => {
                agent.settle().await;
                return Ok(());
            }
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
    /// Lets pod starts, restarts and removals in flight run to their end (within
    /// `STOP_GRACE`): one cancelled half-way leaves a pod half made or half removed, and
    /// whoever stops the pods after the agent would race with its remains.
    async fn settle(&mut self) {
        let drain = async {
            while let Some(done) = self.tasks.join_next().await {
                if let Ok(done) = done {
                    self.finished(done);
                }
            }
        };
        if tokio::time::timeout(STOP_GRACE, drain).await.is_err() {
            tracing::warn!(
                tasks = self.tasks.len(),
                "pod work still running when the agent stopped: cancelled"
            );
        }
        self.tasks.shutdown().await;
    }

    fn finished(&mut self, done: Done) {
        match done {
            Done::Started(uid, r) => {
                self.busy.remove(&uid);
                let t = self.pods.entry(uid.clone()).or_default();
                match r {
                    Ok(()) => t.pull_backoff = Duration::ZERO,
                    Err(why) => {
                        tracing::warn!(pod = %uid, reason = why.reason, message = %why.message, "pod start failed");
                        let wait = if why.reason == "ErrImagePull" {
                            t.pull_backoff = if t.pull_backoff.is_zero() {
                                BACKOFF_START
                            } else {
                                (t.pull_backoff * 2).min(BACKOFF_MAX)
                            };
                            t.pull_backoff
                        } else {
                            START_RETRY
                        };
                        t.refused = Some((why, Instant::now() + wait));
                    }
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
        self.tokens.refresh(&pods).await;
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
            let running: Vec<String> = rt
                .iter()
                .flat_map(|s| s.containers.iter())
                .filter(|c| c.state == ContainerState::Running)
                .map(|c| c.name.clone())
                .collect();
            self.tasks.spawn(async move {
                if present {
                    let full = grace.unwrap_or_else(|| Duration::from_secs(pod_grace(&pod)));
                    let (left, failed) = hooks::pre_stop(&rt_, &pod, &uid, &running, full).await;
                    for m in failed {
                        event(&client, &pod, "Warning", "FailedPreStopHook", &m).await;
                    }
                    let grace = Some(left);
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
            for cs in pod.status.iter().flat_map(|s| {
                s.container_statuses
                    .iter()
                    .flatten()
                    .chain(s.init_container_statuses.iter().flatten())
            }) {
                t.containers.entry(cs.name.clone()).or_default().restarts = cs.restart_count;
            }
            t
        });
        let Some(rt) = rt else {
            if matches!(phase, Some("Succeeded" | "Failed")) {
                return None;
            }
            if let Some((why, retry_at)) = &mut track.refused {
                if Instant::now() < *retry_at {
                    let st = convert::refused(pod, why, &self.cfg.address);
                    // The failure is shown once; until the next attempt the kubelet says it is
                    // backing off.
                    if why.reason == "ErrImagePull" {
                        *why = pull_back_off(pod, &why.message);
                    }
                    return Some(st);
                }
            }
            track.refused = None;
            let lookup = StoreLookup {
                ns: pod.metadata.namespace.as_deref().unwrap_or("default"),
                pod_uid: pod.metadata.uid.as_deref().unwrap_or(""),
                secrets: &self.secrets,
                config_maps: &self.config_maps,
                tokens: &self.tokens,
            };
            let files = match volumes::resolve(pod, &lookup, node::allocatable()) {
                Ok(f) => f,
                Err(message) => {
                    // The kubelet keeps the pod ContainerCreating until its volumes can be set
                    // up, and says why in a FailedMount event.
                    if track.mount_event.as_ref() != Some(&message) {
                        track.mount_event = Some(message.clone());
                        let (client, pod, m) = (self.client.clone(), pod.clone(), message.clone());
                        tokio::spawn(async move {
                            event(&client, &pod, "Warning", "FailedMount", &m).await;
                        });
                    }
                    let why = Refusal {
                        reason: "ContainerCreating",
                        message,
                    };
                    return Some(convert::refused(pod, &why, &self.cfg.address));
                }
            };
            track.volumes = Some(digest(&files));
            self.busy.insert(uid.to_string());
            let (rt, pod, uid) = (self.rt.clone(), pod.clone(), uid.to_string());
            let ctx = StartContext {
                client: self.client.clone(),
                services: self.services.clone(),
                images: self.images.clone(),
                host_ip: self.cfg.address.clone(),
                dns: self.cfg.dns.clone(),
            };
            self.tasks.spawn(async move {
                let began = Instant::now();
                let r = start(&rt, &ctx, &pod, &files).await;
                tracing::debug!(pod = %uid, ms = began.elapsed().as_millis() as u64, ok = r.is_ok(), "pod start");
                Done::Started(uid, r)
            });
            return None;
        };
        self.refresh_volumes(pod, uid);
        let track = self.pods.get_mut(uid).expect("tracked above");
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
        // Init containers one at a time, each to success; the app containers only after all.
        let mut initialized = true;
        for c in &rt.init_containers {
            let t = track.containers.entry(c.name.clone()).or_default();
            let mut backing_off = None;
            match &c.state {
                ContainerState::Exited { exit_code: 0, .. } => {}
                ContainerState::Running => initialized = false,
                ContainerState::Created => {
                    initialized = false;
                    restart = Some((c.name.clone(), false));
                }
                ContainerState::Exited { .. } | ContainerState::Unknown => {
                    initialized = false;
                    // Init containers are run again after a failure unless the policy is Never.
                    if policy != "Never" {
                        backing_off = back_off(t, c, now, pod, uid, &mut restart);
                    }
                }
            }
            restarts.insert(
                c.name.clone(),
                Restarts {
                    count: t.restarts,
                    backing_off,
                    last: t.last.clone(),
                    probed: None,
                },
            );
            if !initialized {
                break;
            }
        }
        let mut start_apps = Vec::new();
        for c in rt.containers.iter().filter(|_| initialized) {
            if c.state == ContainerState::Created {
                start_apps.push(c.name.clone());
            }
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
            if !initialized {
                continue;
            }
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
                        backing_off = back_off(t, c, now, pod, uid, &mut restart);
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
            let grace = Duration::from_secs(pod_grace(pod));
            let (rt, client, pod, uid) = (
                self.rt.clone(),
                self.client.clone(),
                pod.clone(),
                uid.to_string(),
            );
            self.tasks.spawn(async move {
                let mut last = None;
                if kill {
                    tracing::info!(pod = %uid, container, "probe failed: restarting the container");
                    let running = [container.clone()];
                    let (grace, failed) = hooks::pre_stop(&rt, &pod, &uid, &running, grace).await;
                    for m in failed {
                        event(&client, &pod, "Warning", "FailedPreStopHook", &m).await;
                    }
                    match rt.stop_container(&uid, &container, grace).await {
                        Ok(st) => last = convert::terminated(&st),
                        Err(e) => tracing::warn!(pod = %uid, container, error = %e, "stop failed"),
                    }
                }
                if let Err(e) = start_container(&rt, &client, &pod, &uid, &container).await {
                    tracing::warn!(pod = %uid, container, error = %e, "restart failed");
                }
                Done::Restarted(uid, container, last)
            });
        } else if !start_apps.is_empty() {
            self.busy.insert(uid.to_string());
            let (rt, client, pod, uid) = (
                self.rt.clone(),
                self.client.clone(),
                pod.clone(),
                uid.to_string(),
            );
            self.tasks.spawn(async move {
                for c in &start_apps {
                    if let Err(e) = start_container(&rt, &client, &pod, &uid, c).await {
                        tracing::warn!(pod = %uid, container = %c, error = %e, "start failed");
                    }
                }
                Done::Restarted(uid, String::new(), None)
            });
        }
        Some(st)
    }
}

impl Agent {
    /// Rewrites the pod's API-backed volumes whose sources changed since the last write. A
    /// source that has gone away leaves the files as they were, as the kubelet does.
    fn refresh_volumes(&mut self, pod: &Pod, uid: &str) {
        if volumes::kinds(pod).is_empty() {
            return;
        }
        let lookup = StoreLookup {
            ns: pod.metadata.namespace.as_deref().unwrap_or("default"),
            pod_uid: pod.metadata.uid.as_deref().unwrap_or(""),
            secrets: &self.secrets,
            config_maps: &self.config_maps,
            tokens: &self.tokens,
        };
        let files = match volumes::resolve(pod, &lookup, node::allocatable()) {
            Ok(f) => f,
            Err(m) => {
                tracing::debug!(pod = %uid, message = %m, "volumes not refreshed");
                return;
            }
        };
        let d = digest(&files);
        let track = self.pods.entry(uid.to_string()).or_default();
        if track.volumes == Some(d) {
            return;
        }
        for (volume, files) in &files {
            match self.rt.write_volume_files(uid, volume, files) {
                Ok(true) => tracing::info!(pod = %uid, volume, "volume contents updated"),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(pod = %uid, volume, error = %e, "cannot update a volume");
                    return;
                }
            }
        }
        track.volumes = Some(d);
    }
}

/// Applies the crash-loop back-off to an exited container the policy runs again: restarts it
/// (through `restart`, one container per pod and sync) once its back-off has passed, or says
/// how long it still waits.
fn back_off(
    t: &mut ContainerTrack,
    c: &runtime::ContainerStatus,
    now: Instant,
    pod: &Pod,
    uid: &str,
    restart: &mut Option<(String, bool)>,
) -> Option<String> {
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
            *restart = Some((c.name.clone(), false));
            None
        }
        Some(at) => {
            let wait = at.saturating_duration_since(now).as_secs().max(1);
            Some(format!(
                "back-off {wait}s restarting failed container={} pod={}_{}({})",
                c.name,
                pod.metadata.name.as_deref().unwrap_or(""),
                pod.metadata.namespace.as_deref().unwrap_or(""),
                uid
            ))
        }
        None => None,
    }
}

/// An object's byte values with its string values over them (a Secret's data and stringData, a
/// ConfigMap's binaryData and data).
fn bytes_and_strings(
    bytes: &Option<std::collections::BTreeMap<String, k8s_openapi::ByteString>>,
    strings: &Option<std::collections::BTreeMap<String, String>>,
) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut data: std::collections::BTreeMap<String, Vec<u8>> = bytes
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in strings.iter().flatten() {
        data.insert(k.clone(), v.clone().into_bytes());
    }
    data
}

/// Secrets and ConfigMaps of one pod's namespace from the agent's caches, and its tokens.
struct StoreLookup<'a> {
    ns: &'a str,
    pod_uid: &'a str,
    secrets: &'a Store<Secret>,
    config_maps: &'a Store<ConfigMap>,
    tokens: &'a volumes_token::Tokens,
}

impl volumes::Lookup for StoreLookup<'_> {
    fn secret(&self, name: &str) -> Option<std::collections::BTreeMap<String, Vec<u8>>> {
        let s = self
            .secrets
            .get(&reflector::ObjectRef::new(name).within(self.ns))?;
        Some(bytes_and_strings(&s.data, &s.string_data))
    }

    fn config_map(&self, name: &str) -> Option<std::collections::BTreeMap<String, Vec<u8>>> {
        let c = self
            .config_maps
            .get(&reflector::ObjectRef::new(name).within(self.ns))?;
        Some(bytes_and_strings(&c.binary_data, &c.data))
    }

    fn service_account_token(
        &self,
        audience: &str,
        expiration_seconds: i64,
    ) -> Result<Vec<u8>, String> {
        self.tokens.get(self.pod_uid, audience, expiration_seconds)
    }
}

fn digest(files: &[(String, Vec<VolumeFile>)]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (v, fs) in files {
        v.hash(&mut h);
        for f in fs {
            (&f.path, &f.data, f.mode).hash(&mut h);
        }
    }
    h.finish()
}

fn pod_grace(pod: &Pod) -> u64 {
    pod.spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30)
        .max(0) as u64
}

/// Starts one container and runs its postStart hook; a failed hook kills the container, as the
/// kubelet does, after a `FailedPostStartHook` event.
async fn start_container(
    rt: &Runtime,
    client: &kube::Client,
    pod: &Pod,
    uid: &str,
    container: &str,
) -> Result<(), RuntimeError> {
    rt.start_container(uid, container).await?;
    if let Err(m) = hooks::post_start(rt, pod, uid, container).await {
        tracing::info!(pod = %uid, container, message = %m, "postStart hook failed: killing the container");
        event(client, pod, "Warning", "FailedPostStartHook", &m).await;
        rt.stop_container(uid, container, Duration::from_secs(pod_grace(pod)))
            .await?;
    }
    Ok(())
}

/// Posts an Event about `pod` from this node, as the kubelet reports what happened to it.
async fn event(client: &kube::Client, pod: &Pod, type_: &str, reason: &str, message: &str) {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or("");
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    let now = crate::api::meta::now();
    let ev = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("{name}.{:016x}", fastrand::u64(..)), "namespace": ns},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": name, "namespace": ns,
            "uid": pod.metadata.uid},
        "reason": reason, "message": message, "type": type_, "count": 1,
        "firstTimestamp": now, "lastTimestamp": now,
        "source": {"component": "kubelet", "host": node},
        "reportingComponent": "kubelet", "reportingInstance": node,
    });
    let Ok(ev) = serde_json::from_value::<k8s_openapi::api::core::v1::Event>(ev) else {
        return;
    };
    let api: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), ns);
    if let Err(e) = api.create(&kube::api::PostParams::default(), &ev).await {
        tracing::debug!(pod = %name, reason, error = %e, "cannot post an event");
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `ImagePullBackOff` for the image whose pull failed with `message`.
fn pull_back_off(pod: &Pod, message: &str) -> Refusal {
    let images: Vec<&str> = pod
        .spec
        .iter()
        .flat_map(|s| {
            s.init_containers
                .iter()
                .flatten()
                .chain(s.containers.iter())
        })
        .filter_map(|c| c.image.as_deref())
        .filter(|i| !i.starts_with('/'))
        .collect();
    let failed = images
        .iter()
        .find(|i| images::normalize(i).is_ok_and(|r| message.contains(&format!("\"{r}\""))));
    Refusal {
        reason: "ImagePullBackOff",
        message: format!(
            "Back-off pulling image {:?}",
            failed.or(images.first()).unwrap_or(&"")
        ),
    }
}

/// The images the pod's containers run (by the name the pod gives), each as its
/// imagePullPolicy says: pulled if need be (sharing pulls in progress), or why not.
async fn pull_images(
    store: &Arc<images::ImageStore>,
    pod: &Pod,
) -> Result<HashMap<String, images::Image>, Refusal> {
    let wanted: Vec<(String, images::PullPolicy)> = pod
        .spec
        .iter()
        .flat_map(|s| {
            s.init_containers
                .iter()
                .flatten()
                .chain(s.containers.iter())
        })
        .filter_map(|c| {
            let image = c.image.as_deref()?;
            let policy = images::PullPolicy::of(c.image_pull_policy.as_deref(), image);
            (!image.starts_with('/')).then(|| (image.to_string(), policy))
        })
        .collect();
    let mut out = HashMap::new();
    for (image, policy) in wanted {
        if out.contains_key(&image) {
            continue;
        }
        let img = store.ensure(&image, policy).await.map_err(|f| Refusal {
            reason: f.reason,
            message: f.message,
        })?;
        out.insert(image, img);
    }
    Ok(out)
}

/// What starting a pod reads besides the pod: the API, the caches and the node's settings.
struct StartContext {
    client: kube::Client,
    services: Store<Service>,
    images: Arc<images::ImageStore>,
    host_ip: String,
    dns: dns::DnsSettings,
}

/// Resolves what the pod reads (images, environments; its API-backed volumes' `files` come
/// resolved), translates it for the runtime, creates the sandbox with its volumes and starts the
/// first init container, or else the app containers.
async fn start(
    rt: &Runtime,
    ctx: &StartContext,
    pod: &Pod,
    files: &[(String, Vec<VolumeFile>)],
) -> Result<(), Refusal> {
    let StartContext {
        client,
        services,
        images,
        host_ip,
        dns,
    } = ctx;
    let pulled = pull_images(images, pod).await?;
    let envs = env::resolve(client, services, pod, host_ip).await?;
    let mut literal = pod.clone();
    for c in literal.spec.iter_mut().flat_map(|s| {
        s.init_containers
            .iter_mut()
            .flatten()
            .chain(s.containers.iter_mut())
    }) {
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
    let mut spec = convert::to_runtime_with(&literal, &pulled)?;
    for w in dns::apply(&mut spec, pod, dns)? {
        event(client, pod, "Warning", w.reason, &w.message).await;
    }
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
    let failed = |e: RuntimeError| Refusal {
        reason: "CreateContainerError",
        message: e.to_string(),
    };
    rt.create_sandbox(&spec, &config_maps)
        .await
        .map_err(failed)?;
    let uid = spec.name().to_string();
    let run = async || -> Result<(), RuntimeError> {
        for (volume, files) in files {
            rt.write_volume_files(&uid, volume, files)?;
        }
        match spec.spec.init_containers.first() {
            Some(first) => start_container(rt, client, pod, &uid, &first.name).await,
            None => {
                for c in &spec.spec.containers {
                    start_container(rt, client, pod, &uid, &c.name).await?;
                }
                Ok(())
            }
        }
    };
    if let Err(e) = run().await {
        let _ = rt.remove_pod(&uid).await;
        return Err(failed(e));
    }
    Ok(())
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
    // The stored status never holds nulls (an absent field reads back as absent), so a null in
    // what we would write is no difference; counting it as one rewrote every status on every
    // sync.
    let wanted = without_nulls(st.clone());
    let changed: Vec<&String> = wanted
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, v)| current.get(k.as_str()) != Some(v))
        .map(|(k, _)| k)
        .collect();
    if changed.is_empty() {
        return;
    }
    tracing::trace!(pod = ?pod.metadata.name, ?changed, "status changed");
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or("");
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let patch =
        json!({"metadata": {"resourceVersion": pod.metadata.resource_version}, "status": st});
    let began = Instant::now();
    let r = api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
        .await;
    tracing::debug!(pod = %name, ms = began.elapsed().as_millis() as u64, ok = r.is_ok(), "status written");
    match r {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {}
        Err(e) => tracing::warn!(pod = %name, error = %e, "status update failed"),
    }
}

/// `v` with every null object member removed, at any depth.
fn without_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, without_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(without_nulls).collect()),
        other => other,
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
