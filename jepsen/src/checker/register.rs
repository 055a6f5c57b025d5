//! The register model and the per-key linearizability check of register histories.
//!
//! A key holds an integer value and its `mod_revision`. Operations (shapes of `Op::value`):
//! - `read` invoke `{key}`, ok `{key, value: n|null, rev}` (rev 0 when absent);
//! - `write` invoke `{key, value}`, ok `{key, value, rev}`;
//! - `cas` invoke `{key, from, to}` (guard on value), ok `{.., ok: bool, rev}`;
//! - `cas-rev` invoke `{key, expect, to}` (guard on mod_revision), ok `{.., ok: bool, rev}`.
//!
//! A read that failed or has an unknown outcome has no effect and is dropped. A write whose
//! outcome is unknown may have happened with an unknown revision: the state then carries
//! `rev: None` until a read reveals it. Revision guards the model cannot evaluate branch into
//! both outcomes, so an uncertain state never produces a false alarm.

use std::collections::BTreeMap;

use serde_json::Value;

use super::linear::{self, Model, Operation, Outcome};
use super::{Anomaly, Verdict};
use crate::history::{History, OpType, Pair};

/// One key's state: value (None when absent) and mod_revision (None when unknown).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RegState {
    pub value: Option<i64>,
    pub rev: Option<i64>,
}

/// What a register operation asked for.
#[derive(Clone, Debug)]
pub enum RegInput {
    Read,
    Write(i64),
    Cas { from: i64, to: i64 },
    CasRev { expect: i64, to: i64 },
}

/// What it observed.
#[derive(Clone, Debug)]
pub struct RegOutput {
    /// Value read (reads only).
    pub value: Option<i64>,
    /// Revision read, or of the write.
    pub rev: i64,
    /// Whether a guarded write's guard held.
    pub ok: bool,
}

/// The register specification.
pub struct Register;

impl Model for Register {
    type State = RegState;
    type Input = RegInput;
    type Output = RegOutput;

    fn init(&self) -> RegState {
        RegState {
            value: None,
            rev: Some(0),
        }
    }

    fn step(&self, s: &RegState, input: &RegInput, out: Option<&RegOutput>) -> Vec<RegState> {
        let put = |v: i64, o: Option<&RegOutput>| RegState {
            value: Some(v),
            rev: o.map(|o| o.rev),
        };
        match (input, out) {
            (RegInput::Read, None) => vec![s.clone()],
            (RegInput::Read, Some(o)) => {
                let rev_ok = s.rev.is_none_or(|r| r == o.rev);
                if s.value == o.value && rev_ok {
                    vec![RegState {
                        value: o.value,
                        rev: Some(o.rev),
                    }]
                } else {
                    vec![]
                }
            }
            (RegInput::Write(v), o) => vec![put(*v, o)],
            (RegInput::Cas { from, to }, o) => {
                let holds = s.value == Some(*from);
                match o {
                    Some(o) if o.ok => {
                        if holds {
                            vec![put(*to, Some(o))]
                        } else {
                            vec![]
                        }
                    }
                    Some(_) => {
                        if holds {
                            vec![]
                        } else {
                            vec![s.clone()]
                        }
                    }
                    // Unknown: taking effect now is only possible when the guard holds; not
                    // taking effect is the same as being linearized after everything else.
                    None if holds => vec![put(*to, None)],
                    None => vec![s.clone()],
                }
            }
            (RegInput::CasRev { expect, to }, o) => {
                let holds = s.rev.map(|r| r == *expect);
                match (o, holds) {
                    (Some(o), Some(h)) if o.ok == h => {
                        if o.ok {
                            vec![put(*to, Some(o))]
                        } else {
                            vec![s.clone()]
                        }
                    }
                    (Some(_), Some(_)) => vec![],
                    (Some(o), None) => {
                        if o.ok {
                            vec![put(*to, Some(o))]
                        } else {
                            vec![s.clone()]
                        }
                    }
                    (None, Some(true)) => vec![put(*to, None)],
                    (None, Some(false)) => vec![s.clone()],
                    (None, None) => vec![s.clone(), put(*to, None)],
                }
            }
        }
    }
}

fn int(v: &Value, k: &str) -> Option<i64> {
    v.get(k).and_then(Value::as_i64)
}

fn input_of(p: &Pair<'_>) -> Option<RegInput> {
    let v = &p.invoke.value;
    Some(match p.invoke.f.as_str() {
        "read" => RegInput::Read,
        "write" => RegInput::Write(int(v, "value")?),
        "cas" => RegInput::Cas {
            from: int(v, "from")?,
            to: int(v, "to")?,
        },
        "cas-rev" => RegInput::CasRev {
            expect: int(v, "expect")?,
            to: int(v, "to")?,
        },
        _ => return None,
    })
}

fn output_of(p: &Pair<'_>) -> Option<RegOutput> {
    let c = p.complete.filter(|c| c.kind == OpType::Ok)?;
    Some(RegOutput {
        value: int(&c.value, "value"),
        rev: int(&c.value, "rev").unwrap_or(0),
        ok: c.value.get("ok").and_then(Value::as_bool).unwrap_or(true),
    })
}

/// Register operations per key, without failed operations and unknown reads.
pub fn partitions(history: &History) -> BTreeMap<String, Vec<Operation<RegInput, RegOutput>>> {
    let mut keys: BTreeMap<String, Vec<Operation<RegInput, RegOutput>>> = BTreeMap::new();
    for p in history.pairs() {
        let Some(input) = input_of(&p) else { continue };
        let kind = p.kind();
        if kind == OpType::Fail || (matches!(input, RegInput::Read) && kind != OpType::Ok) {
            continue;
        }
        let Some(key) = p.invoke.value.get("key").and_then(Value::as_str) else {
            continue;
        };
        keys.entry(key.to_string()).or_default().push(Operation {
            id: p.invoke.index,
            call: p.invoke.time,
            ret: p.end(),
            input,
            output: output_of(&p),
        });
    }
    keys
}

/// Search steps allowed per key before the verdict becomes unknown.
const BUDGET: u64 = 20_000_000;
/// Search steps per probe while narrowing a failure down.
const WINDOW_BUDGET: u64 = 2_000_000;

/// The operations that can carry evidence against linearizability cheaply: failed guarded
/// writes (weak evidence: "the value was something else") are left out, and so are writes with
/// unknown outcome whose value nobody observed. Such a write can only help explain a failed
/// guard, so once failed guards are gone, assuming it never happened is always at least as
/// good. An illegal reduced history therefore means an illegal history, and the reduced search
/// has far fewer open operations (every timed-out write stays open to the end).
pub fn reduce(ops: &[Operation<RegInput, RegOutput>]) -> Vec<Operation<RegInput, RegOutput>> {
    let mut observed = std::collections::HashSet::new();
    for o in ops {
        match (&o.input, &o.output) {
            (RegInput::Read, Some(out)) => {
                observed.extend(out.value);
            }
            (RegInput::Cas { from, .. }, Some(out)) if out.ok => {
                observed.insert(*from);
            }
            _ => {}
        }
    }
    ops.iter()
        .filter(|o| match (&o.input, &o.output) {
            (RegInput::Cas { .. } | RegInput::CasRev { .. }, Some(out)) if !out.ok => false,
            (RegInput::Write(v), None) => observed.contains(v),
            (RegInput::Cas { to, .. } | RegInput::CasRev { to, .. }, None) => observed.contains(to),
            _ => true,
        })
        .cloned()
        .collect()
}

/// Checks every key's reduced history (see [`reduce`]). An illegal key is narrowed to its
/// shortest failing prefix.
///
/// Failed guards are not searched: with every timed-out write open until the end of the
/// history, the search space of a faulty run grows as 2^(unknown writes), and the evidence a
/// failed guard carries ("the value was not `from`") is the weakest there is. Every read,
/// acknowledged write and successful guard is checked.
pub fn check(history: &History) -> Verdict {
    let mut verdict = Verdict::new("linearizable-register");
    let parts = partitions(history);
    let mut checked = 0;
    let mut searched = 0;
    for (key, ops) in &parts {
        checked += ops.len();
        let reduced = reduce(ops);
        searched += reduced.len();
        let started = std::time::Instant::now();
        let outcome = linear::check(&Register, &reduced, BUDGET);
        let culprit_ops = reduced;
        tracing::debug!(key = %key, ops = ops.len(), reduced = culprit_ops.len(),
            unknown = ops.iter().filter(|o| o.output.is_none()).count(),
            elapsed_ms = started.elapsed().as_millis() as u64, ?outcome, "key checked");
        match outcome {
            Outcome::Linearizable => {}
            // Once the history is known to be invalid, an undecided key changes nothing.
            Outcome::Unknown if !verdict.valid => verdict.stat("undecided-keys", key.as_str()),
            Outcome::Unknown => verdict.unknown(format!("search budget exhausted on key {key}")),
            Outcome::Illegal { stuck, .. } => {
                let (last, window) = minimal_window(&culprit_ops).unwrap_or((stuck, vec![stuck]));
                verdict.anomaly(Anomaly {
                    kind: "nonlinearizable".into(),
                    message: format!(
                        "key {key}: no linearization explains operation {last}; the window holds \
                         the operations concurrent with it and the writes before it"
                    ),
                    ops: window,
                });
            }
        }
    }
    verdict.stat("keys", parts.len());
    verdict.stat("operations", checked);
    verdict.stat("searched", searched);
    verdict
}

/// The shortest prefix (operations ordered by completion; later ones dropped, ones still
/// running at the cut made unknown) that is already illegal, and the window of operations around
/// the last operation of that prefix: those overlapping it and the three writes before it.
pub fn minimal_window(ops: &[Operation<RegInput, RegOutput>]) -> Option<(usize, Vec<usize>)> {
    let mut completed: Vec<&Operation<RegInput, RegOutput>> =
        ops.iter().filter(|o| o.ret != u64::MAX).collect();
    completed.sort_by_key(|o| o.ret);
    let illegal_at = |cut: u64| {
        let prefix: Vec<Operation<RegInput, RegOutput>> = ops
            .iter()
            .filter(|o| o.call <= cut)
            .filter(|o| o.ret <= cut || !matches!(o.input, RegInput::Read))
            .map(|o| {
                let mut o = o.clone();
                if o.ret > cut {
                    o.ret = u64::MAX;
                    o.output = None;
                }
                o
            })
            .collect();
        matches!(
            linear::check(&Register, &prefix, WINDOW_BUDGET),
            Outcome::Illegal { .. }
        )
    };
    // Illegality is monotone in the cut, so bisect for the first completion that breaks it.
    let (mut lo, mut hi) = (0usize, completed.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if illegal_at(completed[mid].ret) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    // No illegal prefix within the probe budget: let the caller report the search's own op.
    let last = completed.get(lo)?;
    let mut window: Vec<usize> = ops
        .iter()
        .filter(|o| o.call <= last.ret && o.ret >= last.call)
        .map(|o| o.id)
        .collect();
    let mut before: Vec<&Operation<RegInput, RegOutput>> = ops
        .iter()
        .filter(|o| o.ret < last.call && !matches!(o.input, RegInput::Read))
        .collect();
    before.sort_by_key(|o| std::cmp::Reverse(o.ret));
    window.extend(before.iter().take(3).map(|o| o.id));
    window.sort_unstable();
    window.dedup();
    Some((last.id, window))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Builder;
    use serde_json::json;
    use OpType::*;

    fn w(b: Builder, t: (u64, u64), p: u64, v: i64, rev: i64, kind: OpType) -> Builder {
        b.op(t.0, p, Invoke, "write", json!({"key": "x", "value": v}))
            .op(
                t.1,
                p,
                kind,
                "write",
                json!({"key": "x", "value": v, "rev": rev}),
            )
    }
    fn r(b: Builder, t: (u64, u64), p: u64, v: Option<i64>, rev: i64) -> Builder {
        b.op(t.0, p, Invoke, "read", json!({"key": "x"})).op(
            t.1,
            p,
            Ok,
            "read",
            json!({"key": "x", "value": v, "rev": rev}),
        )
    }

    #[test]
    fn stale_read_is_rejected_with_its_window() {
        let b = w(Builder::new(), (0, 10), 0, 1, 2, Ok);
        let b = w(b, (20, 30), 0, 2, 3, Ok);
        // Invoked after w(2) completed, yet sees 1.
        let b = r(b, (40, 50), 1, Some(1), 2);
        let v = check(&b.build());
        assert!(!v.valid, "{v:?}");
        let a = &v.anomalies[0];
        assert_eq!(a.kind, "nonlinearizable");
        // The stale read (invoke index 4) and the write it missed (index 2) are in the window.
        assert!(a.ops.contains(&4) && a.ops.contains(&2), "{a:?}");
    }

    #[test]
    fn lost_write_is_rejected() {
        // w(1) acknowledged, then a read that starts later finds the key absent.
        let b = w(Builder::new(), (0, 10), 0, 1, 2, Ok);
        let b = r(b, (20, 30), 1, None, 0);
        assert!(!check(&b.build()).valid);
    }

    #[test]
    fn read_of_value_nobody_wrote_is_rejected() {
        let b = r(Builder::new(), (0, 10), 1, Some(7), 5);
        assert!(!check(&b.build()).valid);
    }

    #[test]
    fn concurrent_overlapping_ops_are_accepted() {
        // Two writes overlap two reads that see them in opposite-looking orders that a
        // linearization still explains: r1 sees 1 (w1 first), r2 sees 2 (then w2).
        let b = Builder::new()
            .op(0, 0, Invoke, "write", json!({"key": "x", "value": 1}))
            .op(1, 1, Invoke, "write", json!({"key": "x", "value": 2}))
            .op(2, 2, Invoke, "read", json!({"key": "x"}))
            .op(3, 3, Invoke, "read", json!({"key": "x"}))
            .op(4, 2, Ok, "read", json!({"key": "x", "value": 1, "rev": 2}))
            .op(5, 0, Ok, "write", json!({"key": "x", "value": 1, "rev": 2}))
            .op(6, 3, Ok, "read", json!({"key": "x", "value": 2, "rev": 3}))
            .op(7, 1, Ok, "write", json!({"key": "x", "value": 2, "rev": 3}));
        let v = check(&b.build());
        assert!(v.valid, "{v:?}");
    }

    #[test]
    fn unknown_write_that_took_effect_later_is_accepted() {
        // w(1) timed out; long after, a read sees 1: the write took effect late.
        let b = Builder::new()
            .op(0, 0, Invoke, "write", json!({"key": "x", "value": 1}))
            .op(10, 0, Info, "write", json!(null));
        let b = r(b, (20, 30), 1, None, 0);
        let b = r(b, (100, 110), 1, Some(1), 4);
        assert!(check(&b.build()).valid);
    }

    #[test]
    fn unknown_write_that_never_took_effect_is_accepted() {
        let b = w(Builder::new(), (0, 5), 0, 1, 2, Ok);
        let b = b
            .op(10, 1, Invoke, "write", json!({"key": "x", "value": 2}))
            .op(20, 1, Info, "write", json!(null));
        let b = r(b, (30, 40), 2, Some(1), 2);
        let b = r(b, (50, 60), 2, Some(1), 2);
        assert!(check(&b.build()).valid);
    }

    #[test]
    fn unknown_write_cannot_take_effect_before_its_invocation() {
        // A read sees 2 before w(2) was even invoked.
        let b = r(Builder::new(), (0, 10), 2, Some(2), 3);
        let b = b
            .op(20, 1, Invoke, "write", json!({"key": "x", "value": 2}))
            .op(30, 1, Info, "write", json!(null));
        assert!(!check(&b.build()).valid);
    }

    #[test]
    fn reduction_drops_failed_guards_and_unobserved_unknown_writes() {
        let b = w(Builder::new(), (0, 10), 0, 1, 2, Ok)
            .op(20, 1, Invoke, "write", json!({"key": "x", "value": 2}))
            .op(30, 1, Info, "write", json!(null))
            .op(40, 2, Invoke, "write", json!({"key": "x", "value": 3}))
            .op(50, 2, Info, "write", json!(null))
            .op(
                60,
                3,
                Invoke,
                "cas",
                json!({"key": "x", "from": 9, "to": 4}),
            )
            .op(
                70,
                3,
                Ok,
                "cas",
                json!({"key": "x", "from": 9, "to": 4, "ok": false, "rev": 5}),
            );
        let b = r(b, (80, 90), 4, Some(3), 6);
        let h = b.build();
        let kept: Vec<usize> = reduce(&partitions(&h)["x"]).iter().map(|o| o.id).collect();
        // w(1), the unknown w(3) that a read saw, and the read.
        assert_eq!(kept, [0, 4, 8]);
        assert!(check(&h).valid);
    }

    #[test]
    fn cas_guards_are_checked() {
        let b = w(Builder::new(), (0, 10), 0, 1, 2, Ok);
        // cas 1->3 succeeded, then a cas 1->4 also claims success: impossible.
        let b = b
            .op(
                20,
                1,
                Invoke,
                "cas",
                json!({"key": "x", "from": 1, "to": 3}),
            )
            .op(
                30,
                1,
                Ok,
                "cas",
                json!({"key": "x", "from": 1, "to": 3, "ok": true, "rev": 3}),
            )
            .op(
                40,
                2,
                Invoke,
                "cas",
                json!({"key": "x", "from": 1, "to": 4}),
            )
            .op(
                50,
                2,
                Ok,
                "cas",
                json!({"key": "x", "from": 1, "to": 4, "ok": true, "rev": 4}),
            );
        assert!(!check(&b.build()).valid);
    }

    #[test]
    fn cas_rev_with_unknown_revision_branches() {
        // An unknown write leaves the revision unknown; a later cas-rev on an unseen revision
        // that succeeded is explained by the unknown write having taken effect with that rev.
        let b = Builder::new()
            .op(0, 0, Invoke, "write", json!({"key": "x", "value": 1}))
            .op(5, 0, Info, "write", json!(null))
            .op(
                10,
                1,
                Invoke,
                "cas-rev",
                json!({"key": "x", "expect": 7, "to": 2}),
            )
            .op(20, 1, Info, "cas-rev", json!(null));
        let b = r(b, (30, 40), 2, Some(2), 9);
        // The model alone (without the reduction, which drops the never-read write of 1).
        let h = b.build();
        let ops = &partitions(&h)["x"];
        assert_eq!(
            linear::check(&Register, ops, 1_000_000),
            Outcome::Linearizable
        );
        // But a read of the old revision after a successful cas-rev is stale.
        let b = w(Builder::new(), (0, 10), 0, 1, 2, Ok)
            .op(
                20,
                1,
                Invoke,
                "cas-rev",
                json!({"key": "x", "expect": 2, "to": 5}),
            )
            .op(
                30,
                1,
                Ok,
                "cas-rev",
                json!({"key": "x", "expect": 2, "to": 5, "ok": true, "rev": 3}),
            );
        let b = r(b, (40, 50), 2, Some(1), 2);
        assert!(!check(&b.build()).valid);
    }
}
