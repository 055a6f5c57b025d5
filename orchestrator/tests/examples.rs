//! The examples in `examples/`, applied with real kubectl to `cairn-orchestrator up` (root, in a
//! network namespace of the test's own), each doing what its comment and the README say: the web
//! Deployment serves its ConfigMap's page behind a Service that another pod reaches by DNS name;
//! the log shipper streams the app's log file; the metrics exporter reads the app over the pod's
//! localhost; the Secret arrives as env and as a file; the quota refuses a pod over it. The image
//! (`busybox:1.36`) is a busybox built here and loaded with `image import`, so nothing is pulled.

use crate::common;
use crate::kube_api;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::up::Up;

fn examples_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// kubectl 1.33 against `up`'s kubeconfig: (success, stdout, stderr).
fn kubectl(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let bin = kube_api::kubectl_bin(33).expect("kubectl 1.33 (checked by the test)");
    let out = Command::new(bin)
        .args(args)
        .env("KUBECONFIG", dir.join("cairn.kubeconfig"))
        .env("HOME", dir)
        .output()
        .expect("kubectl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs kubectl until `check` accepts its output, for at most `secs`.
fn until(dir: &Path, what: &str, secs: u64, args: &[&str], check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (ok, out, err) = kubectl(dir, args);
        if ok && check(&out) {
            return out;
        }
        if Instant::now() >= deadline {
            let (_, pods, _) = kubectl(dir, &["get", "pods", "-A", "-o", "wide"]);
            let (_, statuses, _) = kubectl(
                dir,
                &["get", "pods", "-o", "jsonpath={range .items[*]}{.metadata.name}: {.status.containerStatuses}{\"\\n\"}{end}"],
            );
            let (_, events, _) = kubectl(dir, &["get", "events", "-A"]);
            panic!("timed out waiting for {what}: {out}{err}\n{pods}\n{statuses}\n{events}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn apply(dir: &Path, file: &str) -> (bool, String, String) {
    let path = examples_dir().join(file);
    kubectl(dir, &["apply", "-f", &path.display().to_string()])
}

#[test]
fn examples_converge_and_do_what_they_say() {
    let name = "examples_converge_and_do_what_they_say";
    if !common::image::have_tools(name) || !kube_api::have_kubectl(name, 33) {
        return;
    }
    common::in_own_netns(name, run_examples);
}

/// Everything here waits on other processes (up, kubectl), so blocking this runtime's threads
/// holds nothing up.
async fn run_examples() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let layout = dir.join("busybox-layout");
    common::image::build_image(&layout, "1.36", "examples");
    let agent_root = dir.join("data/agent");
    let imported = Command::new(common::HELPER)
        .args(["image", "--root-dir"])
        .arg(&agent_root)
        .args(["import", "--name", "docker.io/library/busybox:1.36"])
        .arg(&layout)
        .output()
        .unwrap();
    assert!(
        imported.status.success(),
        "image import: {}",
        String::from_utf8_lossy(&imported.stderr)
    );
    let mut up = Up::new(dir, "examples");
    up.start();
    up.client().await;
    until(dir, "the node to be Ready", 60, &["get", "nodes"], |o| {
        o.contains(" Ready ")
    });

    // The web Deployment, its Service, and a client pod reaching it by name.
    let (ok, out, err) = apply(dir, "web.yaml");
    assert!(ok, "apply web.yaml: {out}{err}");
    until(
        dir,
        "3 web replicas available",
        90,
        &[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.status.availableReplicas}",
        ],
        |o| o == "3",
    );
    let endpoints = until(
        dir,
        "the web Service's 3 endpoints",
        30,
        &[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "jsonpath={.items[*].endpoints[*].addresses[0]}",
        ],
        |o| o.split_whitespace().count() == 3,
    );
    assert!(
        endpoints
            .split_whitespace()
            .all(|a| a.starts_with("10.244.")),
        "{endpoints}"
    );
    until(
        dir,
        "the client's page through the Service's DNS name",
        90,
        &["logs", "web-client"],
        |o| o.contains("<h1>Hello from Cairn</h1>"),
    );

    // A web replica's process killed from the host comes back at once; killed again, it waits
    // out the first back-off, which `kubectl get pods` shows as CrashLoopBackOff.
    let (ok, victim, err) = kubectl(
        dir,
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ],
    );
    assert!(ok && !victim.is_empty(), "{err}");
    for restarts in ["1", "2"] {
        let (ok, uid, err) = kubectl(
            dir,
            &["get", "pod", &victim, "-o", "jsonpath={.metadata.uid}"],
        );
        assert!(ok, "{err}");
        let pid = up.runtime().status(&uid).unwrap().containers[0]
            .pid
            .expect("the web container running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        if restarts == "2" {
            until(
                dir,
                "CrashLoopBackOff in kubectl get pods",
                30,
                &["get", "pod", &victim],
                |o| {
                    o.lines()
                        .nth(1)
                        .is_some_and(|l| l.contains("CrashLoopBackOff"))
                },
            );
        }
        until(
            dir,
            "the killed container running again",
            60,
            &["get", "pod", &victim],
            |o| {
                let cols: Vec<&str> = o.lines().nth(1).unwrap_or("").split_whitespace().collect();
                cols.get(2) == Some(&"Running") && cols.get(3) == Some(&restarts)
            },
        );
    }

    // The log shipper streams the file the app writes.
    let (ok, out, err) = apply(dir, "sidecar-logs.yaml");
    assert!(ok, "apply sidecar-logs.yaml: {out}{err}");
    until(
        dir,
        "the shipper's copy of the app's log",
        60,
        &["logs", "app-with-shipper", "-c", "shipper"],
        |o| o.contains("request 2 served"),
    );

    // `kubectl logs -f` streams: with the latest line given first, later lines arrive on the
    // same connection as the app writes them.
    let mut follow = Command::new(kube_api::kubectl_bin(33).unwrap())
        .args([
            "logs",
            "-f",
            "--tail=1",
            "app-with-shipper",
            "-c",
            "shipper",
        ])
        .env("KUBECONFIG", dir.join("cairn.kubeconfig"))
        .env("HOME", dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let request =
        |l: &str| -> Option<u64> { l.split("request ").nth(1)?.split(' ').next()?.parse().ok() };
    let wait = Duration::from_secs(30);
    let first = rx
        .recv_timeout(wait)
        .expect("kubectl logs -f printed the latest line");
    let first_n = request(&first).unwrap_or_else(|| panic!("{first}"));
    let mut got = Vec::new();
    while got.len() < 2 {
        let line = rx
            .recv_timeout(wait)
            .expect("kubectl logs -f went on with new lines");
        got.push(request(&line).unwrap_or_else(|| panic!("{line}")));
    }
    assert_eq!(got, vec![first_n + 1, first_n + 2], "after {first}");
    let _ = follow.kill();
    let _ = follow.wait();

    // The exporter turns the app's localhost answer into a metric on localhost:9100.
    let (ok, out, err) = apply(dir, "metrics-sidecar.yaml");
    assert!(ok, "apply metrics-sidecar.yaml: {out}{err}");
    until(
        dir,
        "app_up 1 on the pod's localhost:9100",
        60,
        &[
            "exec",
            "app-with-exporter",
            "-c",
            "app",
            "--",
            "wget",
            "-qO-",
            "http://127.0.0.1:9100/metrics",
        ],
        |o| o.contains("app_up 1"),
    );

    // The Secret as an environment variable and as a file.
    let (ok, out, err) = apply(dir, "secret.yaml");
    assert!(ok, "apply secret.yaml: {out}{err}");
    let logs = until(
        dir,
        "the secret's values",
        60,
        &["logs", "uses-secret"],
        |o| o.contains("password file:"),
    );
    assert!(logs.contains("user from env: app"), "{logs}");
    assert!(logs.contains("password file: s3cr3t-passw0rd"), "{logs}");

    // The quota: defaults from the LimitRange, then a pod over the quota refused.
    let (ok, out, err) = apply(dir, "quota.yaml");
    assert!(ok, "apply quota.yaml: {out}{err}");
    let (ok, requests, err) = kubectl(
        dir,
        &[
            "get",
            "pod",
            "small-1",
            "-n",
            "limited",
            "-o",
            "jsonpath={.spec.containers[0].resources.requests.cpu}",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(requests, "100m");
    let (ok, out, err) = apply(dir, "quota-over.yaml");
    assert!(!ok, "a pod over the quota was admitted: {out}");
    assert!(
        err.contains("Forbidden") && err.contains("exceeded quota: small"),
        "{err}"
    );
    up.interrupt();
}
