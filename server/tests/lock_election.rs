//! The Lock and Election services through the `etcd-client` crate.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::TestNode;
use etcd_client::{Client, LockOptions, ProclaimOptions, ResignOptions};

async fn client(node: &TestNode) -> Client {
    Client::connect([node.url()], None).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contenders_never_hold_the_lock_together_and_fencing_revisions_grow() {
    let mut node = TestNode::start().await;
    let held = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let mut c = client(&node).await;
        let held = held.clone();
        tasks.push(tokio::spawn(async move {
            let mut fences = Vec::new();
            for _ in 0..4 {
                let lease = c.lease_grant(30, None).await.unwrap().id();
                let lock = tokio::time::timeout(
                    Duration::from_secs(30),
                    c.lock("shared", Some(LockOptions::new().with_lease(lease))),
                )
                .await
                .expect("lock acquired in time")
                .unwrap();
                assert!(!held.swap(true, Ordering::SeqCst), "two holders at once");
                let key = lock.key().to_vec();
                let fence = c.get(key.clone(), None).await.unwrap().kvs()[0].create_revision();
                fences.push(fence);
                tokio::time::sleep(Duration::from_millis(20)).await;
                held.store(false, Ordering::SeqCst);
                c.unlock(key).await.unwrap();
                c.lease_revoke(lease).await.unwrap();
            }
            fences
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let fences = t.await.unwrap();
        assert!(
            fences.windows(2).all(|w| w[0] < w[1]),
            "fencing revisions grow: {fences:?}"
        );
        all.extend(fences);
    }
    all.sort_unstable();
    all.dedup();
    assert_eq!(
        all.len(),
        12,
        "every acquisition has its own fencing revision"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_proclaim_observe_resign() {
    let mut node = TestNode::start().await;
    let mut a = client(&node).await;
    let mut b = client(&node).await;
    let la = a.lease_grant(30, None).await.unwrap().id();
    let lb = b.lease_grant(30, None).await.unwrap().id();

    let won = a.campaign("office", "alice", la).await.unwrap();
    let leader_a = won.leader().unwrap().clone();
    assert_eq!(
        a.leader("office").await.unwrap().kv().unwrap().value(),
        b"alice"
    );

    let mut observe = a.observe("office").await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), observe.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.kv().unwrap().value(), b"alice");

    // Bob waits behind Alice.
    let bob = tokio::spawn(async move {
        b.campaign("office", "bob", lb)
            .await
            .map(|r| r.leader().unwrap().clone())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!bob.is_finished(), "bob cannot win while alice leads");

    a.proclaim(
        "alice-2",
        Some(ProclaimOptions::new().with_leader(leader_a.clone())),
    )
    .await
    .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), observe.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.kv().unwrap().value(), b"alice-2");

    a.resign(Some(ResignOptions::new().with_leader(leader_a.clone())))
        .await
        .unwrap();
    let leader_b = tokio::time::timeout(Duration::from_secs(10), bob)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(leader_b.rev() > leader_a.rev());
    let next = tokio::time::timeout(Duration::from_secs(10), observe.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.kv().unwrap().value(), b"bob");

    // A former leader can no longer proclaim.
    let err = a
        .proclaim("stale", Some(ProclaimOptions::new().with_leader(leader_a)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("election: not leader"), "{err}");
    node.stop().await;
}
