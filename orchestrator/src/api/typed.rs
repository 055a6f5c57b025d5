//! Checking a JSON object against its k8s-openapi type.
//!
//! The object is decoded into the typed struct and encoded back. A decode failure is a malformed
//! object (wrong type, bad enum of a well-known shape); a key present in the input but missing from the
//! round-tripped output is a field the type does not have, which `fieldValidation` decides about. The
//! round-tripped value is the canonical object: unknown fields are gone from it, as Kubernetes drops
//! them when it decodes.

use serde_json::Value;

use super::Resource;

/// The outcome of a successful check.
#[derive(Debug)]
pub struct Checked {
    /// The object as its type encodes it: unknown fields removed.
    pub object: Value,
    /// Paths of fields the type does not know, in Kubernetes' notation (`spec.containers[0].imagee`).
    pub unknown: Vec<String>,
}

fn roundtrip<T>(obj: &Value) -> Result<Value, String>
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let typed: T = serde_path_to_error::deserialize(obj).map_err(|e| {
        let path = e.path().to_string();
        if path == "." || path.is_empty() {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })?;
    serde_json::to_value(&typed).map_err(|e| e.to_string())
}

/// Decodes `obj` as `r`'s type; the error is the decoder's message with the failing field's path.
pub fn check(r: &Resource, obj: &Value) -> Result<Checked, String> {
    use k8s_openapi::api::discovery::v1 as disc;
    use k8s_openapi::api::rbac::v1 as rbac;
    use k8s_openapi::api::{apps::v1 as apps, coordination::v1 as coord, core::v1 as core};
    let object = match (r.group, r.kind) {
        ("", "Namespace") => roundtrip::<core::Namespace>(obj),
        ("", "Node") => roundtrip::<core::Node>(obj),
        ("", "Pod") => roundtrip::<core::Pod>(obj),
        ("", "Service") => roundtrip::<core::Service>(obj),
        ("", "Endpoints") => roundtrip::<core::Endpoints>(obj),
        ("", "ConfigMap") => roundtrip::<core::ConfigMap>(obj),
        ("", "Secret") => roundtrip::<core::Secret>(obj),
        ("", "Event") => roundtrip::<core::Event>(obj),
        ("", "ResourceQuota") => roundtrip::<core::ResourceQuota>(obj),
        ("", "LimitRange") => roundtrip::<core::LimitRange>(obj),
        ("", "ServiceAccount") => roundtrip::<core::ServiceAccount>(obj),
        ("apps", "Deployment") => roundtrip::<apps::Deployment>(obj),
        ("apps", "ReplicaSet") => roundtrip::<apps::ReplicaSet>(obj),
        ("discovery.k8s.io", "EndpointSlice") => roundtrip::<disc::EndpointSlice>(obj),
        ("coordination.k8s.io", "Lease") => roundtrip::<coord::Lease>(obj),
        ("rbac.authorization.k8s.io", "ClusterRole") => roundtrip::<rbac::ClusterRole>(obj),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => {
            roundtrip::<rbac::ClusterRoleBinding>(obj)
        }
        ("rbac.authorization.k8s.io", "Role") => roundtrip::<rbac::Role>(obj),
        ("rbac.authorization.k8s.io", "RoleBinding") => roundtrip::<rbac::RoleBinding>(obj),
        (g, k) => Err(format!("no schema for {k} in group {g:?}")),
    }?;
    let mut unknown = Vec::new();
    unknown_fields(obj, &object, &mut String::new(), &mut unknown);
    Ok(Checked { object, unknown })
}

/// Decodes a subresource body (`Scale`, `Binding`) the same way.
pub fn check_scale(obj: &Value) -> Result<Checked, String> {
    let object = roundtrip::<k8s_openapi::api::autoscaling::v1::Scale>(obj)?;
    let mut unknown = Vec::new();
    unknown_fields(obj, &object, &mut String::new(), &mut unknown);
    Ok(Checked { object, unknown })
}

pub fn check_binding(obj: &Value) -> Result<Checked, String> {
    let object = roundtrip::<k8s_openapi::api::core::v1::Binding>(obj)?;
    let mut unknown = Vec::new();
    unknown_fields(obj, &object, &mut String::new(), &mut unknown);
    Ok(Checked { object, unknown })
}

fn unknown_fields(input: &Value, output: &Value, path: &mut String, out: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            for (k, v) in i {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                match o.get(k) {
                    Some(ov) => unknown_fields(v, ov, path, out),
                    None if !v.is_null() => out.push(path.clone()),
                    None => {}
                }
                path.truncate(len);
            }
        }
        (Value::Array(i), Value::Array(o)) => {
            for (n, (iv, ov)) in i.iter().zip(o).enumerate() {
                let len = path.len();
                path.push_str(&format!("[{n}]"));
                unknown_fields(iv, ov, path, out);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_reported_with_their_path() {
        let pod = crate::api::lookup_kind("v1", "Pod").unwrap();
        let obj = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labelz": {}},
            "spec": {"containers": [{"name": "c", "image": "i", "imagePullPolicyy": "Always"}]}});
        let c = check(pod, &obj).unwrap();
        assert_eq!(
            c.unknown,
            vec!["metadata.labelz", "spec.containers[0].imagePullPolicyy"]
        );
        assert!(c.object["spec"]["containers"][0]
            .get("imagePullPolicyy")
            .is_none());
    }

    #[test]
    fn wrong_types_fail_with_a_path() {
        let pod = crate::api::lookup_kind("v1", "Pod").unwrap();
        let obj = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "ports": [{"containerPort": "80"}]}]}});
        let e = check(pod, &obj).unwrap_err();
        assert!(
            e.starts_with("spec.containers[0].ports[0].containerPort"),
            "{e}"
        );
    }
}
