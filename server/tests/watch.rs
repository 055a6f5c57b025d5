//! Watch semantics through the `etcd-client` crate (and raw gRPC for a stalled reader) against an
//! in-process member.

use crate::common;

use std::time::Duration;

use cairn_proto::etcdserverpb::watch_client::WatchClient;
use cairn_proto::etcdserverpb::{watch_request, WatchCreateRequest, WatchRequest};
use common::TestNode;
use etcd_client::{
    Client, DeleteOptions, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchFilterType,
    WatchOptions, WatchResponse, WatchStream,
};

async fn client(node: &TestNode) -> Client {
    Client::connect([node.url()], None).await.expect("connect")
}

async fn next(stream: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a watch response within 10 s")
        .expect("watch stream error")
        .expect("watch stream ended")
}

/// Next response that carries events (skips created/progress responses).
async fn next_events(stream: &mut WatchStream) -> WatchResponse {
    loop {
        let r = next(stream).await;
        if !r.events().is_empty() || r.canceled() {
            return r;
        }
    }
}

fn summary(r: &WatchResponse) -> Vec<(EventType, String, i64)> {
    r.events()
        .iter()
        .map(|e| {
            let kv = e.kv().unwrap();
            (
                e.event_type(),
                kv.key_str().unwrap().to_string(),
                kv.mod_revision(),
            )
        })
        .collect()
}

#[tokio::test]
async fn history_replay_prev_kv_and_filters() {
    let mut node = TestNode::start().await;
    let mut c = client(&node).await;
    let r1 = common::put_rev(&mut c, "h/a", "1").await;
    let r2 = common::put_rev(&mut c, "h/a", "2").await;
    let r3 = c
        .delete("h/a", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();

    let mut w = c
        .watch(
            "h/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(r1)
                    .with_prev_key(),
            ),
        )
        .await
        .unwrap();
    let created = next(&mut w).await;
    assert!(created.created());
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let r = next_events(&mut w).await;
        for e in r.events() {
            seen.push((
                e.event_type(),
                e.kv().unwrap().mod_revision(),
                e.prev_kv().map(|p| p.value().to_vec()),
            ));
        }
    }
    assert_eq!(
        seen,
        vec![
            (EventType::Put, r1, None),
            (EventType::Put, r2, Some(b"1".to_vec())),
            (EventType::Delete, r3, Some(b"2".to_vec())),
        ]
    );

    // A live event after the replay, then the same history through a NOPUT filter.
    let r4 = common::put_rev(&mut c, "h/b", "x").await;
    assert_eq!(
        summary(&next_events(&mut w).await),
        vec![(EventType::Put, "h/b".into(), r4)]
    );

    let mut deletes = c
        .watch(
            "h/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(r1)
                    .with_filters([WatchFilterType::NoPut]),
            ),
        )
        .await
        .unwrap();
    let r = next_events(&mut deletes).await;
    assert_eq!(summary(&r), vec![(EventType::Delete, "h/a".into(), r3)]);
    node.stop().await;
}

/// Live events carry the previous values a watcher asks for, though writes no longer read
/// them: overwrites, a transaction, `ignore_value`, single and range deletes, and a re-create.
#[tokio::test]
async fn live_events_carry_prev_kv_to_watchers_that_ask() {
    let mut node = TestNode::start().await;
    let mut c = client(&node).await;
    let mut with_prev = c
        .watch(
            "p/",
            Some(WatchOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();
    assert!(next(&mut with_prev).await.created());
    let mut without = c
        .watch("p/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    assert!(next(&mut without).await.created());

    c.put("p/a", "1", None).await.unwrap();
    c.put("p/a", "2", None).await.unwrap();
    c.txn(Txn::new().and_then([TxnOp::put("p/a", "3", None), TxnOp::put("p/b", "1", None)]))
        .await
        .unwrap();
    c.put("p/a", "", Some(PutOptions::new().with_ignore_value()))
        .await
        .unwrap();
    c.delete("p/a", None).await.unwrap();
    c.delete("p/", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    c.put("p/a", "4", None).await.unwrap();

    type Seen = Vec<(EventType, String, String, Option<String>)>;
    async fn collect(w: &mut WatchStream) -> Seen {
        let mut seen = Vec::new();
        while seen.len() < 8 {
            for e in next_events(w).await.events() {
                let kv = e.kv().unwrap();
                seen.push((
                    e.event_type(),
                    kv.key_str().unwrap().to_string(),
                    kv.value_str().unwrap().to_string(),
                    e.prev_kv().map(|p| p.value_str().unwrap().to_string()),
                ));
            }
        }
        seen
    }
    let (put, del) = (EventType::Put, EventType::Delete);
    let s = |v: &str| v.to_string();
    let want: Seen = vec![
        (put, s("p/a"), s("1"), None),
        (put, s("p/a"), s("2"), Some(s("1"))),
        (put, s("p/a"), s("3"), Some(s("2"))),
        (put, s("p/b"), s("1"), None),
        (put, s("p/a"), s("3"), Some(s("3"))),
        (del, s("p/a"), s(""), Some(s("3"))),
        (del, s("p/b"), s(""), Some(s("1"))),
        (put, s("p/a"), s("4"), None),
    ];
    assert_eq!(collect(&mut with_prev).await, want);
    let plain: Seen = want
        .into_iter()
        .map(|(t, k, v, _)| (t, k, v, None))
        .collect();
    assert_eq!(collect(&mut without).await, plain);
    node.stop().await;
}

#[tokio::test]
async fn many_watchers_on_one_stream_cancel_and_progress() {
    let mut node = TestNode::start().await;
    let mut c = client(&node).await;
    let mut w = c
        .watch("m/0", Some(WatchOptions::new().with_watch_id(100)))
        .await
        .unwrap();
    assert_eq!(next(&mut w).await.watch_id(), 100);
    for i in 1..10 {
        w.watch(
            format!("m/{i}"),
            Some(WatchOptions::new().with_watch_id(100 + i)),
        )
        .await
        .unwrap();
        let r = next(&mut w).await;
        assert!(r.created());
        assert_eq!(r.watch_id(), 100 + i);
    }
    // A duplicate id is refused on the stream.
    w.watch("m/0", Some(WatchOptions::new().with_watch_id(100)))
        .await
        .unwrap();
    let dup = next(&mut w).await;
    assert!(dup.canceled(), "duplicate watch id must be refused");

    for i in 0..10 {
        c.put(format!("m/{i}"), "v", None).await.unwrap();
    }
    let mut ids = Vec::new();
    while ids.len() < 10 {
        let r = next_events(&mut w).await;
        assert_eq!(r.events().len(), 1);
        let key = r.events()[0].kv().unwrap().key_str().unwrap().to_string();
        assert_eq!(
            key,
            format!("m/{}", r.watch_id() - 100),
            "events go to the watcher that asked"
        );
        ids.push(r.watch_id());
    }
    assert_eq!(ids, (100..110).collect::<Vec<_>>(), "ordered by revision");

    w.cancel(105).await.unwrap();
    let canceled = next(&mut w).await;
    assert!(canceled.canceled());
    assert_eq!(canceled.watch_id(), 105);
    c.put("m/5", "again", None).await.unwrap();
    let last = common::put_rev(&mut c, "m/6", "again").await;
    let r = next_events(&mut w).await;
    assert_eq!(r.watch_id(), 106, "the canceled watcher gets nothing");

    w.request_progress().await.unwrap();
    let progress = next(&mut w).await;
    assert!(progress.events().is_empty() && !progress.created() && !progress.canceled());
    assert!(progress.header().unwrap().revision() >= last);
    node.stop().await;
}

#[tokio::test]
async fn compacted_start_revision_cancels_with_compact_revision() {
    let mut node = TestNode::start().await;
    let mut c = client(&node).await;
    let first = common::put_rev(&mut c, "c", "1").await;
    c.put("c", "2", None).await.unwrap();
    let rev = common::put_rev(&mut c, "c", "3").await;
    c.compact(rev, None).await.unwrap();
    let mut w = c
        .watch("c", Some(WatchOptions::new().with_start_revision(first)))
        .await
        .unwrap();
    let r = next_events(&mut w).await;
    assert!(r.canceled());
    assert_eq!(r.compact_revision(), rev);
    assert!(
        r.cancel_reason().contains("compacted"),
        "{}",
        r.cancel_reason()
    );
    node.stop().await;
}

#[tokio::test]
async fn a_stalled_watcher_does_not_stall_writers_and_catches_up_without_gaps() {
    let mut node = TestNode::start().await;
    let mut c = client(&node).await;
    // A raw stream whose responses nobody reads for a while.
    let mut raw = WatchClient::connect(node.url()).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: b"s/".to_vec(),
                range_end: b"s0".to_vec(),
                ..Default::default()
            },
        )),
    })
    .await
    .unwrap();
    let mut stalled = raw
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();

    let value = vec![b'x'; 16 * 1024];
    let writes = 600;
    let started = std::time::Instant::now();
    let mut last = 0;
    for i in 0..writes {
        last = common::put_rev(&mut c, format!("s/{i:04}"), value.clone()).await;
    }
    // ~10 MB of events is far beyond what the stalled stream buffers; writers were not held up by it.
    assert!(started.elapsed() < Duration::from_secs(60));

    let mut revs = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while revs.len() < writes {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {writes} events arrived",
            revs.len()
        );
        let r = tokio::time::timeout(Duration::from_secs(10), stalled.message())
            .await
            .expect("response in time")
            .unwrap()
            .expect("stream open");
        revs.extend(r.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision));
    }
    let expected: Vec<i64> = (last - writes as i64 + 1..=last).collect();
    assert_eq!(revs, expected, "every event exactly once, in order");
    drop(tx);
    node.stop().await;
}

#[tokio::test]
async fn watch_sees_deletes_from_delete_range_and_txn_atomically() {
    let mut node = TestNode::start().await;
    let mut c = client(&node).await;
    let mut w = c
        .watch("t/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    next(&mut w).await;
    let txn = etcd_client::Txn::new().and_then([
        etcd_client::TxnOp::put("t/1", "a", None),
        etcd_client::TxnOp::put("t/2", "b", None),
        etcd_client::TxnOp::put("t/3", "c", None),
    ]);
    let rev = c.txn(txn).await.unwrap().header().unwrap().revision();
    let r = next_events(&mut w).await;
    assert_eq!(r.events().len(), 3, "one revision's events arrive together");
    assert!(r
        .events()
        .iter()
        .all(|e| e.kv().unwrap().mod_revision() == rev));
    let del = c
        .delete("t/", Some(etcd_client::DeleteOptions::new().with_prefix()))
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let r = next_events(&mut w).await;
    assert_eq!(summary(&r).len(), 3);
    assert!(summary(&r)
        .iter()
        .all(|(t, _, m)| *t == EventType::Delete && *m == del));
    assert!(c
        .get("t/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap()
        .kvs()
        .is_empty());
    node.stop().await;
}
