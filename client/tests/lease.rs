//! Leases through real gRPC: the suite against `cairn` and (when installed) `etcd`, and a keeper that keeps
//! its key alive across a leader change of a 3-member `cairn` cluster.

use crate::common;

use std::time::Duration;

use cairn_client::{Client, Error, GetOptions, KeeperState, PutOptions};
use common::{unique, Cluster};
use tokio::time::{sleep, timeout, Instant};

async fn key_exists(c: &Client, key: &str) -> bool {
    c.get(key, Some(GetOptions::new().with_count_only()))
        .await
        .unwrap()
        .count
        == 1
}

async fn lease_suite(c: &Client, label: &str) {
    let p = unique("lease");
    let key = format!("{p}k");

    let lease = c.lease_grant(30, 0).await.unwrap();
    assert!(lease.id > 0 && lease.ttl >= 30, "{label}: {lease:?}");
    c.put(
        key.clone(),
        "v",
        Some(PutOptions::new().with_lease(lease.id)),
    )
    .await
    .unwrap();
    let ttl = c.lease_time_to_live(lease.id, true).await.unwrap();
    assert_eq!(ttl.granted_ttl, 30, "{label}");
    assert!(ttl.ttl > 0 && ttl.ttl <= 30, "{label}");
    assert_eq!(ttl.keys, vec![key.clone().into_bytes()], "{label}");
    let all = c.leases().await.unwrap();
    assert!(all.leases.iter().any(|l| l.id == lease.id), "{label}");
    assert!(
        c.lease_keep_alive_once(lease.id).await.unwrap().ttl > 0,
        "{label}"
    );

    // Revoking deletes the key; the lease is then unknown everywhere.
    c.lease_revoke(lease.id).await.unwrap();
    assert!(!key_exists(c, &key).await, "{label}");
    assert_eq!(
        c.lease_time_to_live(lease.id, false).await.unwrap().ttl,
        -1,
        "{label}"
    );
    assert!(
        matches!(
            c.lease_keep_alive_once(lease.id).await,
            Err(Error::LeaseNotFound)
        ),
        "{label}"
    );
    assert!(
        matches!(c.lease_revoke(lease.id).await, Err(Error::LeaseNotFound)),
        "{label}"
    );

    // A keeper holds a short lease past its TTL; once dropped, the lease expires and takes the key along.
    let short = c.lease_grant(2, 0).await.unwrap();
    c.put(
        key.clone(),
        "v",
        Some(PutOptions::new().with_lease(short.id)),
    )
    .await
    .unwrap();
    let mut keeper = c.lease_keeper(short.id);
    assert!(keeper.ready().await.unwrap() > 0, "{label}");
    sleep(Duration::from_secs(4)).await;
    assert!(key_exists(c, &key).await, "{label}: key expired while kept");
    assert!(
        matches!(keeper.state(), KeeperState::Alive { .. }),
        "{label}"
    );
    drop(keeper);
    let deadline = Instant::now() + Duration::from_secs(10);
    while key_exists(c, &key).await {
        assert!(
            Instant::now() < deadline,
            "{label}: key outlived its dropped keeper"
        );
        sleep(Duration::from_millis(200)).await;
    }

    // A keeper reports the loss of its lease.
    let gone = c.lease_grant(30, 0).await.unwrap();
    let mut keeper = c.lease_keeper(gone.id);
    keeper.ready().await.unwrap();
    c.lease_revoke(gone.id).await.unwrap();
    let err = timeout(Duration::from_secs(20), keeper.lost())
        .await
        .expect("loss not reported");
    assert!(
        matches!(err, Error::LeaseLost { id, .. } if id == gone.id),
        "{label}: {err}"
    );
    assert!(keeper.check().is_err(), "{label}");
}

#[tokio::test]
async fn lease_suite_on_cairn_and_etcd() {
    let clusters = Cluster::each_single().await;
    let runs = clusters.iter().map(|cluster| async move {
        let c = cluster.client().await;
        lease_suite(&c, &format!("{:?}", cluster.kind)).await;
    });
    // Both backends at once: the suite mostly waits on TTLs.
    futures::future::join_all(runs).await;
}

#[tokio::test]
async fn keeper_keeps_its_key_across_a_leader_change() {
    let mut cluster = Cluster::cairn(3).await;
    let leader = cluster.leader().await;
    let first = cluster.members[leader].url();
    let mut order = vec![first.clone()];
    order.extend(cluster.endpoints().into_iter().filter(|u| *u != first));
    let c = Client::connect(order, Some(common::options()))
        .await
        .unwrap();

    let lease = c.lease_grant(3, 0).await.unwrap();
    c.put("kept", "v", Some(PutOptions::new().with_lease(lease.id)))
        .await
        .unwrap();
    let mut keeper = c.lease_keeper(lease.id);
    keeper.ready().await.unwrap();
    cluster.kill(leader);

    // Three TTLs without the old leader: the keeper must have moved to the new one.
    sleep(Duration::from_secs(9)).await;
    assert!(
        matches!(keeper.state(), KeeperState::Alive { .. }),
        "{:?}",
        keeper.state()
    );
    assert!(key_exists(&c, "kept").await, "the kept key expired");
    let ttl = c.lease_time_to_live(lease.id, false).await.unwrap();
    assert!(ttl.ttl > 0, "{ttl:?}");
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
}
