//! etcd compatibility through a client we did not write: the `etcd-client` crate against an
//! in-process Cairn member over real gRPC on loopback.

use crate::common;

use common::{status, TestNode};
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp, TxnOpResponse,
};

async fn client(node: &TestNode) -> Client {
    Client::connect([node.url()], None).await.expect("connect")
}

fn keys(resp: &etcd_client::GetResponse) -> Vec<String> {
    resp.kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn put_get_range_forms() {
    let mut node = TestNode::start().await;
    let mut c = client(&node).await;
    for k in ["a", "b", "b/1", "b/2", "c", "d"] {
        c.put(k, format!("v-{k}"), None).await.unwrap();
    }

    let one = c.get("b", None).await.unwrap();
    assert_eq!(keys(&one), ["b"]);
    assert_eq!(one.kvs()[0].value(), b"v-b");
    assert_eq!(one.count(), 1);

    let prefix = c
        .get("b/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(keys(&prefix), ["b/1", "b/2"]);

    let range = c
        .get("b", Some(GetOptions::new().with_range("c")))
        .await
        .unwrap();
    assert_eq!(keys(&range), ["b", "b/1", "b/2"]);

    let from = c
        .get("c", Some(GetOptions::new().with_from_key()))
        .await
        .unwrap();
    assert_eq!(keys(&from), ["c", "d"]);

    let all = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!(all.count(), 6);

    let limited = c
        .get("", Some(GetOptions::new().with_all_keys().with_limit(2)))
        .await
        .unwrap();
    assert_eq!(keys(&limited), ["a", "b"]);
    assert!(limited.more());
    assert_eq!(limited.count(), 6, "count ignores limit");

    let desc = c
        .get(
            "",
            Some(
                GetOptions::new()
                    .with_all_keys()
                    .with_sort(SortTarget::Key, SortOrder::Descend)
                    .with_limit(2),
            ),
        )
        .await
        .unwrap();
    assert_eq!(keys(&desc), ["d", "c"]);

    let keys_only = c
        .get("a", Some(GetOptions::new().with_keys_only()))
        .await
        .unwrap();
    assert!(keys_only.kvs()[0].value().is_empty());

    let count_only = c
        .get("b", Some(GetOptions::new().with_prefix().with_count_only()))
        .await
        .unwrap();
    assert!(count_only.kvs().is_empty());
    assert_eq!(count_only.count(), 3);

    let serializable = c
        .get("d", Some(GetOptions::new().with_serializable()))
        .await
        .unwrap();
    assert_eq!(keys(&serializable), ["d"]);
    node.stop().await;
}

#[tokio::test]
async fn revisions_versions_and_history() {
    let mut node = TestNode::start().await;
    let mut c = client(&node).await;
    let r1 = common::put_rev(&mut c, "k", "1").await;
    let r2 = c
        .put("k", "2", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert_eq!(r2.prev_key().unwrap().value(), b"1");
    let r2 = r2.header().unwrap().revision();
    assert_eq!(r2, r1 + 1);

    let now = c.get("k", None).await.unwrap();
    let kv = &now.kvs()[0];
    assert_eq!(
        (kv.create_revision(), kv.mod_revision(), kv.version()),
        (r1, r2, 2)
    );

    let old = c
        .get("k", Some(GetOptions::new().with_revision(r1)))
        .await
        .unwrap();
    assert_eq!(old.kvs()[0].value(), b"1");

    let del = c
        .delete("k", Some(DeleteOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert_eq!(del.deleted(), 1);
    assert_eq!(del.prev_kvs()[0].value(), b"2");
    let r3 = del.header().unwrap().revision();

    let recreated = common::put_rev(&mut c, "k", "3").await;
    let kv = c.get("k", None).await.unwrap().kvs()[0].clone();
    assert_eq!(
        (kv.create_revision(), kv.version()),
        (recreated, 1),
        "a delete starts a new generation"
    );
    assert!(c
        .get("k", Some(GetOptions::new().with_revision(r3)))
        .await
        .unwrap()
        .kvs()
        .is_empty());

    let future = c
        .get("k", Some(GetOptions::new().with_revision(recreated + 10)))
        .await
        .unwrap_err();
    let s = status(future);
    assert_eq!(s.code(), tonic::Code::OutOfRange);
    assert_eq!(
        s.message(),
        "etcdserver: mvcc: required revision is a future revision"
    );
    node.stop().await;
}

#[tokio::test]
async fn delete_prefix_counts_and_returns_prev() {
    let mut node = TestNode::start().await;
    let mut c = client(&node).await;
    for k in ["p/1", "p/2", "p/3", "q"] {
        c.put(k, "x", None).await.unwrap();
    }
    let before = c.get("q", None).await.unwrap().header().unwrap().revision();
    let del = c
        .delete(
            "p/",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();
    assert_eq!(del.deleted(), 3);
    assert_eq!(del.prev_kvs().len(), 3);
    assert_eq!(
        del.header().unwrap().revision(),
        before + 1,
        "one delete, one revision"
    );
    let none = c
        .delete("nothing/", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(none.deleted(), 0);
    assert_eq!(
        none.header().unwrap().revision(),
        before + 1,
        "deleting nothing does not advance the revision"
    );
    assert_eq!(
        c.get("", Some(GetOptions::new().with_all_keys()))
            .await
            .unwrap()
            .count(),
        1
    );
    node.stop().await;
}

#[tokio::test]
async fn txn_compares_and_branches() {
    let mut node = TestNode::start().await;
    let mut c = client(&node).await;
    let rev = common::put_rev(&mut c, "lock", "free").await;

    let txn = Txn::new()
        .when([
            Compare::value("lock", CompareOp::Equal, "free"),
            Compare::mod_revision("lock", CompareOp::Equal, rev),
            Compare::version("missing", CompareOp::Equal, 0),
        ])
        .and_then([
            TxnOp::put("lock", "held", None),
            TxnOp::put("owner", "me", None),
            TxnOp::get("lock", None),
        ])
        .or_else([TxnOp::get("lock", None)]);
    let resp = c.txn(txn).await.unwrap();
    assert!(resp.succeeded());
    assert_eq!(
        resp.header().unwrap().revision(),
        rev + 1,
        "one txn, one revision"
    );
    match &resp.op_responses()[2] {
        TxnOpResponse::Get(g) => {
            assert_eq!(
                g.kvs()[0].value(),
                b"held",
                "reads see the txn's own writes"
            );
            // As etcd: a range inside a txn reports the revision it read at.
            assert_eq!(g.header().unwrap().revision(), rev + 1);
        }
        other => panic!("unexpected {other:?}"),
    }
    match &resp.op_responses()[0] {
        TxnOpResponse::Put(p) => assert_eq!(p.header().unwrap().revision(), rev + 1),
        other => panic!("unexpected {other:?}"),
    }

    // Same compare again fails: the failure branch runs and nothing is written.
    let txn = Txn::new()
        .when([Compare::value("lock", CompareOp::Equal, "free")])
        .and_then([TxnOp::put("lock", "stolen", None)])
        .or_else([TxnOp::get("owner", None)]);
    let resp = c.txn(txn).await.unwrap();
    assert!(!resp.succeeded());
    assert_eq!(
        resp.header().unwrap().revision(),
        rev + 1,
        "read-only branch keeps the revision"
    );
    match &resp.op_responses()[0] {
        TxnOpResponse::Get(g) => {
            assert_eq!(g.kvs()[0].value(), b"me");
            assert_eq!(g.header().unwrap().revision(), rev + 1);
        }
        other => panic!("unexpected {other:?}"),
    }

    // Nested txn and a greater-than compare.
    let inner = Txn::new()
        .when([Compare::create_revision("owner", CompareOp::Greater, 0)])
        .and_then([TxnOp::delete("owner", None)]);
    let resp = c
        .txn(
            Txn::new()
                .when([Compare::version("lock", CompareOp::Greater, 1)])
                .and_then([TxnOp::txn(inner)]),
        )
        .await
        .unwrap();
    assert!(resp.succeeded());
    assert!(c.get("owner", None).await.unwrap().kvs().is_empty());
    node.stop().await;
}

#[tokio::test]
async fn compaction_and_compacted_reads() {
    let mut node = TestNode::start().await;
    let mut c = client(&node).await;
    let r1 = common::put_rev(&mut c, "c", "1").await;
    let r2 = common::put_rev(&mut c, "c", "2").await;
    let r3 = common::put_rev(&mut c, "c", "3").await;
    c.compact(r2, None).await.unwrap();

    let s = status(
        c.get("c", Some(GetOptions::new().with_revision(r1)))
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code(), tonic::Code::OutOfRange);
    assert_eq!(
        s.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    let at = c
        .get("c", Some(GetOptions::new().with_revision(r2)))
        .await
        .unwrap();
    assert_eq!(
        at.kvs()[0].value(),
        b"2",
        "the compaction revision itself stays readable"
    );
    assert_eq!(c.get("c", None).await.unwrap().kvs()[0].mod_revision(), r3);

    let again = status(c.compact(r2, None).await.unwrap_err());
    assert_eq!(
        again.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    let future = status(c.compact(r3 + 100, None).await.unwrap_err());
    assert_eq!(
        future.message(),
        "etcdserver: mvcc: required revision is a future revision"
    );
    node.stop().await;
}

#[tokio::test]
async fn bad_requests_get_etcd_errors_and_lose_nothing() {
    let mut node = TestNode::start().await;
    let mut c = client(&node).await;
    c.put("keep", "me", None).await.unwrap();

    let s = status(c.put("", "v", None).await.unwrap_err());
    assert_eq!(
        (s.code(), s.message()),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: key is not provided"
        )
    );

    let s = status(c.get("", None).await.unwrap_err());
    assert_eq!(s.message(), "etcdserver: key is not provided");

    let ops: Vec<TxnOp> = (0..129)
        .map(|i| TxnOp::put(format!("k{i}"), "v", None))
        .collect();
    let s = status(c.txn(Txn::new().and_then(ops)).await.unwrap_err());
    assert_eq!(
        (s.code(), s.message()),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: too many operations in txn request"
        )
    );

    let dup = Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]);
    let s = status(c.txn(dup).await.unwrap_err());
    assert_eq!(
        s.message(),
        "etcdserver: duplicate key given in txn request"
    );

    let big = vec![b'x'; 1024 * 1024 + 600 * 1024];
    let s = status(c.put("big", big, None).await.unwrap_err());
    assert_eq!(
        (s.code(), s.message()),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: request is too large"
        )
    );

    let s = status(
        c.put("missing", "", Some(PutOptions::new().with_ignore_value()))
            .await
            .unwrap_err(),
    );
    assert_eq!(s.message(), "etcdserver: key not found");

    // Still serving, nothing lost, nothing half-written.
    c.put("after", "ok", None).await.unwrap();
    let all = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!(keys(&all), ["after", "keep"]);
    node.stop().await;
}

#[tokio::test]
async fn data_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cairn_server::Config::ephemeral(dir.path());
    let node = cairn_server::Node::start(cfg.clone()).await.unwrap();
    common::wait_leader(&node).await;
    let mut c = Client::connect([node.client_url()], None).await.unwrap();
    for i in 0..50 {
        c.put(format!("r{i:02}"), format!("{i}"), None)
            .await
            .unwrap();
    }
    c.delete("r00", None).await.unwrap();
    let rev = c
        .get("r01", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    node.shutdown().await.unwrap();

    let node = cairn_server::Node::start(cfg).await.unwrap();
    common::wait_leader(&node).await;
    let mut c = Client::connect([node.client_url()], None).await.unwrap();
    let all = c
        .get("r", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(all.count(), 49);
    assert_eq!(all.header().unwrap().revision(), rev);
    let old = c
        .get("r00", Some(GetOptions::new().with_revision(rev - 1)))
        .await
        .unwrap();
    assert_eq!(old.kvs()[0].value(), b"0", "history survives a restart");
    node.shutdown().await.unwrap();
}
