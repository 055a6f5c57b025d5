//! The node agent against a real API server and store, running real processes through the bundled
//! runtime (root): it registers its Node and turns Ready, runs a pod bound to it and reports it
//! Running and Ready, restarts a crashing container with the crash-loop back-off shown in the
//! status, keeps pods running across its own restart (same process, same restart count), and on
//! deletion stops the processes before the pod object goes. Also the rest of the pod spec: secret,
//! downwardAPI and projected volumes kept up to date, init containers, lifecycle hooks and
//! termination messages, resources in cgroups and in the environment, OOMKilled.

use crate::common;
use crate::kube_api;

use common::node::AgentNode;

use std::time::Duration;

use cairn_orchestrator::runtime::Runtime;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube_api::{converge, eventually, Cluster};
use serde_json::json;

/// The cluster's CA (DER), as the agent reads it from its kubeconfig.
fn cluster_ca(c: &Cluster) -> Vec<Vec<u8>> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    tokio_rustls::rustls::pki_types::CertificateDer::pem_file_iter(
        c.dir.path().join("certs/ca.crt"),
    )
    .unwrap()
    .map(|c| c.unwrap().to_vec())
    .collect()
}

fn pod(name: &str, node: &str, script: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": "/", "command": ["/bin/sh", "-c", script]}]},
    }))
    .unwrap()
}

fn container_status(p: &Pod) -> serde_json::Value {
    serde_json::to_value(&p.status).unwrap()["containerStatuses"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_runs_restarts_readopts_and_stops_pods() {
    if !common::can_run("the_agent_runs_restarts_readopts_and_stops_pods") {
        return;
    }
    let c = Cluster::start().await;
    let client = c.kube().await;
    let node = AgentNode::new("main");
    let name = format!("agent-{}", std::process::id());
    let first = node.agent_with_ca(client.clone(), &name, cluster_ca(&c));

    let nodes: Api<Node> = Api::all(client.clone());
    converge("the node Ready", 20, async || {
        nodes.get_opt(&name).await.unwrap().is_some_and(|n| {
            n.status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
    })
    .await;

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(
        &PostParams::default(),
        &pod("web", &name, "echo started; exec sleep 300"),
    )
    .await
    .unwrap();
    let web = eventually("web Running and Ready", 30, || async {
        let p = pods.get("web").await.unwrap();
        let cs = container_status(&p);
        let phase = p.status.as_ref()?.phase.clone()?;
        (phase == "Running" && cs["ready"] == true).then_some(p)
    })
    .await;
    // Nothing changes for a running pod without probes, so the agent's syncs (every watch
    // event, every second) send no status: the API server counts no pods/status PATCH.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = status_patches(&client).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = status_patches(&client).await;
    assert_eq!(
        after, before,
        "status written again for running pods that did not change"
    );
    pods.create(&PostParams::default(), &pod("crash", &name, "exit 3"))
        .await
        .unwrap();
    let st = web.status.clone().unwrap();
    assert_eq!(st.host_ip.as_deref(), Some("127.0.0.1"));
    assert!(st.start_time.is_some());
    assert!(container_status(&web)["state"]["running"]["startedAt"].is_string());

    // pods/log goes through the API server to the agent's port.
    let logs = pods
        .logs("web", &kube::api::LogParams::default())
        .await
        .unwrap();
    assert_eq!(logs, "started\n");
    let err = pods
        .logs(
            "web",
            &kube::api::LogParams {
                container: Some("nope".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("container nope is not valid for pod web"),
        "{err}"
    );
    // The agent's port answers only certificates the cluster's CA signed.
    let node_obj = nodes.get(&name).await.unwrap();
    let port = node_obj
        .status
        .unwrap()
        .daemon_endpoints
        .unwrap()
        .kubelet_endpoint
        .unwrap()
        .port as u16;
    let path = "/containerLogs/default/web/main";
    let (cert, key) =
        cairn_orchestrator::apiserver::tls::kubelet_client(&c.dir.path().join("certs"))
            .unwrap()
            .unwrap();
    let trusted = cairn_orchestrator::apiserver::kubelet::KubeletClient::new(&cert, &key).unwrap();
    let ok = trusted
        .get([127, 0, 0, 1].into(), port, path)
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let stranger = rcgen::generate_simple_self_signed(vec!["stranger".to_string()]).unwrap();
    let untrusted = cairn_orchestrator::apiserver::kubelet::KubeletClient::new(
        &stranger.cert.pem(),
        &stranger.signing_key.serialize_pem(),
    )
    .unwrap();
    let refused = untrusted.get([127, 0, 0, 1].into(), port, path).await;
    assert!(refused.is_err(), "a certificate from another CA was served");
    if kube_api::have_kubectl("the_agent_runs_restarts_readopts_and_stops_pods", 32) {
        assert_eq!(c.ok(32, &["logs", "web"]), "started\n");
    }

    // The crashing container is restarted at once, then held back, and the status says so.
    let crash = eventually("crash in CrashLoopBackOff", 30, || async {
        let p = pods.get("crash").await.unwrap();
        let cs = container_status(&p);
        (cs["restartCount"].as_i64()? >= 1
            && cs["state"]["waiting"]["reason"] == "CrashLoopBackOff")
            .then_some(p)
    })
    .await;
    let cs = container_status(&crash);
    assert_eq!(cs["lastState"]["terminated"]["exitCode"], 3);
    assert_eq!(cs["lastState"]["terminated"]["reason"], "Error");
    assert_eq!(crash.status.unwrap().phase.as_deref(), Some("Running"));

    // A new agent finds the same processes: nothing restarted.
    let rt = node.runtime();
    let web_uid = web.metadata.uid.clone().unwrap();
    let pid_before = rt.status(&web_uid).unwrap().containers[0].pid;
    first.abort();
    let _ = first.await;
    let second = node.agent_with_ca(client.clone(), &name, cluster_ca(&c));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = pods.get("web").await.unwrap();
    assert_eq!(rt.status(&web_uid).unwrap().containers[0].pid, pid_before);
    assert_eq!(container_status(&after)["restartCount"], 0);
    assert_eq!(container_status(&after)["ready"], true);

    // Deleting the pod stops its processes before the object goes.
    pods.delete("web", &DeleteParams::default()).await.unwrap();
    converge("web gone from the API", 30, async || {
        pods.get_opt("web").await.unwrap().is_none()
    })
    .await;
    assert!(
        rt.status(&web_uid).is_err(),
        "the runtime still has the deleted pod"
    );
    pods.delete("crash", &DeleteParams::default())
        .await
        .unwrap();
    converge("crash gone from the API", 30, async || {
        pods.get_opt("crash").await.unwrap().is_none()
    })
    .await;
    second.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_gates_ready_and_a_failed_liveness_probe_restarts_the_container() {
    if !common::can_run("readiness_gates_ready_and_a_failed_liveness_probe_restarts_the_container")
    {
        return;
    }
    let c = Cluster::start().await;
    let client = c.kube().await;
    let node = AgentNode::new("probes");
    let name = format!("agent-probes-{}", std::process::id());
    let agent = node.agent(client.clone(), &name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let probe = |script: &str| json!({"exec": {"command": ["/bin/sh", "-c", script]}, "periodSeconds": 1, "failureThreshold": 1});
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": "probed"},
        "spec": {"nodeName": name, "terminationGracePeriodSeconds": 1,
            "volumes": [{"name": "flags", "emptyDir": {}}],
            "containers": [{"name": "main", "image": "/", "command": ["/bin/sh", "-c", "exec sleep 300"],
                "volumeMounts": [{"name": "flags", "mountPath": "/flags"}],
                "readinessProbe": probe("test -e /flags/ready"),
                "livenessProbe": probe("test ! -e /flags/dead")}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &p).await.unwrap();
    let ready = |want: bool| {
        let pods = pods.clone();
        async move {
            let p = pods.get("probed").await.unwrap();
            let cs = container_status(&p);
            cs["state"]["running"].is_object() && cs["ready"] == want
        }
    };
    converge("running but not ready", 30, async || ready(false).await).await;
    let uid = pods
        .get("probed")
        .await
        .unwrap()
        .metadata
        .uid
        .clone()
        .unwrap();
    let rt = node.runtime();
    let sh = |script: &str| vec!["/bin/sh".to_string(), "-c".to_string(), script.to_string()];
    rt.exec(&uid, "main", &sh("touch /flags/ready"))
        .await
        .unwrap();
    converge("ready once the readiness probe passes", 30, async || {
        ready(true).await
    })
    .await;
    let p = pods.get("probed").await.unwrap();
    assert!(p
        .status
        .unwrap()
        .conditions
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True"));
    rt.exec(&uid, "main", &sh("rm /flags/ready; touch /flags/dead"))
        .await
        .unwrap();
    converge(
        "restarted after the liveness probe failed",
        30,
        async || {
            let p = pods.get("probed").await.unwrap();
            let cs = container_status(&p);
            cs["restartCount"].as_i64().unwrap_or(0) >= 1
                && cs["lastState"]["terminated"].is_object()
        },
    )
    .await;
    pods.delete("probed", &DeleteParams::default())
        .await
        .unwrap();
    converge("probed gone", 30, async || {
        pods.get_opt("probed").await.unwrap().is_none()
    })
    .await;
    agent.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environments_are_resolved_as_the_kubelet_does() {
    if !common::can_run("environments_are_resolved_as_the_kubelet_does") {
        return;
    }
    let c = Cluster::start().await;
    let client = c.kube().await;
    let node = AgentNode::new("env");
    let name = format!("agent-env-{}", std::process::id());
    let agent = node.agent(client.clone(), &name);
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), "default");
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(
            json!({"metadata": {"name": "cfg"}, "data": {"greeting": "hello", "LEVEL": "debug"}}),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), "default");
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "creds"}, "stringData": {"password": "s3cret"}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let script = "echo \"$GREETING|$PASSWORD|$MY_NAME|$MY_NODE|$CFG_LEVEL|$URL|${KUBERNETES_SERVICE_HOST:+svc}\"; exec sleep 300";
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": "envy"},
        "spec": {"nodeName": name, "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": "/", "command": ["/bin/sh", "-c", script],
                "envFrom": [{"prefix": "CFG_", "configMapRef": {"name": "cfg"}}],
                "env": [
                    {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}},
                    {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                    {"name": "MY_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "MY_NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "URL", "value": "http://$(MY_NAME):80"}]}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &p).await.unwrap();
    let uid = pods.get("envy").await.unwrap().metadata.uid.unwrap();
    let rt = node.runtime();
    let line = eventually("the environment printed", 30, || async {
        let log = rt.logs(&uid, "main", None).ok()?;
        let text = String::from_utf8_lossy(&log).to_string();
        (!text.is_empty()).then_some(text)
    })
    .await;
    assert_eq!(
        line.trim(),
        format!("hello|s3cret|envy|{name}|debug|http://envy:80|svc")
    );

    // A missing secret is the kubelet's CreateContainerConfigError, not a crash.
    let bad: Pod = serde_json::from_value(json!({
        "metadata": {"name": "nosecret"},
        "spec": {"nodeName": name, "containers": [{"name": "main", "image": "/", "command": ["true"],
            "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}]}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &bad).await.unwrap();
    converge("CreateContainerConfigError shown", 30, async || {
        let p = pods.get("nosecret").await.unwrap();
        let w = &container_status(&p)["state"]["waiting"];
        w["reason"] == "CreateContainerConfigError"
            && w["message"]
                .as_str()
                .unwrap_or("")
                .contains("secret \"nope\" not found")
    })
    .await;
    for p in ["envy", "nosecret"] {
        pods.delete(p, &DeleteParams::default()).await.unwrap();
    }
    converge("pods gone", 30, async || {
        pods.list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    })
    .await;
    agent.abort();
}

/// Runs `script` in a pod's container through the runtime; its stdout.
/// How many PATCH requests of pods/status the API server has answered (its /metrics).
async fn status_patches(client: &kube::Client) -> u64 {
    let req = axum::http::Request::get("/metrics")
        .body(Vec::new())
        .unwrap();
    let text = client.request_text(req).await.unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("apiserver_request_total{")
                && l.contains("verb=\"PATCH\"")
                && l.contains("resource=\"pods\"")
                && l.contains("subresource=\"status\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn sh(rt: &Runtime, uid: &str, container: &str, script: &str) -> String {
    let out = rt
        .exec(
            uid,
            container,
            &["/bin/sh".into(), "-c".into(), script.into()],
        )
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn wait_running(pods: &Api<Pod>, name: &str) -> Pod {
    eventually(&format!("{name} Running"), 30, || async {
        let p = pods.get(name).await.ok()?;
        (p.status.as_ref()?.phase.as_deref() == Some("Running")
            && container_status(&p)["state"]["running"].is_object())
        .then_some(p)
    })
    .await
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_downward_and_projected_volumes_are_files_kept_up_to_date() {
    if !common::can_run("secret_downward_and_projected_volumes_are_files_kept_up_to_date") {
        return;
    }
    let c = Cluster::start().await;
    let client = c.kube().await;
    let node = AgentNode::new("vol");
    let name = format!("agent-vol-{}", std::process::id());
    let agent = node.agent(client.clone(), &name);
    let rt = node.runtime();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), "default");
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "cfg"}, "data": {"color": "blue"}}))
            .unwrap(),
    )
    .await
    .unwrap();

    // The secret does not exist yet: the pod waits in ContainerCreating, as the kubelet says.
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": "vols", "labels": {"app": "web", "tier": "front"}},
        "spec": {"nodeName": name, "terminationGracePeriodSeconds": 1,
            "volumes": [
                {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o400,
                    "items": [{"key": "password", "path": "pw"}, {"key": "user", "path": "u/name", "mode": 0o440}]}},
                {"name": "info", "downwardAPI": {"items": [
                    {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                    {"path": "mem", "resourceFieldRef": {"containerName": "main", "resource": "limits.memory", "divisor": "1Mi"}}]}},
                {"name": "all", "projected": {"sources": [
                    {"secret": {"name": "creds", "items": [{"key": "user", "path": "user"}]}},
                    {"configMap": {"name": "cfg"}},
                    {"downwardAPI": {"items": [{"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}]}}],
            "containers": [{"name": "main", "image": "/", "command": ["sleep", "300"],
                "resources": {"limits": {"memory": "64Mi"}},
                "volumeMounts": [
                    {"name": "creds", "mountPath": "/etc/creds"},
                    {"name": "info", "mountPath": "/etc/info"},
                    {"name": "all", "mountPath": "/etc/all"}]}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &p).await.unwrap();
    converge(
        "ContainerCreating while the secret is missing",
        30,
        async || {
            let p = pods.get("vols").await.unwrap();
            let w = &container_status(&p)["state"]["waiting"];
            w["reason"] == "ContainerCreating"
                && w["message"]
                    == r#"MountVolume.SetUp failed for volume "creds" : secret "creds" not found"#
        },
    )
    .await;
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), "default");
    converge("a FailedMount event", 30, async || {
        events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("FailedMount")
                    && e.involved_object.name.as_deref() == Some("vols")
                    && e.message
                        .as_deref()
                        .unwrap_or("")
                        .contains(r#"secret "creds" not found"#)
            })
    })
    .await;
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "creds"},
                "data": {"password": "czNjcmV0", "user": "YWRtaW4="}}))
            .unwrap(),
        )
        .await
        .unwrap();
    let p = wait_running(&pods, "vols").await;
    let uid = p.metadata.uid.clone().unwrap();

    // Secret: base64-decoded, on a tmpfs, with the modes asked for, read-only.
    assert_eq!(sh(&rt, &uid, "main", "cat /etc/creds/pw").await, "s3cret");
    assert_eq!(
        sh(&rt, &uid, "main", "cat /etc/creds/u/name").await,
        "admin"
    );
    assert_eq!(
        sh(
            &rt,
            &uid,
            "main",
            "stat -L -c %a /etc/creds/pw /etc/creds/u/name"
        )
        .await,
        "400\n440\n"
    );
    let fs_type = sh(&rt, &uid, "main", "stat -f -c %T /etc/creds/..data/").await;
    assert_eq!(fs_type.trim(), "tmpfs");
    assert_eq!(
        sh(
            &rt,
            &uid,
            "main",
            "touch /etc/creds/x 2>/dev/null && echo writable || echo read-only"
        )
        .await
        .trim(),
        "read-only"
    );
    // Nothing of the secret on the node's disk: its directory is a tmpfs mount.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        mounts
            .lines()
            .any(|l| l.starts_with("tmpfs ") && l.contains(&uid) && l.contains("/files/creds ")),
        "no tmpfs for the secret volume"
    );
    // Downward API: the kubelet's label lines; the limit with its divisor.
    assert_eq!(
        sh(&rt, &uid, "main", "cat /etc/info/labels").await,
        "app=\"web\"\ntier=\"front\""
    );
    assert_eq!(sh(&rt, &uid, "main", "cat /etc/info/mem").await, "64");
    // Projected: every source in one directory.
    assert_eq!(
        sh(
            &rt,
            &uid,
            "main",
            "cat /etc/all/user /etc/all/color /etc/all/ns"
        )
        .await,
        "adminbluedefault"
    );

    // Updates reach the files in place (the same mount, a new `..data`).
    secrets
        .patch(
            "creds",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"password": "bmV3LXBhc3M="}})),
        )
        .await
        .unwrap();
    pods.patch(
        "vols",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"tier": "back"}}})),
    )
    .await
    .unwrap();
    cms.patch(
        "cfg",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"color": "green"}})),
    )
    .await
    .unwrap();
    let updated = eventually("the volumes updated", 30, || async {
        let out = sh(
            &rt,
            &uid,
            "main",
            "cat /etc/creds/pw; echo; cat /etc/info/labels; echo; cat /etc/all/color",
        )
        .await;
        (out == "new-pass\napp=\"web\"\ntier=\"back\"\ngreen").then_some(out)
    })
    .await;
    assert!(updated.ends_with("green"));
    let pid = rt.status(&uid).unwrap().containers[0].pid;
    assert_eq!(
        rt.status(&uid).unwrap().containers[0].pid,
        pid,
        "an update must not restart the container"
    );

    // A token projection waits, in the kubelet's words, for its service account (no controller
    // manager made `default` here), then starts with the token mounted.
    let tok: Pod = serde_json::from_value(json!({
        "metadata": {"name": "tok"},
        "spec": {"nodeName": name, "terminationGracePeriodSeconds": 1,
            "volumes": [{"name": "t", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}],
            "containers": [{"name": "main", "image": "/", "command": ["sleep", "300"],
                "volumeMounts": [{"name": "t", "mountPath": "/etc/tok"}]}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &tok).await.unwrap();
    converge("the token projection waiting for its account", 30, async || {
        let p = pods.get("tok").await.unwrap();
        container_status(&p)["state"]["waiting"]["message"] == r#"MountVolume.SetUp failed for volume "t" : failed to fetch token: serviceaccounts "default" not found"#
    })
    .await;
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), "default");
    sas.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap(),
    )
    .await
    .unwrap();
    let tok = wait_running(&pods, "tok").await;
    let tok_uid = tok.metadata.uid.clone().unwrap();
    let token = sh(&rt, &tok_uid, "main", "cat /etc/tok/token").await;
    assert_eq!(token.split('.').count(), 3, "a JWS: {token}");

    delete_all(&pods).await;
    assert!(
        !std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .contains(&uid),
        "the secret's tmpfs outlived its pod"
    );
    agent.abort();
}

fn condition(p: &Pod, ty: &str) -> Option<String> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == ty)
        .map(|c| c.status.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_containers_run_in_order_once_before_the_app_containers() {
    if !common::can_run("init_containers_run_in_order_once_before_the_app_containers") {
        return;
    }
    let c = Cluster::start().await;
    let client = c.kube().await;
    let node = AgentNode::new("init");
    let name = format!("agent-init-{}", std::process::id());
    let first = node.agent(client.clone(), &name);
    let rt = node.runtime();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().to_str().unwrap();
    // Each init container appends its mark; the first one waits on a file the test writes, so the
    // pod can be seen half-initialized.
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": "inits"},
        "spec": {"nodeName": name, "terminationGracePeriodSeconds": 1,
            "volumes": [{"name": "work", "hostPath": {"path": dir}}],
            "initContainers": [
                {"name": "one", "image": "/", "command": ["/bin/sh", "-c",
                    "echo one >> /work/order; while [ ! -e /work/go ]; do sleep 0.1; done"],
                    "volumeMounts": [{"name": "work", "mountPath": "/work"}]},
                {"name": "two", "image": "/", "command": ["/bin/sh", "-c", "echo two >> /work/order"],
                    "volumeMounts": [{"name": "work", "mountPath": "/work"}]}],
            "containers": [{"name": "main", "image": "/", "command": ["/bin/sh", "-c",
                "echo main >> /work/order; exec sleep 300"],
                "volumeMounts": [{"name": "work", "mountPath": "/work"}]}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &p).await.unwrap();
    let waiting = eventually("the first init container running", 30, || async {
        let p = pods.get("inits").await.ok()?;
        let st = serde_json::to_value(&p.status).ok()?;
        st["initContainerStatuses"][0]["state"]["running"]
            .is_object()
            .then_some(p)
    })
    .await;
    let st = serde_json::to_value(&waiting.status).unwrap();
    assert_eq!(st["phase"], "Pending");
    assert_eq!(condition(&waiting, "Initialized").as_deref(), Some("False"));
    assert_eq!(
        st["initContainerStatuses"][1]["state"]["waiting"]["reason"],
        "PodInitializing"
    );
    assert_eq!(
        st["containerStatuses"][0]["state"]["waiting"]["reason"],
        "PodInitializing"
    );
    if kube_api::have_kubectl("init_containers_run_in_order", 32) {
        let out = c.ok(32, &["get", "pod", "inits", "--no-headers"]);
        assert!(out.contains("Init:0/2"), "{out}");
    }
    std::fs::write(work.path().join("go"), "").unwrap();
    let p = wait_running(&pods, "inits").await;
    assert_eq!(condition(&p, "Initialized").as_deref(), Some("True"));
    let st = serde_json::to_value(&p.status).unwrap();
    for i in 0..2 {
        let t = &st["initContainerStatuses"][i]["state"]["terminated"];
        assert_eq!(t["exitCode"], 0, "{st}");
        assert_eq!(t["reason"], "Completed");
    }
    let order = || std::fs::read_to_string(work.path().join("order")).unwrap();
    assert_eq!(order(), "one\ntwo\nmain\n");

    // A new agent adopts the pod as it is: completed init containers are not run again.
    first.abort();
    let _ = first.await;
    let second = node.agent(client.clone(), &name);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(order(), "one\ntwo\nmain\n");
    let p = pods.get("inits").await.unwrap();
    assert_eq!(condition(&p, "Initialized").as_deref(), Some("True"));
    assert_eq!(container_status(&p)["restartCount"], 0);
    let uid = p.metadata.uid.clone().unwrap();
    assert_eq!(
        rt.status(&uid).unwrap().containers[0].state,
        cairn_orchestrator::runtime::ContainerState::Running
    );

    // With restartPolicy Never a failed init container fails the pod; the app never starts.
    let failing: Pod = serde_json::from_value(json!({
        "metadata": {"name": "badinit"},
        "spec": {"nodeName": name, "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
            "initContainers": [{"name": "setup", "image": "/", "command": ["/bin/sh", "-c", "exit 7"]}],
            "containers": [{"name": "main", "image": "/", "command": ["sleep", "300"]}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &failing).await.unwrap();
    let failed = eventually("the pod Failed", 30, || async {
        let p = pods.get("badinit").await.ok()?;
        (p.status.as_ref()?.phase.as_deref() == Some("Failed")).then_some(p)
    })
    .await;
    let st = serde_json::to_value(&failed.status).unwrap();
    assert_eq!(
        st["initContainerStatuses"][0]["state"]["terminated"]["exitCode"],
        7
    );
    assert_eq!(condition(&failed, "Initialized").as_deref(), Some("False"));
    assert_eq!(
        st["containerStatuses"][0]["state"]["waiting"]["reason"],
        "PodInitializing"
    );
    if kube_api::have_kubectl("init_containers_run_in_order", 32) {
        let out = c.ok(32, &["get", "pod", "badinit", "--no-headers"]);
        assert!(out.contains("Init:Error"), "{out}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let uid = failed.metadata.uid.clone().unwrap();
    let s = rt.status(&uid).unwrap();
    assert_eq!(
        s.containers[0].state,
        cairn_orchestrator::runtime::ContainerState::Created,
        "the app container started after a failed init container"
    );
    assert_eq!(s.init_containers.len(), 1);

    // With OnFailure it is run again, with the back-off shown as Init:CrashLoopBackOff.
    let retried: Pod = serde_json::from_value(json!({
        "metadata": {"name": "retryinit"},
        "spec": {"nodeName": name, "restartPolicy": "OnFailure", "terminationGracePeriodSeconds": 1,
            "initContainers": [{"name": "setup", "image": "/", "command": ["/bin/sh", "-c", "exit 1"]}],
            "containers": [{"name": "main", "image": "/", "command": ["sleep", "300"]}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &retried).await.unwrap();
    converge("the init container crash-looping", 30, async || {
        let p = pods.get("retryinit").await.unwrap();
        let st = serde_json::to_value(&p.status).unwrap();
        let i = &st["initContainerStatuses"][0];
        st["phase"] == "Pending"
            && i["restartCount"].as_i64().unwrap_or(0) >= 1
            && i["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    })
    .await;
    delete_all(&pods).await;
    second.abort();
}

/// An HTTP server on loopback that answers 200 and records the paths asked for.
async fn recording_server() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = l.accept().await {
            let mut buf = [0u8; 1024];
            let n = conn.read(&mut buf).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            if let Some(path) = head.split_whitespace().nth(1) {
                s.lock().unwrap().push(path.to_string());
            }
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .await;
        }
    });
    (port, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_hooks_run_around_the_container_and_exits_leave_a_message() {
    if !common::can_run("lifecycle_hooks_run_around_the_container_and_exits_leave_a_message") {
        return;
    }
    let c = Cluster::start().await;
    let client = c.kube().await;
    let node = AgentNode::new("hooks");
    let name = format!("agent-hooks-{}", std::process::id());
    let agent = node.agent(client.clone(), &name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().to_str().unwrap();
    let (port, seen) = recording_server().await;
    let order = || std::fs::read_to_string(work.path().join("order")).unwrap_or_default();

    // exec hooks: postStart after the start; preStop before SIGTERM, which the container traps.
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": "hooked"},
        "spec": {"nodeName": name, "terminationGracePeriodSeconds": 10,
            "volumes": [{"name": "work", "hostPath": {"path": dir}}],
            "containers": [
                {"name": "main", "image": "/", "command": ["/bin/sh", "-c",
                    "trap 'echo term >> /work/order; exit 0' TERM; while true; do sleep 0.1; done"],
                 "volumeMounts": [{"name": "work", "mountPath": "/work"}],
                 "lifecycle": {
                    "postStart": {"exec": {"command": ["/bin/sh", "-c", "echo post-start >> /work/order"]}},
                    "preStop": {"exec": {"command": ["/bin/sh", "-c",
                        "echo pre-stop >> /work/order; sleep 1; echo pre-stop-done >> /work/order"]}}}},
                {"name": "web", "image": "/", "command": ["sleep", "300"],
                 "lifecycle": {
                    "postStart": {"httpGet": {"host": "127.0.0.1", "port": port, "path": "/post-start"}},
                    "preStop": {"httpGet": {"host": "127.0.0.1", "port": port, "path": "/pre-stop"}}}}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &p).await.unwrap();
    wait_running(&pods, "hooked").await;
    assert_eq!(order(), "post-start\n");
    assert_eq!(*seen.lock().unwrap(), ["/post-start"]);
    pods.delete("hooked", &DeleteParams::default())
        .await
        .unwrap();
    converge("hooked gone", 30, async || {
        pods.get_opt("hooked").await.unwrap().is_none()
    })
    .await;
    assert_eq!(order(), "post-start\npre-stop\npre-stop-done\nterm\n");
    assert_eq!(*seen.lock().unwrap(), ["/post-start", "/pre-stop"]);

    // A preStop hook that outlasts the grace period is cut short: the pod goes after the grace
    // plus the kubelet's 2 s, not after the hook.
    let slow: Pod = serde_json::from_value(json!({
        "metadata": {"name": "slowstop"},
        "spec": {"nodeName": name, "terminationGracePeriodSeconds": 2,
            "containers": [{"name": "main", "image": "/", "command": ["sleep", "300"],
                "lifecycle": {"preStop": {"exec": {"command": ["sleep", "60"]}}}}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &slow).await.unwrap();
    wait_running(&pods, "slowstop").await;
    let began = std::time::Instant::now();
    pods.delete("slowstop", &DeleteParams::default())
        .await
        .unwrap();
    converge("slowstop gone", 30, async || {
        pods.get_opt("slowstop").await.unwrap().is_none()
    })
    .await;
    let took = began.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "deletion took {took:?}"
    );

    // A failing postStart hook kills the container; the restart policy runs it again.
    let bad: Pod = serde_json::from_value(json!({
        "metadata": {"name": "badhook"},
        "spec": {"nodeName": name, "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": "/", "command": ["sleep", "300"],
                "lifecycle": {"postStart": {"exec": {"command": ["/bin/sh", "-c", "exit 1"]}}}}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &bad).await.unwrap();
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), "default");
    converge("a FailedPostStartHook event", 30, async || {
        events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("FailedPostStartHook")
                    && e.involved_object.name.as_deref() == Some("badhook")
            })
    })
    .await;
    converge("the killed container restarted", 30, async || {
        let p = pods.get("badhook").await.unwrap();
        container_status(&p)["restartCount"].as_i64().unwrap_or(0) >= 1
    })
    .await;

    // Termination messages: the file the container wrote, or its log's tail after a failure.
    let msg: Pod = serde_json::from_value(json!({
        "metadata": {"name": "msg"},
        "spec": {"nodeName": name, "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
            "containers": [
                {"name": "file", "image": "/", "command": ["/bin/sh", "-c",
                    "printf 'bye' > /dev/termination-log; exit 3"]},
                {"name": "custom", "image": "/", "terminationMessagePath": "/tmp/why",
                    "command": ["/bin/sh", "-c", "printf 'custom path' > /tmp/why"]},
                {"name": "logs", "image": "/", "terminationMessagePolicy": "FallbackToLogsOnError",
                    "command": ["/bin/sh", "-c", "echo first; echo oops; exit 4"]},
                {"name": "quiet", "image": "/", "terminationMessagePolicy": "FallbackToLogsOnError",
                    "command": ["/bin/sh", "-c", "echo fine"]}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &msg).await.unwrap();
    let done = eventually("msg Failed", 30, || async {
        let p = pods.get("msg").await.ok()?;
        (p.status.as_ref()?.phase.as_deref() == Some("Failed")).then_some(p)
    })
    .await;
    let st = serde_json::to_value(&done.status).unwrap();
    let term = |name: &str| {
        st["containerStatuses"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()["state"]["terminated"]
            .clone()
    };
    assert_eq!(term("file")["message"], "bye");
    assert_eq!(term("file")["exitCode"], 3);
    assert_eq!(term("custom")["message"], "custom path");
    assert_eq!(term("logs")["message"], "first\noops\n");
    assert!(
        term("quiet").get("message").is_none(),
        "a success takes no message from the log"
    );

    delete_all(&pods).await;
    agent.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_reach_the_cgroups_the_environment_and_the_oom_killer() {
    if !common::can_run("resources_reach_the_cgroups_the_environment_and_the_oom_killer") {
        return;
    }
    use cairn_orchestrator::runtime::CgroupVersion;
    let c = Cluster::start().await;
    let client = c.kube().await;
    let node = AgentNode::new("res");
    let name = format!("agent-res-{}", std::process::id());
    let agent = node.agent(client.clone(), &name);
    let rt = node.runtime();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let field = |env: &str, resource: &str, divisor: Option<&str>| {
        let mut r = json!({"resource": resource});
        if let Some(d) = divisor {
            r["divisor"] = json!(d);
        }
        json!({"name": env, "valueFrom": {"resourceFieldRef": r}})
    };
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": "limited"},
        "spec": {"nodeName": name, "terminationGracePeriodSeconds": 1,
            "containers": [
                {"name": "main", "image": "/", "command": ["/bin/sh", "-c",
                    "echo \"$CPU|$CPU_M|$MEM|$MEM_REQ|$CPU_REQ\"; exec sleep 300"],
                 "resources": {"limits": {"cpu": "500m", "memory": "64Mi"},
                    "requests": {"cpu": "250m", "memory": "32Mi"}},
                 "env": [field("CPU", "limits.cpu", None), field("CPU_M", "limits.cpu", Some("1m")),
                    field("MEM", "limits.memory", None), field("MEM_REQ", "requests.memory", Some("1Mi")),
                    field("CPU_REQ", "requests.cpu", Some("1m"))]},
                {"name": "free", "image": "/", "command": ["/bin/sh", "-c",
                    "echo \"$CPU|$MEM\"; exec sleep 300"],
                 "env": [field("CPU", "limits.cpu", None), field("MEM", "limits.memory", None)]}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &p).await.unwrap();
    let p = wait_running(&pods, "limited").await;
    let uid = p.metadata.uid.clone().unwrap();
    let log = |container: &'static str| {
        let rt = &rt;
        let uid = uid.clone();
        async move {
            eventually("the environment printed", 30, || async {
                let l = rt.logs(&uid, container, None).ok()?;
                (!l.is_empty()).then(|| String::from_utf8_lossy(&l).trim().to_string())
            })
            .await
        }
    };
    // limits.cpu rounds up to whole cores unless the divisor says otherwise.
    assert_eq!(log("main").await, "1|500|67108864|32|250");
    // Without limits the values are the node's allocatable, as registered.
    let nodes: Api<Node> = Api::all(client.clone());
    let alloc = nodes
        .get(&name)
        .await
        .unwrap()
        .status
        .unwrap()
        .allocatable
        .unwrap();
    let mem_ki: u64 = alloc["memory"].0.trim_end_matches("Ki").parse().unwrap();
    assert_eq!(
        log("free").await,
        format!("{}|{}", alloc["cpu"].0, mem_ki * 1024)
    );

    // The limits and the request are the container's cgroup's.
    let rel = rt.container_cgroup(&uid, "main");
    let dirs = rt.cgroups().dirs(&rel);
    let read = |ctrl: &str, file: &str| {
        let dir = match rt.cgroups().version() {
            CgroupVersion::V2 => dirs[0].clone(),
            _ => dirs
                .iter()
                .find(|d| d.components().any(|c| c.as_os_str() == ctrl))
                .unwrap()
                .clone(),
        };
        std::fs::read_to_string(dir.join(file))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()))
            .trim()
            .to_string()
    };
    match rt.cgroups().version() {
        CgroupVersion::V2 => {
            assert_eq!(read("", "memory.max"), "67108864");
            assert_eq!(read("", "cpu.max"), "50000 100000");
            // 250m: 256 shares, which cgroup v2 weighs as 10.
            assert_eq!(read("", "cpu.weight"), "10");
        }
        _ => {
            assert_eq!(read("memory", "memory.limit_in_bytes"), "67108864");
            assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
            assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
            assert_eq!(read("cpu", "cpu.shares"), "256");
        }
    }

    // Past its memory limit a container is killed, and the status says OOMKilled.
    let oom: Pod = serde_json::from_value(json!({
        "metadata": {"name": "oom"},
        "spec": {"nodeName": name, "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": "/",
                "command": ["/bin/sh", "-c", "head -c 209715200 /dev/zero | tail > /dev/null"],
                "resources": {"limits": {"memory": "32Mi"}}}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &oom).await.unwrap();
    let done = eventually("oom Failed", 60, || async {
        let p = pods.get("oom").await.ok()?;
        (p.status.as_ref()?.phase.as_deref() == Some("Failed")).then_some(p)
    })
    .await;
    let t = &container_status(&done)["state"]["terminated"];
    assert_eq!(t["reason"], "OOMKilled", "{t}");
    assert_eq!(t["exitCode"], 137);

    delete_all(&pods).await;
    agent.abort();
}

/// kubectl 1.`minor` run off the async workers, which keep serving the API and the agent.
fn kubectl(c: &Cluster, minor: u32, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    tokio::task::block_in_place(|| c.kubectl_stdin(minor, args, stdin))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `kubectl exec -t` wants a terminal: `script` gives it one (of 33 rows and 101 columns, which
/// kubectl sends as the session's first resize) and copies what appears on it.
fn kubectl_on_a_terminal(c: &Cluster, minor: u32, args: &str) -> std::process::Output {
    let bin = kube_api::kubectl_bin(minor).unwrap();
    let home = c.dir.path().join(format!("home-1.{minor}"));
    std::fs::create_dir_all(&home).unwrap();
    let line = format!("stty rows 33 cols 101; exec {} {args}", bin.display());
    tokio::task::block_in_place(|| {
        std::process::Command::new("script")
            .args(["-q", "-e", "-c", &line, "/dev/null"])
            .env("HOME", &home)
            .env("KUBECONFIG", &c.kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("script runs")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_streams_output_input_exit_codes_and_a_terminal() {
    let test = "kubectl_exec_streams_output_input_exit_codes_and_a_terminal";
    if !common::can_run(test) || !kube_api::have_kubectl(test, 33) {
        return;
    }
    let c = Cluster::start().await;
    let client = c.kube().await;
    let node = AgentNode::new("exec");
    let name = format!("agent-exec-{}", std::process::id());
    let agent = node.agent_with_ca(client.clone(), &name, cluster_ca(&c));
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let container = |who: &str| {
        json!({"name": who, "image": "/", "command": ["/bin/sh", "-c", "exec sleep 300"],
            "env": [{"name": "WHO", "value": who}]})
    };
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": "shell"},
        "spec": {"nodeName": name, "terminationGracePeriodSeconds": 1,
            "containers": [container("main"), container("side")]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &p).await.unwrap();
    converge("both containers running", 30, async || {
        let p = pods.get("shell").await.unwrap();
        let st = serde_json::to_value(&p.status).unwrap();
        let cs = st["containerStatuses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        cs.len() == 2 && cs.iter().all(|s| s["state"]["running"].is_object())
    })
    .await;

    for minor in [33, 30] {
        if !kube_api::have_kubectl(test, minor) {
            continue;
        }
        // Output on both streams, and the command's exit code as kubectl's own.
        let script = "echo out; echo err >&2; exit 3";
        let out = kubectl(
            &c,
            minor,
            &["exec", "shell", "-c", "main", "--", "sh", "-c", script],
            None,
        );
        assert_eq!(
            out.status.code(),
            Some(3),
            "1.{minor}: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout), "out\n", "1.{minor}");
        assert!(
            text(&out.stderr).starts_with("err\n"),
            "1.{minor}: {}",
            text(&out.stderr)
        );

        // Standard input reaches the command, and its end closes the command's stdin.
        let out = kubectl(
            &c,
            minor,
            &["exec", "-i", "shell", "-c", "main", "--", "cat"],
            Some("hello\n"),
        );
        assert!(out.status.success(), "1.{minor}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "hello\n", "1.{minor}");

        // -c picks the container; without it kubectl takes the first.
        let who = ["sh", "-c", "echo $WHO"];
        let side = kubectl(
            &c,
            minor,
            &[&["exec", "shell", "-c", "side", "--"][..], &who].concat(),
            None,
        );
        assert_eq!(
            text(&side.stdout),
            "side\n",
            "1.{minor}: {}",
            text(&side.stderr)
        );
        let first = kubectl(
            &c,
            minor,
            &[&["exec", "shell", "--"][..], &who].concat(),
            None,
        );
        assert_eq!(
            text(&first.stdout),
            "main\n",
            "1.{minor}: {}",
            text(&first.stderr)
        );

        // Kubernetes' words for what cannot be run.
        let missing = kubectl(&c, minor, &["exec", "nope", "--", "true"], None);
        assert!(
            text(&missing.stderr).contains("pods \"nope\" not found"),
            "1.{minor}: {}",
            text(&missing.stderr)
        );
        let no_command = kubectl(&c, minor, &["exec", "shell"], None);
        assert!(
            text(&no_command.stderr)
                .contains("you must specify at least one command for the container"),
            "1.{minor}: {}",
            text(&no_command.stderr)
        );
        let not_found = kubectl(
            &c,
            minor,
            &["exec", "shell", "-c", "main", "--", "no-such-command"],
            None,
        );
        assert!(!not_found.status.success());
        assert!(
            text(&not_found.stderr)
                .contains("exec: \"no-such-command\": executable file not found in $PATH"),
            "1.{minor}: {}",
            text(&not_found.stderr)
        );
        let bad_container = kubectl(
            &c,
            minor,
            &["exec", "shell", "-c", "nope", "--", "true"],
            None,
        );
        assert!(
            text(&bad_container.stderr).contains("container nope is not valid for pod shell"),
            "1.{minor}: {}",
            text(&bad_container.stderr)
        );

        // A terminal: the command has it as its controlling terminal, from the container's own
        // devpts, sized by kubectl's resize; its exit code still comes through.
        let wait_for_size = "for i in 1 2 3 4 5 6 7 8 9 10; do s=$(stty size); [ \"$s\" != \"0 0\" ] && break; sleep 0.2; done; echo size=$s; tty; exit 5";
        let out = kubectl_on_a_terminal(
            &c,
            minor,
            &format!("exec -it shell -c main -- sh -c '{wait_for_size}'"),
        );
        let screen = text(&out.stdout);
        assert!(
            screen.contains("size=33 101"),
            "1.{minor}: {screen:?} {}",
            text(&out.stderr)
        );
        assert!(screen.contains("/dev/pts/0"), "1.{minor}: {screen:?}");
        assert_eq!(out.status.code(), Some(5), "1.{minor}: {screen:?}");
    }

    // The agent's own port, as a v4 client that is not kubectl sees it: the subprotocol
    // chosen, resizes applied in order with the input, the exit code in the closing Status.
    let port = eventually("the agent's port", 10, || async {
        let n = Api::<Node>::all(client.clone()).get(&name).await.ok()?;
        let port = n.status?.daemon_endpoints?.kubelet_endpoint?.port;
        (port != 0).then_some(port as u16)
    })
    .await;
    let (cert, key) =
        cairn_orchestrator::apiserver::tls::kubelet_client(&c.dir.path().join("certs"))
            .unwrap()
            .unwrap();
    let kubelet = cairn_orchestrator::apiserver::kubelet::KubeletClient::new(&cert, &key).unwrap();
    let script = "while [ \"$(stty size)\" = \"0 0\" ]; do sleep 0.05; done; echo first=$(stty size); read go; echo then=$(stty size); exit 7";
    let query: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([("command", "sh"), ("command", "-c"), ("command", script)])
        .extend_pairs([("input", "1"), ("output", "1"), ("tty", "1")])
        .finish();
    let mut headers = axum::http::HeaderMap::new();
    for (k, v) in [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-protocol", "v4.channel.k8s.io"),
    ] {
        headers.insert(k, v.parse().unwrap());
    }
    let resp = kubelet
        .upgrade(
            [127, 0, 0, 1].into(),
            port,
            axum::http::Method::GET,
            &format!("/exec/default/shell/main?{query}"),
            &headers,
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    assert_eq!(
        resp.headers()["sec-websocket-protocol"],
        "v4.channel.k8s.io"
    );
    let io = hyper_util::rt::TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        io,
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let send = |channel: u8, data: &[u8]| Message::Binary([&[channel][..], data].concat().into());
    ws.send(send(4, br#"{"Width":80,"Height":24}"#))
        .await
        .unwrap();
    let mut screen = String::new();
    let mut status = None;
    let mut resized = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, ws.next()).await {
        let Message::Binary(b) = msg else { continue };
        match b[0] {
            1 => screen.push_str(&text(&b[1..])),
            3 => status = Some(serde_json::from_slice::<serde_json::Value>(&b[1..]).unwrap()),
            other => panic!("frame on channel {other}"),
        }
        if !resized && screen.contains("first=24 80") {
            resized = true;
            ws.send(send(4, br#"{"Width":100,"Height":40}"#))
                .await
                .unwrap();
            ws.send(send(0, b"go\n")).await.unwrap();
        }
    }
    assert!(screen.contains("then=40 100"), "{screen:?}");
    let status = status.expect("a closing Status");
    assert_eq!(status["reason"], "NonZeroExitCode", "{status}");
    assert_eq!(status["details"]["causes"][0]["message"], "7");

    // kubectl 1.28 speaks SPDY only: it is told so rather than left hanging.
    if kube_api::have_kubectl(test, 28) {
        let out = kubectl(&c, 28, &["exec", "shell", "-c", "main", "--", "true"], None);
        assert!(!out.status.success());
        assert!(
            text(&out.stderr).contains("SPDY/3.1 streams are not served by this node"),
            "{}",
            text(&out.stderr)
        );
    }
    pods.delete("shell", &DeleteParams::default())
        .await
        .unwrap();
    converge("shell gone", 30, async || {
        pods.get_opt("shell").await.unwrap().is_none()
    })
    .await;
    agent.abort();
}
