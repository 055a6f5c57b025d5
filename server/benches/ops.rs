//! Cluster operations beside etcd: how long a backup, a member join (to promotable) and a
//! leadership move take on a store holding `CAIRN_BENCH_KEYS` keys (default 50,000 × 256 B), and
//! how long as many updates of one key take (each put must cost the same however long the key's
//! history is).
//!
//! `cargo bench -p cairn-server --bench ops`; `CAIRN_BENCH_SYSTEMS=cairn` to skip etcd.

mod common;

use std::time::{Duration, Instant};

use common::{connect, free_ports, record, Row, System};
use etcd_client::{Client, MemberAddOptions};

const VALUE_SIZE: usize = 256;
const WRITERS: usize = 64;

fn keys() -> usize {
    std::env::var("CAIRN_BENCH_KEYS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50_000)
}

/// `n` puts from `WRITERS` concurrent writers, the `i`th to `key(i)`.
async fn fill(url: &str, n: usize, key: fn(usize) -> String) -> Duration {
    let started = Instant::now();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let url = url.to_string();
            tokio::spawn(async move {
                let mut c = connect(&url).await;
                for i in (w..n).step_by(WRITERS) {
                    c.put(key(i), vec![b'v'; VALUE_SIZE], None)
                        .await
                        .expect("put");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("writer");
    }
    started.elapsed()
}

/// Retries `op` for up to a minute; returns how long it took to succeed.
async fn until_ok<F, Fut, T>(mut op: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let started = Instant::now();
    loop {
        if op().await.is_ok() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "gave up after a minute"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

async fn bench(system: System, mut rows: Vec<Row>) -> Vec<Row> {
    let n = keys();
    {
        // A member of its own, so the rows after it see a store of `n` keys only.
        let hot = common::start(system, 1);
        let took = fill(&hot.client_urls[0], n, |_| "hot".to_string()).await;
        record(
            &mut rows,
            &format!("update one key {n} times ({WRITERS} writers)"),
            system,
            format!("{:.1} s", took.as_secs_f64()),
        );
    }
    let mut cluster = common::start(system, 1);
    let url = cluster.client_urls[0].clone();
    let mut c: Client = connect(&url).await;
    let took = fill(&url, n, |i| format!("key/{i:08}")).await;
    record(
        &mut rows,
        &format!("load {n} keys ({WRITERS} writers)"),
        system,
        format!("{:.1} s", took.as_secs_f64()),
    );

    // One writer keeps writing while the backup streams: how long does a write wait at worst?
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (mut w, stop) = (c.clone(), stop.clone());
        tokio::spawn(async move {
            let mut worst = Duration::ZERO;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                w.put("during-backup", "x", None).await.expect("put");
                worst = worst.max(t.elapsed());
            }
            worst
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let mut stream = c.snapshot().await.expect("snapshot");
    let mut bytes = 0;
    while let Some(msg) = stream.message().await.expect("snapshot chunk") {
        bytes += msg.blob().len();
    }
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let worst = writer.await.expect("writer");
    record(
        &mut rows,
        "snapshot save (time, size, slowest concurrent put)",
        system,
        format!("{}, {:.1} MB, {}", ms(took), bytes as f64 / 1e6, ms(worst)),
    );

    let started = Instant::now();
    c.hash_kv(0).await.expect("hashkv");
    record(&mut rows, "hashkv", system, ms(started.elapsed()));

    // A learner joins and catches up until the leader lets it be promoted.
    let ports = free_ports(2);
    let peer = format!("http://127.0.0.1:{}", ports[1]);
    let list = c.member_list().await.expect("member list");
    let founder = &list.members()[0];
    let initial = format!("{}={},m1={peer}", founder.name(), founder.peer_urls()[0]);
    let added = c
        .member_add(
            [peer.as_str()],
            Some(MemberAddOptions::new().with_is_learner()),
        )
        .await
        .expect("member add");
    let id = added.member().expect("member").id();
    cluster.spawn_member(system, "m1", (ports[0], ports[1]), &initial, "existing");
    let joined = until_ok(|| {
        let mut c = c.clone();
        async move { c.member_promote(id).await }
    })
    .await;
    record(
        &mut rows,
        "learner join until promotable",
        system,
        ms(joined),
    );

    // Leadership moves to the new member; writes resume through it.
    let started = Instant::now();
    c.move_leader(id).await.expect("move leader");
    let moved = started.elapsed();
    let mut to_new = connect(&cluster.client_urls[1]).await;
    let resumed = until_ok(|| {
        let mut c = to_new.clone();
        async move { c.put("after-move", "x", None).await }
    })
    .await;
    let _ = to_new.get("after-move", None).await;
    record(
        &mut rows,
        "move-leader (call, then first write)",
        system,
        format!("{}, +{}", ms(moved), ms(resumed)),
    );
    rows
}

fn main() {
    common::run(
        "ops",
        |_| {
            format!(
                "1 member + 1 joining on 127.0.0.1, fsync on, {} keys of {VALUE_SIZE} B",
                keys()
            )
        },
        |system, _secs, rows| bench(system, rows),
    );
}
