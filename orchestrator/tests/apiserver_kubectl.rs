//! Real kubectl builds against the API server: the everyday workflow people run, checked by what
//! kubectl prints and by what the server then holds.

use crate::kube_api;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kube_api::{have_kubectl, Cluster};

const DEPLOY: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: nginx
        image: nginx:1.25
        ports:
        - containerPort: 80
        env:
        - name: A
          value: "1"
"#;

fn jsonpath(c: &Cluster, minor: u32, args: &[&str], path: &str) -> String {
    let mut a: Vec<&str> = args.to_vec();
    let jp = format!("jsonpath={path}");
    a.extend(["-o", &jp]);
    c.ok(minor, &a)
}

async fn workflow(minor: u32) {
    let c = Cluster::start().await;
    let ns = format!("team-{minor}");
    let nsflag = ns.as_str();
    assert!(c
        .ok(minor, &["create", "namespace", nsflag])
        .contains(&format!("namespace/{ns} created")));
    let f = c.write("deploy.yaml", DEPLOY);
    let f = f.to_str().unwrap();

    // create, then apply twice: the second apply changes nothing.
    assert!(c
        .ok(minor, &["create", "-f", f, "-n", nsflag, "--save-config"])
        .contains("deployment.apps/web created"));
    assert!(c
        .ok(minor, &["apply", "-f", f, "-n", nsflag])
        .contains("deployment.apps/web unchanged"));
    assert!(c
        .fails(minor, &["create", "-f", f, "-n", nsflag])
        .contains("deployments.apps \"web\" already exists"));

    // Editing list fields: env and ports merge by key, the new items are added.
    let edited = DEPLOY
        .replace(
            "          value: \"1\"",
            "          value: \"1\"\n        - name: B\n          value: \"2\"",
        )
        .replace(
            "        - containerPort: 80",
            "        - containerPort: 80\n        - containerPort: 443",
        );
    let f2 = c.write("deploy2.yaml", &edited);
    assert!(c
        .ok(minor, &["apply", "-f", f2.to_str().unwrap(), "-n", nsflag])
        .contains("deployment.apps/web configured"));
    assert_eq!(
        jsonpath(&c, minor, &["get", "deploy", "web", "-n", nsflag], "{.spec.template.spec.containers[0].env[*].name} {.spec.template.spec.containers[0].ports[*].containerPort} {.metadata.generation}"),
        "A B 80 443 2"
    );
    assert!(c
        .ok(minor, &["apply", "-f", f2.to_str().unwrap(), "-n", nsflag])
        .contains("unchanged"));

    // get in its forms.
    let wide = c.ok(minor, &["get", "deploy", "-n", nsflag, "-o", "wide"]);
    let header: Vec<&str> = wide.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "AGE",
            "CONTAINERS",
            "IMAGES",
            "SELECTOR"
        ]
    );
    assert!(wide.lines().nth(1).unwrap().starts_with("web "));
    assert!(c
        .ok(minor, &["get", "deploy", "web", "-n", nsflag, "-o", "yaml"])
        .contains("maxSurge: 25%"));
    let js: serde_json::Value =
        serde_json::from_str(&c.ok(minor, &["get", "deploy", "web", "-n", nsflag, "-o", "json"]))
            .unwrap();
    assert_eq!(
        js["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        "25%"
    );
    assert_eq!(
        c.ok(minor, &["get", "deploy", "-n", nsflag, "-o", "name"])
            .trim(),
        "deployment.apps/web"
    );

    // label, annotate, selectors, all namespaces.
    c.ok(
        minor,
        &["label", "deploy", "web", "-n", nsflag, "tier=frontend"],
    );
    c.ok(
        minor,
        &["annotate", "deploy", "web", "-n", nsflag, "owner=ops"],
    );
    assert_eq!(
        c.ok(
            minor,
            &[
                "get",
                "deploy",
                "-n",
                nsflag,
                "-l",
                "tier=frontend",
                "-o",
                "name"
            ]
        )
        .trim(),
        "deployment.apps/web"
    );
    assert_eq!(
        c.ok(
            minor,
            &[
                "get",
                "deploy",
                "-n",
                nsflag,
                "-l",
                "tier=backend",
                "-o",
                "name"
            ]
        )
        .trim(),
        ""
    );
    assert!(c
        .ok(
            minor,
            &[
                "get",
                "deploy",
                "-A",
                "--field-selector",
                "metadata.name=web"
            ]
        )
        .contains(&ns));
    assert_eq!(
        jsonpath(
            &c,
            minor,
            &["get", "deploy", "web", "-n", nsflag],
            "{.metadata.annotations.owner}"
        ),
        "ops"
    );

    // The three patch types and the scale subresource.
    c.ok(
        minor,
        &[
            "patch",
            "deploy",
            "web",
            "-n",
            nsflag,
            "--type=merge",
            "-p",
            r#"{"spec":{"replicas":3}}"#,
        ],
    );
    c.ok(
        minor,
        &[
            "patch",
            "deploy",
            "web",
            "-n",
            nsflag,
            "--type=json",
            "-p",
            r#"[{"op":"add","path":"/metadata/labels/patched","value":"json"}]"#,
        ],
    );
    c.ok(minor, &["patch", "deploy", "web", "-n", nsflag, "-p", r#"{"spec":{"template":{"spec":{"containers":[{"name":"nginx","image":"nginx:1.26"}]}}}}"#]);
    assert_eq!(
        jsonpath(&c, minor, &["get", "deploy", "web", "-n", nsflag], "{.spec.replicas} {.metadata.labels.patched} {.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].env[1].name}"),
        "3 json nginx:1.26 B"
    );
    assert!(c
        .ok(
            minor,
            &["scale", "deploy", "web", "-n", nsflag, "--replicas=5"]
        )
        .contains("scaled"));
    assert_eq!(
        jsonpath(
            &c,
            minor,
            &["get", "deploy", "web", "-n", nsflag],
            "{.spec.replicas}"
        ),
        "5"
    );

    // explain reads the served OpenAPI schemas.
    let ex = c.ok(minor, &["explain", "pod.spec.containers"]);
    assert!(
        ex.contains("KIND:") && ex.contains("Pod") && ex.contains("containers"),
        "{ex}"
    );
    assert!(c
        .ok(minor, &["explain", "deployments.spec.strategy"])
        .contains("rollingUpdate"));

    // Strict validation happens on the server and names the field.
    let bad = DEPLOY
        .replace(
            "image: nginx:1.25",
            "image: nginx:1.25\n        imagePullPolicyy: Always",
        )
        .replace("name: web", "name: web2");
    let fb = c.write("bad.yaml", &bad);
    let err = c.fails(minor, &["apply", "-f", fb.to_str().unwrap(), "-n", nsflag]);
    assert!(
        err.contains("unknown field \"spec.template.spec.containers[0].imagePullPolicyy\""),
        "{err}"
    );

    // ConfigMaps from literals (protobuf bodies on 1.32+), get -w, delete.
    assert!(c
        .ok(
            minor,
            &[
                "create",
                "configmap",
                "settings",
                "-n",
                nsflag,
                "--from-literal=color=blue"
            ]
        )
        .contains("configmap/settings created"));
    assert_eq!(
        jsonpath(
            &c,
            minor,
            &["get", "cm", "settings", "-n", nsflag],
            "{.data.color}"
        ),
        "blue"
    );
    watch_events(&c, minor, nsflag);
    assert!(c
        .ok(minor, &["delete", "deploy", "web", "-n", nsflag])
        .contains("deployment.apps \"web\" deleted"));
    assert!(c
        .fails(minor, &["get", "deploy", "web", "-n", nsflag])
        .contains("deployments.apps \"web\" not found"));
    c.shutdown().await;
}

/// `kubectl get -w` prints ADDED, MODIFIED and DELETED for changes made while it runs.
fn watch_events(c: &Cluster, minor: u32, ns: &str) {
    let bin = kube_api::kubectl_bin(minor).unwrap();
    let mut child = Command::new(bin)
        .args(["get", "configmaps", "-n", ns, "-w", "--output-watch-events"])
        .env("HOME", c.dir.path().join(format!("home-1.{minor}")))
        .env("KUBECONFIG", &c.kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // "EVENT NAME DATA AGE" rows, reduced to "EVENT NAME".
            let row: Vec<&str> = line.split_whitespace().take(2).collect();
            if tx.send(row.join(" ")).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let wait_for = |want: &str, seen: &mut Vec<String>| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if seen.iter().any(|l| l == want) {
                return;
            }
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
                seen.push(l);
            }
        }
        panic!("no {want:?} in kubectl get -w output: {seen:?}");
    };
    // The existing configmap arrives first as ADDED.
    wait_for("ADDED settings", &mut seen);
    c.ok(
        minor,
        &[
            "create",
            "configmap",
            "watched",
            "-n",
            ns,
            "--from-literal=a=1",
        ],
    );
    wait_for("ADDED watched", &mut seen);
    c.ok(minor, &["label", "configmap", "watched", "-n", ns, "x=y"]);
    wait_for("MODIFIED watched", &mut seen);
    c.ok(minor, &["delete", "configmap", "watched", "-n", ns]);
    wait_for("DELETED watched", &mut seen);
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_30_everyday_workflow() {
    if have_kubectl("kubectl_1_30_everyday_workflow", 30) {
        workflow(30).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_32_everyday_workflow() {
    if have_kubectl("kubectl_1_32_everyday_workflow", 32) {
        workflow(32).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_errors_in_kubernetes_words() {
    if !have_kubectl("kubectl_errors_in_kubernetes_words", 32) {
        return;
    }
    let c = Cluster::start().await;
    let err = c.fails(32, &["get", "pod", "nope"]);
    assert!(err.contains("pods \"nope\" not found"), "{err}");
    let err = c.fails(
        32,
        &[
            "create",
            "configmap",
            "x",
            "-n",
            "missing-ns",
            "--from-literal=a=b",
        ],
    );
    assert!(err.contains("namespaces \"missing-ns\" not found"), "{err}");
    let pod = c.write("pod.yaml", "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: c\n    image: \"\"\n");
    let err = c.fails(32, &["create", "-f", pod.to_str().unwrap()]);
    assert!(
        err.contains("Pod \"p\" is invalid: spec.containers[0].image: Required value"),
        "{err}"
    );
    let err = c.fails(32, &["delete", "namespace", "default"]);
    assert!(err.contains("forbidden"), "{err}");
    // A token the server does not know gets 401.
    let kc = std::fs::read_to_string(&c.kubeconfig)
        .unwrap()
        .replace(kube_api::TOKEN, "wrong");
    std::fs::write(&c.kubeconfig, kc).unwrap();
    let err = c.fails(32, &["get", "ns"]);
    assert!(
        err.contains("Unauthorized") || err.contains("provide credentials"),
        "{err}"
    );
    c.shutdown().await;
}
