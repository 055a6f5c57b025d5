//! Live migration with the real `etcdctl make-mirror` (v3.4) between a real etcd 3.4 and a real
//! `cairn` process, both ways: the existing keys are copied, then live writes and deletes on the
//! source follow to the destination while make-mirror runs.
//!
//! The copies are checked by comparing every key and value. `etcdctl endpoint hashkv` cannot be
//! compared across the two systems: etcd hashes its bbolt rows (keys carry etcd's revisions and
//! the protobuf encoding of each KeyValue), so the same logical data mirrored into another
//! store lands at other revisions and hashes differently even between two etcds.

use crate::common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::etcd::{etcd_present, Etcd};
use common::{connect, free_ports, wait_serving, ProcessCluster};
use etcd_client::{Client, GetOptions};

/// A running `etcdctl make-mirror`; killed by pid when dropped.
struct Mirror {
    child: tokio::process::Child,
}

impl Mirror {
    fn start(source: &str, dest: &str) -> Mirror {
        let child = tokio::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={source}"))
            .arg("make-mirror")
            .arg(dest)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn etcdctl make-mirror");
        Mirror { child }
    }

    /// Fails the test with make-mirror's error output if it has exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("make-mirror exited early with {status}");
        }
    }

    async fn stop(mut self) {
        self.child.start_kill().expect("kill make-mirror");
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// Every key and value in the store, in key order.
async fn all_kvs(c: &mut Client) -> Vec<(Vec<u8>, Vec<u8>)> {
    let resp = c
        .get(vec![0u8], Some(GetOptions::new().with_from_key()))
        .await
        .expect("range over all keys");
    resp.kvs()
        .iter()
        .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
        .collect()
}

/// Waits up to 30 s until `dest` holds exactly what `source` holds.
async fn wait_same(source: &mut Client, dest: &mut Client, mirror: &mut Mirror, what: &str) {
    let want = all_kvs(source).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = all_kvs(dest).await;
        if got == want {
            return;
        }
        mirror.assert_running();
        assert!(
            Instant::now() < deadline,
            "{what}: destination never matched the source within 30 s: {} keys there, {} wanted",
            got.len(),
            want.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Writes `n` keys `prefix/i` with values that differ per key.
async fn fill(c: &mut Client, prefix: &str, n: usize) {
    for i in 0..n {
        c.put(
            format!("{prefix}/{i:04}"),
            format!("{prefix}-value-{i}"),
            None,
        )
        .await
        .expect("put");
    }
}

/// Runs one direction: existing keys, then live puts, overwrites and deletes.
async fn mirror_one_way(source_url: &str, dest_url: &str, tag: &str) {
    let mut source = connect(source_url).await.expect("connect source");
    let mut dest = connect(dest_url).await.expect("connect dest");
    fill(&mut source, &format!("{tag}/existing"), 200).await;

    let mut mirror = Mirror::start(source_url, dest_url);
    wait_same(&mut source, &mut dest, &mut mirror, "existing keys").await;

    fill(&mut source, &format!("{tag}/live"), 100).await;
    source
        .put(format!("{tag}/existing/0000"), "overwritten", None)
        .await
        .expect("overwrite");
    source
        .delete(
            format!("{tag}/existing/01"),
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .expect("delete a prefix");
    wait_same(&mut source, &mut dest, &mut mirror, "live writes").await;
    assert_eq!(
        all_kvs(&mut dest)
            .await
            .iter()
            .find(|(k, _)| k == format!("{tag}/existing/0000").as_bytes())
            .map(|(_, v)| v.clone()),
        Some(b"overwritten".to_vec())
    );
    mirror.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn make_mirror_copies_and_follows_from_etcd_to_cairn_and_back() {
    if !etcd_present() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let etcd_source = Etcd::start("source", &dir.path().join("source.etcd"), free_ports(1)[0]);
    let etcd_dest = Etcd::start("dest", &dir.path().join("dest.etcd"), free_ports(1)[0]);
    let cairn = ProcessCluster::start(1);
    etcd_source.client().await;
    etcd_dest.client().await;
    wait_serving(&cairn, &[0]).await;

    // etcd -> Cairn.
    mirror_one_way(&etcd_source.url(), &cairn.members[0].url(), "from-etcd").await;
    // Cairn -> etcd: Cairn now also holds the keys mirrored into it, and they go along.
    mirror_one_way(&cairn.members[0].url(), &etcd_dest.url(), "from-cairn").await;

    let mut c = connect(&cairn.members[0].url()).await.expect("connect");
    let mut e = connect(&etcd_dest.url()).await.expect("connect");
    let cairn_kvs = all_kvs(&mut c).await;
    // Per direction: 200 existing + 100 live - 100 deleted (existing/0100..0199).
    assert_eq!(cairn_kvs.len(), 400);
    assert_eq!(cairn_kvs, all_kvs(&mut e).await);
}
