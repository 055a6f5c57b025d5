//! Volumes whose contents come from the API, resolved into plain files for the runtime's `files`
//! volumes: secret, configMap, downwardAPI and projected (secret, configMap, downwardAPI and
//! serviceAccountToken sources, the token from `volumes_token`'s cache), with the kubelet's items, modes and optional sources, the downward API's
//! `key="value"` lines for labels and annotations, and resource values with their divisor.
//! Resolution is pure (the caller hands in lookups of Secrets and ConfigMaps), so the sync loop
//! can redo it every period from its caches and rewrite a volume only when its files changed.
//! A missing source that is not optional is a `MountVolume.SetUp failed ...` in the kubelet's
//! words. Never imports `registry` or `apiserver`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    DownwardAPIVolumeFile, KeyToPath, Pod, ResourceFieldSelector, Volume,
};

use crate::runtime::spec::Quantity;
use crate::runtime::VolumeFile;

/// The kubelet's `defaultMode` when none is given (0644).
const DEFAULT_MODE: i32 = 0o644;

/// What the node has for a container without a limit: the kubelet reports its allocatable.
#[derive(Debug, Clone, Copy)]
pub struct Allocatable {
    pub cpu_milli: u64,
    pub memory: u64,
}

/// Where Secrets' and ConfigMaps' data and the pod's service account tokens come from (the pod
/// is implied).
pub trait Lookup {
    fn secret(&self, name: &str) -> Option<BTreeMap<String, Vec<u8>>>;
    fn config_map(&self, name: &str) -> Option<BTreeMap<String, Vec<u8>>>;
    /// A token for `audience` (empty: the API server's) lasting `expiration_seconds`, or why
    /// there is none.
    fn service_account_token(
        &self,
        audience: &str,
        expiration_seconds: i64,
    ) -> Result<Vec<u8>, String>;
}

/// The volumes of `pod` this module resolves, with the medium their files live on: secrets (and
/// projected volumes, which may carry them) on a tmpfs, never on a disk.
pub fn kinds(pod: &Pod) -> Vec<(String, Option<&'static str>)> {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| {
            if v.secret.is_some() || v.projected.is_some() {
                Some((v.name.clone(), Some("Memory")))
            } else if v.config_map.is_some() || v.downward_api.is_some() {
                Some((v.name.clone(), None))
            } else {
                None
            }
        })
        .collect()
}

fn set_up_failed(volume: &str, why: impl std::fmt::Display) -> String {
    format!("MountVolume.SetUp failed for volume {volume:?} : {why}")
}

/// Every API-backed volume's files, by volume name; or the FailedMount message of the first
/// that cannot be set up.
pub fn resolve(
    pod: &Pod,
    lookup: &dyn Lookup,
    node: Allocatable,
) -> Result<Vec<(String, Vec<VolumeFile>)>, String> {
    let mut out = Vec::new();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        if let Some(files) = volume_files(pod, v, lookup, node)? {
            out.push((v.name.clone(), files));
        }
    }
    Ok(out)
}

fn mode(item: Option<i32>, default: Option<i32>) -> u32 {
    item.or(default).unwrap_or(DEFAULT_MODE) as u32 & 0o7777
}

/// A Secret or ConfigMap as a volume (or projection) names it.
struct Keyed<'a> {
    what: &'static str,
    name: &'a str,
    items: Option<&'a Vec<KeyToPath>>,
    optional: bool,
}

/// Keys of `data` as files: all of them, or the listed items. A listed key the source lacks is
/// an error unless the source is optional.
fn keyed(
    volume: &str,
    src: Keyed,
    data: Option<BTreeMap<String, Vec<u8>>>,
    default_mode: Option<i32>,
    out: &mut Vec<VolumeFile>,
) -> Result<(), String> {
    let Keyed {
        what,
        name,
        items,
        optional,
    } = src;
    let Some(data) = data else {
        if optional {
            return Ok(());
        }
        return Err(set_up_failed(volume, format!("{what} {name:?} not found")));
    };
    match items {
        None => out.extend(data.into_iter().map(|(k, v)| VolumeFile {
            path: k,
            data: v,
            mode: mode(None, default_mode),
        })),
        Some(items) => {
            for i in items {
                match data.get(&i.key) {
                    Some(v) => out.push(VolumeFile {
                        path: i.path.clone(),
                        data: v.clone(),
                        mode: mode(i.mode, default_mode),
                    }),
                    None if optional => {}
                    None => {
                        return Err(set_up_failed(
                            volume,
                            if what == "secret" {
                                format!("secret references non-existent secret key: {}", i.key)
                            } else {
                                format!("configmap references non-existent config key: {}", i.key)
                            },
                        ))
                    }
                }
            }
        }
    }
    Ok(())
}

fn downward(
    pod: &Pod,
    volume: &str,
    items: &[DownwardAPIVolumeFile],
    default_mode: Option<i32>,
    node: Allocatable,
    out: &mut Vec<VolumeFile>,
) -> Result<(), String> {
    for i in items {
        let value = if let Some(f) = &i.field_ref {
            match f.field_path.as_str() {
                "metadata.labels" => format_map(pod.metadata.labels.as_ref()),
                "metadata.annotations" => format_map(pod.metadata.annotations.as_ref()),
                path => super::env::field(pod, path, "")
                    .map_err(|r| set_up_failed(volume, r.message))?,
            }
        } else if let Some(r) = &i.resource_field_ref {
            resource_value(pod, None, r, node).map_err(|e| set_up_failed(volume, e))?
        } else {
            continue;
        };
        out.push(VolumeFile {
            path: i.path.clone(),
            data: value.into_bytes(),
            mode: mode(i.mode, default_mode),
        });
    }
    Ok(())
}

fn volume_files(
    pod: &Pod,
    v: &Volume,
    lookup: &dyn Lookup,
    node: Allocatable,
) -> Result<Option<Vec<VolumeFile>>, String> {
    let mut out = Vec::new();
    let name = v.name.as_str();
    if let Some(s) = &v.secret {
        let sname = s.secret_name.clone().unwrap_or_default();
        keyed(
            name,
            Keyed {
                what: "secret",
                name: &sname,
                items: s.items.as_ref(),
                optional: s.optional.unwrap_or(false),
            },
            lookup.secret(&sname),
            s.default_mode,
            &mut out,
        )?;
    } else if let Some(c) = &v.config_map {
        keyed(
            name,
            Keyed {
                what: "configmap",
                name: &c.name,
                items: c.items.as_ref(),
                optional: c.optional.unwrap_or(false),
            },
            lookup.config_map(&c.name),
            c.default_mode,
            &mut out,
        )?;
    } else if let Some(d) = &v.downward_api {
        downward(
            pod,
            name,
            d.items.as_deref().unwrap_or_default(),
            d.default_mode,
            node,
            &mut out,
        )?;
    } else if let Some(p) = &v.projected {
        for src in p.sources.iter().flatten() {
            if let Some(s) = &src.secret {
                keyed(
                    name,
                    Keyed {
                        what: "secret",
                        name: &s.name,
                        items: s.items.as_ref(),
                        optional: s.optional.unwrap_or(false),
                    },
                    lookup.secret(&s.name),
                    p.default_mode,
                    &mut out,
                )?;
            } else if let Some(c) = &src.config_map {
                keyed(
                    name,
                    Keyed {
                        what: "configmap",
                        name: &c.name,
                        items: c.items.as_ref(),
                        optional: c.optional.unwrap_or(false),
                    },
                    lookup.config_map(&c.name),
                    p.default_mode,
                    &mut out,
                )?;
            } else if let Some(d) = &src.downward_api {
                downward(
                    pod,
                    name,
                    d.items.as_deref().unwrap_or_default(),
                    p.default_mode,
                    node,
                    &mut out,
                )?;
            } else if let Some(t) = &src.service_account_token {
                let token = lookup
                    .service_account_token(
                        t.audience.as_deref().unwrap_or(""),
                        super::volumes_token::expiration_of(t.expiration_seconds),
                    )
                    .map_err(|e| set_up_failed(name, format!("failed to fetch token: {e}")))?;
                out.push(VolumeFile {
                    path: t.path.clone(),
                    data: token,
                    mode: mode(None, p.default_mode),
                });
            } else {
                return Err(set_up_failed(
                    name,
                    "only secret, configMap, downwardAPI and serviceAccountToken projections are supported",
                ));
            }
        }
    } else {
        return Ok(None);
    }
    // Later sources win on a clash, as the kubelet's projection does.
    let mut by_path: BTreeMap<String, VolumeFile> = BTreeMap::new();
    for f in out {
        by_path.insert(f.path.clone(), f);
    }
    Ok(Some(by_path.into_values().collect()))
}

/// Labels or annotations as the kubelet writes them: `key="value"` lines sorted by key, the value
/// quoted with Go's escapes.
pub fn format_map(m: Option<&BTreeMap<String, String>>) -> String {
    m.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A `resourceFieldRef`'s value: the container's limit or request divided by the divisor and
/// rounded up; a missing limit is the node's allocatable, as the kubelet fills it in.
/// `default_container` names the container for env references, which may omit it.
pub fn resource_value(
    pod: &Pod,
    default_container: Option<&str>,
    r: &ResourceFieldSelector,
    node: Allocatable,
) -> Result<String, String> {
    let cname = r
        .container_name
        .as_deref()
        .filter(|n| !n.is_empty())
        .or(default_container)
        .ok_or_else(|| format!("resourceFieldRef {:?} needs a containerName", r.resource))?;
    let spec = pod.spec.as_ref();
    let c = spec
        .into_iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .find(|c| c.name == cname)
        .ok_or_else(|| format!("resourceFieldRef: no container named {cname:?}"))?;
    let res = c.resources.as_ref();
    let get = |kind: &str, name: &str| -> Option<Quantity> {
        let m = match kind {
            "limits" => res.and_then(|r| r.limits.as_ref()),
            _ => res.and_then(|r| r.requests.as_ref()),
        };
        m.and_then(|m| m.get(name)).map(|q| Quantity(q.0.clone()))
    };
    let divisor = r
        .divisor
        .as_ref()
        .map(|d| Quantity(d.0.clone()))
        .filter(|d| !d.0.is_empty() && d.0 != "0");
    let (kind, name) = r
        .resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported resource {:?}", r.resource))?;
    let is_cpu = name == "cpu";
    let raw = match (kind, name) {
        ("limits" | "requests", "cpu") => get(kind, name).and_then(|q| q.to_milli()),
        ("limits" | "requests", "memory" | "ephemeral-storage") => {
            get(kind, name).and_then(|q| q.to_units())
        }
        _ => return Err(format!("unsupported resource {:?}", r.resource)),
    };
    let value = match (raw, kind, name) {
        (Some(v), _, _) => v,
        (None, "limits", "cpu") => node.cpu_milli,
        (None, "limits", "memory") => node.memory,
        _ => 0,
    };
    let div = if is_cpu {
        divisor.map_or(Some(1000), |d| d.to_milli())
    } else {
        divisor.map_or(Some(1), |d| d.to_units())
    }
    .filter(|d| *d > 0)
    .ok_or_else(|| format!("invalid divisor for {:?}", r.resource))?;
    Ok(value.div_ceil(div).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Fixed;
    impl Lookup for Fixed {
        fn secret(&self, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
            (name == "creds").then(|| {
                BTreeMap::from([
                    ("user".to_string(), b"admin".to_vec()),
                    ("pass".to_string(), b"s3cret".to_vec()),
                ])
            })
        }
        fn config_map(&self, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
            (name == "cfg").then(|| BTreeMap::from([("a".to_string(), b"1".to_vec())]))
        }
        fn service_account_token(&self, audience: &str, exp: i64) -> Result<Vec<u8>, String> {
            match audience {
                "" => Ok(format!("jwt-{exp}").into_bytes()),
                a => Err(format!("no token for {a}")),
            }
        }
    }

    const NODE: Allocatable = Allocatable {
        cpu_milli: 4000,
        memory: 8 << 30,
    };

    fn pod(volumes: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u-1",
                "labels": {"app": "web", "tier": "a \"b\""}},
            "spec": {"volumes": volumes, "containers": [{"name": "c", "image": "/",
                "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}, "requests": {"cpu": "250m"}}}]}
        }))
        .unwrap()
    }

    fn files(v: &[(String, Vec<VolumeFile>)], vol: &str) -> BTreeMap<String, (String, u32)> {
        v.iter()
            .find(|(n, _)| n == vol)
            .unwrap()
            .1
            .iter()
            .map(|f| {
                (
                    f.path.clone(),
                    (String::from_utf8(f.data.clone()).unwrap(), f.mode),
                )
            })
            .collect()
    }

    #[test]
    fn secrets_give_their_keys_or_listed_items_with_modes() {
        let p = pod(json!([
            {"name": "all", "secret": {"secretName": "creds", "defaultMode": 0o400}},
            {"name": "some", "secret": {"secretName": "creds", "items": [{"key": "user", "path": "u/name", "mode": 0o600}]}},
            {"name": "gone", "secret": {"secretName": "nope", "optional": true}},
        ]));
        let r = resolve(&p, &Fixed, NODE).unwrap();
        assert_eq!(files(&r, "all")["pass"], ("s3cret".into(), 0o400));
        assert_eq!(
            files(&r, "some"),
            BTreeMap::from([("u/name".into(), ("admin".into(), 0o600))])
        );
        assert!(files(&r, "gone").is_empty());
        let missing = pod(json!([{"name": "x", "secret": {"secretName": "y"}}]));
        assert_eq!(
            resolve(&missing, &Fixed, NODE).unwrap_err(),
            r#"MountVolume.SetUp failed for volume "x" : secret "y" not found"#
        );
    }

    #[test]
    fn the_downward_api_writes_the_kubelets_formats() {
        let p = pod(json!([{"name": "d", "downwardAPI": {"items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
            {"path": "cpu", "resourceFieldRef": {"containerName": "c", "resource": "limits.cpu", "divisor": "1m"}},
            {"path": "cores", "resourceFieldRef": {"containerName": "c", "resource": "limits.cpu"}},
            {"path": "mem", "resourceFieldRef": {"containerName": "c", "resource": "limits.memory", "divisor": "1Mi"}},
        ]}}]));
        let r = resolve(&p, &Fixed, NODE).unwrap();
        let f = files(&r, "d");
        assert_eq!(f["labels"].0, "app=\"web\"\ntier=\"a \\\"b\\\"\"");
        assert_eq!(f["name"].0, "p");
        assert_eq!(f["cpu"].0, "500");
        assert_eq!(f["cores"].0, "1", "rounded up");
        assert_eq!(f["mem"].0, "64");
    }

    #[test]
    fn projections_merge_their_sources_and_tokens() {
        let p = pod(
            json!([{"name": "all", "projected": {"defaultMode": 0o640, "sources": [
                {"secret": {"name": "creds", "items": [{"key": "user", "path": "user"}]}},
                {"configMap": {"name": "cfg"}},
                {"downwardAPI": {"items": [{"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
            ]}}]),
        );
        let f = files(&resolve(&p, &Fixed, NODE).unwrap(), "all");
        assert_eq!(f.keys().collect::<Vec<_>>(), ["a", "ns", "token", "user"]);
        assert_eq!(f["ns"].0, "ns");
        assert_eq!(f["token"], ("jwt-3607".into(), 0o640));
        let t = pod(json!([{"name": "tok", "projected": {"sources": [
            {"serviceAccountToken": {"path": "token"}}]}}]));
        assert_eq!(
            files(&resolve(&t, &Fixed, NODE).unwrap(), "tok")["token"].0,
            "jwt-3600"
        );
        let other = pod(json!([{"name": "tok", "projected": {"sources": [
            {"serviceAccountToken": {"path": "token", "audience": "vault"}}]}}]));
        assert_eq!(
            resolve(&other, &Fixed, NODE).unwrap_err(),
            r#"MountVolume.SetUp failed for volume "tok" : failed to fetch token: no token for vault"#
        );
    }

    #[test]
    fn resources_without_a_limit_are_the_nodes() {
        let p = pod(json!([]));
        let sel = |res: &str, div: Option<&str>| ResourceFieldSelector {
            container_name: None,
            resource: res.into(),
            divisor: div.map(|d| k8s_openapi::apimachinery::pkg::api::resource::Quantity(d.into())),
        };
        let v = |s: ResourceFieldSelector| resource_value(&p, Some("c"), &s, NODE).unwrap();
        assert_eq!(v(sel("requests.cpu", Some("1m"))), "250");
        assert_eq!(v(sel("requests.cpu", None)), "1");
        assert_eq!(v(sel("limits.memory", None)), (64u64 << 20).to_string());
        let mut bare = p.clone();
        bare.spec.as_mut().unwrap().containers[0].resources = None;
        let v = |s: ResourceFieldSelector| resource_value(&bare, Some("c"), &s, NODE).unwrap();
        assert_eq!(v(sel("limits.cpu", None)), "4");
        assert_eq!(v(sel("limits.memory", Some("1Gi"))), "8");
    }
}
