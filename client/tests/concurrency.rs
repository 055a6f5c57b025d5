//! Session, Mutex, Election and Namespace through real gRPC, against `cairn` and (when installed) `etcd`.

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_client::{Client, Election, GetOptions, Mutex, Namespace, Session, WatchOptions};
use common::{unique, Cluster};
use futures::StreamExt;
use tokio::time::{sleep, timeout};

async fn mutex_suite(c: &Client, label: &str) {
    let name = unique("lock");
    let s1 = Session::new(c, 10).await.unwrap();
    let s2 = Session::new(c, 10).await.unwrap();
    let mut m1 = Mutex::new(&s1, name.clone());
    let mut m2 = Mutex::new(&s2, name.clone());
    let f1 = m1.lock().await.unwrap();
    let waiter = tokio::spawn(async move {
        let f = m2.lock().await.unwrap();
        (m2, f)
    });
    sleep(Duration::from_millis(500)).await;
    assert!(
        !waiter.is_finished(),
        "{label}: second locker got a held lock"
    );
    m1.unlock().await.unwrap();
    let (mut m2, f2) = timeout(Duration::from_secs(10), waiter)
        .await
        .expect("second locker never got the lock")
        .unwrap();
    assert!(
        f2.revision > f1.revision,
        "{label}: fencing did not increase"
    );
    m2.unlock().await.unwrap();

    // A holder whose session closes releases the lock.
    let s3 = Session::new(c, 10).await.unwrap();
    let mut m3 = Mutex::new(&s3, name.clone());
    let f3 = m3.lock().await.unwrap();
    s3.close().await.unwrap();
    let mut m1 = Mutex::new(&s1, name.clone());
    let f4 = timeout(Duration::from_secs(10), m1.lock())
        .await
        .unwrap()
        .unwrap();
    assert!(f4.revision > f3.revision, "{label}");
    m1.unlock().await.unwrap();
    s1.close().await.unwrap();
    s2.close().await.unwrap();
}

async fn next<S>(s: &mut S) -> cairn_client::proto::KeyValue
where
    S: futures::Stream<Item = cairn_client::Result<cairn_client::proto::KeyValue>> + Unpin,
{
    timeout(Duration::from_secs(10), s.next())
        .await
        .expect("observe delivered nothing")
        .expect("observe ended")
        .unwrap()
}

async fn election_suite(c: &Client, label: &str) {
    let name = unique("elect");
    let sa = Session::new(c, 10).await.unwrap();
    let sb = Session::new(c, 10).await.unwrap();
    let mut a = Election::new(&sa, name.clone());
    let mut b = Election::new(&sb, name.clone());
    let observer = Election::observer(c, name.clone());
    let mut seen = observer.observe();

    let la = a.campaign("a1").await.unwrap();
    assert_eq!(next(&mut seen).await.value, b"a1", "{label}");
    let b_campaign = tokio::spawn(async move {
        let l = b.campaign("b1").await.unwrap();
        (b, l)
    });
    a.proclaim("a2").await.unwrap();
    assert_eq!(next(&mut seen).await.value, b"a2", "{label}");
    assert_eq!(
        observer.leader().await.unwrap().unwrap().value,
        b"a2",
        "{label}"
    );
    sleep(Duration::from_millis(300)).await;
    assert!(!b_campaign.is_finished(), "{label}: two leaders");
    a.resign().await.unwrap();
    // A resigned leader cannot proclaim.
    assert!(a.proclaim("late").await.is_err(), "{label}");
    let (mut b, lb) = timeout(Duration::from_secs(10), b_campaign)
        .await
        .unwrap()
        .unwrap();
    assert!(lb.revision > la.revision, "{label}");
    assert_eq!(next(&mut seen).await.value, b"b1", "{label}");
    b.resign().await.unwrap();
    sa.close().await.unwrap();
    sb.close().await.unwrap();
}

async fn namespace_suite(c: &Client, label: &str) {
    let root = unique("ns");
    let ns = Namespace::new(c, format!("{root}inner/"));
    c.put(format!("{root}outer"), "x", None).await.unwrap();
    let mut w = ns
        .watch("", Some(WatchOptions::new().with_from_key().with_prev_kv()))
        .await
        .unwrap();
    ns.put("a", "1", None).await.unwrap();
    ns.put("b", "2", None).await.unwrap();
    let all = ns
        .get("", Some(GetOptions::new().with_from_key()))
        .await
        .unwrap();
    let keys: Vec<_> = all.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, vec![b"a".to_vec(), b"b".to_vec()], "{label}");
    // Seen from outside, keys carry the prefix.
    let outside = c.get(format!("{root}inner/a"), None).await.unwrap();
    assert_eq!(outside.count, 1, "{label}");
    let batch = timeout(Duration::from_secs(10), w.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(batch.events[0].kv.as_ref().unwrap().key, b"a", "{label}");
    let d = ns
        .delete(
            "",
            Some(
                cairn_client::DeleteOptions::new()
                    .with_from_key()
                    .with_prev_kv(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        d.deleted, 2,
        "{label}: a namespaced delete escaped its prefix"
    );
    assert_eq!(d.prev_kvs[0].key, b"a", "{label}");
    assert_eq!(
        c.get(format!("{root}outer"), None).await.unwrap().count,
        1,
        "{label}"
    );
}

#[tokio::test]
async fn recipes_on_cairn_and_etcd() {
    let clusters = Cluster::each_single().await;
    let runs = clusters.iter().map(|cluster| async move {
        let c = cluster.client().await;
        let label = format!("{:?}", cluster.kind);
        mutex_suite(&c, &label).await;
        election_suite(&c, &label).await;
        namespace_suite(&c, &label).await;
    });
    futures::future::join_all(runs).await;
}

#[tokio::test]
async fn mutex_contenders_never_overlap_on_a_three_member_cluster() {
    let cluster = Cluster::cairn(3).await;
    let held = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..2 {
        // Separate clients with different preferred members: contention crosses members.
        let mut eps = cluster.endpoints();
        eps.rotate_left(i);
        let c = Client::connect(eps, Some(common::options())).await.unwrap();
        let held = held.clone();
        tasks.push(tokio::spawn(async move {
            let session = Session::new(&c, 5).await.unwrap();
            let mut fences = Vec::new();
            for _ in 0..8 {
                let mut m = Mutex::new(&session, "contended");
                let f = m.lock().await.unwrap();
                assert!(!held.swap(true, Ordering::SeqCst), "two holders at once");
                sleep(Duration::from_millis(20)).await;
                held.store(false, Ordering::SeqCst);
                m.unlock().await.unwrap();
                fences.push(f.revision);
            }
            fences
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let fences = timeout(Duration::from_secs(60), t).await.unwrap().unwrap();
        assert!(fences.windows(2).all(|w| w[0] < w[1]), "{fences:?}");
        all.extend(fences);
    }
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 16, "fencing revisions repeated");
}
