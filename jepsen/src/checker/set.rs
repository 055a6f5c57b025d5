//! Set checker: unique elements are added to sets (each add a guarded read-modify-write), and a
//! final read, taken after faults healed, lists every set's elements.
//!
//! Shapes: `add` invoke `{key, element}`; `final-read` ok `{sets: {key: [element, ..]}}`.
//! Anomalies: `lost` (acknowledged add missing), `duplicate` (an element present more than
//! once), `unexpected` (present but never added), `phantom` (present although its add failed).
//! Unknown adds may be present or not.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{Anomaly, Verdict};
use crate::history::{History, OpType};

/// Checks a set history.
pub fn check(history: &History) -> Verdict {
    let mut v = Verdict::new("set");
    let mut adds: BTreeMap<i64, (OpType, usize)> = BTreeMap::new();
    let mut final_read: Option<(usize, &serde_json::Map<String, Value>)> = None;
    for p in history.pairs() {
        match p.invoke.f.as_str() {
            "add" => {
                if let Some(e) = p.invoke.value.get("element").and_then(Value::as_i64) {
                    adds.insert(e, (p.kind(), p.invoke.index));
                }
            }
            "final-read" => {
                if let Some(c) = p.complete.filter(|c| c.kind == OpType::Ok) {
                    if let Some(sets) = c.value.get("sets").and_then(Value::as_object) {
                        final_read = Some((c.index, sets));
                    }
                }
            }
            _ => {}
        }
    }
    let Some((read_index, sets)) = final_read else {
        v.unknown("no successful final read".into());
        return v;
    };
    let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
    for elems in sets.values() {
        for e in elems
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_i64)
        {
            *seen.entry(e).or_default() += 1;
        }
    }
    let mut ok = 0;
    let mut recovered = 0;
    for (e, (kind, index)) in &adds {
        let present = seen.contains_key(e);
        match kind {
            OpType::Ok => {
                ok += 1;
                if !present {
                    v.anomaly(Anomaly {
                        kind: "lost".into(),
                        message: format!("acknowledged add of {e} is missing from the final read"),
                        ops: vec![*index, read_index],
                    });
                }
            }
            OpType::Fail if present => v.anomaly(Anomaly {
                kind: "phantom".into(),
                message: format!("add of {e} failed, yet {e} is present"),
                ops: vec![*index, read_index],
            }),
            OpType::Info | OpType::Invoke if present => recovered += 1,
            _ => {}
        }
    }
    let known: BTreeSet<i64> = adds.keys().copied().collect();
    for (e, n) in &seen {
        if *n > 1 {
            v.anomaly(Anomaly {
                kind: "duplicate".into(),
                message: format!("{e} is present {n} times"),
                ops: adds
                    .get(e)
                    .map(|a| a.1)
                    .into_iter()
                    .chain([read_index])
                    .collect(),
            });
        }
        if !known.contains(e) {
            v.anomaly(Anomaly {
                kind: "unexpected".into(),
                message: format!("{e} is present but was never added"),
                ops: vec![read_index],
            });
        }
    }
    v.stat("attempted", adds.len());
    v.stat("acknowledged", ok);
    v.stat("unknown-present", recovered);
    v.stat("present", seen.len());
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Builder;
    use serde_json::json;
    use OpType::*;

    fn add(b: Builder, t: u64, p: u64, e: i64, kind: OpType) -> Builder {
        b.op(t, p, Invoke, "add", json!({"key": "s0", "element": e}))
            .op(t + 1, p, kind, "add", json!({"key": "s0", "element": e}))
    }
    fn read(b: Builder, t: u64, elems: Value) -> Builder {
        b.op(t, 9, Invoke, "final-read", json!({})).op(
            t + 1,
            9,
            Ok,
            "final-read",
            json!({"sets": {"s0": elems}}),
        )
    }

    #[test]
    fn all_acknowledged_present_and_unknowns_either_way_is_valid() {
        let b = add(Builder::new(), 0, 0, 1, Ok);
        let b = add(b, 10, 1, 2, Info);
        let b = add(b, 20, 2, 3, Info);
        let b = add(b, 30, 2, 4, Fail);
        let v = check(&read(b, 100, json!([1, 3])).build());
        assert!(v.valid, "{v:?}");
    }

    #[test]
    fn lost_write_is_rejected() {
        let b = add(Builder::new(), 0, 0, 1, Ok);
        let b = add(b, 10, 1, 2, Ok);
        let v = check(&read(b, 100, json!([2])).build());
        assert!(!v.valid);
        assert_eq!(v.anomalies[0].kind, "lost");
    }

    #[test]
    fn duplicate_and_unexpected_elements_are_rejected() {
        let b = add(Builder::new(), 0, 0, 1, Info);
        let v = check(&read(b, 100, json!([1, 1, 5])).build());
        let kinds: Vec<&str> = v.anomalies.iter().map(|a| a.kind.as_str()).collect();
        assert_eq!(kinds, ["duplicate", "unexpected"]);
    }

    #[test]
    fn missing_final_read_is_not_valid() {
        let v = check(&add(Builder::new(), 0, 0, 1, Ok).build());
        assert!(!v.valid && v.unknown.is_some());
    }
}
