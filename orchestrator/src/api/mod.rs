//! The Kubernetes object model the API server serves: which resources exist (group, version, kind,
//! scope, short names, subresources), how a JSON object is checked against its k8s-openapi type
//! (unknown fields, wrong types), and the per-kind rules applied before an object is stored
//! (defaults, validation with field paths), in the manner of Kubernetes' registry strategies.
//!
//! Objects travel as `serde_json::Value` (as Kubernetes' unstructured objects do) so one generic
//! storage path serves every kind; the typed structs are the schema they are checked against.
//! This module knows nothing of HTTP or the store: it never imports `apiserver` or `registry`.

pub mod defaults;
pub mod meta;
pub mod patch;
pub mod quantity;
pub mod quota;
pub mod selector;
pub mod typed;
pub mod validation;

use std::fmt;

/// A subresource served below an object (`pods/status`, `deployments/scale`...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    Status,
    Scale,
    Binding,
    Log,
    Exec,
    /// A namespace's `spec.finalizers`, which only the namespace controller changes.
    Finalize,
    /// A service account's TokenRequest.
    Token,
}

impl Subresource {
    pub fn name(self) -> &'static str {
        match self {
            Subresource::Status => "status",
            Subresource::Scale => "scale",
            Subresource::Binding => "binding",
            Subresource::Log => "log",
            Subresource::Exec => "exec",
            Subresource::Finalize => "finalize",
            Subresource::Token => "token",
        }
    }

    pub fn parse(s: &str) -> Option<Subresource> {
        [
            Subresource::Status,
            Subresource::Scale,
            Subresource::Binding,
            Subresource::Log,
            Subresource::Exec,
            Subresource::Finalize,
            Subresource::Token,
        ]
        .into_iter()
        .find(|r| r.name() == s)
    }
}

/// One served resource: everything discovery, routing and storage need to know about it.
#[derive(Debug)]
pub struct Resource {
    /// API group; empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// The URL and storage name (`pods`).
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub subresources: &'static [Subresource],
    /// Whether a change of anything outside metadata and status bumps `metadata.generation`.
    pub has_generation: bool,
}

impl Resource {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `configmaps` or `deployments.apps`, the form Kubernetes' error messages use.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub fn has(&self, sub: Subresource) -> bool {
        self.subresources.contains(&sub)
    }

    /// The store key prefix of every object of this resource, ending in `/`.
    pub fn key_prefix(&self) -> String {
        format!("/registry/{}/", self.plural)
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.qualified())
    }
}

use Subresource::*;

const fn res(
    group: &'static str,
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    subresources: &'static [Subresource],
) -> Resource {
    Resource {
        group,
        version: "v1",
        kind,
        plural,
        singular,
        namespaced,
        short_names,
        categories: &[],
        subresources,
        has_generation: false,
    }
}

const fn all(mut r: Resource) -> Resource {
    r.categories = &["all"];
    r
}

const fn generation(mut r: Resource) -> Resource {
    r.has_generation = true;
    r
}

/// Every resource this server serves, in discovery order.
pub static RESOURCES: &[Resource] = &[
    res(
        "",
        "Namespace",
        "namespaces",
        "namespace",
        false,
        &["ns"],
        &[Status, Finalize],
    ),
    res("", "Node", "nodes", "node", false, &["no"], &[Status]),
    all(res(
        "",
        "Pod",
        "pods",
        "pod",
        true,
        &["po"],
        &[Status, Binding, Log, Exec],
    )),
    all(res(
        "",
        "Service",
        "services",
        "service",
        true,
        &["svc"],
        &[Status],
    )),
    res(
        "",
        "Endpoints",
        "endpoints",
        "endpoints",
        true,
        &["ep"],
        &[],
    ),
    res(
        "",
        "ConfigMap",
        "configmaps",
        "configmap",
        true,
        &["cm"],
        &[],
    ),
    res("", "Secret", "secrets", "secret", true, &[], &[]),
    res("", "Event", "events", "event", true, &["ev"], &[]),
    res(
        "",
        "ResourceQuota",
        "resourcequotas",
        "resourcequota",
        true,
        &["quota"],
        &[Status],
    ),
    res(
        "",
        "LimitRange",
        "limitranges",
        "limitrange",
        true,
        &["limits"],
        &[],
    ),
    res(
        "",
        "ServiceAccount",
        "serviceaccounts",
        "serviceaccount",
        true,
        &["sa"],
        &[Token],
    ),
    all(generation(res(
        "apps",
        "Deployment",
        "deployments",
        "deployment",
        true,
        &["deploy"],
        &[Status, Scale],
    ))),
    all(generation(res(
        "apps",
        "ReplicaSet",
        "replicasets",
        "replicaset",
        true,
        &["rs"],
        &[Status, Scale],
    ))),
    res(
        "discovery.k8s.io",
        "EndpointSlice",
        "endpointslices",
        "endpointslice",
        true,
        &[],
        &[],
    ),
    res(
        "coordination.k8s.io",
        "Lease",
        "leases",
        "lease",
        true,
        &[],
        &[],
    ),
    res(
        "rbac.authorization.k8s.io",
        "ClusterRole",
        "clusterroles",
        "clusterrole",
        false,
        &[],
        &[],
    ),
    res(
        "rbac.authorization.k8s.io",
        "ClusterRoleBinding",
        "clusterrolebindings",
        "clusterrolebinding",
        false,
        &[],
        &[],
    ),
    res(
        "rbac.authorization.k8s.io",
        "Role",
        "roles",
        "role",
        true,
        &[],
        &[],
    ),
    res(
        "rbac.authorization.k8s.io",
        "RoleBinding",
        "rolebindings",
        "rolebinding",
        true,
        &[],
        &[],
    ),
];

/// The resource served under `group`/`version` as `plural`.
pub fn lookup(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource of an object's `apiVersion` and `kind`.
pub fn lookup_kind(api_version: &str, kind: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.kind == kind && r.api_version() == api_version)
}

/// Groups other than core, in discovery order, each with its one served version.
pub fn groups() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for r in RESOURCES {
        if !r.group.is_empty() && !out.contains(&r.group) {
            out.push(r.group);
        }
    }
    out
}

/// The namespaces that exist from the start and cannot be deleted.
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_typed_schema() {
        for r in RESOURCES {
            let obj = serde_json::json!({"apiVersion": r.api_version(), "kind": r.kind, "metadata": {"name": "x"}});
            typed::check(r, &obj).unwrap_or_else(|e| panic!("{}: {e:?}", r.kind));
        }
    }

    #[test]
    fn lookups() {
        assert_eq!(
            lookup("apps", "v1", "deployments").unwrap().kind,
            "Deployment"
        );
        assert_eq!(lookup_kind("v1", "Pod").unwrap().plural, "pods");
        assert!(lookup_kind("apps/v1", "Pod").is_none());
        assert_eq!(
            groups(),
            vec![
                "apps",
                "discovery.k8s.io",
                "coordination.k8s.io",
                "rbac.authorization.k8s.io"
            ]
        );
    }
}
