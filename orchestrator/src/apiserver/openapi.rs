//! OpenAPI v3: `/openapi/v3` lists one document per group version; each document has the paths of
//! its resources (every operation tagged with `x-kubernetes-group-version-kind`, PATCH listing the
//! `fieldValidation` parameter so kubectl leaves validation to this server) and the full closure of
//! schemas the kinds use, generated from k8s-openapi's types with their upstream descriptions, so
//! `kubectl explain` works.

use std::collections::HashMap;
use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};

use super::status::ApiError;
use crate::api::{self, Resource};

fn gv_path(group: &str) -> String {
    if group.is_empty() {
        "api/v1".into()
    } else {
        format!("apis/{group}/v1")
    }
}

/// The documents, built once: path (`api/v1`) -> serialized JSON and its hash.
fn documents() -> &'static HashMap<String, (Vec<u8>, String)> {
    static DOCS: OnceLock<HashMap<String, (Vec<u8>, String)>> = OnceLock::new();
    DOCS.get_or_init(|| {
        let mut groups = vec![""];
        groups.extend(api::groups());
        groups
            .into_iter()
            .map(|g| {
                let doc = serde_json::to_vec(&document_for(g)).unwrap_or_default();
                let hash = {
                    use sha2::Digest;
                    let d = sha2::Sha512::digest(&doc);
                    d.iter()
                        .take(32)
                        .map(|b| format!("{b:02X}"))
                        .collect::<String>()
                };
                (gv_path(g), (doc, hash))
            })
            .collect()
    })
}

pub async fn root() -> Response {
    let mut paths = Map::new();
    let mut keys: Vec<&String> = documents().keys().collect();
    keys.sort();
    for k in keys {
        let (_, hash) = &documents()[k];
        paths.insert(
            k.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{k}?hash={hash}")}),
        );
    }
    axum::Json(json!({"paths": paths})).into_response()
}

pub async fn document(Path(path): Path<String>) -> Response {
    match documents().get(path.trim_matches('/')) {
        Some((doc, _)) => {
            let mut resp = doc.clone().into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        None => ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .into_response(),
    }
}

fn gvk(r: &Resource) -> Value {
    json!({"group": r.group, "kind": r.kind, "version": r.version})
}

/// Registers the kind's schema and returns its definition name.
fn register(gen: &mut schemars::SchemaGenerator, r: &Resource) -> Option<String> {
    use k8s_openapi::api::{
        apps::v1 as apps, coordination::v1 as coord, core::v1 as core, discovery::v1 as disc,
        rbac::v1 as rbac,
    };
    let schema = match (r.group, r.kind) {
        ("", "Namespace") => gen.subschema_for::<core::Namespace>(),
        ("", "Node") => gen.subschema_for::<core::Node>(),
        ("", "Pod") => gen.subschema_for::<core::Pod>(),
        ("", "Service") => gen.subschema_for::<core::Service>(),
        ("", "Endpoints") => gen.subschema_for::<core::Endpoints>(),
        ("", "ConfigMap") => gen.subschema_for::<core::ConfigMap>(),
        ("", "Secret") => gen.subschema_for::<core::Secret>(),
        ("", "Event") => gen.subschema_for::<core::Event>(),
        ("", "ResourceQuota") => gen.subschema_for::<core::ResourceQuota>(),
        ("", "LimitRange") => gen.subschema_for::<core::LimitRange>(),
        ("", "ServiceAccount") => gen.subschema_for::<core::ServiceAccount>(),
        ("apps", "Deployment") => gen.subschema_for::<apps::Deployment>(),
        ("apps", "ReplicaSet") => gen.subschema_for::<apps::ReplicaSet>(),
        ("discovery.k8s.io", "EndpointSlice") => gen.subschema_for::<disc::EndpointSlice>(),
        ("coordination.k8s.io", "Lease") => gen.subschema_for::<coord::Lease>(),
        ("rbac.authorization.k8s.io", "ClusterRole") => gen.subschema_for::<rbac::ClusterRole>(),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => {
            gen.subschema_for::<rbac::ClusterRoleBinding>()
        }
        ("rbac.authorization.k8s.io", "Role") => gen.subschema_for::<rbac::Role>(),
        ("rbac.authorization.k8s.io", "RoleBinding") => gen.subschema_for::<rbac::RoleBinding>(),
        _ => return None,
    };
    schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|s| s.rsplit('/').next())
        .map(str::to_string)
}

fn param(name: &str, location: &str, ty: &str, required: bool) -> Value {
    json!({"name": name, "in": location, "required": required, "schema": {"type": ty, "uniqueItems": true}})
}

fn operation(
    r: &Resource,
    verb: &str,
    op_id: String,
    schema_ref: &str,
    extra: Vec<Value>,
) -> Value {
    let mut op = json!({
        "operationId": op_id,
        "x-kubernetes-action": verb,
        "x-kubernetes-group-version-kind": gvk(r),
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": schema_ref}}}}},
    });
    if !extra.is_empty() {
        op["parameters"] = Value::Array(extra);
    }
    op
}

fn document_for(group: &str) -> Value {
    let mut gen = SchemaSettings::openapi3().into_generator();
    let mut names: Vec<(&'static Resource, String)> = Vec::new();
    for r in api::RESOURCES.iter().filter(|r| r.group == group) {
        if let Some(n) = register(&mut gen, r) {
            names.push((r, n));
        }
    }
    let mut schemas = gen.take_definitions(true);
    for (r, n) in &names {
        if let Some(Value::Object(s)) = schemas.get_mut(n) {
            s.insert("x-kubernetes-group-version-kind".into(), json!([gvk(r)]));
        }
    }
    let base = if group.is_empty() {
        "/api/v1".to_string()
    } else {
        format!("/apis/{group}/v1")
    };
    let mut paths = Map::new();
    for (r, n) in &names {
        let schema_ref = format!("#/components/schemas/{n}");
        let kind = r.kind;
        let write_params = || {
            vec![
                param("dryRun", "query", "string", false),
                param("fieldManager", "query", "string", false),
                param("fieldValidation", "query", "string", false),
            ]
        };
        let mut patch_params = write_params();
        patch_params.push(param("force", "query", "boolean", false));
        let collection = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("{base}/{}", r.plural)
        };
        let item = format!("{collection}/{{name}}");
        let mut coll_ops = json!({
            "get": operation(r, "list", format!("list{kind}"), &schema_ref, vec![param("labelSelector", "query", "string", false), param("fieldSelector", "query", "string", false), param("limit", "query", "integer", false), param("continue", "query", "string", false), param("watch", "query", "boolean", false)]),
            "post": operation(r, "post", format!("create{kind}"), &schema_ref, write_params()),
            "delete": operation(r, "deletecollection", format!("deleteCollection{kind}"), &schema_ref, vec![]),
        });
        let mut item_ops = json!({
            "get": operation(r, "get", format!("read{kind}"), &schema_ref, vec![]),
            "put": operation(r, "put", format!("replace{kind}"), &schema_ref, write_params()),
            "patch": operation(r, "patch", format!("patch{kind}"), &schema_ref, patch_params),
            "delete": operation(r, "delete", format!("delete{kind}"), &schema_ref, vec![]),
        });
        let path_params: Vec<Value> = if r.namespaced {
            vec![param("namespace", "path", "string", true)]
        } else {
            vec![]
        };
        coll_ops["parameters"] = json!(path_params);
        let mut ip = path_params.clone();
        ip.push(param("name", "path", "string", true));
        item_ops["parameters"] = json!(ip);
        paths.insert(collection, coll_ops);
        paths.insert(item, item_ops);
        if r.namespaced {
            let all = format!("{base}/{}", r.plural);
            paths.insert(all, json!({"get": operation(r, "list", format!("list{kind}ForAllNamespaces"), &schema_ref, vec![])}));
        }
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v{}.{}.0", super::discovery::KUBE_MAJOR, super::discovery::KUBE_MINOR)},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_document_has_pod_schema_and_patch_field_validation() {
        let doc = document_for("");
        let pod = &doc["components"]["schemas"]["io.k8s.api.core.v1.Pod"];
        assert_eq!(pod["x-kubernetes-group-version-kind"][0]["kind"], "Pod");
        assert!(
            doc["components"]["schemas"]["io.k8s.api.core.v1.Container"]["properties"]["image"]
                ["description"]
                .is_string()
        );
        let patch = &doc["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"];
        assert!(patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "fieldValidation"));
        assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Pod");
        let text = doc.to_string();
        // Every reference resolves inside the document.
        for r in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = &r[..r.find('"').unwrap()];
            assert!(doc["components"]["schemas"].get(name).is_some(), "{name}");
        }
    }
}
