//! Pods on one real node (root): a one-member Cairn store, `cairn-orchestrator apiserver`,
//! `scheduler`, `controller-manager` and `agent` as processes on 127.0.0.1. A Deployment of
//! `CAIRN_NODE_PODS` replicas (default 50) of a local image (the host's root, `image: /`, running
//! `sleep`) is created; a pod watcher records when it first sees each pod (its ADDED event) and when
//! it sees it Running and Ready. Measured: per-pod startup (first seen to Running+Ready, and the
//! Deployment's create to Running+Ready), the time until every pod runs, and the agent's RSS and
//! CPU with the pods running. Then the Deployment is deleted and the time until every pod object
//! is gone (processes stopped first) is measured. Prints a markdown table.
//!
//! `cargo build --release -p cairn-server --bin cairn -p cairn-orchestrator --bin
//! cairn-orchestrator`, then `cargo bench -p cairn-orchestrator --bench node` as root.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{row, rss_kib, Component, Row};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

const NODE: &str = "bench-node";

#[derive(Default, Clone, Copy)]
struct Seen {
    added: Option<Instant>,
    ready: Option<Instant>,
}

fn running_ready(p: &Pod) -> bool {
    p.status.as_ref().is_some_and(|s| {
        s.phase.as_deref() == Some("Running")
            && s.conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

async fn bench(pods_wanted: usize) -> Vec<Row> {
    let mut rows = Vec::new();
    let (_cluster, api, client) = common::cluster_and_apiserver(1).await;
    let dir = api.dir().to_path_buf();
    let kc = api.kubeconfig.clone();
    let root = dir.join("agent");
    let cgroup = format!("cairn-bench-{}", std::process::id());
    let mut sched = Component::start(
        "scheduler",
        &["scheduler", "--leader-elect=false"],
        &kc,
        &dir,
    );
    let mut cm = Component::start(
        "controller-manager",
        &["controller-manager", "--leader-elect=false"],
        &kc,
        &dir,
    );
    let root_s = root.display().to_string();
    let mut agent = Component::start(
        "agent",
        &[
            "agent",
            "--node-name",
            NODE,
            "--root-dir",
            &root_s,
            "--cgroup-parent",
            &cgroup,
            "--port",
            "0",
        ],
        &kc,
        &dir,
    );
    let nodes: Api<Node> = Api::all(client.clone());
    let t0 = Instant::now();
    loop {
        agent.check();
        let ready = nodes.get_opt(NODE).await.ok().flatten().is_some_and(|n| {
            n.status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        });
        if ready {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the node never got Ready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let idle_rss = rss_kib(agent.pid()) as f64 / 1024.0;

    let seen: Arc<Mutex<HashMap<String, Seen>>> = Arc::default();
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let s2 = seen.clone();
    let watch = tokio::spawn(async move {
        let mut stream = watcher(pods_api, watcher::Config::default()).boxed();
        while let Some(ev) = stream.next().await {
            if let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = ev {
                let at = Instant::now();
                let mut m = s2.lock().unwrap();
                let e = m
                    .entry(p.metadata.name.clone().unwrap_or_default())
                    .or_default();
                e.added.get_or_insert(at);
                if running_ready(&p) {
                    e.ready.get_or_insert(at);
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let deps: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let dep: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "bench"},
        "spec": {"replicas": pods_wanted, "selector": {"matchLabels": {"app": "bench"}},
            "template": {"metadata": {"labels": {"app": "bench"}},
                "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "main", "image": "/",
                    "command": ["/bin/sh", "-c", "exec sleep 3600"]}]}}},
    }))
    .unwrap();
    let created = Instant::now();
    deps.create(&PostParams::default(), &dep).await.unwrap();
    let deadline = created + Duration::from_secs(120);
    let mut peak_rss: f64 = 0.0;
    loop {
        agent.check();
        sched.check();
        cm.check();
        peak_rss = peak_rss.max(rss_kib(agent.pid()) as f64 / 1024.0);
        let ready = seen
            .lock()
            .unwrap()
            .values()
            .filter(|s| s.ready.is_some())
            .count();
        if ready >= pods_wanted || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_running = created.elapsed();
    let cpu0 = (common::cpu_secs(agent.pid()), Instant::now());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let steady_cores = (common::cpu_secs(agent.pid()) - cpu0.0) / cpu0.1.elapsed().as_secs_f64();
    let steady_rss = rss_kib(agent.pid()) as f64 / 1024.0;
    let seen_now: Vec<Seen> = seen.lock().unwrap().values().copied().collect();
    let mut startup: Vec<Duration> = seen_now
        .iter()
        .filter_map(|s| Some(s.ready? - s.added?))
        .collect();
    startup.sort();
    let mut from_create: Vec<Duration> = seen_now
        .iter()
        .filter_map(|s| Some(s.ready? - created))
        .collect();
    from_create.sort();
    let n_ready = startup.len();

    // Deletion: every pod's processes stopped and its object gone.
    let deleted = Instant::now();
    deps.delete("bench", &DeleteParams::default())
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let gone_by = deleted + Duration::from_secs(120);
    let all_gone = loop {
        let left = pods
            .list(&ListParams::default().labels("app=bench"))
            .await
            .map(|l| l.items.len())
            .unwrap_or(usize::MAX);
        if left == 0 {
            break Some(deleted.elapsed());
        }
        if Instant::now() > gone_by {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    watch.abort();
    drop(agent);

    row(
        &mut rows,
        "pod startup: first seen (ADDED) to Running+Ready seen, p50 / p99",
        format!(
            "{:.3} s / {:.3} s (over {n_ready} of {pods_wanted} pods)",
            common::quantile_secs(&startup, 0.5),
            common::quantile_secs(&startup, 0.99)
        ),
        "p99 < 1 s",
    );
    row(
        &mut rows,
        "Deployment create to pod Running+Ready, p50 / p99",
        format!(
            "{:.3} s / {:.3} s",
            common::quantile_secs(&from_create, 0.5),
            common::quantile_secs(&from_create, 0.99)
        ),
        "",
    );
    row(
        &mut rows,
        "Deployment create until every pod is Running+Ready",
        format!("{:.2} s", all_running.as_secs_f64()),
        "",
    );
    row(
        &mut rows,
        "agent RSS MiB: idle / peak while starting / with the pods running",
        format!("{idle_rss:.1} / {peak_rss:.1} / {steady_rss:.1}"),
        "< 40 MiB with 50 pods",
    );
    row(
        &mut rows,
        "agent CPU with the pods running (cores, over 10 s)",
        format!("{steady_cores:.3}"),
        "",
    );
    row(
        &mut rows,
        "Deployment delete until every pod object is gone (processes stopped first)",
        all_gone.map_or("not within 120 s".into(), |d| {
            format!("{:.2} s", d.as_secs_f64())
        }),
        "",
    );
    // Anything left (a run cut short) goes with its cgroups.
    let mut cfg =
        cairn_orchestrator::runtime::RuntimeConfig::new(&root, common::orchestrator_bin());
    cfg.cgroup_parent = cgroup.clone();
    if let Ok(rt) = cairn_orchestrator::runtime::Runtime::new(cfg) {
        for p in rt.list().unwrap_or_default() {
            let _ = rt.remove_pod(&p.name).await;
        }
        let _ = rt.cgroups().remove(std::path::Path::new(&cgroup));
    }
    rows
}

fn main() {
    if !common::benchmarking("node") {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED: node bench: needs root (pods run in namespaces and cgroups)");
        return;
    }
    let n = common::knob("CAIRN_NODE_PODS", 50).max(1) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let rows = rt.block_on(bench(n));
    common::print_table(
        &format!(
            "1 cairn member, cairn-orchestrator apiserver, scheduler, controller-manager and agent as processes on 127.0.0.1; \
             one real node; a Deployment of {n} pods (image: / running sleep); whole run {:.0} s",
            started.elapsed().as_secs_f64()
        ),
        &rows,
    );
}
