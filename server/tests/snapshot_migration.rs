//! Moving between etcd and Cairn through snapshot files: a real etcd 3.4's `etcdctl snapshot save`
//! restored by `cairn --restore-from`, and a Cairn backup taken with `etcdctl snapshot save`,
//! checked by `etcdctl snapshot status`, restored by `etcdctl snapshot restore` and served by a
//! real etcd. Both sides must then answer the same: keys, values, create and mod revisions,
//! versions, leases and their keys, the history after the compaction point, the compaction point
//! itself and the current revision.

use crate::common;

use std::time::Instant;

use common::etcd::{etcd_present, Etcd};
use common::etcdctl::Ctl;
use common::{connect, free_ports, wait_serving, ProcessCluster, TestNode};
use etcd_client::{
    Client, CompactionOptions, GetOptions, LeaseTimeToLiveOptions, PutOptions, Txn, TxnOp,
};

const KEYS: usize = 10_000;
/// The etcd member's name, also given to `etcdctl snapshot restore`.
const ETCD_NAME: &str = "etcd0";

fn key(i: usize) -> String {
    format!("k/{i:05}")
}

/// Writes the same history to any store: 10,000 keys in transactions of 100, leased keys,
/// overwrites, deletes, a compaction, then more overwrites, deletes, re-creations and values
/// larger than a page after it.
/// Returns the compaction revision.
async fn load(c: &mut Client) -> i64 {
    async fn puts(c: &mut Client, keys: Vec<usize>, round: usize) {
        for batch in keys.chunks(100) {
            let ops = batch
                .iter()
                .map(|i| TxnOp::put(key(*i), format!("v{round}-{i}"), None))
                .collect::<Vec<_>>();
            c.txn(Txn::new().and_then(ops)).await.expect("txn of puts");
        }
    }
    async fn deletes(c: &mut Client, keys: Vec<usize>) {
        for batch in keys.chunks(100) {
            let ops = batch
                .iter()
                .map(|i| TxnOp::delete(key(*i), None))
                .collect::<Vec<_>>();
            c.txn(Txn::new().and_then(ops))
                .await
                .expect("txn of deletes");
        }
    }
    puts(c, (0..KEYS).collect(), 0).await;
    for l in 0..3 {
        let lease = c.lease_grant(600 + l, None).await.expect("grant").id();
        for j in 0..5 {
            let opts = PutOptions::new().with_lease(lease);
            c.put(format!("lease/{l}/{j}"), "leased", Some(opts))
                .await
                .expect("leased put");
        }
    }
    c.lease_grant(900, None)
        .await
        .expect("a lease with no keys");
    puts(c, (0..KEYS).filter(|i| i % 5 == 0).collect(), 1).await;
    deletes(c, (0..KEYS).filter(|i| i % 20 == 1).collect()).await;
    let rev = c
        .get("k/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let compact = rev - 3;
    c.compact(compact, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    puts(c, (0..KEYS).filter(|i| i % 10 == 3).collect(), 2).await;
    deletes(c, (0..KEYS).filter(|i| i % 100 == 7).collect()).await;
    puts(c, (0..KEYS).filter(|i| i % 200 == 1).collect(), 3).await;
    // Values larger than a page: bbolt stores them in overflow pages.
    for i in 0..3 {
        c.put(
            format!("big/{i}"),
            vec![b'0' + i; 20_000 + i as usize],
            None,
        )
        .await
        .expect("a big put");
    }
    c.put("last", "written", None).await.expect("put");
    compact
}

/// Everything a client can see of a range read: the header revision and each key's fields, or
/// the error.
async fn read_all(c: &mut Client, revision: i64) -> Result<(i64, Vec<String>), String> {
    let opts = GetOptions::new().with_all_keys().with_revision(revision);
    match c.get("", Some(opts)).await {
        Ok(resp) => Ok((
            resp.header().unwrap().revision(),
            resp.kvs()
                .iter()
                .map(|kv| {
                    format!(
                        "{}={} c{} m{} v{} l{:x}",
                        String::from_utf8_lossy(kv.key()),
                        String::from_utf8_lossy(kv.value()),
                        kv.create_revision(),
                        kv.mod_revision(),
                        kv.version(),
                        kv.lease()
                    )
                })
                .collect(),
        )),
        Err(etcd_client::Error::GRpcStatus(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
        Err(e) => panic!("read at {revision}: {e}"),
    }
}

/// Every lease: id, granted TTL and attached keys.
async fn leases(c: &mut Client) -> Vec<(i64, i64, Vec<String>)> {
    let mut ids: Vec<i64> = c
        .leases()
        .await
        .expect("leases")
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    ids.sort_unstable();
    let mut out = Vec::new();
    for id in ids {
        let ttl = c
            .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .expect("time to live");
        let mut keys: Vec<String> = ttl
            .keys()
            .iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        keys.sort();
        out.push((id, ttl.granted_ttl(), keys));
    }
    out
}

/// Both stores answer alike: now, at revisions after the compaction, at the compaction point and
/// below it, and about leases.
async fn assert_same(from: &mut Client, to: &mut Client, compact: i64) {
    let (now, kvs) = read_all(from, 0).await.expect("read the source");
    assert!(kvs.len() > KEYS - 600, "{} keys", kvs.len());
    assert_eq!(read_all(to, 0).await, Ok((now, kvs)), "the latest revision");
    for rev in [
        compact - 1,
        compact,
        compact + 1,
        (compact + now) / 2,
        now - 1,
    ] {
        let want = read_all(from, rev).await;
        let got = read_all(to, rev).await;
        assert_eq!(
            got.as_ref().map(|(_, kvs)| kvs),
            want.as_ref().map(|(_, kvs)| kvs),
            "at {rev}"
        );
        if rev < compact {
            assert!(want.unwrap_err().contains("compacted"));
        }
    }
    let leases_from = leases(from).await;
    assert_eq!(leases_from.len(), 4, "{leases_from:?}");
    assert_eq!(leases(to).await, leases_from);
    eprintln!(
        "alike: {} keys at revision {now}, compacted at {compact}, {} leases",
        read_all(to, 0).await.unwrap().1.len(),
        leases_from.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_snapshot_restores_into_cairn_as_it_was() {
    if !etcd_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(ETCD_NAME, &dir.path().join("etcd"), free_ports(1)[0]);
    let mut source = etcd.client().await;
    let compact = load(&mut source).await;
    let file = dir.path().join("etcd.db");
    let file_name = file.to_str().unwrap();
    let saved = Ctl {
        endpoint: etcd.url(),
    }
    .ok(&["snapshot", "save", file_name])
    .await;
    assert!(saved.contains("Snapshot saved"), "{saved}");

    let started = Instant::now();
    let mut cluster = ProcessCluster::define(1, &[]);
    let initial = cluster.initial_cluster_of(&[0]);
    cluster.spawn_with(0, &initial, &["--restore-from", file_name]);
    wait_serving(&cluster, &[0]).await;
    eprintln!(
        "restored {} bytes in {:?}",
        std::fs::metadata(&file).unwrap().len(),
        started.elapsed()
    );
    let mut restored = connect(&cluster.members[0].url()).await.unwrap();
    assert_same(&mut source, &mut restored, compact).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cairn_backup_restores_into_etcd_as_it_was() {
    if !etcd_present() {
        return;
    }
    let node = TestNode::start().await;
    let mut source = connect(&node.url()).await.unwrap();
    let compact = load(&mut source).await;
    let now = source
        .get("last", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cairn.db");
    let file_name = file.to_str().unwrap();
    let ctl = Ctl {
        endpoint: node.url(),
    };
    let saved = ctl.ok(&["snapshot", "save", file_name]).await;
    assert!(saved.contains("Snapshot saved"), "{saved}");

    let status = ctl
        .ok(&["snapshot", "status", file_name, "-w", "json"])
        .await;
    let field = |name: &str| -> i64 {
        let at = status.find(&format!("\"{name}\":")).expect(name) + name.len() + 3;
        status[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(field("revision"), now, "{status}");
    assert!(field("totalKey") > KEYS as i64, "{status}");
    assert!(field("hash") != 0, "{status}");
    eprintln!("etcdctl snapshot status: {}", status.trim());

    let peer_port = free_ports(1)[0];
    let data_dir = dir.path().join("etcd");
    let restored = ctl
        .ok(&[
            "snapshot",
            "restore",
            file_name,
            "--name",
            ETCD_NAME,
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--initial-cluster",
            &format!("{}={}", ETCD_NAME, Etcd::peer_url(peer_port)),
            "--initial-advertise-peer-urls",
            &Etcd::peer_url(peer_port),
        ])
        .await;
    assert!(
        restored.is_empty() || !restored.contains("Error"),
        "{restored}"
    );
    let etcd = Etcd::start(ETCD_NAME, &data_dir, peer_port);
    let mut target = etcd.client().await;
    assert_same(&mut source, &mut target, compact).await;

    // etcd keeps writing into the file it was given: its pages are bbolt's own to rewrite.
    let rev = target
        .put("after", "restore", None)
        .await
        .expect("a write on the restored etcd")
        .header()
        .unwrap()
        .revision();
    assert_eq!(rev, now + 1);
    target
        .delete("k/", Some(etcd_client::DeleteOptions::new().with_prefix()))
        .await
        .expect("a delete of most keys");
    target
        .compact(rev + 1, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("a compaction on the restored etcd");
    let left = target
        .get("", Some(GetOptions::new().with_all_keys().with_keys_only()))
        .await
        .unwrap();
    assert_eq!(left.kvs().len(), 15 + 3 + 2, "leased, big, last and after");
}
