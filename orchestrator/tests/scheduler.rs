//! The scheduler against the real API server with simulated nodes: replicas spread over nodes,
//! pods that fit nowhere stay Pending with kube-scheduler's reason and event until a node that fits
//! arrives, cordoned nodes are skipped; and Lease leader election hands over only after the holder
//! stopped renewing for a lease duration.

use crate::kube_api;

use std::time::{Duration, Instant};

use cairn_orchestrator::election::{self, ElectionConfig};
use cairn_orchestrator::simulate::{SimConfig, SimulatedNodes};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube_api::{eventually, Cluster};
use serde_json::json;

fn pod(name: &str, cpu: &str, owner: Option<&str>) -> Pod {
    let mut v = json!({"metadata": {"name": name, "labels": {"app": "s"}},
        "spec": {"containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}]}});
    if let Some(uid) = owner {
        v["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": uid, "controller": true}]);
    }
    serde_json::from_value(v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_spread_wait_for_room_and_run_on_simulated_nodes() {
    let c = Cluster::start().await;
    let client = c.kube().await;
    let sim = SimulatedNodes::start(
        client.clone(),
        SimConfig {
            count: 3,
            cpu: "2".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let sched = tokio::spawn(cairn_orchestrator::scheduler::run(
        client.clone(),
        std::future::pending(),
    ));
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for i in 0..3 {
        pods.create(
            &PostParams::default(),
            &pod(&format!("r{i}"), "500m", Some("rs-uid")),
        )
        .await
        .unwrap();
    }
    let nodes = eventually("3 replicas running", 20, || async {
        let l = pods.list(&ListParams::default()).await.unwrap();
        let running: Vec<String> = l
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .filter_map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()))
            .collect();
        (running.len() == 3).then_some(running)
    })
    .await;
    let mut distinct = nodes.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        3,
        "replicas of one owner spread over the nodes: {nodes:?}"
    );

    // Too big for every node: Pending with the reason, as a condition and an event.
    pods.create(&PostParams::default(), &pod("huge", "3", None))
        .await
        .unwrap();
    let msg = eventually("PodScheduled=False", 20, || async {
        let p = pods.get("huge").await.unwrap();
        p.status
            .and_then(|s| s.conditions)
            .and_then(|cs| {
                cs.into_iter()
                    .find(|c| c.type_ == "PodScheduled" && c.status == "False")
            })
            .map(|c| (c.reason, c.message))
    })
    .await;
    assert_eq!(msg.0.as_deref(), Some("Unschedulable"));
    assert_eq!(
        msg.1.as_deref(),
        Some("0/3 nodes are available: 3 Insufficient cpu.")
    );
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    eventually("a FailedScheduling event", 20, || async {
        let ev = events
            .list(&ListParams::default().fields("involvedObject.name=huge"))
            .await
            .unwrap();
        ev.items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("FailedScheduling")
                    && e.type_.as_deref() == Some("Warning")
            })
            .then_some(())
    })
    .await;

    // A cordoned node is skipped; a big node arriving takes the waiting pod.
    let node_api: Api<Node> = Api::all(client.clone());
    node_api
        .patch(
            "sim-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": true}})),
        )
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pod("after-cordon", "100m", None))
        .await
        .unwrap();
    let placed = eventually("after-cordon bound", 20, || async {
        pods.get("after-cordon")
            .await
            .unwrap()
            .spec
            .and_then(|s| s.node_name)
    })
    .await;
    assert_ne!(placed, "sim-0");
    let big = SimulatedNodes::start(
        client.clone(),
        SimConfig {
            prefix: "big-".into(),
            count: 1,
            cpu: "8".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let node = eventually("huge bound", 20, || async {
        pods.get("huge")
            .await
            .unwrap()
            .spec
            .and_then(|s| s.node_name)
    })
    .await;
    assert_eq!(node, "big-0");
    sched.abort();
    drop((sim, big));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_only_after_the_holder_stops_renewing() {
    let c = Cluster::start().await;
    let client = c.kube().await;
    let cfg = |id: &str| ElectionConfig {
        // Leases count whole seconds (leaseDurationSeconds).
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry_period: Duration::from_millis(200),
        ..ElectionConfig::new("test-component", id)
    };
    let a = election::acquire(client.clone(), cfg("a")).await.unwrap();
    let b_client = client.clone();
    let b = tokio::spawn(async move { election::acquire(b_client, cfg("b")).await.unwrap() });
    // While a renews, b waits.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!b.is_finished(), "b took the lease while a was renewing");
    assert!(!a.is_lost());
    // a stops renewing (as a killed replica does); b takes over no sooner than a lease duration later.
    let stopped = Instant::now();
    drop(a);
    let mut b = b.await.unwrap();
    // a's last renewal was at most one retry period before it stopped.
    assert!(
        stopped.elapsed() >= Duration::from_millis(1800),
        "b took over after {:?}",
        stopped.elapsed()
    );
    assert!(!b.is_lost());
    let lease: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client, "kube-system");
    let l = lease.get("test-component").await.unwrap().spec.unwrap();
    assert_eq!(l.holder_identity.as_deref(), Some("b"));
    assert_eq!(l.lease_transitions, Some(1));
    // A holder that cannot reach the API server reports the loss within its renew deadline.
    c.shutdown().await;
    tokio::time::timeout(Duration::from_secs(5), b.lost())
        .await
        .expect("loss reported");
}
