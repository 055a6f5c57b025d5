//! Admission: the checks and changes between a validated object and the store, in Kubernetes'
//! plug-in order: the namespace must exist and not be terminating, LimitRange defaults and bounds,
//! ServiceAccount (in `serviceaccount`), Service ClusterIP and NodePort allocation, and
//! ResourceQuota. Allocations and quota usage are returned as side effects that commit in the
//! object's own Txn.

use std::net::Ipv4Addr;

use cairn_client::{Compare, TxnOp};
use serde_json::{json, Map, Value};

use super::status::{ApiError, ApiResult};
use super::State;
use crate::api::quota::{is_memory, usage};
use crate::api::{self, meta, quantity, Resource};
use crate::registry::{alloc, ReadRevision, SideEffects, StoreError};

fn namespaces() -> &'static Resource {
    api::lookup("", "v1", "namespaces").expect("namespaces are served")
}

fn quotas() -> &'static Resource {
    api::lookup("", "v1", "resourcequotas").expect("resourcequotas are served")
}

fn limit_ranges() -> &'static Resource {
    api::lookup("", "v1", "limitranges").expect("limitranges are served")
}

pub async fn admit_create(st: &State, r: &Resource, obj: &mut Value) -> ApiResult<SideEffects> {
    let mut side = SideEffects::default();
    let name = meta::name(obj).to_string();
    if r.namespaced {
        let ns = meta::namespace(obj).to_string();
        // The member's own state first, as Kubernetes' lifecycle admission reads its informer; a
        // namespace it does not show yet is looked up with the leader before being called missing.
        let found = match st
            .registry
            .get_at(namespaces(), "", &ns, ReadRevision::Any)
            .await
        {
            Err(StoreError::NotFound) => st.registry.get(namespaces(), "", &ns).await,
            other => other,
        };
        match found {
            Ok(n) if meta::is_deleting(&n) => {
                return Err(ApiError::forbidden(
                    r,
                    &name,
                    &format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                ),
                ))
            }
            Ok(_) => {}
            Err(StoreError::NotFound) => return Err(ApiError::not_found(namespaces(), &ns)),
            Err(e) => return Err(ApiError::store(namespaces(), &ns, e)),
        }
        if r.kind == "Pod" {
            limit_range(st, r, obj).await?;
            super::serviceaccount::admit_pod(st, obj).await?;
        }
        quota(st, r, obj, 1, &mut side).await?;
    }
    if r.kind == "Service" {
        allocate_service(st, obj, None, &mut side).await?;
    }
    Ok(side)
}

pub async fn admit_update(
    st: &State,
    r: &Resource,
    obj: &mut Value,
    old: &Value,
) -> ApiResult<SideEffects> {
    let mut side = SideEffects::default();
    if r.kind == "Service" {
        allocate_service(st, obj, Some(old), &mut side).await?;
    }
    Ok(side)
}

/// What leaves the store with a deleted object: its allocations. (Quota usage is released by
/// [`release_quota`], which needs a read.)
pub fn on_delete(r: &Resource, obj: &Value) -> SideEffects {
    let mut side = SideEffects::default();
    if r.kind == "Service" {
        for ip in service_ips(obj) {
            side.ops.push(alloc::release_ip(&ip));
        }
        for p in node_ports(obj) {
            side.ops.push(alloc::release_port(p));
        }
    }
    side
}

/// Adds quota usage release for a deleted object to `side`.
pub async fn release_quota(
    st: &State,
    r: &Resource,
    obj: &Value,
    side: &mut SideEffects,
) -> ApiResult<()> {
    if r.namespaced {
        quota(st, r, obj, -1, side).await?;
    }
    Ok(())
}

fn service_ips(obj: &Value) -> Vec<String> {
    let mut ips: Vec<String> = obj
        .pointer("/spec/clusterIPs")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if let Some(ip) = obj.pointer("/spec/clusterIP").and_then(Value::as_str) {
        if !ips.iter().any(|i| i == ip) {
            ips.push(ip.to_string());
        }
    }
    ips.retain(|i| i.parse::<Ipv4Addr>().is_ok());
    ips
}

fn node_ports(obj: &Value) -> Vec<u16> {
    obj.pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("nodePort").and_then(Value::as_u64))
        .filter_map(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .collect()
}

async fn allocate_service(
    st: &State,
    obj: &mut Value,
    old: Option<&Value>,
    side: &mut SideEffects,
) -> ApiResult<()> {
    let svc = api::lookup("", "v1", "services").expect("services are served");
    let name = meta::name(obj).to_string();
    let owner = format!("{}/{name}", meta::namespace(obj));
    let ty = obj
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    let store = |e: StoreError| ApiError::store(svc, &name, e);
    let invalid = |field: &str, v: Value, why: String| {
        ApiError::invalid(
            svc,
            &name,
            &[api::validation::FieldError::invalid(field, &v, &why)],
        )
    };
    // ClusterIP: kept from the stored object, taken as requested, or picked.
    let old_ips = old.map(service_ips).unwrap_or_default();
    if ty != "ExternalName" {
        let requested = obj
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let ip = if requested == "None" {
            None
        } else if let Some(keep) = old_ips
            .first()
            .filter(|_| requested.is_empty() || old_ips.contains(&requested))
        {
            Some(keep.clone())
        } else if !requested.is_empty() {
            let ip: Ipv4Addr = requested.parse().map_err(|_| {
                invalid(
                    "spec.clusterIPs[0]",
                    json!([requested]),
                    "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)".into(),
                )
            })?;
            if !st.ip_range.contains(ip) {
                return Err(invalid("spec.clusterIPs", json!([requested]), format!("failed to allocate IP {requested}: provided IP is not in the valid range. The range of valid IPs is {}", st.ip_range_text)));
            }
            if alloc::ip_taken(st.registry.client(), ip)
                .await
                .map_err(store)?
            {
                return Err(invalid(
                    "spec.clusterIPs",
                    json!([requested]),
                    format!("failed to allocate IP {requested}: provided IP is already allocated"),
                ));
            }
            let (c, op) = alloc::claim_ip(ip, &owner);
            side.compares.push(c);
            side.ops.push(op);
            Some(requested.clone())
        } else {
            let ip = alloc::free_ip(st.registry.client(), st.ip_range)
                .await
                .map_err(store)?
                .ok_or_else(|| {
                    ApiError::internal(
                        "Internal error occurred: failed to allocate a serviceIP: range is full",
                    )
                })?;
            let (c, op) = alloc::claim_ip(ip, &owner);
            side.compares.push(c);
            side.ops.push(op);
            Some(ip.to_string())
        };
        let spec = obj["spec"]
            .as_object_mut()
            .expect("services are defaulted with a spec");
        match ip {
            Some(ip) => {
                spec.insert("clusterIP".into(), json!(ip));
                spec.insert("clusterIPs".into(), json!([ip]));
                spec.entry("ipFamilies").or_insert_with(|| json!(["IPv4"]));
                spec.entry("ipFamilyPolicy")
                    .or_insert_with(|| json!("SingleStack"));
            }
            None => {
                spec.insert("clusterIPs".into(), json!(["None"]));
                spec.entry("ipFamilies").or_insert_with(|| json!(["IPv4"]));
                spec.entry("ipFamilyPolicy")
                    .or_insert_with(|| json!("SingleStack"));
            }
        }
    }
    for ip in &old_ips {
        if obj.pointer("/spec/clusterIP").and_then(Value::as_str) != Some(ip.as_str()) {
            side.ops.push(alloc::release_ip(ip));
        }
    }
    // NodePorts for NodePort and LoadBalancer services.
    let old_ports = old.map(node_ports).unwrap_or_default();
    let wants_ports = ty == "NodePort" || ty == "LoadBalancer";
    let mut kept: Vec<u16> = Vec::new();
    if let Some(ports) = obj.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
        for (i, p) in ports.iter_mut().enumerate() {
            let Some(pm) = p.as_object_mut() else {
                continue;
            };
            if !wants_ports {
                pm.remove("nodePort");
                continue;
            }
            let requested = pm.get("nodePort").and_then(Value::as_u64).unwrap_or(0) as u16;
            let port = if requested != 0 && old_ports.contains(&requested) {
                requested
            } else if requested != 0 {
                if !st.port_range.contains(requested) {
                    return Err(invalid(&format!("spec.ports[{i}].nodePort"), json!(requested), format!("provided port is not in the valid range. The range of valid ports is {}-{}", st.port_range.lo, st.port_range.hi)));
                }
                if alloc::port_taken(st.registry.client(), requested)
                    .await
                    .map_err(store)?
                {
                    return Err(invalid(
                        &format!("spec.ports[{i}].nodePort"),
                        json!(requested),
                        "provided port is already allocated".into(),
                    ));
                }
                let (c, op) = alloc::claim_port(requested, &owner);
                side.compares.push(c);
                side.ops.push(op);
                requested
            } else {
                let p = alloc::free_port(st.registry.client(), st.port_range, &kept)
                    .await
                    .map_err(store)?
                    .ok_or_else(|| {
                        ApiError::internal(
                            "Internal error occurred: failed to allocate a nodePort: range is full",
                        )
                    })?;
                let (c, op) = alloc::claim_port(p, &owner);
                side.compares.push(c);
                side.ops.push(op);
                p
            };
            kept.push(port);
            pm.insert("nodePort".into(), json!(port));
        }
    }
    for p in old_ports {
        if !kept.contains(&p) {
            side.ops.push(alloc::release_port(p));
        }
    }
    Ok(())
}

/// Checks `obj` (sign 1: being created; -1: being deleted) against the namespace's quotas, and adds
/// the quota status updates to `side`, guarded on each quota's revision.
async fn quota(
    st: &State,
    r: &Resource,
    obj: &Value,
    sign: i128,
    side: &mut SideEffects,
) -> ApiResult<()> {
    let ns = meta::namespace(obj);
    let name = meta::name(obj);
    let qr = quotas();
    let prefix = crate::registry::prefix(qr, Some(ns));
    let page = st
        .registry
        .list_all(qr, &prefix, ReadRevision::Latest)
        .await
        .map_err(|e| ApiError::store(qr, "", e))?;
    if page.items.is_empty() {
        return Ok(());
    }
    let delta = usage(r, obj);
    for q in page.items {
        let hard: Map<String, Value> = q
            .pointer("/spec/hard")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let touched: Vec<&(String, quantity::Milli)> =
            delta.iter().filter(|(k, _)| hard.contains_key(k)).collect();
        // A quota on compute resources refuses pods that do not state them.
        if sign > 0 && r.kind == "Pod" {
            let missing: Vec<&String> = hard
                .keys()
                .filter(|k| {
                    k.starts_with("requests.")
                        || k.starts_with("limits.")
                        || *k == "cpu"
                        || *k == "memory"
                })
                .filter(|k| !delta.iter().any(|(d, _)| d == *k))
                .collect();
            if !missing.is_empty() {
                let list: Vec<String> = missing.iter().map(|s| s.to_string()).collect();
                return Err(ApiError::forbidden(
                    r,
                    name,
                    &format!(
                        "failed quota: {}: must specify {}",
                        meta::name(&q),
                        list.join(",")
                    ),
                ));
            }
        }
        if touched.is_empty() {
            continue;
        }
        let mut used: Map<String, Value> = q
            .pointer("/status/used")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for (k, _) in &touched {
            if !used.contains_key(k.as_str()) {
                let current = current_usage(st, ns, k).await?;
                used.insert(
                    k.to_string(),
                    json!(quantity::format(current, is_memory(k))),
                );
            }
        }
        let mut exceeded = Vec::new();
        let (mut req_s, mut used_s, mut lim_s) = (Vec::new(), Vec::new(), Vec::new());
        for (k, d) in &touched {
            let u = used
                .get(k.as_str())
                .and_then(Value::as_str)
                .and_then(|s| quantity::parse(s).ok())
                .unwrap_or(0);
            let h = hard
                .get(k.as_str())
                .and_then(Value::as_str)
                .and_then(|s| quantity::parse(s).ok())
                .unwrap_or(0);
            let next = (u + sign * d).max(0);
            if sign > 0 && next > h {
                exceeded.push(k.to_string());
                req_s.push(format!("{k}={}", quantity::format(*d, is_memory(k))));
                used_s.push(format!("{k}={}", quantity::format(u, is_memory(k))));
                lim_s.push(format!(
                    "{k}={}",
                    hard[k.as_str()].as_str().unwrap_or_default()
                ));
            }
            used.insert(k.to_string(), json!(quantity::format(next, is_memory(k))));
        }
        if !exceeded.is_empty() {
            return Err(ApiError::forbidden(
                r,
                name,
                &format!(
                    "exceeded quota: {}, requested: {}, used: {}, limited: {}",
                    meta::name(&q),
                    req_s.join(","),
                    used_s.join(","),
                    lim_s.join(",")
                ),
            ));
        }
        let mut next = q.clone();
        next["status"] = json!({"hard": hard, "used": used});
        let (key, bytes) = st
            .registry
            .encode_for(qr, &next)
            .map_err(|e| ApiError::store(qr, "", e))?;
        let rev: i64 = meta::resource_version(&q).parse().unwrap_or(0);
        side.compares
            .push(Compare::mod_revision(key.as_str()).eq(rev));
        side.ops.push(TxnOp::put(key, bytes, None));
    }
    Ok(())
}

/// Usage of one quota resource in a namespace, counted from the stored objects (for a quota whose
/// status does not track it yet).
async fn current_usage(st: &State, ns: &str, key: &str) -> ApiResult<quantity::Milli> {
    let kinds: Vec<&'static Resource> = api::RESOURCES.iter().filter(|r| r.namespaced).collect();
    let mut total = 0;
    for r in kinds {
        let relevant = usage(r, &json!({})).iter().any(|(k, _)| k == key)
            || (r.kind == "Pod"
                && (key.starts_with("requests.")
                    || key.starts_with("limits.")
                    || key == "cpu"
                    || key == "memory"));
        if !relevant {
            continue;
        }
        let page = st
            .registry
            .list_all(
                r,
                &crate::registry::prefix(r, Some(ns)),
                ReadRevision::Latest,
            )
            .await
            .map_err(|e| ApiError::store(r, "", e))?;
        for o in &page.items {
            if meta::is_deleting(o) && r.kind == "Pod" {
                continue;
            }
            total += usage(r, o)
                .iter()
                .filter(|(k, _)| k == key)
                .map(|(_, v)| v)
                .sum::<quantity::Milli>();
        }
    }
    Ok(total)
}

/// LimitRange admission for pods: container defaults, then min/max bounds.
async fn limit_range(st: &State, r: &Resource, obj: &mut Value) -> ApiResult<()> {
    let lr = limit_ranges();
    let ns = meta::namespace(obj).to_string();
    let page = st
        .registry
        // Read like an informer cache (the member's own state), as Kubernetes' LimitRanger does.
        .list_all(
            lr,
            &crate::registry::prefix(lr, Some(&ns)),
            ReadRevision::Any,
        )
        .await
        .map_err(|e| ApiError::store(lr, "", e))?;
    let name = meta::name(obj).to_string();
    for range in &page.items {
        for limit in range
            .pointer("/spec/limits")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if limit.get("type").and_then(Value::as_str) != Some("Container") {
                continue;
            }
            for key in ["containers", "initContainers"] {
                let Some(cs) = obj
                    .pointer_mut(&format!("/spec/{key}"))
                    .and_then(Value::as_array_mut)
                else {
                    continue;
                };
                for c in cs.iter_mut() {
                    let res = c
                        .as_object_mut()
                        .map(|m| m.entry("resources").or_insert_with(|| json!({})));
                    let Some(Value::Object(res)) = res else {
                        continue;
                    };
                    for (field, default_field) in
                        [("limits", "default"), ("requests", "defaultRequest")]
                    {
                        if let Some(d) = limit.get(default_field).and_then(Value::as_object) {
                            let m = res.entry(field).or_insert_with(|| json!({}));
                            if let Some(m) = m.as_object_mut() {
                                for (k, v) in d {
                                    m.entry(k.clone()).or_insert(v.clone());
                                }
                            }
                        }
                    }
                    // Limits defaulted after requests were given: requests default to limits.
                    if let Some(lims) = res.get("limits").and_then(Value::as_object).cloned() {
                        let req = res.entry("requests").or_insert_with(|| json!({}));
                        if let Some(req) = req.as_object_mut() {
                            for (k, v) in lims {
                                req.entry(k).or_insert(v);
                            }
                        }
                    }
                    for (bound, field, cmp_max) in
                        [("max", "limits", true), ("min", "requests", false)]
                    {
                        let Some(b) = limit.get(bound).and_then(Value::as_object) else {
                            continue;
                        };
                        for (res_name, bv) in b {
                            let bq = bv
                                .as_str()
                                .and_then(|s| quantity::parse(s).ok())
                                .unwrap_or(0);
                            let got = res
                                .get(field)
                                .and_then(|m| m.get(res_name))
                                .and_then(Value::as_str);
                            let Some(got) = got else {
                                if cmp_max {
                                    return Err(ApiError::forbidden(r, &name, &format!("maximum {res_name} usage per Container is {}.  No limit is specified", bv.as_str().unwrap_or_default())));
                                }
                                continue;
                            };
                            let gq = quantity::parse(got).unwrap_or(0);
                            if cmp_max && gq > bq {
                                return Err(ApiError::forbidden(r, &name, &format!("maximum {res_name} usage per Container is {}, but limit is {got}", bv.as_str().unwrap_or_default())));
                            }
                            if !cmp_max && gq < bq {
                                return Err(ApiError::forbidden(r, &name, &format!("minimum {res_name} usage per Container is {}, but request is {got}", bv.as_str().unwrap_or_default())));
                            }
                        }
                    }
                }
            }
        }
    }
    // The QoS class follows the defaulted resources.
    let qos = api::defaults::qos_class(obj.get("spec").unwrap_or(&Value::Null));
    if let Some(s) = obj.get_mut("status").and_then(Value::as_object_mut) {
        s.insert("qosClass".into(), json!(qos));
    }
    Ok(())
}
