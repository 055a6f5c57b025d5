//! KV and Txn through real gRPC: the same suite against a `cairn` member and (when installed) `etcd`, plus
//! failover on a 3-member `cairn` cluster.

use crate::common;

use std::time::Duration;

use cairn_client::proto::response_op::Response;
use cairn_client::{
    Client, Compare, DeleteOptions, Error, GetOptions, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp,
};
use common::{unique, Cluster};

async fn kv_suite(c: &Client, label: &str) {
    let p = unique("kv");
    let k = |s: &str| format!("{p}{s}");

    // Versions and revisions: a put creates (version 1), a second put bumps version and mod revision.
    let r1 = c
        .put(k("a"), "1", None)
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;
    let prev = c
        .put(k("a"), "2", Some(PutOptions::new().with_prev_kv()))
        .await
        .unwrap();
    let r2 = prev.header.unwrap().revision;
    assert_eq!(prev.prev_kv.unwrap().value, b"1", "{label}");
    let kv = c.get(k("a"), None).await.unwrap().kvs.remove(0);
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (r1, r2, 2),
        "{label}"
    );
    // Historical read.
    let old = c
        .get(k("a"), Some(GetOptions::new().with_revision(r1)))
        .await
        .unwrap();
    assert_eq!(old.kvs[0].value, b"1", "{label}");

    for s in ["b", "c", "d"] {
        c.put(k(s), s.repeat(2), None).await.unwrap();
    }
    // Prefix with limit: count ignores the limit, more says the limit cut.
    let r = c
        .get(
            p.clone(),
            Some(GetOptions::new().with_prefix().with_limit(2)),
        )
        .await
        .unwrap();
    assert_eq!((r.kvs.len(), r.count, r.more), (2, 4, true), "{label}");
    // Sorted descending by key, keys only.
    let r = c
        .get(
            p.clone(),
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Key, SortOrder::Descend)
                    .with_keys_only(),
            ),
        )
        .await
        .unwrap();
    let keys: Vec<_> = r.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(
        keys,
        vec![
            k("d").into_bytes(),
            k("c").into_bytes(),
            k("b").into_bytes(),
            k("a").into_bytes()
        ],
        "{label}"
    );
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty()), "{label}");
    // Count only.
    let r = c
        .get(
            p.clone(),
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!((r.kvs.len(), r.count), (0, 4), "{label}");
    // From key: at least our four keys from "b" on (other suites may have written later keys).
    let r = c
        .get(
            k("b"),
            Some(GetOptions::new().with_from_key().with_serializable()),
        )
        .await
        .unwrap();
    assert!(
        r.kvs.len() >= 3 && r.kvs[0].key == k("b").into_bytes(),
        "{label}"
    );
    // Explicit range [b, d).
    let r = c
        .get(k("b"), Some(GetOptions::new().with_range(k("d"))))
        .await
        .unwrap();
    assert_eq!(r.count, 2, "{label}");

    // A put with ignore_value on a missing key is refused with etcd's code.
    let err = c
        .put(
            k("missing"),
            "",
            Some(PutOptions::new().with_ignore_value()),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{label}: {err}");

    // Txn: compare on mod revision, success writes, failure reads.
    let cur = c.get(k("a"), None).await.unwrap().kvs[0].mod_revision;
    let ok = c
        .txn(
            Txn::new()
                .when([Compare::mod_revision(k("a")).eq(cur)])
                .and_then([TxnOp::put(k("a"), "3", None), TxnOp::delete(k("b"), None)])
                .or_else([TxnOp::get(k("a"), None)]),
        )
        .await
        .unwrap();
    assert!(ok.succeeded, "{label}");
    let stale = c
        .txn(
            Txn::new()
                .when([Compare::mod_revision(k("a")).eq(cur)])
                .and_then([TxnOp::put(k("a"), "4", None)])
                .or_else([TxnOp::get(k("a"), None)]),
        )
        .await
        .unwrap();
    assert!(!stale.succeeded, "{label}");
    match &stale.responses[0].response {
        Some(Response::ResponseRange(r)) => assert_eq!(r.kvs[0].value, b"3", "{label}"),
        other => panic!("{label}: unexpected {other:?}"),
    }
    // Value and version compares.
    let t = c
        .txn(Txn::new().when([
            Compare::value(k("a")).eq("3"),
            Compare::version(k("b")).eq(0),
            Compare::create_revision(k("c")).gt(0),
        ]))
        .await
        .unwrap();
    assert!(t.succeeded, "{label}");

    // Too many operations.
    let ops: Vec<TxnOp> = (0..129)
        .map(|i| TxnOp::put(k(&format!("x{i}")), "v", None))
        .collect();
    let err = c.txn(Txn::new().and_then(ops)).await.unwrap_err();
    assert!(matches!(err, Error::TooManyOps), "{label}: {err}");
    // Request too large.
    let err = c
        .put(k("big"), vec![b'x'; 1_600_000], None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::RequestTooLarge), "{label}: {err}");
    // Future revision.
    let now = c.get(k("a"), None).await.unwrap().header.unwrap().revision;
    let err = c
        .get(k("a"), Some(GetOptions::new().with_revision(now + 1000)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::FutureRevision), "{label}: {err}");

    // Delete a prefix with prev kvs.
    let d = c
        .delete(
            p.clone(),
            Some(DeleteOptions::new().with_prefix().with_prev_kv()),
        )
        .await
        .unwrap();
    assert_eq!((d.deleted, d.prev_kvs.len()), (3, 3), "{label}");

    // Compaction: reads below the compaction point fail with Compacted.
    let at = c
        .put(k("z"), "z", None)
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;
    c.compact(at, None).await.unwrap();
    let err = c
        .get(k("a"), Some(GetOptions::new().with_revision(r1)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Compacted { .. }), "{label}: {err}");
    let err = c.compact(at, None).await.unwrap_err();
    assert!(matches!(err, Error::Compacted { .. }), "{label}: {err}");
}

#[tokio::test]
async fn kv_suite_on_cairn_and_etcd() {
    for cluster in Cluster::each_single().await {
        let c = cluster.client().await;
        kv_suite(&c, &format!("{:?}", cluster.kind)).await;
    }
}

#[tokio::test]
async fn reads_and_refused_writes_fail_over_on_a_three_member_cluster() {
    let mut cluster = Cluster::cairn(3).await;
    let c = cluster.client().await;
    c.put("fo/a", "1", None).await.unwrap();
    // Members publish their client URLs through the log shortly after they start; discovery below
    // needs member 0's to be recorded before it goes.
    let published = tokio::time::Instant::now() + Duration::from_secs(10);
    while c
        .member_list()
        .await
        .unwrap()
        .members
        .iter()
        .any(|m| m.client_ur_ls.is_empty())
    {
        assert!(
            tokio::time::Instant::now() < published,
            "members never published their URLs"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The client prefers the first endpoint; with it gone, a read moves on and a write whose connection is
    // refused is retried safely (it never left the client).
    cluster.kill(0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut wrote = false;
    while tokio::time::Instant::now() < deadline {
        match c.put("fo/b", "2", None).await {
            Ok(_) => {
                wrote = true;
                break;
            }
            // Member 0 may have been the leader: writes in flight during the election may be unknown.
            Err(Error::OutcomeUnknown { .. })
            | Err(Error::NoLeader)
            | Err(Error::Unavailable { .. }) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert!(wrote, "no write succeeded after a member was killed");
    let r = c
        .get("fo/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(r.count, 2);
    assert!(!c.endpoints().is_empty());

    // Member discovery from a single endpoint finds the others.
    let one = Client::connect(
        [cluster.members[1].url()],
        Some(common::options().with_member_discovery(true)),
    )
    .await
    .unwrap();
    assert_eq!(one.endpoints().len(), 3, "{:?}", one.endpoints());
}

/// A member that stops answering (frozen, not dead: its socket stays open) is detected by HTTP/2 keep-alive.
/// A read caught on it moves to another member; a write caught on it is reported as outcome unknown, never
/// retried.
#[tokio::test]
async fn frozen_member_fails_reads_over_and_leaves_writes_unknown() {
    let mut cluster = Cluster::cairn(3).await;
    let leader = cluster.leader().await;
    let frozen = (leader + 1) % 3;
    let first = cluster.members[frozen].url();
    let mut order = vec![first.clone()];
    order.extend(cluster.endpoints().into_iter().filter(|u| *u != first));
    let c = Client::connect(order, Some(common::options()))
        .await
        .unwrap();
    c.put("fz/a", "1", None).await.unwrap();

    cluster.signal(frozen, "STOP");
    let started = tokio::time::Instant::now();
    let (read, write) = tokio::join!(c.get("fz/a", None), c.put("fz/b", "2", None));
    let elapsed = started.elapsed();
    cluster.signal(frozen, "CONT");
    cluster.kill(frozen);

    let read = read.expect("the read should have failed over");
    assert_eq!(read.kvs[0].value, b"1");
    match write {
        Err(Error::OutcomeUnknown { endpoint, .. }) => assert_eq!(endpoint, first),
        other => panic!("expected an unknown outcome, got {other:?}"),
    }
    assert!(
        elapsed < Duration::from_secs(9),
        "detection took {elapsed:?}"
    );
}
