//! The `runtime` CLI end to end: run, ps, logs, exec, stop, rm.

use crate::common;

use common::{can_run, HELPER};
use std::process::Command;
use std::time::{Duration, Instant};

struct Cleanup {
    state: std::path::PathBuf,
    parent: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = cli(&self.state, &self.parent, &["rm", "cli-pod"]);
        if let Ok(rt) = cairn_orchestrator::runtime::Runtime::new(
            cairn_orchestrator::runtime::RuntimeConfig::new(&self.state, HELPER),
        ) {
            let _ = rt.cgroups().remove(std::path::Path::new(&self.parent));
        }
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

fn cli(state: &std::path::Path, parent: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(HELPER)
        .arg("runtime")
        .arg("--no-network")
        .arg("--state-dir")
        .arg(state)
        .arg("--cgroup-parent")
        .arg(parent)
        .args(args)
        .output()
        .expect("run cli");
    let mut s = String::from_utf8_lossy(&out.stdout).to_string();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), s)
}

#[test]
fn runtime_cli_lifecycle() {
    if !can_run("runtime_cli_lifecycle") {
        return;
    }
    let state = std::env::temp_dir().join(format!("cairn-cli-{}", std::process::id()));
    let parent = format!("cairn-cli-{}", std::process::id());
    let _cleanup = Cleanup {
        state: state.clone(),
        parent: parent.clone(),
    };
    std::fs::create_dir_all(&state).unwrap();
    let pod = state.join("pod.yaml");
    std::fs::write(
        &pod,
        r#"apiVersion: v1
kind: Pod
metadata:
  name: cli-pod
spec:
  terminationGracePeriodSeconds: 1
  volumes:
    - name: cfg
      configMap: {name: settings}
  containers:
    - name: app
      command: ["/bin/sh", "-c", "echo $(cat /etc/settings/mode); echo second; sleep 60"]
      volumeMounts:
        - {name: cfg, mountPath: /etc/settings}
"#,
    )
    .unwrap();
    let cm = state.join("cm.yaml");
    std::fs::write(
        &cm,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {mode: fast}\n",
    )
    .unwrap();

    let (ok, out) = cli(
        &state,
        &parent,
        &[
            "run",
            "-f",
            pod.to_str().unwrap(),
            "--config-map",
            cm.to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("pod/cli-pod started"), "{out}");

    let (ok, out) = cli(&state, &parent, &["ps"]);
    assert!(
        ok && out.contains("cli-pod") && out.contains("Running"),
        "{out}"
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut logs = String::new();
    while Instant::now() < deadline && !logs.contains("second") {
        logs = cli(&state, &parent, &["logs", "cli-pod"]).1;
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(logs, "fast\nsecond\n");
    assert_eq!(
        cli(&state, &parent, &["logs", "cli-pod", "--tail", "1"]).1,
        "second\n"
    );

    let (ok, out) = cli(
        &state,
        &parent,
        &["exec", "cli-pod", "--", "/bin/sh", "-c", "hostname; exit 3"],
    );
    assert!(!ok);
    assert_eq!(out, "cli-pod\n");

    let (ok, out) = cli(&state, &parent, &["stop", "cli-pod"]);
    assert!(ok && out.contains("Exited(137)"), "{out}");
    let (ok, out) = cli(&state, &parent, &["rm", "cli-pod"]);
    assert!(ok, "{out}");
    let (ok, out) = cli(&state, &parent, &["ps"]);
    assert!(ok && !out.contains("cli-pod"), "{out}");

    let (ok, out) = cli(&state, &parent, &["logs", "cli-pod"]);
    assert!(!ok && out.contains("not found"), "{out}");
}

#[test]
fn runtime_cli_rejects_unknown_fields_with_path() {
    let state = std::env::temp_dir().join(format!("cairn-cli-bad-{}", std::process::id()));
    std::fs::create_dir_all(&state).unwrap();
    let pod = state.join("pod.yaml");
    std::fs::write(
        &pod,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec:\n  containers:\n    - name: a\n      command: [x]\n      resources: {limits: {cpu: 1}, limitz: {}}\n",
    )
    .unwrap();
    let out = Command::new(HELPER)
        .args(["runtime", "--no-network", "--state-dir"])
        .arg(&state)
        .args(["run", "-f"])
        .arg(&pod)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let _ = std::fs::remove_dir_all(&state);
    assert!(!out.status.success());
    assert!(
        err.contains("spec.containers[0].resources") && err.contains("limitz"),
        "{err}"
    );
}
