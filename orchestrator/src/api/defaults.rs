//! Defaults Kubernetes fills in before validation (its `SetDefaults_*` functions and the defaulting
//! admission plugins), applied to untyped objects so a stored object reads back as Kubernetes' would.

use serde_json::{json, Map, Value};

use super::Resource;

fn obj_mut<'a>(v: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    if !v.get(key).is_some_and(Value::is_object) {
        if let Some(m) = v.as_object_mut() {
            m.insert(key.to_string(), Value::Object(Map::new()));
        }
    }
    v.get_mut(key)
        .and_then(Value::as_object_mut)
        .expect("an object was inserted just above when missing")
}

fn default(m: &mut Map<String, Value>, key: &str, v: Value) {
    if m.get(key).is_none_or(Value::is_null) {
        m.insert(key.to_string(), v);
    }
}

/// Fills `obj`'s defaults in place; `obj` is a checked object of `r`'s kind.
pub fn apply(r: &Resource, obj: &mut Value) {
    match (r.group, r.kind) {
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            // rbac/v1's SetDefaults_RoleBinding and SetDefaults_Subject.
            const GROUP: &str = "rbac.authorization.k8s.io";
            if let Some(rr) = obj.get_mut("roleRef").and_then(Value::as_object_mut) {
                if rr
                    .get("apiGroup")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .is_empty()
                {
                    rr.insert("apiGroup".into(), json!(GROUP));
                }
            }
            for sub in obj
                .get_mut("subjects")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                let Some(sub) = sub.as_object_mut() else {
                    continue;
                };
                let kind = sub.get("kind").and_then(Value::as_str).unwrap_or("");
                let empty = sub
                    .get("apiGroup")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .is_empty();
                if empty && matches!(kind, "User" | "Group") {
                    sub.insert("apiGroup".into(), json!(GROUP));
                }
            }
        }
        ("", "Pod") => {
            pod_spec(obj_mut(obj, "spec"));
            let spec = obj_mut(obj, "spec");
            default(spec, "serviceAccountName", json!("default"));
            default(spec, "priority", json!(0));
            default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
            default_tolerations(spec);
            let qos = qos_class(obj.get("spec").unwrap_or(&Value::Null));
            let status = obj_mut(obj, "status");
            default(status, "phase", json!("Pending"));
            default(status, "qosClass", json!(qos));
        }
        ("apps", "Deployment") => {
            let spec = obj_mut(obj, "spec");
            default(spec, "replicas", json!(1));
            default(spec, "revisionHistoryLimit", json!(10));
            default(spec, "progressDeadlineSeconds", json!(600));
            let strategy = obj_mut(
                &mut *obj.get_mut("spec").expect("spec set above"),
                "strategy",
            );
            default(strategy, "type", json!("RollingUpdate"));
            if strategy.get("type") == Some(&json!("RollingUpdate")) {
                let ru = strategy.entry("rollingUpdate").or_insert_with(|| json!({}));
                if let Some(ru) = ru.as_object_mut() {
                    default(ru, "maxUnavailable", json!("25%"));
                    default(ru, "maxSurge", json!("25%"));
                }
            }
            template(obj);
        }
        ("apps", "ReplicaSet") => {
            default(obj_mut(obj, "spec"), "replicas", json!(1));
            template(obj);
        }
        ("", "Service") => service(obj),
        ("", "Namespace") => {
            let name = super::meta::name(obj).to_string();
            let meta = obj_mut(obj, "metadata");
            let labels = meta.entry("labels").or_insert_with(|| json!({}));
            if let Some(labels) = labels.as_object_mut() {
                labels.insert("kubernetes.io/metadata.name".into(), json!(name));
            }
            default(obj_mut(obj, "spec"), "finalizers", json!(["kubernetes"]));
            default(obj_mut(obj, "status"), "phase", json!("Active"));
        }
        ("", "Secret") => secret(obj),
        ("", "Endpoints") => {
            if let Some(subsets) = obj.get_mut("subsets").and_then(Value::as_array_mut) {
                for s in subsets {
                    protocols(s.get_mut("ports"));
                }
            }
        }
        ("discovery.k8s.io", "EndpointSlice") => protocols(obj.get_mut("ports")),
        _ => {}
    }
}

fn template(obj: &mut Value) {
    if let Some(t) = obj
        .get_mut("spec")
        .and_then(|s| s.get_mut("template"))
        .filter(|t| t.is_object())
    {
        pod_spec(obj_mut(t, "spec"));
    }
}

fn protocols(ports: Option<&mut Value>) {
    if let Some(ports) = ports.and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            default(p, "protocol", json!("TCP"));
        }
    }
}

fn pod_spec(spec: &mut Map<String, Value>) {
    default(spec, "restartPolicy", json!("Always"));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "securityContext", json!({}));
    default(spec, "schedulerName", json!("default-scheduler"));
    default(spec, "enableServiceLinks", json!(true));
    for key in ["initContainers", "containers"] {
        if let Some(cs) = spec.get_mut(key).and_then(Value::as_array_mut) {
            for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                container(c);
            }
        }
    }
    if let Some(vols) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
        for v in vols.iter_mut().filter_map(Value::as_object_mut) {
            for src in ["configMap", "secret", "projected", "downwardAPI"] {
                if let Some(s) = v.get_mut(src).and_then(Value::as_object_mut) {
                    default(s, "defaultMode", json!(420));
                }
            }
        }
    }
}

fn container(c: &mut Map<String, Value>) {
    default(c, "terminationMessagePath", json!("/dev/termination-log"));
    default(c, "terminationMessagePolicy", json!("File"));
    let image = c.get("image").and_then(Value::as_str).unwrap_or("");
    let tag = image
        .rsplit_once('/')
        .map(|(_, last)| last)
        .unwrap_or(image)
        .split_once(':')
        .map(|(_, t)| t);
    let latest = !image.contains('@') && tag.is_none_or(|t| t == "latest");
    default(
        c,
        "imagePullPolicy",
        json!(if latest { "Always" } else { "IfNotPresent" }),
    );
    default(c, "resources", json!({}));
    // Limits without requests: the request defaults to the limit.
    if let Some(res) = c.get_mut("resources").and_then(Value::as_object_mut) {
        if let Some(limits) = res.get("limits").and_then(Value::as_object).cloned() {
            let req = res.entry("requests").or_insert_with(|| json!({}));
            if let Some(req) = req.as_object_mut() {
                for (k, v) in limits {
                    req.entry(k).or_insert(v);
                }
            }
        }
    }
    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            default(p, "protocol", json!("TCP"));
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(probe).and_then(Value::as_object_mut) {
            default(p, "timeoutSeconds", json!(1));
            default(p, "periodSeconds", json!(10));
            default(p, "successThreshold", json!(1));
            default(p, "failureThreshold", json!(3));
            if let Some(h) = p.get_mut("httpGet").and_then(Value::as_object_mut) {
                default(h, "scheme", json!("HTTP"));
                default(h, "path", json!("/"));
            }
        }
    }
    if let Some(env) = c.get_mut("env").and_then(Value::as_array_mut) {
        for e in env {
            if let Some(f) = e
                .get_mut("valueFrom")
                .and_then(|v| v.get_mut("fieldRef"))
                .and_then(Value::as_object_mut)
            {
                default(f, "apiVersion", json!("v1"));
            }
        }
    }
}

/// The DefaultTolerationSeconds admission plugin: pods tolerate a not-ready or unreachable node
/// for 300 s unless they say otherwise.
fn default_tolerations(spec: &mut Map<String, Value>) {
    let tols = spec.entry("tolerations").or_insert_with(|| json!([]));
    let Some(tols) = tols.as_array_mut() else {
        return;
    };
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let has = tols.iter().any(|t| {
            let k = t.get("key").and_then(Value::as_str);
            let e = t.get("effect").and_then(Value::as_str);
            (k == Some(key) || k.is_none() && t.get("operator") == Some(&json!("Exists")))
                && (e == Some("NoExecute") || e.is_none())
        });
        if !has {
            tols.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
        }
    }
}

/// The pod's QoS class from its containers' requests and limits.
pub fn qos_class(spec: &Value) -> &'static str {
    let mut any = false;
    let mut guaranteed = true;
    let containers = spec
        .get("containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .chain(
            spec.get("initContainers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten(),
        );
    for c in containers {
        let res = c.get("resources");
        let req = res
            .and_then(|r| r.get("requests"))
            .and_then(Value::as_object);
        let lim = res.and_then(|r| r.get("limits")).and_then(Value::as_object);
        for name in ["cpu", "memory"] {
            let rq = req.and_then(|m| m.get(name));
            let lm = lim.and_then(|m| m.get(name));
            if rq.is_some() || lm.is_some() {
                any = true;
            }
            if lm.is_none() || rq.is_some_and(|r| Some(r) != lm) {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

fn service(obj: &mut Value) {
    let spec = obj_mut(obj, "spec");
    default(spec, "type", json!("ClusterIP"));
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    if ty == "ExternalName" {
        return;
    }
    default(spec, "sessionAffinity", json!("None"));
    default(spec, "internalTrafficPolicy", json!("Cluster"));
    if ty == "NodePort" || ty == "LoadBalancer" {
        default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            default(p, "protocol", json!("TCP"));
            if let Some(port) = p.get("port").cloned() {
                default(p, "targetPort", port);
            }
        }
    }
}

fn secret(obj: &mut Value) {
    use base64::Engine;
    let Some(m) = obj.as_object_mut() else {
        return;
    };
    default(m, "type", json!("Opaque"));
    // stringData is write-only: merged into data, base64-encoded, never stored.
    if let Some(Value::Object(sd)) = m.remove("stringData") {
        let data = m.entry("data").or_insert_with(|| json!({}));
        if let Some(data) = data.as_object_mut() {
            for (k, v) in sd {
                let s = v.as_str().unwrap_or_default();
                data.insert(
                    k,
                    json!(base64::engine::general_purpose::STANDARD.encode(s)),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::lookup_kind;

    #[test]
    fn pods_get_kubernetes_defaults() {
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "c", "image": "nginx", "ports": [{"containerPort": 80}],
             "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}});
        apply(lookup_kind("v1", "Pod").unwrap(), &mut pod);
        let spec = &pod["spec"];
        assert_eq!(spec["restartPolicy"], "Always");
        assert_eq!(spec["terminationGracePeriodSeconds"], 30);
        assert_eq!(spec["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(spec["containers"][0]["ports"][0]["protocol"], "TCP");
        assert_eq!(spec["containers"][0]["resources"]["requests"]["cpu"], "1");
        assert_eq!(spec["tolerations"].as_array().unwrap().len(), 2);
        assert_eq!(pod["status"]["qosClass"], "Guaranteed");
        assert_eq!(pod["status"]["phase"], "Pending");
    }

    #[test]
    fn deployments_and_services() {
        let mut d = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "nginx:1.25"}]}}}});
        apply(lookup_kind("apps/v1", "Deployment").unwrap(), &mut d);
        assert_eq!(
            d["spec"]["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        );
        assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
        let mut s = json!({"spec": {"ports": [{"port": 80}]}});
        apply(lookup_kind("v1", "Service").unwrap(), &mut s);
        assert_eq!(s["spec"]["type"], "ClusterIP");
        assert_eq!(
            s["spec"]["ports"][0],
            json!({"port": 80, "protocol": "TCP", "targetPort": 80})
        );
    }

    #[test]
    fn secrets_fold_string_data() {
        let mut s = json!({"stringData": {"k": "v"}});
        apply(lookup_kind("v1", "Secret").unwrap(), &mut s);
        assert_eq!(s, json!({"type": "Opaque", "data": {"k": "dg=="}}));
    }
}
