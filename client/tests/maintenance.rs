//! Maintenance and membership calls through real gRPC, against `cairn` and (when installed) `etcd`.

use crate::common;

use cairn_client::proto::AlarmType;
use cairn_client::{AlarmAction, Client};
use common::{Cluster, Kind};
use futures::StreamExt;

async fn maintenance_suite(c: &Client, kind: Kind) {
    let status = c.status().await.unwrap();
    let me = status.header.as_ref().unwrap().member_id;
    assert_eq!(status.leader, me, "{kind:?}: a single member leads");
    assert!(!status.version.is_empty(), "{kind:?}");

    // The hash at a fixed revision is stable; a write changes the latest hash.
    let rev = c
        .put("m/a", "1", None)
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;
    let h1 = c.hash_kv(rev).await.unwrap();
    let h2 = c.hash_kv(rev).await.unwrap();
    assert_eq!(h1.hash, h2.hash, "{kind:?}");
    c.put("m/a", "2", None).await.unwrap();
    assert_ne!(c.hash_kv(0).await.unwrap().hash, h1.hash, "{kind:?}");

    let alarms = c.alarm(AlarmAction::Get, 0, AlarmType::None).await.unwrap();
    assert!(alarms.alarms.is_empty(), "{kind:?}: {alarms:?}");
    c.defragment().await.unwrap();

    let mut total = 0;
    let mut snap = c.snapshot().await.unwrap();
    while let Some(chunk) = snap.next().await {
        total += chunk.unwrap().blob.len();
    }
    assert!(total > 0, "{kind:?}: empty snapshot");

    // Membership: add a learner that never starts, see it, fail to promote it, remove it.
    let peer = format!("http://127.0.0.1:{}", common::free_ports(1)[0]);
    let added = c.member_add(vec![peer.clone()], true).await.unwrap();
    let new = added.member.unwrap();
    assert!(new.is_learner && new.peer_ur_ls == vec![peer], "{kind:?}");
    let listed = c.member_list().await.unwrap();
    assert_eq!(listed.members.len(), 2, "{kind:?}");
    let err = c.member_promote(new.id).await.unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::FailedPrecondition,
        "{kind:?}: {err}"
    );
    c.member_remove(new.id).await.unwrap();
    assert_eq!(c.member_list().await.unwrap().members.len(), 1, "{kind:?}");
    let err = c.member_remove(new.id).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{kind:?}: {err}");

    // Leadership transfer to itself is accepted (and changes nothing).
    c.move_leader(me)
        .await
        .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
}

#[tokio::test]
async fn maintenance_suite_on_cairn_and_etcd() {
    for cluster in Cluster::each_single().await {
        let c = cluster.client().await;
        maintenance_suite(&c, cluster.kind).await;
    }
}
