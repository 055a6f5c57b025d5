//! The key index alone, without consensus, storage or RPC: what one put, get or compare-and-swap
//! costs in the index every member applies it to. The cluster bench's shape (8-byte keys drawn
//! from 100,000, 256-byte values), the same keys behind the long prefix Kubernetes gives its keys,
//! and one key updated over and over (each update must cost the
//! same however long the key's history is). Each row runs `CAIRN_BENCH_ROUNDS` times (default 5)
//! on a fresh index; the table gives the fastest and the median round, in nanoseconds per operation.
//! A second table grows an index of `CAIRN_BENCH_LARGE_KEYS` Kubernetes-style keys (default
//! 2,000,000) from empty: the slowest create, a count of every key and a page of a listing (which
//! counts the rest of its range, as etcd's does).
//!
//! `cargo bench -p cairn-server --bench index`

use std::time::Instant;

use cairn_server::mvcc::{
    Compare, CompareResult, CompareTarget, KeyValue, KvIndex, PutRequest, RangeRequest, RequestOp,
    Revision, StoreError, TxnRequest, ValueReader,
};

const KEYS: u64 = 100_000;
const OPS: usize = 400_000;
const HOT_KEY_UPDATES: usize = 100_000;
const VALUE_SIZE: usize = 256;

/// Values are not stored here: a get reads an empty one (a put reads no previous value unless
/// asked to).
struct NoValues;

impl ValueReader for NoValues {
    fn read(&self, rev: Revision) -> Result<Option<KeyValue>, StoreError> {
        Ok(Some(KeyValue {
            mod_revision: rev.main,
            ..KeyValue::default()
        }))
    }
}

/// The same pseudo-random key sequence for every round and build (xorshift).
fn keys(n: usize) -> Vec<Vec<u8>> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("{:08}", x % KEYS).into_bytes()
        })
        .collect()
}

/// The same keys as Kubernetes names its objects: a long prefix every key shares.
fn registry_key(key: &[u8]) -> Vec<u8> {
    let mut k = b"/registry/pods/default/pod-".to_vec();
    k.extend_from_slice(key);
    k
}

fn put(key: &[u8]) -> PutRequest {
    PutRequest {
        key: key.to_vec(),
        value: vec![b'v'; VALUE_SIZE],
        ..PutRequest::default()
    }
}

/// An index holding every key once.
fn filled() -> KvIndex {
    let mut index = KvIndex::new();
    for k in 0..KEYS {
        index
            .put(put(format!("{k:08}").as_bytes()), &NoValues)
            .expect("put");
    }
    index
}

/// An index holding every Kubernetes-style key once.
fn filled_registry() -> KvIndex {
    let mut index = KvIndex::new();
    for k in 0..KEYS {
        index
            .put(put(&registry_key(format!("{k:08}").as_bytes())), &NoValues)
            .expect("put");
    }
    index
}

/// Runs `op` over `keys` on the index `setup` makes, and returns nanoseconds per op.
fn round(setup: fn() -> KvIndex, keys: &[Vec<u8>], op: fn(&mut KvIndex, &[u8])) -> f64 {
    let mut index = setup();
    let started = Instant::now();
    for key in keys {
        op(&mut index, key);
    }
    started.elapsed().as_nanos() as f64 / keys.len() as f64
}

/// A row: its name, the index it starts from, the keys it runs over and what it does with each.
type Row<'a> = (&'static str, fn() -> KvIndex, &'a [Vec<u8>], Op);
type Op = fn(&mut KvIndex, &[u8]);

fn main() {
    let rounds: usize = std::env::var("CAIRN_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let spread = keys(OPS);
    let hot = vec![b"hot-key!".to_vec(); HOT_KEY_UPDATES];
    let registry: Vec<Vec<u8>> = spread.iter().map(|k| registry_key(k)).collect();
    let rows: [Row; 6] = [
        (
            "put, keys spread over 100,000 (most exist)",
            KvIndex::new,
            &spread,
            |index, key| {
                index.put(put(key), &NoValues).expect("put");
            },
        ),
        ("put, every key exists", filled, &spread, |index, key| {
            index.put(put(key), &NoValues).expect("put");
        }),
        (
            "put, every key exists, Kubernetes-style keys",
            filled_registry,
            &registry,
            |index, key| {
                index.put(put(key), &NoValues).expect("put");
            },
        ),
        (
            "get (point range), every key exists",
            filled,
            &spread,
            |index, key| {
                let r = RangeRequest {
                    key: key.to_vec(),
                    ..RangeRequest::default()
                };
                let got = index.range(&r, &NoValues);
                assert_eq!(got.map(|r| r.count).ok(), Some(1));
            },
        ),
        (
            "txn compare-and-swap (version > 0, then put), every key exists",
            filled,
            &spread,
            |index, key| {
                let txn = TxnRequest {
                    compare: vec![Compare {
                        key: key.to_vec(),
                        range_end: Vec::new(),
                        result: CompareResult::Greater,
                        target: CompareTarget::Version(0),
                    }],
                    success: vec![RequestOp::Put(put(key))],
                    failure: Vec::new(),
                };
                let done = index.txn(txn, &NoValues).expect("txn");
                assert!(done.response.succeeded);
            },
        ),
        (
            "put, one key 100,000 times",
            KvIndex::new,
            &hot,
            |index, key| {
                index.put(put(key), &NoValues).expect("put");
            },
        ),
    ];
    println!("| workload | fastest round, ns/op | median round, ns/op |");
    println!("|---|---|---|");
    for (name, setup, keys, op) in rows {
        let mut times: Vec<f64> = (0..rounds).map(|_| round(setup, keys, op)).collect();
        times.sort_by(f64::total_cmp);
        println!(
            "| {name} | {:.0} | {:.0} |",
            times[0],
            times[times.len() / 2]
        );
    }
    println!(
        "\n{rounds} rounds per row, {OPS} operations per round ({HOT_KEY_UPDATES} for one key), \
         {VALUE_SIZE}-byte values"
    );
    // Run as a test (`cargo test --benches`, no `--bench`), the large table only checks itself.
    if std::env::args().any(|a| a == "--bench") {
        large(large_keys(), rounds);
    } else {
        large(20_000, 1);
    }
}

/// `CAIRN_BENCH_LARGE_KEYS` (default 2,000,000): the size of the large index.
fn large_keys() -> u64 {
    std::env::var("CAIRN_BENCH_LARGE_KEYS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_000)
}

/// A large index grown from empty, as an orchestrator's keyspace grows: no create may stall the
/// apply behind it (an index that grows by rebuilding itself would), and listing must stay a walk.
fn large(n: u64, rounds: usize) {
    let mut rows: Vec<[f64; 4]> = Vec::new();
    for _ in 0..rounds {
        let mut index = KvIndex::new();
        let mut slowest = 0f64;
        let started = Instant::now();
        for k in 0..n {
            let key = registry_key(format!("{k:08}").as_bytes());
            let t = Instant::now();
            index.put(put(&key), &NoValues).expect("put");
            slowest = slowest.max(t.elapsed().as_secs_f64());
        }
        let create = started.elapsed().as_secs_f64();
        let all = RangeRequest {
            key: b"/registry/".to_vec(),
            range_end: b"/registry0".to_vec(),
            count_only: true,
            ..RangeRequest::default()
        };
        let t = Instant::now();
        let counted = index.range(&all, &NoValues).expect("count");
        let count = t.elapsed().as_secs_f64();
        assert_eq!(counted.count, n as i64);
        let page = RangeRequest {
            key: registry_key(format!("{:08}", n / 2).as_bytes()),
            range_end: b"/registry0".to_vec(),
            limit: 500,
            keys_only: true,
            ..RangeRequest::default()
        };
        let t = Instant::now();
        let listed = index.range(&page, &NoValues).expect("page");
        let list = t.elapsed().as_secs_f64();
        assert_eq!(listed.kvs.len(), 500);
        assert_eq!(listed.count, (n - n / 2) as i64, "the page counts the rest");
        rows.push([create, slowest, count, list]);
    }
    let median = |i: usize| {
        let mut v: Vec<f64> = rows.iter().map(|r| r[i]).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("\n| {n} Kubernetes-style keys, created in order | median of {rounds} |");
    println!("|---|---|");
    println!("| create all: total | {:.0} ms |", median(0) * 1e3);
    println!("| create all: slowest put | {:.0} µs |", median(1) * 1e6);
    println!("| count every key | {:.1} ms |", median(2) * 1e3);
    println!(
        "| list 500 keys from the middle, keys only | {:.0} µs |",
        median(3) * 1e6
    );
}
