//! Live migration with the real `etcdctl make-mirror` (v3.4) between a real etcd 3.4 and a real
//! `cairn` process, both ways: the existing keys are copied, then live writes and deletes on the
//! source follow to the destination while make-mirror runs.
//!
//! The copies are checked by comparing every key and value. `etcdctl endpoint hashkv` cannot be
//! compared across the two systems: etcd hashes its bbolt rows (keys carry etcd's revisions and
//! the protobuf encoding of each KeyValue), so the same logical data mirrored into another
//! store lands at other revisions and hashes differently even between two etcds.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::etcdctl::etcdctl_present;
use common::{connect, free_ports, wait_serving, ProcessCluster};
use etcd_client::{Client, GetOptions};

/// One real etcd process on loopback; killed by pid when dropped.
struct Etcd {
    child: std::process::Child,
    url: String,
    log: std::path::PathBuf,
}

impl Etcd {
    fn start(dir: &Path, name: &str) -> Etcd {
        let ports = free_ports(2);
        let url = format!("http://127.0.0.1:{}", ports[0]);
        let peer = format!("http://127.0.0.1:{}", ports[1]);
        let log = dir.join(format!("{name}.log"));
        let child = std::process::Command::new("etcd")
            .arg("--name")
            .arg(name)
            .arg("--data-dir")
            .arg(dir.join(format!("{name}.etcd")))
            .arg("--listen-client-urls")
            .arg(&url)
            .arg("--advertise-client-urls")
            .arg(&url)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("{name}={peer}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("etcd log"))
            .spawn()
            .expect("spawn etcd");
        Etcd { child, url, log }
    }

    async fn wait_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(mut c) = connect(&self.url).await {
                if c.get("probe", None).await.is_ok() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not serve within 30 s: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
    if !etcdctl_present() {
        return;
    }
    if std::process::Command::new("etcd")
        .arg("--version")
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        eprintln!("SKIPPED: etcd is not installed (apt-get install etcd-server)");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let etcd_source = Etcd::start(dir.path(), "source");
    let etcd_dest = Etcd::start(dir.path(), "dest");
    let cairn = ProcessCluster::start(1);
    etcd_source.wait_serving().await;
    etcd_dest.wait_serving().await;
    wait_serving(&cairn, &[0]).await;

    // etcd -> Cairn.
    mirror_one_way(&etcd_source.url, &cairn.members[0].url(), "from-etcd").await;
    // Cairn -> etcd: Cairn now also holds the keys mirrored into it, and they go along.
    mirror_one_way(&cairn.members[0].url(), &etcd_dest.url, "from-cairn").await;

    let mut c = connect(&cairn.members[0].url()).await.expect("connect");
    let mut e = connect(&etcd_dest.url).await.expect("connect");
    let cairn_kvs = all_kvs(&mut c).await;
    // Per direction: 200 existing + 100 live - 100 deleted (existing/0100..0199).
    assert_eq!(cairn_kvs.len(), 400);
    assert_eq!(cairn_kvs, all_kvs(&mut e).await);
}
