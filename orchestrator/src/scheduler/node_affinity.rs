//! NodeAffinity: `spec.nodeSelector` and required node affinity (terms ORed, expressions ANDed,
//! `matchExpressions` on labels and `matchFields` on `metadata.name`) must match the node.

use k8s_openapi::api::core::v1::NodeSelectorRequirement;

use super::{NodeInfo, Plugin, PodInfo};

pub struct NodeAffinity;

const REASON: &str = "node(s) didn't match Pod's node affinity/selector";

fn requirement(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or(&[]);
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        op @ ("Gt" | "Lt") => {
            let (Some(v), Some(x)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|x| x.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if op == "Gt" {
                v > x
            } else {
                v < x
            }
        }
        _ => false,
    }
}

impl Plugin for NodeAffinity {
    fn filter(&self, info: &PodInfo, node: &NodeInfo) -> Result<(), String> {
        let pod = info.pod;
        let Some(spec) = pod.spec.as_ref() else {
            return Ok(());
        };
        let labels = node.node.metadata.labels.clone().unwrap_or_default();
        if let Some(sel) = &spec.node_selector {
            if !sel.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                return Err(REASON.into());
            }
        }
        let terms = spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .map(|r| r.node_selector_terms.clone());
        if let Some(terms) = terms {
            let any = terms.iter().any(|t| {
                let exprs = t
                    .match_expressions
                    .iter()
                    .flatten()
                    .all(|r| requirement(r, labels.get(&r.key).map(String::as_str)));
                let fields =
                    t.match_fields.iter().flatten().all(|r| {
                        r.key == "metadata.name" && requirement(r, Some(node.name.as_str()))
                    });
                (t.match_expressions.is_some() || t.match_fields.is_some()) && exprs && fields
            });
            if !any {
                return Err(REASON.into());
            }
        }
        Ok(())
    }
}
