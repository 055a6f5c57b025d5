//! Checkers turn a history into a [`Verdict`]: valid, invalid with anomalies, or unknown when a
//! checker could not decide (search budget, missing final read). Only a valid verdict passes.
//!
//! - [`register`]: linearizability per key ([`linear`] search with the register model);
//! - [`set`]: lost and duplicated elements of sets grown by guarded appends;
//! - [`append`]: Elle-style list-append: dependency graph and cycle search (strict serializability);
//! - [`watch`]: etcd's watch guarantees and prev_kv against the final event history;
//! - [`lease`]: no key vanishes while its lease was kept alive; expired leases' keys are gone.

pub mod append;
pub mod lease;
pub mod linear;
pub mod register;
pub mod set;
pub mod watch;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::history::History;

/// One violation, with the history indexes of the operations that show it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    pub kind: String,
    pub message: String,
    /// Indexes (into the history) of the operations around the anomaly.
    pub ops: Vec<usize>,
}

/// A checker's conclusion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub checker: String,
    pub valid: bool,
    /// Set when the checker could not decide; such a verdict is not valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown: Option<String>,
    pub anomalies: Vec<Anomaly>,
    #[serde(default)]
    pub stats: serde_json::Map<String, Value>,
}

impl Verdict {
    /// A valid verdict with no findings yet.
    pub fn new(checker: &str) -> Verdict {
        Verdict {
            checker: checker.to_string(),
            valid: true,
            unknown: None,
            anomalies: Vec::new(),
            stats: Default::default(),
        }
    }

    /// Records an anomaly; the verdict becomes invalid.
    pub fn anomaly(&mut self, a: Anomaly) {
        self.valid = false;
        // Bound report size on badly broken runs; the count stays in the stats.
        if self.anomalies.len() < 100 {
            self.anomalies.push(a);
        }
        let n = self
            .stats
            .get("anomaly-count")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        self.stats.insert("anomaly-count".into(), (n + 1).into());
    }

    /// Marks the verdict undecided.
    pub fn unknown(&mut self, why: String) {
        self.valid = false;
        self.unknown.get_or_insert(why);
    }

    /// Adds a statistic.
    pub fn stat(&mut self, name: &str, v: impl Into<Value>) {
        self.stats.insert(name.to_string(), v.into());
    }

    /// Merges several verdicts: valid only when all are.
    pub fn all(checker: &str, parts: Vec<Verdict>) -> Verdict {
        let mut v = Verdict::new(checker);
        for p in parts {
            v.valid &= p.valid;
            if v.unknown.is_none() {
                v.unknown = p.unknown.clone();
            }
            v.anomalies.extend(p.anomalies.iter().cloned());
            v.stats.insert(
                p.checker.clone(),
                serde_json::to_value(&p.stats).unwrap_or_default(),
            );
        }
        v
    }
}

/// The workload a history came from, named by the functions in it.
pub fn workload_of(history: &History) -> Option<&'static str> {
    history.ops.iter().find_map(|o| match o.f.as_str() {
        "read" | "write" | "cas" | "cas-rev" => Some("register"),
        "txn" => Some("append"),
        "add" | "final-read" => Some("set"),
        "watch" | "put" | "watch-reference" => Some("watch"),
        "grant" | "keepalive" | "lease-read" | "lease-put" | "lease-final-read" => Some("lease"),
        _ => None,
    })
}

/// Checks a history with the checker of its workload.
pub fn check(history: &History, workload: &str) -> Verdict {
    match workload {
        "register" => register::check(history),
        "append" => append::check(history),
        "set" => set::check(history),
        "watch" => watch::check(history),
        "lease" => lease::check(history),
        other => {
            let mut v = Verdict::new("none");
            v.unknown(format!("no checker for workload {other:?}"));
            v
        }
    }
}
