//! The review APIs: authorization.k8s.io/v1 SelfSubjectAccessReview, SubjectAccessReview,
//! LocalSubjectAccessReview and SelfSubjectRulesReview (`kubectl auth can-i`, `--list`), and
//! authentication.k8s.io SelfSubjectReview (`kubectl auth whoami`; v1, and v1beta1/v1alpha1 which
//! kubectl 1.27 asks for). Each is created and answered, never stored.
//!
//! An access review asks the same [`super::authz::Authorizer`] the request path does, so what it
//! answers is what is enforced. Reaching these endpoints is itself authorized like any create
//! (`system:basic-user` grants the self reviews to every authenticated user).

use axum::http::{HeaderMap, Method};
use serde_json::{json, Value};

use super::authn::User;
use super::authz::rules::Attributes;
use super::request;
use super::status::{ApiError, ApiResult};
use super::State;
use crate::api::validation::FieldError;

/// Which review a request creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Review {
    SelfAccess,
    Access,
    LocalAccess(String),
    SelfRules,
    /// SelfSubjectReview, in the version asked for.
    SelfSubject(&'static str),
}

impl Review {
    /// The review a POST to `path` creates, if it is one.
    pub fn at(method: &Method, path: &str) -> Option<Review> {
        if method != Method::POST {
            return None;
        }
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        match segs.as_slice() {
            ["apis", "authorization.k8s.io", "v1", "selfsubjectaccessreviews"] => {
                Some(Review::SelfAccess)
            }
            ["apis", "authorization.k8s.io", "v1", "subjectaccessreviews"] => Some(Review::Access),
            ["apis", "authorization.k8s.io", "v1", "selfsubjectrulesreviews"] => {
                Some(Review::SelfRules)
            }
            ["apis", "authorization.k8s.io", "v1", "namespaces", ns, "localsubjectaccessreviews"] => {
                Some(Review::LocalAccess(ns.to_string()))
            }
            ["apis", "authentication.k8s.io", v, "selfsubjectreviews"] => match *v {
                "v1" => Some(Review::SelfSubject("v1")),
                "v1beta1" => Some(Review::SelfSubject("v1beta1")),
                "v1alpha1" => Some(Review::SelfSubject("v1alpha1")),
                _ => None,
            },
            _ => None,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Review::SelfAccess => "SelfSubjectAccessReview",
            Review::Access => "SubjectAccessReview",
            Review::LocalAccess(_) => "LocalSubjectAccessReview",
            Review::SelfRules => "SelfSubjectRulesReview",
            Review::SelfSubject(_) => "SelfSubjectReview",
        }
    }

    fn api_version(&self) -> String {
        match self {
            Review::SelfSubject(v) => format!("authentication.k8s.io/{v}"),
            _ => "authorization.k8s.io/v1".into(),
        }
    }

    fn group(&self) -> &'static str {
        match self {
            Review::SelfSubject(_) => "authentication.k8s.io",
            _ => "authorization.k8s.io",
        }
    }
}

fn invalid(review: &Review, errs: &[FieldError]) -> ApiError {
    ApiError::invalid_kind(review.group(), review.kind(), "", errs)
}

fn s(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or("").to_string()
}

/// The attributes a SubjectAccessReview spec asks about.
fn spec_attributes(review: &Review, spec: &Value) -> ApiResult<Attributes> {
    let ra = spec.get("resourceAttributes").filter(|v| !v.is_null());
    let nra = spec.get("nonResourceAttributes").filter(|v| !v.is_null());
    match (ra, nra) {
        (Some(ra), None) => Ok(Attributes {
            verb: s(ra, "verb"),
            resource_request: true,
            path: String::new(),
            namespace: s(ra, "namespace"),
            api_group: s(ra, "group"),
            api_version: s(ra, "version"),
            resource: s(ra, "resource"),
            subresource: s(ra, "subresource"),
            name: s(ra, "name"),
        }),
        (None, Some(nra)) => Ok(Attributes {
            verb: s(nra, "verb"),
            resource_request: false,
            path: s(nra, "path"),
            ..Default::default()
        }),
        (Some(_), Some(nra)) => Err(invalid(
            review,
            &[FieldError::invalid(
                "spec.nonResourceAttributes",
                nra,
                "cannot be specified in combination with resourceAttributes",
            )],
        )),
        (None, None) => Err(invalid(
            review,
            &[FieldError::invalid(
                "spec.resourceAttributes",
                &Value::from("null"),
                "exactly one of nonResourceAttributes or resourceAttributes must be specified",
            )],
        )),
    }
}

fn access_status(st: &State, user: &User, a: &Attributes) -> Value {
    let d = st.authz.decide(user, a);
    let mut status = json!({"allowed": d.allowed});
    if !d.reason.is_empty() {
        status["reason"] = json!(d.reason);
    }
    status
}

/// Answers the review in `body`, created by `user` (the impersonated user, when impersonating).
pub fn answer(
    st: &State,
    review: Review,
    user: Option<User>,
    headers: &HeaderMap,
    body: &[u8],
) -> ApiResult<Value> {
    let user = user.ok_or_else(ApiError::unauthorized)?;
    let obj = request::decode_object(headers, body)?;
    if s(&obj, "kind") != review.kind() && !s(&obj, "kind").is_empty() {
        return Err(ApiError::bad_request(format!(
            "the body is a {:?}, not a {:?}",
            s(&obj, "kind"),
            review.kind()
        )));
    }
    let spec = obj.get("spec").cloned().unwrap_or(json!({}));
    let mut metadata = obj.get("metadata").cloned().unwrap_or(json!({}));
    metadata["creationTimestamp"] = Value::Null;
    let mut out = json!({"kind": review.kind(), "apiVersion": review.api_version(),
        "metadata": metadata});
    match &review {
        Review::SelfAccess => {
            let a = spec_attributes(&review, &spec)?;
            out["spec"] = spec;
            out["status"] = access_status(st, &user, &a);
        }
        Review::Access | Review::LocalAccess(_) => {
            let mut a = spec_attributes(&review, &spec)?;
            let subject = User {
                name: s(&spec, "user"),
                groups: spec
                    .get("groups")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|g| g.as_str().map(str::to_string))
                    .collect(),
            };
            if subject.name.is_empty() && subject.groups.is_empty() {
                return Err(invalid(
                    &review,
                    &[FieldError::invalid(
                        "spec.user",
                        &Value::from(""),
                        "at least one of user or group must be specified",
                    )],
                ));
            }
            if let Review::LocalAccess(ns) = &review {
                if !a.resource_request {
                    return Err(invalid(
                        &review,
                        &[FieldError::invalid(
                            "spec.nonResourceAttributes",
                            spec.get("nonResourceAttributes").unwrap_or(&Value::Null),
                            "disallowed on this kind of request",
                        )],
                    ));
                }
                if a.namespace.is_empty() {
                    a.namespace = ns.clone();
                } else if a.namespace != *ns {
                    return Err(ApiError::bad_request(format!(
                        "spec.resourceAttributes.namespace must match namespace: {ns}"
                    )));
                }
                out["metadata"]["namespace"] = json!(ns);
            }
            out["spec"] = spec;
            out["status"] = access_status(st, &subject, &a);
        }
        Review::SelfRules => {
            let ns = s(&spec, "namespace");
            let rules = st.authz.rules_for(&user, &ns);
            let resource: Vec<Value> = rules
                .iter()
                .filter(|r| r.non_resource_urls.is_empty())
                .map(|r| {
                    let mut v = r.to_json();
                    if let Some(o) = v.as_object_mut() {
                        o.remove("nonResourceURLs");
                    }
                    v
                })
                .collect();
            let non_resource: Vec<Value> = rules
                .iter()
                .filter(|r| !r.non_resource_urls.is_empty())
                .map(|r| json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}))
                .collect();
            out["spec"] = spec;
            out["status"] = json!({"resourceRules": resource, "nonResourceRules": non_resource,
                "incomplete": false});
        }
        Review::SelfSubject(_) => {
            out["status"] = json!({"userInfo": {"username": user.name, "groups": user.groups}});
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn review_paths() {
        let p = |path| Review::at(&Method::POST, path);
        assert_eq!(
            p("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"),
            Some(Review::SelfAccess)
        );
        assert_eq!(
            p("/apis/authorization.k8s.io/v1/namespaces/a/localsubjectaccessreviews"),
            Some(Review::LocalAccess("a".into()))
        );
        assert_eq!(
            p("/apis/authentication.k8s.io/v1beta1/selfsubjectreviews"),
            Some(Review::SelfSubject("v1beta1"))
        );
        assert_eq!(p("/apis/authentication.k8s.io/v2/selfsubjectreviews"), None);
        assert_eq!(
            Review::at(
                &Method::GET,
                "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
            ),
            None
        );
    }
}
