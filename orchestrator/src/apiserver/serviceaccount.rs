//! What the API server does for ServiceAccounts beyond storing them: the `token` subresource
//! (TokenRequest, authentication.k8s.io/v1), which issues a signed token for the account,
//! optionally bound to a Pod or Secret; and the ServiceAccount admission plug-in for pods, which
//! fills `spec.serviceAccountName`, refuses an account that does not exist, copies its image pull
//! secrets, and (unless the pod or the account opts out) adds the `kube-api-access-xxxxx`
//! projected volume (token, `kube-root-ca.crt`'s CA and the namespace) mounted read-only in
//! every container.
//!
//! Reads through the registry; signs through `satoken`. Never imports the controllers or the
//! agent.

use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

use super::request::{self, Target};
use super::satoken::{self, Bound, Claims, ObjectRef};
use super::status::{ApiError, ApiResult};
use super::State;
use crate::api::validation::FieldError;
use crate::api::{self, meta, Resource};
use crate::registry::{ReadRevision, StoreError};

/// Where the token volume is mounted in every container.
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The prefix of the token volume's name; five random characters follow.
pub const TOKEN_VOLUME_PREFIX: &str = "kube-api-access-";

/// The ConfigMap every namespace gets with the cluster's CA.
pub const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";

/// The lifetime the token volume asks for: a little over an hour, so that the API server can tell
/// these tokens apart from others, as Kubernetes does.
pub const TOKEN_VOLUME_EXPIRATION: i64 = 3607;

fn service_accounts() -> &'static Resource {
    api::lookup("", "v1", "serviceaccounts").expect("serviceaccounts are served")
}

fn pods() -> &'static Resource {
    api::lookup("", "v1", "pods").expect("pods are served")
}

fn secrets() -> &'static Resource {
    api::lookup("", "v1", "secrets").expect("secrets are served")
}

fn nodes() -> &'static Resource {
    api::lookup("", "v1", "nodes").expect("nodes are served")
}

/// The object as this member has it, or (when it has none) as the leader has it: a read that is
/// cheap in the usual case and never calls a just-created object missing.
async fn get_local_first(
    st: &State,
    r: &Resource,
    ns: &str,
    name: &str,
) -> Result<Value, StoreError> {
    match st.registry.get_at(r, ns, name, ReadRevision::Any).await {
        Err(StoreError::NotFound) => st.registry.get(r, ns, name).await,
        other => other,
    }
}

fn token_request_invalid(errs: &[FieldError]) -> ApiError {
    let msgs: Vec<String> = errs.iter().map(FieldError::message).collect();
    let joined = if msgs.len() == 1 {
        msgs[0].clone()
    } else {
        format!("[{}]", msgs.join(", "))
    };
    ApiError {
        details: Some(
            json!({"name": "", "group": "authentication.k8s.io", "kind": "TokenRequest",
            "causes": errs.iter().map(|e| json!({"reason": e.reason, "message": e.detail, "field": e.field})).collect::<Vec<_>>()}),
        ),
        ..ApiError::new(
            422,
            "Invalid",
            format!("TokenRequest.authentication.k8s.io \"\" is invalid: {joined}"),
        )
    }
}

fn rfc3339(seconds: i64) -> String {
    jiff::Timestamp::from_second(seconds)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// POST `.../serviceaccounts/<name>/token`: a TokenRequest answered with its token.
pub async fn create_token(
    st: &State,
    t: &Target,
    headers: &HeaderMap,
    body: &[u8],
) -> ApiResult<(StatusCode, Value)> {
    let Some(issuer) = st.service_accounts.as_ref() else {
        return Err(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    };
    let ns = t.namespace.clone().unwrap_or_default();
    let name = t.name.clone().unwrap_or_default();
    let req = request::decode_object(headers, body)?;
    if let Some(v) = req["apiVersion"].as_str().filter(|v| !v.is_empty()) {
        if v != "authentication.k8s.io/v1" {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version (authentication.k8s.io/v1)"
            )));
        }
    }
    let spec = &req["spec"];
    let expiration = match &spec["expirationSeconds"] {
        Value::Null => satoken::DEFAULT_EXPIRATION_SECONDS,
        v => v.as_i64().ok_or_else(|| {
            ApiError::bad_request("TokenRequest: spec.expirationSeconds must be an integer")
        })?,
    };
    let mut errs = Vec::new();
    if expiration < satoken::MIN_EXPIRATION_SECONDS {
        errs.push(FieldError::invalid(
            "spec.expirationSeconds",
            &json!(expiration),
            "may not specify a duration less than 10 minutes",
        ));
    }
    if expiration > 1i64 << 32 {
        errs.push(FieldError::invalid(
            "spec.expirationSeconds",
            &json!(expiration),
            "may not specify a duration larger than 2^32 seconds",
        ));
    }
    if !errs.is_empty() {
        return Err(token_request_invalid(&errs));
    }
    let mut audiences: Vec<String> = spec["audiences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();

    let sa = st
        .registry
        .get(service_accounts(), &ns, &name)
        .await
        .map_err(|e| ApiError::store(service_accounts(), &name, e))?;
    let bound = match spec.get("boundObjectRef").filter(|b| !b.is_null()) {
        Some(r) => Some(bind(st, &ns, &name, r).await?),
        None => None,
    };
    if audiences.is_empty() {
        audiences = issuer.audiences().to_vec();
    }
    let expiration = issuer.clamp_expiration(expiration);
    let now = jiff::Timestamp::now().as_second();
    let claims = Claims::new(
        issuer.issuer(),
        &ns,
        ObjectRef {
            name: name.clone(),
            uid: meta::uid(&sa).to_string(),
        },
        bound,
        audiences.clone(),
        now,
        expiration,
    );
    let token = issuer
        .sign(&claims)
        .map_err(|e| ApiError::internal(format!("failed to generate token: {e}")))?;
    let mut out_spec = json!({"audiences": audiences, "expirationSeconds": expiration});
    if let Some(r) = spec.get("boundObjectRef").filter(|b| !b.is_null()) {
        out_spec["boundObjectRef"] = r.clone();
    }
    let metadata = match req.get("metadata") {
        Some(m) if m.is_object() => m.clone(),
        _ => json!({"creationTimestamp": null}),
    };
    Ok((
        StatusCode::CREATED,
        json!({"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
            "metadata": metadata, "spec": out_spec,
            "status": {"token": token, "expirationTimestamp": rfc3339(claims.exp)}}),
    ))
}

/// The object a TokenRequest's `boundObjectRef` names, checked as Kubernetes checks it.
async fn bind(st: &State, ns: &str, sa: &str, r: &Value) -> ApiResult<Bound> {
    let kind = r["kind"].as_str().unwrap_or("");
    let api_version = r["apiVersion"].as_str().unwrap_or("");
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let name = r["name"].as_str().unwrap_or("");
    let want_uid = r["uid"].as_str().unwrap_or("");
    let (obj, what) = match (group, kind) {
        ("", "Pod") => {
            let pod = st
                .registry
                .get(pods(), ns, name)
                .await
                .map_err(|e| ApiError::store(pods(), name, e))?;
            if pod["spec"]["serviceAccountName"].as_str().unwrap_or("") != sa {
                return Err(ApiError::bad_request(format!(
                    "cannot bind token for serviceaccount {sa:?} to pod running with different serviceaccount name."
                )));
            }
            (pod, "Pod")
        }
        ("", "Secret") => {
            let secret = st
                .registry
                .get(secrets(), ns, name)
                .await
                .map_err(|e| ApiError::store(secrets(), name, e))?;
            (secret, "Secret")
        }
        _ => {
            return Err(ApiError::bad_request(format!(
                "cannot bind token to object of type {group}/{version}, Kind={kind}"
            )))
        }
    };
    let uid = meta::uid(&obj).to_string();
    if !want_uid.is_empty() && want_uid != uid {
        return Err(ApiError {
            details: Some(json!({"name": name, "kind": what})),
            ..ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {what} {name:?}: the UID in the bound object reference ({want_uid}) does not match the UID in record. The object might have been deleted and then recreated"
                ),
            )
        });
    }
    let me = ObjectRef {
        name: name.to_string(),
        uid,
    };
    if what == "Secret" {
        return Ok(Bound::Secret(me));
    }
    // The pod's node, when it has one that still exists.
    let node = match obj["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
        Some(n) => get_local_first(st, nodes(), "", n)
            .await
            .ok()
            .map(|node| ObjectRef {
                name: n.to_string(),
                uid: meta::uid(&node).to_string(),
            }),
        None => None,
    };
    Ok(Bound::Pod { pod: me, node })
}

/// Five characters of Kubernetes' generated-name alphabet (no vowels, no look-alikes).
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect()
}

/// The token volume's source: a projection of a token for the pod, the cluster's CA and the
/// namespace.
pub fn token_volume_source() -> Value {
    json!({"defaultMode": 0o644, "sources": [
        {"serviceAccountToken": {"expirationSeconds": TOKEN_VOLUME_EXPIRATION, "path": "token"}},
        {"configMap": {"name": ROOT_CA_CONFIG_MAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace",
            "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
    ]})
}

/// Adds the token volume to `pod` and its mount to every container (and init container) that
/// has nothing mounted at [`TOKEN_MOUNT_PATH`] yet; keeps an existing `kube-api-access-` volume.
pub fn mount_token(pod: &mut Value) {
    let spec = &mut pod["spec"];
    let existing = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .find(|n| n.starts_with(TOKEN_VOLUME_PREFIX))
        .map(str::to_string);
    let volume = existing
        .clone()
        .unwrap_or_else(|| format!("{TOKEN_VOLUME_PREFIX}{}", random_suffix()));
    let mut needed = false;
    for list in ["initContainers", "containers"] {
        let Some(cs) = spec[list].as_array_mut() else {
            continue;
        };
        for c in cs {
            let mounted = c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|m| m["mountPath"] == TOKEN_MOUNT_PATH);
            if mounted {
                continue;
            }
            let m = json!({"name": volume, "readOnly": true, "mountPath": TOKEN_MOUNT_PATH});
            match c["volumeMounts"].as_array_mut() {
                Some(ms) => ms.push(m),
                None => c["volumeMounts"] = json!([m]),
            }
            needed = true;
        }
    }
    if existing.is_none() && needed {
        let v = json!({"name": volume, "projected": token_volume_source()});
        match spec["volumes"].as_array_mut() {
            Some(vs) => vs.push(v),
            None => spec["volumes"] = json!([v]),
        }
    }
}

/// The ServiceAccount admission plug-in for a pod being created.
///
/// One leniency: a pod naming the `default` account of a namespace whose account the controller
/// manager has not created yet is admitted without a token volume, rather than refused, so a
/// cluster without the controller manager still runs pods.
pub async fn admit_pod(st: &State, pod: &mut Value) -> ApiResult<()> {
    // Static pods' mirrors never get API credentials.
    if !pod["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_null() {
        return Ok(());
    }
    let ns = meta::namespace(pod).to_string();
    let name = match pod["spec"]["serviceAccountName"].as_str() {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => {
            pod["spec"]["serviceAccountName"] = json!("default");
            "default".to_string()
        }
    };
    let sa = match get_local_first(st, service_accounts(), &ns, &name).await {
        Ok(sa) => sa,
        Err(StoreError::NotFound) if name == "default" => return Ok(()),
        Err(StoreError::NotFound) => {
            return Err(ApiError::forbidden(
                pods(),
                meta::name(pod),
                &format!(
                "error looking up service account {ns}/{name}: serviceaccount {name:?} not found"
            ),
            ))
        }
        Err(e) => return Err(ApiError::store(service_accounts(), &name, e)),
    };
    let pull = &sa["imagePullSecrets"];
    if pod["spec"]["imagePullSecrets"]
        .as_array()
        .is_none_or(|a| a.is_empty())
        && pull.as_array().is_some_and(|a| !a.is_empty())
    {
        pod["spec"]["imagePullSecrets"] = pull.clone();
    }
    let automount = pod["spec"]["automountServiceAccountToken"]
        .as_bool()
        .or(sa["automountServiceAccountToken"].as_bool())
        .unwrap_or(true);
    if automount {
        mount_token(pod);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_container_mounts_one_token_volume_read_only() {
        let mut pod = json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": {
            "initContainers": [{"name": "init", "image": "x"}],
            "containers": [
                {"name": "a", "image": "x"},
                {"name": "b", "image": "x", "volumeMounts": [{"name": "own", "mountPath": TOKEN_MOUNT_PATH}]},
            ],
            "volumes": [{"name": "own", "emptyDir": {}}]}});
        mount_token(&mut pod);
        let vols = pod["spec"]["volumes"].as_array().unwrap();
        assert_eq!(vols.len(), 2);
        let name = vols[1]["name"].as_str().unwrap().to_string();
        assert!(
            name.starts_with("kube-api-access-") && name.len() == 21,
            "{name}"
        );
        assert_eq!(vols[1]["projected"], token_volume_source());
        assert_eq!(
            pod["spec"]["initContainers"][0]["volumeMounts"],
            json!([{"name": name, "readOnly": true, "mountPath": TOKEN_MOUNT_PATH}])
        );
        assert_eq!(
            pod["spec"]["containers"][0]["volumeMounts"][0]["name"],
            json!(name)
        );
        // A container with its own mount at the path keeps it.
        assert_eq!(
            pod["spec"]["containers"][1]["volumeMounts"],
            json!([{"name": "own", "mountPath": TOKEN_MOUNT_PATH}])
        );
        // Admitting again adds nothing.
        let before = pod.clone();
        mount_token(&mut pod);
        assert_eq!(pod, before);
    }

    #[test]
    fn the_projection_asks_for_the_kubernetes_lifetime_and_sources() {
        let src = token_volume_source();
        assert_eq!(src["defaultMode"], 420);
        assert_eq!(
            src["sources"][0]["serviceAccountToken"]["expirationSeconds"],
            3607
        );
        assert_eq!(src["sources"][1]["configMap"]["name"], "kube-root-ca.crt");
        assert_eq!(
            src["sources"][2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
            "metadata.namespace"
        );
    }
}
