//! Watch checker: etcd's six watch guarantees and prev_kv, against the final event history.
//!
//! Writers record `put` invoke `{puts: [[key, value], ..]}` (one transaction, one revision), ok
//! `{rev}`. Each watch session records one `watch` op: invoke `{watcher, from}`, completion
//! `{watcher, from, responses: [{rev, progress, events: [event]}]}` (ok when the harness ended
//! it, info when a failure broke it; the responses are valid either way). After the run a
//! reference watch from revision 1 records `watch-reference` ok `{events: [event]}`. An event is
//! `{type: "put"|"delete", key, value, rev, prev: value|null}`.
//!
//! The reference is itself checked against the writes: every acknowledged put is in it at its
//! revision (nothing acknowledged is lost) and everything in it was written by someone. Then, per
//! watcher:
//! - ordered: revisions never decrease, and strictly increase from one response to the next;
//! - unique: no (revision, key) is delivered twice;
//! - atomic: a response holding any event of a revision holds all of that revision's events;
//! - reliable: a session's events are a contiguous run of the reference (no gap, no invention);
//! - resumable: a session restarted from revision r starts at the reference's first event >= r;
//! - bookmarkable: after a progress notification at revision R, no event at or below R arrives;
//! - prev_kv: an event's previous value is the key's value just before that revision.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Deserialize;
use serde_json::Value;

use super::{Anomaly, Verdict};
use crate::history::{History, OpType};

/// One watch event as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: String,
    pub key: String,
    #[serde(default)]
    pub value: Option<String>,
    pub rev: i64,
    #[serde(default)]
    pub prev: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Response {
    rev: i64,
    #[serde(default)]
    progress: bool,
    #[serde(default)]
    events: Vec<Event>,
}

fn events_of(v: &Value) -> Vec<Event> {
    serde_json::from_value(v.get("events").cloned().unwrap_or(Value::Null)).unwrap_or_default()
}

/// Checks a watch history.
pub fn check(history: &History) -> Verdict {
    let mut v = Verdict::new("watch");
    let Some(reference_op) = history
        .ops
        .iter()
        .rev()
        .find(|o| o.f == "watch-reference" && o.kind == OpType::Ok)
    else {
        v.unknown("no reference watch".into());
        return v;
    };
    let reference = events_of(&reference_op.value);
    let r_idx = reference_op.index;

    // The reference against the writes.
    let mut written: HashSet<(String, String)> = HashSet::new();
    let mut by_rev: BTreeMap<i64, Vec<&Event>> = BTreeMap::new();
    for e in &reference {
        by_rev.entry(e.rev).or_default().push(e);
    }
    let pairs = history.pairs();
    for p in pairs.iter().filter(|p| p.invoke.f == "put") {
        let puts: Vec<(String, String)> =
            serde_json::from_value(p.invoke.value.get("puts").cloned().unwrap_or_default())
                .unwrap_or_default();
        written.extend(puts.iter().cloned());
        if p.kind() != OpType::Ok {
            continue;
        }
        let Some(rev) = p
            .complete
            .and_then(|c| c.value.get("rev"))
            .and_then(Value::as_i64)
        else {
            continue;
        };
        let at = by_rev.get(&rev).cloned().unwrap_or_default();
        for (k, val) in &puts {
            if !at
                .iter()
                .any(|e| &e.key == k && e.value.as_ref() == Some(val))
            {
                v.anomaly(Anomaly {
                    kind: "lost-write".into(),
                    message: format!(
                        "acknowledged put {k}={val} at revision {rev} is not in the event history"
                    ),
                    ops: vec![p.invoke.index, r_idx],
                });
            }
        }
    }
    let mut last_rev = 0;
    for e in &reference {
        if e.rev < last_rev {
            v.anomaly(Anomaly {
                kind: "ordered".into(),
                message: format!("reference history goes back from {last_rev} to {}", e.rev),
                ops: vec![r_idx],
            });
        }
        last_rev = e.rev;
        if e.kind == "put" {
            let val = e.value.clone().unwrap_or_default();
            if !written.contains(&(e.key.clone(), val.clone())) {
                v.anomaly(Anomaly {
                    kind: "unexpected-write".into(),
                    message: format!("{}={val} at revision {} was never written", e.key, e.rev),
                    ops: vec![r_idx],
                });
            }
        }
    }
    // The value of every key just before each reference event.
    let mut state: HashMap<&str, Option<&str>> = HashMap::new();
    let mut prev_of: HashMap<(i64, &str), Option<String>> = HashMap::new();
    for e in &reference {
        let before = state.get(e.key.as_str()).copied().flatten();
        prev_of.insert((e.rev, e.key.as_str()), before.map(str::to_string));
        let after = if e.kind == "put" {
            e.value.as_deref()
        } else {
            None
        };
        state.insert(e.key.as_str(), after);
    }
    let position: HashMap<(i64, &str), usize> = reference
        .iter()
        .enumerate()
        .map(|(i, e)| ((e.rev, e.key.as_str()), i))
        .collect();

    // Sessions per watcher, in order.
    let mut watchers: BTreeMap<i64, Vec<(usize, i64, Vec<Response>)>> = BTreeMap::new();
    for p in pairs.iter().filter(|p| p.invoke.f == "watch") {
        let watcher = p
            .invoke
            .value
            .get("watcher")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let from = p
            .invoke
            .value
            .get("from")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let responses: Vec<Response> = p
            .complete
            .and_then(|c| c.value.get("responses").cloned())
            .and_then(|r| serde_json::from_value(r).ok())
            .unwrap_or_default();
        watchers
            .entry(watcher)
            .or_default()
            .push((p.invoke.index, from, responses));
    }
    let mut delivered = 0usize;
    for (w, sessions) in &watchers {
        let mut seen: HashSet<(i64, String)> = HashSet::new();
        let mut last: i64 = 0;
        for (s_no, (op, from, responses)) in sessions.iter().enumerate() {
            let ops = vec![*op, r_idx];
            let bad = |kind: &str, message: String, v: &mut Verdict| {
                v.anomaly(Anomaly {
                    kind: kind.into(),
                    message: format!("watcher {w} session {s_no} (from {from}): {message}"),
                    ops: ops.clone(),
                })
            };
            let mut expect = reference
                .iter()
                .position(|e| e.rev >= *from)
                .unwrap_or(reference.len());
            let mut bookmark: i64 = 0;
            let mut prev_resp_last: i64 = 0;
            for resp in responses {
                if resp.progress && resp.events.is_empty() {
                    bookmark = bookmark.max(resp.rev);
                    continue;
                }
                let mut revs_here: HashSet<i64> = HashSet::new();
                for (i, e) in resp.events.iter().enumerate() {
                    delivered += 1;
                    if e.rev < last || (i == 0 && e.rev <= prev_resp_last) {
                        bad(
                            "ordered",
                            format!("revision {} after {}", e.rev, last),
                            &mut v,
                        );
                    }
                    last = last.max(e.rev);
                    if e.rev <= bookmark {
                        bad(
                            "bookmarkable",
                            format!(
                                "event at {} after a progress notification at {bookmark}",
                                e.rev
                            ),
                            &mut v,
                        );
                    }
                    if !seen.insert((e.rev, e.key.clone())) {
                        bad(
                            "unique",
                            format!("event {}@{} delivered twice", e.key, e.rev),
                            &mut v,
                        );
                        continue;
                    }
                    revs_here.insert(e.rev);
                    match position.get(&(e.rev, e.key.as_str())) {
                        None => bad(
                            "reliable",
                            format!("event {}@{} is not in the event history", e.key, e.rev),
                            &mut v,
                        ),
                        Some(&pos) => {
                            if pos != expect {
                                let kind = if pos > expect
                                    && i == 0
                                    && s_no > 0
                                    && expect_is_start(&reference, expect, *from)
                                {
                                    "resumable"
                                } else {
                                    "reliable"
                                };
                                let missing = reference
                                    .get(expect)
                                    .map(|m| format!("{}@{}", m.key, m.rev));
                                bad(
                                    kind,
                                    format!(
                                        "got {}@{}, expected {}",
                                        e.key,
                                        e.rev,
                                        missing.unwrap_or_else(|| "nothing".into())
                                    ),
                                    &mut v,
                                );
                            }
                            expect = pos + 1;
                            let r = &reference[pos];
                            if r.kind != e.kind || (e.kind == "put" && r.value != e.value) {
                                bad(
                                    "reliable",
                                    format!("event {}@{} differs from the history", e.key, e.rev),
                                    &mut v,
                                );
                            }
                            let want = prev_of.get(&(e.rev, e.key.as_str())).cloned().flatten();
                            if e.prev != want {
                                bad(
                                    "prev_kv",
                                    format!(
                                        "event {}@{} has prev {:?}, history says {:?}",
                                        e.key, e.rev, e.prev, want
                                    ),
                                    &mut v,
                                );
                            }
                        }
                    }
                }
                for r in &revs_here {
                    let all = by_rev.get(r).map(Vec::len).unwrap_or(0);
                    let here = resp.events.iter().filter(|e| e.rev == *r).count();
                    if here < all {
                        bad(
                            "atomic",
                            format!("revision {r} split: {here} of {all} events in one response"),
                            &mut v,
                        );
                    }
                }
                prev_resp_last = resp.events.last().map(|e| e.rev).unwrap_or(prev_resp_last);
            }
        }
    }
    v.stat("reference-events", reference.len());
    v.stat("watchers", watchers.len());
    v.stat("delivered-events", delivered);
    v
}

fn expect_is_start(reference: &[Event], expect: usize, from: i64) -> bool {
    reference.iter().position(|e| e.rev >= from) == Some(expect)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Builder;
    use serde_json::json;
    use OpType::*;

    fn ev(key: &str, value: &str, rev: i64, prev: Option<&str>) -> Value {
        json!({"type": "put", "key": key, "value": value, "rev": rev, "prev": prev})
    }

    /// Two puts to a, one txn of two keys, one put to b; reference holds them all.
    fn base() -> Builder {
        let mut b = Builder::new();
        let writes = [
            (vec![("a", "1")], 2),
            (vec![("a", "2")], 3),
            (vec![("b", "1"), ("c", "1")], 4),
            (vec![("b", "2")], 5),
        ];
        for (i, (puts, rev)) in writes.iter().enumerate() {
            let t = i as u64 * 10;
            let p: Vec<[&str; 2]> = puts.iter().map(|(k, v)| [*k, *v]).collect();
            b = b.op(t, 0, Invoke, "put", json!({ "puts": p })).op(
                t + 1,
                0,
                Ok,
                "put",
                json!({ "rev": rev }),
            );
        }
        b.op(1000, 9, Invoke, "watch-reference", json!({})).op(
            1001,
            9,
            Ok,
            "watch-reference",
            json!({"events": [ev("a", "1", 2, None), ev("a", "2", 3, Some("1")),
                    ev("b", "1", 4, None), ev("c", "1", 4, None), ev("b", "2", 5, Some("1"))]}),
        )
    }

    fn session(b: Builder, t: u64, w: i64, from: i64, kind: OpType, responses: Value) -> Builder {
        b.op(
            t,
            10 + w as u64,
            Invoke,
            "watch",
            json!({"watcher": w, "from": from}),
        )
        .op(
            t + 100,
            10 + w as u64,
            kind,
            "watch",
            json!({"watcher": w, "from": from, "responses": responses}),
        )
    }

    #[test]
    fn complete_and_resumed_watchers_are_valid() {
        let b = session(
            base(),
            0,
            1,
            1,
            Ok,
            json!([
                {"rev": 2, "events": [ev("a", "1", 2, None)]},
                {"rev": 3, "events": [ev("a", "2", 3, Some("1"))]},
                {"rev": 3, "progress": true},
                {"rev": 4, "events": [ev("b", "1", 4, None), ev("c", "1", 4, None)]},
                {"rev": 5, "events": [ev("b", "2", 5, Some("1"))]},
            ]),
        );
        // Watcher 2 breaks after revision 3 and resumes from 4.
        let b = session(
            b,
            0,
            2,
            1,
            Info,
            json!([
                {"rev": 3, "events": [ev("a", "1", 2, None), ev("a", "2", 3, Some("1"))]},
            ]),
        );
        let b = session(
            b,
            300,
            2,
            4,
            Ok,
            json!([
                {"rev": 5, "events": [ev("b", "1", 4, None), ev("c", "1", 4, None), ev("b", "2", 5, Some("1"))]},
            ]),
        );
        let v = check(&b.build());
        assert!(v.valid, "{v:?}");
    }

    fn kinds(v: &Verdict) -> Vec<String> {
        v.anomalies.iter().map(|a| a.kind.clone()).collect()
    }

    #[test]
    fn duplicate_event_is_rejected() {
        let b = session(
            base(),
            0,
            1,
            1,
            Ok,
            json!([
                {"rev": 2, "events": [ev("a", "1", 2, None)]},
                {"rev": 3, "events": [ev("a", "2", 3, Some("1"))]},
                {"rev": 3, "events": [ev("a", "2", 3, Some("1"))]},
            ]),
        );
        let v = check(&b.build());
        assert!(kinds(&v).contains(&"unique".to_string()), "{v:?}");
    }

    #[test]
    fn gap_is_rejected() {
        let b = session(
            base(),
            0,
            1,
            1,
            Ok,
            json!([
                {"rev": 2, "events": [ev("a", "1", 2, None)]},
                {"rev": 5, "events": [ev("b", "2", 5, Some("1"))]},
            ]),
        );
        let v = check(&b.build());
        assert_eq!(kinds(&v), ["reliable"], "{v:?}");
    }

    #[test]
    fn bad_resume_split_revision_wrong_prev_and_early_bookmark_are_rejected() {
        // Broken after revision 3, resumed from 4 but starts at 5.
        let b = session(
            base(),
            0,
            1,
            1,
            Info,
            json!([
                {"rev": 3, "events": [ev("a", "1", 2, None), ev("a", "2", 3, Some("1"))]},
            ]),
        );
        let b = session(
            b,
            300,
            1,
            4,
            Ok,
            json!([
                {"rev": 5, "events": [ev("b", "2", 5, Some("1"))]},
            ]),
        );
        // Revision 4 split across responses, wrong prev on 5, bookmark 5 then event 5.
        let b = session(
            b,
            0,
            2,
            4,
            Ok,
            json!([
                {"rev": 4, "events": [ev("b", "1", 4, None)]},
                {"rev": 4, "events": [ev("c", "1", 4, None)]},
            ]),
        );
        let b = session(
            b,
            0,
            3,
            5,
            Ok,
            json!([
                {"rev": 5, "progress": true},
                {"rev": 5, "events": [ev("b", "2", 5, Some("9"))]},
            ]),
        );
        let v = check(&b.build());
        let k = kinds(&v);
        for want in ["resumable", "atomic", "ordered", "prev_kv", "bookmarkable"] {
            assert!(k.contains(&want.to_string()), "missing {want} in {k:?}");
        }
    }

    #[test]
    fn lost_acknowledged_write_in_reference_is_rejected() {
        let b = base()
            .op(50, 0, Invoke, "put", json!({"puts": [["d", "1"]]}))
            .op(51, 0, Ok, "put", json!({"rev": 6}));
        let v = check(&b.build());
        assert_eq!(kinds(&v), ["lost-write"]);
    }
}
