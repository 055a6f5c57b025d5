//! The Lock and Election services through the `etcd-client` crate.

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::TestNode;
use etcd_client::{
    Client, GetOptions, LeaseTimeToLiveOptions, LockOptions, ProclaimOptions, ResignOptions,
};

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

/// The lease a Lock that names none holds its key with, as etcd's lock service grants it.
async fn own_lease(c: &mut Client, key: &[u8]) -> i64 {
    let kvs = c.get(key, None).await.unwrap().kvs().to_vec();
    assert_eq!(kvs.len(), 1, "the lock key exists");
    let lease = kvs[0].lease();
    assert_ne!(lease, 0, "the lock key is attached to a lease");
    assert_eq!(key, format!("door/{lease:x}").as_bytes());
    lease
}

/// Waits (up to 10 s) until `n` keys are under `door/`, and returns them.
async fn lock_keys_become(c: &mut Client, n: usize) -> Vec<Vec<u8>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let under = c
            .get("door/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        let keys: Vec<_> = under.kvs().iter().map(|kv| kv.key().to_vec()).collect();
        if keys.len() == n {
            return keys;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not {n} lock keys: {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A Lock naming no lease gets one of its own, as etcd's lock service does: the session's 60 s,
/// never refreshed, holding the lock key; revoking it releases the lock, and a caller that gives
/// up waiting loses its key but leaves its lease to expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_without_a_lease_holds_a_session_lease_of_its_own() {
    let mut node = TestNode::start().await;
    let mut c = client(&node).await;
    let first = c.lock("door", None).await.unwrap().key().to_vec();
    let first_lease = own_lease(&mut c, &first).await;
    let live = c
        .lease_time_to_live(first_lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert_eq!(live.granted_ttl(), 60);
    assert_eq!(live.keys(), std::slice::from_ref(&first));

    let mut b = client(&node).await;
    let second = tokio::spawn(async move { b.lock("door", None).await.map(|r| r.key().to_vec()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "the lock is still held");
    c.lease_revoke(first_lease).await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the lock passed on in time")
        .unwrap()
        .unwrap();
    assert!(c.get(first, None).await.unwrap().kvs().is_empty());
    let second_lease = own_lease(&mut c, &second).await;
    assert_ne!(second_lease, first_lease);

    // Nothing keeps the lease alive while the lock is held.
    let before = c
        .lease_time_to_live(second_lease, None)
        .await
        .unwrap()
        .ttl();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let after = c
        .lease_time_to_live(second_lease, None)
        .await
        .unwrap()
        .ttl();
    assert!(after < before && after <= 58, "{before} then {after}");

    // A waiter that gives up: its key goes, its lease stays until it expires.
    let leases = c.leases().await.unwrap().leases().len();
    let mut w = client(&node).await;
    let waiter = tokio::spawn(async move { w.lock("door", None).await.map(|_| ()) });
    let waiting = lock_keys_become(&mut c, 2).await;
    assert!(waiting.contains(&second), "{waiting:?}");
    waiter.abort();
    assert_eq!(lock_keys_become(&mut c, 1).await, [second]);
    assert_eq!(c.leases().await.unwrap().leases().len(), leases + 1);
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

/// A Campaign naming no lease campaigns with one of its own, as etcd's election service does: a
/// session lease of 60 s, never refreshed, returned in the leader key. Two such campaigners get
/// keys of their own and take turns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_without_a_lease_holds_a_session_lease_of_its_own() {
    let mut node = TestNode::start().await;
    let mut a = client(&node).await;
    let mut b = client(&node).await;

    let won = a.campaign("seat", "first", 0).await.unwrap();
    let leader_a = won.leader().unwrap().clone();
    let lease_a = leader_a.lease();
    assert_ne!(lease_a, 0, "a lease was granted");
    assert_eq!(leader_a.key(), format!("seat/{lease_a:x}").as_bytes());
    let live = a
        .lease_time_to_live(lease_a, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert_eq!(live.granted_ttl(), 60);
    assert_eq!(live.keys(), [leader_a.key().to_vec()]);
    let kv = a.leader("seat").await.unwrap().kv().unwrap().clone();
    assert_eq!((kv.value(), kv.lease()), (&b"first"[..], lease_a));

    // A second campaigner without a lease waits behind the first on a key of its own.
    let second = tokio::spawn(async move {
        b.campaign("seat", "second", 0)
            .await
            .map(|r| r.leader().unwrap().clone())
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let under = a
            .get("seat/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        if under.kvs().len() == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no second key");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!second.is_finished(), "the first still leads");

    // Nothing keeps the first lease alive while it leads.
    let before = a.lease_time_to_live(lease_a, None).await.unwrap().ttl();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let after = a.lease_time_to_live(lease_a, None).await.unwrap().ttl();
    assert!(after < before && after <= 58, "{before} then {after}");

    a.resign(Some(ResignOptions::new().with_leader(leader_a.clone())))
        .await
        .unwrap();
    let leader_b = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the second won in time")
        .unwrap()
        .unwrap();
    assert_ne!(leader_b.lease(), 0);
    assert_ne!(leader_b.lease(), lease_a);
    assert_ne!(leader_b.key(), leader_a.key());
    assert!(leader_b.rev() > leader_a.rev());
    assert_eq!(
        a.leader("seat").await.unwrap().kv().unwrap().value(),
        b"second"
    );
    node.stop().await;
}

/// A proclaimed value over `--max-request-bytes` is refused as etcd refuses the put beneath it;
/// the leader keeps its value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_over_the_request_limit_is_refused() {
    let node = TestNode::start().await;
    let mut c = client(&node).await;
    let lease = c.lease_grant(30, None).await.unwrap().id();
    let won = c.campaign("big", "v1", lease).await.unwrap();
    let leader = won.leader().unwrap().clone();
    let e = c
        .proclaim(
            vec![b'x'; 1600 * 1024],
            Some(ProclaimOptions::new().with_leader(leader)),
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("etcdserver: request is too large"),
        "{e}"
    );
    let now = c.leader("big").await.unwrap();
    assert_eq!(now.kv().unwrap().value(), b"v1");
}
