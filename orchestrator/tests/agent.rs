//! The node agent against a real API server and store, running real processes through the bundled
//! runtime (root): it registers its Node and turns Ready, runs a pod bound to it and reports it
//! Running and Ready, restarts a crashing container with the crash-loop back-off shown in the
//! status, keeps pods running across its own restart (same process, same restart count), and on
//! deletion stops the processes before the pod object goes.

mod common;
mod kube_api;

use std::path::PathBuf;
use std::time::Duration;

use cairn_orchestrator::agent::{self, AgentConfig};
use cairn_orchestrator::runtime::{Runtime, RuntimeConfig};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use kube_api::{converge, eventually, Cluster};
use serde_json::json;

/// The agent's runtime state and cgroups, removed (with any pod left) when the test ends.
struct AgentNode {
    cfg: RuntimeConfig,
}

impl AgentNode {
    fn new(tag: &str) -> AgentNode {
        let id = format!("{}-{tag}", std::process::id());
        let state_dir = std::env::temp_dir().join(format!("cairn-agent-{id}"));
        let _ = std::fs::remove_dir_all(&state_dir);
        let mut cfg = RuntimeConfig::new(&state_dir, common::HELPER);
        cfg.cgroup_parent = format!("cairn-agent-{id}");
        AgentNode { cfg }
    }

    fn agent(&self, client: kube::Client, name: &str) -> tokio::task::JoinHandle<()> {
        self.agent_with_ca(client, name, Vec::new())
    }

    /// An agent that serves logs to callers with a certificate from the cluster's CA.
    fn agent_with_ca(
        &self,
        client: kube::Client,
        name: &str,
        client_ca: Vec<Vec<u8>>,
    ) -> tokio::task::JoinHandle<()> {
        let mut cfg = AgentConfig::new(name, self.cfg.clone());
        cfg.heartbeat = Duration::from_secs(1);
        cfg.sync_period = Duration::from_millis(200);
        cfg.port = 0;
        cfg.client_ca = client_ca;
        tokio::spawn(async move {
            if let Err(e) = agent::run(client, cfg, std::future::pending()).await {
                panic!("agent: {e}");
            }
        })
    }

    fn runtime(&self) -> Runtime {
        Runtime::new(self.cfg.clone()).expect("runtime")
    }
}

impl Drop for AgentNode {
    fn drop(&mut self) {
        let cfg = self.cfg.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(runtime) = Runtime::new(cfg.clone()) {
                    for p in runtime.list().unwrap_or_default() {
                        let _ = runtime.remove_pod(&p.name).await;
                    }
                    let _ = runtime
                        .cgroups()
                        .remove(std::path::Path::new(&cfg.cgroup_parent));
                }
            });
            let _ = std::fs::remove_dir_all(PathBuf::from(&cfg.state_dir));
        })
        .join();
    }
}

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
    pods.create(&PostParams::default(), &pod("crash", &name, "exit 3"))
        .await
        .unwrap();
    let web = eventually("web Running and Ready", 30, || async {
        let p = pods.get("web").await.unwrap();
        let cs = container_status(&p);
        let phase = p.status.as_ref()?.phase.clone()?;
        (phase == "Running" && cs["ready"] == true).then_some(p)
    })
    .await;
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
