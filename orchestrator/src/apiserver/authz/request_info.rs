//! A request's authorization attributes from its method, path and query, the way Kubernetes'
//! `RequestInfoFactory` derives them: by the shape of the URL alone, before anything knows whether
//! the resource exists (so an unknown resource is refused, not "not found", to a user who may not
//! see it).
//!
//! Worked examples:
//! - `GET /api/v1/namespaces/b/pods` -> list pods in b; with `?watch=1` -> watch;
//! - `GET /api/v1/namespaces/b/pods?fieldSelector=metadata.name%3Dp` -> list, name p;
//! - `POST /api/v1/namespaces/b/pods/p/exec` -> create pods/exec named p in b;
//! - `GET /api/v1/namespaces/b` -> get namespaces named b *in namespace b*;
//! - `DELETE /apis/apps/v1/namespaces/b/deployments` -> deletecollection;
//! - `GET /apis/apps/v1` or `/healthz` -> a non-resource request for that path.
//!
//! Pure string work: imports nothing of the store or the HTTP stack's state.

use super::rules::Attributes;

/// The attributes of `method` on `path` with `query` (the raw query string, if any).
pub fn attributes(method: &str, path: &str, query: Option<&str>) -> Attributes {
    let non_resource = || Attributes {
        verb: method.to_ascii_lowercase(),
        resource_request: false,
        path: path.to_string(),
        ..Default::default()
    };
    let parts: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, mut rest) = match parts.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return non_resource(),
    };
    if rest.is_empty() {
        return non_resource();
    }
    let mut verb = match method {
        "POST" => "create",
        "GET" | "HEAD" => "get",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        _ => "",
    }
    .to_string();
    // The deprecated `/watch/` path prefix.
    if rest[0] == "watch" {
        verb = "watch".into();
        rest = &rest[1..];
        if rest.is_empty() {
            return non_resource();
        }
    }
    let mut namespace = String::new();
    if rest[0] == "namespaces" && rest.len() > 1 {
        namespace = rest[1].to_string();
        // `namespaces/<n>/status` and `/finalize` are the namespace's own subresources.
        if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
            rest = &rest[2..];
        }
    }
    let mut a = Attributes {
        verb,
        resource_request: true,
        path: path.to_string(),
        namespace,
        api_group: group.to_string(),
        api_version: version.to_string(),
        resource: rest[0].to_string(),
        name: rest.get(1).map(|s| s.to_string()).unwrap_or_default(),
        subresource: rest.get(2).map(|s| s.to_string()).unwrap_or_default(),
    };
    let params: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let param = |k: &str| {
        params
            .iter()
            .find(|(pk, _)| pk == k)
            .map(|(_, v)| v.as_str())
    };
    if a.name.is_empty() && a.verb == "get" {
        a.verb = if param("watch").is_some_and(go_bool) {
            "watch".into()
        } else {
            "list".into()
        };
    }
    if a.name.is_empty() && a.verb == "delete" {
        a.verb = "deletecollection".into();
    }
    // A list or watch of one object by name is authorized as that object.
    if a.name.is_empty() && matches!(a.verb.as_str(), "list" | "watch") {
        if let Some(sel) = param("fieldSelector") {
            for term in sel.split(',') {
                let term = term.trim();
                let value = term
                    .strip_prefix("metadata.name==")
                    .or_else(|| term.strip_prefix("metadata.name="));
                if let Some(v) = value {
                    a.name = v.to_string();
                }
            }
        }
    }
    a
}

/// Go's `strconv.ParseBool`, which reads the `watch` parameter.
fn go_bool(s: &str) -> bool {
    matches!(s, "1" | "t" | "T" | "true" | "TRUE" | "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(a: &Attributes) -> (String, bool, &str, &str, &str, &str, &str) {
        (
            a.verb.clone(),
            a.resource_request,
            a.namespace.as_str(),
            a.api_group.as_str(),
            a.resource.as_str(),
            a.subresource.as_str(),
            a.name.as_str(),
        )
    }

    #[test]
    fn resource_requests() {
        type Case<'a> = (
            &'a str,
            &'a str,
            Option<&'a str>,
            (&'a str, &'a str, &'a str, &'a str, &'a str, &'a str),
        );
        let cases: &[Case] = &[
            (
                "GET",
                "/api/v1/namespaces/b/pods",
                None,
                ("list", "b", "", "pods", "", ""),
            ),
            (
                "GET",
                "/api/v1/namespaces/b/pods",
                Some("watch=1"),
                ("watch", "b", "", "pods", "", ""),
            ),
            (
                "GET",
                "/api/v1/namespaces/b/pods",
                Some("watch=true&resourceVersion=3"),
                ("watch", "b", "", "pods", "", ""),
            ),
            (
                "GET",
                "/api/v1/pods",
                Some("watch=false"),
                ("list", "", "", "pods", "", ""),
            ),
            (
                "GET",
                "/api/v1/namespaces/b/pods/p",
                None,
                ("get", "b", "", "pods", "", "p"),
            ),
            (
                "GET",
                "/api/v1/namespaces/b/pods/p/log",
                None,
                ("get", "b", "", "pods", "log", "p"),
            ),
            (
                "POST",
                "/api/v1/namespaces/b/pods/p/exec",
                None,
                ("create", "b", "", "pods", "exec", "p"),
            ),
            (
                "PUT",
                "/api/v1/namespaces/b/pods/p/status",
                None,
                ("update", "b", "", "pods", "status", "p"),
            ),
            (
                "PATCH",
                "/apis/apps/v1/namespaces/b/deployments/d/scale",
                None,
                ("patch", "b", "apps", "deployments", "scale", "d"),
            ),
            (
                "DELETE",
                "/apis/apps/v1/namespaces/b/deployments",
                None,
                ("deletecollection", "b", "apps", "deployments", "", ""),
            ),
            (
                "DELETE",
                "/apis/apps/v1/namespaces/b/deployments/d",
                None,
                ("delete", "b", "apps", "deployments", "", "d"),
            ),
            (
                "POST",
                "/api/v1/namespaces/b/secrets",
                None,
                ("create", "b", "", "secrets", "", ""),
            ),
            (
                "GET",
                "/api/v1/nodes",
                None,
                ("list", "", "", "nodes", "", ""),
            ),
            (
                "GET",
                "/api/v1/namespaces",
                None,
                ("list", "", "", "namespaces", "", ""),
            ),
            // A namespace is in its own namespace.
            (
                "GET",
                "/api/v1/namespaces/b",
                None,
                ("get", "b", "", "namespaces", "", "b"),
            ),
            (
                "PUT",
                "/api/v1/namespaces/b/finalize",
                None,
                ("update", "b", "", "namespaces", "finalize", "b"),
            ),
            (
                "GET",
                "/api/v1/namespaces/b/configmaps",
                Some("fieldSelector=metadata.name%3Dx"),
                ("list", "b", "", "configmaps", "", "x"),
            ),
            (
                "GET",
                "/api/v1/watch/namespaces/b/pods",
                None,
                ("watch", "b", "", "pods", "", ""),
            ),
            (
                "GET",
                "/api/v1/namespaces/b/widgets",
                None,
                ("list", "b", "", "widgets", "", ""),
            ),
        ];
        for (method, path, q, want) in cases {
            let a = attributes(method, path, *q);
            let got = info(&a);
            assert!(got.1, "{method} {path}");
            assert_eq!(
                (got.0.as_str(), got.2, got.3, got.4, got.5, got.6),
                *want,
                "{method} {path} {q:?}"
            );
        }
    }

    #[test]
    fn non_resource_requests() {
        for (method, path, verb) in [
            ("GET", "/healthz", "get"),
            ("GET", "/version", "get"),
            ("GET", "/api", "get"),
            ("GET", "/api/v1", "get"),
            ("GET", "/apis", "get"),
            ("GET", "/apis/apps", "get"),
            ("GET", "/apis/apps/v1", "get"),
            ("POST", "/foo", "post"),
            ("GET", "/openapi/v3", "get"),
        ] {
            let a = attributes(method, path, None);
            assert!(!a.resource_request, "{path}");
            assert_eq!((a.verb.as_str(), a.path.as_str()), (verb, path));
        }
    }
}
