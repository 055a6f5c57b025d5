//! The whole control plane under a burst of Deployments: a 3-member Cairn cluster, the API server,
//! `simulate-nodes`, the scheduler and the controller manager, all real processes on 127.0.0.1
//! (fsync on). Once the simulated nodes are Ready, `CAIRN_CP_DEPLOYMENTS` Deployments holding
//! `CAIRN_CP_PODS` pods between them (image busybox, cpu request 10m) are created at once, and a
//! pod watcher records when it first sees each pod bound to a node and Running+Ready. Measured:
//! pods scheduled per second, each pod's time from its Deployment's create to Running+Ready, the
//! time until every pod is Running, memory and CPU of the processes during that phase, and the API
//! server's own p99 of mutating requests (`apiserver_request_duration_seconds`, POST/PUT/PATCH/
//! DELETE, from the bucket counts). Then, with the cluster full, `CAIRN_CP_LATENCY_PODS` single-pod
//! Deployments are created at `CAIRN_CP_LATENCY_PER_SEC` a second, as the latency pods of
//! Kubernetes' density test are, and each pod's startup is measured as Kubernetes' pod startup SLI
//! defines it: creationTimestamp to Running+Ready observed through a watch. The scheduler and the
//! controller manager run with `--kube-api-qps` and `--kube-api-burst` set to `CAIRN_CP_API_QPS`
//! (default 500). Prints a markdown table with each value beside its target.
//!
//! `cargo build --release -p cairn-server --bin cairn -p cairn-orchestrator --bin
//! cairn-orchestrator` first, then `cargo bench -p cairn-orchestrator --bench control_plane`.
//! Knobs: `CAIRN_CP_NODES` (default 1000), `CAIRN_CP_PODS` (default 30000),
//! `CAIRN_CP_DEPLOYMENTS` (default 300; each gets `PODS / DEPLOYMENTS` replicas),
//! `CAIRN_CP_SECS` (how long to wait for the pods after the first create, default 600; what was
//! reached by then is reported). A quick run:
//! `CAIRN_CP_NODES=100 CAIRN_CP_PODS=2000 CAIRN_CP_DEPLOYMENTS=20 CAIRN_CP_SECS=120`.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{cpu_secs, row, rss_kib, Component, Row};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

const NS: &str = "cp-bench";
/// Index of the first latency Deployment (`dep-<index>`), past any burst Deployment.
const LATENCY_BASE: usize = 100_000;
/// Deployment creates in flight at once.
const CREATORS: usize = 8;
/// How long the simulated nodes may take to register and turn Ready.
const NODES_READY_WITHIN: Duration = Duration::from_secs(300);
/// The verb labels of POST, PUT, PATCH and DELETE requests on `/metrics`.
const MUTATING: [&str; 4] = ["POST", "PUT", "PATCH", "DELETE"];

struct Knobs {
    nodes: usize,
    deployments: usize,
    replicas: usize,
    secs: u64,
    /// Pods created one at a time after the burst, with the cluster full, to measure startup.
    latency_pods: usize,
    latency_per_sec: f64,
    /// `--kube-api-qps` and `--kube-api-burst` of the scheduler and the controller manager.
    api_qps: u64,
}

impl Knobs {
    fn from_env() -> Knobs {
        let pods = common::knob("CAIRN_CP_PODS", 30_000).max(1) as usize;
        let deployments = (common::knob("CAIRN_CP_DEPLOYMENTS", 300).max(1) as usize).min(pods);
        Knobs {
            nodes: common::knob("CAIRN_CP_NODES", 1000).max(1) as usize,
            deployments,
            replicas: pods / deployments,
            secs: common::knob("CAIRN_CP_SECS", 600).max(1),
            latency_pods: common::knob("CAIRN_CP_LATENCY_PODS", 300) as usize,
            latency_per_sec: common::knob("CAIRN_CP_LATENCY_PER_SEC", 10).max(1) as f64,
            api_qps: common::knob("CAIRN_CP_API_QPS", 500),
        }
    }

    fn pods(&self) -> usize {
        self.deployments * self.replicas
    }
}

fn deployment(i: usize, replicas: usize) -> Deployment {
    let app = format!("dep-{i:04}");
    serde_json::from_value(json!({
        "metadata": {"name": app},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app}},
            "template": {
                "metadata": {"labels": {"app": app}},
                "spec": {"containers": [{
                    "name": "c",
                    "image": "busybox",
                    "resources": {"requests": {"cpu": "10m"}},
                }]},
            },
        },
    }))
    .unwrap()
}

fn dep_index(pod: &Pod) -> Option<usize> {
    pod.metadata
        .labels
        .as_ref()?
        .get("app")?
        .strip_prefix("dep-")?
        .parse()
        .ok()
}

fn running_ready(pod: &Pod) -> bool {
    let Some(st) = pod.status.as_ref() else {
        return false;
    };
    st.phase.as_deref() == Some("Running")
        && st
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// When the watcher first saw a pod bound and Running+Ready.
#[derive(Default)]
struct Seen {
    dep: Option<usize>,
    /// The pod's creationTimestamp (whole seconds, as the API writes it).
    created: Option<jiff::Timestamp>,
    first_seen: Option<Instant>,
    bound: Option<Instant>,
    ready: Option<Instant>,
    /// Wall clock at `ready`, to compare with `created`.
    ready_wall: Option<jiff::Timestamp>,
}

#[derive(Default)]
struct Watched {
    pods: Mutex<HashMap<String, Seen>>,
    bound: AtomicUsize,
    ready: AtomicUsize,
}

impl Watched {
    fn saw(&self, pod: &Pod) {
        let at = Instant::now();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let mut pods = self.pods.lock().unwrap();
        let s = pods.entry(name).or_default();
        if s.dep.is_none() {
            s.dep = dep_index(pod);
        }
        if s.first_seen.is_none() {
            s.first_seen = Some(at);
            s.created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
        }
        let has_node = pod.spec.as_ref().is_some_and(|s| s.node_name.is_some());
        if s.bound.is_none() && has_node {
            s.bound = Some(at);
            self.bound.fetch_add(1, Ordering::Relaxed);
        }
        if s.ready.is_none() && running_ready(pod) {
            s.ready = Some(at);
            s.ready_wall = Some(jiff::Timestamp::now());
            self.ready.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The pod watcher on `NS`; resolves once its initial list is done.
async fn watch_pods(client: kube::Client, watched: Arc<Watched>) -> tokio::task::JoinHandle<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let api: Api<Pod> = Api::namespaced(client, NS);
    let task = tokio::spawn(async move {
        let mut tx = Some(tx);
        let mut stream = watcher(api, watcher::Config::default()).boxed();
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => watched.saw(&p),
                Ok(watcher::Event::InitDone) => {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("pod watch: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    let _ = tokio::time::timeout(Duration::from_secs(30), rx).await;
    task
}

/// Mutating-request buckets of `apiserver_request_duration_seconds`, summed over every resource:
/// upper bound (`+Inf` as infinity) to cumulative count; and per (verb, resource/subresource) the
/// sum of seconds and the count.
#[derive(Default)]
struct Scrape {
    buckets: BTreeMap<String, f64>,
    per: BTreeMap<(String, String), (f64, f64)>,
}

fn label<'a>(line: &'a str, name: &str) -> &'a str {
    let key = format!("{name}=\"");
    line.find(&key)
        .map(|i| &line[i + key.len()..])
        .and_then(|r| r.split('"').next())
        .unwrap_or("")
}

async fn scrape(client: &kube::Client) -> Scrape {
    let req = axum::http::Request::get("/metrics")
        .body(Vec::new())
        .unwrap();
    let text = client.request_text(req).await.unwrap_or_default();
    let mut s = Scrape::default();
    for l in text.lines() {
        if !l.starts_with("apiserver_request_duration_seconds") {
            continue;
        }
        let verb = label(l, "verb");
        if !MUTATING.contains(&verb) {
            continue;
        }
        let v: f64 = l
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let what = match label(l, "subresource") {
            "" => label(l, "resource").to_string(),
            sub => format!("{}/{sub}", label(l, "resource")),
        };
        let key = (verb.to_string(), what);
        if l.starts_with("apiserver_request_duration_seconds_bucket{") {
            *s.buckets.entry(label(l, "le").to_string()).or_default() += v;
        } else if l.starts_with("apiserver_request_duration_seconds_sum{") {
            s.per.entry(key).or_default().0 += v;
        } else if l.starts_with("apiserver_request_duration_seconds_count{") {
            s.per.entry(key).or_default().1 += v;
        }
    }
    s
}

/// The `q` quantile in seconds of the requests between two scrapes, interpolated inside the bucket
/// as Prometheus' `histogram_quantile` does (the highest finite bound when it falls in `+Inf`), and
/// the number of requests.
fn quantile(before: &Scrape, after: &Scrape, q: f64) -> (f64, f64) {
    let mut b: Vec<(f64, f64)> = after
        .buckets
        .iter()
        .map(|(le, c)| {
            let bound = le.parse().unwrap_or(f64::INFINITY);
            (bound, c - before.buckets.get(le).copied().unwrap_or(0.0))
        })
        .collect();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    let total = b.last().map(|x| x.1).unwrap_or(0.0);
    if total <= 0.0 {
        return (f64::NAN, 0.0);
    }
    let rank = q * total;
    let (mut prev_le, mut prev_c) = (0.0, 0.0);
    for (le, c) in &b {
        if *c >= rank {
            if le.is_infinite() {
                return (prev_le, total);
            }
            let frac = if c > &prev_c {
                (rank - prev_c) / (c - prev_c)
            } else {
                0.0
            };
            return (prev_le + (le - prev_le) * frac, total);
        }
        (prev_le, prev_c) = (*le, *c);
    }
    (prev_le, total)
}

#[derive(Clone, Copy)]
struct Cpu {
    apiserver: f64,
    members: f64,
    scheduler: f64,
    controllers: f64,
    nodes: f64,
    machine: f64,
    at: Instant,
}

struct Pids {
    apiserver: u32,
    members: Vec<u32>,
    scheduler: u32,
    controllers: u32,
    nodes: u32,
}

impl Pids {
    fn cpu(&self) -> Cpu {
        Cpu {
            apiserver: cpu_secs(self.apiserver),
            members: self.members.iter().map(|p| cpu_secs(*p)).sum(),
            scheduler: cpu_secs(self.scheduler),
            controllers: cpu_secs(self.controllers),
            nodes: cpu_secs(self.nodes),
            machine: common::machine_busy_secs(),
            at: Instant::now(),
        }
    }

    /// MiB: API server, each member, scheduler, controller manager, simulated nodes.
    fn rss(&self) -> Vec<f64> {
        let mut pids = vec![self.apiserver];
        pids.extend(&self.members);
        pids.extend([self.scheduler, self.controllers, self.nodes]);
        pids.iter().map(|p| rss_kib(*p) as f64 / 1024.0).collect()
    }
}

async fn bench(k: &Knobs) -> Vec<Row> {
    let mut rows = Vec::new();
    let (cluster, api, client) = common::cluster_and_apiserver(3).await;
    let dir = api.dir().to_path_buf();
    let kc = api.kubeconfig.clone();
    let count = k.nodes.to_string();
    let mut sim = Component::start(
        "simulate-nodes",
        &["simulate-nodes", "--count", &count],
        &kc,
        &dir,
    );
    let qps = format!("--kube-api-qps={}", k.api_qps);
    let burst = format!("--kube-api-burst={}", k.api_qps);
    let mut sched = Component::start(
        "scheduler",
        &["scheduler", "--leader-elect=false", &qps, &burst],
        &kc,
        &dir,
    );
    let mut cm = Component::start(
        "controller-manager",
        &["controller-manager", "--leader-elect=false", &qps, &burst],
        &kc,
        &dir,
    );
    let pids = Pids {
        apiserver: api.pid(),
        members: cluster.pids(),
        scheduler: sched.pid(),
        controllers: cm.pid(),
        nodes: sim.pid(),
    };

    // The nodes.
    let t0 = Instant::now();
    let nodes: Api<Node> = Api::all(client.clone());
    loop {
        sim.check();
        let ready = nodes
            .list(&ListParams::default())
            .await
            .map(|l| {
                l.items
                    .iter()
                    .filter(|n| {
                        n.status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|c| {
                                c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                            })
                    })
                    .count()
            })
            .unwrap_or(0);
        if ready >= k.nodes {
            break;
        }
        assert!(
            t0.elapsed() < NODES_READY_WITHIN,
            "only {ready} of {} nodes Ready after {:?}",
            k.nodes,
            NODES_READY_WITHIN
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!(
        "{} nodes Ready in {:.1} s",
        k.nodes,
        t0.elapsed().as_secs_f64()
    );
    let (idle_rss, idle_cpu) = (pids.rss(), pids.cpu());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_cores = {
        let now = pids.cpu();
        let s = now.at.duration_since(idle_cpu.at).as_secs_f64();
        (now.apiserver - idle_cpu.apiserver + now.members - idle_cpu.members) / s
    };

    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap(),
        )
        .await
        .expect("create namespace");
    let watched = Arc::new(Watched::default());
    let watch_task = watch_pods(api.client().await.expect("kube client"), watched.clone()).await;

    // The burst.
    let before_metrics = scrape(&client).await;
    let cpu0 = pids.cpu();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(k.secs);
    let created: Arc<Vec<Mutex<Option<Instant>>>> =
        Arc::new((0..k.deployments).map(|_| Mutex::new(None)).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let mut creators = Vec::new();
    for _ in 0..CREATORS {
        let (api, created, next, (d, r)) = (
            Api::<Deployment>::namespaced(client.clone(), NS),
            created.clone(),
            next.clone(),
            (k.deployments, k.replicas),
        );
        creators.push(tokio::spawn(async move {
            let mut errors = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= d {
                    return errors;
                }
                *created[i].lock().unwrap() = Some(Instant::now());
                if let Err(e) = api.create(&PostParams::default(), &deployment(i, r)).await {
                    eprintln!("create deployment {i}: {e}");
                    errors += 1;
                }
            }
        }));
    }
    let mut create_errors = 0;
    for c in creators {
        create_errors += c.await.expect("creator");
    }
    let creates_took = start.elapsed();
    eprintln!(
        "{} Deployments created in {:.1} s ({create_errors} errors)",
        k.deployments,
        creates_took.as_secs_f64()
    );
    let total = k.pods();
    let mut peak_rss = pids.rss();
    let mut last_print = Instant::now();
    while Instant::now() < deadline {
        sim.check();
        sched.check();
        cm.check();
        for (p, v) in peak_rss.iter_mut().zip(pids.rss()) {
            *p = p.max(v);
        }
        let (b, r) = (
            watched.bound.load(Ordering::Relaxed),
            watched.ready.load(Ordering::Relaxed),
        );
        if last_print.elapsed() >= Duration::from_secs(10) {
            eprintln!(
                "{:>5.0} s: {b} bound, {r} Running+Ready of {total}",
                start.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        if r >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let cpu1 = pids.cpu();
    let after_metrics = scrape(&client).await;

    // Startup with the cluster full: single-pod Deployments created at a steady pace, as the
    // latency pods of Kubernetes' density test are.
    let lat_before = scrape(&client).await;
    let lat_start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / k.latency_per_sec));
    let mut lat_creates = Vec::new();
    for i in 0..k.latency_pods {
        tick.tick().await;
        let api = Api::<Deployment>::namespaced(client.clone(), NS);
        lat_creates.push(tokio::spawn(async move {
            api.create(&PostParams::default(), &deployment(LATENCY_BASE + i, 1))
                .await
                .is_err() as usize
        }));
    }
    let mut lat_errors = 0;
    for c in lat_creates {
        lat_errors += c.await.unwrap_or(1);
    }
    let lat_deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < lat_deadline
        && watched.ready.load(Ordering::Relaxed) < total + k.latency_pods
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let lat_took = lat_start.elapsed();
    let lat_after = scrape(&client).await;
    watch_task.abort();

    // What was seen.
    let created: Vec<Option<Instant>> = created.iter().map(|c| *c.lock().unwrap()).collect();
    let pods = watched.pods.lock().unwrap();
    let burst_pod = |s: &&Seen| s.dep.is_some_and(|d| d < LATENCY_BASE);
    let mut bound_at: Vec<Instant> = pods
        .values()
        .filter(burst_pod)
        .filter_map(|s| s.bound)
        .collect();
    bound_at.sort();
    let mut ready_at: Vec<Instant> = pods
        .values()
        .filter(burst_pod)
        .filter_map(|s| s.ready)
        .collect();
    ready_at.sort();
    let mut startup: Vec<Duration> = pods
        .values()
        .filter_map(|s| Some(s.ready? - (*created.get(s.dep?)?)?))
        .collect();
    startup.sort();
    // Kubernetes' pod startup SLI: creationTimestamp to Running+Ready observed through a watch.
    let sli = |burst: bool| {
        let mut v: Vec<Duration> = pods
            .values()
            .filter(|s| s.dep.is_some_and(|d| (d >= LATENCY_BASE) != burst))
            .filter_map(|s| {
                let d = s.ready_wall?.duration_since(s.created?);
                Duration::try_from(d).ok()
            })
            .collect();
        v.sort();
        v
    };
    let (burst_sli, latency_sli) = (sli(true), sli(false));
    let n_bound = bound_at.len();
    let n_ready = ready_at.len();
    let since = |t: Option<&Instant>| t.map(|t| t.duration_since(start).as_secs_f64());

    let sched_rate = since(bound_at.last())
        .map(|s| n_bound as f64 / s)
        .unwrap_or(0.0);
    let steady = if n_bound >= 10 {
        let (a, b) = (bound_at[n_bound / 10], bound_at[n_bound * 9 / 10]);
        format!(
            "; {:.0}/s between the 10th and 90th percentile bind",
            (n_bound * 8 / 10) as f64 / b.duration_since(a).as_secs_f64().max(1e-9)
        )
    } else {
        String::new()
    };
    row(
        &mut rows,
        "pods scheduled per second (bound / time from the first create to the last bind)",
        format!("{sched_rate:.0}/s ({n_bound} of {total} bound{steady})"),
        ">= 300/s",
    );
    row(
        &mut rows,
        "pod startup in the burst: Deployment create to pod Running+Ready, p50 / p99",
        format!(
            "{:.2} s / {:.2} s (over {} pods)",
            common::quantile_secs(&startup, 0.5),
            common::quantile_secs(&startup, 0.99),
            startup.len()
        ),
        "",
    );
    row(
        &mut rows,
        "pod startup in the burst: creationTimestamp to Running+Ready seen, p50 / p99",
        format!(
            "{:.2} s / {:.2} s (over {} pods)",
            common::quantile_secs(&burst_sli, 0.5),
            common::quantile_secs(&burst_sli, 0.99),
            burst_sli.len()
        ),
        "",
    );
    row(
        &mut rows,
        &format!(
            "pod startup with the cluster full: {} single-pod Deployments at {}/s, creationTimestamp (whole seconds) to Running+Ready seen, p50 / p99",
            k.latency_pods, k.latency_per_sec
        ),
        format!(
            "{:.2} s / {:.2} s (over {} pods; {lat_errors} create errors)",
            common::quantile_secs(&latency_sli, 0.5),
            common::quantile_secs(&latency_sli, 0.99),
            latency_sli.len()
        ),
        "p99 < 2 s",
    );
    let (lp99, ln) = quantile(&lat_before, &lat_after, 0.99);
    let (lp50, _) = quantile(&lat_before, &lat_after, 0.5);
    row(
        &mut rows,
        "API mutating requests while the cluster is full, server-side p50 / p99",
        format!(
            "{:.0} ms / {:.0} ms over {ln:.0} requests ({:.0}/s)",
            lp50 * 1000.0,
            lp99 * 1000.0,
            ln / lat_took.as_secs_f64()
        ),
        "p99 < 500 ms",
    );
    row(
        &mut rows,
        "time until every pod is Running+Ready (from the first create)",
        if n_ready >= total {
            format!("{:.1} s", since(ready_at.last()).unwrap_or(f64::NAN))
        } else {
            format!(
                "not reached: {n_ready} of {total} Running+Ready after {:.0} s",
                cpu1.at.duration_since(start).as_secs_f64()
            )
        },
        "",
    );
    row(
        &mut rows,
        "Deployment creates",
        format!(
            "{} in {:.1} s from {CREATORS} clients, {create_errors} errors",
            k.deployments,
            creates_took.as_secs_f64()
        ),
        "",
    );
    let (p99, n) = quantile(&before_metrics, &after_metrics, 0.99);
    let (p50, _) = quantile(&before_metrics, &after_metrics, 0.5);
    row(
        &mut rows,
        "API mutating requests (POST/PUT/PATCH/DELETE) during the burst, server-side p50 / p99",
        format!(
            "{:.0} ms / {:.0} ms over {n:.0} requests ({:.0}/s)",
            p50 * 1000.0,
            p99 * 1000.0,
            n / cpu1.at.duration_since(cpu0.at).as_secs_f64()
        ),
        "p99 < 500 ms",
    );
    let s = cpu1.at.duration_since(cpu0.at).as_secs_f64();
    row(
        &mut rows,
        "cores busy during the phase: API server / members summed / scheduler / controller manager / simulated nodes / whole machine",
        format!(
            "{:.2} / {:.2} / {:.2} / {:.2} / {:.2} / {:.2} (machine has {} cores; API server + members idle before: {idle_cores:.2})",
            (cpu1.apiserver - cpu0.apiserver) / s,
            (cpu1.members - cpu0.members) / s,
            (cpu1.scheduler - cpu0.scheduler) / s,
            (cpu1.controllers - cpu0.controllers) / s,
            (cpu1.nodes - cpu0.nodes) / s,
            (cpu1.machine - cpu0.machine) / s,
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        ),
        "",
    );
    let fmt_rss = |v: &[f64]| {
        format!(
            "{:.0} / {:.0}, {:.0}, {:.0} / {:.0} / {:.0} / {:.0}",
            v[0], v[1], v[2], v[3], v[4], v[5], v[6]
        )
    };
    row(
        &mut rows,
        "RSS MiB with the nodes idle: API server / members / scheduler / controller manager / simulated nodes",
        fmt_rss(&idle_rss),
        "",
    );
    row(
        &mut rows,
        "peak RSS MiB during the phase: API server / members / scheduler / controller manager / simulated nodes",
        fmt_rss(&peak_rss),
        "",
    );
    // Where the mutating requests went, for the notes.
    let mut per: Vec<(&(String, String), f64, f64)> = after_metrics
        .per
        .iter()
        .map(|(key, (sum, count))| {
            let (s0, c0) = before_metrics.per.get(key).copied().unwrap_or((0.0, 0.0));
            (key, sum - s0, count - c0)
        })
        .filter(|x| x.2 > 0.0)
        .collect();
    per.sort_by(|a, b| b.2.total_cmp(&a.2));
    eprintln!("mutating requests during the phase (verb resource: count, mean ms):");
    for ((verb, what), sum, count) in per {
        eprintln!(
            "  {verb} {what}: {count:.0}, {:.1} ms",
            sum * 1000.0 / count
        );
    }
    rows
}

fn main() {
    if !common::benchmarking("control_plane") {
        return;
    }
    let k = Knobs::from_env();
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let rows = rt.block_on(bench(&k));
    common::print_table(
        &format!(
            "3 cairn members, cairn-orchestrator apiserver, scheduler, controller-manager and simulate-nodes as processes on 127.0.0.1 (fsync on); \
             {} simulated nodes; {} Deployments x {} replicas = {} pods (busybox, cpu 10m) created at once; waited up to {} s; whole run {:.0} s",
            k.nodes,
            k.deployments,
            k.replicas,
            k.pods(),
            k.secs,
            started.elapsed().as_secs_f64()
        ),
        &rows,
    );
}
