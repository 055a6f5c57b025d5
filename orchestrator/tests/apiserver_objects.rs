//! Object lifecycle rules as Kubernetes applies them: pods (tables, binding, graceful deletion),
//! finalizers and deletionTimestamp, namespaces being terminated, generation, status subresources,
//! server-side apply, LimitRange defaults and bounds.

use crate::kube_api;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube_api::{have_kubectl, Cluster};
use serde_json::json;

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": {"app": "p"}},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36", "resources": {"requests": {"cpu": "100m"}}}]}}))
    .unwrap()
}

fn code(e: &kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        _ => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_bind_once_and_delete_gracefully_when_bound() {
    let c = Cluster::start().await;
    let pods: Api<Pod> = Api::namespaced(c.kube().await, "default");
    let p = pods
        .create(&PostParams::default(), &pod("web"))
        .await
        .unwrap();
    let spec = p.spec.unwrap();
    assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
    assert_eq!(spec.service_account_name.as_deref(), Some("default"));
    assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Pending"));
    assert_eq!(p.status.unwrap().qos_class.as_deref(), Some("Burstable"));
    assert_eq!(p.metadata.generation, Some(1));

    // The binding subresource sets the node once.
    let bind = |node: &str| {
        serde_json::to_vec(
            &json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "web"},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node}}),
        )
        .unwrap()
    };
    let k = c.kube().await;
    let req = |body: Vec<u8>| {
        axum::http::Request::post("/api/v1/namespaces/default/pods/web/binding")
            .header("content-type", "application/json")
            .body(body)
            .unwrap()
    };
    k.request_text(req(bind("n1"))).await.unwrap();
    let e = k.request_text(req(bind("n2"))).await.unwrap_err();
    assert_eq!(code(&e), 409);
    assert!(
        e.to_string()
            .contains("pod web is already assigned to node \"n1\""),
        "{e}"
    );
    let p = pods.get("web").await.unwrap();
    assert_eq!(p.spec.as_ref().unwrap().node_name.as_deref(), Some("n1"));
    let conds = p.status.unwrap().conditions.unwrap();
    assert!(conds
        .iter()
        .any(|c| c.type_ == "PodScheduled" && c.status == "True"));
    // The spec is immutable apart from images.
    let e = pods
        .patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"containers": [{"name": "c", "image": "busybox:1.36", "args": ["x"]}]}})))
        .await
        .unwrap_err();
    assert_eq!(code(&e), 422, "{e}");

    // A bound pod is deleted gracefully: marked, still readable, until its node finishes it.
    pods.delete("web", &DeleteParams::default()).await.unwrap();
    let p = pods.get("web").await.unwrap();
    assert!(p.metadata.deletion_timestamp.is_some());
    assert_eq!(p.metadata.deletion_grace_period_seconds, Some(30));
    // Grace period 0 (what a node does when the containers are gone) removes it.
    pods.delete(
        "web",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(code(&pods.get("web").await.unwrap_err()), 404);
    // An unbound pod goes at once.
    pods.create(&PostParams::default(), &pod("loose"))
        .await
        .unwrap();
    pods.delete("loose", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(code(&pods.get("loose").await.unwrap_err()), 404);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalizers_hold_deletion_until_removed() {
    let c = Cluster::start().await;
    let cms: Api<ConfigMap> = Api::namespaced(c.kube().await, "default");
    let cm: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}),
    )
    .unwrap();
    let created = cms.create(&PostParams::default(), &cm).await.unwrap();
    cms.delete("held", &DeleteParams::default()).await.unwrap();
    let marked = cms.get("held").await.unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert_eq!(marked.metadata.uid, created.metadata.uid);
    // Deleting again changes nothing; foreground adds its finalizer.
    cms.delete("held", &DeleteParams::default()).await.unwrap();
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert_eq!(
        code(&cms.get("held").await.unwrap_err()),
        404,
        "the last finalizer's removal completes the deletion"
    );

    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "fg"}})).unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Foreground),
        ..Default::default()
    };
    cms.delete("fg", &dp).await.unwrap();
    let fg = cms.get("fg").await.unwrap();
    assert_eq!(
        fg.metadata.finalizers,
        Some(vec!["foregroundDeletion".to_string()])
    );
    assert!(fg.metadata.deletion_timestamp.is_some());
    // Preconditions: a wrong uid is a conflict.
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "pre"}})).unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some("nope".into()),
            resource_version: None,
        }),
        ..Default::default()
    };
    let e = cms.delete("pre", &dp).await.unwrap_err();
    assert_eq!(code(&e), 409);
    assert!(
        e.to_string()
            .contains("Precondition failed: UID in precondition: nope"),
        "{e}"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_namespaces_take_no_new_objects() {
    let c = Cluster::start().await;
    let client = c.kube().await;
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "gone"}})).unwrap(),
    )
    .await
    .unwrap();
    let ns = nss.get("gone").await.unwrap();
    assert_eq!(
        ns.metadata.labels.unwrap()["kubernetes.io/metadata.name"],
        "gone"
    );
    assert_eq!(
        ns.spec.unwrap().finalizers,
        Some(vec!["kubernetes".to_string()])
    );
    nss.delete("gone", &DeleteParams::default()).await.unwrap();
    let ns = nss.get("gone").await.unwrap();
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Terminating"));
    let cms: Api<ConfigMap> = Api::namespaced(client, "gone");
    let e = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), 403);
    assert!(
        e.to_string().contains(
            "unable to create new content in namespace gone because it is being terminated"
        ),
        "{e}"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generation_follows_spec_and_status_is_its_own_subresource() {
    let c = Cluster::start().await;
    let deps: Api<Deployment> = Api::namespaced(c.kube().await, "default");
    let d: Deployment = serde_json::from_value(json!({"metadata": {"name": "d"}, "spec": {"replicas": 1,
        "selector": {"matchLabels": {"app": "d"}},
        "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": [{"name": "c", "image": "x:1"}]}}},
        "status": {"replicas": 99}}))
    .unwrap();
    let d = deps.create(&PostParams::default(), &d).await.unwrap();
    assert_eq!(d.metadata.generation, Some(1));
    assert!(
        d.status.is_none_or(|s| s.replicas.is_none()),
        "status is not taken on create"
    );
    let pp = PatchParams::default();
    deps.patch(
        "d",
        &pp,
        &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
    )
    .await
    .unwrap();
    assert_eq!(deps.get("d").await.unwrap().metadata.generation, Some(1));
    deps.patch("d", &pp, &Patch::Merge(json!({"spec": {"replicas": 3}})))
        .await
        .unwrap();
    assert_eq!(deps.get("d").await.unwrap().metadata.generation, Some(2));
    // Status through /status: neither spec nor generation move; status through the main resource is ignored.
    deps.patch_status(
        "d",
        &pp,
        &Patch::Merge(
            json!({"status": {"replicas": 3, "observedGeneration": 2}, "spec": {"replicas": 7}}),
        ),
    )
    .await
    .unwrap();
    deps.patch("d", &pp, &Patch::Merge(json!({"status": {"replicas": 50}})))
        .await
        .unwrap();
    let d = deps.get("d").await.unwrap();
    assert_eq!(d.spec.unwrap().replicas, Some(3));
    assert_eq!(d.status.unwrap().replicas, Some(3));
    assert_eq!(d.metadata.generation, Some(2));
    // A stale resourceVersion in a patch is a conflict, not a silent overwrite.
    let e = deps
        .patch(
            "d",
            &pp,
            &Patch::Merge(json!({"metadata": {"resourceVersion": "1"}, "spec": {"replicas": 4}})),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), 409);
    // Scale subresource.
    let s = deps.get_scale("d").await.unwrap();
    assert_eq!(s.spec.unwrap().replicas, Some(3));
    assert_eq!(s.status.unwrap().selector.as_deref(), Some("app=d"));
    deps.patch_scale("d", &pp, &Patch::Merge(json!({"spec": {"replicas": 6}})))
        .await
        .unwrap();
    assert_eq!(deps.get("d").await.unwrap().spec.unwrap().replicas, Some(6));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_ranges_default_and_bound_containers() {
    let c = Cluster::start().await;
    let client = c.kube().await;
    let lr: Api<k8s_openapi::api::core::v1::LimitRange> =
        Api::namespaced(client.clone(), "default");
    lr.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "lr"}, "spec": {"limits": [
        {"type": "Container", "default": {"cpu": "500m", "memory": "256Mi"}, "defaultRequest": {"cpu": "100m"}, "max": {"cpu": "1"}}]}})).unwrap())
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let plain: Pod = serde_json::from_value(json!({"metadata": {"name": "plain"}, "spec": {"containers": [{"name": "c", "image": "x"}]}})).unwrap();
    let p = pods.create(&PostParams::default(), &plain).await.unwrap();
    let res = p.spec.unwrap().containers[0].resources.clone().unwrap();
    assert_eq!(res.limits.unwrap()["cpu"].0, "500m");
    let req = res.requests.unwrap();
    assert_eq!(req["cpu"].0, "100m");
    assert_eq!(req["memory"].0, "256Mi", "requests default to limits");
    let big: Pod = serde_json::from_value(
        json!({"metadata": {"name": "big"}, "spec": {"containers": [{"name": "c", "image": "x",
        "resources": {"limits": {"cpu": "2"}}}]}}),
    )
    .unwrap();
    let e = pods.create(&PostParams::default(), &big).await.unwrap_err();
    assert_eq!(code(&e), 403);
    assert!(
        e.to_string()
            .contains("maximum cpu usage per Container is 1, but limit is 2"),
        "{e}"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_server_side_apply_and_pod_tables() {
    if !have_kubectl("kubectl_server_side_apply_and_pod_tables", 32) {
        return;
    }
    let c = Cluster::start().await;
    let f = c.write(
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n  a: \"1\"\n",
    );
    let f = f.to_str().unwrap();
    assert!(c
        .ok(32, &["apply", "--server-side", "-f", f])
        .contains("configmap/ssa serverside-applied"));
    c.write(
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n  a: \"2\"\n  b: \"3\"\n",
    );
    c.ok(32, &["apply", "--server-side", "-f", f]);
    assert_eq!(
        c.ok(
            32,
            &["get", "cm", "ssa", "-o", "jsonpath={.data.a} {.data.b}"]
        ),
        "2 3"
    );

    let p = c.write("pod.yaml", "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p1\nspec:\n  containers:\n  - name: a\n    image: busybox\n  - name: b\n    image: busybox\n");
    c.ok(32, &["create", "-f", p.to_str().unwrap()]);
    let wide = c.ok(32, &["get", "pods", "-o", "wide"]);
    let mut lines = wide.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap()
        .split("  ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "READY",
            "STATUS",
            "RESTARTS",
            "AGE",
            "IP",
            "NODE",
            "NOMINATED NODE",
            "READINESS GATES"
        ]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(&row[..4], ["p1", "0/2", "Pending", "0"]);
    assert_eq!(&row[5..7], ["<none>", "<none>"]);
    let svc = c.ok(
        32,
        &["create", "service", "clusterip", "web", "--tcp=80:8080"],
    );
    assert!(svc.contains("service/web created"), "{svc}");
    let table = c.ok(32, &["get", "svc", "web"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ]
    );
    assert!(table.lines().nth(1).unwrap().contains("80/TCP"));
    c.shutdown().await;
}
