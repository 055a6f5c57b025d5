//! Cairn beside etcd on the same machine in the same run: 3 members on loopback each, fsync on.
//! Measures Put throughput and latency at 1, 16 and 256 concurrent clients, compare-and-swap Txns
//! at 64 clients, linearizable point reads at 256 clients, and idle memory per member. Prints a markdown table.
//!
//! `cargo bench -p cairn-server --bench cluster` (etcd comes from Debian's `etcd-server`; without it
//! only Cairn is measured). `CAIRN_BENCH_SECS` sets the seconds per measurement (default 10),
//! `CAIRN_BENCH_SYSTEMS=cairn` skips etcd, `CAIRN_BENCH_CLIENTS=256` picks put concurrency levels,
//! `CAIRN_BENCH_TARGET=leader` (or `=follower`) sends every request to one member of that kind,
//! `CAIRN_BENCH_MEMBERS=1|3|5` sets the cluster size. Each row also reports the CPU time per
//! operation of the members and of the load generator, and the members' context switches.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{connect, record, rss_kib, start, Row, System, Usage};
use etcd_client::{Compare, CompareOp, KvClient, Txn, TxnOp, TxnOpResponse, TxnResponse};

const KEY_SPACE: u64 = 100_000;
const VALUE_SIZE: usize = 256;
const CONNECTIONS: usize = 16;

struct Measured {
    ops_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Used by the members, and by this process (the load generator), during the row.
    members: Usage,
    generator: Usage,
    ops: usize,
}

impl Measured {
    /// CPU per operation (members, generator) and the members' context switches per operation.
    fn cost(&self) -> String {
        let per_op = |u: Usage| u.cpu_secs * 1e6 / self.ops.max(1) as f64;
        format!(
            "{:.0} / {:.0} µs, {:.1} switches",
            per_op(self.members),
            per_op(self.generator),
            self.members.switches as f64 / self.ops.max(1) as f64
        )
    }
}

#[derive(Clone, Copy)]
enum Op {
    Put,
    Get,
    /// Compare-and-swap as Kubernetes writes: `If mod_revision(key) == seen Then Put Else Range`,
    /// each client on a key of its own, so nearly every swap succeeds.
    Cas,
}

async fn load(kvs: &[KvClient], pids: &[u32], clients: usize, op: Op, secs: u64) -> Measured {
    let me = [std::process::id()];
    let (members_before, generator_before) = (Usage::of(pids), Usage::of(&me));
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
fn report(rows: &mut Vec<Row>, system: System, what: &str, m: &Measured) {
    eprintln!(
        "{} {what}: {:.0}/s p50 {:.2} ms p99 {:.2} ms",
        system.name(),
        m.ops_per_sec,
        m.p50_ms,
        m.p99_ms
    );
    record(
        rows,
        &format!("{what}: ops/s (p50 / p99 ms)"),
        system,
        format!("{:.0} ({:.1} / {:.1})", m.ops_per_sec, m.p50_ms, m.p99_ms),
    );
    record(
        rows,
        &format!("{what}: CPU per op, members / generator; members' switches per op"),
        system,
        m.cost(),
    );
}

async fn bench(system: System, secs: u64, rows: &mut Vec<Row>) {
    let cluster = start(system, members());
    let mut clients = Vec::new();
    for url in &cluster.client_urls {
        clients.push(connect(url).await);
    }
    // Idle memory: settled members with an empty store.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss: Vec<u64> = cluster.children.iter().map(|c| rss_kib(c.id())).collect();
    let max_rss = *rss.iter().max().unwrap() as f64 / 1024.0;
    record(
        rows,
        "idle RSS per member (max of 3)",
        system,
        format!("{max_rss:.1} MiB"),
    );

    // Connections spread over all members, as a client given every endpoint would (or, with
    // CAIRN_BENCH_TARGET=leader or =follower, all on one member of that kind, to tell forwarding
    // costs from the rest).
    let mut targets = cluster.client_urls.clone();
    if let Ok(want) = std::env::var("CAIRN_BENCH_TARGET") {
        let mut picked = None;
        for (url, c) in cluster.client_urls.iter().zip(clients.iter_mut()) {
            let status = c.status().await.expect("status");
            let leads = status.header().map(|h| h.member_id()) == Some(status.leader());
            if leads == (want == "leader") && picked.is_none() {
                picked = Some(url.clone());
            }
        }
        targets = vec![picked.unwrap_or_else(|| panic!("no {want} to pin the load to"))];
    }
    let mut kvs = Vec::new();
    for i in 0..CONNECTIONS {
        let url = &targets[i % targets.len()];
        kvs.push(connect(url).await.kv_client());
    }
    let pids: Vec<u32> = cluster.children.iter().map(|c| c.id()).collect();
    for &n in &client_counts() {
        let m = load(&kvs, &pids, n, Op::Put, secs).await;
        report(rows, system, &format!("put, {n} clients"), &m);
    }
    let m = load(&kvs, &pids, 64, Op::Cas, secs).await;
    report(rows, system, "txn compare-and-swap, 64 clients", &m);
    let m = load(&kvs, &pids, 256, Op::Get, secs).await;
    report(rows, system, "linearizable get, 256 clients", &m);
    let rss: Vec<u64> = cluster.children.iter().map(|c| rss_kib(c.id())).collect();
    let max_rss = *rss.iter().max().unwrap() as f64 / 1024.0;
    record(
        rows,
        "RSS per member after load (max of 3)",
        system,
        format!("{max_rss:.1} MiB"),
    );
}

/// `CAIRN_BENCH_MEMBERS` (default 3) sets the cluster size.
fn members() -> usize {
    std::env::var("CAIRN_BENCH_MEMBERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
}

/// `CAIRN_BENCH_CLIENTS=1,16,256` (the default) picks the put concurrency levels.
fn client_counts() -> Vec<usize> {
    std::env::var("CAIRN_BENCH_CLIENTS")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 16, 256])
}

fn main() {
    common::run(
        "cluster",
        |secs| {
            format!(
            "{} members on 127.0.0.1, fsync on, {VALUE_SIZE}-byte values, 8-byte keys from {KEY_SPACE}, {CONNECTIONS} connections, {secs} s per row",
            members()
        )
        },
        |system, secs, mut rows| async move {
            bench(system, secs, &mut rows).await;
            rows
        },
    );
}
