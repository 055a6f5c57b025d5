//! Pod manifest types in the Kubernetes `v1/Pod` shape.
//!
//! Only the fields the runtime acts on are modelled. Every struct rejects
//! unknown fields so that a typo in a manifest is reported instead of being
//! silently ignored; [`Pod::from_yaml`] reports the offending field's path.
//!
//! Must never import anything outside `runtime/`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Data of the config maps a pod refers to, resolved by the caller:
/// config map name -> (key -> value).
pub type ConfigMaps = BTreeMap<String, BTreeMap<String, String>>;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("invalid pod manifest at `{path}`: {message}")]
    Parse { path: String, message: String },
    #[error("invalid pod spec: field `{field}`: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Pod {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: PodSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodSpec {
    /// Run one at a time, each to completion, before `containers`; sequencing them is the
    /// caller's ([`crate::runtime::Runtime::start_container`] starts any one of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub init_containers: Vec<Container>,
    pub containers: Vec<Container>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,
    /// Share the host's network and UTS namespaces: no interface or address of its own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_network: bool,
    /// The pod's hostname (default: `metadata.name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The domain of the pod's own line in /etc/hosts (`<ip> <hostname>.<hostDomain> <hostname>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_domain: Option<String>,
    /// Extra /etc/hosts lines.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_aliases: Vec<HostAlias>,
    /// The containers' /etc/resolv.conf, written as given; none: the root filesystem's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_config: Option<DnsConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HostAlias {
    pub ip: String,
    #[serde(default)]
    pub hostnames: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DnsConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub searches: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<DnsOption>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DnsOption {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

impl DnsConfig {
    /// The resolv.conf text: search, nameserver and options lines.
    pub fn resolv_conf(&self) -> String {
        let mut out = String::new();
        if !self.searches.is_empty() {
            out.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        for ns in &self.nameservers {
            out.push_str(&format!("nameserver {ns}\n"));
        }
        if !self.options.is_empty() {
            let opts: Vec<String> = self
                .options
                .iter()
                .map(|o| match &o.value {
                    Some(v) => format!("{}:{v}", o.name),
                    None => o.name.clone(),
                })
                .collect();
            out.push_str(&format!("options {}\n", opts.join(" ")));
        }
        out
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodSecurityContext {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_user: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_group: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Container {
    pub name: String,
    /// A local rootfs directory or tarball; empty means the host root,
    /// bind-mounted read-only. With `image_layers`, only the image's name.
    #[serde(default)]
    pub image: String,
    /// An image's unpacked layers, topmost first: the read-only lower layers of an overlayfs
    /// root whose writable layer is the container's own, fresh at every start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_layers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub resources: ResourceRequirements,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<SecurityContext>,
    /// Where the container may write why it ended: a fresh host file is bind-mounted there for
    /// each run, and its first 4096 bytes become the exit's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_message_path: Option<String>,
    /// Kubernetes' `FallbackToLogsOnError`: a failed run that wrote no message gets the tail of
    /// its log instead.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub termination_message_fallback_to_logs: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvVar {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<EnvVarSource>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvVarSource {
    pub config_map_key_ref: ConfigMapKeySelector,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConfigMapKeySelector {
    pub name: String,
    pub key: String,
    #[serde(default)]
    pub optional: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResourceRequirements {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, Quantity>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, Quantity>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VolumeMount {
    pub name: String,
    pub mount_path: String,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecurityContext {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_user: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_group: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_privilege_escalation: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Capabilities {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Volume {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<EmptyDirVolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapVolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<HostPathVolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<FilesVolumeSource>,
}

/// Files whose contents the caller supplies and replaces while the pod runs
/// ([`crate::runtime::Runtime::write_volume_files`]): what Kubernetes' secret, downwardAPI,
/// projected and configMap volumes become once resolved. Mounted read-only. The contents are
/// never part of the spec, so they are never in the pod's record on disk.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FilesVolumeSource {
    /// `Memory`: the files live on a tmpfs of their own and never reach a disk (secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medium: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EmptyDirVolumeSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medium: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_limit: Option<Quantity>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConfigMapVolumeSource {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<KeyToPath>,
    #[serde(default)]
    pub optional: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KeyToPath {
    pub key: String,
    pub path: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HostPathVolumeSource {
    pub path: String,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// A Kubernetes resource quantity (`200m`, `0.5`, `64Mi`, `1G`, `100`).
/// YAML numbers are accepted as well as strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quantity(pub String);

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Quantity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Quantity;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a quantity such as 200m, 0.5, 64Mi")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl Quantity {
    /// The value in thousandths of the base unit, rounded up (CPU millicores).
    pub fn to_milli(&self) -> Option<u64> {
        let s = self.0.trim();
        if let Some(m) = s.strip_suffix('m') {
            return m.parse::<u64>().ok();
        }
        let v = self.to_f64()?;
        if v < 0.0 {
            return None;
        }
        Some((v * 1000.0).ceil() as u64)
    }

    /// The value in base units (bytes for memory), rounded up.
    pub fn to_units(&self) -> Option<u64> {
        let v = self.to_f64()?;
        if v < 0.0 {
            return None;
        }
        Some(v.ceil() as u64)
    }

    fn to_f64(&self) -> Option<f64> {
        const SUFFIXES: [(&str, f64); 13] = [
            ("Ki", 1024.0),
            ("Mi", 1048576.0),
            ("Gi", 1073741824.0),
            ("Ti", 1099511627776.0),
            ("Pi", 1125899906842624.0),
            ("Ei", 1152921504606846976.0),
            ("k", 1e3),
            ("M", 1e6),
            ("G", 1e9),
            ("T", 1e12),
            ("P", 1e15),
            ("E", 1e18),
            ("m", 1e-3),
        ];
        let s = self.0.trim();
        for (suffix, mult) in SUFFIXES {
            if let Some(num) = s.strip_suffix(suffix) {
                return num.parse::<f64>().ok().map(|n| n * mult);
            }
        }
        s.parse::<f64>().ok().filter(|v| v.is_finite())
    }
}

impl Pod {
    /// Parses a manifest, rejecting unknown fields with their path
    /// (e.g. `spec.containers[0].imagePullPolicyy`), then validates it.
    pub fn from_yaml(text: &str) -> Result<Pod, SpecError> {
        let de = serde_yaml::Deserializer::from_str(text);
        let pod: Pod = serde_path_to_error::deserialize(de).map_err(|e| SpecError::Parse {
            path: e.path().to_string(),
            message: e.inner().to_string(),
        })?;
        pod.validate()?;
        Ok(pod)
    }

    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// The hostname its containers see.
    pub fn hostname(&self) -> &str {
        self.spec.hostname.as_deref().unwrap_or(&self.metadata.name)
    }

    /// An app or init container by name.
    pub fn container(&self, name: &str) -> Option<&Container> {
        self.all_containers().find(|c| c.name == name)
    }

    /// Init containers, then app containers.
    pub fn all_containers(&self) -> impl Iterator<Item = &Container> {
        self.spec
            .init_containers
            .iter()
            .chain(self.spec.containers.iter())
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        if self.api_version != "v1" {
            return Err(invalid("apiVersion", "must be \"v1\""));
        }
        if self.kind != "Pod" {
            return Err(invalid("kind", "must be \"Pod\""));
        }
        check_dns_label("metadata.name", &self.metadata.name)?;
        let spec = &self.spec;
        if spec.containers.is_empty() {
            return Err(invalid(
                "spec.containers",
                "at least one container is required",
            ));
        }
        let mut volume_names = std::collections::BTreeSet::new();
        for (i, v) in spec.volumes.iter().enumerate() {
            let f = format!("spec.volumes[{i}]");
            check_dns_label(&format!("{f}.name"), &v.name)?;
            if !volume_names.insert(v.name.as_str()) {
                return Err(invalid(
                    format!("{f}.name"),
                    format!("duplicate volume {:?}", v.name),
                ));
            }
            let sources = [
                v.empty_dir.is_some(),
                v.config_map.is_some(),
                v.host_path.is_some(),
                v.files.is_some(),
            ]
            .iter()
            .filter(|s| **s)
            .count();
            if sources != 1 {
                return Err(invalid(
                    f.clone(),
                    "exactly one of emptyDir, configMap, hostPath, files is required",
                ));
            }
            if let Some(hp) = &v.host_path {
                if !hp.path.starts_with('/') {
                    return Err(invalid(
                        format!("{f}.hostPath.path"),
                        "must be an absolute path",
                    ));
                }
            }
            if let Some(cm) = &v.config_map {
                for (j, item) in cm.items.iter().enumerate() {
                    check_relative(&format!("{f}.configMap.items[{j}].path"), &item.path)?;
                }
            }
            let medium = v
                .empty_dir
                .as_ref()
                .map(|e| (e.medium.as_ref(), "emptyDir"))
                .or(v.files.as_ref().map(|f| (f.medium.as_ref(), "files")));
            if let Some((Some(m), kind)) = medium {
                if !m.is_empty() && m != "Memory" {
                    return Err(invalid(
                        format!("{f}.{kind}.medium"),
                        "must be \"\" or \"Memory\"",
                    ));
                }
            }
        }
        if let Some(h) = &spec.hostname {
            check_dns_label("spec.hostname", h)?;
        }
        let no_space = |field: &str, v: &str| {
            if v.is_empty() || v.chars().any(char::is_whitespace) {
                Err(invalid(field, format!("{v:?} must be a non-empty word")))
            } else {
                Ok(())
            }
        };
        if let Some(d) = &spec.host_domain {
            no_space("spec.hostDomain", d)?;
        }
        for (i, a) in spec.host_aliases.iter().enumerate() {
            if a.ip.parse::<std::net::IpAddr>().is_err() {
                return Err(invalid(
                    format!("spec.hostAliases[{i}].ip"),
                    format!("{:?} is not an IP address", a.ip),
                ));
            }
            for (j, h) in a.hostnames.iter().enumerate() {
                no_space(&format!("spec.hostAliases[{i}].hostnames[{j}]"), h)?;
            }
        }
        if let Some(dns) = &spec.dns_config {
            for (i, ns) in dns.nameservers.iter().enumerate() {
                if ns.parse::<std::net::IpAddr>().is_err() {
                    return Err(invalid(
                        format!("spec.dnsConfig.nameservers[{i}]"),
                        format!("{ns:?} is not an IP address"),
                    ));
                }
            }
            for (i, s) in dns.searches.iter().enumerate() {
                no_space(&format!("spec.dnsConfig.searches[{i}]"), s)?;
            }
            for (i, o) in dns.options.iter().enumerate() {
                no_space(&format!("spec.dnsConfig.options[{i}].name"), &o.name)?;
            }
        }
        let mut container_names = std::collections::BTreeSet::new();
        let init = spec
            .init_containers
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("spec.initContainers[{i}]"), c));
        let app = spec
            .containers
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("spec.containers[{i}]"), c));
        for (f, c) in init.chain(app) {
            check_dns_label(&format!("{f}.name"), &c.name)?;
            if !container_names.insert(c.name.as_str()) {
                return Err(invalid(
                    format!("{f}.name"),
                    format!("duplicate container {:?}", c.name),
                ));
            }
            if c.command.is_empty() && c.args.is_empty() {
                return Err(invalid(
                    format!("{f}.command"),
                    "command or args is required (images carry no entrypoint here)",
                ));
            }
            if let Some(p) = &c.termination_message_path {
                if !p.starts_with('/') || p.split('/').any(|p| p == "..") {
                    return Err(invalid(
                        format!("{f}.terminationMessagePath"),
                        "must be an absolute path without `..`",
                    ));
                }
            }
            for (j, l) in c.image_layers.iter().enumerate() {
                // overlayfs separates options with `,` and layers with `:`.
                if !l.starts_with('/') || l.contains([',', ':']) {
                    return Err(invalid(
                        format!("{f}.imageLayers[{j}]"),
                        "must be an absolute path without `,` or `:`",
                    ));
                }
            }
            if let Some(wd) = &c.working_dir {
                if !wd.starts_with('/') {
                    return Err(invalid(
                        format!("{f}.workingDir"),
                        "must be an absolute path",
                    ));
                }
            }
            for (j, e) in c.env.iter().enumerate() {
                if e.name.is_empty() || e.name.contains('=') || e.name.contains('\0') {
                    return Err(invalid(
                        format!("{f}.env[{j}].name"),
                        "invalid variable name",
                    ));
                }
                if e.value.is_some() && e.value_from.is_some() {
                    return Err(invalid(
                        format!("{f}.env[{j}]"),
                        "value and valueFrom are mutually exclusive",
                    ));
                }
            }
            for (kind, map) in [
                ("requests", &c.resources.requests),
                ("limits", &c.resources.limits),
            ] {
                for (name, q) in map {
                    let field = format!("{f}.resources.{kind}.{name}");
                    let ok = match name.as_str() {
                        "cpu" => q.to_milli().is_some(),
                        _ => q.to_units().is_some(),
                    };
                    if !ok {
                        return Err(invalid(field, format!("invalid quantity {:?}", q.0)));
                    }
                }
            }
            for (j, m) in c.volume_mounts.iter().enumerate() {
                let mf = format!("{f}.volumeMounts[{j}]");
                if !volume_names.contains(m.name.as_str()) {
                    return Err(invalid(
                        format!("{mf}.name"),
                        format!("no volume named {:?}", m.name),
                    ));
                }
                if !m.mount_path.starts_with('/') || m.mount_path.split('/').any(|p| p == "..") {
                    return Err(invalid(
                        format!("{mf}.mountPath"),
                        "must be an absolute path without `..`",
                    ));
                }
            }
        }
        Ok(())
    }
}

fn check_dns_label(field: &str, v: &str) -> Result<(), SpecError> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !v.starts_with('-')
        && !v.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{v:?} must be a DNS label (lowercase letters, digits, '-', at most 63)"),
        ))
    }
}

fn check_relative(field: &str, v: &str) -> Result<(), SpecError> {
    if v.is_empty() || v.starts_with('/') || v.split('/').any(|p| p == "..") {
        return Err(invalid(field, "must be a relative path without `..`"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 5
  volumes:
    - name: shared
      emptyDir: {}
    - name: cfg
      configMap:
        name: app-config
  containers:
    - name: app
      image: ""
      command: ["/bin/sh", "-c"]
      args: ["echo hi"]
      env:
        - name: A
          value: "1"
        - name: B
          valueFrom:
            configMapKeyRef: {name: app-config, key: b}
      resources:
        requests: {cpu: 100m, memory: 32Mi}
        limits: {cpu: 1, memory: 64Mi}
      volumeMounts:
        - {name: shared, mountPath: /data}
        - {name: cfg, mountPath: /etc/app, readOnly: true}
"#;

    #[test]
    fn parses_kubernetes_shape() {
        let pod = Pod::from_yaml(GOOD).unwrap();
        assert_eq!(pod.name(), "web");
        assert_eq!(pod.spec.restart_policy, RestartPolicy::Never);
        let c = &pod.spec.containers[0];
        assert_eq!(c.resources.limits["cpu"].to_milli(), Some(1000));
        assert_eq!(c.resources.requests["cpu"].to_milli(), Some(100));
        assert_eq!(
            c.resources.limits["memory"].to_units(),
            Some(64 * 1024 * 1024)
        );
        assert!(c.volume_mounts[1].read_only);
    }

    #[test]
    fn unknown_field_reports_path() {
        let bad = GOOD.replace("      image: \"\"", "      imagePullPolicyy: Always");
        let err = Pod::from_yaml(&bad).unwrap_err().to_string();
        assert!(err.contains("spec.containers[0]"), "{err}");
        assert!(err.contains("imagePullPolicyy"), "{err}");
        let bad = GOOD.replace("  labels: {app: web}", "  labelz: {app: web}");
        let err = Pod::from_yaml(&bad).unwrap_err().to_string();
        assert!(err.contains("metadata"), "{err}");
        assert!(err.contains("labelz"), "{err}");
    }

    #[test]
    fn validation_errors_name_the_field() {
        let bad = GOOD.replace("name: web", "name: Web_1");
        let err = Pod::from_yaml(&bad).unwrap_err().to_string();
        assert!(err.contains("metadata.name"), "{err}");
        let bad = GOOD.replace(
            "{name: shared, mountPath: /data}",
            "{name: nope, mountPath: /data}",
        );
        let err = Pod::from_yaml(&bad).unwrap_err().to_string();
        assert!(
            err.contains("spec.containers[0].volumeMounts[0].name"),
            "{err}"
        );
        let bad = GOOD.replace("memory: 64Mi", "memory: lots");
        let err = Pod::from_yaml(&bad).unwrap_err().to_string();
        assert!(err.contains("resources.limits.memory"), "{err}");
        let bad = GOOD.replace("kind: Pod", "kind: Deployment");
        assert!(Pod::from_yaml(&bad)
            .unwrap_err()
            .to_string()
            .contains("kind"));
    }

    #[test]
    fn quantities() {
        let q = |s: &str| Quantity(s.to_string());
        assert_eq!(q("200m").to_milli(), Some(200));
        assert_eq!(q("0.5").to_milli(), Some(500));
        assert_eq!(q("2").to_milli(), Some(2000));
        assert_eq!(q("1Gi").to_units(), Some(1 << 30));
        assert_eq!(q("1k").to_units(), Some(1000));
        assert_eq!(q("x").to_units(), None);
    }
}
