//! The API server's request decoders fed random and damaged bodies for a bounded time: JSON, YAML
//! and protobuf objects on create, update and the status and scale subresources; JSON patches,
//! merge and strategic merge patches and apply patches; DeleteOptions; list and watch query
//! parameters. Bodies start from valid objects of every served kind (protobuf ones as the server
//! itself encodes them) and are then mutated: values replaced by other types, keys added and
//! removed, numbers past every integer range, deep nesting, and the bytes themselves damaged.
//!
//! What must hold: no handler panics; every refusal is a 4xx with a Kubernetes Status; nothing
//! answers 5xx or takes longer than a few seconds; the server still lists afterwards.
//!
//! `CAIRN_FUZZ_SECS` sets the time spent (default 25 s) and `CAIRN_FUZZ_SEED` replays a run; the
//! seed is printed first.

#[path = "../../server/tests/common/damage.rs"]
mod damage;
use crate::kube_api;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use kube_api::Cluster;
use serde_json::{json, Map, Value};

const NS: &str = "fuzz";

/// A valid object of each served kind, with the path of its collection.
fn seeds() -> Vec<(&'static str, Value)> {
    let labels = json!({"app": "fz"});
    let pod_spec = json!({"containers": [{"name": "c", "image": "busybox",
        "command": ["sleep", "1"], "ports": [{"containerPort": 80}],
        "resources": {"limits": {"cpu": "100m", "memory": "64Mi"}}}]});
    vec![
        (
            "/api/v1/namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "fz-ns"}}),
        ),
        (
            "/api/v1/nodes",
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "fz-node"},
                "spec": {"podCIDR": "10.9.0.0/24", "taints": [{"key": "k", "effect": "NoSchedule"}]}}),
        ),
        (
            "/api/v1/namespaces/fuzz/pods",
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "fz-pod",
                "labels": labels}, "spec": pod_spec}),
        ),
        (
            "/api/v1/namespaces/fuzz/services",
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "fz-svc"},
                "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080,
                "protocol": "TCP"}], "type": "ClusterIP"}}),
        ),
        (
            "/api/v1/namespaces/fuzz/endpoints",
            json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "fz-ep"},
                "subsets": [{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}]}),
        ),
        (
            "/api/v1/namespaces/fuzz/configmaps",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "fz-cm"},
                "data": {"a": "b"}, "binaryData": {"bin": "AAEC"}}),
        ),
        (
            "/api/v1/namespaces/fuzz/secrets",
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "fz-secret"},
                "type": "Opaque", "data": {"k": "dmFsdWU="}, "stringData": {"s": "v"}}),
        ),
        (
            "/api/v1/namespaces/fuzz/events",
            json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "fz-ev"},
                "involvedObject": {"kind": "Pod", "name": "fz-pod", "namespace": NS},
                "reason": "R", "message": "m", "type": "Normal", "count": 1}),
        ),
        (
            "/api/v1/namespaces/fuzz/resourcequotas",
            json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "fz-quota"},
                "spec": {"hard": {"pods": "1000", "requests.cpu": "100"}}}),
        ),
        (
            "/api/v1/namespaces/fuzz/limitranges",
            json!({"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "fz-limits"},
                "spec": {"limits": [{"type": "Container", "default": {"cpu": "200m"}}]}}),
        ),
        (
            "/api/v1/namespaces/fuzz/serviceaccounts",
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "fz-sa"}}),
        ),
        (
            "/apis/apps/v1/namespaces/fuzz/deployments",
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "fz-deploy"},
                "spec": {"replicas": 0, "selector": {"matchLabels": labels},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%"}},
                "template": {"metadata": {"labels": labels}, "spec": pod_spec}}}),
        ),
        (
            "/apis/apps/v1/namespaces/fuzz/replicasets",
            json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "fz-rs"},
                "spec": {"replicas": 0, "selector": {"matchExpressions": [{"key": "app",
                "operator": "In", "values": ["fz"]}]},
                "template": {"metadata": {"labels": labels}, "spec": pod_spec}}}),
        ),
        (
            "/apis/discovery.k8s.io/v1/namespaces/fuzz/endpointslices",
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "fz-slice"}, "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.0.0.2"], "conditions": {"ready": true}}],
                "ports": [{"port": 80}]}),
        ),
        (
            "/apis/coordination.k8s.io/v1/namespaces/fuzz/leases",
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "fz-lease"}, "spec": {"holderIdentity": "h",
                "leaseDurationSeconds": 15, "renewTime": "2026-01-01T00:00:00.000000Z"}}),
        ),
    ]
}

/// Words of the Kubernetes object vocabulary, so random keys often land where decoders look.
const KEYS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "name",
    "namespace",
    "labels",
    "annotations",
    "resourceVersion",
    "uid",
    "generateName",
    "finalizers",
    "ownerReferences",
    "deletionTimestamp",
    "spec",
    "status",
    "containers",
    "image",
    "ports",
    "containerPort",
    "replicas",
    "selector",
    "matchLabels",
    "template",
    "data",
    "type",
    "port",
    "targetPort",
    "resources",
    "limits",
    "hard",
    "volumes",
    "env",
    "$patch",
    "$retainKeys",
    "$setElementOrder/containers",
    "$deleteFromPrimitiveList/finalizers",
];

fn random_string(rng: &mut fastrand::Rng) -> String {
    match rng.u8(0..9) {
        0 => String::new(),
        1 => "x".repeat(rng.usize(250..70_000)),
        2 => "Ünïcødé/😀\u{0}\u{202e}".into(),
        3 => "100m".into(),
        4 => "-1Gi".into(),
        5 => "1e400".into(),
        6 => "2026-13-45T25:61:61Z".into(),
        7 => KEYS[rng.usize(0..KEYS.len())].into(),
        _ => (0..rng.usize(0..20)).map(|_| rng.char('!'..'~')).collect(),
    }
}

fn random_number(rng: &mut fastrand::Rng) -> Value {
    match rng.u8(0..8) {
        0 => json!(-1),
        1 => json!(i64::MIN),
        2 => json!(u64::MAX),
        3 => json!(1.5),
        4 => json!(f64::MAX),
        5 => json!(0),
        6 => json!(2147483648u64),
        _ => json!(rng.i64(-100..70_000)),
    }
}

fn random_value(rng: &mut fastrand::Rng, depth: u32) -> Value {
    let leaf = depth >= 4;
    match rng.u8(0..if leaf { 4 } else { 7 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.bool()),
        2 => random_number(rng),
        3 => Value::String(random_string(rng)),
        4 => Value::Array(
            (0..rng.usize(0..4))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let mut m = Map::new();
            for _ in 0..rng.usize(0..5) {
                let k = if rng.bool() {
                    KEYS[rng.usize(0..KEYS.len())].to_string()
                } else {
                    random_string(rng)
                };
                m.insert(k, random_value(rng, depth + 1));
            }
            Value::Object(m)
        }
    }
}

/// Changes one place of `v`: replaced by another value, removed, or given a sibling.
fn mutate(rng: &mut fastrand::Rng, v: &mut Value) {
    // A random path down, stopping at a random depth, as a JSON pointer.
    let mut pointer = String::new();
    let mut here: &Value = v;
    loop {
        let stop = rng.u8(0..3) == 0;
        let (step, next) = match here {
            Value::Object(m) if !m.is_empty() && !stop => {
                let (k, n) = m.iter().nth(rng.usize(0..m.len())).expect("key");
                (k.replace('~', "~0").replace('/', "~1"), n)
            }
            Value::Array(a) if !a.is_empty() && !stop => {
                let i = rng.usize(0..a.len());
                (i.to_string(), &a[i])
            }
            _ => break,
        };
        pointer.push('/');
        pointer.push_str(&step);
        here = next;
    }
    let at = v.pointer_mut(&pointer).expect("the path just walked");
    match (rng.u8(0..5), at) {
        (0, Value::Object(m)) if !m.is_empty() => {
            let k = m.keys().nth(rng.usize(0..m.len())).cloned().expect("key");
            m.remove(&k);
        }
        (1, Value::Object(m)) => {
            m.insert(
                KEYS[rng.usize(0..KEYS.len())].to_string(),
                random_value(rng, 1),
            );
        }
        (2, Value::Array(a)) => a.push(random_value(rng, 2)),
        // Nesting past any decoder's recursion limit.
        (3, at) if rng.u8(0..8) == 0 => {
            let mut deep = json!("bottom");
            for _ in 0..rng.usize(100..3000) {
                deep = if rng.bool() {
                    json!([deep])
                } else {
                    json!({ "a": deep })
                };
            }
            *at = deep;
        }
        (_, at) => *at = random_value(rng, 1),
    }
}

/// A YAML document whose aliases would expand to billions of nodes.
const ALIAS_BOMB: &str =
    "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n\
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n\
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n\
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n\
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]\nmetadata: {name: *i}\n";

/// The seed's protobuf body as kubectl sends one: the `k8s\0` magic and a runtime.Unknown envelope
/// around the object. Pods, ConfigMaps and Deployments are encoded whole; other kinds carry their
/// metadata (field 1 of every object message) and nothing else.
fn protobuf(obj: &Value) -> Vec<u8> {
    use k8s_pb::api::apps::v1 as apps;
    use k8s_pb::api::core::v1 as core;
    use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
    use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
    use prost::Message;

    let labels: std::collections::BTreeMap<String, String> =
        [("app".to_string(), "fz".to_string())].into();
    let metadata = Some(meta::ObjectMeta {
        name: obj["metadata"]["name"].as_str().map(String::from),
        labels: labels.clone(),
        ..Default::default()
    });
    let pod_spec = Some(core::PodSpec {
        containers: vec![core::Container {
            name: Some("c".into()),
            image: Some("busybox".into()),
            command: vec!["sleep".into(), "1".into()],
            ..Default::default()
        }],
        ..Default::default()
    });
    let kind = obj["kind"].as_str().expect("kind");
    let raw = match kind {
        "Pod" => core::Pod {
            metadata,
            spec: pod_spec,
            ..Default::default()
        }
        .encode_to_vec(),
        "ConfigMap" => core::ConfigMap {
            metadata,
            data: [("a".to_string(), "b".to_string())].into(),
            ..Default::default()
        }
        .encode_to_vec(),
        "Deployment" => apps::Deployment {
            metadata,
            spec: Some(apps::DeploymentSpec {
                replicas: Some(0),
                selector: Some(meta::LabelSelector {
                    match_labels: labels.clone(),
                    ..Default::default()
                }),
                template: Some(core::PodTemplateSpec {
                    metadata: Some(meta::ObjectMeta {
                        labels,
                        ..Default::default()
                    }),
                    spec: pod_spec,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec(),
        _ => core::Namespace {
            metadata,
            ..Default::default()
        }
        .encode_to_vec(),
    };
    let envelope = Unknown {
        type_meta: Some(TypeMeta {
            api_version: obj["apiVersion"].as_str().map(String::from),
            kind: Some(kind.to_string()),
        }),
        raw: Some(raw),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut body = b"k8s\0".to_vec();
    body.extend(envelope.encode_to_vec());
    body
}

struct Sent {
    method: &'static str,
    path: String,
    ctype: &'static str,
    body: Vec<u8>,
}

struct Answer {
    code: u16,
    body: Value,
}

async fn send(k: &kube::Client, s: &Sent) -> Result<Answer, String> {
    let req = axum::http::Request::builder()
        .method(s.method)
        .uri(&s.path)
        .header("content-type", s.ctype)
        .header("accept", "application/json")
        .body(kube::client::Body::from(s.body.clone()))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let resp = k.send(req).await.map_err(|e| e.to_string())?;
        let code = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Answer {
            code,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        })
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "no answer within 10 s".to_string())?
}

/// What a bad request must get: a 4xx (or success) with a Status that says why.
fn judge(s: &Sent, a: &Answer) -> Result<(), String> {
    let what = || {
        format!(
            "{} {} ({}, {} bytes): {} {}",
            s.method,
            s.path,
            s.ctype,
            s.body.len(),
            a.code,
            a.body
        )
    };
    if a.code >= 500 {
        return Err(what());
    }
    if a.code >= 400
        && (a.body["kind"] != "Status"
            || a.body["code"] != a.code
            || a.body["message"].as_str().is_none_or(str::is_empty))
    {
        return Err(what());
    }
    Ok(())
}

fn collection_item(collection: &str, name: &str) -> String {
    format!("{collection}/{name}")
}

fn encode(rng: &mut fastrand::Rng, v: &Value, proto: Option<&Vec<u8>>) -> (&'static str, Vec<u8>) {
    match (rng.u8(0..6), proto) {
        (0 | 1, _) => ("application/yaml", {
            let text = serde_yaml::to_string(v).unwrap_or_default();
            if rng.u8(0..30) == 0 {
                ALIAS_BOMB.as_bytes().to_vec()
            } else {
                text.into_bytes()
            }
        }),
        // The protobuf body does not follow the JSON mutations, so it is damaged instead.
        (2, Some(p)) => ("application/vnd.kubernetes.protobuf", {
            if rng.bool() {
                damage::damage(rng, p.clone(), true)
            } else {
                p.clone()
            }
        }),
        _ => ("application/json", serde_json::to_vec(v).expect("json")),
    }
}

const PATCH_TYPES: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
];

fn json_patch(rng: &mut fastrand::Rng) -> Value {
    let ops = ["add", "remove", "replace", "move", "copy", "test", "bogus"];
    let paths = [
        "/metadata/labels/x",
        "/spec/replicas",
        "/spec/containers/0/image",
        "/spec/containers/-",
        "/metadata/name",
        "/data/a",
        "/",
        "",
        "/spec/containers/99999999999999999999",
        "/metadata/annotations/a~1b",
        "/metadata/~2",
    ];
    Value::Array(
        (0..rng.usize(0..4))
            .map(|_| {
                let mut op = json!({
                    "op": ops[rng.usize(0..ops.len())],
                    "path": paths[rng.usize(0..paths.len())],
                    "value": random_value(rng, 2),
                });
                if rng.bool() {
                    op["from"] = json!(paths[rng.usize(0..paths.len())]);
                }
                if rng.u8(0..4) == 0 {
                    mutate(rng, &mut op);
                }
                op
            })
            .collect(),
    )
}

/// Percent-encodes what a URI cannot carry; `%` stays, so malformed escapes reach the server.
fn escape(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'%' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Query parameters of a list; a watch keeps the one-second timeout it was given.
fn list_query(rng: &mut fastrand::Rng, watch: bool) -> String {
    let params = [
        "labelSelector",
        "fieldSelector",
        "limit",
        "continue",
        "resourceVersion",
        "resourceVersionMatch",
        "timeoutSeconds",
        "allowWatchBookmarks",
        "sendInitialEvents",
        "propagationPolicy",
        "dryRun",
        "fieldManager",
        "fieldValidation",
    ];
    let values = [
        "a=b",
        "a in (b,c),!d",
        "a notin (",
        "metadata.name=x",
        "spec.nodeName!=",
        "status.phase==Running",
        "-1",
        "0",
        "1",
        "99999999999999999999",
        "abc",
        "eyJ2IjoibWV0YS5rOHMuaW8vdjEiLCJydiI6LTEsInN0YXJ0IjoiXHUwMDAwIn0",
        "NotOlderThan",
        "Exact",
        "true",
        "All",
        "Strict",
        "%ZZ",
        "%00",
    ];
    (0..rng.usize(1..4))
        .filter_map(|_| {
            let p = params[rng.usize(0..params.len())];
            let v = values[rng.usize(0..values.len())];
            (!(watch && p == "timeoutSeconds")).then(|| format!("{p}={}", escape(v)))
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_decoders_survive_random_and_damaged_bodies() {
    let (seed, secs) = damage::settings(25);
    let panics = damage::count_panics();

    let c = Cluster::start().await;
    let k = c.kube().await;
    let ns = Sent {
        method: "POST",
        path: "/api/v1/namespaces".into(),
        ctype: "application/json",
        body: serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": NS}}))
        .unwrap(),
    };
    assert_eq!(send(&k, &ns).await.expect("namespace").code, 201);
    // Every seed is created once; its protobuf encoding is where damaged protobuf bodies start.
    let mut corpus = Vec::new();
    for (collection, obj) in seeds() {
        let create = Sent {
            method: "POST",
            path: collection.to_string(),
            ctype: "application/json",
            body: serde_json::to_vec(&obj).unwrap(),
        };
        let a = send(&k, &create).await.expect("seed created");
        assert_eq!(a.code, 201, "{collection}: {}", a.body);
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        let proto = protobuf(&obj);
        corpus.push((collection, name, obj, proto));
    }

    let mut rng = fastrand::Rng::with_seed(seed);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (mut sent, mut accepted, mut refused) = (0usize, 0usize, 0usize);
    let mut bad = Vec::new();
    while Instant::now() < deadline && bad.len() < 20 {
        let (collection, name, obj, proto) = &corpus[rng.usize(0..corpus.len())];
        let mut v = obj.clone();
        for _ in 0..rng.usize(0..4) {
            mutate(&mut rng, &mut v);
        }
        let kind = rng.u8(0..10);
        let s = match kind {
            // Create, under a fresh name now and then so creates are not all conflicts.
            0..=2 => {
                if rng.bool() && v["metadata"].is_object() {
                    v["metadata"]["name"] = json!(format!("fz-{}", rng.u32(..)));
                }
                let (ctype, body) = encode(&mut rng, &v, Some(proto));
                Sent {
                    method: "POST",
                    path: collection.to_string(),
                    ctype,
                    body,
                }
            }
            // Update of the object, or of its status or scale.
            3 | 4 => {
                let sub = match rng.u8(0..4) {
                    0 => "/status",
                    1 if collection.contains("apps") => "/scale",
                    _ => "",
                };
                let (ctype, body) = encode(&mut rng, &v, Some(proto));
                Sent {
                    method: "PUT",
                    path: format!("{}{sub}", collection_item(collection, name)),
                    ctype,
                    body,
                }
            }
            5..=7 => {
                let ctype = PATCH_TYPES[rng.usize(0..PATCH_TYPES.len())];
                let body = match ctype {
                    "application/json-patch+json" => serde_json::to_vec(&json_patch(&mut rng)),
                    "application/apply-patch+yaml" if rng.bool() => {
                        Ok(serde_yaml::to_string(&v).unwrap_or_default().into_bytes())
                    }
                    _ => serde_json::to_vec(&v),
                }
                .unwrap();
                let query = if ctype.contains("apply") {
                    "?fieldManager=fuzz&force=true"
                } else {
                    ""
                };
                let sub = if rng.u8(0..4) == 0 { "/status" } else { "" };
                Sent {
                    method: "PATCH",
                    path: format!("{}{sub}{query}", collection_item(collection, name)),
                    ctype,
                    body,
                }
            }
            // DeleteOptions bodies, aimed at names the seeds do not use.
            8 => {
                let mut opts = json!({"apiVersion": "v1", "kind": "DeleteOptions",
                    "gracePeriodSeconds": 0, "propagationPolicy": "Foreground",
                    "preconditions": {"uid": "u", "resourceVersion": "1"}, "dryRun": ["All"]});
                mutate(&mut rng, &mut opts);
                Sent {
                    method: "DELETE",
                    path: collection_item(collection, &format!("fz-{}", rng.u32(..))),
                    ctype: "application/json",
                    body: serde_json::to_vec(&opts).unwrap(),
                }
            }
            // Lists and short watches with hostile query parameters.
            _ => {
                let watch = rng.bool();
                let query = list_query(&mut rng, watch);
                let watch = if watch {
                    "watch=1&timeoutSeconds=1&"
                } else {
                    ""
                };
                Sent {
                    method: "GET",
                    path: format!("{collection}?{watch}{query}"),
                    ctype: "application/json",
                    body: Vec::new(),
                }
            }
        };
        let s = if rng.u8(0..4) == 0 && !s.body.is_empty() {
            Sent {
                body: damage::damage(&mut rng, s.body, false),
                ..s
            }
        } else {
            s
        };
        sent += 1;
        match send(&k, &s).await {
            Ok(a) => match judge(&s, &a) {
                // A watch answers 200 and streams; its lines are events, not one JSON document.
                Ok(()) if a.code < 400 => accepted += 1,
                Ok(()) => refused += 1,
                Err(e) => bad.push(e),
            },
            Err(e) => bad.push(format!("{} {}: {e}", s.method, s.path)),
        }
    }
    eprintln!("{sent} requests: {accepted} accepted, {refused} refused with a Status");
    assert_eq!(
        panics.load(Ordering::SeqCst),
        0,
        "a handler panicked (seed {seed})"
    );
    assert!(
        bad.is_empty(),
        "answers that are not a clear refusal (seed {seed}):\n{}",
        bad.join("\n")
    );
    assert!(accepted > 0 && refused > 0, "{accepted} / {refused}");
    // Still whole: every seed object reads back.
    for (collection, name, _, _) in &corpus {
        let get = Sent {
            method: "GET",
            path: collection_item(collection, name),
            ctype: "application/json",
            body: Vec::new(),
        };
        let a = send(&k, &get).await.expect("read after the run");
        assert_eq!(a.code, 200, "{collection}/{name}: {}", a.body);
    }
}
