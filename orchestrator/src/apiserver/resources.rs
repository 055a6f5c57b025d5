//! The verbs on resources: get, list, create, update, patch, delete, deletecollection and the
//! status, scale and binding subresources, each a read-check-write loop over the registry.
//!
//! Writes without a client-given resourceVersion (patches, unconditional updates, deletes) re-read
//! and retry when the store reports a conflict, so concurrent writers never lose each other's
//! changes; writes that carry a resourceVersion fail with 409 Conflict instead.

use serde_json::{json, Map, Value};

use super::admission;
use super::request::{PatchType, Query, Target};
use super::status::{ApiError, ApiResult};
use super::State;
use crate::api::{self, defaults, meta, patch, selector, typed, validation, Resource, Subresource};
use crate::registry::{self, ReadRevision, SideEffects, StoreError};

/// The most objects one store read returns; larger lists are read in several at one revision.
const STORE_CHUNK: i64 = 1000;

/// How many times a write re-reads after a conflict before answering 409.
const MAX_RETRIES: usize = 64;

fn store_err(t: &Target, name: &str) -> impl Fn(StoreError) -> ApiError {
    let r = t.resource;
    let name = name.to_string();
    move |e| ApiError::store(r, &name, e)
}

/// The object's namespace for a namespaced target, "" otherwise.
fn ns(t: &Target) -> &str {
    t.namespace.as_deref().unwrap_or("")
}

pub async fn get(st: &State, t: &Target) -> ApiResult<Value> {
    let name = t.name.as_deref().unwrap_or("");
    let obj = st
        .registry
        .get(t.resource, ns(t), name)
        .await
        .map_err(store_err(t, name))?;
    Ok(match t.sub {
        Some(Subresource::Scale) => scale_of(&obj),
        _ => obj,
    })
}

/// A continue token: the revision of the first page and the key to go on from.
fn encode_continue(rev: i64, key: &str) -> String {
    use base64::Engine;
    let raw = json!({"v": "meta.k8s.io/v1", "rv": rev, "start": key}).to_string();
    base64::engine::general_purpose::URL_SAFE.encode(raw)
}

fn decode_continue(token: &str, prefix: &str) -> ApiResult<(i64, String)> {
    use base64::Engine;
    let bad = || ApiError::bad_request(format!("invalid continue token {token:?}"));
    let raw = base64::engine::general_purpose::URL_SAFE
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rev = v.get("rv").and_then(Value::as_i64).ok_or_else(bad)?;
    let start = v.get("start").and_then(Value::as_str).ok_or_else(bad)?;
    if !start.starts_with(prefix) || rev <= 0 {
        return Err(bad());
    }
    Ok((rev, start.to_string()))
}

pub struct Selectors {
    pub labels: selector::LabelSelector,
    pub fields: selector::FieldSelector,
}

impl Selectors {
    pub fn parse(r: &Resource, q: &Query) -> ApiResult<Selectors> {
        let labels = selector::LabelSelector::parse(q.get("labelSelector").unwrap_or(""))
            .map_err(ApiError::bad_request)?;
        let fields = selector::FieldSelector::parse(q.get("fieldSelector").unwrap_or(""), r)
            .map_err(ApiError::bad_request)?;
        Ok(Selectors { labels, fields })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(meta::labels(obj)) && self.fields.matches(obj)
    }

    /// Whether every object matches (no selector given).
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }
}

/// The revision a list reads at, from `resourceVersion` and `resourceVersionMatch`, and the revision
/// the answer must not be older than.
fn list_revision(q: &Query) -> ApiResult<(ReadRevision, i64)> {
    let rv = q.get("resourceVersion").unwrap_or("");
    let exact = q.get("resourceVersionMatch") == Some("Exact");
    match q.get("resourceVersionMatch") {
        None | Some("") | Some("Exact") | Some("NotOlderThan") => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "resourceVersionMatch: Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\""
            )))
        }
    }
    match rv {
        "" if q.get("resourceVersionMatch").is_some_and(|m| !m.is_empty()) => {
            Err(ApiError::bad_request(
                "resourceVersionMatch is forbidden unless resourceVersion is provided",
            ))
        }
        "" => Ok((ReadRevision::Latest, 0)),
        "0" if exact => Err(ApiError::bad_request(
            "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
        )),
        "0" => Ok((ReadRevision::Any, 0)),
        n => {
            let n: i64 = n
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {n:?}")))?;
            // A linearizable read is at least as new as any revision the store has handed out.
            Ok(if exact {
                (ReadRevision::At(n), 0)
            } else {
                (ReadRevision::Latest, n)
            })
        }
    }
}

/// Kubernetes' answer to a resourceVersion the store has not reached.
fn too_large(requested: i64, current: i64) -> ApiError {
    ApiError {
        details: Some(
            json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1}),
        ),
        ..ApiError::new(
            504,
            "Timeout",
            format!("Too large resource version: {requested}, current: {current}"),
        )
    }
}

/// A list result before rendering.
pub struct Listed {
    pub items: Vec<Value>,
    pub revision: i64,
    pub continue_token: Option<String>,
    pub remaining: Option<i64>,
}

pub async fn list(st: &State, t: &Target, q: &Query) -> ApiResult<Listed> {
    let r = t.resource;
    let sel = Selectors::parse(r, q)?;
    let prefix = registry::prefix(r, t.namespace.as_deref());
    let limit = q.int("limit")?.unwrap_or(0).max(0);
    let (mut rev, mut start, not_older_than) = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(c) => {
            let (rev, key) = decode_continue(c, &prefix)?;
            (ReadRevision::At(rev), Some(key), 0)
        }
        None => {
            let (rev, min) = list_revision(q)?;
            (rev, None, min)
        }
    };
    let from_continue = start.is_some();
    let mut items = Vec::new();
    let mut revision;
    let (next, remaining) = loop {
        // Unpaged lists are read in chunks at one revision too, so no store answer grows with
        // the collection (a single range of thousands of objects would exceed the gRPC limit).
        let want = if limit > 0 {
            (limit - items.len() as i64).min(STORE_CHUNK)
        } else {
            STORE_CHUNK
        };
        let page = st
            .registry
            .list_page(r, &prefix, start.as_deref(), rev, want)
            .await
            .map_err(|e| match e {
                StoreError::Expired { .. } if from_continue => {
                    ApiError::expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.")
                }
                StoreError::Expired { requested, current } => {
                    ApiError::expired(format!("too old resource version: {requested} ({current})"))
                }
                other => ApiError::store(r, "", other),
            })?;
        revision = page.revision;
        if revision < not_older_than {
            return Err(too_large(not_older_than, revision));
        }
        rev = ReadRevision::At(page.revision);
        items.extend(page.items.into_iter().filter(|o| sel.matches(o)));
        match page.next_key {
            Some(k) if limit == 0 || (items.len() as i64) < limit => start = Some(k),
            Some(k) => break (Some(k), page.remaining),
            None => break (None, 0),
        }
    };
    let has_selectors = !sel.labels.is_empty() || !sel.fields.is_empty();
    Ok(Listed {
        items,
        revision,
        continue_token: next.map(|k| encode_continue(revision, &k)),
        remaining: (!has_selectors && remaining > 0).then_some(remaining),
    })
}

pub fn list_object(r: &Resource, l: Listed) -> Value {
    let mut m = json!({"resourceVersion": l.revision.to_string()});
    if let Some(c) = l.continue_token {
        m["continue"] = json!(c);
    }
    if let Some(n) = l.remaining {
        m["remainingItemCount"] = json!(n);
    }
    let items: Vec<Value> = l
        .items
        .into_iter()
        .map(|mut o| {
            // Items of a list carry no apiVersion/kind in Kubernetes' JSON; keeping them is harmless
            // and lets clients that decode items alone work.
            if let Some(m) = o.as_object_mut() {
                m.entry("apiVersion")
                    .or_insert_with(|| json!(r.api_version()));
                m.entry("kind").or_insert_with(|| json!(r.kind));
            }
            o
        })
        .collect();
    json!({"kind": format!("{}List", r.kind), "apiVersion": r.api_version(), "metadata": m, "items": items})
}

/// Warnings for the client (`Warning: 299` headers), collected while handling a request.
pub type Warnings = Vec<String>;

/// Applies `fieldValidation` to a decoded body: the canonical object, or 400 for Strict.
fn check_fields(r: &Resource, obj: &Value, q: &Query, warnings: &mut Warnings) -> ApiResult<Value> {
    let mode = q.get("fieldValidation").unwrap_or("Warn");
    if !matches!(mode, "Strict" | "Warn" | "Ignore") {
        return Err(ApiError::bad_request(format!(
            "fieldValidation: Unsupported value: {mode:?}: supported values: \"Ignore\", \"Strict\", \"Warn\""
        )));
    }
    let checked = typed::check(r, obj).map_err(|e| {
        ApiError::bad_request(format!(
            "{} in version {:?} cannot be handled as a {}: {e}",
            r.kind, r.version, r.kind
        ))
    })?;
    if !checked.unknown.is_empty() {
        let msgs: Vec<String> = checked
            .unknown
            .iter()
            .map(|f| format!("unknown field {f:?}"))
            .collect();
        match mode {
            "Strict" => {
                return Err(ApiError::bad_request(format!(
                    "strict decoding error: {}",
                    msgs.join(", ")
                )))
            }
            "Warn" => warnings.extend(msgs),
            _ => {}
        }
    }
    Ok(checked.object)
}

/// Fills or checks apiVersion, kind and namespace of a request body against the target.
fn check_identity(t: &Target, obj: &mut Value) -> ApiResult<()> {
    let r = t.resource;
    let m = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the request body must be an object"))?;
    match m.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => {
            m.insert("apiVersion".into(), json!(r.api_version()));
        }
        Some(v) if v == r.api_version() => {}
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({})",
                r.api_version()
            )))
        }
    }
    match m.get("kind").and_then(Value::as_str) {
        None | Some("") => {
            m.insert("kind".into(), json!(r.kind));
        }
        Some(k) if k == r.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                r.kind
            )))
        }
    }
    let md = meta::metadata_mut(obj);
    if r.namespaced {
        let want = t.namespace.as_deref().unwrap_or("");
        match md.get("namespace").and_then(Value::as_str) {
            None | Some("") => {
                md.insert("namespace".into(), json!(want));
            }
            Some(n) if n == want => {}
            Some(_) => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ))
            }
        }
    } else {
        md.remove("namespace");
    }
    Ok(())
}

/// Clears what a client may not set on create (status for kinds that have a status subresource,
/// system metadata) and sets the system fields.
fn prepare_create(r: &Resource, obj: &mut Value) {
    let m = meta::metadata_mut(obj);
    for f in [
        "uid",
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
        "managedFields",
    ] {
        m.remove(f);
    }
    m.insert("uid".into(), json!(meta::new_uid()));
    m.insert("creationTimestamp".into(), json!(meta::now()));
    if r.has_generation || r.kind == "Pod" {
        m.insert("generation".into(), json!(1));
    } else {
        m.remove("generation");
    }
    if r.has(Subresource::Status) && !matches!(r.kind, "Node") {
        if let Some(o) = obj.as_object_mut() {
            o.remove("status");
        }
    }
}

pub async fn create(
    st: &State,
    t: &Target,
    q: &Query,
    mut obj: Value,
    warnings: &mut Warnings,
) -> ApiResult<Value> {
    let r = t.resource;
    if r.namespaced && t.namespace.is_none() {
        return Err(ApiError::bad_request(
            "the server could not find the requested resource (a namespaced resource is created in a namespace)",
        ));
    }
    check_identity(t, &mut obj)?;
    let mut obj = check_fields(r, &obj, q, warnings)?;
    if meta::name(&obj).is_empty() {
        let gen = meta::str_field(&obj, "generateName").to_string();
        if !gen.is_empty() {
            meta::metadata_mut(&mut obj).insert("name".into(), json!(meta::generate_name(&gen)));
        }
    }
    prepare_create(r, &mut obj);
    defaults::apply(r, &mut obj);
    let name = meta::name(&obj).to_string();
    let errs = validation::validate(r, &obj, None);
    if !errs.is_empty() {
        return Err(ApiError::invalid(r, &name, &errs));
    }
    for attempt in 0..MAX_RETRIES {
        let mut candidate = obj.clone();
        let side = admission::admit_create(st, r, &mut candidate).await?;
        if q.dry_run() {
            return Ok(candidate);
        }
        match st.registry.create(r, candidate, side).await {
            Ok(stored) => return Ok(stored),
            // A side effect's guard moved (quota, allocation): admit again against fresh state.
            Err(StoreError::Conflict) if attempt + 1 < MAX_RETRIES => continue,
            Err(e) => return Err(ApiError::store(r, &name, e)),
        }
    }
    Err(ApiError::conflict(r, &name))
}

/// The object with `status` from `new` and everything else from `old`.
fn with_status(old: &Value, new: &Value) -> Value {
    let mut out = old.clone();
    if let Some(m) = out.as_object_mut() {
        match new.get("status") {
            Some(s) => m.insert("status".into(), s.clone()),
            None => m.remove("status"),
        };
    }
    out
}

/// Makes an updated object consistent with the stored one: system metadata kept, status or spec
/// kept depending on the subresource, generation bumped on spec changes.
fn prepare_update(r: &Resource, sub: Option<Subresource>, new: &mut Value, old: &Value) {
    if sub == Some(Subresource::Finalize) {
        let mut merged = old.clone();
        let fins = new
            .pointer("/spec/finalizers")
            .cloned()
            .unwrap_or(json!([]));
        if let Some(m) = merged.as_object_mut() {
            let spec = m.entry("spec").or_insert_with(|| json!({}));
            spec["finalizers"] = fins;
        }
        let rv = meta::resource_version(new).to_string();
        meta::metadata_mut(&mut merged).insert("resourceVersion".into(), json!(rv));
        *new = merged;
    } else if sub == Some(Subresource::Status) {
        let mut merged = with_status(old, new);
        // Status writers may still touch labels and annotations? Kubernetes' status strategies keep
        // the stored metadata; only the resourceVersion precondition is taken from the request.
        let rv = meta::resource_version(new).to_string();
        meta::metadata_mut(&mut merged).insert("resourceVersion".into(), json!(rv));
        *new = merged;
    } else if r.has(Subresource::Status) {
        if let Some(m) = new.as_object_mut() {
            match old.get("status") {
                Some(s) => m.insert("status".into(), s.clone()),
                None => m.remove("status"),
            };
        }
    }
    if r.kind == "Namespace" && sub.is_none() {
        // A namespace's spec holds only its finalizers, which change through `finalize` alone.
        if let (Some(m), Some(spec)) = (new.as_object_mut(), old.get("spec")) {
            m.insert("spec".into(), spec.clone());
        }
    }
    let om = meta::metadata(old).cloned().unwrap_or_default();
    let nm = meta::metadata_mut(new);
    for f in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
    ] {
        match om.get(f) {
            Some(v) => nm.insert(f.into(), v.clone()),
            None => nm.remove(f),
        };
    }
    nm.remove("managedFields");
    if r.has_generation || r.kind == "Pod" {
        let spec_changed = new.get("spec") != old.get("spec");
        if spec_changed {
            let g = meta::metadata(old)
                .and_then(|m| m.get("generation"))
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta::metadata_mut(new).insert("generation".into(), json!(g + 1));
        }
    }
}

/// Equal apart from resourceVersion: such an update is a no-op and is not written.
fn same_object(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        v
    };
    strip(a) == strip(b)
}

/// What a write loop makes of the current object.
pub enum Mutation<'a> {
    /// PUT: the body replaces the object (its resourceVersion, if any, is the precondition).
    Replace(Value),
    /// PATCH of some type with the raw body.
    Patch(PatchType, &'a [u8]),
}

/// Update or patch with retries; `create_missing` lets an apply patch create the object.
pub async fn update(
    st: &State,
    t: &Target,
    q: &Query,
    mutation: Mutation<'_>,
    warnings: &mut Warnings,
) -> ApiResult<(Value, bool)> {
    let r = t.resource;
    let name = t.name.clone().unwrap_or_default();
    for _ in 0..MAX_RETRIES {
        let current = match st.registry.get(r, ns(t), &name).await {
            Ok(o) => Some(o),
            Err(StoreError::NotFound) => None,
            Err(e) => return Err(ApiError::store(r, &name, e)),
        };
        let Some(current) = current else {
            if let Mutation::Patch(PatchType::Apply, body) = mutation {
                if t.sub.is_none() {
                    let obj = super::request::decode_yaml(body)?;
                    let created = create(st, t, q, obj, warnings).await?;
                    return Ok((created, true));
                }
            }
            return Err(ApiError::not_found(r, &name));
        };
        let current_rv = meta::resource_version(&current).to_string();
        // The view the mutation applies to: the object, or its Scale.
        let view = match t.sub {
            Some(Subresource::Scale) => scale_of(&current),
            _ => current.clone(),
        };
        let mut next = match &mutation {
            Mutation::Replace(body) => body.clone(),
            Mutation::Patch(pt, body) => apply_patch(*pt, &view, body)?,
        };
        // A precondition the client set: a mismatch is a conflict, never retried.
        let wanted_rv = meta::resource_version(&next).to_string();
        let client_rv = match &mutation {
            Mutation::Replace(_) => !wanted_rv.is_empty(),
            Mutation::Patch(..) => !wanted_rv.is_empty() && wanted_rv != current_rv,
        };
        if client_rv && wanted_rv != current_rv {
            return Err(ApiError::conflict(r, &name));
        }
        if let Some(Subresource::Scale) = t.sub {
            next = apply_scale(r, &current, &next)?;
        } else {
            let sub_target = Target {
                sub: None,
                ..t.clone()
            };
            check_identity(&sub_target, &mut next)?;
            next = check_fields(r, &next, q, warnings)?;
        }
        if meta::name(&next) != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                meta::name(&next)
            )));
        }
        prepare_update(r, t.sub, &mut next, &current);
        defaults::apply(r, &mut next);
        let errs = validation::validate(r, &next, Some(&current));
        if !errs.is_empty() {
            return Err(ApiError::invalid(r, &name, &errs));
        }
        if same_object(&next, &current) {
            return Ok((current, false));
        }
        let expected: i64 = current_rv.parse().unwrap_or(0);
        if q.dry_run() {
            return Ok((next, false));
        }
        // Finalizers all gone from an object being deleted: the update completes the deletion.
        let spec_finalized = r.kind != "Namespace"
            || next
                .pointer("/spec/finalizers")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty);
        if meta::is_deleting(&next) && meta::finalizers(&next).is_empty() && spec_finalized {
            let mut side = admission::on_delete(r, &current);
            admission::release_quota(st, r, &current, &mut side).await?;
            match st.registry.delete(r, ns(t), &name, expected, side).await {
                Ok(rev) => {
                    meta::set_resource_version(&mut next, rev);
                    return Ok((next, false));
                }
                Err(StoreError::Conflict) if !client_rv => continue,
                Err(e) => return Err(ApiError::store(r, &name, e)),
            }
        }
        let side = admission::admit_update(st, r, &mut next, &current).await?;
        match st.registry.update(r, next, expected, side).await {
            Ok(stored) => {
                return Ok((
                    match t.sub {
                        Some(Subresource::Scale) => scale_of(&stored),
                        _ => stored,
                    },
                    false,
                ))
            }
            Err(StoreError::Conflict) if !client_rv => continue,
            Err(e) => return Err(ApiError::store(r, &name, e)),
        }
    }
    Err(ApiError::conflict(r, &name))
}

fn apply_patch(pt: PatchType, current: &Value, body: &[u8]) -> ApiResult<Value> {
    let bad = |e: String| ApiError::new(422, "Invalid", e);
    match pt {
        PatchType::Json => {
            let p: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            patch::json_patch(current, &p).map_err(bad)
        }
        PatchType::Merge => {
            let p = super::request::decode_json(body)?;
            patch::merge_patch(current, &p).map_err(bad)
        }
        PatchType::Strategic => {
            let p = super::request::decode_json(body)?;
            patch::strategic_merge_patch(current, &p).map_err(bad)
        }
        PatchType::Apply => {
            // Server-side apply without field ownership: the applied configuration is merged like a
            // strategic merge patch (lists with merge keys merge, others are replaced).
            let p = super::request::decode_yaml(body)?;
            patch::strategic_merge_patch(current, &p).map_err(bad)
        }
    }
}

/// The autoscaling/v1 Scale view of a Deployment or ReplicaSet.
fn scale_of(obj: &Value) -> Value {
    let selector = obj
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let md = meta::metadata(obj).cloned().unwrap_or_default();
    let keep: Map<String, Value> = md
        .into_iter()
        .filter(|(k, _)| {
            matches!(
                k.as_str(),
                "name" | "namespace" | "uid" | "resourceVersion" | "creationTimestamp"
            )
        })
        .collect();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": keep,
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(0))},
        "status": {
            "replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
            "selector": selector,
        }
    })
}

/// The object with the Scale's `spec.replicas` written into it.
fn apply_scale(r: &Resource, current: &Value, scale: &Value) -> ApiResult<Value> {
    let checked = typed::check_scale(scale).map_err(|e| {
        ApiError::bad_request(format!(
            "Scale in version \"v1\" cannot be handled as a Scale: {e}"
        ))
    })?;
    let replicas = checked
        .object
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if replicas < 0 {
        return Err(ApiError::invalid(
            r,
            meta::name(current),
            &[validation::FieldError::invalid(
                "spec.replicas",
                &json!(replicas),
                "must be greater than or equal to 0",
            )],
        ));
    }
    let mut out = current.clone();
    out["spec"]["replicas"] = json!(replicas);
    Ok(out)
}

/// DELETE options from the body and query.
#[derive(Default)]
pub struct DeleteOptions {
    pub grace: Option<i64>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub propagation: Option<String>,
}

impl DeleteOptions {
    pub fn parse(q: &Query, body: &[u8]) -> ApiResult<DeleteOptions> {
        let mut o = DeleteOptions {
            grace: q.int("gracePeriodSeconds")?,
            propagation: q.get("propagationPolicy").map(str::to_string),
            ..Default::default()
        };
        if !body.iter().all(u8::is_ascii_whitespace) {
            let v = super::request::decode_json(body)?;
            if let Some(g) = v.get("gracePeriodSeconds").and_then(Value::as_i64) {
                o.grace = Some(g);
            }
            if let Some(p) = v.get("propagationPolicy").and_then(Value::as_str) {
                o.propagation = Some(p.to_string());
            }
            if v.get("orphanDependents") == Some(&json!(true)) && o.propagation.is_none() {
                o.propagation = Some("Orphan".into());
            }
            if let Some(pre) = v.get("preconditions") {
                o.uid = pre.get("uid").and_then(Value::as_str).map(str::to_string);
                o.resource_version = pre
                    .get("resourceVersion")
                    .and_then(Value::as_str)
                    .map(str::to_string);
            }
        }
        if let Some(p) = &o.propagation {
            if !matches!(p.as_str(), "Orphan" | "Background" | "Foreground") {
                return Err(ApiError::bad_request(format!(
                    "propagationPolicy: Unsupported value: {p:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
                )));
            }
        }
        Ok(o)
    }
}

/// Deletes one object: immediately, or by marking it when finalizers or a graceful pod stop must
/// run first. Returns the object as last stored (or as deleted).
pub async fn delete(st: &State, t: &Target, q: &Query, opts: &DeleteOptions) -> ApiResult<Value> {
    let r = t.resource;
    let name = t.name.clone().unwrap_or_default();
    if r.kind == "Namespace" && api::SYSTEM_NAMESPACES.contains(&name.as_str()) {
        return Err(ApiError::forbidden(
            r,
            &name,
            "this namespace may not be deleted",
        ));
    }
    for _ in 0..MAX_RETRIES {
        let current = st
            .registry
            .get(r, ns(t), &name)
            .await
            .map_err(store_err(t, &name))?;
        if let Some(uid) = &opts.uid {
            if uid != meta::uid(&current) {
                return Err(ApiError::conflict_because(
                    r,
                    &name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        meta::uid(&current)
                    ),
                ));
            }
        }
        if let Some(rv) = &opts.resource_version {
            if rv != meta::resource_version(&current) {
                return Err(ApiError::conflict_because(
                    r,
                    &name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                        meta::resource_version(&current)
                    ),
                ));
            }
        }
        let expected: i64 = meta::resource_version(&current).parse().unwrap_or(0);
        let mut marked = current.clone();
        let mut finalizers = meta::finalizers(&current);
        let policy_finalizer = match opts.propagation.as_deref() {
            Some("Foreground") => Some("foregroundDeletion"),
            Some("Orphan") => Some("orphan"),
            _ => None,
        };
        if let Some(f) = policy_finalizer {
            if !meta::is_deleting(&current) && !finalizers.iter().any(|x| x == f) {
                finalizers.push(f.to_string());
            }
        }
        let graceful_pod = r.kind == "Pod"
            && current
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty())
            && opts
                .grace
                .or_else(|| {
                    current
                        .pointer("/spec/terminationGracePeriodSeconds")
                        .and_then(Value::as_i64)
                })
                .unwrap_or(30)
                > 0
            && !current
                .pointer("/status/phase")
                .and_then(Value::as_str)
                .is_some_and(|p| p == "Succeeded" || p == "Failed");
        let namespace = r.kind == "Namespace";
        if !finalizers.is_empty() || graceful_pod || namespace {
            if meta::is_deleting(&current) && policy_finalizer.is_none() {
                return Ok(current);
            }
            let m = meta::metadata_mut(&mut marked);
            if !m.contains_key("deletionTimestamp") {
                let grace = if graceful_pod {
                    opts.grace
                        .or_else(|| {
                            current
                                .pointer("/spec/terminationGracePeriodSeconds")
                                .and_then(Value::as_i64)
                        })
                        .unwrap_or(30)
                } else {
                    0
                };
                let at = meta::parse_time(&meta::now()).unwrap_or(0) + grace;
                m.insert("deletionTimestamp".into(), json!(meta::format_time(at)));
                m.insert("deletionGracePeriodSeconds".into(), json!(grace));
            }
            if !finalizers.is_empty() {
                m.insert("finalizers".into(), json!(finalizers));
            }
            if namespace {
                marked["status"] = json!({"phase": "Terminating"});
            }
            if q.dry_run() {
                return Ok(marked);
            }
            match st
                .registry
                .update(r, marked, expected, SideEffects::default())
                .await
            {
                Ok(stored) => return Ok(stored),
                Err(StoreError::Conflict) if opts.resource_version.is_none() => continue,
                Err(e) => return Err(ApiError::store(r, &name, e)),
            }
        }
        if q.dry_run() {
            return Ok(current);
        }
        let mut side = admission::on_delete(r, &current);
        admission::release_quota(st, r, &current, &mut side).await?;
        match st.registry.delete(r, ns(t), &name, expected, side).await {
            Ok(rev) => {
                let mut gone = current;
                meta::set_resource_version(&mut gone, rev);
                return Ok(gone);
            }
            Err(StoreError::Conflict) if opts.resource_version.is_none() => continue,
            Err(e) => return Err(ApiError::store(r, &name, e)),
        }
    }
    Err(ApiError::conflict(r, &name))
}

/// Deletes every object the selectors match; returns the list of what was deleted.
pub async fn delete_collection(
    st: &State,
    t: &Target,
    q: &Query,
    opts: &DeleteOptions,
) -> ApiResult<Value> {
    let listed = list(st, t, q).await?;
    let mut deleted = Vec::new();
    for obj in listed.items {
        let one = Target {
            namespace: t
                .resource
                .namespaced
                .then(|| meta::namespace(&obj).to_string()),
            name: Some(meta::name(&obj).to_string()),
            ..t.clone()
        };
        match delete(st, &one, q, opts).await {
            Ok(o) => deleted.push(o),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(list_object(
        t.resource,
        Listed {
            items: deleted,
            revision: listed.revision,
            continue_token: None,
            remaining: None,
        },
    ))
}

/// POST pods/<name>/binding: sets spec.nodeName once; a pod already bound answers 409.
pub async fn bind(st: &State, t: &Target, body: Value) -> ApiResult<Value> {
    let r = t.resource;
    let name = t.name.clone().unwrap_or_default();
    let checked = typed::check_binding(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "Binding in version \"v1\" cannot be handled as a Binding: {e}"
        ))
    })?;
    let node = checked
        .object
        .pointer("/target/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if node.is_empty() {
        return Err(ApiError::invalid(
            r,
            &name,
            &[validation::FieldError::required("target.name")],
        ));
    }
    for _ in 0..MAX_RETRIES {
        let current = st
            .registry
            .get(r, ns(t), &name)
            .await
            .map_err(store_err(t, &name))?;
        if meta::is_deleting(&current) {
            return Err(ApiError::conflict_because(
                r,
                &name,
                "pod is being deleted, cannot be assigned to a host",
            ));
        }
        let bound = current
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !bound.is_empty() {
            return Err(ApiError::conflict_because(
                r,
                &name,
                &format!("pod {name} is already assigned to node {bound:?}"),
            ));
        }
        let mut next = current.clone();
        next["spec"]["nodeName"] = json!(node);
        let conds = next["status"]
            .as_object_mut()
            .map(|s| s.entry("conditions").or_insert_with(|| json!([])));
        if let Some(Value::Array(conds)) = conds {
            conds.retain(|c| c.get("type") != Some(&json!("PodScheduled")));
            conds.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": meta::now()}));
        }
        let expected: i64 = meta::resource_version(&current).parse().unwrap_or(0);
        match st
            .registry
            .update(r, next, expected, SideEffects::default())
            .await
        {
            Ok(_) => {
                return Ok(
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
                )
            }
            Err(StoreError::Conflict) => continue,
            Err(e) => return Err(ApiError::store(r, &name, e)),
        }
    }
    Err(ApiError::conflict(r, &name))
}
