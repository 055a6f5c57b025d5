//! Watches through real gRPC: the suite against `cairn` and (when installed) `etcd`, and a watch that keeps
//! delivering every event exactly once while the leader of a 3-member `cairn` cluster is killed.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use cairn_client::proto::EventType;
use cairn_client::{Client, Error, WatchOptions, WatchStream};
use common::{unique, Cluster};
use futures::StreamExt;
use tokio::time::{timeout, Instant};

/// The next batch within 10 s.
async fn next(w: &mut WatchStream) -> cairn_client::Result<cairn_client::WatchResponse> {
    timeout(Duration::from_secs(10), w.next())
        .await
        .expect("watch delivered nothing within 10 s")
        .expect("watch ended")
}

async fn watch_suite(c: &Client, label: &str) {
    let p = unique("w");
    let k = |s: &str| format!("{p}{s}");

    // Live events, in order, with prev_kv on the delete.
    let mut w = c
        .watch(
            p.clone(),
            Some(WatchOptions::new().with_prefix().with_prev_kv()),
        )
        .await
        .unwrap();
    let r1 = c
        .put(k("a"), "1", None)
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;
    let r2 = c
        .put(k("b"), "2", None)
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;
    let r3 = c
        .delete(k("a"), None)
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;
    assert!(w.created_revision() < r1, "{label}");
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let batch = next(&mut w).await.unwrap();
        for e in batch.events {
            let kv = e.kv.unwrap();
            seen.push((
                e.r#type,
                kv.key,
                kv.mod_revision,
                e.prev_kv.map(|p| p.value),
            ));
        }
    }
    assert_eq!(
        seen,
        vec![
            (EventType::Put as i32, k("a").into_bytes(), r1, None),
            (EventType::Put as i32, k("b").into_bytes(), r2, None),
            (
                EventType::Delete as i32,
                k("a").into_bytes(),
                r3,
                Some(b"1".to_vec())
            ),
        ],
        "{label}"
    );

    // A progress request is answered with a batch without events at a revision covering what was written.
    w.request_progress().unwrap();
    let batch = next(&mut w).await.unwrap();
    assert!(batch.is_progress_notify(), "{label}: {batch:?}");
    assert!(batch.revision() >= r3, "{label}");
    drop(w);

    // Replay from a past revision, with a filter.
    let mut w = c
        .watch(
            p.clone(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(r1)
                    .with_no_delete(),
            ),
        )
        .await
        .unwrap();
    let mut revs = Vec::new();
    while revs.len() < 2 {
        revs.extend(
            next(&mut w)
                .await
                .unwrap()
                .events
                .iter()
                .map(|e| e.kv.as_ref().unwrap().mod_revision),
        );
    }
    assert_eq!(revs, vec![r1, r2], "{label}");
    drop(w);

    // A watch starting below the compaction point fails with the compaction revision, typed.
    let at = c
        .put(k("c"), "3", None)
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;
    c.compact(at, None).await.unwrap();
    let err = match c
        .watch(
            p.clone(),
            Some(WatchOptions::new().with_prefix().with_start_revision(r1)),
        )
        .await
    {
        Err(e) => e,
        Ok(mut w) => next(&mut w).await.unwrap_err(),
    };
    match err {
        Error::Compacted { compact_revision } => assert_eq!(compact_revision, at, "{label}"),
        other => panic!("{label}: expected Compacted, got {other}"),
    }
}

#[tokio::test]
async fn watch_suite_on_cairn_and_etcd() {
    for cluster in Cluster::each_single().await {
        let c = cluster.client().await;
        watch_suite(&c, &format!("{:?}", cluster.kind)).await;
    }
}

#[tokio::test]
async fn watch_delivers_every_event_once_across_a_leader_kill() {
    let mut cluster = Cluster::cairn(3).await;
    let leader = cluster.leader().await;
    // The watcher prefers the leader, so it is the leader's death the watch must survive.
    let first = cluster.members[leader].url();
    let mut order = vec![first.clone()];
    order.extend(cluster.endpoints().into_iter().filter(|u| *u != first));
    let watcher = Client::connect(order, Some(common::options()))
        .await
        .unwrap();
    let writer = cluster.client().await;
    let mut w = watcher
        .watch("lk/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();

    let writes = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(40);
        let mut ok = 0;
        let mut i = 0;
        // Outcome-unknown writes are fine: the final read says which were applied.
        while ok < 120 && Instant::now() < deadline {
            if writer.put(format!("lk/{i:05}"), "v", None).await.is_ok() {
                ok += 1;
            }
            i += 1;
        }
        writer
    });

    // Kill the leader once some events have flowed.
    let mut delivered: Vec<(Vec<u8>, i64)> = Vec::new();
    while delivered.len() < 30 {
        for e in next(&mut w).await.unwrap().events {
            let kv = e.kv.unwrap();
            delivered.push((kv.key, kv.mod_revision));
        }
    }
    cluster.kill(leader);

    let writer = writes.await.unwrap();
    let truth = writer
        .get("lk/", Some(cairn_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let expected: BTreeMap<i64, Vec<u8>> = truth
        .kvs
        .iter()
        .map(|kv| (kv.mod_revision, kv.key.clone()))
        .collect();
    let last = *expected.keys().last().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while delivered.last().map(|d| d.1) < Some(last) {
        assert!(
            Instant::now() < deadline,
            "watch stalled at {:?}",
            delivered.last()
        );
        for e in next(&mut w).await.unwrap().events {
            let kv = e.kv.unwrap();
            delivered.push((kv.key, kv.mod_revision));
        }
    }
    // Strictly increasing revisions: no duplicate, ordered.
    for pair in delivered.windows(2) {
        assert!(pair[0].1 < pair[1].1, "out of order or duplicate: {pair:?}");
    }
    // No gap: exactly the writes the store holds.
    let got: BTreeMap<i64, Vec<u8>> = delivered.into_iter().map(|(k, r)| (r, k)).collect();
    assert_eq!(got, expected);
    assert!(expected.len() >= 120);
    assert!(
        w.resumes() >= 1,
        "the watch never lost its stream: the test did not exercise resume"
    );
}

/// A watch on a member that freezes (socket open, no answers) notices through HTTP/2 keep-alive and resumes
/// on another member without losing or repeating events.
#[tokio::test]
async fn watch_resumes_when_its_member_freezes() {
    let mut cluster = Cluster::cairn(3).await;
    let leader = cluster.leader().await;
    let frozen = (leader + 1) % 3;
    let first = cluster.members[frozen].url();
    let mut order = vec![first.clone()];
    order.extend(cluster.endpoints().into_iter().filter(|u| *u != first));
    let watcher = Client::connect(order, Some(common::options()))
        .await
        .unwrap();
    let leader_url = cluster.members[leader].url();
    let writer = Client::connect([leader_url], Some(common::options()))
        .await
        .unwrap();
    let mut w = watcher
        .watch("fzw/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let mut revs = Vec::new();
    for i in 0..5 {
        revs.push(
            writer
                .put(format!("fzw/{i}"), "v", None)
                .await
                .unwrap()
                .header
                .unwrap()
                .revision,
        );
    }
    cluster.signal(frozen, "STOP");
    for i in 5..10 {
        revs.push(
            writer
                .put(format!("fzw/{i}"), "v", None)
                .await
                .unwrap()
                .header
                .unwrap()
                .revision,
        );
    }
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < revs.len() {
        assert!(Instant::now() < deadline, "watch stalled after {got:?}");
        for e in next(&mut w).await.unwrap().events {
            got.push(e.kv.unwrap().mod_revision);
        }
    }
    cluster.signal(frozen, "CONT");
    cluster.kill(frozen);
    assert_eq!(got, revs);
    assert!(w.resumes() >= 1);
}

/// The server's watcher gauge (`etcd_debugging_mvcc_watcher_total` on /metrics), read over plain HTTP/1.
fn watchers(url: &str) -> i64 {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).expect("connect for /metrics");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.lines()
        .find_map(|l| l.strip_prefix("etcd_debugging_mvcc_watcher_total "))
        .unwrap_or_else(|| panic!("no watcher gauge in /metrics:\n{body}"))
        .trim()
        .parse::<f64>()
        .expect("gauge value") as i64
}

/// Dropping a WatchStream cancels the watch on the server.
#[tokio::test]
async fn dropping_a_watch_cancels_it_on_the_server() {
    for cluster in Cluster::each_single().await {
        let url = cluster.endpoints()[0].clone();
        let c = cluster.client().await;
        let before = watchers(&url);
        let w1 = c
            .watch("drop/", Some(WatchOptions::new().with_prefix()))
            .await
            .unwrap();
        let w2 = c.watch("drop/x", None).await.unwrap();
        assert_eq!(watchers(&url), before + 2, "{:?}", cluster.kind);
        drop(w1);
        drop(w2);
        let deadline = Instant::now() + Duration::from_secs(10);
        while watchers(&url) != before {
            assert!(
                Instant::now() < deadline,
                "{:?}: watchers not canceled",
                cluster.kind
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
