//! Discovery: `/version`, `/api`, `/apis`, `/api/v1`, `/apis/<group>/<version>`, in both the plain
//! (APIVersions, APIGroupList, APIResourceList) and the aggregated (`apidiscovery.k8s.io/v2`) forms.

use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::api::{self, Resource, Subresource};

/// The Kubernetes version this server speaks (kubectl picks its behaviour by it).
pub const KUBE_MAJOR: &str = "1";
pub const KUBE_MINOR: &str = "33";

pub fn version() -> Value {
    json!({
        "major": KUBE_MAJOR,
        "minor": KUBE_MINOR,
        "gitVersion": format!("v{KUBE_MAJOR}.{KUBE_MINOR}.0+cairn-{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, if cfg!(target_arch = "x86_64") { "amd64" } else { std::env::consts::ARCH }),
    })
}

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn sub_verbs(s: Subresource) -> &'static [&'static str] {
    match s {
        Subresource::Status | Subresource::Scale => &["get", "patch", "update"],
        Subresource::Binding | Subresource::Token => &["create"],
        Subresource::Log => &["get"],
        Subresource::Exec => &["create", "get"],
        Subresource::Finalize => &["update"],
    }
}

fn sub_kind(r: &Resource, s: Subresource) -> (&'static str, &'static str, &'static str) {
    match s {
        Subresource::Status | Subresource::Finalize => (r.group, r.version, r.kind),
        Subresource::Scale => ("autoscaling", "v1", "Scale"),
        Subresource::Binding => ("", "v1", "Binding"),
        Subresource::Log => ("", "v1", "Pod"),
        Subresource::Exec => ("", "v1", "PodExecOptions"),
        Subresource::Token => ("authentication.k8s.io", "v1", "TokenRequest"),
    }
}

fn resources_of(group: &str) -> impl Iterator<Item = &'static Resource> + '_ {
    api::RESOURCES.iter().filter(move |r| r.group == group)
}

/// The review kinds: created and answered, never stored, so only `create` is served.
/// (group, plural, kind, namespaced)
const REVIEWS: &[(&str, &str, &str, bool)] = &[
    (
        "authentication.k8s.io",
        "selfsubjectreviews",
        "SelfSubjectReview",
        false,
    ),
    (
        "authorization.k8s.io",
        "localsubjectaccessreviews",
        "LocalSubjectAccessReview",
        true,
    ),
    (
        "authorization.k8s.io",
        "selfsubjectaccessreviews",
        "SelfSubjectAccessReview",
        false,
    ),
    (
        "authorization.k8s.io",
        "selfsubjectrulesreviews",
        "SelfSubjectRulesReview",
        false,
    ),
    (
        "authorization.k8s.io",
        "subjectaccessreviews",
        "SubjectAccessReview",
        false,
    ),
];

fn reviews_of(
    group: &str,
) -> impl Iterator<Item = &'static (&'static str, &'static str, &'static str, bool)> + '_ {
    REVIEWS.iter().filter(move |r| r.0 == group)
}

/// Every group served besides core: the stored kinds' groups, then the review groups.
fn all_groups() -> Vec<&'static str> {
    let mut g = api::groups();
    for r in REVIEWS {
        if !g.contains(&r.0) {
            g.push(r.0);
        }
    }
    g
}

/// `APIResourceList` of one group version.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    if (resources_of(group).next().is_none() && reviews_of(group).next().is_none())
        || version != "v1"
    {
        return None;
    }
    let mut out = Vec::new();
    for (_, plural, kind, namespaced) in reviews_of(group) {
        out.push(
            json!({"name": plural, "singularName": "", "namespaced": namespaced,
            "kind": kind, "verbs": ["create"]}),
        );
    }
    for r in resources_of(group) {
        let mut e = json!({"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
            "kind": r.kind, "verbs": VERBS, "storageVersionHash": ""});
        if !r.short_names.is_empty() {
            e["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            e["categories"] = json!(r.categories);
        }
        out.push(e);
        for s in r.subresources {
            let (g, v, k) = sub_kind(r, *s);
            let mut e = json!({"name": format!("{}/{}", r.plural, s.name()), "singularName": "",
                "namespaced": r.namespaced, "kind": k, "verbs": sub_verbs(*s)});
            if g != r.group || v != r.version {
                e["group"] = json!(g);
                e["version"] = json!(v);
            }
            out.push(e);
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": out}),
    )
}

fn aggregated_group(group: &str) -> Value {
    let resources: Vec<Value> = resources_of(group)
        .map(|r| {
            let mut e = json!({
                "resource": r.plural,
                "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
                "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                "singularResource": r.singular,
                "verbs": VERBS,
            });
            if !r.short_names.is_empty() {
                e["shortNames"] = json!(r.short_names);
            }
            if !r.categories.is_empty() {
                e["categories"] = json!(r.categories);
            }
            let subs: Vec<Value> = r
                .subresources
                .iter()
                .map(|s| {
                    let (g, v, k) = sub_kind(r, *s);
                    json!({"subresource": s.name(), "responseKind": {"group": g, "version": v, "kind": k}, "verbs": sub_verbs(*s)})
                })
                .collect();
            if !subs.is_empty() {
                e["subresources"] = json!(subs);
            }
            e
        })
        .chain(reviews_of(group).map(|(g, plural, kind, namespaced)| {
            json!({
                "resource": plural,
                "responseKind": {"group": g, "version": "v1", "kind": kind},
                "scope": if *namespaced { "Namespaced" } else { "Cluster" },
                "singularResource": plural.trim_end_matches('s'),
                "verbs": ["create"],
            })
        }))
        .collect();
    json!({"metadata": {"name": group, "creationTimestamp": null},
        "versions": [{"version": "v1", "resources": resources, "freshness": "Current"}]})
}

/// The aggregated media type the client accepts, if any (v2 preferred over v2beta1).
fn aggregated_accept(headers: &HeaderMap) -> Option<&'static str> {
    let accept: Vec<String> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|m| m.replace(' ', ""))
        .collect();
    for (v, mt) in [
        (
            "v=v2;",
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
        ),
        (
            "v=v2beta1;",
            "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList",
        ),
    ] {
        if accept.iter().any(|a| {
            a.contains("g=apidiscovery.k8s.io")
                && a.contains(v)
                && a.contains("as=APIGroupDiscoveryList")
        }) {
            return Some(mt);
        }
    }
    None
}

fn json_response(v: &Value, content_type: &'static str) -> Response {
    let mut resp = serde_json::to_vec(v).unwrap_or_default().into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// `/api`.
pub fn core(headers: &HeaderMap) -> Response {
    if let Some(mt) = aggregated_accept(headers) {
        let v = if mt.contains("v2beta1") {
            "v2beta1"
        } else {
            "v2"
        };
        let body = json!({"kind": "APIGroupDiscoveryList", "apiVersion": format!("apidiscovery.k8s.io/{v}"),
            "metadata": {}, "items": [aggregated_group("")]});
        return json_response(&body, mt);
    }
    json_response(
        &json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]}),
        "application/json",
    )
}

/// `/apis`.
pub fn groups(headers: &HeaderMap) -> Response {
    if let Some(mt) = aggregated_accept(headers) {
        let v = if mt.contains("v2beta1") {
            "v2beta1"
        } else {
            "v2"
        };
        let items: Vec<Value> = all_groups().into_iter().map(aggregated_group).collect();
        let body = json!({"kind": "APIGroupDiscoveryList", "apiVersion": format!("apidiscovery.k8s.io/{v}"),
            "metadata": {}, "items": items});
        return json_response(&body, mt);
    }
    let groups: Vec<Value> = all_groups()
        .into_iter()
        .map(|g| {
            let gv = json!({"groupVersion": format!("{g}/v1"), "version": "v1"});
            json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json_response(
        &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
        "application/json",
    )
}

/// `/apis/<group>`.
pub fn group(group: &str) -> Option<Value> {
    if !all_groups().contains(&group) {
        return None;
    }
    let gv = json!({"groupVersion": format!("{group}/v1"), "version": "v1"});
    Some(
        json!({"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": [gv.clone()], "preferredVersion": gv}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_lists_carry_subresources() {
        let l = resource_list("", "v1").unwrap();
        let names: Vec<&str> = l["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        for n in [
            "pods",
            "pods/status",
            "pods/log",
            "pods/exec",
            "pods/binding",
            "services",
            "namespaces",
        ] {
            assert!(names.contains(&n), "{n}");
        }
        let apps = resource_list("apps", "v1").unwrap();
        let scale = apps["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "deployments/scale")
            .unwrap();
        assert_eq!(scale["group"], "autoscaling");
        assert!(resource_list("apps", "v2").is_none());
    }
}
