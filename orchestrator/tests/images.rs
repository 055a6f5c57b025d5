//! Container images end to end, through real parts: a small image built from Debian's static
//! busybox with umoci, a real registry (Debian's `docker-registry`) on a loopback port of the
//! test's own, pushed to with skopeo, and the node agent against a real API server running the
//! pods as real processes on an overlayfs root (root). Pods run what is in the image (not the
//! host's files), its Cmd when they give no command, each container with its own writable
//! layer; a missing tag shows ErrImagePull then ImagePullBackOff; content that does not match
//! its digest is refused; IfNotPresent runs without the registry. `image import` loads an OCI
//! layout and a `docker save` archive, `image ls` lists them, pods with imagePullPolicy Never run
//! them, `image rm` and garbage collection remove only what no container uses.

use crate::common;
use crate::kube_api;

use common::image::{build_image, have_tools, run};
use common::node::AgentNode;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use cairn_orchestrator::agent::images::gc::GcPolicy;
use cairn_orchestrator::agent::images::{ImageStore, InUse};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use kube_api::{converge, eventually, Cluster};
use serde_json::{json, Value};

/// A `docker-registry` serving plain HTTP on a free loopback port, its storage in `dir`; killed
/// (by its pid) when dropped.
struct Registry {
    child: Child,
    port: u16,
    storage: PathBuf,
    /// Its access log (one line per request).
    log: PathBuf,
}

impl Registry {
    fn start(dir: &Path) -> Registry {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let storage = dir.join("registry");
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                storage.display()
            ),
        )
        .unwrap();
        let log = dir.join("registry.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("docker-registry");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry {
            child,
            port,
            storage,
            log,
        }
    }

    /// How many requests the access log shows for `path`.
    fn requests(&self, method: &str, path: &str) -> usize {
        let needle = format!("\"{method} {path} HTTP");
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&needle))
            .count()
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn push(&self, layout: &Path, tag: &str, name: &str) {
        run(
            "skopeo",
            &[
                "copy",
                "--dest-tls-verify=false",
                &format!("oci:{}:{tag}", layout.display()),
                &format!("docker://{}/{name}", self.host()),
            ],
        );
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

fn pod(name: &str, node: &str, containers: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1, "containers": containers},
    }))
    .unwrap()
}

fn container_status(p: &Pod, i: usize) -> Value {
    serde_json::to_value(&p.status).unwrap()["containerStatuses"][i].clone()
}

async fn wait_running(pods: &Api<Pod>, name: &str) -> Pod {
    eventually(&format!("{name} Running"), 60, || async {
        let p = pods.get(name).await.ok()?;
        let st = p.status.as_ref()?;
        let all = st
            .container_statuses
            .as_ref()?
            .iter()
            .all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()));
        (st.phase.as_deref() == Some("Running") && all).then_some(p)
    })
    .await
}

async fn waiting(pods: &Api<Pod>, name: &str) -> Option<(String, String)> {
    let p = pods.get(name).await.ok()?;
    let w = &container_status(&p, 0)["state"]["waiting"];
    Some((
        w["reason"].as_str()?.to_string(),
        w["message"].as_str().unwrap_or("").to_string(),
    ))
}

async fn delete_all(pods: &Api<Pod>) {
    for p in pods.list(&Default::default()).await.unwrap().items {
        let _ = pods
            .delete(
                p.metadata.name.as_deref().unwrap(),
                &DeleteParams::default(),
            )
            .await;
    }
    converge("pods gone", 60, async || {
        pods.list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    })
    .await;
}

fn sh(script: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), script.into()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_run_images_pulled_from_a_registry() {
    if !have_tools("pods_run_images_pulled_from_a_registry") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("oci");
    build_image(&layout, "1", "only-in-the-image");
    build_image(&layout, "2", "tampered");
    let mut registry = Registry::start(work.path());
    registry.push(&layout, "1", "busybox:1");
    let image = format!("{}/busybox:1", registry.host());

    // Pulls of one reference at once are one pull.
    let scratch = tempfile::tempdir().unwrap();
    let store = ImageStore::open(scratch.path()).unwrap();
    let (a, b) = tokio::join!(store.pull(&image), store.pull(&image));
    assert_eq!(a.unwrap(), b.unwrap());
    assert_eq!(registry.requests("GET", "/v2/busybox/manifests/1"), 1);

    let c = Cluster::start().await;
    let client = c.kube().await;
    let node = AgentNode::new("pull");
    let name = format!("images-{}", std::process::id());
    let agent = node.agent(client.clone(), &name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    // Two containers from the image, each writing its own file into the root.
    let script = "cat /etc/cairn-image; echo $HOSTNAME-$0 > /mine; exec sleep 300";
    pods.create(
        &PostParams::default(),
        &pod(
            "two",
            &name,
            json!([
                {"name": "one", "image": image, "command": ["sh", "-c", script, "one"]},
                {"name": "other", "image": image, "command": ["sh", "-c", script, "other"]},
            ]),
        ),
    )
    .await
    .unwrap();
    // No command: the image's Cmd, in its WorkingDir.
    pods.create(
        &PostParams::default(),
        &pod("cmd", &name, json!([{"name": "main", "image": image}])),
    )
    .await
    .unwrap();
    let two = wait_running(&pods, "two").await;
    let uid = two.metadata.uid.clone().unwrap();
    let rt = node.runtime();
    let log = rt.logs(&uid, "one", None).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&log).lines().next(),
        Some("only-in-the-image")
    );
    assert!(
        !Path::new("/etc/cairn-image").exists(),
        "the host has the image's file"
    );
    for (c, other) in [("one", "other"), ("other", "one")] {
        let out = rt.exec(&uid, c, &sh("cat /mine")).await.unwrap();
        let mine = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            mine.trim().ends_with(&format!("-{c}")),
            "{c} reads {mine:?}"
        );
        assert!(!mine.contains(other));
    }
    // The writes went to each container's own layer, not into the shared image layers.
    let layers = node.root().join("images/layers");
    for l in std::fs::read_dir(&layers).unwrap() {
        assert!(!l.unwrap().path().join("mine").exists());
    }
    let cmd = wait_running(&pods, "cmd").await;
    let cmd_uid = cmd.metadata.uid.clone().unwrap();
    let log = eventually("the image's Cmd output", 30, || async {
        let l = String::from_utf8_lossy(&rt.logs(&cmd_uid, "main", None).ok()?).to_string();
        (!l.is_empty()).then_some(l)
    })
    .await;
    assert_eq!(log.trim(), "from-cmd /etc");

    // The Node lists the image with its size.
    let nodes: Api<Node> = Api::all(client.clone());
    converge("the node's status.images", 40, async || {
        let n = nodes.get(&name).await.unwrap();
        n.status
            .and_then(|s| s.images)
            .unwrap_or_default()
            .iter()
            .any(|i| {
                i.names.iter().flatten().any(|n| *n == image) && i.size_bytes.unwrap_or(0) > 1000
            })
    })
    .await;

    // A tag the registry lacks: ErrImagePull with the registry's word, then the back-off.
    let missing = format!("{}/busybox:nope", registry.host());
    let watch = {
        let pods = pods.clone();
        tokio::spawn(async move {
            let cfg = kube::runtime::watcher::Config::default().fields("metadata.name=missing");
            let mut seen: Vec<(String, String)> = Vec::new();
            let mut stream = std::pin::pin!(kube::runtime::watcher(pods, cfg));
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, stream.next()).await {
                let objs = match ev {
                    Ok(kube::runtime::watcher::Event::Apply(p))
                    | Ok(kube::runtime::watcher::Event::InitApply(p)) => vec![p],
                    _ => vec![],
                };
                for p in objs {
                    let w = &container_status(&p, 0)["state"]["waiting"];
                    if let Some(r) = w["reason"].as_str() {
                        let m = w["message"].as_str().unwrap_or("").to_string();
                        if seen.last().map(|(lr, _)| lr.as_str()) != Some(r) {
                            seen.push((r.to_string(), m));
                        }
                    }
                }
                if seen.iter().any(|(r, _)| r == "ImagePullBackOff") {
                    break;
                }
            }
            seen
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    pods.create(
        &PostParams::default(),
        &pod(
            "missing",
            &name,
            json!([{"name": "main", "image": missing, "command": ["true"]}]),
        ),
    )
    .await
    .unwrap();
    let seen = watch.await.unwrap();
    assert_eq!(
        seen.first().map(|s| s.0.as_str()),
        Some("ErrImagePull"),
        "{seen:?}"
    );
    assert!(seen[0].1.contains("manifest unknown"), "{seen:?}");
    assert!(seen[0].1.contains(&missing), "{seen:?}");
    assert_eq!(
        seen.get(1),
        Some(&(
            "ImagePullBackOff".to_string(),
            format!("Back-off pulling image \"{missing}\"")
        )),
        "{seen:?}"
    );

    // A digest the registry has no manifest for is refused.
    let pinned = format!("{}/busybox@sha256:{}", registry.host(), "0".repeat(64));
    pods.create(
        &PostParams::default(),
        &pod(
            "pinned",
            &name,
            json!([{"name": "main", "image": pinned, "command": ["true"]}]),
        ),
    )
    .await
    .unwrap();
    converge("the unknown digest refused", 30, async || {
        matches!(waiting(&pods, "pinned").await, Some((r, _)) if r == "ErrImagePull" || r == "ImagePullBackOff")
    })
    .await;

    // Content that does not match its digest is refused: a layer altered in the registry's storage.
    registry.push(&layout, "2", "tampered:2");
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let m2 = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "2")
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(&m2[7..])).unwrap())
            .unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap()[7..].to_string();
    let stored = registry
        .storage
        .join("docker/registry/v2/blobs/sha256")
        .join(&layer[..2])
        .join(&layer)
        .join("data");
    let mut bytes = std::fs::read(&stored).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&stored, bytes).unwrap();
    let (ok, out) = node.image_cmd(&["pull", &format!("{}/tampered:2", registry.host())]);
    assert!(!ok, "{out}");
    assert!(out.to_lowercase().contains("digest"), "{out}");
    let (_, ls) = node.image_cmd(&["ls"]);
    assert!(!ls.contains("tampered"), "{ls}");
    assert!(!node.root().join("images/layers").join(&layer).exists());

    // Without the registry: IfNotPresent runs what the node has; Always cannot.
    registry.stop();
    pods.create(
        &PostParams::default(),
        &pod(
            "offline",
            &name,
            json!([{"name": "main", "image": image, "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", "exec sleep 300"]}]),
        ),
    )
    .await
    .unwrap();
    pods.create(
        &PostParams::default(),
        &pod(
            "always",
            &name,
            json!([{"name": "main", "image": image, "imagePullPolicy": "Always",
                "command": ["sh", "-c", "exec sleep 300"]}]),
        ),
    )
    .await
    .unwrap();
    wait_running(&pods, "offline").await;
    converge("Always fails without the registry", 30, async || {
        matches!(waiting(&pods, "always").await, Some((r, _)) if r == "ErrImagePull" || r == "ImagePullBackOff")
    })
    .await;

    delete_all(&pods).await;
    agent.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_images_run_with_never_and_are_removed_when_unused() {
    if !have_tools("imported_images_run_with_never_and_are_removed_when_unused") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("oci");
    build_image(&layout, "1", "imported-layout");
    let archive = work.path().join("saved.tar");
    run(
        "skopeo",
        &[
            "copy",
            &format!("oci:{}:1", layout.display()),
            &format!("docker-archive:{}:example.com/saved:2", archive.display()),
        ],
    );
    let node = AgentNode::new("import");
    let (ok, out) = node.image_cmd(&[
        "import",
        &layout.display().to_string(),
        "--name",
        "example.com/layout:1",
    ]);
    assert!(ok, "{out}");
    let (ok, out) = node.image_cmd(&["import", &archive.display().to_string()]);
    assert!(ok, "{out}");
    let (ok, ls) = node.image_cmd(&["ls"]);
    assert!(ok, "{ls}");
    let rows: Vec<Vec<&str>> = ls.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0], ["REPOSITORY", "TAG", "DIGEST", "SIZE"]);
    assert!(
        rows.iter().any(|r| r[..2] == ["example.com/layout", "1"]),
        "{ls}"
    );
    assert!(
        rows.iter().any(|r| r[..2] == ["example.com/saved", "2"]),
        "{ls}"
    );

    let c = Cluster::start().await;
    let client = c.kube().await;
    let name = format!("images-never-{}", std::process::id());
    let agent = node.agent(client.clone(), &name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for (pod_name, image) in [
        ("layout", "example.com/layout:1"),
        ("saved", "example.com/saved:2"),
    ] {
        pods.create(
            &PostParams::default(),
            &pod(
                pod_name,
                &name,
                json!([{"name": "main", "image": image, "imagePullPolicy": "Never",
                    "command": ["sh", "-c", "cat /etc/cairn-image; exec sleep 300"]}]),
            ),
        )
        .await
        .unwrap();
    }
    pods.create(
        &PostParams::default(),
        &pod(
            "absent",
            &name,
            json!([{"name": "main", "image": "example.com/absent:1", "imagePullPolicy": "Never",
                "command": ["true"]}]),
        ),
    )
    .await
    .unwrap();
    let rt = node.runtime();
    for p in ["layout", "saved"] {
        let uid = wait_running(&pods, p).await.metadata.uid.unwrap();
        let log = eventually("the image's file printed", 30, || async {
            let l = String::from_utf8_lossy(&rt.logs(&uid, "main", None).ok()?).to_string();
            (!l.is_empty()).then_some(l)
        })
        .await;
        assert_eq!(log.trim(), "imported-layout");
    }
    let never = eventually("ErrImageNeverPull", 30, || async {
        waiting(&pods, "absent")
            .await
            .filter(|(r, _)| r == "ErrImageNeverPull")
    })
    .await;
    assert_eq!(
        never.1,
        "Container image \"example.com/absent:1\" is not present with pull policy of Never"
    );

    // In use: kept. Once its pod is gone: removed.
    let (ok, out) = node.image_cmd(&["rm", "example.com/layout:1"]);
    assert!(!ok && out.contains("in use"), "{out}");
    pods.delete("layout", &DeleteParams::default())
        .await
        .unwrap();
    converge("layout gone", 60, async || {
        pods.get_opt("layout").await.unwrap().is_none()
    })
    .await;
    let (ok, out) = node.image_cmd(&["rm", "example.com/layout:1"]);
    assert!(ok, "{out}");
    let (_, ls) = node.image_cmd(&["ls"]);
    assert!(!ls.contains("example.com/layout"), "{ls}");
    assert!(ls.contains("example.com/saved"), "{ls}");

    // Garbage collection above the high threshold (1%: always, on any real disk) removes what
    // no container uses, and only that.
    let (ok, out) = node.image_cmd(&[
        "import",
        &layout.display().to_string(),
        "--name",
        "example.com/unused:1",
    ]);
    assert!(ok, "{out}");
    let store = ImageStore::open(node.root()).unwrap();
    let policy = GcPolicy {
        high: 1,
        low: 0,
        min_age: Duration::ZERO,
    };
    let report = store.collect_garbage(&policy, &InUse::of(&rt)).unwrap();
    assert_eq!(report.removed.len(), 1, "{report:?}");
    assert!(store.resolve("example.com/unused:1").unwrap().is_none());
    assert!(store.resolve("example.com/saved:2").unwrap().is_some());
    let saved_uid = pods.get("saved").await.unwrap().metadata.uid.unwrap();
    let out = rt
        .exec(&saved_uid, "main", &sh("cat /etc/cairn-image"))
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "imported-layout"
    );

    delete_all(&pods).await;
    agent.abort();
}
