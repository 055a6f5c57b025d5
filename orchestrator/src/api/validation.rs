//! Validation with field paths, in Kubernetes' words (`spec.containers[0].image: Required value`).
//! Each error becomes a `Status` cause; any error refuses the write with 422 Invalid.

use serde_json::{Map, Value};

use super::{meta, quantity, selector::LabelSelector, Resource};

/// One field error.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    /// Kubernetes' cause reason: `FieldValueRequired`, `FieldValueInvalid`...
    pub reason: &'static str,
    pub field: String,
    /// The detail after the field, as Kubernetes prints it: `Required value`, `Invalid value: "x": ...`.
    pub detail: String,
}

impl FieldError {
    pub fn required(field: impl Into<String>) -> Self {
        Self::required_because(field, "")
    }
    pub fn required_because(field: impl Into<String>, why: &str) -> Self {
        FieldError {
            reason: "FieldValueRequired",
            field: field.into(),
            detail: if why.is_empty() {
                "Required value".into()
            } else {
                format!("Required value: {why}")
            },
        }
    }
    pub fn invalid(field: impl Into<String>, value: &Value, why: &str) -> Self {
        FieldError {
            reason: "FieldValueInvalid",
            field: field.into(),
            detail: format!("Invalid value: {}: {why}", show(value)),
        }
    }
    /// Like [`FieldError::invalid`], with the value already in the form the message shows.
    pub fn invalid_shown(field: impl Into<String>, shown: String, why: &str) -> Self {
        FieldError {
            reason: "FieldValueInvalid",
            field: field.into(),
            detail: format!("Invalid value: {shown}: {why}"),
        }
    }

    pub fn unsupported(field: impl Into<String>, value: &Value, allowed: &[&str]) -> Self {
        let list: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
        FieldError {
            reason: "FieldValueNotSupported",
            field: field.into(),
            detail: format!(
                "Unsupported value: {}: supported values: {}",
                show(value),
                list.join(", ")
            ),
        }
    }
    pub fn duplicate(field: impl Into<String>, value: &Value) -> Self {
        FieldError {
            reason: "FieldValueDuplicate",
            field: field.into(),
            detail: format!("Duplicate value: {}", show(value)),
        }
    }
    pub fn forbidden(field: impl Into<String>, why: &str) -> Self {
        FieldError {
            reason: "FieldValueForbidden",
            field: field.into(),
            detail: format!("Forbidden: {why}"),
        }
    }
    /// `field: detail`, the line Kubernetes prints.
    pub fn message(&self) -> String {
        format!("{}: {}", self.field, self.detail)
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    prefix.is_none_or(|p| !p.is_empty() && is_dns1123_subdomain(p))
        && !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Names of these kinds must be DNS labels (they become DNS names or path segments).
fn name_is_label(r: &Resource) -> bool {
    matches!(r.kind, "Namespace" | "Service")
}

/// Validates a new or updated object; `old` is the stored object for updates.
pub fn validate(r: &Resource, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    validate_meta(r, obj, &mut errs);
    if let Some(old) = old {
        validate_meta_update(obj, old, &mut errs);
    }
    match (r.group, r.kind) {
        ("", "Pod") => {
            if let Some(spec) = obj.get("spec") {
                pod_spec(spec, "spec", &mut errs);
            } else {
                errs.push(FieldError::required("spec.containers"));
            }
            if let Some(old) = old {
                pod_update(obj, old, &mut errs);
            }
        }
        ("apps", "Deployment") | ("apps", "ReplicaSet") => {
            workload(r, obj, &mut errs);
            if let Some(old) = old {
                if obj["spec"].get("selector") != old["spec"].get("selector") {
                    errs.push(FieldError::invalid(
                        "spec.selector",
                        obj["spec"].get("selector").unwrap_or(&Value::Null),
                        "field is immutable",
                    ));
                }
            }
        }
        ("", "Service") => service(obj, old, &mut errs),
        ("", "ConfigMap") | ("", "Secret") => data_keys(obj, &mut errs),
        ("", "ResourceQuota") => quantities(obj.pointer("/spec/hard"), "spec.hard", &mut errs),
        (RBAC_GROUP, "Role" | "ClusterRole") => {
            for (i, rule) in obj
                .get("rules")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                policy_rule(rule, &format!("rules[{i}]"), r.namespaced, &mut errs);
            }
        }
        (RBAC_GROUP, "RoleBinding" | "ClusterRoleBinding") => {
            role_binding(obj, r.namespaced, &mut errs);
            if let Some(old) = old {
                if obj.get("roleRef") != old.get("roleRef") {
                    errs.push(FieldError::invalid_shown(
                        "roleRef",
                        role_ref_go(obj.get("roleRef").unwrap_or(&Value::Null)),
                        "cannot change roleRef",
                    ));
                }
            }
        }
        _ => {}
    }
    errs
}

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// A rule must name verbs, and either resources (with their groups) or, outside a namespace,
/// non-resource URLs, never both.
fn policy_rule(rule: &Value, path: &str, namespaced: bool, errs: &mut Vec<FieldError>) {
    let len = |k: &str| rule.get(k).and_then(Value::as_array).map_or(0, Vec::len);
    if len("verbs") == 0 {
        errs.push(FieldError::required_because(
            format!("{path}.verbs"),
            "verbs must contain at least one value",
        ));
    }
    if len("nonResourceURLs") > 0 {
        let urls = rule.get("nonResourceURLs").unwrap_or(&Value::Null);
        let shown = go_string_slice(urls);
        if namespaced {
            errs.push(FieldError::invalid_shown(
                format!("{path}.nonResourceURLs"),
                shown.clone(),
                "namespaced rules cannot apply to non-resource URLs",
            ));
        }
        if len("apiGroups") > 0 || len("resources") > 0 || len("resourceNames") > 0 {
            errs.push(FieldError::invalid_shown(
                format!("{path}.nonResourceURLs"),
                shown,
                "rules cannot apply to both regular resources and non-resource URLs",
            ));
        }
        return;
    }
    if len("apiGroups") == 0 {
        errs.push(FieldError::required_because(
            format!("{path}.apiGroups"),
            "resource rules must supply at least one api group",
        ));
    }
    if len("resources") == 0 {
        errs.push(FieldError::required_because(
            format!("{path}.resources"),
            "resource rules must supply at least one resource",
        ));
    }
}

fn role_binding(obj: &Value, namespaced: bool, errs: &mut Vec<FieldError>) {
    let rr = obj.get("roleRef").cloned().unwrap_or(Value::Null);
    let field = |k: &str| rr.get(k).and_then(Value::as_str).unwrap_or("");
    if field("apiGroup") != RBAC_GROUP {
        errs.push(FieldError::unsupported(
            "roleRef.apiGroup",
            &Value::from(field("apiGroup")),
            &[RBAC_GROUP],
        ));
    }
    let kinds: &[&str] = if namespaced {
        &["Role", "ClusterRole"]
    } else {
        &["ClusterRole"]
    };
    if !kinds.contains(&field("kind")) {
        errs.push(FieldError::unsupported(
            "roleRef.kind",
            &Value::from(field("kind")),
            kinds,
        ));
    }
    if field("name").is_empty() {
        errs.push(FieldError::required("roleRef.name"));
    }
    for (i, sub) in obj
        .get("subjects")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let path = format!("subjects[{i}]");
        let f = |k: &str| sub.get(k).and_then(Value::as_str).unwrap_or("");
        if f("name").is_empty() {
            errs.push(FieldError::required(format!("{path}.name")));
        }
        match f("kind") {
            "ServiceAccount" => {
                if !f("apiGroup").is_empty() {
                    errs.push(FieldError::unsupported(
                        format!("{path}.apiGroup"),
                        &Value::from(f("apiGroup")),
                        &[""],
                    ));
                }
                if !f("name").is_empty() && !is_dns1123_subdomain(f("name")) {
                    errs.push(FieldError::invalid(
                        format!("{path}.name"),
                        &Value::from(f("name")),
                        DNS1123_SUBDOMAIN_MSG,
                    ));
                }
                if !namespaced && f("namespace").is_empty() {
                    errs.push(FieldError::required(format!("{path}.namespace")));
                }
            }
            "User" | "Group" => {
                if f("apiGroup") != RBAC_GROUP {
                    errs.push(FieldError::unsupported(
                        format!("{path}.apiGroup"),
                        &Value::from(f("apiGroup")),
                        &[RBAC_GROUP],
                    ));
                }
            }
            other => errs.push(FieldError::unsupported(
                format!("{path}.kind"),
                &Value::from(other),
                &["ServiceAccount", "User", "Group"],
            )),
        }
    }
}

/// A `[]string` as Go's `%#v` prints it: `[]string{"/healthz"}`.
fn go_string_slice(v: &Value) -> String {
    let items: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| format!("{:?}", s.as_str().unwrap_or("")))
        .collect();
    format!("[]string{{{}}}", items.join(", "))
}

/// A roleRef as Go's `%#v` prints Kubernetes' internal type, which its message shows.
fn role_ref_go(rr: &Value) -> String {
    let f = |k: &str| rr.get(k).and_then(Value::as_str).unwrap_or("");
    format!(
        "rbac.RoleRef{{APIGroup:{:?}, Kind:{:?}, Name:{:?}}}",
        f("apiGroup"),
        f("kind"),
        f("name")
    )
}

fn validate_meta(r: &Resource, obj: &Value, errs: &mut Vec<FieldError>) {
    let name = meta::name(obj);
    if name.is_empty() {
        errs.push(FieldError::required_because(
            "metadata.name",
            "name or generateName is required",
        ));
    } else if r.group == RBAC_GROUP {
        // RBAC names are path segments (`system:node`), not DNS names.
        let why = match name {
            "." => Some("may not be '.'"),
            ".." => Some("may not be '..'"),
            _ if name.contains('/') => Some("may not contain '/'"),
            _ if name.contains('%') => Some("may not contain '%'"),
            _ => None,
        };
        if let Some(why) = why {
            errs.push(FieldError::invalid(
                "metadata.name",
                &Value::from(name),
                why,
            ));
        }
    } else if name_is_label(r) {
        let ok = if r.kind == "Service" {
            is_dns1035_label(name)
        } else {
            is_dns1123_label(name)
        };
        if !ok {
            let msg = if r.kind == "Service" {
                DNS1035_LABEL_MSG
            } else {
                DNS1123_LABEL_MSG
            };
            errs.push(FieldError::invalid(
                "metadata.name",
                &Value::from(name),
                msg,
            ));
        }
    } else if !is_dns1123_subdomain(name) {
        errs.push(FieldError::invalid(
            "metadata.name",
            &Value::from(name),
            DNS1123_SUBDOMAIN_MSG,
        ));
    }
    if let Some(labels) = meta::labels(obj) {
        label_map(labels, "metadata.labels", errs);
    }
    owner_references(obj, errs);
    if let Some(ann) = meta::metadata(obj)
        .and_then(|m| m.get("annotations"))
        .and_then(Value::as_object)
    {
        let total: usize = ann
            .iter()
            .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
            .sum();
        if total > 256 * 1024 {
            errs.push(FieldError {
                reason: "FieldValueTooLong",
                field: "metadata.annotations".into(),
                detail: "Too long: must have at most 262144 bytes".into(),
            });
        }
        for k in ann.keys() {
            if !is_qualified_name(k) {
                errs.push(FieldError::invalid(
                    "metadata.annotations",
                    &Value::from(k.as_str()),
                    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
                ));
            }
        }
    }
}

fn owner_references(obj: &Value, errs: &mut Vec<FieldError>) {
    let refs = meta::metadata(obj)
        .and_then(|m| m.get("ownerReferences"))
        .and_then(Value::as_array);
    let mut controllers: Vec<String> = Vec::new();
    for r in refs.into_iter().flatten() {
        let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("");
        let path = "metadata.ownerReferences";
        if s("apiVersion").is_empty() {
            errs.push(FieldError::invalid(
                format!("{path}.apiVersion"),
                &Value::from(""),
                "version must not be empty",
            ));
        }
        if s("kind").is_empty() {
            errs.push(FieldError::invalid(
                format!("{path}.kind"),
                &Value::from(""),
                "kind must not be empty",
            ));
        }
        if s("name").is_empty() {
            errs.push(FieldError::invalid(
                format!("{path}.name"),
                &Value::from(""),
                "name must not be empty",
            ));
        }
        if s("uid").is_empty() {
            errs.push(FieldError::invalid(
                format!("{path}.uid"),
                &Value::from(""),
                "uid must not be empty",
            ));
        }
        if r.get("controller") == Some(&Value::Bool(true)) {
            controllers.push(format!("{}/{}", s("kind"), s("name")));
        }
    }
    if controllers.len() > 1 {
        errs.push(FieldError::invalid(
            "metadata.ownerReferences",
            &Value::from(controllers.join(", ")),
            &format!("Only one reference can have Controller set to true. Found \"true\" in references for {}", controllers.join(" and ")),
        ));
    }
}

fn label_map(labels: &Map<String, Value>, path: &str, errs: &mut Vec<FieldError>) {
    for (k, v) in labels {
        if !is_qualified_name(k) {
            errs.push(FieldError::invalid(
                path,
                &Value::from(k.as_str()),
                "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
            ));
        }
        let s = v.as_str().unwrap_or_default();
        if !is_label_value(s) {
            errs.push(FieldError::invalid(
                path,
                v,
                "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
            ));
        }
    }
}

fn validate_meta_update(obj: &Value, old: &Value, errs: &mut Vec<FieldError>) {
    for field in ["uid", "creationTimestamp"] {
        let new = meta::str_field(obj, field);
        if !new.is_empty() && new != meta::str_field(old, field) {
            errs.push(FieldError::invalid(
                format!("metadata.{field}"),
                &Value::from(new),
                "field is immutable",
            ));
        }
    }
}

fn pod_spec(spec: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let containers = spec.get("containers").and_then(Value::as_array);
    match containers {
        None => errs.push(FieldError::required(format!("{path}.containers"))),
        Some(cs) if cs.is_empty() => errs.push(FieldError::required(format!("{path}.containers"))),
        Some(_) => {}
    }
    let mut names: Vec<&str> = Vec::new();
    for key in ["initContainers", "containers"] {
        for (i, c) in spec
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let cp = format!("{path}.{key}[{i}]");
            let name = c.get("name").and_then(Value::as_str).unwrap_or("");
            if name.is_empty() {
                errs.push(FieldError::required(format!("{cp}.name")));
            } else if !is_dns1123_label(name) {
                errs.push(FieldError::invalid(
                    format!("{cp}.name"),
                    &Value::from(name),
                    DNS1123_LABEL_MSG,
                ));
            } else if names.contains(&name) {
                errs.push(FieldError::duplicate(
                    format!("{cp}.name"),
                    &Value::from(name),
                ));
            } else {
                names.push(name);
            }
            if c.get("image")
                .and_then(Value::as_str)
                .unwrap_or("")
                .trim()
                .is_empty()
            {
                errs.push(FieldError::required(format!("{cp}.image")));
            }
            if let Some(p) = c.get("imagePullPolicy") {
                enum_value(
                    p,
                    &format!("{cp}.imagePullPolicy"),
                    &["Always", "IfNotPresent", "Never"],
                    errs,
                );
            }
            for (j, port) in c
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let pp = format!("{cp}.ports[{j}]");
                port_number(
                    port.get("containerPort"),
                    &format!("{pp}.containerPort"),
                    true,
                    errs,
                );
                port_number(port.get("hostPort"), &format!("{pp}.hostPort"), false, errs);
                if let Some(p) = port.get("protocol") {
                    enum_value(p, &format!("{pp}.protocol"), &["SCTP", "TCP", "UDP"], errs);
                }
            }
            for part in ["limits", "requests"] {
                let rp = format!("{cp}.resources.{part}");
                quantities(c.get("resources").and_then(|r| r.get(part)), &rp, errs);
            }
            requests_within_limits(c, &cp, errs);
            for (j, e) in c
                .get("env")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                if e.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .is_empty()
                {
                    errs.push(FieldError::required(format!("{cp}.env[{j}].name")));
                }
            }
        }
    }
    if let Some(p) = spec.get("restartPolicy") {
        enum_value(
            p,
            &format!("{path}.restartPolicy"),
            &["Always", "OnFailure", "Never"],
            errs,
        );
    }
    if let Some(p) = spec.get("dnsPolicy") {
        enum_value(
            p,
            &format!("{path}.dnsPolicy"),
            &["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"],
            errs,
        );
    }
    let mut vols: Vec<&str> = Vec::new();
    for (i, v) in spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let name = v.get("name").and_then(Value::as_str).unwrap_or("");
        let vp = format!("{path}.volumes[{i}].name");
        if name.is_empty() {
            errs.push(FieldError::required(vp));
        } else if vols.contains(&name) {
            errs.push(FieldError::duplicate(vp, &Value::from(name)));
        } else {
            vols.push(name);
        }
    }
    for key in ["initContainers", "containers"] {
        for (i, c) in spec
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            for (j, m) in c
                .get("volumeMounts")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let n = m.get("name").and_then(Value::as_str).unwrap_or("");
                if !vols.contains(&n) {
                    errs.push(FieldError {
                        reason: "FieldValueNotFound",
                        field: format!("{path}.{key}[{i}].volumeMounts[{j}].name"),
                        detail: format!("Not found: {n:?}"),
                    });
                }
            }
        }
    }
}

fn requests_within_limits(c: &Value, cp: &str, errs: &mut Vec<FieldError>) {
    let res = c.get("resources");
    let (Some(req), Some(lim)) = (
        res.and_then(|r| r.get("requests"))
            .and_then(Value::as_object),
        res.and_then(|r| r.get("limits")).and_then(Value::as_object),
    ) else {
        return;
    };
    for (k, rv) in req {
        let (Some(r), Some(l)) = (
            rv.as_str().and_then(|s| quantity::parse(s).ok()),
            lim.get(k)
                .and_then(Value::as_str)
                .and_then(|s| quantity::parse(s).ok()),
        ) else {
            continue;
        };
        if r > l {
            errs.push(FieldError::invalid(
                format!("{cp}.resources.requests"),
                rv,
                &format!(
                    "must be less than or equal to {k} limit of {}",
                    lim[k].as_str().unwrap_or_default()
                ),
            ));
        }
    }
}

fn quantities(map: Option<&Value>, path: &str, errs: &mut Vec<FieldError>) {
    for (k, v) in map.and_then(Value::as_object).into_iter().flatten() {
        let s = v
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string());
        match quantity::parse(&s) {
            Ok(q) if q < 0 => errs.push(FieldError::invalid(
                format!("{path}.{k}"),
                v,
                "must be greater than or equal to 0",
            )),
            Ok(_) => {}
            Err(e) => errs.push(FieldError::invalid(format!("{path}.{k}"), v, &e)),
        }
    }
}

fn enum_value(v: &Value, path: &str, allowed: &[&str], errs: &mut Vec<FieldError>) {
    if !v.as_str().is_some_and(|s| allowed.contains(&s)) {
        errs.push(FieldError::unsupported(path, v, allowed));
    }
}

fn port_number(v: Option<&Value>, path: &str, required: bool, errs: &mut Vec<FieldError>) {
    match v.and_then(Value::as_i64) {
        None if required => errs.push(FieldError::required(path)),
        None | Some(0) if !required => {}
        Some(p) if (1..=65535).contains(&p) => {}
        _ => errs.push(FieldError::invalid(
            path,
            v.unwrap_or(&Value::Null),
            "must be between 1 and 65535, inclusive",
        )),
    }
}

fn pod_update(obj: &Value, old: &Value, errs: &mut Vec<FieldError>) {
    // Only images, activeDeadlineSeconds, added tolerations and scheduling gates may change in a
    // pod's spec; compare with those fields taken from the new spec.
    let (Some(new), Some(prev)) = (obj.get("spec"), old.get("spec")) else {
        return;
    };
    let mut normalized = prev.clone();
    for key in ["containers", "initContainers"] {
        if let (Some(n), Some(p)) = (
            new.get(key).and_then(Value::as_array),
            normalized.get_mut(key).and_then(Value::as_array_mut),
        ) {
            for (pc, nc) in p.iter_mut().zip(n) {
                if let (Some(img), Some(pm)) = (nc.get("image"), pc.as_object_mut()) {
                    pm.insert("image".into(), img.clone());
                }
            }
        }
    }
    if let Some(m) = normalized.as_object_mut() {
        for key in [
            "activeDeadlineSeconds",
            "tolerations",
            "schedulingGates",
            "nodeName",
        ] {
            match new.get(key) {
                Some(v) => m.insert(key.into(), v.clone()),
                None => m.remove(key),
            };
        }
    }
    if normalized != *new {
        errs.push(FieldError::forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
        ));
    }
    let old_node = prev.get("nodeName").and_then(Value::as_str).unwrap_or("");
    let new_node = new.get("nodeName").and_then(Value::as_str).unwrap_or("");
    if !old_node.is_empty() && old_node != new_node {
        errs.push(FieldError::invalid(
            "spec.nodeName",
            &Value::from(new_node),
            "field is immutable",
        ));
    }
}

fn workload(r: &Resource, obj: &Value, errs: &mut Vec<FieldError>) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    if let Some(n) = spec.get("replicas").and_then(Value::as_i64) {
        if n < 0 {
            errs.push(FieldError::invalid(
                "spec.replicas",
                &Value::from(n),
                "must be greater than or equal to 0",
            ));
        }
    }
    let sel = spec.get("selector");
    let selector = match sel {
        None | Some(Value::Null) => {
            errs.push(FieldError::required("spec.selector"));
            None
        }
        Some(s) if s.get("matchLabels").is_none() && s.get("matchExpressions").is_none() => {
            errs.push(FieldError::invalid(
                "spec.selector",
                s,
                "empty selector is invalid for deployment",
            ));
            None
        }
        Some(s) => match LabelSelector::from_object(s) {
            Ok(sel) => Some(sel),
            Err(e) => {
                errs.push(FieldError::invalid("spec.selector", s, &e));
                None
            }
        },
    };
    let template = spec.get("template").unwrap_or(&Value::Null);
    let tlabels = template
        .pointer("/metadata/labels")
        .and_then(Value::as_object);
    if let Some(sel) = &selector {
        if !sel.matches(tlabels) {
            errs.push(FieldError::invalid(
                "spec.template.metadata.labels",
                &Value::Object(tlabels.cloned().unwrap_or_default()),
                "`selector` does not match template `labels`",
            ));
        }
    }
    if let Some(l) = tlabels {
        label_map(l, "spec.template.metadata.labels", errs);
    }
    match template.get("spec") {
        Some(ts) => {
            pod_spec(ts, "spec.template.spec", errs);
            if let Some(p) = ts.get("restartPolicy") {
                if p != "Always" {
                    errs.push(FieldError::unsupported(
                        "spec.template.spec.restartPolicy",
                        p,
                        &["Always"],
                    ));
                }
            }
        }
        None => errs.push(FieldError::required("spec.template.spec.containers")),
    }
    if r.kind == "Deployment" {
        let strategy = spec.get("strategy");
        if let Some(t) = strategy.and_then(|s| s.get("type")) {
            enum_value(
                t,
                "spec.strategy.type",
                &["Recreate", "RollingUpdate"],
                errs,
            );
        }
        if let Some(ru) = strategy.and_then(|s| s.get("rollingUpdate")) {
            let zero = |v: Option<&Value>| match v {
                Some(Value::Number(n)) => n.as_i64() == Some(0),
                Some(Value::String(s)) => s == "0%" || s == "0",
                _ => false,
            };
            if zero(ru.get("maxSurge")) && zero(ru.get("maxUnavailable")) {
                errs.push(FieldError::invalid(
                    "spec.strategy.rollingUpdate.maxUnavailable",
                    ru.get("maxUnavailable").unwrap_or(&Value::Null),
                    "may not be 0 when `maxSurge` is 0",
                ));
            }
        }
    }
}

fn service(obj: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    enum_value(
        &Value::from(ty),
        "spec.type",
        &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        errs,
    );
    let ports = spec.get("ports").and_then(Value::as_array);
    let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
    if ty != "ExternalName" && !headless && ports.is_none_or(Vec::is_empty) {
        errs.push(FieldError::required("spec.ports"));
    }
    let mut names: Vec<&str> = Vec::new();
    let multi = ports.is_some_and(|p| p.len() > 1);
    for (i, p) in ports.into_iter().flatten().enumerate() {
        let pp = format!("spec.ports[{i}]");
        port_number(p.get("port"), &format!("{pp}.port"), true, errs);
        if let Some(proto) = p.get("protocol") {
            enum_value(
                proto,
                &format!("{pp}.protocol"),
                &["SCTP", "TCP", "UDP"],
                errs,
            );
        }
        let name = p.get("name").and_then(Value::as_str).unwrap_or("");
        if multi && name.is_empty() {
            errs.push(FieldError::required(format!("{pp}.name")));
        } else if names.contains(&name) && !name.is_empty() {
            errs.push(FieldError::duplicate(
                format!("{pp}.name"),
                &Value::from(name),
            ));
        }
        names.push(name);
        if let Some(np) = p.get("nodePort").and_then(Value::as_i64) {
            if ty == "ClusterIP" && np != 0 {
                errs.push(FieldError::forbidden(
                    format!("{pp}.nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                ));
            }
        }
    }
    if let Some(sel) = spec.get("selector").and_then(Value::as_object) {
        label_map(sel, "spec.selector", errs);
    }
    if let Some(old) = old {
        let prev = old
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .unwrap_or("");
        let new = spec.get("clusterIP").and_then(Value::as_str).unwrap_or("");
        if !prev.is_empty() && !new.is_empty() && prev != new {
            errs.push(FieldError::invalid(
                "spec.clusterIPs[0]",
                &Value::from(new),
                "may not change once set",
            ));
        }
    }
}

fn data_keys(obj: &Value, errs: &mut Vec<FieldError>) {
    let mut total = 0usize;
    for field in ["data", "binaryData"] {
        for (k, v) in obj
            .get(field)
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            total += v.as_str().map_or(0, str::len);
            let ok = !k.is_empty()
                && k.len() <= 253
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !ok {
                errs.push(FieldError::invalid(
                    format!("{field}[{k}]"),
                    &Value::from(k.as_str()),
                    "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
                ));
            }
        }
    }
    if total > 1024 * 1024 {
        errs.push(FieldError {
            reason: "FieldValueTooLong",
            field: "data".into(),
            detail: "Too long: must have at most 1048576 bytes".into(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::lookup_kind;
    use serde_json::json;

    #[test]
    fn pod_errors_name_their_fields() {
        let pod = json!({"metadata": {"name": "Bad_Name"}, "spec": {"containers": [
            {"name": "c", "image": "", "ports": [{"containerPort": 70000}]}, {"name": "c", "image": "x"}]}});
        let errs = validate(lookup_kind("v1", "Pod").unwrap(), &pod, None);
        let msgs: Vec<String> = errs.iter().map(FieldError::message).collect();
        assert!(
            msgs[0].starts_with(
                "metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"
            ),
            "{msgs:?}"
        );
        assert!(
            msgs.contains(&"spec.containers[0].image: Required value".to_string()),
            "{msgs:?}"
        );
        assert!(msgs.contains(&"spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive".to_string()), "{msgs:?}");
        assert!(
            msgs.contains(&"spec.containers[1].name: Duplicate value: \"c\"".to_string()),
            "{msgs:?}"
        );
    }

    #[test]
    fn owner_references_need_identity_and_one_controller() {
        let cm = json!({"metadata": {"name": "c", "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "a", "uid": "1", "controller": true},
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "b", "uid": "", "controller": true}]}});
        let errs = validate(lookup_kind("v1", "ConfigMap").unwrap(), &cm, None);
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["metadata.ownerReferences.uid", "metadata.ownerReferences"]
        );
    }

    #[test]
    fn deployment_selector_must_match_template() {
        let d = json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}});
        let errs = validate(lookup_kind("apps/v1", "Deployment").unwrap(), &d, None);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].field, "spec.template.metadata.labels");
    }

    #[test]
    fn pod_spec_is_mostly_immutable() {
        let old = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "a"}]}});
        let ok = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "b"}]}});
        let bad = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "a", "args": ["x"]}]}});
        let pod = lookup_kind("v1", "Pod").unwrap();
        assert!(validate(pod, &ok, Some(&old)).is_empty());
        assert_eq!(validate(pod, &bad, Some(&old))[0].field, "spec");
    }
}
