//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`): the `k8s\0` magic, a
//! `runtime.Unknown` envelope naming the kind, and the object's protobuf encoding, turned into the
//! JSON object Kubernetes' own JSON encoder would write for it, so everything after decoding sees
//! one form whatever the client sent.
//!
//! The messages are k8s-pb's; the JSON is written here, one table row per message. A row lists every
//! field of the struct (the destructuring is exhaustive, so a k8s-pb upgrade that adds a field fails
//! to compile until the row names it). Which zero values Kubernetes writes depends on the Go field:
//! Go's encoder writes every non-pointer scalar to protobuf, zero or not, so a zero that arrives for
//! an `omitempty` field means "unset" and is left out, while pointer fields and fields without
//! `omitempty` keep theirs (`replicas: 0` must survive). Those fields carry `keep` in the tables.
//!
//! Like Kubernetes' protobuf decoder, fields unknown to the messages are skipped.
//!
//! This module only translates bytes: it never imports `registry` or the store.

use std::collections::BTreeMap;

use base64::Engine as _;
use k8s_pb::api::apps::v1 as appsv1;
use k8s_pb::api::core::v1 as corev1;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as metav1;
use k8s_pb::apimachinery::pkg::runtime::Unknown;
use prost::Message;
use serde_json::{Map, Value};

use super::status::{ApiError, ApiResult};

const MAGIC: &[u8] = b"k8s\0";
const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// Decodes a protobuf request body into the object's JSON form, `apiVersion` and `kind` included.
pub fn decode(body: &[u8]) -> ApiResult<Value> {
    let Some(envelope) = body.strip_prefix(MAGIC) else {
        return Err(ApiError::bad_request(
            "protobuf body does not start with the Kubernetes magic prefix",
        ));
    };
    let unknown = Unknown::decode(envelope).map_err(|e| {
        ApiError::bad_request(format!(
            "malformed protobuf envelope (runtime.Unknown): {e}"
        ))
    })?;
    let type_meta = unknown.type_meta.unwrap_or_default();
    let api_version = type_meta.api_version.unwrap_or_default();
    let kind = type_meta.kind.unwrap_or_default();
    if kind.is_empty() {
        return Err(ApiError::bad_request(
            "Object 'Kind' is missing in the protobuf envelope",
        ));
    }
    if api_version.is_empty() {
        return Err(ApiError::bad_request(
            "Object 'apiVersion' is missing in the protobuf envelope",
        ));
    }
    // A compressed or foreign payload cannot be read as the message it claims to be.
    if let Some(enc) = unknown.content_encoding.filter(|e| !e.is_empty()) {
        return Err(ApiError::bad_request(format!(
            "protobuf envelope has content encoding {enc:?}; only unencoded objects are accepted"
        )));
    }
    if let Some(ct) = unknown
        .content_type
        .filter(|c| !c.is_empty() && c != MEDIA_TYPE)
    {
        return Err(ApiError::bad_request(format!(
            "protobuf envelope carries content type {ct:?}; expected {MEDIA_TYPE}"
        )));
    }
    let Some(resource) = crate::api::lookup_kind(&api_version, &kind) else {
        return Err(ApiError::bad_request(format!(
            "no kind {kind:?} is registered for version {api_version:?}"
        )));
    };
    let raw = unknown.raw.unwrap_or_default();
    let object = match (resource.group, resource.kind) {
        ("", "Namespace") => object::<corev1::Namespace>(&raw),
        ("", "ConfigMap") => object::<corev1::ConfigMap>(&raw),
        ("", "Secret") => object::<corev1::Secret>(&raw),
        ("", "Service") => object::<corev1::Service>(&raw),
        ("apps", "Deployment") => object::<appsv1::Deployment>(&raw),
        _ => {
            return Err(ApiError::bad_request(format!(
                "{kind} ({api_version}) cannot be sent as protobuf yet; send application/json"
            )))
        }
    };
    let object =
        object.map_err(|e| ApiError::bad_request(format!("{kind} ({api_version}): {e}")))?;
    let mut out = Map::new();
    out.insert("apiVersion".into(), Value::String(api_version));
    out.insert("kind".into(), Value::String(kind));
    if let Value::Object(fields) = object {
        out.extend(fields);
    }
    Ok(Value::Object(out))
}

fn object<T: Message + Default + ToJson>(raw: &[u8]) -> Result<Value, String> {
    let msg = T::decode(raw).map_err(|e| format!("malformed protobuf object: {e}"))?;
    msg.to_json().map_err(|e| e.to_string())
}

/// A value that has no JSON form, and the path of the field holding it.
#[derive(Debug)]
struct Invalid {
    path: String,
    message: String,
}

impl Invalid {
    fn new(message: impl Into<String>) -> Invalid {
        Invalid {
            path: String::new(),
            message: message.into(),
        }
    }

    /// Prefixes the path with the field or index (`[2]`) that contains the failing value.
    fn within(mut self, segment: &str) -> Invalid {
        self.path = if self.path.is_empty() || self.path.starts_with('[') {
            format!("{segment}{}", self.path)
        } else {
            format!("{segment}.{}", self.path)
        };
        self
    }
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// A protobuf value as Kubernetes writes it in JSON.
trait ToJson {
    fn to_json(&self) -> Result<Value, Invalid>;

    /// Whether the value is its type's zero, which an `omitempty` field leaves out. Messages are
    /// never empty: Go writes a struct field even when all its fields are zero (`"spec": {}`).
    fn is_zero(&self) -> bool {
        false
    }
}

impl ToJson for String {
    fn to_json(&self) -> Result<Value, Invalid> {
        Ok(Value::String(self.clone()))
    }
    fn is_zero(&self) -> bool {
        self.is_empty()
    }
}

impl ToJson for bool {
    fn to_json(&self) -> Result<Value, Invalid> {
        Ok(Value::Bool(*self))
    }
    fn is_zero(&self) -> bool {
        !*self
    }
}

impl ToJson for i32 {
    fn to_json(&self) -> Result<Value, Invalid> {
        Ok(Value::from(*self))
    }
    fn is_zero(&self) -> bool {
        *self == 0
    }
}

impl ToJson for i64 {
    fn to_json(&self) -> Result<Value, Invalid> {
        Ok(Value::from(*self))
    }
    fn is_zero(&self) -> bool {
        *self == 0
    }
}

/// Protobuf `bytes`: JSON carries them base64-encoded, as Go's `[]byte`.
impl ToJson for Vec<u8> {
    fn to_json(&self) -> Result<Value, Invalid> {
        Ok(Value::String(
            base64::engine::general_purpose::STANDARD.encode(self),
        ))
    }
    fn is_zero(&self) -> bool {
        self.is_empty()
    }
}

/// `metav1.Time`: whole seconds, as Go's protobuf decoder drops the nanoseconds.
impl ToJson for metav1::Time {
    fn to_json(&self) -> Result<Value, Invalid> {
        if self.is_zero() {
            return Ok(Value::Null);
        }
        rfc3339(self.seconds.unwrap_or_default(), 0, false).map(Value::String)
    }
    fn is_zero(&self) -> bool {
        time_is_zero(self.seconds, self.nanos)
    }
}

/// `metav1.MicroTime`: microseconds, truncated as Go truncates them.
impl ToJson for metav1::MicroTime {
    fn to_json(&self) -> Result<Value, Invalid> {
        if self.is_zero() {
            return Ok(Value::Null);
        }
        let nanos = i64::from(self.nanos.unwrap_or_default()) / 1000 * 1000;
        rfc3339(self.seconds.unwrap_or_default(), nanos, true).map(Value::String)
    }
    fn is_zero(&self) -> bool {
        time_is_zero(self.seconds, self.nanos)
    }
}

/// Seconds of Go's zero `time.Time` (January 1, year 1) before the Unix epoch.
const GO_ZERO_TIME: i64 = -62_135_596_800;

/// An empty timestamp message is how Go encodes the zero time, which its JSON writes as `null` and
/// which reads back the same as an absent field.
fn time_is_zero(seconds: Option<i64>, nanos: Option<i32>) -> bool {
    (seconds.is_none() && nanos.is_none())
        || (seconds == Some(GO_ZERO_TIME) && nanos.unwrap_or_default() == 0)
}

/// RFC 3339 in UTC, `2006-01-02T15:04:05Z` or with six fractional digits.
fn rfc3339(seconds: i64, nanos: i64, micros: bool) -> Result<String, Invalid> {
    let total = i128::from(seconds) * 1_000_000_000 + i128::from(nanos);
    let ts = jiff::Timestamp::from_nanosecond(total)
        .map_err(|_| Invalid::new(format!("time {seconds}s is out of range")))?;
    let dt = jiff::tz::Offset::UTC.to_datetime(ts);
    if dt.year() < 1 {
        return Err(Invalid::new(format!("time {seconds}s is out of range")));
    }
    let mut s = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    );
    if micros {
        s.push_str(&format!(".{:06}", dt.subsec_nanosecond() / 1000));
    }
    s.push('Z');
    Ok(s)
}

/// `intstr.IntOrString`: a JSON number or string by its type tag.
impl ToJson for k8s_pb::apimachinery::pkg::util::intstr::IntOrString {
    fn to_json(&self) -> Result<Value, Invalid> {
        match self.r#type.unwrap_or_default() {
            0 => Ok(Value::from(self.int_val.unwrap_or_default())),
            1 => Ok(Value::String(self.str_val.clone().unwrap_or_default())),
            t => Err(Invalid::new(format!(
                "IntOrString has type {t}; only 0 (int) and 1 (string) exist"
            ))),
        }
    }
}

/// `resource.Quantity`: its string; a message without one is Go's zero quantity.
impl ToJson for k8s_pb::apimachinery::pkg::api::resource::Quantity {
    fn to_json(&self) -> Result<Value, Invalid> {
        Ok(Value::String(
            self.string.clone().unwrap_or_else(|| "0".to_string()),
        ))
    }
}

/// `metav1.FieldsV1`: the raw bytes are the JSON of the field set.
impl ToJson for metav1::FieldsV1 {
    fn to_json(&self) -> Result<Value, Invalid> {
        raw_json(self.raw.as_deref())
    }
}

fn raw_json(raw: Option<&[u8]>) -> Result<Value, Invalid> {
    match raw {
        None => Ok(Value::Null),
        Some(raw) => serde_json::from_slice(raw)
            .map_err(|e| Invalid::new(format!("raw value is not JSON: {e}"))),
    }
}

/// How a struct field appears in JSON: `None` leaves it out.
trait Field {
    fn field(&self, keep_zero: bool) -> Result<Option<Value>, Invalid>;
}

impl<T: ToJson> Field for Option<T> {
    fn field(&self, keep_zero: bool) -> Result<Option<Value>, Invalid> {
        match self {
            Some(v) if keep_zero || !v.is_zero() => v.to_json().map(Some),
            _ => Ok(None),
        }
    }
}

/// Repeated fields: protobuf cannot tell an empty list from an absent one, and Go decodes both to
/// nil, which reads back the same as an absent field.
impl<T: ToJson> Field for Vec<T> {
    fn field(&self, _: bool) -> Result<Option<Value>, Invalid> {
        if self.is_empty() {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(self.len());
        for (i, v) in self.iter().enumerate() {
            out.push(v.to_json().map_err(|e| e.within(&format!("[{i}]")))?);
        }
        Ok(Some(Value::Array(out)))
    }
}

impl<T: ToJson> Field for BTreeMap<String, T> {
    fn field(&self, _: bool) -> Result<Option<Value>, Invalid> {
        if self.is_empty() {
            return Ok(None);
        }
        let mut out = Map::new();
        for (k, v) in self {
            let value = v.to_json().map_err(|e| e.within(&format!("[{k}]")))?;
            out.insert(k.clone(), value);
        }
        Ok(Some(Value::Object(out)))
    }
}

fn put(
    out: &mut Map<String, Value>,
    name: &str,
    value: &impl Field,
    keep_zero: bool,
) -> Result<(), Invalid> {
    if let Some(v) = value.field(keep_zero).map_err(|e| e.within(name))? {
        out.insert(name.to_string(), v);
    }
    Ok(())
}

/// A Go struct embedded with `json:",inline"`: its fields are the parent's.
fn inline<T: ToJson>(out: &mut Map<String, Value>, value: &Option<T>) -> Result<(), Invalid> {
    if let Some(Value::Object(fields)) = value.as_ref().map(T::to_json).transpose()? {
        out.extend(fields);
    }
    Ok(())
}

/// The JSON name of a protobuf field, from its Rust name (`generate_name` -> `generateName`).
fn camel(field: &str) -> String {
    let field = field.strip_prefix("r#").unwrap_or(field);
    let mut out = String::with_capacity(field.len());
    let mut upper = false;
    for c in field.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// One field of a row: `name`, `name(keep)`, `name("jsonName")`, `name(keep, "jsonName")` or
/// `name(inline)`. The JSON name is given only where it is not the camel-cased Rust name (`podIP`).
macro_rules! json_field {
    ($out:ident, $f:ident) => {
        put(&mut $out, &camel(stringify!($f)), $f, false)?
    };
    ($out:ident, $f:ident, keep) => {
        put(&mut $out, &camel(stringify!($f)), $f, true)?
    };
    ($out:ident, $f:ident, $json:literal) => {
        put(&mut $out, $json, $f, false)?
    };
    ($out:ident, $f:ident, keep, $json:literal) => {
        put(&mut $out, $json, $f, true)?
    };
    ($out:ident, $f:ident, inline) => {
        inline(&mut $out, $f)?
    };
}

/// Rows of messages of one module: `Message { field, field(keep), ... }`.
macro_rules! json_messages {
    ($module:ident: $($name:ident { $($field:ident $(($($opt:tt)*))?),* $(,)? })*) => {$(
        impl ToJson for $module::$name {
            fn to_json(&self) -> Result<Value, Invalid> {
                let $module::$name { $($field),* } = self;
                let mut out = Map::new();
                $(json_field!(out, $field $(, $($opt)*)?);)*
                Ok(Value::Object(out))
            }
        }
    )*};
}

// The rows follow Kubernetes' Go types: `keep` marks pointer fields and fields without `omitempty`.
json_messages! { corev1:
    NamespaceSpec { finalizers }
    NamespaceCondition { r#type(keep), status(keep), last_transition_time, reason, message }
    NamespaceStatus { phase, conditions }
    Namespace { metadata, spec, status }
    ConfigMap { metadata, immutable(keep), data, binary_data }
    Secret { metadata, immutable(keep), data, string_data, r#type }
    ServicePort { name, protocol, app_protocol(keep), port(keep), target_port, node_port }
    ClientIpConfig { timeout_seconds(keep) }
    SessionAffinityConfig { client_ip("clientIP") }
    ServiceSpec { ports, selector, cluster_ip("clusterIP"), cluster_ips("clusterIPs"), r#type,
        external_ips("externalIPs"), session_affinity, load_balancer_ip("loadBalancerIP"),
        load_balancer_source_ranges, external_name, external_traffic_policy, health_check_node_port,
        publish_not_ready_addresses, session_affinity_config, ip_families, ip_family_policy(keep),
        allocate_load_balancer_node_ports(keep), load_balancer_class(keep),
        internal_traffic_policy(keep), traffic_distribution(keep) }
    PortStatus { port(keep), protocol(keep), error(keep) }
    LoadBalancerIngress { ip, hostname, ip_mode(keep), ports }
    LoadBalancerStatus { ingress }
    ServiceStatus { load_balancer, conditions }
    Service { metadata, spec, status }
    HostPathVolumeSource { path(keep), r#type(keep) }
    EmptyDirVolumeSource { medium, size_limit }
    GcePersistentDiskVolumeSource { pd_name(keep), fs_type, partition, read_only }
    AwsElasticBlockStoreVolumeSource { volume_id(keep, "volumeID"), fs_type, partition, read_only }
    GitRepoVolumeSource { repository(keep), revision, directory }
    KeyToPath { key(keep), path(keep), mode(keep) }
    SecretVolumeSource { secret_name, items, default_mode(keep), optional(keep) }
    NfsVolumeSource { server(keep), path(keep), read_only }
    LocalObjectReference { name }
    IscsiVolumeSource { target_portal(keep), iqn(keep), lun(keep), iscsi_interface, fs_type,
        read_only, portals, chap_auth_discovery, chap_auth_session, secret_ref, initiator_name(keep) }
    GlusterfsVolumeSource { endpoints(keep), path(keep), read_only }
    PersistentVolumeClaimVolumeSource { claim_name(keep), read_only }
    RbdVolumeSource { monitors, image(keep), fs_type, pool, user, keyring, secret_ref, read_only }
    FlexVolumeSource { driver(keep), fs_type, secret_ref, read_only, options }
    CinderVolumeSource { volume_id(keep, "volumeID"), fs_type, read_only, secret_ref }
    CephFsVolumeSource { monitors, path, user, secret_file, secret_ref, read_only }
    FlockerVolumeSource { dataset_name, dataset_uuid("datasetUUID") }
    ObjectFieldSelector { api_version, field_path(keep) }
    ResourceFieldSelector { container_name, resource(keep), divisor }
    DownwardAPIVolumeFile { path(keep), field_ref, resource_field_ref, mode(keep) }
    DownwardAPIVolumeSource { items, default_mode(keep) }
    FcVolumeSource { target_ww_ns("targetWWNs"), lun(keep), fs_type, read_only, wwids }
    AzureFileVolumeSource { secret_name(keep), share_name(keep), read_only }
    ConfigMapVolumeSource { local_object_reference(inline), items, default_mode(keep),
        optional(keep) }
    VsphereVirtualDiskVolumeSource { volume_path(keep), fs_type, storage_policy_name,
        storage_policy_id("storagePolicyID") }
    QuobyteVolumeSource { registry(keep), volume(keep), read_only, user, group, tenant }
    AzureDiskVolumeSource { disk_name(keep), disk_uri(keep, "diskURI"), caching_mode(keep),
        fs_type(keep), read_only(keep), kind(keep) }
    PhotonPersistentDiskVolumeSource { pd_id(keep, "pdID"), fs_type }
    SecretProjection { local_object_reference(inline), items, optional(keep) }
    DownwardAPIProjection { items }
    ConfigMapProjection { local_object_reference(inline), items, optional(keep) }
    ServiceAccountTokenProjection { audience, expiration_seconds(keep), path(keep) }
    ClusterTrustBundleProjection { name(keep), signer_name(keep), label_selector, optional(keep),
        path(keep) }
    PodCertificateProjection { signer_name, key_type, max_expiration_seconds(keep),
        credential_bundle_path, key_path, certificate_chain_path, user_annotations }
    VolumeProjection { secret, downward_api("downwardAPI"), config_map, service_account_token,
        cluster_trust_bundle, pod_certificate }
    ProjectedVolumeSource { sources, default_mode(keep) }
    PortworxVolumeSource { volume_id(keep, "volumeID"), fs_type, read_only }
    ScaleIoVolumeSource { gateway(keep), system(keep), secret_ref, ssl_enabled, protection_domain,
        storage_pool, storage_mode, volume_name, fs_type, read_only }
    StorageOsVolumeSource { volume_name, volume_namespace, fs_type, read_only, secret_ref }
    CSIVolumeSource { driver(keep), read_only(keep), fs_type(keep), volume_attributes,
        node_publish_secret_ref }
    VolumeResourceRequirements { limits, requests }
    TypedLocalObjectReference { api_group(keep), kind(keep), name(keep) }
    TypedObjectReference { api_group(keep), kind(keep), name(keep), namespace(keep) }
    PersistentVolumeClaimSpec { access_modes, selector, resources, volume_name,
        storage_class_name(keep), volume_mode(keep), data_source, data_source_ref,
        volume_attributes_class_name(keep) }
    PersistentVolumeClaimTemplate { metadata, spec }
    EphemeralVolumeSource { volume_claim_template }
    ImageVolumeSource { reference, pull_policy }
    VolumeSource { host_path, empty_dir, gce_persistent_disk, aws_elastic_block_store, git_repo,
        secret, nfs, iscsi, glusterfs, persistent_volume_claim, rbd, flex_volume, cinder, cephfs,
        flocker, downward_api("downwardAPI"), fc, azure_file, config_map, vsphere_volume, quobyte,
        azure_disk, photon_persistent_disk, projected, portworx_volume, scale_io("scaleIO"),
        storageos, csi, ephemeral, image }
    Volume { name(keep), volume_source(inline) }
    ContainerPort { name, host_port, container_port(keep), protocol, host_ip("hostIP") }
    ConfigMapEnvSource { local_object_reference(inline), optional(keep) }
    SecretEnvSource { local_object_reference(inline), optional(keep) }
    EnvFromSource { prefix, config_map_ref, secret_ref }
    ConfigMapKeySelector { local_object_reference(inline), key(keep), optional(keep) }
    SecretKeySelector { local_object_reference(inline), key(keep), optional(keep) }
    FileKeySelector { volume_name(keep), path(keep), key(keep), optional(keep) }
    EnvVarSource { field_ref, resource_field_ref, config_map_key_ref, secret_key_ref, file_key_ref }
    EnvVar { name(keep), value, value_from }
    ResourceClaim { name(keep), request }
    ResourceRequirements { limits, requests, claims }
    ContainerResizePolicy { resource_name(keep), restart_policy(keep) }
    ContainerRestartRuleOnExitCodes { operator, values }
    ContainerRestartRule { action, exit_codes }
    VolumeMount { name(keep), read_only, recursive_read_only(keep), mount_path(keep), sub_path,
        mount_propagation(keep), sub_path_expr }
    VolumeDevice { name(keep), device_path(keep) }
    ExecAction { command }
    HttpHeader { name(keep), value(keep) }
    HttpGetAction { path, port, host, scheme, http_headers }
    TcpSocketAction { port, host }
    GrpcAction { port(keep), service(keep) }
    ProbeHandler { exec, http_get, tcp_socket, grpc }
    Probe { handler(inline), initial_delay_seconds, timeout_seconds, period_seconds,
        success_threshold, failure_threshold, termination_grace_period_seconds(keep) }
    SleepAction { seconds(keep) }
    LifecycleHandler { exec, http_get, tcp_socket, sleep }
    Lifecycle { post_start, pre_stop, stop_signal(keep) }
    Capabilities { add, drop }
    SeLinuxOptions { user, role, r#type, level }
    WindowsSecurityContextOptions { gmsa_credential_spec_name(keep), gmsa_credential_spec(keep),
        run_as_user_name(keep), host_process(keep) }
    SeccompProfile { r#type(keep), localhost_profile(keep) }
    AppArmorProfile { r#type(keep), localhost_profile(keep) }
    SecurityContext { capabilities, privileged(keep), se_linux_options, windows_options,
        run_as_user(keep), run_as_group(keep), run_as_non_root(keep),
        read_only_root_filesystem(keep), allow_privilege_escalation(keep), proc_mount(keep),
        seccomp_profile, app_armor_profile }
    Container { name(keep), image, command, args, working_dir, ports, env_from, env, resources,
        resize_policy, restart_policy(keep), restart_policy_rules, volume_mounts, volume_devices,
        liveness_probe, readiness_probe, startup_probe, lifecycle, termination_message_path,
        termination_message_policy, image_pull_policy, security_context, stdin, stdin_once, tty }
    EphemeralContainerCommon { name(keep), image, command, args, working_dir, ports, env_from, env,
        resources, resize_policy, restart_policy(keep), restart_policy_rules, volume_mounts,
        volume_devices, liveness_probe, readiness_probe, startup_probe, lifecycle,
        termination_message_path, termination_message_policy, image_pull_policy, security_context,
        stdin, stdin_once, tty }
    EphemeralContainer { ephemeral_container_common(inline), target_container_name }
    Sysctl { name(keep), value(keep) }
    PodSecurityContext { se_linux_options, windows_options, run_as_user(keep), run_as_group(keep),
        run_as_non_root(keep), supplemental_groups, supplemental_groups_policy(keep),
        fs_group(keep), sysctls, fs_group_change_policy(keep), seccomp_profile, app_armor_profile,
        se_linux_change_policy(keep) }
    NodeSelectorRequirement { key(keep), operator(keep), values }
    NodeSelectorTerm { match_expressions, match_fields }
    NodeSelector { node_selector_terms }
    PreferredSchedulingTerm { weight(keep), preference }
    NodeAffinity { required_during_scheduling_ignored_during_execution,
        preferred_during_scheduling_ignored_during_execution }
    PodAffinityTerm { label_selector, namespaces, topology_key(keep), namespace_selector,
        match_label_keys, mismatch_label_keys }
    WeightedPodAffinityTerm { weight(keep), pod_affinity_term }
    PodAffinity { required_during_scheduling_ignored_during_execution,
        preferred_during_scheduling_ignored_during_execution }
    PodAntiAffinity { required_during_scheduling_ignored_during_execution,
        preferred_during_scheduling_ignored_during_execution }
    Affinity { node_affinity, pod_affinity, pod_anti_affinity }
    Toleration { key, operator, value, effect, toleration_seconds(keep) }
    HostAlias { ip(keep), hostnames }
    PodDnsConfigOption { name, value(keep) }
    PodDnsConfig { nameservers, searches, options }
    PodReadinessGate { condition_type(keep) }
    TopologySpreadConstraint { max_skew(keep), topology_key(keep), when_unsatisfiable(keep),
        label_selector, min_domains(keep), node_affinity_policy(keep), node_taints_policy(keep),
        match_label_keys }
    PodOs { name(keep) }
    PodSchedulingGate { name(keep) }
    PodResourceClaim { name(keep), resource_claim_name(keep), resource_claim_template_name(keep) }
    WorkloadReference { name(keep), pod_group(keep), pod_group_replica_key }
    PodSpec { volumes, init_containers, containers, ephemeral_containers, restart_policy,
        termination_grace_period_seconds(keep), active_deadline_seconds(keep), dns_policy,
        node_selector, service_account_name, service_account, automount_service_account_token(keep),
        node_name, host_network, host_pid("hostPID"), host_ipc("hostIPC"),
        share_process_namespace(keep), security_context, image_pull_secrets, hostname, subdomain,
        affinity, scheduler_name, tolerations, host_aliases, priority_class_name, priority(keep),
        dns_config, readiness_gates, runtime_class_name(keep), enable_service_links(keep),
        preemption_policy(keep), overhead, topology_spread_constraints, set_hostname_as_fqdn(keep,
        "setHostnameAsFQDN"), os, host_users(keep), scheduling_gates, resource_claims, resources,
        hostname_override(keep), workload_ref }
    PodTemplateSpec { metadata, spec }
}
json_messages! { appsv1:
    RollingUpdateDeployment { max_unavailable, max_surge }
    DeploymentStrategy { r#type, rolling_update }
    DeploymentSpec { replicas(keep), selector, template, strategy, min_ready_seconds,
        revision_history_limit(keep), paused, progress_deadline_seconds(keep) }
    DeploymentCondition { r#type(keep), status(keep), last_update_time, last_transition_time,
        reason, message }
    DeploymentStatus { observed_generation, replicas, updated_replicas, ready_replicas,
        available_replicas, unavailable_replicas, terminating_replicas(keep), conditions,
        collision_count(keep) }
    Deployment { metadata, spec, status }
}
json_messages! { metav1:
    OwnerReference { api_version(keep), kind(keep), name(keep), uid(keep), controller(keep),
        block_owner_deletion(keep) }
    ManagedFieldsEntry { manager, operation, api_version, time, fields_type, fields_v1, subresource }
    ObjectMeta { name, generate_name, namespace, self_link, uid, resource_version, generation,
        creation_timestamp, deletion_timestamp, deletion_grace_period_seconds(keep), labels,
        annotations, owner_references, finalizers, managed_fields }
    Condition { r#type(keep), status(keep), observed_generation, last_transition_time, reason(keep),
        message(keep) }
    LabelSelectorRequirement { key(keep), operator(keep), values }
    LabelSelector { match_labels, match_expressions }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_pb::apimachinery::pkg::api::resource::Quantity;
    use k8s_pb::apimachinery::pkg::runtime::TypeMeta;
    use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
    use serde_json::json;

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    fn map<V>(entries: &[(&str, V)]) -> BTreeMap<String, V>
    where
        V: Clone,
    {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    fn quantity(v: &str) -> Quantity {
        Quantity { string: s(v) }
    }

    /// Object metadata as Go's encoder writes it: every non-pointer field present, zero or not.
    fn go_meta(name: &str) -> metav1::ObjectMeta {
        metav1::ObjectMeta {
            name: s(name),
            generate_name: s(""),
            namespace: s(""),
            self_link: s(""),
            uid: s(""),
            resource_version: s(""),
            generation: Some(0),
            creation_timestamp: Some(metav1::Time::default()),
            ..Default::default()
        }
    }

    fn body(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let unknown = Unknown {
            type_meta: Some(TypeMeta {
                api_version: s(api_version),
                kind: s(kind),
            }),
            raw: Some(raw),
            content_encoding: s(""),
            content_type: s(""),
        };
        let mut out = MAGIC.to_vec();
        out.extend(unknown.encode_to_vec());
        out
    }

    /// Decodes the message as a request body and checks the result against the typed schema.
    fn decoded(api_version: &str, kind: &str, msg: &impl Message) -> Value {
        let v = decode(&body(api_version, kind, msg.encode_to_vec()))
            .unwrap_or_else(|e| panic!("{kind}: {}", e.message));
        let resource = crate::api::lookup_kind(api_version, kind).unwrap();
        let checked = crate::api::typed::check(resource, &v).unwrap();
        assert!(checked.unknown.is_empty(), "{:?}", checked.unknown);
        v
    }

    #[test]
    fn namespace() {
        let mut meta = go_meta("team-a");
        meta.labels = map(&[("team", "a".to_string())]);
        let ns = corev1::Namespace {
            metadata: Some(meta),
            spec: Some(Default::default()),
            status: Some(corev1::NamespaceStatus {
                phase: s(""),
                conditions: vec![],
            }),
        };
        assert_eq!(
            decoded("v1", "Namespace", &ns),
            json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "team-a", "labels": {"team": "a"}}, "spec": {}, "status": {}})
        );
    }

    #[test]
    fn configmap_with_data_and_binary_data() {
        let cm = corev1::ConfigMap {
            metadata: Some(go_meta("settings")),
            immutable: None,
            data: map(&[("mode", "fast".to_string()), ("empty", String::new())]),
            binary_data: map(&[("blob", vec![0u8, 1, 2, 255])]),
        };
        assert_eq!(
            decoded("v1", "ConfigMap", &cm),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
                "data": {"mode": "fast", "empty": ""}, "binaryData": {"blob": "AAEC/w=="}})
        );
    }

    #[test]
    fn secret_with_type_and_bytes() {
        let secret = corev1::Secret {
            metadata: Some(go_meta("db")),
            immutable: Some(false),
            data: map(&[("password", b"s3cret".to_vec())]),
            string_data: BTreeMap::new(),
            r#type: s("Opaque"),
        };
        assert_eq!(
            decoded("v1", "Secret", &secret),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
                "immutable": false, "data": {"password": "czNjcmV0"}, "type": "Opaque"})
        );
    }

    #[test]
    fn service_ports_with_int_and_string_target_ports() {
        let port = |name: &str, port: i32, target: IntOrString| corev1::ServicePort {
            name: s(name),
            protocol: s("TCP"),
            app_protocol: None,
            port: Some(port),
            target_port: Some(target),
            node_port: Some(0),
        };
        let svc = corev1::Service {
            metadata: Some(go_meta("web")),
            spec: Some(corev1::ServiceSpec {
                ports: vec![
                    port(
                        "http",
                        80,
                        IntOrString {
                            r#type: Some(0),
                            int_val: Some(8080),
                            str_val: s(""),
                        },
                    ),
                    port(
                        "metrics",
                        9090,
                        IntOrString {
                            r#type: Some(1),
                            int_val: Some(0),
                            str_val: s("metrics"),
                        },
                    ),
                ],
                selector: map(&[("app", "web".to_string())]),
                cluster_ip: s(""),
                r#type: s("ClusterIP"),
                session_affinity: s(""),
                health_check_node_port: Some(0),
                publish_not_ready_addresses: Some(false),
                ..Default::default()
            }),
            status: Some(corev1::ServiceStatus {
                load_balancer: Some(Default::default()),
                conditions: vec![],
            }),
        };
        assert_eq!(
            decoded("v1", "Service", &svc),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                "spec": {
                    "ports": [
                        {"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080},
                        {"name": "metrics", "protocol": "TCP", "port": 9090, "targetPort": "metrics"}
                    ],
                    "selector": {"app": "web"},
                    "type": "ClusterIP"
                },
                "status": {"loadBalancer": {}}})
        );
    }

    fn deployment(replicas: i32) -> appsv1::Deployment {
        let labels = map(&[("app", "web".to_string())]);
        let mut template_meta = go_meta("");
        template_meta.labels = labels.clone();
        let container = corev1::Container {
            name: s("web"),
            image: s("nginx:1.27"),
            command: vec!["nginx".into()],
            args: vec!["-g".into(), "daemon off;".into()],
            working_dir: s(""),
            ports: vec![corev1::ContainerPort {
                name: s(""),
                host_port: Some(0),
                container_port: Some(80),
                protocol: s("TCP"),
                host_ip: s(""),
            }],
            env: vec![
                corev1::EnvVar {
                    name: s("MODE"),
                    value: s("fast"),
                    value_from: None,
                },
                corev1::EnvVar {
                    name: s("POD"),
                    value: s(""),
                    value_from: Some(corev1::EnvVarSource {
                        field_ref: Some(corev1::ObjectFieldSelector {
                            api_version: s("v1"),
                            field_path: s("metadata.name"),
                        }),
                        ..Default::default()
                    }),
                },
            ],
            resources: Some(corev1::ResourceRequirements {
                limits: map(&[("cpu", quantity("500m")), ("memory", quantity("128Mi"))]),
                requests: map(&[("cpu", quantity("250m"))]),
                claims: vec![],
            }),
            readiness_probe: Some(corev1::Probe {
                handler: Some(corev1::ProbeHandler {
                    http_get: Some(corev1::HttpGetAction {
                        path: s("/healthz"),
                        port: Some(IntOrString {
                            r#type: Some(1),
                            int_val: Some(0),
                            str_val: s("http"),
                        }),
                        host: s(""),
                        scheme: s("HTTP"),
                        http_headers: vec![],
                    }),
                    ..Default::default()
                }),
                initial_delay_seconds: Some(0),
                period_seconds: Some(10),
                ..Default::default()
            }),
            termination_message_path: s("/dev/termination-log"),
            termination_message_policy: s("File"),
            image_pull_policy: s("IfNotPresent"),
            stdin: Some(false),
            stdin_once: Some(false),
            tty: Some(false),
            ..Default::default()
        };
        appsv1::Deployment {
            metadata: Some(go_meta("web")),
            spec: Some(appsv1::DeploymentSpec {
                replicas: Some(replicas),
                selector: Some(metav1::LabelSelector {
                    match_labels: labels,
                    match_expressions: vec![],
                }),
                template: Some(corev1::PodTemplateSpec {
                    metadata: Some(template_meta),
                    spec: Some(corev1::PodSpec {
                        containers: vec![container],
                        restart_policy: s("Always"),
                        termination_grace_period_seconds: Some(30),
                        dns_policy: s("ClusterFirst"),
                        service_account_name: s(""),
                        host_network: Some(false),
                        security_context: Some(Default::default()),
                        scheduler_name: s("default-scheduler"),
                        ..Default::default()
                    }),
                }),
                strategy: Some(appsv1::DeploymentStrategy {
                    r#type: s("RollingUpdate"),
                    rolling_update: Some(appsv1::RollingUpdateDeployment {
                        max_unavailable: Some(IntOrString {
                            r#type: Some(1),
                            int_val: Some(0),
                            str_val: s("25%"),
                        }),
                        max_surge: Some(IntOrString {
                            r#type: Some(0),
                            int_val: Some(1),
                            str_val: s(""),
                        }),
                    }),
                }),
                min_ready_seconds: Some(0),
                revision_history_limit: Some(10),
                paused: Some(false),
                progress_deadline_seconds: Some(600),
            }),
            status: Some(appsv1::DeploymentStatus {
                observed_generation: Some(0),
                replicas: Some(0),
                updated_replicas: Some(0),
                ready_replicas: Some(0),
                available_replicas: Some(0),
                unavailable_replicas: Some(0),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn deployment_with_pod_template() {
        assert_eq!(
            decoded("apps/v1", "Deployment", &deployment(3)),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
                "spec": {
                    "replicas": 3,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {
                            "containers": [{
                                "name": "web",
                                "image": "nginx:1.27",
                                "command": ["nginx"],
                                "args": ["-g", "daemon off;"],
                                "ports": [{"containerPort": 80, "protocol": "TCP"}],
                                "env": [
                                    {"name": "MODE", "value": "fast"},
                                    {"name": "POD", "valueFrom": {"fieldRef":
                                        {"apiVersion": "v1", "fieldPath": "metadata.name"}}}
                                ],
                                "resources": {
                                    "limits": {"cpu": "500m", "memory": "128Mi"},
                                    "requests": {"cpu": "250m"}
                                },
                                "readinessProbe": {
                                    "httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP"},
                                    "periodSeconds": 10
                                },
                                "terminationMessagePath": "/dev/termination-log",
                                "terminationMessagePolicy": "File",
                                "imagePullPolicy": "IfNotPresent"
                            }],
                            "restartPolicy": "Always",
                            "terminationGracePeriodSeconds": 30,
                            "dnsPolicy": "ClusterFirst",
                            "securityContext": {},
                            "schedulerName": "default-scheduler"
                        }
                    },
                    "strategy": {"type": "RollingUpdate",
                        "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": 1}},
                    "revisionHistoryLimit": 10,
                    "progressDeadlineSeconds": 600
                },
                "status": {}})
        );
    }

    #[test]
    fn explicit_zero_replicas_are_kept() {
        let v = decoded("apps/v1", "Deployment", &deployment(0));
        assert_eq!(v["spec"]["replicas"], json!(0));
    }

    #[test]
    fn times_are_rfc3339_in_utc() {
        let mut meta = go_meta("t");
        meta.creation_timestamp = Some(metav1::Time {
            seconds: Some(1_136_214_245),
            nanos: Some(999),
        });
        meta.deletion_timestamp = Some(metav1::Time {
            seconds: Some(0),
            nanos: Some(0),
        });
        meta.managed_fields = vec![metav1::ManagedFieldsEntry {
            manager: s("kubectl-create"),
            operation: s("Update"),
            api_version: s("v1"),
            time: Some(metav1::Time {
                seconds: Some(1_136_214_245),
                nanos: None,
            }),
            fields_type: s("FieldsV1"),
            fields_v1: Some(metav1::FieldsV1 {
                raw: Some(br#"{"f:data":{}}"#.to_vec()),
            }),
            subresource: s(""),
        }];
        let cm = corev1::ConfigMap {
            metadata: Some(meta),
            ..Default::default()
        };
        assert_eq!(
            decoded("v1", "ConfigMap", &cm)["metadata"],
            json!({"name": "t", "creationTimestamp": "2006-01-02T15:04:05Z",
                "deletionTimestamp": "1970-01-01T00:00:00Z",
                "managedFields": [{"manager": "kubectl-create", "operation": "Update",
                    "apiVersion": "v1", "time": "2006-01-02T15:04:05Z", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:data": {}}}]})
        );
        let micro = metav1::MicroTime {
            seconds: Some(1_136_214_245),
            nanos: Some(123_456_789),
        };
        assert_eq!(
            micro.to_json().unwrap(),
            json!("2006-01-02T15:04:05.123456Z")
        );
        assert_eq!(metav1::MicroTime::default().to_json().unwrap(), Value::Null);
    }

    /// Bodies kubectl 1.32.4 sent for `kubectl create namespace team-a`, `create configmap settings
    /// --from-literal=mode=fast --from-file=blob=<the bytes 00 01 02 ff>`, `create secret generic db
    /// --from-literal=password=s3cret`, `create service clusterip web --tcp=80:8080
    /// --tcp=9090:metrics` and `create deployment web --image=nginx:1.27 --replicas=3 --port=80`,
    /// against what the same commands print with `--dry-run=client -o json`, nulls dropped.
    #[test]
    fn kubectl_request_bodies() {
        let cases: [(&[u8], Value); 5] = [
            (
                b"k8s\x00\x0a\x0f\x0a\x02v1\x12\x09Namespace\x12\x1e\x0a\x16\x0a\x06team-a\x12\x00\x1a\x00\"\x00*\x002\x008\x00B\x00\x12\x00\x1a\x02\x0a\x00\x1a\x00\"\x00",
                json!({"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": "team-a"},
                    "spec": {}, "status": {}}),
            ),
            (
                b"k8s\x00\x0a\x0f\x0a\x02v1\x12\x09ConfigMap\x12=\x0a\x1f\x0a\x08settings\x12\x00\x1a\x07default\"\x00*\x002\x008\x00B\x00\x12\x0c\x0a\x04mode\x12\x04fast\x1a\x0c\x0a\x04blob\x12\x04\x00\x01\x02\xff\x1a\x00\"\x00",
                json!({"kind": "ConfigMap", "apiVersion": "v1",
                    "metadata": {"name": "settings", "namespace": "default"},
                    "data": {"mode": "fast"}, "binaryData": {"blob": "AAEC/w=="}}),
            ),
            (
                b"k8s\x00\x0a\x0c\x0a\x02v1\x12\x06Secret\x121\x0a\x19\x0a\x02db\x12\x00\x1a\x07default\"\x00*\x002\x008\x00B\x00\x12\x12\x0a\x08password\x12\x06s3cret\x1a\x00\x1a\x00\"\x00",
                json!({"kind": "Secret", "apiVersion": "v1",
                    "metadata": {"name": "db", "namespace": "default"},
                    "data": {"password": "czNjcmV0"}}),
            ),
            (
                b"k8s\x00\x0a\x0d\x0a\x02v1\x12\x07Service\x12\x99\x01\x0a&\x0a\x03web\x12\x00\x1a\x07default\"\x00*\x002\x008\x00B\x00Z\x0a\x0a\x03app\x12\x03web\x12k\x0a\x1b\x0a\x0780-8080\x12\x03TCP\x18P\"\x07\x08\x00\x10\x90?\x1a\x00(\x00\x0a'\x0a\x0c9090-metrics\x12\x03TCP\x18\x82G\"\x0d\x08\x01\x10\x00\x1a\x07metrics(\x00\x12\x0a\x0a\x03app\x12\x03web\x1a\x00\"\x09ClusterIP:\x00B\x00R\x00Z\x00`\x00h\x00\x1a\x02\x0a\x00\x1a\x00\"\x00",
                json!({"kind": "Service", "apiVersion": "v1",
                    "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
                    "spec": {
                        "ports": [
                            {"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080},
                            {"name": "9090-metrics", "protocol": "TCP", "port": 9090,
                                "targetPort": "metrics"}
                        ],
                        "selector": {"app": "web"},
                        "type": "ClusterIP"
                    },
                    "status": {"loadBalancer": {}}}),
            ),
            (
                b"k8s\x00\x0a\x15\x0a\x07apps/v1\x12\x0aDeployment\x12\xc4\x01\x0a&\x0a\x03web\x12\x00\x1a\x07default\"\x00*\x002\x008\x00B\x00Z\x0a\x0a\x03app\x12\x03web\x12\x8b\x01\x08\x03\x12\x0c\x0a\x0a\x0a\x03app\x12\x03web\x1aq\x0a\x1c\x0a\x00\x12\x00\x1a\x00\"\x00*\x002\x008\x00B\x00Z\x0a\x0a\x03app\x12\x03web\x12Q\x123\x0a\x05nginx\x12\x0anginx:1.27*\x002\x0a\x0a\x00\x10\x00\x18P\"\x00*\x00B\x00j\x00r\x00\x80\x01\x00\x88\x01\x00\x90\x01\x00\xa2\x01\x00\x1a\x002\x00B\x00J\x00R\x00X\x00`\x00h\x00\x82\x01\x00\x8a\x01\x00\x9a\x01\x00\xc2\x01\x00\"\x02\x0a\x00(\x008\x00\x1a\x0c\x08\x00\x10\x00\x18\x00 \x00(\x008\x00\x1a\x00\"\x00",
                json!({"kind": "Deployment", "apiVersion": "apps/v1",
                    "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
                    "spec": {
                        "replicas": 3,
                        "selector": {"matchLabels": {"app": "web"}},
                        "template": {
                            "metadata": {"labels": {"app": "web"}},
                            "spec": {"containers": [{"name": "nginx", "image": "nginx:1.27",
                                "ports": [{"containerPort": 80}], "resources": {}}]}
                        },
                        "strategy": {}
                    },
                    "status": {}}),
            ),
        ];
        for (body, want) in cases {
            let got = decode(body).unwrap_or_else(|e| panic!("{}", e.message));
            assert_eq!(got, want);
            let r = crate::api::lookup_kind(
                want["apiVersion"].as_str().unwrap(),
                want["kind"].as_str().unwrap(),
            )
            .unwrap();
            assert!(crate::api::typed::check(r, &got)
                .unwrap()
                .unknown
                .is_empty());
        }
    }

    fn bad_request(body: &[u8]) -> String {
        let e = decode(body).unwrap_err();
        assert_eq!(e.code, 400, "{}", e.message);
        e.message
    }

    #[test]
    fn bad_values_are_refused_with_their_field_path() {
        let mut meta = go_meta("t");
        meta.creation_timestamp = Some(metav1::Time {
            seconds: Some(i64::MAX),
            nanos: None,
        });
        let cm = corev1::ConfigMap {
            metadata: Some(meta),
            ..Default::default()
        };
        let msg = bad_request(&body("v1", "ConfigMap", cm.encode_to_vec()));
        assert!(msg.contains("metadata.creationTimestamp"), "{msg}");

        let mut d = deployment(1);
        let spec = d.spec.as_mut().unwrap();
        let pod = spec.template.as_mut().unwrap().spec.as_mut().unwrap();
        pod.containers[0]
            .ports
            .push(corev1::ContainerPort::default());
        let probe = pod.containers[0].readiness_probe.as_mut().unwrap();
        let http = probe.handler.as_mut().unwrap().http_get.as_mut().unwrap();
        http.port.as_mut().unwrap().r#type = Some(7);
        let msg = bad_request(&body("apps/v1", "Deployment", d.encode_to_vec()));
        assert!(
            msg.contains("spec.template.spec.containers[0].readinessProbe.httpGet.port"),
            "{msg}"
        );

        let mut meta = go_meta("t");
        meta.managed_fields = vec![metav1::ManagedFieldsEntry {
            fields_v1: Some(metav1::FieldsV1 {
                raw: Some(b"{not json".to_vec()),
            }),
            ..Default::default()
        }];
        let ns = corev1::Namespace {
            metadata: Some(meta),
            ..Default::default()
        };
        let msg = bad_request(&body("v1", "Namespace", ns.encode_to_vec()));
        assert!(msg.contains("metadata.managedFields[0].fieldsV1"), "{msg}");
    }

    #[test]
    fn malformed_envelopes_are_bad_requests() {
        let ns = corev1::Namespace {
            metadata: Some(go_meta("x")),
            ..Default::default()
        }
        .encode_to_vec();
        assert!(bad_request(b"{\"kind\":\"Namespace\"}").contains("magic"));
        assert!(bad_request(b"k8s\0\xff\xff\xff").contains("envelope"));
        assert!(bad_request(&body("v1", "", ns.clone())).contains("Kind"));
        assert!(bad_request(&body("", "Namespace", ns.clone())).contains("apiVersion"));
        assert!(bad_request(&body("v1", "Widget", ns.clone())).contains("Widget"));
        assert!(bad_request(&body("apps/v1", "Namespace", ns.clone())).contains("Namespace"));

        let mut unknown = Unknown::decode(&body("v1", "Namespace", ns.clone())[4..]).unwrap();
        unknown.content_encoding = s("gzip");
        let mut gz = MAGIC.to_vec();
        gz.extend(unknown.encode_to_vec());
        assert!(bad_request(&gz).contains("gzip"));

        // The object bytes are a string where ObjectMeta is expected: a wire-type mismatch.
        let msg = bad_request(&body("v1", "Namespace", vec![0x0a, 0x02, 0xff, 0xfe]));
        assert!(msg.contains("malformed protobuf object"), "{msg}");
    }

    /// A small deterministic generator, so a failure reproduces.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn truncated_and_corrupted_bodies_never_panic() {
        let good = body("apps/v1", "Deployment", deployment(2).encode_to_vec());
        assert!(decode(&good).is_ok());
        for len in 0..good.len() {
            if let Err(e) = decode(&good[..len]) {
                assert_eq!(e.code, 400);
            }
        }
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            let mut bad = good.clone();
            for _ in 0..1 + xorshift(&mut state) % 4 {
                let at = 4 + (xorshift(&mut state) as usize) % (bad.len() - 4);
                bad[at] = xorshift(&mut state) as u8;
            }
            if let Err(e) = decode(&bad) {
                assert_eq!(e.code, 400);
            }
        }
        for _ in 0..5_000 {
            let len = (xorshift(&mut state) % 64) as usize;
            let mut bad = MAGIC.to_vec();
            bad.extend((0..len).map(|_| xorshift(&mut state) as u8));
            if let Err(e) = decode(&bad) {
                assert_eq!(e.code, 400);
            }
        }
    }
}
