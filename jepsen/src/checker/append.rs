//! Elle-style list-append checker for strict serializability.
//!
//! Transactions read whole lists and append unique values to them. Because every value is
//! unique and lists only grow, a read reveals the exact sequence of committed appends to a key
//! up to that point, so the version order of each key is the longest list read, and every other
//! read must be a prefix of it. From that order the checker builds a dependency graph:
//!
//! - `ww`: the writer of element i precedes the writer of element i+1 of the same key;
//! - `wr`: the writer of a read's last element precedes the reader;
//! - `rw`: the reader precedes the writer of the element that followed what it read;
//! - `rt`: a transaction that completed before another was invoked precedes it (strict).
//!
//! A cycle is an anomaly named by the weakest edge kinds it needs: only ww is G0, ww+wr is G1c,
//! one rw is G-single, more is G2; needing rt makes it a `-realtime` violation of strict
//! serializability. Also reported without cycles: G1a (a read saw an append of a failed
//! transaction), G1b (a read saw an intermediate state of another transaction), reads of values
//! nobody appended, duplicated elements and reads incompatible with the version order.
//!
//! Shapes: `txn` invoke `{ops: [["r", k, null], ["append", k, v]]}`; ok fills reads' lists.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use serde_json::Value;

use super::{Anomaly, Verdict};
use crate::history::{History, OpType};

/// Dependency kinds, ordered from strongest evidence to weakest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Edge {
    Ww,
    Wr,
    Rw,
    Rt,
}

#[derive(Debug)]
enum Mop {
    Read(String, Option<Vec<i64>>),
    Append(String, i64),
}

struct Txn {
    index: usize,
    kind: OpType,
    invoke: u64,
    complete: u64,
    mops: Vec<Mop>,
}

fn parse_mops(v: &Value) -> Vec<Mop> {
    let mut out = Vec::new();
    for m in v.get("ops").and_then(Value::as_array).into_iter().flatten() {
        let Some(a) = m.as_array() else { continue };
        let (Some(f), Some(k)) = (
            a.first().and_then(Value::as_str),
            a.get(1).and_then(Value::as_str),
        ) else {
            continue;
        };
        match f {
            "r" => out.push(Mop::Read(
                k.to_string(),
                a.get(2)
                    .and_then(Value::as_array)
                    .map(|l| l.iter().filter_map(Value::as_i64).collect::<Vec<i64>>()),
            )),
            "append" => {
                if let Some(x) = a.get(2).and_then(Value::as_i64) {
                    out.push(Mop::Append(k.to_string(), x));
                }
            }
            _ => {}
        }
    }
    out
}

/// Checks a list-append history.
pub fn check(history: &History) -> Verdict {
    let mut v = Verdict::new("elle-list-append");
    let mut txns: Vec<Txn> = Vec::new();
    for p in history.pairs() {
        if p.invoke.f != "txn" {
            continue;
        }
        let kind = p.kind();
        let source = match p.complete {
            Some(c) if c.kind == OpType::Ok => &c.value,
            _ => &p.invoke.value,
        };
        txns.push(Txn {
            index: p.invoke.index,
            kind,
            invoke: p.invoke.time,
            complete: p.end(),
            mops: parse_mops(source),
        });
    }

    // (key, value) -> (txn, is this the txn's last append to key)
    let mut writer: HashMap<(String, i64), (usize, bool)> = HashMap::new();
    for (t, txn) in txns.iter().enumerate() {
        let mut last: HashMap<&str, i64> = HashMap::new();
        for m in &txn.mops {
            if let Mop::Append(k, x) = m {
                last.insert(k, *x);
            }
        }
        for m in &txn.mops {
            if let Mop::Append(k, x) = m {
                writer.insert((k.clone(), *x), (t, last.get(k.as_str()) == Some(x)));
            }
        }
    }

    // Version order per key: the longest read; all reads must be prefixes of it.
    let mut order: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let ok_reads = || {
        txns.iter()
            .enumerate()
            .filter(|(_, t)| t.kind == OpType::Ok)
            .flat_map(|(i, t)| {
                t.mops.iter().filter_map(move |m| match m {
                    Mop::Read(k, Some(l)) => Some((i, k, l)),
                    _ => None,
                })
            })
    };
    for (_, k, l) in ok_reads() {
        let o = order.entry(k.clone()).or_default();
        if l.len() > o.len() {
            *o = l.clone();
        }
    }
    for (t, k, l) in ok_reads() {
        let o = &order[k];
        if o[..l.len()] != l[..] {
            v.anomaly(Anomaly {
                kind: "incompatible-order".into(),
                message: format!("read of {k} = {l:?} is not a prefix of {o:?}"),
                ops: vec![txns[t].index],
            });
        }
        let distinct: HashSet<&i64> = l.iter().collect();
        if distinct.len() != l.len() {
            v.anomaly(Anomaly {
                kind: "duplicate-elements".into(),
                message: format!("read of {k} = {l:?} holds an element twice"),
                ops: vec![txns[t].index],
            });
        }
        for x in l {
            match writer.get(&(k.clone(), *x)) {
                None => v.anomaly(Anomaly {
                    kind: "garbage-read".into(),
                    message: format!("read of {k} saw {x}, which nobody appended"),
                    ops: vec![txns[t].index],
                }),
                Some((w, _)) if txns[*w].kind == OpType::Fail => v.anomaly(Anomaly {
                    kind: "G1a".into(),
                    message: format!("read of {k} saw {x}, appended by a failed transaction"),
                    ops: vec![txns[*w].index, txns[t].index],
                }),
                _ => {}
            }
        }
        if let Some(x) = l.last() {
            if let Some((w, false)) = writer.get(&(k.clone(), *x)) {
                if *w != t {
                    v.anomaly(Anomaly {
                        kind: "G1b".into(),
                        message: format!(
                            "read of {k} ended at {x}, an intermediate append of another transaction"
                        ),
                        ops: vec![txns[*w].index, txns[t].index],
                    });
                }
            }
        }
    }

    // Graph over transactions that committed: ok ones and unknown ones whose appends were seen.
    let mut committed: Vec<bool> = txns.iter().map(|t| t.kind == OpType::Ok).collect();
    for (k, o) in &order {
        for x in o {
            if let Some((w, _)) = writer.get(&(k.clone(), *x)) {
                if txns[*w].kind == OpType::Info {
                    committed[*w] = true;
                }
            }
        }
    }
    let n = txns.len();
    let mut adj: Vec<Vec<(usize, Edge)>> = vec![Vec::new(); n];
    let add = |a: usize, b: usize, e: Edge, adj: &mut Vec<Vec<(usize, Edge)>>| {
        if a != b && !adj[a].contains(&(b, e)) {
            adj[a].push((b, e));
        }
    };
    for (k, o) in &order {
        let w_of = |x: &i64| writer.get(&(k.clone(), *x)).map(|w| w.0);
        for pair in o.windows(2) {
            if let (Some(a), Some(b)) = (w_of(&pair[0]), w_of(&pair[1])) {
                add(a, b, Edge::Ww, &mut adj);
            }
        }
        for (t, rk, l) in ok_reads() {
            if rk != k {
                continue;
            }
            if let Some(w) = l.last().and_then(w_of) {
                add(w, t, Edge::Wr, &mut adj);
            }
            if let Some(w) = o.get(l.len()).and_then(w_of) {
                add(t, w, Edge::Rw, &mut adj);
            }
        }
    }
    // Real-time edges through a frontier of completed transactions not yet followed by another
    // completed one: enough for the transitive closure, without n^2 edges.
    let mut events: Vec<(u64, bool, usize)> = Vec::new();
    for (t, txn) in txns.iter().enumerate() {
        if committed[t] {
            events.push((txn.invoke, true, t));
            if txn.kind == OpType::Ok {
                events.push((txn.complete, false, t));
            }
        }
    }
    events.sort();
    let mut frontier: Vec<usize> = Vec::new();
    let mut preds: HashMap<usize, Vec<usize>> = HashMap::new();
    for (_, is_invoke, t) in events {
        if is_invoke {
            for &f in &frontier {
                add(f, t, Edge::Rt, &mut adj);
            }
            preds.insert(t, frontier.clone());
        } else {
            let p = preds.remove(&t).unwrap_or_default();
            frontier.retain(|f| !p.contains(f));
            frontier.push(t);
        }
    }

    let levels: [(&[Edge], &str); 4] = [
        (&[Edge::Ww], "G0"),
        (&[Edge::Ww, Edge::Wr], "G1c"),
        (&[Edge::Ww, Edge::Wr, Edge::Rw], "G2"),
        (&[Edge::Ww, Edge::Wr, Edge::Rw, Edge::Rt], "realtime"),
    ];
    for (allowed, name) in levels {
        let cycles = find_cycles(&adj, allowed, &committed);
        for cycle in cycles.iter().take(5) {
            let kinds: Vec<Edge> = cycle.iter().map(|c| c.1).collect();
            let rw = kinds.iter().filter(|e| **e == Edge::Rw).count();
            let mut label = match name {
                "G2" if rw == 1 => "G-single".to_string(),
                "realtime" => {
                    let base = if rw == 0 {
                        if kinds.contains(&Edge::Wr) {
                            "G1c"
                        } else {
                            "G0"
                        }
                    } else if rw == 1 {
                        "G-single"
                    } else {
                        "G2"
                    };
                    format!("{base}-realtime")
                }
                other => other.to_string(),
            };
            if label.is_empty() {
                label = name.to_string();
            }
            let text: Vec<String> = cycle
                .iter()
                .map(|(t, e)| format!("T{} -{:?}->", txns[*t].index, e))
                .collect();
            v.anomaly(Anomaly {
                kind: label,
                message: format!(
                    "dependency cycle: {} T{}",
                    text.join(" "),
                    txns[cycle[0].0].index
                ),
                ops: cycle.iter().map(|(t, _)| txns[*t].index).collect(),
            });
        }
        if !cycles.is_empty() {
            break;
        }
    }
    v.stat("transactions", n);
    v.stat("committed", committed.iter().filter(|c| **c).count());
    v.stat("keys", order.len());
    v
}

/// A Tarjan call frame: node, its successors, next successor to visit.
type Frame = (usize, Vec<(usize, Edge)>, usize);

/// One cycle per strongly connected component of the graph restricted to `allowed` edges; each
/// cycle is a list of (node, kind of the edge leaving it).
fn find_cycles(
    adj: &[Vec<(usize, Edge)>],
    allowed: &[Edge],
    include: &[bool],
) -> Vec<Vec<(usize, Edge)>> {
    let n = adj.len();
    let succ = |u: usize| {
        adj[u]
            .iter()
            .filter(move |(w, e)| allowed.contains(e) && include[*w])
            .copied()
    };
    // Iterative Tarjan.
    let mut index = vec![usize::MAX; n];
    let mut low = vec![0usize; n];
    let mut on_stack = vec![false; n];
    let mut stack: Vec<usize> = Vec::new();
    let mut comp = vec![usize::MAX; n];
    let mut comps: Vec<Vec<usize>> = Vec::new();
    let mut counter = 0;
    for root in (0..n).filter(|u| include[*u]) {
        if index[root] != usize::MAX {
            continue;
        }
        let mut call: Vec<Frame> = Vec::new();
        index[root] = counter;
        low[root] = counter;
        counter += 1;
        stack.push(root);
        on_stack[root] = true;
        call.push((root, succ(root).collect(), 0));
        while let Some((u, edges, i)) = call.last_mut() {
            let u = *u;
            if *i < edges.len() {
                let w = edges[*i].0;
                *i += 1;
                if index[w] == usize::MAX {
                    index[w] = counter;
                    low[w] = counter;
                    counter += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    let next: Vec<(usize, Edge)> = succ(w).collect();
                    call.push((w, next, 0));
                } else if on_stack[w] {
                    low[u] = low[u].min(index[w]);
                }
            } else {
                call.pop();
                if let Some((p, _, _)) = call.last() {
                    low[*p] = low[*p].min(low[u]);
                }
                if low[u] == index[u] {
                    let mut c = Vec::new();
                    while let Some(w) = stack.pop() {
                        on_stack[w] = false;
                        comp[w] = comps.len();
                        c.push(w);
                        if w == u {
                            break;
                        }
                    }
                    comps.push(c);
                }
            }
        }
    }
    let mut cycles = Vec::new();
    for (ci, c) in comps.iter().enumerate() {
        if c.len() < 2 {
            continue;
        }
        // Shortest cycle through c[0] by BFS inside the component.
        let start = c[0];
        let mut prev: HashMap<usize, (usize, Edge)> = HashMap::new();
        let mut queue = VecDeque::from([start]);
        let mut closing = None;
        'bfs: while let Some(u) = queue.pop_front() {
            for (w, e) in succ(u) {
                if comp[w] != ci {
                    continue;
                }
                if w == start {
                    closing = Some((u, e));
                    break 'bfs;
                }
                if let std::collections::hash_map::Entry::Vacant(slot) = prev.entry(w) {
                    slot.insert((u, e));
                    queue.push_back(w);
                }
            }
        }
        if let Some((last, e)) = closing {
            let mut cycle = vec![(last, e)];
            let mut u = last;
            while u != start {
                let (p, pe) = prev[&u];
                cycle.push((p, pe));
                u = p;
            }
            cycle.reverse();
            cycles.push(cycle);
        }
    }
    cycles
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Builder;
    use serde_json::json;
    use OpType::*;

    fn txn(b: Builder, t: (u64, u64), p: u64, ops: Value, done: Value, kind: OpType) -> Builder {
        b.op(t.0, p, Invoke, "txn", json!({ "ops": ops })).op(
            t.1,
            p,
            kind,
            "txn",
            json!({ "ops": done }),
        )
    }

    #[test]
    fn serial_history_is_valid() {
        let b = txn(
            Builder::new(),
            (0, 10),
            0,
            json!([["append", "a", 1]]),
            json!([["append", "a", 1]]),
            Ok,
        );
        let b = txn(
            b,
            (20, 30),
            1,
            json!([["r", "a", null], ["append", "a", 2]]),
            json!([["r", "a", [1]], ["append", "a", 2]]),
            Ok,
        );
        let b = txn(
            b,
            (40, 50),
            0,
            json!([["r", "a", null]]),
            json!([["r", "a", [1, 2]]]),
            Ok,
        );
        let v = check(&b.build());
        assert!(v.valid, "{v:?}");
    }

    #[test]
    fn concurrent_and_unknown_transactions_are_valid() {
        // T1 appends 1 and times out; T2 (concurrent) reads [1] and appends 2; T3 reads [1, 2].
        let b = Builder::new()
            .op(0, 0, Invoke, "txn", json!({"ops": [["append", "a", 1]]}))
            .op(
                1,
                1,
                Invoke,
                "txn",
                json!({"ops": [["r", "a", null], ["append", "a", 2]]}),
            )
            .op(
                5,
                1,
                Ok,
                "txn",
                json!({"ops": [["r", "a", [1]], ["append", "a", 2]]}),
            )
            .op(6, 0, Info, "txn", json!(null));
        let b = txn(
            b,
            (10, 20),
            2,
            json!([["r", "a", null]]),
            json!([["r", "a", [1, 2]]]),
            Ok,
        );
        let v = check(&b.build());
        assert!(v.valid, "{v:?}");
    }

    #[test]
    fn write_skew_g2_cycle_is_found() {
        // T1 reads a=[] b=[], appends a 1; T2 reads a=[] b=[], appends b 1; concurrent.
        let b = Builder::new()
            .op(
                0,
                0,
                Invoke,
                "txn",
                json!({"ops": [["r", "a", null], ["r", "b", null], ["append", "a", 1]]}),
            )
            .op(
                1,
                1,
                Invoke,
                "txn",
                json!({"ops": [["r", "a", null], ["r", "b", null], ["append", "b", 1]]}),
            )
            .op(
                2,
                0,
                Ok,
                "txn",
                json!({"ops": [["r", "a", []], ["r", "b", []], ["append", "a", 1]]}),
            )
            .op(
                3,
                1,
                Ok,
                "txn",
                json!({"ops": [["r", "a", []], ["r", "b", []], ["append", "b", 1]]}),
            );
        let b = txn(
            b,
            (10, 11),
            2,
            json!([["r", "a", null], ["r", "b", null]]),
            json!([["r", "a", [1]], ["r", "b", [1]]]),
            Ok,
        );
        let v = check(&b.build());
        assert!(!v.valid);
        assert_eq!(v.anomalies[0].kind, "G2", "{v:?}");
    }

    #[test]
    fn g1c_cycle_is_found() {
        // T1 appends a 1 and reads b seeing T2's append; T2 appends b 1 and reads a seeing T1's.
        let b = Builder::new()
            .op(
                0,
                0,
                Invoke,
                "txn",
                json!({"ops": [["append", "a", 1], ["r", "b", null]]}),
            )
            .op(
                1,
                1,
                Invoke,
                "txn",
                json!({"ops": [["append", "b", 1], ["r", "a", null]]}),
            )
            .op(
                2,
                0,
                Ok,
                "txn",
                json!({"ops": [["append", "a", 1], ["r", "b", [1]]]}),
            )
            .op(
                3,
                1,
                Ok,
                "txn",
                json!({"ops": [["append", "b", 1], ["r", "a", [1]]]}),
            );
        let v = check(&b.build());
        assert_eq!(v.anomalies[0].kind, "G1c", "{v:?}");
    }

    #[test]
    fn g0_write_cycle_is_found() {
        // Order of a says T1 before T2, order of b says T2 before T1.
        let b = Builder::new()
            .op(
                0,
                0,
                Invoke,
                "txn",
                json!({"ops": [["append", "a", 1], ["append", "b", 2]]}),
            )
            .op(
                1,
                1,
                Invoke,
                "txn",
                json!({"ops": [["append", "a", 2], ["append", "b", 1]]}),
            )
            .op(
                2,
                0,
                Ok,
                "txn",
                json!({"ops": [["append", "a", 1], ["append", "b", 2]]}),
            )
            .op(
                3,
                1,
                Ok,
                "txn",
                json!({"ops": [["append", "a", 2], ["append", "b", 1]]}),
            );
        let b = txn(
            b,
            (10, 11),
            2,
            json!([["r", "a", null], ["r", "b", null]]),
            json!([["r", "a", [1, 2]], ["r", "b", [1, 2]]]),
            Ok,
        );
        let v = check(&b.build());
        assert_eq!(v.anomalies[0].kind, "G0", "{v:?}");
    }

    #[test]
    fn stale_read_violates_real_time_order() {
        // T1 appends and completes; T2 starts afterwards and does not see it: serializable,
        // not strictly serializable.
        let b = txn(
            Builder::new(),
            (0, 10),
            0,
            json!([["append", "a", 1]]),
            json!([["append", "a", 1]]),
            Ok,
        );
        let b = txn(
            b,
            (20, 30),
            1,
            json!([["r", "a", null]]),
            json!([["r", "a", []]]),
            Ok,
        );
        let b = txn(
            b,
            (40, 50),
            2,
            json!([["r", "a", null]]),
            json!([["r", "a", [1]]]),
            Ok,
        );
        let v = check(&b.build());
        assert!(!v.valid);
        assert_eq!(v.anomalies[0].kind, "G-single-realtime", "{v:?}");
    }

    #[test]
    fn aborted_and_intermediate_reads_are_found() {
        let b = txn(
            Builder::new(),
            (0, 10),
            0,
            json!([["append", "a", 1]]),
            json!(null),
            Fail,
        );
        let b = txn(
            b,
            (0, 10),
            1,
            json!([["append", "b", 1], ["append", "b", 2]]),
            json!([["append", "b", 1], ["append", "b", 2]]),
            Ok,
        );
        let b = txn(
            b,
            (20, 30),
            2,
            json!([["r", "a", null], ["r", "b", null]]),
            json!([["r", "a", [1]], ["r", "b", [1]]]),
            Ok,
        );
        let v = check(&b.build());
        let kinds: Vec<&str> = v.anomalies.iter().map(|a| a.kind.as_str()).collect();
        assert!(
            kinds.contains(&"G1a") && kinds.contains(&"G1b"),
            "{kinds:?}"
        );
    }
}
