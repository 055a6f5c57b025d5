//! The API server at the HTTP level, through the kube crate's client: status codes and Status bodies
//! for bad input, discovery's negotiated media types, metrics, watch bookmarks and selector
//! transitions, Service IP and port allocation, and a store that has gone away.

use crate::kube_api;

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use kube_api::Cluster;
use serde_json::{json, Value};

async fn send(
    client: &kube::Client,
    method: &str,
    path: &str,
    ctype: &str,
    accept: &str,
    body: Vec<u8>,
) -> (u16, String, Value) {
    let req = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", ctype)
        .header("accept", accept)
        .body(kube::client::Body::from(body))
        .unwrap();
    let resp = client.send(req).await.expect("request sent");
    let code = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        code,
        ct,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_kubernetes_status_codes() {
    let c = Cluster::start().await;
    let k = c.kube().await;
    let cms = "/api/v1/namespaces/default/configmaps";
    let (code, _, s) = send(
        &k,
        "POST",
        cms,
        "application/json",
        "application/json",
        b"{\"metadata\": {".to_vec(),
    )
    .await;
    assert_eq!(
        (code, s["reason"].as_str()),
        (400, Some("BadRequest")),
        "{s}"
    );
    let (code, _, s) = send(
        &k,
        "POST",
        cms,
        "application/yaml",
        "application/json",
        b"a: [b".to_vec(),
    )
    .await;
    assert_eq!(code, 400, "{s}");
    let (code, _, s) = send(
        &k,
        "POST",
        cms,
        "application/vnd.kubernetes.protobuf",
        "application/json",
        b"k8s\0\x0a\x02garbage".to_vec(),
    )
    .await;
    assert_eq!(code, 400, "{s}");
    let big = format!(
        "{{\"metadata\":{{\"name\":\"big\"}},\"data\":{{\"a\":\"{}\"}}}}",
        "x".repeat(4 << 20)
    );
    let (code, _, s) = send(
        &k,
        "POST",
        cms,
        "application/json",
        "application/json",
        big.into_bytes(),
    )
    .await;
    assert_eq!(
        (code, s["reason"].as_str()),
        (413, Some("RequestEntityTooLarge")),
        "{s}"
    );
    let (code, _, _) = send(&k, "GET", "/api/v1/widgets", "", "application/json", vec![]).await;
    assert_eq!(code, 404);
    let (code, _, s) = send(
        &k,
        "PUT",
        cms,
        "application/json",
        "application/json",
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(
        (code, s["reason"].as_str()),
        (405, Some("MethodNotAllowed")),
        "{s}"
    );
    let (code, _, s) = send(
        &k,
        "PATCH",
        &format!("{cms}/none"),
        "text/plain",
        "application/json",
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(code, 415, "{s}");
    // Invalid objects: 422 with causes naming the fields, and nothing stored.
    let (code, _, s) = send(
        &k,
        "POST",
        cms,
        "application/json",
        "application/json",
        br#"{"metadata":{"name":"Bad Name"},"data":{"k y":"v"}}"#.to_vec(),
    )
    .await;
    assert_eq!((code, s["reason"].as_str()), (422, Some("Invalid")), "{s}");
    let fields: Vec<&str> = s["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["metadata.name", "data[k y]"]);
    let (code, _, _) = send(
        &k,
        "GET",
        &format!("{cms}/Bad%20Name"),
        "",
        "application/json",
        vec![],
    )
    .await;
    assert_eq!(code, 404);
    // Strict field validation names the unknown field; Ignore drops it.
    let body = br#"{"metadata":{"name":"s"},"dataa":{"a":"b"}}"#.to_vec();
    let (code, _, s) = send(
        &k,
        "POST",
        &format!("{cms}?fieldValidation=Strict"),
        "application/json",
        "application/json",
        body.clone(),
    )
    .await;
    assert_eq!(code, 400);
    assert_eq!(
        s["message"],
        "strict decoding error: unknown field \"dataa\""
    );
    let (code, _, s) = send(
        &k,
        "POST",
        &format!("{cms}?fieldValidation=Ignore"),
        "application/json",
        "application/json",
        body,
    )
    .await;
    assert_eq!(code, 201, "{s}");
    assert!(s.get("dataa").is_none());
    c.shutdown().await;
}

/// A request refused by its path alone still has its body read: a client sending a large body to
/// a path that does not exist gets the 404, not a connection closed under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_to_a_missing_path_gets_its_answer() {
    let c = Cluster::start().await;
    let k = c.kube().await;
    let body =
        serde_json::to_vec(&json!({"metadata": {"annotations": {"a": "x".repeat(2 << 20)}}}))
            .unwrap();
    for path in [
        // Leases have no status subresource.
        "/apis/coordination.k8s.io/v1/namespaces/default/leases/l/status",
        "/api/v1/namespaces/default/widgets/w",
    ] {
        for _ in 0..3 {
            let (code, _, s) = send(
                &k,
                "PATCH",
                path,
                "application/merge-patch+json",
                "application/json",
                body.clone(),
            )
            .await;
            assert_eq!(
                (code, s["kind"].as_str()),
                (404, Some("Status")),
                "{path}: {s}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_metrics_and_health() {
    let c = Cluster::start().await;
    let k = c.kube().await;
    let agg = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
    let (code, ct, d) = send(
        &k,
        "GET",
        "/apis",
        "",
        &format!("{agg},application/json"),
        vec![],
    )
    .await;
    assert_eq!((code, ct.as_str()), (200, agg));
    let apps = d["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["metadata"]["name"] == "apps")
        .unwrap();
    let deploy = apps["versions"][0]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resource"] == "deployments")
        .unwrap();
    assert_eq!(deploy["shortNames"], json!(["deploy"]));
    assert!(deploy["subresources"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["subresource"] == "scale" && s["responseKind"]["kind"] == "Scale"));
    let (_, ct, d) = send(&k, "GET", "/api", "", "application/json", vec![]).await;
    assert_eq!(
        (ct.as_str(), d["kind"].as_str()),
        ("application/json", Some("APIVersions"))
    );
    let (_, _, v) = send(&k, "GET", "/version", "", "application/json", vec![]).await;
    assert_eq!(v["major"], "1");
    let (code, _, _) = send(
        &k,
        "GET",
        "/api/v1/namespaces/default/configmaps",
        "",
        "application/json",
        vec![],
    )
    .await;
    assert_eq!(code, 200);
    let req = axum::http::Request::get("/metrics")
        .body(Vec::new())
        .unwrap();
    let text = k.request_text(req).await.unwrap();
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("apiserver_request_total{")
                && l.contains("verb=\"LIST\"")
                && l.contains("resource=\"configmaps\"")
                && l.contains("code=\"200\"")
        })
        .unwrap_or_else(|| panic!("no LIST configmaps counter in:\n{text}"));
    assert!(line.ends_with(" 1"), "{line}");
    assert!(text.contains("apiserver_request_duration_seconds_bucket{"));
    let req = axum::http::Request::get("/readyz")
        .body(Vec::new())
        .unwrap();
    assert_eq!(k.request_text(req).await.unwrap(), "ok");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_follow_selectors_and_send_bookmarks() {
    let c = Cluster::start_with(kube_api::Options {
        bookmark_interval: Some(Duration::from_millis(300)),
        ..Default::default()
    })
    .await;
    let api: Api<ConfigMap> = Api::namespaced(c.kube().await, "default");
    let mk = |name: &str, app: &str| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": {"app": app}}})).unwrap()
    };
    let a = api
        .create(&PostParams::default(), &mk("one", "a"))
        .await
        .unwrap();
    let rv = a.metadata.resource_version.unwrap();
    let wp = WatchParams::default().labels("app=a").timeout(20); // kube asks for bookmarks by default
    let mut stream = api.watch(&wp, &rv).await.unwrap().boxed();
    api.create(&PostParams::default(), &mk("two", "b"))
        .await
        .unwrap();
    let mut one = api.get("one").await.unwrap();
    one.metadata.labels = Some([("app".to_string(), "b".to_string())].into());
    api.replace("one", &PostParams::default(), &one)
        .await
        .unwrap();
    let mut two = api.get("two").await.unwrap();
    two.metadata.labels = Some([("app".to_string(), "a".to_string())].into());
    let two = api
        .replace("two", &PostParams::default(), &two)
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut bookmark_rv = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while bookmark_rv.is_none() || seen.len() < 2 {
        let ev = tokio::time::timeout_at(deadline, stream.try_next())
            .await
            .unwrap_or_else(|_| panic!("events in time: saw {seen:?}, bookmark {bookmark_rv:?}"))
            .unwrap()
            .unwrap();
        match ev {
            WatchEvent::Added(o) => {
                bookmark_rv = None;
                seen.push(format!("ADDED {}", o.metadata.name.unwrap()));
            }
            WatchEvent::Modified(o) => {
                bookmark_rv = None;
                seen.push(format!("MODIFIED {}", o.metadata.name.unwrap()));
            }
            WatchEvent::Deleted(o) => {
                bookmark_rv = None;
                seen.push(format!("DELETED {}", o.metadata.name.unwrap()));
            }
            WatchEvent::Bookmark(b) => bookmark_rv = Some(b.metadata.resource_version),
            WatchEvent::Error(e) => panic!("{e:?}"),
        }
    }
    // "one" left the selector (DELETED), "two" entered it (ADDED); "two"'s creation with app=b was not shown.
    assert_eq!(seen, ["DELETED one", "ADDED two"]);
    let b: i64 = bookmark_rv.unwrap().parse().unwrap();
    assert!(
        b >= two
            .metadata
            .resource_version
            .unwrap()
            .parse::<i64>()
            .unwrap(),
        "a bookmark after the events promises their revisions"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_get_unique_cluster_ips_and_node_ports() {
    let c = Cluster::start().await;
    let api: Api<Service> = Api::namespaced(c.kube().await, "default");
    // The `kubernetes` Service holds the range's first address from the start.
    let k8s = api.get("kubernetes").await.unwrap();
    assert_eq!(k8s.spec.unwrap().cluster_ip.as_deref(), Some("10.96.0.1"));
    let svc = |name: &str, extra: Value| -> Service {
        let mut v = json!({"metadata": {"name": name}, "spec": {"selector": {"app": name}, "ports": [{"port": 80}]}});
        if let (Some(spec), Some(e)) = (v["spec"].as_object_mut(), extra.as_object()) {
            spec.extend(e.clone());
        }
        serde_json::from_value(v).unwrap()
    };
    let mut tasks = Vec::new();
    for i in 0..20 {
        let api = api.clone();
        let s = svc(&format!("s{i}"), json!({"type": "NodePort"}));
        tasks.push(tokio::spawn(async move {
            api.create(&PostParams::default(), &s).await.unwrap()
        }));
    }
    let mut ips = Vec::new();
    let mut ports = Vec::new();
    for t in tasks {
        let s = t.await.unwrap();
        let spec = s.spec.unwrap();
        let ip = spec.cluster_ip.unwrap();
        assert!(ip.starts_with("10.96."), "{ip}");
        assert_eq!(spec.cluster_ips.unwrap(), vec![ip.clone()]);
        let port = &spec.ports.unwrap()[0];
        assert_eq!(
            port.target_port,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(80))
        );
        let np = port.node_port.unwrap();
        assert!((30000..=32767).contains(&np));
        ips.push(ip);
        ports.push(np);
    }
    let mut u = ips.clone();
    u.push("10.96.0.1".into());
    u.sort();
    u.dedup();
    assert_eq!(u.len(), 21, "no ClusterIP handed out twice");
    let mut u = ports.clone();
    u.sort();
    u.dedup();
    assert_eq!(u.len(), 20, "no NodePort handed out twice");
    // A taken address is refused; after the owner is deleted it can be had.
    let taken = ips[0].clone();
    let e = api
        .create(
            &PostParams::default(),
            &svc("dup", json!({"clusterIP": taken})),
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("provided IP is already allocated"),
        "{e}"
    );
    let owner = api
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|s| s.spec.as_ref().unwrap().cluster_ip.as_deref() == Some(&taken))
        .unwrap();
    api.delete(owner.metadata.name.as_deref().unwrap(), &Default::default())
        .await
        .unwrap();
    let again = api
        .create(
            &PostParams::default(),
            &svc("dup", json!({"clusterIP": taken})),
        )
        .await
        .unwrap();
    assert_eq!(
        again.spec.unwrap().cluster_ip.as_deref(),
        Some(taken.as_str())
    );
    let e = api
        .create(
            &PostParams::default(),
            &svc("out", json!({"clusterIP": "192.168.0.1"})),
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("provided IP is not in the valid range"),
        "{e}"
    );
    // The ClusterIP cannot be changed by an update.
    let mut s = api.get("dup").await.unwrap();
    s.spec.as_mut().unwrap().cluster_ip = Some(ips[1].clone());
    s.spec.as_mut().unwrap().cluster_ips = None;
    assert!(api
        .replace("dup", &PostParams::default(), &s)
        .await
        .is_err());
    c.shutdown().await;
}

/// kubectl, because the kube crate retries 503 answers on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_store_is_503_or_504_and_nothing_is_written() {
    if !kube_api::have_kubectl("a_lost_store_is_503_or_504_and_nothing_is_written", 32) {
        return;
    }
    let mut c = Cluster::start().await;
    let count = |store: cairn_client::Client| async move {
        store
            .get(
                "/registry/",
                Some(
                    cairn_client::GetOptions::new()
                        .with_prefix()
                        .with_count_only(),
                ),
            )
            .await
            .unwrap()
            .count
    };
    let before = count(c.store().await).await;
    c.stop_store().await;
    let started = std::time::Instant::now();
    let c = tokio::task::spawn_blocking(move || {
        let err = c.fails(
            32,
            &[
                "create",
                "configmap",
                "lost",
                "--from-literal=a=b",
                "--request-timeout=30s",
            ],
        );
        assert!(
            err.contains("the object store is unavailable") || err.contains("Timeout:"),
            "{err}"
        );
        let err = c.fails(32, &["get", "configmaps", "--request-timeout=30s"]);
        assert!(
            err.contains("(ServiceUnavailable)") || err.contains("(Timeout)"),
            "{err}"
        );
        c
    })
    .await
    .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "answered within the store deadline"
    );
    let mut c = c;
    c.start_store().await;
    assert_eq!(before, count(c.store().await).await, "nothing half-written");
    c.shutdown().await;
}
