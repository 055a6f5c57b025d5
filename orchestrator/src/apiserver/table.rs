//! Server-side printing: objects as `meta.k8s.io/v1` Tables with the columns kubectl users know
//! (pods: NAME READY STATUS RESTARTS AGE, and IP NODE at priority 1 for `-o wide`...).

use serde_json::{json, Value};

use crate::api::{meta, Resource};

struct Col {
    name: &'static str,
    ty: &'static str,
    priority: u8,
}

const fn col(name: &'static str, ty: &'static str, priority: u8) -> Col {
    Col { name, ty, priority }
}

fn columns(r: &Resource) -> Vec<Col> {
    let name = col("Name", "string", 0);
    let age = col("Age", "string", 0);
    match (r.group, r.kind) {
        ("", "Pod") => vec![
            name,
            col("Ready", "string", 0),
            col("Status", "string", 0),
            col("Restarts", "string", 0),
            age,
            col("IP", "string", 1),
            col("Node", "string", 1),
            col("Nominated Node", "string", 1),
            col("Readiness Gates", "string", 1),
        ],
        ("apps", "Deployment") => vec![
            name,
            col("Ready", "string", 0),
            col("Up-to-date", "string", 0),
            col("Available", "string", 0),
            age,
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ],
        ("apps", "ReplicaSet") => vec![
            name,
            col("Desired", "integer", 0),
            col("Current", "integer", 0),
            col("Ready", "integer", 0),
            age,
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ],
        ("", "Service") => vec![
            name,
            col("Type", "string", 0),
            col("Cluster-IP", "string", 0),
            col("External-IP", "string", 0),
            col("Port(s)", "string", 0),
            age,
            col("Selector", "string", 1),
        ],
        ("", "Namespace") => vec![name, col("Status", "string", 0), age],
        ("", "Node") => vec![
            name,
            col("Status", "string", 0),
            col("Roles", "string", 0),
            age,
            col("Version", "string", 0),
            col("Internal-IP", "string", 1),
            col("External-IP", "string", 1),
            col("OS-Image", "string", 1),
            col("Kernel-Version", "string", 1),
            col("Container-Runtime", "string", 1),
        ],
        ("", "ConfigMap") => vec![name, col("Data", "integer", 0), age],
        ("", "Secret") => vec![
            name,
            col("Type", "string", 0),
            col("Data", "integer", 0),
            age,
        ],
        ("", "Endpoints") => vec![name, col("Endpoints", "string", 0), age],
        ("", "ServiceAccount") => vec![name, col("Secrets", "integer", 0), age],
        ("", "Event") => vec![
            col("Last Seen", "string", 0),
            col("Type", "string", 0),
            col("Reason", "string", 0),
            col("Object", "string", 0),
            col("Message", "string", 0),
        ],
        ("", "ResourceQuota") => vec![
            name,
            age,
            col("Request", "string", 0),
            col("Limit", "string", 0),
        ],
        ("", "LimitRange") => vec![name, col("Created At", "date", 0)],
        ("discovery.k8s.io", "EndpointSlice") => vec![
            name,
            col("AddressType", "string", 0),
            col("Ports", "string", 0),
            col("Endpoints", "string", 0),
            age,
        ],
        ("coordination.k8s.io", "Lease") => vec![name, col("Holder", "string", 0), age],
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => vec![
            name,
            col("Role", "string", 0),
            age,
            col("Users", "string", 1),
            col("Groups", "string", 1),
            col("ServiceAccounts", "string", 1),
        ],
        _ => vec![name, col("Created At", "date", 0)],
    }
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn i(v: &Value, ptr: &str) -> i64 {
    v.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

fn arr<'a>(v: &'a Value, ptr: &str) -> &'a [Value] {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn age(obj: &Value, now: i64) -> String {
    match meta::parse_time(meta::str_field(obj, "creationTimestamp")) {
        Some(t) => meta::human_duration(now - t),
        None => "<unknown>".into(),
    }
}

fn or_none(s: String) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s
    }
}

fn joined(items: &[Value], f: impl Fn(&Value) -> String) -> String {
    items.iter().map(f).collect::<Vec<_>>().join(",")
}

fn selector_text(sel: Option<&Value>) -> String {
    let Some(sel) = sel else {
        return "<none>".into();
    };
    let m = sel
        .get("matchLabels")
        .or(Some(sel))
        .and_then(Value::as_object);
    or_none(
        m.map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| format!("{k}={v}")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default(),
    )
}

fn pod_cells(p: &Value, now: i64) -> Vec<Value> {
    let containers = arr(p, "/spec/containers").len();
    let statuses = arr(p, "/status/containerStatuses");
    let ready = statuses
        .iter()
        .filter(|c| c.get("ready") == Some(&json!(true)))
        .count();
    let restarts: i64 = statuses
        .iter()
        .chain(arr(p, "/status/initContainerStatuses"))
        .map(|c| c.get("restartCount").and_then(Value::as_i64).unwrap_or(0))
        .sum();
    let mut status = s(p, "/status/reason").to_string();
    if status.is_empty() {
        status = s(p, "/status/phase").to_string();
    }
    // kubectl's order: the first init container that has not succeeded names the status.
    let inits = arr(p, "/status/initContainerStatuses");
    let total_inits = arr(p, "/spec/initContainers").len();
    let mut initializing = false;
    for (i, c) in inits.iter().enumerate() {
        let code = c
            .pointer("/state/terminated/exitCode")
            .and_then(Value::as_i64);
        let waiting = c
            .pointer("/state/waiting/reason")
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty() && *r != "PodInitializing");
        status = match (code, waiting) {
            (Some(0), _) => continue,
            (Some(code), _) => match c
                .pointer("/state/terminated/reason")
                .and_then(Value::as_str)
            {
                Some(r) if !r.is_empty() => format!("Init:{r}"),
                _ => format!("Init:ExitCode:{code}"),
            },
            (None, Some(r)) => format!("Init:{r}"),
            (None, None) => format!("Init:{i}/{total_inits}"),
        };
        initializing = true;
        break;
    }
    for c in statuses.iter().filter(|_| !initializing) {
        if let Some(r) = c.pointer("/state/waiting/reason").and_then(Value::as_str) {
            status = r.to_string();
        } else if let Some(r) = c
            .pointer("/state/terminated/reason")
            .and_then(Value::as_str)
        {
            status = r.to_string();
        }
    }
    if meta::is_deleting(p) {
        status = "Terminating".into();
    }
    let ip = s(p, "/status/podIP");
    let node = s(p, "/spec/nodeName");
    vec![
        json!(meta::name(p)),
        json!(format!("{ready}/{containers}")),
        json!(status),
        json!(restarts.to_string()),
        json!(age(p, now)),
        json!(if ip.is_empty() { "<none>" } else { ip }),
        json!(if node.is_empty() { "<none>" } else { node }),
        json!(or_none(s(p, "/status/nominatedNodeName").to_string())),
        json!("<none>"),
    ]
}

fn containers_images(o: &Value) -> (String, String) {
    let cs = arr(o, "/spec/template/spec/containers");
    (
        joined(cs, |c| {
            c.get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        }),
        joined(cs, |c| {
            c.get("image")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        }),
    )
}

fn service_ports(o: &Value) -> String {
    or_none(joined(arr(o, "/spec/ports"), |p| {
        let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
        let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
        match p.get("nodePort").and_then(Value::as_i64) {
            Some(np) => format!("{port}:{np}/{proto}"),
            None => format!("{port}/{proto}"),
        }
    }))
}

fn cells(r: &Resource, o: &Value, now: i64) -> Vec<Value> {
    let name = json!(meta::name(o));
    let a = json!(age(o, now));
    match (r.group, r.kind) {
        ("", "Pod") => pod_cells(o, now),
        ("apps", "Deployment") => {
            let (c, im) = containers_images(o);
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    i(o, "/status/readyReplicas"),
                    i(o, "/spec/replicas")
                )),
                json!(i(o, "/status/updatedReplicas")),
                json!(i(o, "/status/availableReplicas")),
                a,
                json!(c),
                json!(im),
                json!(selector_text(o.pointer("/spec/selector"))),
            ]
        }
        ("apps", "ReplicaSet") => {
            let (c, im) = containers_images(o);
            vec![
                name,
                json!(i(o, "/spec/replicas")),
                json!(i(o, "/status/replicas")),
                json!(i(o, "/status/readyReplicas")),
                a,
                json!(c),
                json!(im),
                json!(selector_text(o.pointer("/spec/selector"))),
            ]
        }
        ("", "Service") => {
            let ty = s(o, "/spec/type");
            let external = match ty {
                "ExternalName" => s(o, "/spec/externalName").to_string(),
                "LoadBalancer" => {
                    let ing = joined(arr(o, "/status/loadBalancer/ingress"), |i| {
                        i.get("ip")
                            .or(i.get("hostname"))
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string()
                    });
                    if ing.is_empty() {
                        "<pending>".into()
                    } else {
                        ing
                    }
                }
                _ => joined(arr(o, "/spec/externalIPs"), |v| {
                    v.as_str().unwrap_or("").to_string()
                }),
            };
            vec![
                name,
                json!(ty),
                json!(or_none(s(o, "/spec/clusterIP").to_string())),
                json!(or_none(external)),
                json!(service_ports(o)),
                a,
                json!(selector_text(o.pointer("/spec/selector"))),
            ]
        }
        ("", "Namespace") => vec![name, json!(s(o, "/status/phase")), a],
        ("", "Node") => {
            let ready = arr(o, "/status/conditions")
                .iter()
                .find(|c| c.get("type") == Some(&json!("Ready")))
                .map(|c| match c.get("status").and_then(Value::as_str) {
                    Some("True") => "Ready",
                    Some("False") => "NotReady",
                    _ => "Unknown",
                })
                .unwrap_or("Unknown");
            let mut status = ready.to_string();
            if o.pointer("/spec/unschedulable") == Some(&json!(true)) {
                status.push_str(",SchedulingDisabled");
            }
            let roles: Vec<String> = meta::labels(o)
                .into_iter()
                .flatten()
                .filter_map(|(k, _)| {
                    k.strip_prefix("node-role.kubernetes.io/")
                        .map(str::to_string)
                })
                .collect();
            let addr = |ty: &str| {
                or_none(
                    arr(o, "/status/addresses")
                        .iter()
                        .find(|a| a.get("type") == Some(&json!(ty)))
                        .and_then(|a| a.get("address").and_then(Value::as_str))
                        .unwrap_or("")
                        .to_string(),
                )
            };
            vec![
                name,
                json!(status),
                json!(or_none(roles.join(","))),
                a,
                json!(s(o, "/status/nodeInfo/kubeletVersion")),
                json!(addr("InternalIP")),
                json!(addr("ExternalIP")),
                json!(or_none(s(o, "/status/nodeInfo/osImage").to_string())),
                json!(or_none(s(o, "/status/nodeInfo/kernelVersion").to_string())),
                json!(or_none(
                    s(o, "/status/nodeInfo/containerRuntimeVersion").to_string()
                )),
            ]
        }
        ("", "ConfigMap") => {
            let n = o
                .get("data")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len())
                + o.get("binaryData")
                    .and_then(Value::as_object)
                    .map_or(0, |m| m.len());
            vec![name, json!(n), a]
        }
        ("", "Secret") => {
            let n = o
                .get("data")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len());
            vec![name, json!(s(o, "/type")), json!(n), a]
        }
        ("", "Endpoints") => {
            let mut eps = Vec::new();
            for sub in arr(o, "/subsets") {
                for addr in arr(sub, "/addresses") {
                    let ip = addr.get("ip").and_then(Value::as_str).unwrap_or("");
                    let ports = arr(sub, "/ports");
                    if ports.is_empty() {
                        eps.push(ip.to_string());
                    }
                    for p in ports {
                        eps.push(format!(
                            "{ip}:{}",
                            p.get("port").and_then(Value::as_i64).unwrap_or(0)
                        ));
                    }
                }
            }
            vec![name, json!(or_none(eps.join(","))), a]
        }
        ("", "ServiceAccount") => vec![name, json!(arr(o, "/secrets").len()), a],
        ("", "Event") => {
            let last = o
                .get("lastTimestamp")
                .and_then(Value::as_str)
                .or(o.get("eventTime").and_then(Value::as_str))
                .unwrap_or("");
            let seen = meta::parse_time(last)
                .map(|t| meta::human_duration(now - t))
                .unwrap_or_else(|| "<unknown>".into());
            let obj = format!(
                "{}/{}",
                s(o, "/involvedObject/kind").to_lowercase(),
                s(o, "/involvedObject/name")
            );
            vec![
                json!(seen),
                json!(s(o, "/type")),
                json!(s(o, "/reason")),
                json!(obj),
                json!(s(o, "/message")),
            ]
        }
        ("", "ResourceQuota") => {
            let pairs = |prefix_req: bool| {
                let hard = o.pointer("/status/hard").and_then(Value::as_object);
                let used = o.pointer("/status/used").and_then(Value::as_object);
                hard.into_iter()
                    .flatten()
                    .filter(|(k, _)| k.starts_with("limits.") != prefix_req)
                    .map(|(k, h)| {
                        let u = used
                            .and_then(|u| u.get(k))
                            .and_then(Value::as_str)
                            .unwrap_or("0");
                        format!("{k}: {u}/{}", h.as_str().unwrap_or(""))
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            vec![name, a, json!(pairs(true)), json!(pairs(false))]
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            let ports = or_none(joined(arr(o, "/ports"), |p| {
                p.get("port")
                    .and_then(Value::as_i64)
                    .unwrap_or(0)
                    .to_string()
            }));
            let eps = or_none(
                arr(o, "/endpoints")
                    .iter()
                    .flat_map(|e| {
                        arr(e, "/addresses")
                            .iter()
                            .filter_map(|a| a.as_str().map(str::to_string))
                    })
                    .collect::<Vec<_>>()
                    .join(","),
            );
            vec![
                name,
                json!(s(o, "/addressType")),
                json!(ports),
                json!(eps),
                a,
            ]
        }
        ("coordination.k8s.io", "Lease") => vec![
            name,
            json!(or_none(s(o, "/spec/holderIdentity").to_string())),
            a,
        ],
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            let subjects = |kind: &str| -> String {
                arr(o, "/subjects")
                    .iter()
                    .filter(|sub| s(sub, "/kind") == kind)
                    .map(|sub| match (kind, s(sub, "/namespace")) {
                        ("ServiceAccount", ns) => format!("{ns}/{}", s(sub, "/name")),
                        _ => s(sub, "/name").to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    s(o, "/roleRef/kind"),
                    s(o, "/roleRef/name")
                )),
                a,
                json!(subjects("User")),
                json!(subjects("Group")),
                json!(subjects("ServiceAccount")),
            ]
        }
        _ => vec![name, json!(meta::str_field(o, "creationTimestamp"))],
    }
}

/// The row object kubectl gets: metadata only unless `includeObject=Object`.
fn row_object(o: &Value, include: &str) -> Value {
    match include {
        "Object" => o.clone(),
        "None" => Value::Null,
        _ => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": o.get("metadata").cloned().unwrap_or(json!({})),
        }),
    }
}

/// A Table of `items`; `list_meta` is the list's metadata (resourceVersion, continue).
pub fn table(r: &Resource, items: &[Value], list_meta: Value, include: &str) -> Value {
    let now = jiff::Timestamp::now().as_second();
    let defs: Vec<Value> = columns(r)
        .iter()
        .map(|c| {
            let mut d = json!({"name": c.name, "type": c.ty, "format": if c.name == "Name" { "name" } else { "" }, "description": c.name, "priority": c.priority});
            if c.ty == "date" {
                d["type"] = json!("string");
                d["format"] = json!("date");
            }
            d
        })
        .collect();
    let rows: Vec<Value> = items
        .iter()
        .map(|o| json!({"cells": cells(r, o, now), "object": row_object(o, include)}))
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta, "columnDefinitions": defs, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::lookup_kind;

    #[test]
    fn pods_still_initializing_show_kubectls_init_status() {
        let status = |inits: Value| {
            let pod = json!({"metadata": {"name": "p", "creationTimestamp": meta::now()},
                "spec": {"initContainers": [{"name": "i1"}, {"name": "i2"}], "containers": [{"name": "a"}]},
                "status": {"phase": "Pending", "initContainerStatuses": inits, "containerStatuses": [
                    {"ready": false, "restartCount": 0, "state": {"waiting": {"reason": "PodInitializing"}}}]}});
            pod_cells(&pod, jiff::Timestamp::now().as_second())[2].clone()
        };
        let done = json!({"restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}});
        let running = json!({"restartCount": 0, "state": {"running": {}}});
        let waiting =
            json!({"restartCount": 0, "state": {"waiting": {"reason": "PodInitializing"}}});
        assert_eq!(status(json!([done, running])), "Init:1/2");
        assert_eq!(status(json!([waiting, waiting])), "Init:0/2");
        let failed =
            json!({"restartCount": 0, "state": {"terminated": {"exitCode": 3, "reason": "Error"}}});
        assert_eq!(status(json!([failed, waiting])), "Init:Error");
        let looping =
            json!({"restartCount": 2, "state": {"waiting": {"reason": "CrashLoopBackOff"}}});
        assert_eq!(status(json!([looping, waiting])), "Init:CrashLoopBackOff");
        assert_eq!(status(json!([done, done])), "PodInitializing");
    }

    #[test]
    fn pod_rows_have_the_known_columns() {
        let pod = json!({"metadata": {"name": "p", "creationTimestamp": meta::now()},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.0.0.5", "containerStatuses": [
                {"ready": true, "restartCount": 2}, {"ready": false, "restartCount": 1}]}});
        let t = table(
            lookup_kind("v1", "Pod").unwrap(),
            &[pod],
            json!({}),
            "Metadata",
        );
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            &names[..7],
            ["Name", "Ready", "Status", "Restarts", "Age", "IP", "Node"]
        );
        assert_eq!(t["rows"][0]["cells"][1], "1/2");
        assert_eq!(t["rows"][0]["cells"][3], "3");
        assert_eq!(t["rows"][0]["cells"][6], "n1");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }
}
