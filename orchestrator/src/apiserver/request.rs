//! What a resource request asks for: the target parsed from the URL path, the verb, the query
//! parameters, and the request body decoded from whatever media type the client sent.

use std::collections::HashMap;

use axum::http::{HeaderMap, Method};
use serde_json::Value;

use super::status::{ApiError, ApiResult};
use crate::api::{self, Resource, Subresource};

/// The object or collection a request addresses.
#[derive(Debug, Clone)]
pub struct Target {
    pub resource: &'static Resource,
    /// The namespace from the path (`None` for cluster-scoped or all-namespaces requests).
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<Subresource>,
}

/// Parses `/api/v1/...` and `/apis/<group>/<version>/...` resource paths. `Ok(None)` means the path is
/// not a resource path at all (discovery handles it).
pub fn parse_target(path: &str) -> ApiResult<Option<Target>> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Ok(None),
    };
    if rest.is_empty() {
        return Ok(None);
    }
    let not_found = || {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    };
    let find = |plural: &str| api::lookup(group, version, plural).ok_or_else(not_found);
    // `/namespaces/<ns>/status` and `/namespaces/<ns>/finalize` are a namespace's subresources, not
    // collections inside it.
    if let (["namespaces", ns, sub], "") = (rest, group) {
        if let Some(s) = Subresource::parse(sub) {
            let r = find("namespaces")?;
            if r.has(s) {
                return Ok(Some(Target {
                    resource: r,
                    namespace: None,
                    name: Some(ns.to_string()),
                    sub: Some(s),
                }));
            }
        }
    }
    let (namespace, rest): (Option<String>, &[&str]) = match rest {
        ["namespaces", ns, more @ ..] if !more.is_empty() => (Some(ns.to_string()), more),
        _ => (None, rest),
    };
    let (resource, name, sub) = match rest {
        [plural] => (find(plural)?, None, None),
        [plural, name] => (find(plural)?, Some(name.to_string()), None),
        [plural, name, sub] => {
            let r = find(plural)?;
            let s = Subresource::parse(sub)
                .filter(|s| r.has(*s))
                .ok_or_else(not_found)?;
            (r, Some(name.to_string()), Some(s))
        }
        _ => return Err(not_found()),
    };
    if namespace.is_some() && !resource.namespaced {
        return Err(not_found());
    }
    Ok(Some(Target {
        resource,
        namespace,
        name,
        sub,
    }))
}

/// Query parameters, first value of each.
#[derive(Debug, Default, Clone)]
pub struct Query(HashMap<String, String>);

impl Query {
    pub fn parse(q: Option<&str>) -> Query {
        let mut m = HashMap::new();
        for (k, v) in form_urlencoded::parse(q.unwrap_or("").as_bytes()) {
            m.entry(k.into_owned()).or_insert_with(|| v.into_owned());
        }
        Query(m)
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    pub fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1"))
    }

    pub fn int(&self, k: &str) -> ApiResult<Option<i64>> {
        match self.get(k) {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| ApiError::bad_request(format!("invalid value for {k}: {v:?}"))),
        }
    }

    pub fn remove(&mut self, k: &str) {
        self.0.remove(k);
    }

    pub fn set(&mut self, k: &str, v: &str) {
        self.0.insert(k.to_string(), v.to_string());
    }

    pub fn clone_without_watch(&self) -> Query {
        let mut q = self.clone();
        q.0.remove("watch");
        q
    }

    pub fn dry_run(&self) -> bool {
        self.get("dryRun") == Some("All")
    }
}

/// The Kubernetes verb of a request, as metrics and errors name it.
pub fn verb(method: &Method, target: Option<&Target>, query: &Query) -> &'static str {
    let named = target.is_some_and(|t| t.name.is_some());
    match *method {
        Method::GET if query.flag("watch") => "watch",
        Method::GET if named => "get",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => "unknown",
    }
}

/// The largest request body accepted (Kubernetes' limit is 3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| {
            s.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

/// Decodes a create or update body: JSON, YAML or Kubernetes protobuf.
pub fn decode_object(headers: &HeaderMap, body: &[u8]) -> ApiResult<Value> {
    let mt = media_type(headers);
    match mt.as_str() {
        "" | "application/json" | "*/*" => decode_json(body),
        "application/yaml" | "application/x-yaml" | "text/yaml" => decode_yaml(body),
        "application/vnd.kubernetes.protobuf" => super::protobuf::decode(body),
        other => Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {other})"),
        )),
    }
}

pub fn decode_json(body: &[u8]) -> ApiResult<Value> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding request body as JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    Ok(v)
}

pub fn decode_yaml(body: &[u8]) -> ApiResult<Value> {
    let v: Value = serde_yaml::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding request body as YAML: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request("the request body must be an object"));
    }
    Ok(v)
}

/// The kinds of PATCH bodies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

pub fn patch_type(headers: &HeaderMap) -> ApiResult<PatchType> {
    match media_type(headers).as_str() {
        "application/json-patch+json" => Ok(PatchType::Json),
        "application/merge-patch+json" => Ok(PatchType::Merge),
        "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
        "application/apply-patch+yaml" => Ok(PatchType::Apply),
        _ => Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json",
        )),
    }
}

/// Whether the client asked for a `meta.k8s.io/v1` Table.
pub fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get_all(axum::http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|m| m.contains("as=Table") && m.contains("g=meta.k8s.io") && m.contains("v=v1"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let t = parse_target("/api/v1/namespaces/default/pods/p/status")
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                t.resource.kind,
                t.namespace.as_deref(),
                t.name.as_deref(),
                t.sub
            ),
            ("Pod", Some("default"), Some("p"), Some(Subresource::Status))
        );
        let t = parse_target("/api/v1/namespaces/default").unwrap().unwrap();
        assert_eq!(
            (t.resource.kind, t.namespace, t.name.as_deref()),
            ("Namespace", None, Some("default"))
        );
        let t = parse_target("/apis/apps/v1/deployments").unwrap().unwrap();
        assert_eq!(
            (t.resource.kind, t.namespace, t.name),
            ("Deployment", None, None)
        );
        assert!(parse_target("/api/v1").unwrap().is_none());
        let t = parse_target("/api/v1/namespaces/team/finalize")
            .unwrap()
            .unwrap();
        assert_eq!(
            (t.resource.kind, t.name.as_deref(), t.sub),
            ("Namespace", Some("team"), Some(Subresource::Finalize))
        );
        let t = parse_target("/api/v1/namespaces/team/status")
            .unwrap()
            .unwrap();
        assert_eq!(
            (t.resource.kind, t.sub),
            ("Namespace", Some(Subresource::Status))
        );
        assert_eq!(parse_target("/api/v1/widgets").unwrap_err().code, 404);
        assert_eq!(
            parse_target("/api/v1/namespaces/x/nodes").unwrap_err().code,
            404
        );
        assert_eq!(parse_target("/api/v1/pods/p/scale").unwrap_err().code, 404);
    }
}
