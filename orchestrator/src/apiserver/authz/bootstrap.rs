//! The default roles and bindings, created when the API server starts as kube-apiserver's RBAC
//! bootstrap hook does: `cluster-admin` for `system:masters`, the user-facing `admin`, `edit` and
//! `view`, discovery and self-review for every authenticated user, the public health and version
//! paths for everyone, CSR creation for bootstrap tokens, and one role per component (scheduler,
//! controller manager, node agents, service proxy, cluster DNS) bound to the identity that
//! component authenticates as.
//!
//! Reconciliation never takes anything away: a missing object is created; an existing one whose
//! `rbac.authorization.kubernetes.io/autoupdate` annotation is not `"false"` gets the rules or
//! subjects it lacks added, and anything an operator added stays.
//!
//! Writes through the registry directly (the server is not serving yet); knows nothing of HTTP.

use serde_json::{json, Value};

use crate::api::{self, meta};
use crate::registry::{Registry, StoreError};

const GROUP: &str = "rbac.authorization.k8s.io";
const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";

/// The group of the users a joining node's default bootstrap token authenticates as.
const NODE_TOKEN_GROUP: &str = crate::bootstrap::DEFAULT_NODE_GROUP;

fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Value {
    json!({"verbs": verbs, "apiGroups": groups, "resources": resources})
}

fn url_rule(verbs: &[&str], urls: &[&str]) -> Value {
    json!({"verbs": verbs, "nonResourceURLs": urls})
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const ALL: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn cluster_role(name: &str, rules: Vec<Value>) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
            "annotations": {AUTOUPDATE: "true"}},
        "rules": rules})
}

/// A binding subject; a ServiceAccount is named `<namespace>/<name>`.
fn subject(kind: &str, name: &str) -> Value {
    if kind == "ServiceAccount" {
        let (ns, n) = name.split_once('/').unwrap_or(("default", name));
        json!({"kind": "ServiceAccount", "name": n, "namespace": ns})
    } else {
        json!({"kind": kind, "apiGroup": GROUP, "name": name})
    }
}

fn cluster_binding(name: &str, role: &str, subjects: &[(&str, &str)]) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
            "annotations": {AUTOUPDATE: "true"}},
        "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": role},
        "subjects": subjects.iter().map(|(k, n)| subject(k, n)).collect::<Vec<_>>()})
}

/// What `view` may read: everything but Secrets and RBAC.
fn view_rules() -> Vec<Value> {
    vec![
        rule(
            READ,
            &[""],
            &[
                "configmaps",
                "endpoints",
                "events",
                "limitranges",
                "namespaces",
                "namespaces/status",
                "pods",
                "pods/log",
                "pods/status",
                "resourcequotas",
                "resourcequotas/status",
                "serviceaccounts",
                "services",
                "services/status",
            ],
        ),
        rule(
            READ,
            &["apps"],
            &[
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
            ],
        ),
        rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
        rule(READ, &["coordination.k8s.io"], &["leases"]),
    ]
}

/// What `edit` adds to `view`: writing workloads and their configuration, Secrets included.
fn edit_rules() -> Vec<Value> {
    let mut r = view_rules();
    r.extend([
        rule(
            WRITE,
            &[""],
            &[
                "configmaps",
                "endpoints",
                "pods",
                "secrets",
                "serviceaccounts",
                "services",
            ],
        ),
        rule(READ, &[""], &["secrets"]),
        rule(
            &["create", "get"],
            &[""],
            &["pods/exec", "pods/attach", "pods/portforward"],
        ),
        rule(&["impersonate"], &[""], &["serviceaccounts"]),
        rule(
            WRITE,
            &["apps"],
            &[
                "deployments",
                "deployments/scale",
                "replicasets",
                "replicasets/scale",
            ],
        ),
        rule(WRITE, &["discovery.k8s.io"], &["endpointslices"]),
    ]);
    r
}

/// What `admin` adds to `edit`: the namespace's roles and bindings, and local access reviews.
fn admin_rules() -> Vec<Value> {
    let mut r = edit_rules();
    r.extend([
        rule(ALL, &[GROUP], &["roles", "rolebindings"]),
        rule(
            &["create"],
            &["authorization.k8s.io"],
            &["localsubjectaccessreviews"],
        ),
        rule(WRITE, &[""], &["resourcequotas", "limitranges"]),
    ]);
    r
}

/// The default cluster roles and their bindings.
pub fn cluster_defaults() -> Vec<Value> {
    let events = || {
        rule(
            &["create", "patch", "update"],
            &["", "events.k8s.io"],
            &["events"],
        )
    };
    let leases = || {
        rule(
            &["create", "get", "list", "watch", "update", "patch"],
            &["coordination.k8s.io"],
            &["leases"],
        )
    };
    vec![
        cluster_role(
            "cluster-admin",
            vec![rule(&["*"], &["*"], &["*"]), url_rule(&["*"], &["*"])],
        ),
        cluster_role("admin", admin_rules()),
        cluster_role("edit", edit_rules()),
        cluster_role("view", view_rules()),
        cluster_role(
            "system:basic-user",
            vec![
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                rule(
                    &["create"],
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                ),
            ],
        ),
        cluster_role(
            "system:discovery",
            vec![url_rule(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            )],
        ),
        cluster_role(
            "system:public-info-viewer",
            vec![url_rule(
                &["get"],
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
            )],
        ),
        cluster_role(
            "system:node-bootstrapper",
            vec![rule(
                &["create", "get", "list", "watch"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests"],
            )],
        ),
        cluster_role(
            "system:kube-scheduler",
            vec![
                rule(READ, &[""], &["nodes", "pods", "namespaces", "services"]),
                rule(&["delete"], &[""], &["pods"]),
                rule(&["create"], &[""], &["pods/binding", "bindings"]),
                rule(&["patch", "update"], &[""], &["pods/status"]),
                rule(READ, &["apps"], &["replicasets"]),
                events(),
                leases(),
            ],
        ),
        // The controllers run under one identity, and the garbage collector and the namespace
        // cleaner work on every kind, so this role covers every resource.
        cluster_role(
            "system:kube-controller-manager",
            vec![rule(&["*"], &["*"], &["*"])],
        ),
        cluster_role(
            "system:node",
            vec![
                rule(
                    &[
                        "get", "list", "watch", "create", "update", "patch", "delete",
                    ],
                    &[""],
                    &["nodes"],
                ),
                rule(
                    &["patch", "update"],
                    &[""],
                    &["nodes/status", "pods/status"],
                ),
                rule(
                    &["get", "list", "watch", "create", "delete"],
                    &[""],
                    &["pods"],
                ),
                rule(
                    READ,
                    &[""],
                    &[
                        "configmaps",
                        "secrets",
                        "services",
                        "endpoints",
                        "serviceaccounts",
                        "namespaces",
                    ],
                ),
                rule(&["create"], &[""], &["serviceaccounts/token"]),
                rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
                events(),
                leases(),
            ],
        ),
        cluster_role(
            "system:node-proxier",
            vec![
                rule(READ, &[""], &["services", "endpoints", "nodes"]),
                rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
                events(),
            ],
        ),
        cluster_role(
            "system:kube-dns",
            vec![
                rule(
                    &["list", "watch"],
                    &[""],
                    &["endpoints", "services", "namespaces"],
                ),
                // The node's podCIDR tells where the pod gateway (and so the server) is.
                rule(&["get"], &[""], &["nodes"]),
                rule(
                    &["list", "watch"],
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                ),
            ],
        ),
        cluster_binding(
            "cluster-admin",
            "cluster-admin",
            &[("Group", "system:masters")],
        ),
        cluster_binding(
            "system:basic-user",
            "system:basic-user",
            &[("Group", "system:authenticated")],
        ),
        cluster_binding(
            "system:discovery",
            "system:discovery",
            &[("Group", "system:authenticated")],
        ),
        cluster_binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            &[
                ("Group", "system:authenticated"),
                ("Group", "system:unauthenticated"),
            ],
        ),
        cluster_binding(
            "kubeadm:kubelet-bootstrap",
            "system:node-bootstrapper",
            &[("Group", NODE_TOKEN_GROUP)],
        ),
        cluster_binding(
            "system:kube-scheduler",
            "system:kube-scheduler",
            &[("User", "system:kube-scheduler")],
        ),
        cluster_binding(
            "system:kube-controller-manager",
            "system:kube-controller-manager",
            &[("User", "system:kube-controller-manager")],
        ),
        // Kubernetes leaves node permissions to its Node authorizer; here the group is bound. A
        // node that joined with a bootstrap token keeps using it (there is no certificate
        // signing), so the default node token's group is bound as well.
        cluster_binding(
            "system:node",
            "system:node",
            &[("Group", "system:nodes"), ("Group", NODE_TOKEN_GROUP)],
        ),
        cluster_binding(
            "system:node-proxier",
            "system:node-proxier",
            &[("User", "system:kube-proxy")],
        ),
        cluster_binding(
            "system:kube-dns",
            "system:kube-dns",
            &[("ServiceAccount", "kube-system/kube-dns")],
        ),
    ]
}

/// kubeadm's grant of the one anonymous read: kube-public's cluster-info, for joining nodes.
pub fn namespaced_defaults() -> Vec<Value> {
    let ns = crate::bootstrap::CLUSTER_INFO_NAMESPACE;
    vec![
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "kubeadm:bootstrap-signer-clusterinfo", "namespace": ns,
                "annotations": {AUTOUPDATE: "true"}},
            "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"],
                "resourceNames": [crate::bootstrap::CLUSTER_INFO]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "kubeadm:bootstrap-signer-clusterinfo", "namespace": ns,
                "annotations": {AUTOUPDATE: "true"}},
            "roleRef": {"apiGroup": GROUP, "kind": "Role", "name": "kubeadm:bootstrap-signer-clusterinfo"},
            "subjects": [{"apiGroup": GROUP, "kind": "User", "name": "system:anonymous"}]}),
    ]
}

/// Adds to `have[key]` the entries of `want[key]` it lacks; whether anything was added.
fn union(have: &mut Value, want: &Value, key: &str) -> bool {
    let wanted = want
        .get(key)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let list = have
        .as_object_mut()
        .map(|o| o.entry(key).or_insert_with(|| json!([])))
        .and_then(Value::as_array_mut);
    let Some(list) = list else { return false };
    let mut changed = false;
    for w in wanted {
        if !list.contains(&w) {
            list.push(w);
            changed = true;
        }
    }
    changed
}

/// Creates the defaults that are missing and adds what existing ones lack.
pub async fn reconcile(registry: &Registry) -> Result<(), StoreError> {
    for obj in cluster_defaults().into_iter().chain(namespaced_defaults()) {
        let av = obj["apiVersion"].as_str().unwrap_or("");
        let kind = obj["kind"].as_str().unwrap_or("");
        let r = api::lookup_kind(av, kind).expect("RBAC kinds are served");
        let (ns, name) = (
            meta::namespace(&obj).to_string(),
            meta::name(&obj).to_string(),
        );
        // A few tries: another API server may be reconciling the same objects.
        for _ in 0..5 {
            match registry.get(r, &ns, &name).await {
                Err(StoreError::NotFound) => {
                    let mut o = obj.clone();
                    o["metadata"]["uid"] = json!(meta::new_uid());
                    o["metadata"]["creationTimestamp"] = json!(meta::now());
                    match registry.create(r, o, Default::default()).await {
                        Ok(_) => break,
                        Err(StoreError::AlreadyExists) => continue,
                        Err(e) => return Err(e),
                    }
                }
                Ok(mut stored) => {
                    let auto = stored
                        .pointer(&format!(
                            "/metadata/annotations/{}",
                            AUTOUPDATE.replace('/', "~1")
                        ))
                        .and_then(Value::as_str)
                        != Some("false");
                    let key = if kind.ends_with("Binding") {
                        "subjects"
                    } else {
                        "rules"
                    };
                    if !auto || !union(&mut stored, &obj, key) {
                        break;
                    }
                    let rv = meta::resource_version(&stored).parse().unwrap_or(0);
                    match registry.update(r, stored, rv, Default::default()).await {
                        Ok(_) => break,
                        Err(StoreError::Conflict) => continue,
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::validation;

    #[test]
    fn defaults_are_valid_objects() {
        for obj in cluster_defaults().into_iter().chain(namespaced_defaults()) {
            let r = api::lookup_kind(
                obj["apiVersion"].as_str().unwrap(),
                obj["kind"].as_str().unwrap(),
            )
            .unwrap();
            api::typed::check(r, &obj).unwrap();
            let errs = validation::validate(r, &obj, None);
            assert!(errs.is_empty(), "{}: {errs:?}", meta::name(&obj));
        }
    }

    #[test]
    fn reconciling_only_adds() {
        let mut have =
            json!({"rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["x"]}]});
        let want = json!({"rules": [{"verbs": ["list"], "apiGroups": [""], "resources": ["y"]}]});
        assert!(union(&mut have, &want, "rules"));
        assert_eq!(have["rules"].as_array().unwrap().len(), 2);
        assert!(!union(&mut have, &want, "rules"));
    }
}
