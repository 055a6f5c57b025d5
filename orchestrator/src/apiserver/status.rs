//! Errors as Kubernetes `Status` objects, in its reasons, codes and wording
//! (`pods "x" not found`, `Operation cannot be fulfilled on ...`). The one place that builds them.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::api::validation::FieldError;
use crate::api::Resource;
use crate::registry::StoreError;

/// An API error: an HTTP code, a Status reason and message, and optional details.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

pub type ApiResult<T> = Result<T, ApiError>;

fn details(r: &Resource, name: &str) -> Value {
    let mut d = json!({"name": name, "kind": r.plural});
    if !r.group.is_empty() {
        d["group"] = json!(r.group);
    }
    d
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    pub fn not_found(r: &Resource, name: &str) -> ApiError {
        ApiError {
            details: Some(details(r, name)),
            ..ApiError::new(
                404,
                "NotFound",
                format!("{} {name:?} not found", r.qualified()),
            )
        }
    }

    pub fn already_exists(r: &Resource, name: &str) -> ApiError {
        ApiError {
            details: Some(details(r, name)),
            ..ApiError::new(
                409,
                "AlreadyExists",
                format!("{} {name:?} already exists", r.qualified()),
            )
        }
    }

    pub fn conflict(r: &Resource, name: &str) -> ApiError {
        Self::conflict_because(
            r,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    pub fn conflict_because(r: &Resource, name: &str, why: &str) -> ApiError {
        ApiError {
            details: Some(details(r, name)),
            ..ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} {name:?}: {why}",
                    r.qualified()
                ),
            )
        }
    }

    pub fn invalid(r: &Resource, name: &str, errs: &[FieldError]) -> ApiError {
        Self::invalid_kind(r.group, r.kind, name, errs)
    }

    /// 422 Invalid for a kind of `group`, stored or not (the review kinds are never stored).
    pub fn invalid_kind(group: &str, kind: &str, name: &str, errs: &[FieldError]) -> ApiError {
        let msgs: Vec<String> = errs.iter().map(FieldError::message).collect();
        let joined = if msgs.len() == 1 {
            msgs[0].clone()
        } else {
            format!("[{}]", msgs.join(", "))
        };
        let qualified = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let mut d = json!({"name": name, "kind": kind});
        if !group.is_empty() {
            d["group"] = json!(group);
        }
        d["causes"] = Value::Array(
            errs.iter()
                .map(|e| json!({"reason": e.reason, "message": e.detail, "field": e.field}))
                .collect(),
        );
        ApiError {
            details: Some(d),
            ..ApiError::new(
                422,
                "Invalid",
                format!("{qualified} {name:?} is invalid: {joined}"),
            )
        }
    }

    pub fn forbidden(r: &Resource, name: &str, why: &str) -> ApiError {
        let what = if name.is_empty() {
            r.qualified()
        } else {
            format!("{} {name:?}", r.qualified())
        };
        ApiError {
            details: Some(details(r, name)),
            ..ApiError::new(403, "Forbidden", format!("{what} is forbidden: {why}"))
        }
    }

    /// `apierrors.NewForbidden` for a group and resource (both empty for a non-resource path):
    /// `pods "x" is forbidden: <why>`, or `forbidden: <why>`.
    pub fn forbidden_raw(group: &str, resource: &str, name: &str, why: &str) -> ApiError {
        let qualified = if group.is_empty() {
            resource.to_string()
        } else {
            format!("{resource}.{group}")
        };
        let message = if qualified.is_empty() {
            format!("forbidden: {why}")
        } else if name.is_empty() {
            format!("{qualified} is forbidden: {why}")
        } else {
            format!("{qualified} {name:?} is forbidden: {why}")
        };
        let mut d = serde_json::Map::new();
        for (k, v) in [("name", name), ("group", group), ("kind", resource)] {
            if !v.is_empty() {
                d.insert(k.into(), json!(v));
            }
        }
        ApiError {
            details: Some(Value::Object(d)),
            ..ApiError::new(403, "Forbidden", message)
        }
    }

    pub fn expired(message: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> ApiError {
        ApiError::new(405, "MethodNotAllowed", message)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(500, "InternalError", message)
    }

    /// A store error while working on `r`/`name`.
    pub fn store(r: &Resource, name: &str, e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound => ApiError::not_found(r, name),
            StoreError::AlreadyExists => ApiError::already_exists(r, name),
            StoreError::Conflict => ApiError::conflict(r, name),
            StoreError::Expired { requested, current } => {
                ApiError::expired(format!("too old resource version: {requested} ({current})"))
            }
            StoreError::Unavailable(m) => ApiError::new(
                503,
                "ServiceUnavailable",
                format!("the object store is unavailable: {m}"),
            ),
            StoreError::Timeout(m) => ApiError::new(
                504,
                "Timeout",
                format!(
                    "Timeout: request did not complete within the object store's deadline: {m}"
                ),
            ),
            StoreError::Corrupt(m) => ApiError::internal(format!("Internal error occurred: {m}")),
            StoreError::Internal(m) => ApiError::internal(format!("Internal error occurred: {m}")),
        }
    }

    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        if self.reason.is_empty() {
            s.as_object_mut().map(|m| m.remove("reason"));
        }
        s
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (
            code,
            serde_json::to_vec(&self.to_status()).unwrap_or_default(),
        )
            .into_response();
        resp.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }
}
