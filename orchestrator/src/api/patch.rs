//! Patches: JSON patch (RFC 6902) and JSON merge patch (RFC 7386) through the json-patch crate, and
//! Kubernetes' strategic merge patch, implemented here from its documented rules.
//!
//! Strategic merge differs from a merge patch in lists: a list with a merge key (containers by
//! `name`, container ports by `containerPort`, env by `name`...) is merged element by element, and
//! the directives `$patch` (replace, merge, delete), `$setElementOrder/<list>`, `$retainKeys` and
//! `$deleteFromPrimitiveList/<list>` steer the result. Lists without a merge key are replaced whole.
//! Where a list sits in an object (a Pod's containers, a Deployment's template's containers) is told
//! by the list's field name and its parent's, the way the types' `patchMergeKey` tags place them.

use serde_json::{Map, Value};

/// How a list field merges.
#[derive(Debug, Clone, Copy, PartialEq)]
enum ListStrategy {
    /// Merged element by element, matched on this key.
    MergeKey(&'static str),
    /// A list of scalars merged as a set (finalizers).
    MergePrimitives,
    /// Replaced whole.
    Replace,
}

/// The strategy of the list at `path` (field names from the root, list indices left out).
fn list_strategy(path: &[String]) -> ListStrategy {
    let field = path.last().map(String::as_str).unwrap_or("");
    let parent = path
        .len()
        .checked_sub(2)
        .map(|i| path[i].as_str())
        .unwrap_or("");
    match (parent, field) {
        (_, "containers" | "initContainers" | "ephemeralContainers") => {
            ListStrategy::MergeKey("name")
        }
        (_, "imagePullSecrets" | "resourceClaims" | "schedulingGates") => {
            ListStrategy::MergeKey("name")
        }
        ("spec", "volumes") => ListStrategy::MergeKey("name"),
        (_, "env") => ListStrategy::MergeKey("name"),
        (_, "volumeMounts") => ListStrategy::MergeKey("mountPath"),
        (_, "volumeDevices") => ListStrategy::MergeKey("devicePath"),
        (_, "hostAliases") => ListStrategy::MergeKey("ip"),
        (_, "topologySpreadConstraints") => ListStrategy::MergeKey("topologyKey"),
        (_, "conditions") => ListStrategy::MergeKey("type"),
        ("status", "addresses") => ListStrategy::MergeKey("type"),
        ("metadata", "ownerReferences") => ListStrategy::MergeKey("uid"),
        ("metadata", "finalizers") => ListStrategy::MergePrimitives,
        ("spec", "ports") if is_service_spec(path) => ListStrategy::MergeKey("port"),
        ("containers" | "initContainers" | "ephemeralContainers", "ports") => {
            ListStrategy::MergeKey("containerPort")
        }
        _ => ListStrategy::Replace,
    }
}

/// `spec.ports` of a Service (not a container's `ports`, whose parent is a container element).
fn is_service_spec(path: &[String]) -> bool {
    path.len() == 2 && path[0] == "spec"
}

/// Applies an RFC 6902 JSON patch.
///
/// The patch runs on a copy that is dropped on failure, so the crate's undo-in-place mode is not
/// used: its undo panics when a `move` removed its source and then failed to add, leaving the
/// document changed under an earlier operation's undo record.
pub fn json_patch(target: &Value, patch: &Value) -> Result<Value, String> {
    let p: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| format!("invalid JSON patch: {e}"))?;
    let mut out = target.clone();
    json_patch::patch_unsafe(&mut out, &p).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Applies an RFC 7386 JSON merge patch.
pub fn merge_patch(target: &Value, patch: &Value) -> Result<Value, String> {
    if !patch.is_object() {
        return Err("the merge patch must be a JSON object".into());
    }
    let mut out = target.clone();
    json_patch::merge(&mut out, patch);
    Ok(out)
}

/// Applies a strategic merge patch.
pub fn strategic_merge_patch(target: &Value, patch: &Value) -> Result<Value, String> {
    let Value::Object(p) = patch else {
        return Err("the strategic merge patch must be a JSON object".into());
    };
    let mut path = Vec::new();
    let base = target.as_object().cloned().unwrap_or_default();
    match merge_map(base, p, &mut path)? {
        Some(m) => Ok(Value::Object(m)),
        None => Err("the patch deletes the whole object".into()),
    }
}

const PATCH: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ORDER: &str = "$setElementOrder/";
const DELETE_PRIMITIVES: &str = "$deleteFromPrimitiveList/";

/// Merges `patch` into `base`; `None` means the map is deleted (`$patch: delete`).
fn merge_map(
    mut base: Map<String, Value>,
    patch: &Map<String, Value>,
    path: &mut Vec<String>,
) -> Result<Option<Map<String, Value>>, String> {
    match patch.get(PATCH).map(|v| v.as_str()) {
        Some(Some("delete")) => return Ok(None),
        Some(Some("replace")) => {
            let mut m = patch.clone();
            m.remove(PATCH);
            return Ok(Some(strip_directives(m)));
        }
        Some(Some("merge")) | None => {}
        Some(other) => return Err(format!("unknown patch type: {other:?}")),
    }
    let retain: Option<Vec<String>> = match patch.get(RETAIN_KEYS) {
        Some(Value::Array(keys)) => Some(
            keys.iter()
                .map(|k| {
                    k.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| "$retainKeys must be a list of strings".to_string())
                })
                .collect::<Result<_, _>>()?,
        ),
        Some(_) => return Err("$retainKeys must be a list of strings".into()),
        None => None,
    };
    for (k, pv) in patch {
        if k == PATCH || k == RETAIN_KEYS || k.starts_with(SET_ORDER) {
            continue;
        }
        if let Some(field) = k.strip_prefix(DELETE_PRIMITIVES) {
            let drop: Vec<&Value> = pv
                .as_array()
                .map(|a| a.iter().collect())
                .unwrap_or_default();
            if let Some(Value::Array(items)) = base.get_mut(field) {
                items.retain(|v| !drop.contains(&v));
            }
            continue;
        }
        path.push(k.clone());
        let merged = match (base.remove(k), pv) {
            (_, Value::Null) => None,
            (Some(Value::Object(b)), Value::Object(pm)) => {
                merge_map(b, pm, path)?.map(Value::Object)
            }
            (None, Value::Object(pm)) => merge_map(Map::new(), pm, path)?.map(Value::Object),
            (b, Value::Array(pa)) => {
                let b = match b {
                    Some(Value::Array(items)) => items,
                    _ => Vec::new(),
                };
                let order = patch
                    .get(&format!("{SET_ORDER}{k}"))
                    .and_then(Value::as_array);
                Some(Value::Array(merge_list(b, pa, order, path)?))
            }
            (_, v) => Some(v.clone()),
        };
        path.pop();
        if let Some(v) = merged {
            base.insert(k.clone(), v);
        }
    }
    // `$setElementOrder` for a list the patch does not otherwise touch still reorders it.
    for (k, order) in patch {
        if let Some(field) = k.strip_prefix(SET_ORDER) {
            if patch.contains_key(field) {
                continue;
            }
            if let (Some(Value::Array(items)), Some(order)) =
                (base.get_mut(field), order.as_array())
            {
                path.push(field.to_string());
                let strategy = list_strategy(path);
                path.pop();
                let taken = std::mem::take(items);
                *items = reorder(taken, order, strategy);
            }
        }
    }
    if let Some(keep) = retain {
        base.retain(|k, _| keep.contains(k));
    }
    Ok(Some(base))
}

fn key_of<'a>(item: &'a Value, key: &str) -> Option<&'a Value> {
    item.get(key)
}

fn merge_list(
    base: Vec<Value>,
    patch: &[Value],
    order: Option<&Vec<Value>>,
    path: &mut Vec<String>,
) -> Result<Vec<Value>, String> {
    let strategy = list_strategy(path);
    // `{"$patch": "replace"}` as an element replaces the whole list with the other elements.
    if patch
        .iter()
        .any(|v| v.get(PATCH).and_then(Value::as_str) == Some("replace"))
    {
        return Ok(patch
            .iter()
            .filter(|v| v.get(PATCH).is_none())
            .cloned()
            .map(strip_value)
            .collect());
    }
    let out = match strategy {
        ListStrategy::Replace => patch.iter().cloned().map(strip_value).collect(),
        ListStrategy::MergePrimitives => {
            let mut out = base;
            for v in patch {
                if !out.contains(v) {
                    out.push(v.clone());
                }
            }
            out
        }
        ListStrategy::MergeKey(key) => {
            let mut out = base;
            for pv in patch {
                let Some(pm) = pv.as_object() else {
                    return Err(format!(
                        "{}: a list with merge key {key:?} must hold objects",
                        path.join(".")
                    ));
                };
                let Some(k) = key_of(pv, key).cloned() else {
                    return Err(format!(
                        "map: {pv} does not contain declared merge key: {key}"
                    ));
                };
                let pos = out.iter().position(|b| key_of(b, key) == Some(&k));
                let deleting = pm.get(PATCH).and_then(Value::as_str) == Some("delete");
                match (pos, deleting) {
                    (Some(i), true) => {
                        out.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => {
                        let b = match out[i].take() {
                            Value::Object(m) => m,
                            _ => Map::new(),
                        };
                        let mut pm = pm.clone();
                        pm.remove(PATCH);
                        out[i] = merge_map(b, &pm, path)?
                            .map(Value::Object)
                            .unwrap_or(Value::Null);
                    }
                    (None, false) => {
                        let mut pm = pm.clone();
                        pm.remove(PATCH);
                        out.push(Value::Object(strip_directives(pm)));
                    }
                }
            }
            out.retain(|v| !v.is_null());
            out
        }
    };
    Ok(match order {
        Some(order) => reorder(out, order, strategy),
        None => out,
    })
}

/// Orders `items` as `order` lists them (by merge key, or by value for primitives); items the order
/// does not name keep their relative place after the named ones.
fn reorder(items: Vec<Value>, order: &[Value], strategy: ListStrategy) -> Vec<Value> {
    let id = |v: &Value| -> Value {
        match strategy {
            ListStrategy::MergeKey(k) => v.get(k).cloned().unwrap_or(Value::Null),
            _ => v.clone(),
        }
    };
    let order_ids: Vec<Value> = order
        .iter()
        .map(|o| match strategy {
            ListStrategy::MergeKey(k) => o.get(k).cloned().unwrap_or(Value::Null),
            _ => o.clone(),
        })
        .collect();
    let mut named: Vec<(usize, Value)> = Vec::new();
    let mut rest = Vec::new();
    for v in items {
        match order_ids.iter().position(|o| *o == id(&v)) {
            Some(p) => named.push((p, v)),
            None => rest.push(v),
        }
    }
    named.sort_by_key(|(p, _)| *p);
    named.into_iter().map(|(_, v)| v).chain(rest).collect()
}

fn strip_directives(mut m: Map<String, Value>) -> Map<String, Value> {
    m.retain(|k, _| {
        k != PATCH
            && k != RETAIN_KEYS
            && !k.starts_with(SET_ORDER)
            && !k.starts_with(DELETE_PRIMITIVES)
    });
    for v in m.values_mut() {
        *v = strip_value(v.take());
    }
    // A null in a patch for a new map means "absent", not a stored null.
    m.retain(|_, v| !v.is_null());
    m
}

fn strip_value(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(strip_directives(m)),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_value).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deploy() -> Value {
        json!({"metadata": {"name": "d", "finalizers": ["a"]},
            "spec": {"replicas": 1, "template": {"spec": {
                "containers": [
                    {"name": "web", "image": "nginx:1", "env": [{"name": "A", "value": "1"}],
                     "ports": [{"containerPort": 80}]},
                    {"name": "side", "image": "busybox"}],
                "volumes": [{"name": "v", "emptyDir": {}}]}}}})
    }

    #[test]
    fn a_json_patch_whose_move_fails_halfway_is_an_error_not_a_panic() {
        let target = deploy();
        // The move removes /metadata before failing to add under a missing parent; the first
        // operation's undo then has no /metadata to write into.
        let p = json!([
            {"op": "add", "path": "/metadata/name", "value": "renamed"},
            {"op": "move", "from": "/metadata", "path": "/missing/metadata"},
        ]);
        let err = json_patch(&target, &p).unwrap_err();
        assert!(err.contains("operation '/1'"), "{err}");
        let ok = json_patch(
            &target,
            &json!([{"op": "add", "path": "/metadata/name", "value": "e"}]),
        )
        .unwrap();
        assert_eq!(ok["metadata"]["name"], "e");
    }

    #[test]
    fn containers_merge_by_name_and_keep_others() {
        let p = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "web", "image": "nginx:2", "env": [{"name": "B", "value": "2"}]}]}}}});
        let out = strategic_merge_patch(&deploy(), &p).unwrap();
        let cs = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs.as_array().unwrap().len(), 2);
        assert_eq!(cs[0]["image"], "nginx:2");
        assert_eq!(
            cs[0]["env"],
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}])
        );
        assert_eq!(cs[0]["ports"], json!([{"containerPort": 80}]));
        assert_eq!(cs[1]["name"], "side");
    }

    #[test]
    fn directives() {
        let p = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "side"}, {"name": "web"}],
            "containers": [{"name": "web", "$patch": "delete"}],
            "volumes": [{"name": "v", "hostPath": {"path": "/x"}, "$retainKeys": ["name", "hostPath"]}]}}},
            "metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}});
        let out = strategic_merge_patch(&deploy(), &p).unwrap();
        let spec = &out["spec"]["template"]["spec"];
        assert_eq!(
            spec["containers"],
            json!([{"name": "side", "image": "busybox"}])
        );
        assert_eq!(
            spec["volumes"],
            json!([{"name": "v", "hostPath": {"path": "/x"}}])
        );
        assert_eq!(out["metadata"]["finalizers"], json!([]));
    }

    #[test]
    fn nulls_delete_and_replace_replaces() {
        let p = json!({"spec": {"replicas": null, "template": {"spec": {"containers": [
            {"$patch": "replace"}, {"name": "only", "image": "x"}]}}}});
        let out = strategic_merge_patch(&deploy(), &p).unwrap();
        assert!(out["spec"].get("replicas").is_none());
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "only", "image": "x"}])
        );
    }

    #[test]
    fn service_ports_merge_by_port_and_unkeyed_lists_replace() {
        let svc =
            json!({"spec": {"ports": [{"port": 80, "name": "http"}], "externalIPs": ["1.2.3.4"]}});
        let p = json!({"spec": {"ports": [{"port": 443, "name": "https"}], "externalIPs": ["5.6.7.8"]}});
        let out = strategic_merge_patch(&svc, &p).unwrap();
        assert_eq!(out["spec"]["ports"].as_array().unwrap().len(), 2);
        assert_eq!(out["spec"]["externalIPs"], json!(["5.6.7.8"]));
    }

    #[test]
    fn only_container_and_service_ports_merge_by_key() {
        let slice = json!({"ports": [{"name": "a", "port": 1}], "endpoints": []});
        let out =
            strategic_merge_patch(&slice, &json!({"ports": [{"name": "b", "port": 2}]})).unwrap();
        assert_eq!(out["ports"], json!([{"name": "b", "port": 2}]));
    }

    #[test]
    fn json_and_merge_patches() {
        let o = json!({"a": {"b": 1, "c": 2}});
        assert_eq!(
            merge_patch(&o, &json!({"a": {"b": null}})).unwrap(),
            json!({"a": {"c": 2}})
        );
        let p = json!([{"op": "replace", "path": "/a/b", "value": 5}]);
        assert_eq!(json_patch(&o, &p).unwrap(), json!({"a": {"b": 5, "c": 2}}));
        assert!(json_patch(&o, &json!([{"op": "test", "path": "/a/b", "value": 9}])).is_err());
    }
}
