//! Deployments and ReplicaSets converging on simulated nodes with the real scheduler: replicas
//! spread, a deleted pod is replaced, scaling up and down converges, an image change rolls out
//! without dropping below `replicas - maxUnavailable` ready pods at any observed step, and kubectl's
//! `rollout status`, `history` and `undo` work.

use crate::kube_api;

use std::time::{Duration, Instant};

use cairn_orchestrator::simulate::{SimConfig, SimulatedNodes};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube_api::{converge, have_kubectl, Cluster};
use serde_json::json;

struct Running {
    sim: SimulatedNodes,
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
    let sim = SimConfig {
        count: 3,
        cpu: "8".into(),
        ..Default::default()
    };
    control_plane_with(client, Default::default(), sim).await
}

async fn control_plane_with(
    client: &kube::Client,
    cfg: cairn_orchestrator::controllers::ControllerConfig,
    sim: SimConfig,
) -> Running {
    let sim = SimulatedNodes::start(client.clone(), sim).await.unwrap();
    let c1 = client.clone();
    let c2 = client.clone();
    Running {
        sim,
        tasks: vec![
            tokio::spawn(async move {
                let _ = cairn_orchestrator::scheduler::run(c1, std::future::pending()).await;
            }),
            tokio::spawn(async move {
                let _ = cairn_orchestrator::controllers::run(c2, cfg, std::future::pending()).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_cascades_through_owners_and_namespaces() {
    let c = Cluster::start().await;
    let client = c.kube().await;
    let _cp = control_plane(&client).await;
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap(),
    )
    .await
    .unwrap();
    // Every namespace gets a default ServiceAccount.
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), "team");
    converge("default service account", 20, async || {
        sas.get_opt("default").await.unwrap().is_some()
    })
    .await;
    let deps: Api<Deployment> = Api::namespaced(client.clone(), "team");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "team");
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "team");
    for name in ["bg", "orphaned"] {
        deps.create(&PostParams::default(), &deployment(name, 2, "nginx:1"))
            .await
            .unwrap();
        converge("2 ready", 30, async || {
            app_pods(&pods, name)
                .await
                .iter()
                .filter(|p| ready(p))
                .count()
                == 2
        })
        .await;
    }
    // Background: the ReplicaSet and its pods follow the Deployment.
    deps.delete("bg", &DeleteParams::background())
        .await
        .unwrap();
    converge("bg's ReplicaSet and pods gone", 30, async || {
        let rs_left = rss
            .list(&ListParams::default().labels("app=bg"))
            .await
            .unwrap()
            .items
            .len();
        rs_left == 0 && app_pods(&pods, "bg").await.is_empty()
    })
    .await;
    // Orphan: the ReplicaSet stays, without its owner reference, and keeps its pods.
    deps.delete("orphaned", &DeleteParams::orphan())
        .await
        .unwrap();
    converge("orphaned deployment gone", 30, async || {
        deps.get_opt("orphaned").await.unwrap().is_none()
    })
    .await;
    let left = rss
        .list(&ListParams::default().labels("app=orphaned"))
        .await
        .unwrap()
        .items;
    assert_eq!(left.len(), 1);
    assert!(left[0]
        .metadata
        .owner_references
        .as_ref()
        .is_none_or(|r| r.is_empty()));
    assert_eq!(app_pods(&pods, "orphaned").await.len(), 2);
    // Deleting the namespace removes all that is in it, then the namespace.
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), "team");
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "cfg"}})).unwrap(),
    )
    .await
    .unwrap();
    nss.delete("team", &DeleteParams::default()).await.unwrap();
    converge("namespace gone", 60, async || {
        nss.get_opt("team").await.unwrap().is_none()
    })
    .await;
    assert!(pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty());
    assert!(cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_follow_ready_pods() {
    let c = Cluster::start().await;
    let client = c.kube().await;
    let _cp = control_plane(&client).await;
    let deps: Api<Deployment> = Api::namespaced(client.clone(), "default");
    deps.create(&PostParams::default(), &deployment("api", 2, "nginx:1"))
        .await
        .unwrap();
    let svcs: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), "default");
    svcs.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "api"},
        "spec": {"selector": {"app": "api"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})).unwrap())
        .await
        .unwrap();
    let eps: Api<k8s_openapi::api::core::v1::Endpoints> =
        Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    converge("2 endpoint addresses", 30, async || {
        let Some(ep) = eps.get_opt("api").await.unwrap() else {
            return false;
        };
        let subsets = ep.subsets.unwrap_or_default();
        let ips: Vec<String> = subsets
            .iter()
            .flat_map(|s| s.addresses.iter().flatten().map(|a| a.ip.clone()))
            .collect();
        let want: Vec<String> = app_pods(&pods, "api")
            .await
            .iter()
            .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
            .collect();
        ips.len() == 2
            && want.iter().all(|w| ips.contains(w))
            && subsets
                .iter()
                .all(|s| s.ports.as_ref().is_some_and(|p| p[0].port == 8080))
    })
    .await;
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        Api::namespaced(client.clone(), "default");
    let l = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=api"))
        .await
        .unwrap()
        .items;
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].endpoints.len(), 2);
    assert!(l[0]
        .endpoints
        .iter()
        .all(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true)));
    // Scaled to 1: one address left.
    deps.patch_scale(
        "api",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await
    .unwrap();
    converge("1 endpoint address", 30, async || {
        let ep = eps.get("api").await.unwrap();
        ep.subsets
            .unwrap_or_default()
            .iter()
            .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
            .sum::<usize>()
            == 1
    })
    .await;
}

/// The endpoints of the Service's slices, by slice name.
async fn slice_sizes(client: &kube::Client, svc: &str) -> Vec<(String, usize)> {
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        Api::namespaced(client.clone(), "default");
    let mut v: Vec<(String, usize)> = slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={svc}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|s| (s.metadata.name.unwrap_or_default(), s.endpoints.len()))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_slices_are_split_at_the_limit_and_shrink_with_the_service() {
    let c = Cluster::start().await;
    let client = c.kube().await;
    let cfg = cairn_orchestrator::controllers::ControllerConfig {
        max_endpoints_per_slice: 2,
        ..Default::default()
    };
    let sim = SimConfig {
        count: 3,
        cpu: "8".into(),
        ..Default::default()
    };
    let _cp = control_plane_with(&client, cfg, sim).await;
    let deps: Api<Deployment> = Api::namespaced(client.clone(), "default");
    deps.create(&PostParams::default(), &deployment("web", 5, "nginx:1"))
        .await
        .unwrap();
    let svcs: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), "default");
    svcs.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}))
        .unwrap(),
    )
    .await
    .unwrap();
    converge("5 endpoints in slices of at most 2", 30, async || {
        let sizes = slice_sizes(&client, "web").await;
        sizes.iter().map(|s| s.1).sum::<usize>() == 5 && sizes.iter().all(|s| s.1 <= 2)
    })
    .await;
    assert_eq!(slice_sizes(&client, "web").await.len(), 3);
    deps.patch_scale(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await
    .unwrap();
    converge("one slice with one endpoint left", 30, async || {
        slice_sizes(&client, "web").await == [("web-0".to_string(), 1)]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_turns_unreachable_and_its_pods_move() {
    let c = Cluster::start().await;
    let client = c.kube().await;
    let cfg = cairn_orchestrator::controllers::ControllerConfig {
        node_monitor_grace_period: Duration::from_secs(2),
        ..Default::default()
    };
    let cp = control_plane_with(
        &client,
        cfg,
        SimConfig {
            count: 3,
            cpu: "8".into(),
            heartbeat: Duration::from_millis(500),
            ..Default::default()
        },
    )
    .await;
    let deps: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let mut d = deployment("moving", 3, "nginx:1");
    // Tolerate an unreachable node for 1 s instead of the default 300 s.
    d.spec.as_mut().unwrap().template.spec.as_mut().unwrap().tolerations = Some(vec![serde_json::from_value(json!(
        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 1})).unwrap()]);
    deps.create(&PostParams::default(), &d).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    converge("3 ready", 30, async || {
        app_pods(&pods, "moving")
            .await
            .iter()
            .filter(|p| ready(p))
            .count()
            == 3
    })
    .await;
    cp.sim.silence("sim-1");
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    converge("sim-1 unreachable", 30, async || {
        let n = nodes.get("sim-1").await.unwrap();
        let unknown = n
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "Unknown");
        let tainted = n
            .spec
            .and_then(|s| s.taints)
            .unwrap_or_default()
            .iter()
            .any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute");
        unknown && tainted
    })
    .await;
    converge("3 ready pods off sim-1", 60, async || {
        let ps = app_pods(&pods, "moving").await;
        let live: Vec<&Pod> = ps.iter().filter(|p| ready(p)).collect();
        live.len() == 3
            && live
                .iter()
                .all(|p| p.spec.as_ref().unwrap().node_name.as_deref() != Some("sim-1"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_quota_reports_what_is_already_there() {
    let c = Cluster::start().await;
    let client = c.kube().await;
    let _cp = control_plane(&client).await;
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), "default");
    for i in 0..3 {
        cms.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": format!("c{i}")}})).unwrap(),
        )
        .await
        .unwrap();
    }
    let quotas: Api<k8s_openapi::api::core::v1::ResourceQuota> =
        Api::namespaced(client.clone(), "default");
    quotas
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "q"},
            "spec": {"hard": {"configmaps": "10", "pods": "5", "requests.cpu": "2"}}}))
            .unwrap(),
        )
        .await
        .unwrap();
    converge("quota status", 20, async || {
        let s = quotas.get("q").await.unwrap().status.unwrap_or_default();
        let used = s.used.unwrap_or_default();
        s.hard.is_some_and(|h| h.len() == 3)
            && used.get("configmaps").map(|q| q.0.as_str()) == Some("3")
            && used.get("pods").map(|q| q.0.as_str()) == Some("0")
            && used.get("requests.cpu").map(|q| q.0.as_str()) == Some("0")
    })
    .await;
}

/// Two controller-manager processes: only the Lease holder acts; when it is killed the other takes
/// over within the lease time, and over the whole run no replica slot gets a second pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_controller_manager_takes_over_without_double_creates() {
    use futures::StreamExt;
    use kube::runtime::{watcher, WatchStreamExt};
    let c = Cluster::start().await;
    let client = c.kube().await;
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
    let sc = client.clone();
    let sched = tokio::spawn(async move {
        let _ = cairn_orchestrator::scheduler::run(sc, std::future::pending()).await;
    });
    // Every pod ever created, by name.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let s2 = seen.clone();
    let pods_all: Api<Pod> = Api::namespaced(client.clone(), "default");
    let collector = tokio::spawn(
        watcher(pods_all, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .for_each(move |p| {
                if let Ok(p) = p {
                    s2.lock()
                        .unwrap()
                        .insert(p.metadata.name.unwrap_or_default());
                }
                futures::future::ready(())
            }),
    );
    let bin = env!("CARGO_BIN_EXE_cairn-orchestrator");
    let spawn = |i: usize| {
        let log = std::fs::File::create(c.dir.path().join(format!("cm{i}.log"))).unwrap();
        std::process::Command::new(bin)
            .args([
                "controller-manager",
                "--kubeconfig",
                c.kubeconfig.to_str().unwrap(),
                "--leader-elect-lease-duration",
                "3s",
                "--leader-elect-renew-deadline",
                "2s",
                "--leader-elect-retry-period",
                "500ms",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    };
    let mut procs = vec![spawn(0), spawn(1)];
    let deps: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    deps.create(&PostParams::default(), &deployment("ha", 4, "nginx:1"))
        .await
        .unwrap();
    converge("4 ready", 60, async || {
        app_pods(&pods, "ha")
            .await
            .iter()
            .filter(|p| ready(p))
            .count()
            == 4
    })
    .await;
    let leader = (0..2)
        .find(|i| {
            std::fs::read_to_string(c.dir.path().join(format!("cm{i}.log")))
                .unwrap_or_default()
                .contains("became leader")
        })
        .expect("one replica leads");
    let standby = 1 - leader;
    assert!(
        !std::fs::read_to_string(c.dir.path().join(format!("cm{standby}.log")))
            .unwrap()
            .contains("became leader")
    );
    procs[leader].kill().unwrap();
    procs[leader].wait().unwrap();
    let killed = Instant::now();
    deps.patch_scale(
        "ha",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 7}})),
    )
    .await
    .unwrap();
    converge("7 ready after the take-over", 60, async || {
        app_pods(&pods, "ha")
            .await
            .iter()
            .filter(|p| ready(p))
            .count()
            == 7
    })
    .await;
    let took = killed.elapsed();
    assert!(
        std::fs::read_to_string(c.dir.path().join(format!("cm{standby}.log")))
            .unwrap()
            .contains("became leader")
    );
    // Lease 3 s (+ one retry period to notice, + the work itself).
    assert!(
        took < Duration::from_secs(10),
        "take-over and scale-up took {took:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let created = seen.lock().unwrap().clone();
    assert_eq!(
        created.len(),
        7,
        "one pod per replica slot, none twice: {created:?}"
    );
    for mut p in procs {
        let _ = p.kill();
        let _ = p.wait();
    }
    sched.abort();
    collector.abort();
    drop(sim);
}

fn pod_cidr_of(n: &k8s_openapi::api::core::v1::Node) -> Option<String> {
    let spec = n.spec.as_ref()?;
    let cidr = spec.pod_cidr.clone()?;
    assert_eq!(spec.pod_cidrs.as_deref(), Some(&[cidr.clone()][..]));
    Some(cidr)
}

/// Node IPAM over 10.77.0.0/22 in /24s: each node gets a range of its own; a new controller
/// manager rebuilds what is taken from the nodes before it hands out more (a node deleted while it
/// was down frees its range); a fifth node finds none left and gets the CIDRNotAvailable event,
/// then the range of a node deleted later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ipam_allocates_rebuilds_releases_and_reports_exhaustion() {
    use k8s_openapi::api::core::v1::{Event, Node};
    let c = Cluster::start().await;
    let client = c.kube().await;
    let cfg = cairn_orchestrator::controllers::ControllerConfig {
        cluster_cidr: Some("10.77.0.0/22".into()),
        node_cidr_mask_size: 24,
        ..Default::default()
    };
    let start = || {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (client, cfg) = (client.clone(), cfg.clone());
        let task = tokio::spawn(async move {
            cairn_orchestrator::controllers::run(client, cfg, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        (tx, task)
    };
    let nodes: Api<Node> = Api::all(client.clone());
    let create = async |name: &str| {
        let n: Node = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        nodes.create(&PostParams::default(), &n).await.unwrap();
    };
    let ranges = async |names: &[&str]| -> Option<Vec<String>> {
        let mut out = Vec::new();
        for n in names {
            out.push(pod_cidr_of(&nodes.get(n).await.unwrap())?);
        }
        Some(out)
    };

    let (stop, task) = start();
    for n in ["a", "b", "c"] {
        create(n).await;
    }
    let first =
        kube_api::eventually("3 nodes with a podCIDR", 20, || ranges(&["a", "b", "c"])).await;
    let mut distinct = first.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{first:?}");
    for r in &first {
        assert!(r.starts_with("10.77.") && r.ends_with(".0/24"), "{r}");
    }

    // Down, a node goes; up again, the controller must know a and c hold theirs.
    stop.send(()).unwrap();
    task.await.unwrap();
    nodes.delete("b", &DeleteParams::default()).await.unwrap();
    let (_stop, _task) = start();
    create("d").await;
    create("e").await;
    let all = kube_api::eventually("d and e with a podCIDR", 20, || {
        ranges(&["a", "c", "d", "e"])
    })
    .await;
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            "10.77.0.0/24",
            "10.77.1.0/24",
            "10.77.2.0/24",
            "10.77.3.0/24"
        ],
        "{all:?}"
    );
    assert_eq!(
        all[..2],
        first[..3].iter().step_by(2).cloned().collect::<Vec<_>>()[..]
    );

    // Full: the fifth node waits, and is told why.
    create("f").await;
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let ev = kube_api::eventually("the CIDRNotAvailable event", 20, || async {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("CIDRNotAvailable"))
    })
    .await;
    assert_eq!(ev.involved_object.kind.as_deref(), Some("Node"));
    assert_eq!(ev.involved_object.name.as_deref(), Some("f"));
    assert_eq!(
        ev.message.as_deref(),
        Some("Node f status is now: CIDRNotAvailable")
    );
    assert!(pod_cidr_of(&nodes.get("f").await.unwrap()).is_none());

    // A deleted node's range goes to the one waiting.
    let freed = all[2].clone();
    nodes.delete("d", &DeleteParams::default()).await.unwrap();
    let got = kube_api::eventually("f gets the freed range", 20, || ranges(&["f"])).await;
    assert_eq!(got, [freed]);
}
