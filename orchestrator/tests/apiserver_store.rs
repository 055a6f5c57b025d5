//! The storage contract seen through an independent client (the kube crate): optimistic
//! concurrency, watches that resume across an API server restart, 410 for compacted history, paged
//! lists, quota under concurrent creates, and secrets encrypted at rest.

use crate::kube_api;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, ResourceQuota, Secret};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use kube_api::Cluster;
use serde_json::json;

fn cm(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "data": data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
    }))
    .unwrap()
}

fn api_code(e: &kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        _ => 0,
    }
}

async fn namespace(client: &kube::Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap(),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_read_modify_write_loses_nothing() {
    let c = Cluster::start().await;
    let client = c.kube().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    api.create(&PostParams::default(), &cm("counter", &[("n", "0")]))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0;
            loop {
                let mut cur = api.get("counter").await.unwrap();
                let n: u64 = cur.data.as_ref().unwrap()["n"].parse().unwrap();
                cur.data
                    .as_mut()
                    .unwrap()
                    .insert("n".into(), (n + 1).to_string());
                match api.replace("counter", &PostParams::default(), &cur).await {
                    Ok(_) => return conflicts,
                    Err(e) if api_code(&e) == 409 => conflicts += 1,
                    Err(e) => panic!("update failed: {e}"),
                }
            }
        }));
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.unwrap();
    }
    let end = api.get("counter").await.unwrap();
    assert_eq!(
        end.data.unwrap()["n"],
        "100",
        "every update applied once ({conflicts} conflicts retried)"
    );
    assert!(
        conflicts > 0,
        "100 concurrent writers must have collided at least once"
    );

    // An update carrying an old resourceVersion is refused with 409 in Kubernetes' words.
    let mut stale = api.get("counter").await.unwrap();
    stale.metadata.resource_version = Some("2".into());
    let e = api
        .replace("counter", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert_eq!(api_code(&e), 409);
    assert!(e.to_string().contains("the object has been modified; please apply your changes to the latest version and try again"), "{e}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_across_restart_and_expires_when_compacted() {
    let mut c = Cluster::start().await;
    let api: Api<ConfigMap> = Api::namespaced(c.kube().await, "default");
    let first = api
        .create(&PostParams::default(), &cm("w0", &[]))
        .await
        .unwrap();
    let start_rv = first.metadata.resource_version.clone().unwrap();

    // Writes before, during and after a restart; the watcher reconnects from its last RV.
    let mut expected = Vec::new();
    for i in 1..=5 {
        api.create(&PostParams::default(), &cm(&format!("w{i}"), &[]))
            .await
            .unwrap();
        expected.push(("ADDED".to_string(), format!("w{i}")));
    }
    let mut stream = api
        .watch(&WatchParams::default().timeout(30), &start_rv)
        .await
        .unwrap()
        .boxed();
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut last_rv = start_rv.clone();
    while seen.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(10), stream.try_next())
            .await
            .unwrap()
            .unwrap()
        {
            Some(WatchEvent::Added(o)) => {
                last_rv = o.metadata.resource_version.clone().unwrap();
                seen.push(("ADDED".into(), o.metadata.name.unwrap()));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    c.restart_apiserver().await;
    drop(stream);
    let api: Api<ConfigMap> = Api::namespaced(c.kube().await, "default");
    api.delete("w1", &Default::default()).await.unwrap();
    expected.push(("DELETED".into(), "w1".into()));
    let mut w2 = api.get("w2").await.unwrap();
    w2.data = Some([("k".to_string(), "v".to_string())].into());
    api.replace("w2", &PostParams::default(), &w2)
        .await
        .unwrap();
    expected.push(("MODIFIED".into(), "w2".into()));
    let mut stream = api
        .watch(&WatchParams::default().timeout(30), &last_rv)
        .await
        .unwrap()
        .boxed();
    while seen.len() < expected.len() {
        let ev = tokio::time::timeout(Duration::from_secs(10), stream.try_next())
            .await
            .unwrap()
            .unwrap();
        let (ty, o) = match ev {
            Some(WatchEvent::Added(o)) => ("ADDED", o),
            Some(WatchEvent::Modified(o)) => ("MODIFIED", o),
            Some(WatchEvent::Deleted(o)) => ("DELETED", o),
            other => panic!("unexpected {other:?}"),
        };
        seen.push((ty.into(), o.metadata.name.unwrap()));
    }
    assert_eq!(
        seen, expected,
        "no event lost or repeated across the restart"
    );

    // Compact past the start: watching from there is 410 Expired.
    let store = c.store().await;
    let now = api
        .get("w2")
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    store
        .compact(now.parse::<i64>().unwrap(), None)
        .await
        .unwrap();
    let mut stream = api
        .watch(&WatchParams::default().timeout(10), &start_rv)
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
    {
        Some(Ok(WatchEvent::Error(s))) => {
            assert_eq!(s.code, 410);
            assert_eq!(s.reason, "Expired");
            assert!(
                s.message
                    .starts_with(&format!("too old resource version: {start_rv} (")),
                "{}",
                s.message
            );
        }
        Some(Err(e)) => assert_eq!(api_code(&e), 410, "{e}"),
        other => panic!("expected 410, got {other:?}"),
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paged_lists_are_one_consistent_snapshot() {
    let c = Cluster::start().await;
    let api: Api<ConfigMap> = Api::namespaced(c.kube().await, "default");
    for i in 0..25 {
        api.create(&PostParams::default(), &cm(&format!("p{i:02}"), &[]))
            .await
            .unwrap();
    }
    let first = api.list(&ListParams::default().limit(10)).await.unwrap();
    assert_eq!(first.items.len(), 10);
    assert_eq!(first.metadata.remaining_item_count, Some(15));
    let rv = first.metadata.resource_version.clone().unwrap();
    // Changes after the first page do not show in later pages.
    api.create(&PostParams::default(), &cm("p99", &[]))
        .await
        .unwrap();
    api.delete("p20", &Default::default()).await.unwrap();
    let mut names: Vec<String> = first
        .items
        .iter()
        .map(|o| o.metadata.name.clone().unwrap())
        .collect();
    let mut token = first.metadata.continue_.clone();
    while let Some(t) = token.filter(|t| !t.is_empty()) {
        let page = api
            .list(&ListParams::default().limit(10).continue_token(&t))
            .await
            .unwrap();
        assert_eq!(page.metadata.resource_version.as_deref(), Some(rv.as_str()));
        names.extend(page.items.iter().map(|o| o.metadata.name.clone().unwrap()));
        token = page.metadata.continue_;
    }
    let want: Vec<String> = (0..25).map(|i| format!("p{i:02}")).collect();
    assert_eq!(names, want);
    // resourceVersionMatch=Exact reads the past; NotOlderThan a future revision is 504.
    let exact = api
        .list(
            &ListParams::default()
                .at(&rv)
                .matching(kube::api::VersionMatch::Exact),
        )
        .await
        .unwrap();
    assert_eq!(exact.items.len(), 25);
    assert!(exact
        .items
        .iter()
        .all(|o| o.metadata.name.as_deref() != Some("p99")));
    let future = (rv.parse::<i64>().unwrap() + 1000).to_string();
    let e = api
        .list(
            &ListParams::default()
                .at(&future)
                .matching(kube::api::VersionMatch::NotOlderThan),
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(&e), 504, "{e}");
    assert!(e.to_string().contains("Too large resource version"), "{e}");

    // A continue token whose revision was compacted is 410.
    let second = api.list(&ListParams::default().limit(5)).await.unwrap();
    let later = api
        .create(&PostParams::default(), &cm("later", &[]))
        .await
        .unwrap();
    let later_rv: i64 = later.metadata.resource_version.unwrap().parse().unwrap();
    c.store().await.compact(later_rv, None).await.unwrap();
    let e = api
        .list(
            &ListParams::default()
                .limit(5)
                .continue_token(second.metadata.continue_.as_deref().unwrap()),
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(&e), 410, "{e}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_is_never_overshot_by_concurrent_creates() {
    let c = Cluster::start().await;
    let client = c.kube().await;
    namespace(&client, "limited").await;
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), "limited");
    quotas
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "q"}, "spec": {"hard": {"pods": "10"}}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client, "limited");
    let mut tasks = Vec::new();
    for i in 0..50 {
        let pods = pods.clone();
        tasks.push(tokio::spawn(async move {
            let p: Pod = serde_json::from_value(json!({"metadata": {"name": format!("p{i}")},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}}))
            .unwrap();
            pods.create(&PostParams::default(), &p).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_eq!(api_code(&e), 403, "{e}");
                assert!(
                    e.to_string().contains(
                        "exceeded quota: q, requested: pods=1, used: pods=10, limited: pods=10"
                    ),
                    "{e}"
                );
            }
        }
    }
    assert_eq!(ok, 10);
    assert_eq!(
        pods.list(&ListParams::default()).await.unwrap().items.len(),
        10
    );
    let q = quotas.get("q").await.unwrap();
    assert_eq!(q.status.unwrap().used.unwrap()["pods"].0, "10");
    // Deleting a pod frees its place.
    pods.delete("p0", &Default::default()).await.ok();
    let names: Vec<String> = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|p| p.metadata.name.unwrap())
        .collect();
    let p: Pod = serde_json::from_value(json!({"metadata": {"name": "again"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}})).unwrap();
    let r = pods.create(&PostParams::default(), &p).await;
    assert_eq!(r.is_ok(), names.len() < 10, "{names:?}: {r:?}");
    c.shutdown().await;
}

const ENCRYPTION: &str = r#"
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets]
    providers:
      - aesgcm:
          keys:
            - name: key1
              secret: MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=
      - identity: {}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_encrypted_at_rest() {
    let c = Cluster::start_with(kube_api::Options {
        encryption: Some(ENCRYPTION.into()),
        ..Default::default()
    })
    .await;
    let api: Api<Secret> = Api::namespaced(c.kube().await, "default");
    let s: Secret = serde_json::from_value(
        json!({"metadata": {"name": "db"}, "stringData": {"password": "hunter2-plaintext"}}),
    )
    .unwrap();
    api.create(&PostParams::default(), &s).await.unwrap();
    let back = api.get("db").await.unwrap();
    assert_eq!(back.data.unwrap()["password"].0, b"hunter2-plaintext");
    let raw = c
        .store()
        .await
        .get("/registry/secrets/default/db", None)
        .await
        .unwrap();
    let value = &raw.kvs[0].value;
    assert!(value.starts_with(b"k8s:enc:aesgcm:v1:key1:"));
    let b64 = "aHVudGVyMi1wbGFpbnRleHQ="; // base64 of the password, as the JSON would hold it
    assert!(!value.windows(b64.len()).any(|w| w == b64.as_bytes()));
    assert!(!value.windows(7).any(|w| w == b"hunter2"));
    // etcdctl, when installed, sees the same ciphertext.
    if let Ok(out) = std::process::Command::new("etcdctl")
        .args([
            "--endpoints",
            &c.store_endpoint,
            "get",
            "/registry/secrets/default/db",
            "--print-value-only",
        ])
        .env("ETCDCTL_API", "3")
        .output()
    {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout.starts_with(b"k8s:enc:aesgcm:v1:key1:"));
        assert!(!String::from_utf8_lossy(&out.stdout).contains(b64));
    } else {
        println!("etcdctl not installed: checked the stored bytes through cairn-client only");
    }
    c.shutdown().await;
}

/// The store's count of open watches, from its Prometheus endpoint.
async fn store_watchers(endpoint: &str) -> i64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(endpoint).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: cairn\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    text.lines()
        .find(|l| l.starts_with("etcd_debugging_mvcc_watcher_total "))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as i64)
        .unwrap_or_else(|| panic!("no watcher gauge in:\n{text}"))
}

/// The API server's count of open watches of a kind, from its `/metrics`.
async fn api_watchers(client: &kube::Client, kind: &str) -> i64 {
    let req = axum::http::Request::get("/metrics")
        .body(Vec::new())
        .unwrap();
    let text = client.request_text(req).await.unwrap();
    text.lines()
        .find(|l| {
            l.starts_with("apiserver_registered_watchers{")
                && l.contains(&format!("kind=\"{kind}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_share_one_store_watch_and_are_released_when_clients_leave() {
    let c = Cluster::start().await;
    let client = c.kube().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let base = store_watchers(&c.store_endpoint).await;
    let mut streams = Vec::new();
    for _ in 0..5 {
        streams.push(
            api.watch(&WatchParams::default().timeout(300), "0")
                .await
                .unwrap()
                .boxed(),
        );
    }
    // A write proves every stream is established end to end.
    api.create(&PostParams::default(), &cm("poke", &[]))
        .await
        .unwrap();
    for s in &mut streams {
        let ev = tokio::time::timeout(Duration::from_secs(10), s.try_next())
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(ev, Some(WatchEvent::Added(_))));
    }
    // Five API watches, one store watch: each change is decoded once for all of them.
    assert_eq!(store_watchers(&c.store_endpoint).await, base + 1);
    assert_eq!(api_watchers(&client, "ConfigMap").await, 5);
    drop(streams);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = api_watchers(&client, "ConfigMap").await;
        if n == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the API server still holds {n} watches"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A watch from before the shared one began gets a store watch of its own, released with it.
    let first = api
        .get("poke")
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let old = (first.parse::<i64>().unwrap() - 3).to_string();
    let mut s = api
        .watch(&WatchParams::default().timeout(300), &old)
        .await
        .unwrap()
        .boxed();
    let ev = tokio::time::timeout(Duration::from_secs(10), s.try_next())
        .await
        .unwrap()
        .unwrap();
    assert!(ev.is_some());
    assert_eq!(store_watchers(&c.store_endpoint).await, base + 2);
    drop(s);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store_watchers(&c.store_endpoint).await != base + 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dedicated store watch was not released"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_larger_than_one_store_message_are_served_whole() {
    let c = Cluster::start().await;
    let api: Api<ConfigMap> = Api::namespaced(c.kube().await, "default");
    let blob = "x".repeat(100 * 1024);
    for i in 0..60 {
        api.create(
            &PostParams::default(),
            &cm(&format!("big{i:02}"), &[("blob", blob.as_str())]),
        )
        .await
        .unwrap();
    }
    // 6 MB of objects: more than one gRPC message from the store may carry.
    let all = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(all.items.len(), 60);
    assert!(all.metadata.continue_.as_deref().unwrap_or("").is_empty());
    // A watch without resourceVersion starts with the same objects.
    let mut stream = api
        .watch(&WatchParams::default().timeout(10), "0")
        .await
        .unwrap()
        .boxed();
    let mut added = 0;
    while added < 60 {
        match tokio::time::timeout(Duration::from_secs(10), stream.try_next())
            .await
            .unwrap()
            .unwrap()
        {
            Some(WatchEvent::Added(_)) => added += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    c.shutdown().await;
}
