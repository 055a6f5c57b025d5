//! ResourceQuota accounting: what an object adds to each quota resource name (`pods`,
//! `requests.cpu`, `count/configmaps`...), shared by admission (which changes usage in the object's
//! own Txn) and the quota controller (which fills in usage a new quota does not track yet).

use serde_json::Value;

use super::{quantity, Resource};

/// Usage an object adds to a quota, keyed by quota resource name, in thousandths.
pub fn usage(r: &Resource, obj: &Value) -> Vec<(String, quantity::Milli)> {
    let mut out = vec![(
        if r.group.is_empty() {
            format!("count/{}", r.plural)
        } else {
            format!("count/{}.{}", r.plural, r.group)
        },
        1000,
    )];
    match r.kind {
        "Pod" => {
            let phase = obj
                .pointer("/status/phase")
                .and_then(Value::as_str)
                .unwrap_or("");
            if phase == "Succeeded" || phase == "Failed" {
                return out;
            }
            out.push(("pods".into(), 1000));
            for (kind, field) in [("requests", "requests"), ("limits", "limits")] {
                for res in ["cpu", "memory"] {
                    let sum = pod_resource(obj, field, res);
                    if sum > 0 {
                        out.push((format!("{kind}.{res}"), sum));
                        if kind == "requests" {
                            out.push((res.to_string(), sum));
                        }
                    }
                }
            }
        }
        "Service" => {
            out.push(("services".into(), 1000));
            let ty = obj
                .pointer("/spec/type")
                .and_then(Value::as_str)
                .unwrap_or("");
            if ty == "NodePort" || ty == "LoadBalancer" {
                let n = obj
                    .pointer("/spec/ports")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                out.push(("services.nodeports".into(), n as i128 * 1000));
            }
            if ty == "LoadBalancer" {
                out.push(("services.loadbalancers".into(), 1000));
            }
        }
        "ConfigMap" => out.push(("configmaps".into(), 1000)),
        "Secret" => out.push(("secrets".into(), 1000)),
        "ResourceQuota" => out.push(("resourcequotas".into(), 1000)),
        _ => {}
    }
    out
}

/// A pod's total of one resource: the containers' sum, or the largest init container if larger.
fn pod_resource(obj: &Value, field: &str, res: &str) -> quantity::Milli {
    let of = |c: &Value| {
        c.pointer(&format!("/resources/{field}/{res}"))
            .and_then(Value::as_str)
            .and_then(|s| quantity::parse(s).ok())
            .unwrap_or(0)
    };
    let containers: quantity::Milli = obj
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(of)
        .sum();
    let init = obj
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(of)
        .max()
        .unwrap_or(0);
    containers.max(init)
}

pub fn is_memory(name: &str) -> bool {
    name.ends_with("memory") || name.contains("storage")
}
