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
use k8s_pb::api::authentication::v1 as authnv1;
use k8s_pb::api::authentication::v1alpha1 as authnv1alpha1;
use k8s_pb::api::authentication::v1beta1 as authnv1beta1;
use k8s_pb::api::authorization::v1 as authzv1;
use k8s_pb::api::coordination::v1 as coordv1;
use k8s_pb::api::core::v1 as corev1;
use k8s_pb::api::discovery::v1 as discv1;
use k8s_pb::api::rbac::v1 as rbacv1;
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
    let raw = unknown.raw.unwrap_or_default();
    // The review kinds are answered, never stored, and TokenRequest is the body of a
    // subresource, so none of them are among the served resources.
    let review = match (api_version.as_str(), kind.as_str()) {
        ("authentication.k8s.io/v1", "TokenRequest") => Some(object::<authnv1::TokenRequest>(&raw)),
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => {
            Some(object::<authzv1::SelfSubjectAccessReview>(&raw))
        }
        ("authorization.k8s.io/v1", "SubjectAccessReview") => {
            Some(object::<authzv1::SubjectAccessReview>(&raw))
        }
        ("authorization.k8s.io/v1", "LocalSubjectAccessReview") => {
            Some(object::<authzv1::LocalSubjectAccessReview>(&raw))
        }
        ("authorization.k8s.io/v1", "SelfSubjectRulesReview") => {
            Some(object::<authzv1::SelfSubjectRulesReview>(&raw))
        }
        ("authentication.k8s.io/v1", "SelfSubjectReview") => {
            Some(object::<authnv1::SelfSubjectReview>(&raw))
        }
        ("authentication.k8s.io/v1beta1", "SelfSubjectReview") => {
            Some(object::<authnv1beta1::SelfSubjectReview>(&raw))
        }
        ("authentication.k8s.io/v1alpha1", "SelfSubjectReview") => {
            Some(object::<authnv1alpha1::SelfSubjectReview>(&raw))
        }
        _ => None,
    };
    let object = match review {
        Some(o) => o,
        None => decode_served(&api_version, &kind, &raw)?,
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

/// The JSON form of a stored kind's protobuf encoding.
fn decode_served(api_version: &str, kind: &str, raw: &[u8]) -> ApiResult<Result<Value, String>> {
    let Some(resource) = crate::api::lookup_kind(api_version, kind) else {
        return Err(ApiError::bad_request(format!(
            "no kind {kind:?} is registered for version {api_version:?}"
        )));
    };
    let raw = raw.to_vec();
    Ok(match (resource.group, resource.kind) {
        ("", "Namespace") => object::<corev1::Namespace>(&raw),
        ("", "Node") => object::<corev1::Node>(&raw),
        ("", "Pod") => object::<corev1::Pod>(&raw),
        ("", "Service") => object::<corev1::Service>(&raw),
        ("", "Endpoints") => object::<corev1::Endpoints>(&raw),
        ("", "ConfigMap") => object::<corev1::ConfigMap>(&raw),
        ("", "Secret") => object::<corev1::Secret>(&raw),
        ("", "Event") => object::<corev1::Event>(&raw),
        ("", "ResourceQuota") => object::<corev1::ResourceQuota>(&raw),
        ("", "LimitRange") => object::<corev1::LimitRange>(&raw),
        ("", "ServiceAccount") => object::<corev1::ServiceAccount>(&raw),
        ("apps", "Deployment") => object::<appsv1::Deployment>(&raw),
        ("apps", "ReplicaSet") => object::<appsv1::ReplicaSet>(&raw),
        ("discovery.k8s.io", "EndpointSlice") => object::<discv1::EndpointSlice>(&raw),
        ("coordination.k8s.io", "Lease") => object::<coordv1::Lease>(&raw),
        ("rbac.authorization.k8s.io", "ClusterRole") => object::<rbacv1::ClusterRole>(&raw),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => {
            object::<rbacv1::ClusterRoleBinding>(&raw)
        }
        ("rbac.authorization.k8s.io", "Role") => object::<rbacv1::Role>(&raw),
        ("rbac.authorization.k8s.io", "RoleBinding") => object::<rbacv1::RoleBinding>(&raw),
        (group, kind) => Err(format!("no protobuf message for {kind} in group {group:?}")),
    })
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

/// Go's `ExtraValue` is a `[]string`, so JSON has the list where protobuf has a wrapper message.
macro_rules! extra_value {
    ($($t:ty),*) => {$(
        impl ToJson for $t {
            fn to_json(&self) -> Result<Value, Invalid> {
                Ok(Value::Array(self.items.iter().cloned().map(Value::String).collect()))
            }
        }
    )*};
}
extra_value!(authzv1::ExtraValue, authnv1::ExtraValue);

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

// The rows follow the Go types of Kubernetes 1.35, the release k8s-pb 0.9 is generated from: `keep`
// marks pointer fields and fields without `omitempty`, and the JSON names are the Go json tags.
json_messages! { corev1:
    NamespaceSpec { finalizers }
    NamespaceCondition { r#type(keep), status(keep), last_transition_time, reason, message }
    NamespaceStatus { phase, conditions }
    Namespace { metadata, spec, status }
    Taint { key(keep), value, effect(keep), time_added }
    ConfigMapNodeConfigSource { namespace(keep), name(keep), uid, resource_version,
        kubelet_config_key(keep) }
    NodeConfigSource { config_map }
    NodeSpec { pod_cidr("podCIDR"), pod_cid_rs("podCIDRs"), provider_id("providerID"),
        unschedulable, taints, config_source, external_id("externalID") }
    NodeCondition { r#type(keep), status(keep), last_heartbeat_time, last_transition_time, reason,
        message }
    NodeAddress { r#type(keep), address(keep) }
    DaemonEndpoint { port(keep, "Port") }
    NodeDaemonEndpoints { kubelet_endpoint }
    NodeSwapStatus { capacity(keep) }
    NodeSystemInfo { machine_id(keep, "machineID"), system_uuid(keep, "systemUUID"), boot_id(keep,
        "bootID"), kernel_version(keep), os_image(keep), container_runtime_version(keep),
        kubelet_version(keep), kube_proxy_version(keep), operating_system(keep), architecture(keep),
        swap }
    ContainerImage { names, size_bytes }
    AttachedVolume { name(keep), device_path(keep) }
    NodeConfigStatus { assigned, active, last_known_good, error }
    NodeRuntimeHandlerFeatures { recursive_read_only_mounts(keep), user_namespaces(keep) }
    NodeRuntimeHandler { name(keep), features }
    NodeFeatures { supplemental_groups_policy(keep) }
    NodeStatus { capacity, allocatable, phase, conditions, addresses, daemon_endpoints, node_info,
        images, volumes_in_use, volumes_attached, config, runtime_handlers, features,
        declared_features }
    Node { metadata, spec, status }
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
    PodCondition { r#type(keep), observed_generation, status(keep), last_probe_time,
        last_transition_time, reason, message }
    HostIp { ip(keep) }
    PodIp { ip(keep) }
    ContainerStateWaiting { reason, message }
    ContainerStateRunning { started_at }
    ContainerStateTerminated { exit_code(keep), signal, reason, message, started_at, finished_at,
        container_id("containerID") }
    ContainerState { waiting, running, terminated }
    VolumeMountStatus { name(keep), mount_path(keep), read_only, recursive_read_only(keep) }
    LinuxContainerUser { uid(keep), gid(keep), supplemental_groups }
    ContainerUser { linux }
    ResourceHealth { resource_id(keep, "resourceID"), health }
    ResourceStatus { name(keep), resources }
    ContainerStatus { name(keep), state, last_state, ready(keep), restart_count(keep), image(keep),
        image_id(keep, "imageID"), container_id("containerID"), started(keep), allocated_resources,
        resources, volume_mounts, user, allocated_resources_status, stop_signal(keep) }
    PodResourceClaimStatus { name(keep), resource_claim_name(keep) }
    ContainerExtendedResourceRequest { container_name(keep), resource_name(keep), request_name(keep) }
    PodExtendedResourceClaimStatus { request_mappings, resource_claim_name(keep) }
    PodStatus { observed_generation, phase, conditions, message, reason, nominated_node_name,
        host_ip("hostIP"), host_ips("hostIPs"), pod_ip("podIP"), pod_ips("podIPs"), start_time,
        init_container_statuses, container_statuses, qos_class, ephemeral_container_statuses,
        resize, resource_claim_statuses, extended_resource_claim_status, allocated_resources,
        resources }
    Pod { metadata, spec, status }
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
    ObjectReference { kind, namespace, name, uid, api_version, resource_version, field_path }
    EndpointAddress { ip(keep), hostname, node_name(keep), target_ref }
    EndpointPort { name, port(keep), protocol, app_protocol(keep) }
    EndpointSubset { addresses, not_ready_addresses, ports }
    Endpoints { metadata, subsets }
    ConfigMap { metadata, immutable(keep), data, binary_data }
    Secret { metadata, immutable(keep), data, string_data, r#type }
    EventSource { component, host }
    EventSeries { count, last_observed_time }
    Event { metadata, involved_object, reason, message, source, first_timestamp, last_timestamp,
        count, r#type, event_time, series, action, related, reporting_component(keep),
        reporting_instance(keep) }
    ScopedResourceSelectorRequirement { scope_name(keep), operator(keep), values }
    ScopeSelector { match_expressions }
    ResourceQuotaSpec { hard, scopes, scope_selector }
    ResourceQuotaStatus { hard, used }
    ResourceQuota { metadata, spec, status }
    LimitRangeItem { r#type(keep), max, min, default, default_request, max_limit_request_ratio }
    LimitRangeSpec { limits }
    LimitRange { metadata, spec }
    ServiceAccount { metadata, secrets, image_pull_secrets, automount_service_account_token(keep) }
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
    ReplicaSetSpec { replicas(keep), min_ready_seconds, selector, template }
    ReplicaSetCondition { r#type(keep), status(keep), last_transition_time, reason, message }
    ReplicaSetStatus { replicas(keep), fully_labeled_replicas, ready_replicas, available_replicas,
        terminating_replicas(keep), observed_generation, conditions }
    ReplicaSet { metadata, spec, status }
}
json_messages! { discv1:
    EndpointConditions { ready(keep), serving(keep), terminating(keep) }
    ForZone { name(keep) }
    ForNode { name(keep) }
    EndpointHints { for_zones, for_nodes }
    Endpoint { addresses, conditions, hostname(keep), target_ref, deprecated_topology,
        node_name(keep), zone(keep), hints }
    EndpointPort { name(keep), protocol(keep), port(keep), app_protocol(keep) }
    EndpointSlice { metadata, address_type(keep), endpoints, ports }
}
json_messages! { coordv1:
    LeaseSpec { holder_identity(keep), lease_duration_seconds(keep), acquire_time, renew_time,
        lease_transitions(keep), strategy(keep), preferred_holder(keep) }
    Lease { metadata, spec }
}
json_messages! { rbacv1:
    PolicyRule { verbs(keep), api_groups, resources, resource_names,
        non_resource_ur_ls("nonResourceURLs") }
    AggregationRule { cluster_role_selectors }
    ClusterRole { metadata, rules(keep), aggregation_rule }
    Role { metadata, rules(keep) }
    Subject { kind(keep), api_group, name(keep), namespace }
    RoleRef { api_group(keep), kind(keep), name(keep) }
    ClusterRoleBinding { metadata, subjects, role_ref(keep) }
    RoleBinding { metadata, subjects, role_ref(keep) }
}
json_messages! { authzv1:
    FieldSelectorAttributes { raw_selector, requirements }
    LabelSelectorAttributes { raw_selector, requirements }
    ResourceAttributes { namespace, verb, group, version, resource, subresource, name,
        field_selector, label_selector }
    NonResourceAttributes { path, verb }
    SelfSubjectAccessReviewSpec { resource_attributes, non_resource_attributes }
    SubjectAccessReviewSpec { resource_attributes, non_resource_attributes, user, groups, extra,
        uid }
    SubjectAccessReviewStatus { allowed(keep), denied, reason, evaluation_error }
    SelfSubjectAccessReview { metadata, spec(keep), status }
    SubjectAccessReview { metadata, spec(keep), status }
    LocalSubjectAccessReview { metadata, spec(keep), status }
    SelfSubjectRulesReviewSpec { namespace }
    ResourceRule { verbs(keep), api_groups, resources, resource_names }
    NonResourceRule { verbs(keep), non_resource_ur_ls("nonResourceURLs") }
    SubjectRulesReviewStatus { resource_rules(keep), non_resource_rules(keep), incomplete(keep),
        evaluation_error }
    SelfSubjectRulesReview { metadata, spec(keep), status }
}
json_messages! { authnv1:
    BoundObjectReference { kind, api_version, name, u_id("uid") }
    TokenRequestSpec { audiences, expiration_seconds(keep), bound_object_ref }
    TokenRequestStatus { token, expiration_timestamp }
    TokenRequest { metadata, spec, status }
    UserInfo { username, uid, groups, extra }
    SelfSubjectReviewStatus { user_info }
    SelfSubjectReview { metadata, status }
}
json_messages! { authnv1beta1:
    SelfSubjectReviewStatus { user_info }
    SelfSubjectReview { metadata, status }
}
json_messages! { authnv1alpha1:
    SelfSubjectReviewStatus { user_info }
    SelfSubjectReview { metadata, status }
}
json_messages! { metav1:
    OwnerReference { api_version(keep), kind(keep), name(keep), uid(keep), controller(keep),
        block_owner_deletion(keep) }
    ManagedFieldsEntry { manager, operation, api_version, time, fields_type, fields_v1, subresource }
    ObjectMeta { name, generate_name, namespace, self_link, uid, resource_version, generation,
        creation_timestamp, deletion_timestamp, deletion_grace_period_seconds(keep), labels,
        annotations, owner_references, finalizers, managed_fields }
    LabelSelectorRequirement { key(keep), operator(keep), values }
    FieldSelectorRequirement { key(keep), operator(keep), values }
    LabelSelector { match_labels, match_expressions }
    Condition { r#type(keep), status(keep), observed_generation, last_transition_time, reason(keep),
        message(keep) }
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
    fn token_request() {
        let tr = authnv1::TokenRequest {
            metadata: Some(Default::default()),
            spec: Some(authnv1::TokenRequestSpec {
                audiences: vec!["vault".into()],
                expiration_seconds: Some(3600),
                bound_object_ref: Some(authnv1::BoundObjectReference {
                    kind: s("Pod"),
                    api_version: s("v1"),
                    name: s("web"),
                    u_id: s("u-1"),
                }),
            }),
            status: Some(Default::default()),
        };
        let v = decode(&body(
            "authentication.k8s.io/v1",
            "TokenRequest",
            tr.encode_to_vec(),
        ))
        .unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "metadata": {}, "spec": {"audiences": ["vault"], "expirationSeconds": 3600,
                    "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "web", "uid": "u-1"}},
                "status": {}})
        );
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

    fn time(seconds: i64) -> Option<metav1::Time> {
        Some(metav1::Time {
            seconds: Some(seconds),
            nanos: Some(0),
        })
    }

    fn micro(seconds: i64, nanos: i32) -> Option<metav1::MicroTime> {
        Some(metav1::MicroTime {
            seconds: Some(seconds),
            nanos: Some(nanos),
        })
    }

    fn namespaced(name: &str) -> Option<metav1::ObjectMeta> {
        let mut meta = go_meta(name);
        meta.namespace = s("default");
        Some(meta)
    }

    #[test]
    fn pod_with_volumes_probes_and_status() {
        let app = corev1::Container {
            name: s("app"),
            image: s("busybox"),
            env_from: vec![corev1::EnvFromSource {
                prefix: s(""),
                config_map_ref: Some(corev1::ConfigMapEnvSource {
                    local_object_reference: Some(corev1::LocalObjectReference {
                        name: s("settings"),
                    }),
                    optional: Some(true),
                }),
                secret_ref: None,
            }],
            volume_mounts: vec![corev1::VolumeMount {
                name: s("cfg"),
                read_only: Some(true),
                mount_path: s("/etc/cfg"),
                sub_path: s(""),
                ..Default::default()
            }],
            liveness_probe: Some(corev1::Probe {
                handler: Some(corev1::ProbeHandler {
                    exec: Some(corev1::ExecAction {
                        command: vec!["true".into()],
                    }),
                    ..Default::default()
                }),
                failure_threshold: Some(3),
                ..Default::default()
            }),
            security_context: Some(corev1::SecurityContext {
                run_as_user: Some(0),
                run_as_non_root: Some(false),
                capabilities: Some(corev1::Capabilities {
                    add: vec![],
                    drop: vec!["ALL".into()],
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let volumes = vec![
            corev1::Volume {
                name: s("cfg"),
                volume_source: Some(corev1::VolumeSource {
                    config_map: Some(corev1::ConfigMapVolumeSource {
                        local_object_reference: Some(corev1::LocalObjectReference {
                            name: s("settings"),
                        }),
                        items: vec![corev1::KeyToPath {
                            key: s("mode"),
                            path: s("mode.txt"),
                            mode: None,
                        }],
                        default_mode: Some(420),
                        optional: None,
                    }),
                    ..Default::default()
                }),
            },
            corev1::Volume {
                name: s("scratch"),
                volume_source: Some(corev1::VolumeSource {
                    empty_dir: Some(corev1::EmptyDirVolumeSource {
                        medium: s(""),
                        size_limit: Some(quantity("1Gi")),
                    }),
                    ..Default::default()
                }),
            },
            corev1::Volume {
                name: s("info"),
                volume_source: Some(corev1::VolumeSource {
                    downward_api: Some(corev1::DownwardAPIVolumeSource {
                        items: vec![corev1::DownwardAPIVolumeFile {
                            path: s("labels"),
                            field_ref: Some(corev1::ObjectFieldSelector {
                                api_version: s("v1"),
                                field_path: s("metadata.labels"),
                            }),
                            ..Default::default()
                        }],
                        default_mode: None,
                    }),
                    ..Default::default()
                }),
            },
        ];
        let pod = corev1::Pod {
            metadata: namespaced("p"),
            spec: Some(corev1::PodSpec {
                volumes,
                containers: vec![app],
                ephemeral_containers: vec![corev1::EphemeralContainer {
                    ephemeral_container_common: Some(corev1::EphemeralContainerCommon {
                        name: s("debug"),
                        image: s("busybox"),
                        tty: Some(true),
                        ..Default::default()
                    }),
                    target_container_name: s("app"),
                }],
                node_name: s("n1"),
                host_pid: Some(true),
                host_ipc: Some(false),
                automount_service_account_token: Some(false),
                tolerations: vec![corev1::Toleration {
                    key: s("node.kubernetes.io/not-ready"),
                    operator: s("Exists"),
                    value: s(""),
                    effect: s("NoExecute"),
                    toleration_seconds: Some(0),
                }],
                affinity: Some(corev1::Affinity {
                    node_affinity: Some(corev1::NodeAffinity {
                        required_during_scheduling_ignored_during_execution: Some(
                            corev1::NodeSelector {
                                node_selector_terms: vec![corev1::NodeSelectorTerm {
                                    match_expressions: vec![corev1::NodeSelectorRequirement {
                                        key: s("zone"),
                                        operator: s("In"),
                                        values: vec!["a".into()],
                                    }],
                                    match_fields: vec![],
                                }],
                            },
                        ),
                        preferred_during_scheduling_ignored_during_execution: vec![],
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(corev1::PodStatus {
                phase: s("Running"),
                conditions: vec![corev1::PodCondition {
                    r#type: s("Ready"),
                    status: s("True"),
                    last_probe_time: Some(metav1::Time::default()),
                    last_transition_time: time(1_700_000_000),
                    reason: s(""),
                    message: s(""),
                    observed_generation: None,
                }],
                host_ip: s("192.168.0.2"),
                pod_ip: s("10.0.0.5"),
                pod_ips: vec![corev1::PodIp { ip: s("10.0.0.5") }],
                start_time: time(1_700_000_000),
                container_statuses: vec![corev1::ContainerStatus {
                    name: s("app"),
                    state: Some(corev1::ContainerState {
                        running: Some(corev1::ContainerStateRunning {
                            started_at: time(1_700_000_001),
                        }),
                        ..Default::default()
                    }),
                    last_state: Some(Default::default()),
                    ready: Some(false),
                    restart_count: Some(0),
                    image: s("busybox"),
                    image_id: s(""),
                    container_id: s("containerd://abc"),
                    started: Some(true),
                    ..Default::default()
                }],
                qos_class: s("BestEffort"),
                ..Default::default()
            }),
        };
        assert_eq!(
            decoded("v1", "Pod", &pod),
            json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {
                "volumes": [
                    {"name": "cfg", "configMap": {"name": "settings",
                        "items": [{"key": "mode", "path": "mode.txt"}], "defaultMode": 420}},
                    {"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}},
                    {"name": "info", "downwardAPI": {"items": [{"path": "labels",
                        "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.labels"}}]}}
                ],
                "containers": [{
                    "name": "app",
                    "image": "busybox",
                    "envFrom": [{"configMapRef": {"name": "settings", "optional": true}}],
                    "volumeMounts": [{"name": "cfg", "readOnly": true, "mountPath": "/etc/cfg"}],
                    "livenessProbe": {"exec": {"command": ["true"]}, "failureThreshold": 3},
                    "securityContext": {"capabilities": {"drop": ["ALL"]}, "runAsUser": 0,
                        "runAsNonRoot": false}
                }],
                "ephemeralContainers": [{"name": "debug", "image": "busybox", "tty": true,
                    "targetContainerName": "app"}],
                "nodeName": "n1",
                "hostPID": true,
                "automountServiceAccountToken": false,
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                    {"nodeSelectorTerms": [{"matchExpressions":
                        [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}},
                "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                    "effect": "NoExecute", "tolerationSeconds": 0}]
            },
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True",
                    "lastTransitionTime": "2023-11-14T22:13:20Z"}],
                "hostIP": "192.168.0.2",
                "podIP": "10.0.0.5",
                "podIPs": [{"ip": "10.0.0.5"}],
                "startTime": "2023-11-14T22:13:20Z",
                "containerStatuses": [{
                    "name": "app",
                    "state": {"running": {"startedAt": "2023-11-14T22:13:21Z"}},
                    "lastState": {},
                    "ready": false,
                    "restartCount": 0,
                    "image": "busybox",
                    "imageID": "",
                    "containerID": "containerd://abc",
                    "started": true
                }],
                "qosClass": "BestEffort"
            }})
        );
    }

    #[test]
    fn node_with_status() {
        let node = corev1::Node {
            metadata: Some(go_meta("n1")),
            spec: Some(corev1::NodeSpec {
                pod_cidr: s("10.244.0.0/24"),
                pod_cid_rs: vec!["10.244.0.0/24".into()],
                provider_id: s(""),
                unschedulable: Some(true),
                taints: vec![corev1::Taint {
                    key: s("dedicated"),
                    value: s(""),
                    effect: s("NoSchedule"),
                    time_added: None,
                }],
                ..Default::default()
            }),
            status: Some(corev1::NodeStatus {
                capacity: map(&[("cpu", quantity("4")), ("pods", quantity("110"))]),
                conditions: vec![corev1::NodeCondition {
                    r#type: s("Ready"),
                    status: s("True"),
                    last_heartbeat_time: time(1_700_000_000),
                    reason: s("KubeletReady"),
                    ..Default::default()
                }],
                addresses: vec![corev1::NodeAddress {
                    r#type: s("InternalIP"),
                    address: s("192.168.0.2"),
                }],
                daemon_endpoints: Some(corev1::NodeDaemonEndpoints {
                    kubelet_endpoint: Some(corev1::DaemonEndpoint { port: Some(10250) }),
                }),
                node_info: Some(corev1::NodeSystemInfo {
                    machine_id: s("m1"),
                    system_uuid: s("u1"),
                    boot_id: s(""),
                    kernel_version: s("6.1"),
                    operating_system: s("linux"),
                    architecture: s("amd64"),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        };
        assert_eq!(
            decoded("v1", "Node", &node),
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
            "spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"],
                "unschedulable": true, "taints": [{"key": "dedicated", "effect": "NoSchedule"}]},
            "status": {
                "capacity": {"cpu": "4", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True",
                    "lastHeartbeatTime": "2023-11-14T22:13:20Z", "reason": "KubeletReady"}],
                "addresses": [{"type": "InternalIP", "address": "192.168.0.2"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                "nodeInfo": {"machineID": "m1", "systemUUID": "u1", "bootID": "",
                    "kernelVersion": "6.1", "operatingSystem": "linux", "architecture": "amd64"}
            }})
        );
    }

    fn pod_ref(name: &str) -> Option<corev1::ObjectReference> {
        Some(corev1::ObjectReference {
            kind: s("Pod"),
            namespace: s("default"),
            name: s(name),
            uid: s("u-1"),
            api_version: s(""),
            resource_version: s(""),
            field_path: s(""),
        })
    }

    #[test]
    fn endpoints_and_endpoint_slice() {
        let ep = corev1::Endpoints {
            metadata: namespaced("web"),
            subsets: vec![corev1::EndpointSubset {
                addresses: vec![corev1::EndpointAddress {
                    ip: s("10.0.0.5"),
                    hostname: s(""),
                    node_name: s("n1"),
                    target_ref: pod_ref("web-1"),
                }],
                not_ready_addresses: vec![],
                ports: vec![corev1::EndpointPort {
                    name: s("http"),
                    port: Some(8080),
                    protocol: s("TCP"),
                    app_protocol: None,
                }],
            }],
        };
        assert_eq!(
            decoded("v1", "Endpoints", &ep),
            json!({"apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "web", "namespace": "default"},
            "subsets": [{
                "addresses": [{"ip": "10.0.0.5", "nodeName": "n1", "targetRef":
                    {"kind": "Pod", "namespace": "default", "name": "web-1", "uid": "u-1"}}],
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
            }]})
        );

        let slice = discv1::EndpointSlice {
            metadata: namespaced("web-abc"),
            address_type: s("IPv4"),
            endpoints: vec![discv1::Endpoint {
                addresses: vec!["10.0.0.5".into()],
                conditions: Some(discv1::EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                target_ref: pod_ref("web-1"),
                node_name: s("n1"),
                zone: s("a"),
                hints: Some(discv1::EndpointHints {
                    for_zones: vec![discv1::ForZone { name: s("a") }],
                    for_nodes: vec![],
                }),
                ..Default::default()
            }],
            ports: vec![discv1::EndpointPort {
                name: s(""),
                protocol: s("TCP"),
                port: Some(8080),
                app_protocol: None,
            }],
        };
        assert_eq!(
            decoded("discovery.k8s.io/v1", "EndpointSlice", &slice),
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "web-abc", "namespace": "default"},
                "addressType": "IPv4",
                "endpoints": [{
                    "addresses": ["10.0.0.5"],
                    "conditions": {"ready": true, "serving": true, "terminating": false},
                    "targetRef": {"kind": "Pod", "namespace": "default", "name": "web-1",
                        "uid": "u-1"},
                    "nodeName": "n1",
                    "zone": "a",
                    "hints": {"forZones": [{"name": "a"}]}
                }],
                "ports": [{"name": "", "protocol": "TCP", "port": 8080}]})
        );
    }

    #[test]
    fn event_with_micro_times() {
        let event = corev1::Event {
            metadata: namespaced("web-1.17a"),
            involved_object: pod_ref("web-1"),
            reason: s("Pulled"),
            message: s("Container image pulled"),
            source: Some(corev1::EventSource {
                component: s("kubelet"),
                host: s("n1"),
            }),
            first_timestamp: time(1_700_000_000),
            last_timestamp: time(1_700_000_060),
            count: Some(2),
            r#type: s("Normal"),
            event_time: micro(1_700_000_000, 123_456_789),
            series: Some(corev1::EventSeries {
                count: Some(2),
                last_observed_time: micro(1_700_000_060, 0),
            }),
            action: s(""),
            related: None,
            reporting_component: s("kubelet"),
            reporting_instance: s(""),
        };
        assert_eq!(
            decoded("v1", "Event", &event),
            json!({"apiVersion": "v1", "kind": "Event",
                "metadata": {"name": "web-1.17a", "namespace": "default"},
                "involvedObject": {"kind": "Pod", "namespace": "default", "name": "web-1",
                    "uid": "u-1"},
                "reason": "Pulled",
                "message": "Container image pulled",
                "source": {"component": "kubelet", "host": "n1"},
                "firstTimestamp": "2023-11-14T22:13:20Z",
                "lastTimestamp": "2023-11-14T22:14:20Z",
                "count": 2,
                "type": "Normal",
                "eventTime": "2023-11-14T22:13:20.123456Z",
                "series": {"count": 2, "lastObservedTime": "2023-11-14T22:14:20.000000Z"},
                "reportingComponent": "kubelet",
                "reportingInstance": ""})
        );
    }

    #[test]
    fn quota_limit_range_and_service_account() {
        let quota = corev1::ResourceQuota {
            metadata: namespaced("q"),
            spec: Some(corev1::ResourceQuotaSpec {
                hard: map(&[("pods", quantity("10")), ("requests.cpu", quantity("4"))]),
                scopes: vec!["NotTerminating".into()],
                scope_selector: Some(corev1::ScopeSelector {
                    match_expressions: vec![corev1::ScopedResourceSelectorRequirement {
                        scope_name: s("PriorityClass"),
                        operator: s("In"),
                        values: vec!["high".into()],
                    }],
                }),
            }),
            status: Some(corev1::ResourceQuotaStatus {
                hard: map(&[("pods", quantity("10"))]),
                used: map(&[("pods", quantity("0"))]),
            }),
        };
        assert_eq!(
            decoded("v1", "ResourceQuota", &quota),
            json!({"apiVersion": "v1", "kind": "ResourceQuota",
                "metadata": {"name": "q", "namespace": "default"},
                "spec": {"hard": {"pods": "10", "requests.cpu": "4"}, "scopes": ["NotTerminating"],
                    "scopeSelector": {"matchExpressions": [{"scopeName": "PriorityClass",
                        "operator": "In", "values": ["high"]}]}},
                "status": {"hard": {"pods": "10"}, "used": {"pods": "0"}}})
        );

        let limits = corev1::LimitRange {
            metadata: namespaced("l"),
            spec: Some(corev1::LimitRangeSpec {
                limits: vec![corev1::LimitRangeItem {
                    r#type: s("Container"),
                    max: map(&[("cpu", quantity("2"))]),
                    default: map(&[("cpu", quantity("500m"))]),
                    default_request: map(&[("cpu", quantity("250m"))]),
                    max_limit_request_ratio: map(&[("cpu", quantity("4"))]),
                    ..Default::default()
                }],
            }),
        };
        assert_eq!(
            decoded("v1", "LimitRange", &limits),
            json!({"apiVersion": "v1", "kind": "LimitRange",
                "metadata": {"name": "l", "namespace": "default"},
                "spec": {"limits": [{"type": "Container", "max": {"cpu": "2"},
                    "default": {"cpu": "500m"}, "defaultRequest": {"cpu": "250m"},
                    "maxLimitRequestRatio": {"cpu": "4"}}]}})
        );

        let sa = corev1::ServiceAccount {
            metadata: namespaced("builder"),
            secrets: vec![corev1::ObjectReference {
                name: s("builder-token"),
                ..Default::default()
            }],
            image_pull_secrets: vec![corev1::LocalObjectReference {
                name: s("registry"),
            }],
            automount_service_account_token: Some(false),
        };
        assert_eq!(
            decoded("v1", "ServiceAccount", &sa),
            json!({"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": "builder", "namespace": "default"},
                "secrets": [{"name": "builder-token"}],
                "imagePullSecrets": [{"name": "registry"}],
                "automountServiceAccountToken": false})
        );
    }

    #[test]
    fn replica_set_with_owner_and_status() {
        let mut meta = go_meta("web-5d4f");
        meta.namespace = s("default");
        meta.generation = Some(1);
        meta.owner_references = vec![metav1::OwnerReference {
            api_version: s("apps/v1"),
            kind: s("Deployment"),
            name: s("web"),
            uid: s("u-9"),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }];
        let rs = appsv1::ReplicaSet {
            metadata: Some(meta),
            spec: Some(appsv1::ReplicaSetSpec {
                replicas: Some(2),
                min_ready_seconds: Some(0),
                selector: Some(metav1::LabelSelector {
                    match_labels: BTreeMap::new(),
                    match_expressions: vec![metav1::LabelSelectorRequirement {
                        key: s("app"),
                        operator: s("In"),
                        values: vec!["web".into()],
                    }],
                }),
                template: Some(corev1::PodTemplateSpec {
                    metadata: Some(go_meta("")),
                    spec: Some(corev1::PodSpec {
                        containers: vec![corev1::Container {
                            name: s("web"),
                            image: s("nginx"),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                }),
            }),
            status: Some(appsv1::ReplicaSetStatus {
                replicas: Some(0),
                fully_labeled_replicas: Some(0),
                observed_generation: Some(1),
                ..Default::default()
            }),
        };
        assert_eq!(
            decoded("apps/v1", "ReplicaSet", &rs),
            json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": "web-5d4f", "namespace": "default", "generation": 1,
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                        "name": "web", "uid": "u-9", "controller": true,
                        "blockOwnerDeletion": true}]},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchExpressions":
                        [{"key": "app", "operator": "In", "values": ["web"]}]},
                    "template": {"metadata": {},
                        "spec": {"containers": [{"name": "web", "image": "nginx"}]}}
                },
                "status": {"replicas": 0, "observedGeneration": 1}})
        );
    }

    #[test]
    fn lease() {
        let lease = coordv1::Lease {
            metadata: Some(metav1::ObjectMeta {
                name: s("n1"),
                namespace: s("kube-node-lease"),
                ..Default::default()
            }),
            spec: Some(coordv1::LeaseSpec {
                holder_identity: s("n1"),
                lease_duration_seconds: Some(40),
                renew_time: micro(1_700_000_000, 5_000),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        assert_eq!(
            decoded("coordination.k8s.io/v1", "Lease", &lease),
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "n1", "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 40,
                    "renewTime": "2023-11-14T22:13:20.000005Z", "leaseTransitions": 0}})
        );
    }

    #[test]
    fn every_served_kind_decodes() {
        let meta = metav1::ObjectMeta {
            name: s("x"),
            ..Default::default()
        };
        let raw = corev1::Namespace {
            metadata: Some(meta),
            ..Default::default()
        }
        .encode_to_vec();
        // Field 1 is the metadata in every served kind, so one encoding names any object `x`.
        for r in crate::api::RESOURCES {
            let v = decode(&body(&r.api_version(), r.kind, raw.clone()))
                .unwrap_or_else(|e| panic!("{}: {}", r.kind, e.message));
            assert_eq!(v["metadata"]["name"], "x", "{}", r.kind);
            assert!(crate::api::typed::check(r, &v).is_ok(), "{}", r.kind);
        }
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
