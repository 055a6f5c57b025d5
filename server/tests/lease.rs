//! Lease semantics through the `etcd-client` crate: expiry with DELETE events, keep-alive, revoke,
//! time-to-live, persistence across restarts and leader changes.

use crate::common;

use std::time::{Duration, Instant};

use common::{ProcessCluster, TestNode};
use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, LeaseTimeToLiveOptions, PutOptions, WatchOptions,
};

async fn client(url: &str) -> Client {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(10));
    Client::connect([url], Some(opts)).await.expect("connect")
}

fn code_and_message(e: etcd_client::Error) -> (tonic::Code, String) {
    match e {
        etcd_client::Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

#[tokio::test]
async fn expired_lease_deletes_its_keys_with_delete_events() {
    let mut node = TestNode::start().await;
    let mut c = client(&node.url()).await;
    let lease = c.lease_grant(1, None).await.unwrap();
    assert_eq!(
        lease.ttl(),
        2,
        "TTLs below the minimum are raised to 1.5 election timeouts"
    );
    c.put(
        "ephemeral",
        "x",
        Some(PutOptions::new().with_lease(lease.id())),
    )
    .await
    .unwrap();
    let mut w = c.watch("ephemeral", None).await.unwrap();
    let granted = Instant::now();
    let deadline = granted + Duration::from_secs(10);
    let deleted_at = loop {
        let r = tokio::time::timeout_at(deadline.into(), w.message())
            .await
            .expect("the key was deleted within 10 s")
            .unwrap()
            .unwrap();
        if r.events()
            .iter()
            .any(|e| e.event_type() == EventType::Delete)
        {
            break granted.elapsed();
        }
    };
    assert!(
        deleted_at >= Duration::from_secs(2),
        "expired early: {deleted_at:?}"
    );
    assert!(c.get("ephemeral", None).await.unwrap().kvs().is_empty());
    let ttl = c.lease_time_to_live(lease.id(), None).await.unwrap();
    assert_eq!(ttl.ttl(), -1, "an expired lease reports TTL -1");
    node.stop().await;
}

#[tokio::test]
async fn keep_alive_holds_keys_and_revoke_deletes_them_in_one_revision() {
    let mut node = TestNode::start().await;
    let mut c = client(&node.url()).await;
    let lease = c.lease_grant(2, None).await.unwrap().id();
    for k in ["r/a", "r/b", "r/c"] {
        c.put(k, "v", Some(PutOptions::new().with_lease(lease)))
            .await
            .unwrap();
    }
    let (mut keeper, mut replies) = c.lease_keep_alive(lease).await.unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        keeper.keep_alive().await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), replies.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(r.ttl(), 2);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        c.get("r/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap()
            .count(),
        3,
        "kept alive past its TTL"
    );

    let ttl = c
        .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert_eq!(ttl.granted_ttl(), 2);
    assert!(ttl.ttl() >= 1 && ttl.ttl() <= 2, "remaining {}", ttl.ttl());
    assert_eq!(
        ttl.keys(),
        [b"r/a".to_vec(), b"r/b".to_vec(), b"r/c".to_vec()]
    );
    let listed: Vec<i64> = c
        .leases()
        .await
        .unwrap()
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    assert_eq!(listed, vec![lease]);

    let mut w = c
        .watch("r/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    w.message().await.unwrap();
    let rev = c
        .lease_revoke(lease)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let r = tokio::time::timeout(Duration::from_secs(5), w.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.events().len(), 3, "all attached keys go in one response");
    assert!(r
        .events()
        .iter()
        .all(|e| e.event_type() == EventType::Delete && e.kv().unwrap().mod_revision() == rev));

    let (code, msg) = code_and_message(c.lease_revoke(lease).await.unwrap_err());
    assert_eq!(
        (code, msg.as_str()),
        (
            tonic::Code::NotFound,
            "etcdserver: requested lease not found"
        )
    );
    let (code, msg) = code_and_message(
        c.put("k", "v", Some(PutOptions::new().with_lease(lease)))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code, msg.as_str()),
        (
            tonic::Code::NotFound,
            "etcdserver: requested lease not found"
        )
    );
    let (code, msg) = code_and_message(c.lease_grant(9_000_000_001, None).await.unwrap_err());
    assert_eq!(
        (code, msg.as_str()),
        (tonic::Code::OutOfRange, "etcdserver: too large lease TTL")
    );
    let fixed = c
        .lease_grant(30, Some(etcd_client::LeaseGrantOptions::new().with_id(42)))
        .await
        .unwrap();
    assert_eq!(fixed.id(), 42);
    let (code, msg) = code_and_message(
        c.lease_grant(30, Some(etcd_client::LeaseGrantOptions::new().with_id(42)))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code, msg.as_str()),
        (
            tonic::Code::FailedPrecondition,
            "etcdserver: lease already exists"
        )
    );
    node.stop().await;
}

#[tokio::test]
async fn leases_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cairn_server::Config::ephemeral(dir.path());
    let node = cairn_server::Node::start(cfg.clone()).await.unwrap();
    common::wait_leader(&node).await;
    let mut c = client(&node.client_url()).await;
    let lease = c.lease_grant(60, None).await.unwrap().id();
    c.put("held", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    node.shutdown().await.unwrap();

    let node = cairn_server::Node::start(cfg).await.unwrap();
    common::wait_leader(&node).await;
    let mut c = client(&node.client_url()).await;
    let ttl = c
        .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert_eq!(ttl.granted_ttl(), 60);
    assert!(
        ttl.ttl() > 50,
        "a restart must not cut the lease short: {}",
        ttl.ttl()
    );
    assert_eq!(ttl.keys(), [b"held".to_vec()]);
    assert_eq!(c.get("held", None).await.unwrap().kvs()[0].lease(), lease);
    node.shutdown().await.unwrap();
}

/// A key follows the lease of its latest put: moved to another lease, kept on one by
/// `ignore_lease`, or taken off by a plain put, before and after a restart; a revoke deletes
/// exactly the keys still on the lease.
#[tokio::test]
async fn a_key_is_on_the_lease_of_its_latest_put() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cairn_server::Config::ephemeral(dir.path());
    let node = cairn_server::Node::start(cfg.clone()).await.unwrap();
    common::wait_leader(&node).await;
    let mut c = client(&node.client_url()).await;
    let (first, second) = (
        c.lease_grant(60, None).await.unwrap().id(),
        c.lease_grant(60, None).await.unwrap().id(),
    );
    let on = |lease| Some(PutOptions::new().with_lease(lease));
    for k in ["moved", "kept", "freed"] {
        c.put(k, "v", on(first)).await.unwrap();
    }
    c.put("moved", "v2", on(second)).await.unwrap();
    c.put("kept", "v2", Some(PutOptions::new().with_ignore_lease()))
        .await
        .unwrap();
    c.put("freed", "v2", None).await.unwrap();
    let keys = |c: &mut Client, lease| {
        let mut c = c.clone();
        async move {
            c.lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
                .await
                .unwrap()
                .keys()
                .to_vec()
        }
    };
    assert_eq!(keys(&mut c, first).await, [b"kept".to_vec()]);
    assert_eq!(keys(&mut c, second).await, [b"moved".to_vec()]);
    node.shutdown().await.unwrap();

    let node = cairn_server::Node::start(cfg).await.unwrap();
    common::wait_leader(&node).await;
    let mut c = client(&node.client_url()).await;
    assert_eq!(keys(&mut c, first).await, [b"kept".to_vec()]);
    c.put("kept", "v3", None).await.unwrap();
    c.put("moved", "v3", Some(PutOptions::new().with_ignore_lease()))
        .await
        .unwrap();
    c.lease_revoke(first).await.unwrap();
    c.lease_revoke(second).await.unwrap();
    let left: Vec<(String, i64)> = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap()
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap().to_string(), kv.lease()))
        .collect();
    assert_eq!(left, [("freed".to_string(), 0), ("kept".to_string(), 0)]);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_lease_survives_a_leader_change() {
    let mut cluster = ProcessCluster::start(3);
    let leader_index = common::leader_index(&cluster, &[0, 1, 2]).await;
    let via = (leader_index + 1) % 3;
    let mut c = client(&cluster.members[via].url()).await;
    let lease = c.lease_grant(3, None).await.unwrap().id();
    c.put("survivor", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();

    let (mut keeper, mut replies) = c.lease_keep_alive(lease).await.unwrap();
    cluster.kill(leader_index);
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        // Keep-alives may fail while a new leader is elected; the lease must outlast that.
        if keeper.keep_alive().await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), replies.message()).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut r = client(&cluster.members[via].url()).await;
    assert_eq!(
        r.get("survivor", None).await.unwrap().kvs().len(),
        1,
        "the key outlived the leader change"
    );
    let ttl = r.lease_time_to_live(lease, None).await.unwrap();
    assert_eq!(ttl.granted_ttl(), 3);
    assert!(ttl.ttl() > 0);
}
