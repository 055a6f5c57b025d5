//! Deployments and ReplicaSets converging on simulated nodes with the real scheduler: replicas
//! spread, a deleted pod is replaced, scaling up and down converges, an image change rolls out
//! without dropping below `replicas - maxUnavailable` ready pods at any observed step, and kubectl's
//! `rollout status`, `history` and `undo` work.

mod kube_api;

use std::time::{Duration, Instant};

use cairn_orchestrator::simulate::{SimConfig, SimulatedNodes};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube_api::{have_kubectl, Cluster};
use serde_json::json;

struct Running {
    _sim: SimulatedNodes,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn control_plane(client: &kube::Client) -> Running {
    let sim = SimulatedNodes::start(
        client.clone(),
        SimConfig {
            count: 3,
            cpu: "8".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let c1 = client.clone();
    let c2 = client.clone();
    Running {
        _sim: sim,
        tasks: vec![
            tokio::spawn(async move {
                let _ = cairn_orchestrator::scheduler::run(c1, std::future::pending()).await;
            }),
            tokio::spawn(async move {
                let _ = cairn_orchestrator::controllers::run(c2, std::future::pending()).await;
            }),
        ],
    }
}

fn deployment(name: &str, replicas: i32, image: &str) -> Deployment {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"replicas": replicas,
        "selector": {"matchLabels": {"app": name}},
        "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}},
        "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": image,
            "resources": {"requests": {"cpu": "100m"}}}]}}}}))
    .unwrap()
}

fn ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn app_pods(pods: &Api<Pod>, app: &str) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
}

async fn converge<F>(what: &str, secs: u64, mut done: F)
where
    F: AsyncFnMut() -> bool,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_converge_scale_and_roll_out() {
    let c = Cluster::start().await;
    let client = c.kube().await;
    let _cp = control_plane(&client).await;
    let deps: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    deps.create(&PostParams::default(), &deployment("web", 3, "nginx:1"))
        .await
        .unwrap();
    converge("3 ready replicas on 3 nodes", 30, async || {
        let ps = app_pods(&pods, "web").await;
        let mut nodes: Vec<String> = ps
            .iter()
            .filter(|p| ready(p))
            .filter_map(|p| p.spec.as_ref()?.node_name.clone())
            .collect();
        nodes.sort();
        nodes.dedup();
        ps.iter().filter(|p| ready(p)).count() == 3 && nodes.len() == 3
    })
    .await;
    converge("deployment status", 30, async || {
        let s = deps.get("web").await.unwrap().status.unwrap_or_default();
        s.available_replicas == Some(3) && s.updated_replicas == Some(3)
    })
    .await;

    // A deleted pod is replaced.
    let victim = app_pods(&pods, "web").await[0]
        .metadata
        .name
        .clone()
        .unwrap();
    pods.delete(&victim, &DeleteParams::default())
        .await
        .unwrap();
    converge("replacement", 30, async || {
        let ps = app_pods(&pods, "web").await;
        ps.iter().filter(|p| ready(p)).count() == 3
            && ps
                .iter()
                .all(|p| p.metadata.name.as_deref() != Some(victim.as_str()))
    })
    .await;

    // Scale 3 -> 10 -> 2.
    for n in [10usize, 2] {
        deps.patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": n}})),
        )
        .await
        .unwrap();
        converge(&format!("{n} replicas"), 60, async || {
            let ps = app_pods(&pods, "web").await;
            ps.len() == n && ps.iter().all(ready)
        })
        .await;
    }

    // An image change on 4 replicas (maxUnavailable 1) never has fewer than 3 ready pods.
    deps.patch_scale(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 4}})),
    )
    .await
    .unwrap();
    converge("4 replicas", 60, async || {
        let ps = app_pods(&pods, "web").await;
        ps.len() == 4 && ps.iter().all(ready)
    })
    .await;
    deps.patch("web", &PatchParams::default(), &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "nginx:2"}]}}}})))
        .await
        .unwrap();
    let mut steps = 0;
    converge("rollout to nginx:2", 90, async || {
        let ps = app_pods(&pods, "web").await;
        let ready_n = ps.iter().filter(|p| ready(p)).count();
        assert!(ready_n >= 3, "only {ready_n} ready pods during the rollout");
        assert!(
            ps.iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .count()
                <= 5,
            "more than replicas + maxSurge pods"
        );
        steps += 1;
        let new: Vec<&Pod> = ps
            .iter()
            .filter(|p| p.spec.as_ref().unwrap().containers[0].image.as_deref() == Some("nginx:2"))
            .collect();
        let d = deps.get("web").await.unwrap();
        let s = d.status.unwrap_or_default();
        new.len() == 4
            && ps.len() == 4
            && new.iter().all(|p| ready(p))
            && s.updated_replicas == Some(4)
            && s.available_replicas == Some(4)
            && s.observed_generation >= d.metadata.generation
    })
    .await;
    assert!(steps > 1);
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let all = rss.list(&ListParams::default()).await.unwrap().items;
    let mut revs: Vec<String> = all
        .iter()
        .filter_map(|r| {
            r.metadata
                .annotations
                .as_ref()?
                .get("deployment.kubernetes.io/revision")
                .cloned()
        })
        .collect();
    revs.sort();
    assert_eq!(revs, ["1", "2"]);

    if have_kubectl(
        "deployments_converge_scale_and_roll_out (kubectl rollout)",
        32,
    ) {
        let out = tokio::task::spawn_blocking(move || {
            let status = c.ok(32, &["rollout", "status", "deploy/web", "--timeout=60s"]);
            assert!(status.contains("successfully rolled out"), "{status}");
            let history = c.ok(32, &["rollout", "history", "deploy/web"]);
            assert!(history.contains('1') && history.contains('2'), "{history}");
            c.ok(32, &["rollout", "undo", "deploy/web"]);
            let status = c.ok(32, &["rollout", "status", "deploy/web", "--timeout=60s"]);
            assert!(status.contains("successfully rolled out"), "{status}");
            let image = c.ok(
                32,
                &[
                    "get",
                    "deploy",
                    "web",
                    "-o",
                    "jsonpath={.spec.template.spec.containers[0].image}",
                ],
            );
            (c, image)
        })
        .await
        .unwrap();
        assert_eq!(out.1, "nginx:1", "undo restores the previous template");
        let c = out.0;
        converge("pods back on nginx:1", 60, async || {
            let ps = app_pods(&pods, "web").await;
            ps.len() == 4
                && ps.iter().all(|p| {
                    ready(p)
                        && p.spec.as_ref().unwrap().containers[0].image.as_deref()
                            == Some("nginx:1")
                })
        })
        .await;
        c.shutdown().await;
    }
}
