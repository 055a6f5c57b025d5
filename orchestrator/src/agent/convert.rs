//! Translation between the API's pods and the bundled runtime: a Kubernetes Pod becomes the
//! runtime's pod spec (the fields the runtime acts on; a field it cannot honour is refused with a
//! reason rather than silently dropped), and what the runtime reports becomes the pod's status in
//! the kubelet's words. Pure functions: this file never imports `registry`, `apiserver` or the
//! kube client.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Map, Value};

use crate::runtime::{self, ContainerState, ExitReason};

/// Why a pod cannot be run by this node; shown in its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

fn refuse(reason: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        reason,
        message: message.into(),
    }
}

/// The runtime's name for a pod: its uid, unique across namespaces and reincarnations, and a
/// valid DNS label as the runtime requires.
pub fn runtime_name(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

fn pick(from: &Value, fields: &[&str]) -> Value {
    let mut out = Map::new();
    for f in fields {
        if let Some(v) = from.get(*f).filter(|v| !v.is_null()) {
            out.insert((*f).to_string(), v.clone());
        }
    }
    Value::Object(out)
}

/// Names of the ConfigMaps the pod reads (env and volumes), which the caller resolves.
pub fn config_maps_used(pod: &Pod) -> Vec<String> {
    let v = serde_json::to_value(pod).unwrap_or_default();
    let mut names: Vec<String> = Vec::new();
    for c in v["spec"]["containers"].as_array().into_iter().flatten() {
        for e in c["env"].as_array().into_iter().flatten() {
            if let Some(n) = e["valueFrom"]["configMapKeyRef"]["name"].as_str() {
                names.push(n.to_string());
            }
        }
    }
    for vol in v["spec"]["volumes"].as_array().into_iter().flatten() {
        if let Some(n) = vol["configMap"]["name"].as_str() {
            names.push(n.to_string());
        }
    }
    names.sort();
    names.dedup();
    names
}

/// The runtime's spec for `pod`, or why this node cannot run it.
pub fn to_runtime(pod: &Pod) -> Result<runtime::Pod, Refusal> {
    to_runtime_with(pod, &HashMap::new())
}

/// As [`to_runtime`], with the pod's images (by the name the pod gives) already on the node.
/// An absolute path as image is a directory of this host (`/`: its root).
pub fn to_runtime_with(
    pod: &Pod,
    images: &HashMap<String, super::images::Image>,
) -> Result<runtime::Pod, Refusal> {
    let v = serde_json::to_value(pod).map_err(|e| refuse("InvalidPod", e.to_string()))?;
    let spec = &v["spec"];
    let pod_run_as_user = spec["securityContext"]["runAsUser"].is_number();
    let mut containers = Vec::new();
    let mut init_containers = Vec::new();
    let init = spec["initContainers"].as_array().into_iter().flatten();
    let app = spec["containers"].as_array().into_iter().flatten();
    for (is_init, c) in init.map(|c| (true, c)).chain(app.map(|c| (false, c))) {
        let name = c["name"].as_str().unwrap_or("");
        if is_init && c["restartPolicy"] == "Always" {
            return Err(refuse(
                "CreateContainerConfigError",
                format!("init container {name}: sidecar containers (restartPolicy: Always) are not supported by this node"),
            ));
        }
        let image = c["image"].as_str().unwrap_or("");
        let pulled = images.get(image);
        if !image.starts_with('/') && pulled.is_none() {
            return Err(refuse(
                "ErrImagePull",
                format!("image {image:?} is not present on the node"),
            ));
        }
        let mut out = pick(
            c,
            &[
                "name",
                "image",
                "command",
                "args",
                "workingDir",
                "volumeMounts",
            ],
        );
        let mut env = Vec::new();
        for e in c["env"].as_array().into_iter().flatten() {
            let from = &e["valueFrom"];
            if from.is_object() && from.get("configMapKeyRef").is_none() {
                return Err(refuse(
                    "CreateContainerConfigError",
                    format!(
                        "container {name}: env {}: only value and configMapKeyRef are supported",
                        e["name"]
                    ),
                ));
            }
            env.push(pick(e, &["name", "value", "valueFrom"]));
        }
        out["env"] = json!(env);
        let res = pick(&c["resources"], &["requests", "limits"]);
        out["resources"] = res;
        if let Some(sc) = c.get("securityContext").filter(|s| s.is_object()) {
            let mut s = pick(sc, &["runAsUser", "runAsGroup", "allowPrivilegeEscalation"]);
            if let Some(caps) = sc.get("capabilities").filter(|c| c.is_object()) {
                s["capabilities"] = pick(caps, &["add", "drop"]);
            }
            out["securityContext"] = s;
        }
        if let Some(img) = pulled {
            img.apply(&mut out, pod_run_as_user)
                .map_err(|e| refuse("CreateContainerError", e))?;
        }
        if let Some(p) = c["terminationMessagePath"]
            .as_str()
            .filter(|p| !p.is_empty())
        {
            out["terminationMessagePath"] = json!(p);
        }
        if c["terminationMessagePolicy"] == "FallbackToLogsOnError" {
            out["terminationMessageFallbackToLogs"] = json!(true);
        }
        if is_init {
            init_containers.push(out);
        } else {
            containers.push(out);
        }
    }
    let mut volumes = Vec::new();
    for vol in spec["volumes"].as_array().into_iter().flatten() {
        let name = vol["name"].as_str().unwrap_or("");
        let mut out = json!({"name": name});
        let api_backed = ["secret", "configMap", "downwardAPI", "projected"];
        if let Some(e) = vol.get("emptyDir").filter(|v| v.is_object()) {
            out["emptyDir"] = pick(e, &["medium", "sizeLimit"]);
        } else if let Some(kind) = api_backed.iter().find(|k| vol[**k].is_object()) {
            // Resolved by the agent (`volumes`) into files it keeps up to date; secrets, and
            // projections that may carry them, stay off the disk.
            out["files"] = if matches!(*kind, "secret" | "projected") {
                json!({"medium": "Memory"})
            } else {
                json!({})
            };
        } else if let Some(h) = vol.get("hostPath").filter(|v| v.is_object()) {
            out["hostPath"] = pick(h, &["path", "type"]);
        } else {
            return Err(refuse(
                "CreateContainerConfigError",
                format!(
                    "volume {name}: only emptyDir, hostPath, configMap, secret, downwardAPI and projected volumes are supported"
                ),
            ));
        }
        volumes.push(out);
    }
    let mut rspec = json!({"containers": containers, "volumes": volumes});
    if !init_containers.is_empty() {
        rspec["initContainers"] = json!(init_containers);
    }
    if let Some(p) = spec.get("restartPolicy").filter(|v| v.is_string()) {
        rspec["restartPolicy"] = p.clone();
    }
    if let Some(g) = spec
        .get("terminationGracePeriodSeconds")
        .filter(|v| v.is_u64())
    {
        rspec["terminationGracePeriodSeconds"] = g.clone();
    }
    if spec["hostNetwork"] == true {
        rspec["hostNetwork"] = json!(true);
    }
    if let Some(sc) = spec.get("securityContext").filter(|s| s.is_object()) {
        let s = pick(sc, &["runAsUser", "runAsGroup"]);
        if s.as_object().is_some_and(|m| !m.is_empty()) {
            rspec["securityContext"] = s;
        }
    }
    let meta = &v["metadata"];
    let rpod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": runtime_name(pod), "namespace": meta["namespace"],
            "labels": meta.get("labels").cloned().unwrap_or(json!({})),
            "annotations": {"cairn.io/pod": format!("{}/{}", meta["namespace"].as_str().unwrap_or(""), meta["name"].as_str().unwrap_or(""))}},
        "spec": rspec,
    });
    let parsed: runtime::Pod = serde_json::from_value(rpod)
        .map_err(|e| refuse("CreateContainerConfigError", e.to_string()))?;
    parsed
        .validate()
        .map_err(|e| refuse("CreateContainerConfigError", e.to_string()))?;
    Ok(parsed)
}

/// What the agent knows of a container beyond the runtime's record.
#[derive(Debug, Clone, Default)]
pub struct Restarts {
    pub count: i32,
    /// Waiting out a crash-loop back-off: the message to show.
    pub backing_off: Option<String>,
    /// The run before the current one, as the kubelet's `lastState`.
    pub last: Option<Value>,
    /// What the probes say of a running container: started, ready (no probes: both).
    pub probed: Option<(bool, bool)>,
}

fn time_ms(ms: Option<u64>) -> Value {
    match ms {
        Some(ms) => json!(crate::api::meta::format_time((ms / 1000) as i64)),
        None => Value::Null,
    }
}

/// A container's exit as `state.terminated`.
pub fn terminated(c: &runtime::ContainerStatus) -> Option<Value> {
    let (code, reason) = match &c.state {
        ContainerState::Exited { exit_code, reason } => (
            *exit_code,
            match reason {
                ExitReason::Completed => "Completed",
                ExitReason::Error => "Error",
                ExitReason::OOMKilled => "OOMKilled",
            },
        ),
        ContainerState::Unknown => (137, "ContainerStatusUnknown"),
        _ => return None,
    };
    let mut t = json!({"exitCode": code, "reason": reason,
        "startedAt": time_ms(c.started_at_ms), "finishedAt": time_ms(c.finished_at_ms)});
    if let Some(m) = &c.message {
        t["message"] = json!(m);
    }
    Some(json!({ "terminated": t }))
}

/// The pod's status from the runtime's view of it.
pub fn status(
    pod: &Pod,
    rt: &runtime::PodStatus,
    restarts: &HashMap<String, Restarts>,
    host_ip: &str,
) -> Value {
    let restart_policy = pod
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.clone())
        .unwrap_or_else(|| "Always".into());
    let by_name: BTreeMap<&str, &runtime::ContainerStatus> = rt
        .containers
        .iter()
        .chain(rt.init_containers.iter())
        .map(|c| (c.name.as_str(), c))
        .collect();
    let (init_statuses, initialized, init_failed) = init_status(pod, rt, &by_name, restarts);
    // The app containers wait for the init containers in the kubelet's words.
    let not_started = if initialized {
        "ContainerCreating"
    } else {
        "PodInitializing"
    };
    let (mut running, mut succeeded, mut failed, mut ready_count) = (0, 0, 0, 0);
    let mut statuses = Vec::new();
    for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        let r = restarts.get(&c.name).cloned().unwrap_or_default();
        let st = by_name.get(c.name.as_str());
        let (state, started, ready) = match st.map(|s| &s.state) {
            Some(ContainerState::Running) => {
                running += 1;
                let (started, ready) = r.probed.unwrap_or((true, true));
                (
                    json!({"running": {"startedAt": time_ms(st.and_then(|s| s.started_at_ms))}}),
                    started,
                    ready,
                )
            }
            _ if r.backing_off.is_some() => (
                json!({"waiting": {"reason": "CrashLoopBackOff", "message": r.backing_off}}),
                false,
                false,
            ),
            Some(ContainerState::Exited { exit_code, .. }) => {
                if *exit_code == 0 {
                    succeeded += 1;
                } else {
                    failed += 1;
                }
                (
                    st.and_then(|s| terminated(s)).unwrap_or_default(),
                    false,
                    false,
                )
            }
            Some(ContainerState::Unknown) => {
                failed += 1;
                (
                    st.and_then(|s| terminated(s)).unwrap_or_default(),
                    false,
                    false,
                )
            }
            Some(ContainerState::Created) | None => {
                (json!({"waiting": {"reason": not_started}}), false, false)
            }
        };
        if ready {
            ready_count += 1;
        }
        let mut s = json!({"name": c.name, "image": c.image, "imageID": "", "containerID": format!("cairn://{}/{}", rt.name, c.name),
            "ready": ready, "started": started, "restartCount": r.count, "state": state});
        if let Some(last) = r.last {
            s["lastState"] = last;
        }
        statuses.push(s);
    }
    let total = statuses.len();
    // Exited containers the agent will start again keep the pod Running, as the kubelet reports it.
    let will_restart = match restart_policy.as_str() {
        "Always" => succeeded + failed > 0,
        "OnFailure" => failed > 0,
        _ => false,
    };
    let crash_looping = statuses
        .iter()
        .any(|s| s["state"]["waiting"]["reason"] == "CrashLoopBackOff");
    let phase = if !initialized {
        // A failed init container that will not run again fails the pod.
        if init_failed && restart_policy == "Never" {
            "Failed"
        } else {
            "Pending"
        }
    } else if total == 0 {
        "Pending"
    } else if running > 0 || crash_looping || will_restart {
        "Running"
    } else if succeeded == total {
        "Succeeded"
    } else if succeeded + failed == total {
        "Failed"
    } else if succeeded + failed > 0 {
        "Running"
    } else {
        "Pending"
    };
    let all_ready = total > 0 && ready_count == total;
    let now = crate::api::meta::now();
    let cond = |ty: &str, ok: bool| json!({"type": ty, "status": if ok { "True" } else { "False" }, "lastProbeTime": null, "lastTransitionTime": now});
    let mut st = json!({
        "phase": phase,
        "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
        "startTime": time_ms(Some(rt.created_at_ms)),
        "conditions": [cond("PodReadyToStartContainers", rt.sandbox_running), cond("Initialized", initialized),
            cond("Ready", all_ready), cond("ContainersReady", all_ready), cond("PodScheduled", true)],
        "containerStatuses": statuses,
    });
    if !init_statuses.is_empty() {
        st["initContainerStatuses"] = json!(init_statuses);
    }
    let host_network = pod.spec.as_ref().and_then(|s| s.host_network) == Some(true);
    let pod_ip = match rt.ip {
        Some(ip) => Some(ip.to_string()),
        None if host_network => Some(host_ip.to_string()),
        None => None,
    };
    if let Some(ip) = pod_ip {
        st["podIP"] = json!(ip);
        st["podIPs"] = json!([{"ip": ip}]);
    }
    st
}

/// The init containers' statuses; whether all have completed; whether one failed (its exit is
/// the last word unless the restart policy runs it again).
fn init_status(
    pod: &Pod,
    rt: &runtime::PodStatus,
    by_name: &BTreeMap<&str, &runtime::ContainerStatus>,
    restarts: &HashMap<String, Restarts>,
) -> (Vec<Value>, bool, bool) {
    let mut out = Vec::new();
    let (mut initialized, mut failed) = (true, false);
    for c in pod
        .spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
    {
        let r = restarts.get(&c.name).cloned().unwrap_or_default();
        let st = by_name.get(c.name.as_str()).copied();
        let state = match st.map(|s| &s.state) {
            Some(ContainerState::Running) => {
                initialized = false;
                json!({"running": {"startedAt": time_ms(st.and_then(|s| s.started_at_ms))}})
            }
            _ if r.backing_off.is_some() => {
                initialized = false;
                json!({"waiting": {"reason": "CrashLoopBackOff", "message": r.backing_off}})
            }
            Some(ContainerState::Exited { exit_code: 0, .. }) => {
                st.and_then(terminated).unwrap_or_default()["terminated"].clone()
            }
            Some(ContainerState::Exited { .. } | ContainerState::Unknown) => {
                initialized = false;
                failed = true;
                st.and_then(terminated).unwrap_or_default()["terminated"].clone()
            }
            Some(ContainerState::Created) | None => {
                initialized = false;
                json!({"waiting": {"reason": "PodInitializing"}})
            }
        };
        let state = if state.get("exitCode").is_some() {
            json!({ "terminated": state })
        } else {
            state
        };
        let done = state["terminated"]["exitCode"] == 0;
        let mut s = json!({"name": c.name, "image": c.image, "imageID": "",
            "containerID": format!("cairn://{}/{}", rt.name, c.name),
            "ready": done, "started": state.get("running").is_some(), "restartCount": r.count, "state": state});
        if let Some(last) = r.last {
            s["lastState"] = last;
        }
        out.push(s);
    }
    (out, initialized, failed)
}

/// The status of a pod this node refuses to run.
pub fn refused(pod: &Pod, why: &Refusal, host_ip: &str) -> Value {
    let statuses: Vec<Value> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| json!({"name": c.name, "image": c.image, "imageID": "", "ready": false, "started": false,
            "restartCount": 0, "state": {"waiting": {"reason": why.reason, "message": why.message}}}))
        .collect();
    json!({"phase": "Pending", "hostIP": host_ip, "hostIPs": [{"ip": host_ip}], "containerStatuses": statuses})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(extra: Value) -> Pod {
        let mut v = json!({"metadata": {"name": "web", "namespace": "default", "uid": "0e7f2c7a-1b1b-4c1e-9d51-2f6f7a1d8e01"},
            "spec": {"containers": [{"name": "c", "image": "/", "command": ["sleep", "60"],
                "env": [{"name": "A", "value": "1"}]}]}});
        v = crate::api::patch::merge_patch(&v, &extra).unwrap();
        serde_json::from_value(v).unwrap()
    }

    fn one_container(state: ContainerState, finished_at_ms: Option<u64>) -> runtime::PodStatus {
        runtime::PodStatus {
            name: "x".into(),
            ip: None,
            sandbox_running: true,
            holder_pid: 1,
            created_at_ms: 1_700_000_000_000,
            containers: vec![runtime::ContainerStatus {
                name: "c".into(),
                pid: matches!(state, ContainerState::Running).then_some(2),
                state,
                started_at_ms: Some(1_700_000_001_000),
                finished_at_ms,
                message: None,
            }],
            init_containers: vec![],
        }
    }

    #[test]
    fn a_pod_becomes_the_runtime_spec_named_by_its_uid() {
        let r = to_runtime(&pod(json!({}))).unwrap();
        assert_eq!(r.name(), "0e7f2c7a-1b1b-4c1e-9d51-2f6f7a1d8e01");
        assert_eq!(r.spec.containers[0].command, ["sleep", "60"]);
        assert_eq!(r.metadata.annotations["cairn.io/pod"], "default/web");
    }

    #[test]
    fn what_the_node_cannot_honour_is_refused_with_the_kubelet_reason() {
        let e = to_runtime(&pod(
            json!({"spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
        ))
        .unwrap_err();
        assert_eq!(e.reason, "ErrImagePull");
        let e = to_runtime(&pod(
            json!({"spec": {"volumes": [{"name": "s", "nfs": {"server": "x", "path": "/"}}]}}),
        ))
        .unwrap_err();
        assert_eq!(e.reason, "CreateContainerConfigError");
    }

    #[test]
    fn a_running_container_makes_a_running_ready_pod() {
        let p = pod(json!({}));
        let rt = one_container(ContainerState::Running, None);
        let s = status(&p, &rt, &HashMap::new(), "127.0.0.1");
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["containerStatuses"][0]["ready"], true);
        assert!(s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True"));
    }

    #[test]
    fn a_crash_looping_container_shows_its_back_off() {
        let p = pod(json!({}));
        let exited = ContainerState::Exited {
            exit_code: 1,
            reason: ExitReason::Error,
        };
        let rt = one_container(exited, Some(1_700_000_002_000));
        let mut r = HashMap::new();
        r.insert(
            "c".to_string(),
            Restarts {
                count: 2,
                backing_off: Some("back-off 20s restarting failed container".into()),
                last: None,
                probed: None,
            },
        );
        let s = status(&p, &rt, &r, "127.0.0.1");
        assert_eq!(s["phase"], "Running");
        assert_eq!(
            s["containerStatuses"][0]["state"]["waiting"]["reason"],
            "CrashLoopBackOff"
        );
        assert_eq!(s["containerStatuses"][0]["restartCount"], 2);
    }
}
