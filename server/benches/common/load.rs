//! The load both write benchmarks generate: clients issuing Puts, linearizable Gets or
//! compare-and-swap Txns over shared connections for a fixed time, with latency percentiles and
//! the CPU and context switches the members and the generator spent per operation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Compare, CompareOp, GetOptions, KvClient, Txn, TxnOp, TxnOpResponse, TxnResponse,
};

use super::{record, Row, Stolen, System, Usage};

pub const KEY_SPACE: u64 = 100_000;
pub const VALUE_SIZE: usize = 256;
pub const CONNECTIONS: usize = 16;

/// `CAIRN_BENCH_MEMBERS` (default 3) sets the cluster size.
pub fn members() -> usize {
    std::env::var("CAIRN_BENCH_MEMBERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
}

/// `CAIRN_BENCH_CLIENTS=1,16,256` (the default) picks the put concurrency levels.
pub fn client_counts() -> Vec<usize> {
    std::env::var("CAIRN_BENCH_CLIENTS")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 16, 256])
}

pub struct Measured {
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Used by the members, and by this process (the load generator), during the row.
    pub members: Usage,
    pub generator: Usage,
    pub ops: usize,
    /// The share of the machine's CPU time the host took during the row.
    pub stolen_percent: f64,
}

impl Measured {
    /// CPU per operation (members, generator) and the members' context switches per operation.
    pub fn cost(&self) -> String {
        let per_op = |u: Usage| u.cpu_secs * 1e6 / self.ops.max(1) as f64;
        format!(
            "{:.0} / {:.0} µs, {:.1} switches, steal {:.0} %",
            per_op(self.members),
            per_op(self.generator),
            self.members.switches as f64 / self.ops.max(1) as f64,
            self.stolen_percent
        )
    }
}

#[derive(Clone, Copy)]
pub enum Op {
    Put,
    Get,
    /// A point read the member answers from its own store: the round trip every request pays,
    /// without consensus.
    SerializableGet,
    /// Compare-and-swap as Kubernetes writes: `If mod_revision(key) == seen Then Put Else Range`,
    /// each client on a key of its own, so nearly every swap succeeds.
    Cas,
}

pub async fn load(kvs: &[KvClient], pids: &[u32], clients: usize, op: Op, secs: u64) -> Measured {
    let me = [std::process::id()];
    let (members_before, generator_before) = (Usage::of(pids), Usage::of(&me));
    let stolen = Stolen::start();
    let value = Arc::new(vec![b'v'; VALUE_SIZE]);
    let stop = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut kv = kvs[c % kvs.len()].clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ (c as u64 + 1);
            let cas_key = format!("cas/{c:04}");
            let mut seen: i64 = 0;
            while Instant::now() < stop {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let key = format!("{:08}", x % KEY_SPACE);
                let t = Instant::now();
                let ok = match op {
                    Op::Put => kv.put(key, value.as_slice(), None).await.is_ok(),
                    Op::Get => kv.get(key, None).await.is_ok(),
                    Op::SerializableGet => kv
                        .get(key, Some(GetOptions::new().with_serializable()))
                        .await
                        .is_ok(),
                    Op::Cas => match kv.txn(cas(&cas_key, seen, &value)).await {
                        Ok(r) => {
                            seen = swapped_revision(&r);
                            true
                        }
                        Err(_) => false,
                    },
                };
                if ok {
                    latencies.push(t.elapsed().as_micros() as u32);
                }
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let members = Usage::of(pids).since(members_before);
    let generator = Usage::of(&me).since(generator_before);
    all.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.is_empty() {
            return f64::NAN;
        }
        all[((all.len() as f64 * p) as usize).min(all.len() - 1)] as f64 / 1000.0
    };
    Measured {
        ops_per_sec: all.len() as f64 / elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        members,
        generator,
        ops: all.len(),
        stolen_percent: stolen.percent(),
    }
}

fn cas(key: &str, seen: i64, value: &[u8]) -> Txn {
    Txn::new()
        .when([Compare::mod_revision(key, CompareOp::Equal, seen)])
        .and_then([TxnOp::put(key, value, None)])
        .or_else([TxnOp::get(key, None)])
}

/// The key's mod revision after a swap: the response's revision when it succeeded, the stored
/// one when it did not.
fn swapped_revision(r: &TxnResponse) -> i64 {
    if r.succeeded() {
        return r.header().map(|h| h.revision()).unwrap_or(0);
    }
    r.op_responses()
        .into_iter()
        .find_map(|op| match op {
            TxnOpResponse::Get(g) => Some(g.kvs().first().map(|kv| kv.mod_revision()).unwrap_or(0)),
            _ => None,
        })
        .unwrap_or(0)
}

/// Prints a row as it completes and records its two table lines: throughput and latency, then
/// what each operation cost.
pub fn report(rows: &mut Vec<Row>, system: System, what: &str, m: &Measured) {
    eprintln!(
        "{} {what}: {:.0}/s p50 {:.2} ms p99 {:.2} ms, steal {:.0} %",
        system.name(),
        m.ops_per_sec,
        m.p50_ms,
        m.p99_ms,
        m.stolen_percent
    );
    record(
        rows,
        &format!("{what}: ops/s (p50 / p99 ms)"),
        system,
        format!("{:.0} ({:.1} / {:.1})", m.ops_per_sec, m.p50_ms, m.p99_ms),
    );
    record(
        rows,
        &format!("{what}: CPU per op, members / generator; members' switches per op; CPU stolen by the host"),
        system,
        m.cost(),
    );
}
