//! Operation histories as Jepsen records them: every client operation is an `invoke` followed by
//! exactly one completion — `ok` (it happened), `fail` (it certainly did not happen) or `info`
//! (unknown: it may take effect at any time after its invocation, or never).
//!
//! Timestamps are nanoseconds on one monotonic clock shared by every recorder in the run, so the
//! real-time order of two operations is the order of their timestamps. Histories are stored as
//! JSON lines, one [`Op`] per line.

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What kind of event an [`Op`] records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    /// The client is about to send the request.
    Invoke,
    /// The operation took effect; its value is the result.
    Ok,
    /// The operation certainly did not take effect.
    Fail,
    /// The outcome is unknown (timeout, connection lost after sending).
    Info,
}

/// One event of a history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// Position in the history, assigned by the recorder.
    pub index: usize,
    /// The logical client; a process has at most one operation in flight.
    pub process: u64,
    #[serde(rename = "type")]
    pub kind: OpType,
    /// The function: `read`, `write`, `cas`, `txn`, `add`, ...
    pub f: String,
    /// Arguments on invoke, results on completion; each workload defines its shape.
    pub value: Value,
    /// Nanoseconds since the start of the run.
    pub time: u64,
    /// Free text: the error that made an operation fail or unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Errors reading or writing histories.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("history line {line}: {source}")]
    Parse {
        line: usize,
        source: serde_json::Error,
    },
    #[error("history encoding: {0}")]
    Encode(#[from] serde_json::Error),
}

/// A complete history.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    pub ops: Vec<Op>,
}

/// An invocation with its completion, the unit checkers reason about.
#[derive(Clone, Debug, PartialEq)]
pub struct Pair<'a> {
    pub invoke: &'a Op,
    /// `None` while the operation never completed; checkers treat that as `info`.
    pub complete: Option<&'a Op>,
}

impl Pair<'_> {
    /// The outcome; a missing completion is unknown.
    pub fn kind(&self) -> OpType {
        self.complete.map(|c| c.kind).unwrap_or(OpType::Info)
    }

    /// Completion time; unknown outcomes never complete.
    pub fn end(&self) -> u64 {
        match self.complete {
            Some(c) if c.kind != OpType::Info => c.time,
            _ => u64::MAX,
        }
    }
}

impl History {
    /// Reads a JSON-lines history.
    pub fn read(path: &Path) -> Result<History, HistoryError> {
        let file = std::fs::File::open(path)?;
        let mut ops = Vec::new();
        for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let op = serde_json::from_str(&line).map_err(|source| HistoryError::Parse {
                line: i + 1,
                source,
            })?;
            ops.push(op);
        }
        Ok(History { ops })
    }

    /// Writes the history as JSON lines.
    pub fn write(&self, path: &Path) -> Result<(), HistoryError> {
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        for op in &self.ops {
            serde_json::to_writer(&mut out, op)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        Ok(())
    }

    /// Invocations paired with their completions, in invocation order. A completion pairs with
    /// the latest open invocation of the same process.
    pub fn pairs(&self) -> Vec<Pair<'_>> {
        let mut open: std::collections::HashMap<u64, usize> = Default::default();
        let mut pairs: Vec<Pair<'_>> = Vec::new();
        for op in &self.ops {
            match op.kind {
                OpType::Invoke => {
                    open.insert(op.process, pairs.len());
                    pairs.push(Pair {
                        invoke: op,
                        complete: None,
                    });
                }
                _ => {
                    if let Some(i) = open.remove(&op.process) {
                        pairs[i].complete = Some(op);
                    }
                }
            }
        }
        pairs
    }
}

/// A thread-safe recorder shared by all clients of a run.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Mutex<Vec<Op>>>,
    start: Instant,
}

impl Recorder {
    /// A recorder whose clock starts now.
    pub fn new() -> Recorder {
        Recorder {
            inner: Arc::default(),
            start: Instant::now(),
        }
    }

    /// Nanoseconds since the recorder was created.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// The instant the clock counts from.
    pub fn start(&self) -> Instant {
        self.start
    }

    fn push(&self, process: u64, kind: OpType, f: &str, value: Value, error: Option<String>) {
        let mut ops = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // Taking the time under the lock keeps indexes and times in the same order.
        let time = self.now();
        let index = ops.len();
        ops.push(Op {
            index,
            process,
            kind,
            f: f.to_string(),
            value,
            time,
            error,
        });
    }

    /// Records an invocation.
    pub fn invoke(&self, process: u64, f: &str, value: Value) {
        self.push(process, OpType::Invoke, f, value, None);
    }

    /// Records a completion.
    pub fn complete(
        &self,
        process: u64,
        kind: OpType,
        f: &str,
        value: Value,
        error: Option<String>,
    ) {
        self.push(process, kind, f, value, error);
    }

    /// The history so far.
    pub fn history(&self) -> History {
        History {
            ops: self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

/// Builds histories by hand in tests: `b.invoke(0, "write", json!(..)).at(10)`.
#[derive(Default)]
pub struct Builder {
    ops: Vec<Op>,
}

impl Builder {
    /// An empty history.
    pub fn new() -> Builder {
        Builder::default()
    }

    /// Appends an event at `time`.
    pub fn op(mut self, time: u64, process: u64, kind: OpType, f: &str, value: Value) -> Builder {
        let index = self.ops.len();
        self.ops.push(Op {
            index,
            process,
            kind,
            f: f.to_string(),
            value,
            time,
            error: None,
        });
        self
    }

    /// The history, sorted by time as a recorder would have produced it.
    pub fn build(mut self) -> History {
        self.ops.sort_by_key(|o| o.time);
        for (i, op) in self.ops.iter_mut().enumerate() {
            op.index = i;
        }
        History { ops: self.ops }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_lines_round_trip_and_pairing() {
        let h = Builder::new()
            .op(
                1,
                0,
                OpType::Invoke,
                "write",
                json!({"key": "a", "value": 1}),
            )
            .op(2, 1, OpType::Invoke, "read", json!({"key": "a"}))
            .op(3, 0, OpType::Ok, "write", json!({"key": "a", "value": 1}))
            .op(4, 1, OpType::Info, "read", json!(null))
            .op(5, 2, OpType::Invoke, "read", json!({"key": "a"}))
            .build();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.jsonl");
        h.write(&path).unwrap();
        let back = History::read(&path).unwrap();
        assert_eq!(back, h);
        let pairs = back.pairs();
        assert_eq!(pairs.len(), 3);
        assert_eq!(pairs[0].kind(), OpType::Ok);
        assert_eq!(pairs[0].end(), 3);
        assert_eq!(pairs[1].kind(), OpType::Info);
        assert_eq!(pairs[1].end(), u64::MAX);
        assert!(pairs[2].complete.is_none());
        assert_eq!(pairs[2].kind(), OpType::Info);
    }

    #[test]
    fn recorder_times_are_monotonic() {
        let r = Recorder::new();
        for p in 0..50 {
            r.invoke(p, "read", Value::Null);
        }
        let h = r.history();
        assert!(h.ops.windows(2).all(|w| w[0].time <= w[1].time));
        assert!(h.ops.iter().enumerate().all(|(i, o)| o.index == i));
    }
}
