//! The client beside the `etcd-client` crate against the same 3-member Cairn cluster, and a watch
//! through a leader kill. Prints a markdown table.
//!
//! `cargo build --release -p cairn-server --bin cairn && cargo bench -p cairn-client --bench client`
//! (`CAIRN_BENCH_SECS`, default 5, per row).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_client::{Client, GetOptions, WatchOptions};
use common::Cluster;
use futures::StreamExt;

const TASKS: usize = 64;

fn secs() -> u64 {
    std::env::var("CAIRN_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
}

/// Runs `op` from `TASKS` tasks for `secs`; returns (ops/s, p99 latency).
async fn measure<F, Fut>(secs: u64, op: F) -> (f64, Duration)
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let end = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = 0;
                while Instant::now() < end {
                    let started = Instant::now();
                    if op(t, i).await {
                        lat.push(started.elapsed());
                    }
                    i += 1;
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    all.sort();
    let p99 = all.get(all.len() * 99 / 100).copied().unwrap_or_default();
    (all.len() as f64 / secs as f64, p99)
}

fn cell((rate, p99): (f64, Duration)) -> String {
    format!("{rate:.0}/s, p99 {:.1} ms", p99.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("client bench: run with `cargo bench -p cairn-client --bench client`");
        return;
    }
    let secs = secs();
    let mut cluster = Cluster::cairn(3).await;
    let endpoints = cluster.endpoints();
    let ours = cluster.client().await;
    let theirs = etcd_client::Client::connect(endpoints.clone(), None)
        .await
        .expect("etcd-client connects");
    let mut rows = Vec::new();

    let c = ours.clone();
    let put = measure(secs, move |t, i| {
        let c = c.clone();
        async move { c.put(format!("b/{t}/{i}"), "v", None).await.is_ok() }
    })
    .await;
    let c = theirs.clone();
    let put_theirs = measure(secs, move |t, i| {
        let mut c = c.clone();
        async move { c.put(format!("e/{t}/{i}"), "v", None).await.is_ok() }
    })
    .await;
    rows.push((
        format!("put, {TASKS} tasks on one client"),
        cell(put),
        cell(put_theirs),
    ));
    let c = ours.clone();
    let get = measure(secs, move |t, _| {
        let c = c.clone();
        async move { c.get(format!("b/{t}/0"), None).await.is_ok() }
    })
    .await;
    let c = theirs.clone();
    let get_theirs = measure(secs, move |t, _| {
        let mut c = c.clone();
        async move { c.get(format!("b/{t}/0"), None).await.is_ok() }
    })
    .await;
    rows.push((
        format!("linearizable get, {TASKS} tasks on one client"),
        cell(get),
        cell(get_theirs),
    ));

    // A watch through the leader's death: every committed revision once, and how long it paused.
    let leader = cluster.leader().await;
    let first = cluster.members[leader].url();
    let mut order = vec![first.clone()];
    order.extend(endpoints.iter().filter(|u| **u != first).cloned());
    let watcher = Client::connect(order, Some(common::options()))
        .await
        .unwrap();
    let mut watch = watcher
        .watch("w/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let writer = ours.clone();
    let writes = tokio::spawn(async move {
        for i in 0..3000u32 {
            let _ = writer.put(format!("w/{i}"), "v", None).await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.kill(leader);
    let mut seen = Vec::new();
    let mut last = Instant::now();
    let mut longest = Duration::ZERO;
    let stop = Instant::now() + Duration::from_secs(60);
    while !writes.is_finished() && Instant::now() < stop {
        if let Ok(Some(Ok(batch))) =
            tokio::time::timeout(Duration::from_millis(500), watch.next()).await
        {
            for e in &batch.events {
                seen.push(e.kv.as_ref().unwrap().mod_revision);
            }
            longest = longest.max(last.elapsed());
            last = Instant::now();
        }
    }
    writes.await.unwrap();
    while let Ok(Some(Ok(batch))) = tokio::time::timeout(Duration::from_secs(2), watch.next()).await
    {
        seen.extend(
            batch
                .events
                .iter()
                .map(|e| e.kv.as_ref().unwrap().mod_revision),
        );
    }
    let stored = ours
        .get("w/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let mut expected: Vec<i64> = stored.kvs.iter().map(|kv| kv.mod_revision).collect();
    expected.sort();
    let in_order = seen.windows(2).all(|w| w[0] < w[1]);
    rows.push((
        "watch through a leader kill (events, longest pause, resumes)".into(),
        format!(
            "{} of {} committed, {} in order, {:.0} ms, {} resume(s)",
            seen.len(),
            expected.len(),
            if in_order && seen == expected {
                "all once"
            } else {
                "NOT all once"
            },
            longest.as_secs_f64() * 1000.0,
            watch.resumes()
        ),
        "-".into(),
    ));

    println!();
    println!("3 cairn members on 127.0.0.1, fsync on, {secs} s per row");
    println!();
    println!("| workload | cairn-client | etcd-client 0.21 |");
    println!("|---|---|---|");
    for (w, a, b) in rows {
        println!("| {w} | {a} | {b} |");
    }
}
