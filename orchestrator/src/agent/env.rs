//! Container environments as the kubelet builds them, resolved here so the runtime only ever sees
//! literal values: the service links of the pod's namespace (`<SVC>_SERVICE_HOST`, `_PORT` and the
//! docker-link `<SVC>_PORT_*` forms, unless `enableServiceLinks: false`), then `envFrom`
//! ConfigMaps and Secrets, then `env` (values with `$(VAR)` expansion, configMapKeyRef,
//! secretKeyRef, fieldRef and resourceFieldRef); later definitions win. A missing ConfigMap, Secret or key that is
//! not optional refuses the pod with `CreateContainerConfigError` in the kubelet's words. It never
//! imports `registry` or `apiserver`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Service};
use kube::api::Api;
use kube::runtime::reflector::Store;

use super::convert::Refusal;

fn config_error(message: String) -> Refusal {
    Refusal {
        reason: "CreateContainerConfigError",
        message,
    }
}

/// Reads ConfigMaps and Secrets of one namespace once each.
struct Sources {
    client: kube::Client,
    ns: String,
    config_maps: HashMap<String, Option<BTreeMap<String, String>>>,
    secrets: HashMap<String, Option<BTreeMap<String, String>>>,
}

impl Sources {
    async fn config_map(
        &mut self,
        name: &str,
    ) -> Result<Option<&BTreeMap<String, String>>, Refusal> {
        if !self.config_maps.contains_key(name) {
            let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.ns);
            let got = api
                .get_opt(name)
                .await
                .map_err(|e| config_error(format!("configmap {name:?}: {e}")))?;
            self.config_maps
                .insert(name.to_string(), got.map(|c| c.data.unwrap_or_default()));
        }
        Ok(self.config_maps[name].as_ref())
    }

    async fn secret(&mut self, name: &str) -> Result<Option<&BTreeMap<String, String>>, Refusal> {
        if !self.secrets.contains_key(name) {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.ns);
            let got = api
                .get_opt(name)
                .await
                .map_err(|e| config_error(format!("secret {name:?}: {e}")))?;
            let data = got.map(|s| {
                let mut m: BTreeMap<String, String> = s
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                    .collect();
                m.extend(s.string_data.unwrap_or_default());
                m
            });
            self.secrets.insert(name.to_string(), data);
        }
        Ok(self.secrets[name].as_ref())
    }
}

/// An environment variable name as the kubelet accepts one from envFrom.
fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && !n.starts_with(|c: char| c.is_ascii_digit())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

/// `$(VAR)` replaced by earlier definitions, `$$` by `$`; unknown references stay as written.
pub fn expand(value: &str, defined: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(a) = after.strip_prefix('$') {
            out.push('$');
            rest = a;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(end) => {
                    let name = &body[..end];
                    match defined.get(name) {
                        Some(v) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = body;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The kubelet's service environment for the services of a namespace (and the API's own
/// `kubernetes` service).
pub fn service_env<'a>(
    services: impl IntoIterator<Item = &'a Service>,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for s in services {
        let Some(spec) = s.spec.as_ref() else {
            continue;
        };
        let Some(ip) = spec
            .cluster_ip
            .as_deref()
            .filter(|ip| !ip.is_empty() && *ip != "None")
        else {
            continue;
        };
        let name = s
            .metadata
            .name
            .as_deref()
            .unwrap_or("")
            .to_uppercase()
            .replace('-', "_");
        let ports = spec.ports.clone().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        env.insert(format!("{name}_SERVICE_HOST"), ip.to_string());
        env.insert(format!("{name}_SERVICE_PORT"), first.port.to_string());
        let proto = |p: &k8s_openapi::api::core::v1::ServicePort| {
            p.protocol.clone().unwrap_or_else(|| "TCP".into())
        };
        env.insert(
            format!("{name}_PORT"),
            format!("{}://{ip}:{}", proto(first).to_lowercase(), first.port),
        );
        for p in &ports {
            if let Some(pn) = p.name.as_deref().filter(|n| !n.is_empty()) {
                env.insert(
                    format!(
                        "{name}_SERVICE_PORT_{}",
                        pn.to_uppercase().replace('-', "_")
                    ),
                    p.port.to_string(),
                );
            }
            let proto = proto(p);
            let base = format!("{name}_PORT_{}_{}", p.port, proto.to_uppercase());
            env.insert(
                base.clone(),
                format!("{}://{ip}:{}", proto.to_lowercase(), p.port),
            );
            env.insert(format!("{base}_PROTO"), proto.to_lowercase());
            env.insert(format!("{base}_PORT"), p.port.to_string());
            env.insert(format!("{base}_ADDR"), ip.to_string());
        }
    }
    env
}

/// A `fieldRef` path's value for `pod`.
pub(crate) fn field(pod: &Pod, path: &str, host_ip: &str) -> Result<String, Refusal> {
    let meta = &pod.metadata;
    let keyed = |prefix: &str, map: &Option<BTreeMap<String, String>>| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix("']"))
            .map(|k| {
                map.as_ref()
                    .and_then(|m| m.get(k))
                    .cloned()
                    .unwrap_or_default()
            })
    };
    if let Some(v) = keyed("metadata.labels['", &meta.labels) {
        return Ok(v);
    }
    if let Some(v) = keyed("metadata.annotations['", &meta.annotations) {
        return Ok(v);
    }
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => host_ip.to_string(),
        "status.podIP" | "status.podIPs" => {
            status.and_then(|s| s.pod_ip.clone()).unwrap_or_default()
        }
        other => {
            return Err(config_error(format!(
                "unsupported fieldRef fieldPath {other:?}"
            )))
        }
    })
}

/// The resolved environment of each container, in definition order, by container name.
pub async fn resolve(
    client: &kube::Client,
    services: &Store<Service>,
    pod: &Pod,
    host_ip: &str,
) -> Result<HashMap<String, Vec<(String, String)>>, Refusal> {
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let mut sources = Sources {
        client: client.clone(),
        ns: ns.clone(),
        config_maps: HashMap::new(),
        secrets: HashMap::new(),
    };
    let links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    // From the agent's Service cache, as the kubelet reads its service lister: starting a pod
    // costs no API call for its service links.
    let svcs: Vec<Arc<Service>> = services
        .state()
        .into_iter()
        .filter(|s| {
            let sns = s.metadata.namespace.as_deref().unwrap_or("default");
            let api_service = sns == "default" && s.metadata.name.as_deref() == Some("kubernetes");
            // The API's own service is always there, as the kubelet adds it.
            api_service || (links && sns == ns)
        })
        .collect();
    let services_env = service_env(svcs.iter().map(|s| &**s));
    let mut out = HashMap::new();
    let mut containers: Vec<&Container> = Vec::new();
    if let Some(s) = &pod.spec {
        containers.extend(s.init_containers.iter().flatten());
        containers.extend(&s.containers);
    }
    for c in containers {
        out.insert(
            c.name.clone(),
            container_env(&mut sources, pod, c, &services_env, host_ip).await?,
        );
    }
    Ok(out)
}

async fn container_env(
    sources: &mut Sources,
    pod: &Pod,
    c: &Container,
    services_env: &BTreeMap<String, String>,
    host_ip: &str,
) -> Result<Vec<(String, String)>, Refusal> {
    let mut defined: BTreeMap<String, String> = services_env.clone();
    let mut order: Vec<String> = defined.keys().cloned().collect();
    let mut set = |defined: &mut BTreeMap<String, String>, k: String, v: String| {
        if defined.insert(k.clone(), v).is_none() {
            order.push(k);
        }
    };
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (data, what, name, optional) = if let Some(r) = &from.config_map_ref {
            let d = sources.config_map(&r.name).await?.cloned();
            (d, "configmap", r.name.clone(), r.optional.unwrap_or(false))
        } else if let Some(r) = &from.secret_ref {
            let d = sources.secret(&r.name).await?.cloned();
            (d, "secret", r.name.clone(), r.optional.unwrap_or(false))
        } else {
            continue;
        };
        match data {
            Some(d) => {
                for (k, v) in d {
                    let key = format!("{prefix}{k}");
                    if valid_name(&key) {
                        set(&mut defined, key, v);
                    }
                }
            }
            None if optional => {}
            None => return Err(config_error(format!("{what} {name:?} not found"))),
        }
    }
    for e in c.env.iter().flatten() {
        let value = match &e.value_from {
            None => expand(e.value.as_deref().unwrap_or(""), &defined),
            Some(from) => {
                let keyed = if let Some(r) = &from.config_map_key_ref {
                    let value = sources
                        .config_map(&r.name)
                        .await?
                        .map(|d| d.get(&r.key).cloned());
                    Some((value, "configmap", "ConfigMap", &r.name, &r.key, r.optional))
                } else if let Some(r) = &from.secret_key_ref {
                    let value = sources
                        .secret(&r.name)
                        .await?
                        .map(|d| d.get(&r.key).cloned());
                    Some((value, "secret", "Secret", &r.name, &r.key, r.optional))
                } else {
                    None
                };
                // The source's value for the key: None without the source, Some(None) without the key.
                if let Some((value, what, kind, name, key, optional)) = keyed {
                    let optional = optional.unwrap_or(false);
                    match value {
                        Some(Some(v)) => v,
                        _ if optional => continue,
                        Some(None) => {
                            return Err(config_error(format!(
                                "couldn't find key {key} in {kind} {}/{name}",
                                sources.ns
                            )))
                        }
                        None => return Err(config_error(format!("{what} {name:?} not found"))),
                    }
                } else if let Some(f) = &from.field_ref {
                    field(pod, &f.field_path, host_ip)?
                } else if let Some(r) = &from.resource_field_ref {
                    super::volumes::resource_value(
                        pod,
                        Some(&c.name),
                        r,
                        super::node::allocatable(),
                    )
                    .map_err(|m| config_error(format!("env {}: {m}", e.name)))?
                } else {
                    return Err(config_error(format!("env {}: no value source", e.name)));
                }
            }
        };
        set(&mut defined, e.name.clone(), value);
    }
    Ok(order
        .into_iter()
        .map(|k| {
            let v = defined[&k].clone();
            (k, v)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_expand_from_earlier_definitions_and_dollars_escape() {
        let mut d = BTreeMap::new();
        d.insert("HOST".to_string(), "db".to_string());
        assert_eq!(expand("$(HOST):5432", &d), "db:5432");
        assert_eq!(expand("$$(HOST) $(NOPE) $x", &d), "$(HOST) $(NOPE) $x");
    }

    #[test]
    fn services_give_the_kubelets_variables() {
        let svc: Service = serde_json::from_value(json!({"metadata": {"name": "web-api"},
            "spec": {"clusterIP": "10.96.0.20", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}))
        .unwrap();
        let env = service_env(&[svc]);
        assert_eq!(env["WEB_API_SERVICE_HOST"], "10.96.0.20");
        assert_eq!(env["WEB_API_SERVICE_PORT"], "80");
        assert_eq!(env["WEB_API_SERVICE_PORT_HTTP"], "80");
        assert_eq!(env["WEB_API_PORT"], "tcp://10.96.0.20:80");
        assert_eq!(env["WEB_API_PORT_80_TCP_ADDR"], "10.96.0.20");
    }
}
