//! Watches on a real 3-member cluster: followers deliver what the leader delivers, and a watch
//! resumed on another member after the leader is killed continues with no gap and no duplicate.

use crate::common;

use std::time::{Duration, Instant};

use common::{connect, leader_index, ProcessCluster};
use etcd_client::{GetOptions, WatchOptions};

/// Revisions of PUT events seen on `url` for prefix `p`, from `from`, until `n` arrived.
async fn collect(url: String, p: &'static str, from: i64, n: usize) -> Vec<i64> {
    let mut c = connect(&url).await.expect("connect");
    let mut w = c
        .watch(
            p,
            Some(WatchOptions::new().with_prefix().with_start_revision(from)),
        )
        .await
        .unwrap();
    let mut revs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while revs.len() < n {
        let r = tokio::time::timeout_at(deadline.into(), w.message())
            .await
            .expect("events in time")
            .unwrap()
            .unwrap();
        revs.extend(r.events().iter().map(|e| e.kv().unwrap().mod_revision()));
    }
    revs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_deliver_the_same_sequence_as_the_leader() {
    let cluster = ProcessCluster::start(3);
    let leader = leader_index(&cluster, &[0, 1, 2]).await;
    let follower = (leader + 1) % 3;
    let writer = (leader + 2) % 3;
    let mut c = connect(&cluster.members[writer].url()).await.unwrap();
    let start = common::put_rev(&mut c, "probe", "x").await + 1;
    let on_leader = tokio::spawn(collect(cluster.members[leader].url(), "f/", start, 200));
    let on_follower = tokio::spawn(collect(cluster.members[follower].url(), "f/", start, 200));
    for i in 0..200 {
        c.put(format!("f/{i:03}"), "v", None).await.unwrap();
    }
    let a = on_leader.await.unwrap();
    let b = on_follower.await.unwrap();
    assert_eq!(a.len(), 200);
    assert_eq!(a, b, "leader and follower watches differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumed_elsewhere_after_the_leader_dies_has_no_gap_or_duplicate() {
    let mut cluster = ProcessCluster::start(3);
    let leader = leader_index(&cluster, &[0, 1, 2]).await;
    let survivor = (leader + 1) % 3;
    let writer_member = (leader + 2) % 3;
    let mut c = connect(&cluster.members[writer_member].url())
        .await
        .unwrap();
    let start = common::put_rev(&mut c, "probe", "x").await + 1;

    // Writer: keeps writing unique keys, tolerating failures while leadership moves.
    let writer_url = cluster.members[writer_member].url();
    let writer = tokio::spawn(async move {
        let stop = Instant::now() + Duration::from_secs(6);
        let mut c = connect(&writer_url).await.unwrap();
        let mut i = 0;
        while Instant::now() < stop {
            let _ = c.put(format!("g/{i:05}"), "v", None).await;
            i += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });

    // Watch on the leader until it dies, then resume from the last revision + 1 on a survivor.
    let mut seen = Vec::new();
    let mut on_leader = connect(&cluster.members[leader].url()).await.unwrap();
    let mut w = on_leader
        .watch(
            "g/",
            Some(WatchOptions::new().with_prefix().with_start_revision(start)),
        )
        .await
        .unwrap();
    let kill_at = Instant::now() + Duration::from_secs(2);
    while Instant::now() < kill_at {
        if let Ok(Ok(Some(r))) = tokio::time::timeout(Duration::from_millis(200), w.message()).await
        {
            seen.extend(r.events().iter().map(|e| e.kv().unwrap().mod_revision()));
        }
    }
    cluster.kill(leader);
    drop(w);
    assert!(!seen.is_empty(), "no events before the kill");
    let resume_from = seen.last().unwrap() + 1;
    writer.await.unwrap();

    let mut r = connect(&cluster.members[survivor].url()).await.unwrap();
    let all = r
        .get("g/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let mut expected: Vec<i64> = all.kvs().iter().map(|kv| kv.mod_revision()).collect();
    expected.sort_unstable();
    let remaining = expected.iter().filter(|rev| **rev >= resume_from).count();
    let rest = collect(
        cluster.members[survivor].url(),
        "g/",
        resume_from,
        remaining,
    )
    .await;
    seen.extend(rest);
    assert_eq!(
        seen, expected,
        "resumed watch must see every committed write exactly once, in order"
    );
}
