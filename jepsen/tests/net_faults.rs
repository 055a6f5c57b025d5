//! The peer proxies really partition real `cairn` members: a member cut off from the others
//! cannot serve linearizable reads while the majority can, and serves again once healed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cairn_jepsen::cluster::{Cluster, ClusterConfig};
use cairn_jepsen::workload::client::Conn;

fn cairn_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in target/<profile>/deps")
        .join("cairn");
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build -p cairn-server --bin cairn`",
        bin.display()
    );
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_member_stops_serving_until_healed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = Cluster::start(ClusterConfig {
        nodes: 3,
        cairn_bin: cairn_bin(),
        dir: dir.path().to_path_buf(),
        data_root: None,
        extra_args: Vec::new(),
        security: Default::default(),
    })
    .await
    .expect("cluster starts");
    cluster
        .wait_serving(&[0, 1, 2], Duration::from_secs(60))
        .await
        .expect("cluster serves");
    assert!(
        cluster.net.connections() >= 2,
        "peer traffic goes through the proxies"
    );
    assert_eq!(cluster.net.unidentified(), 0);

    cluster.net.partition(&[vec![0], vec![1, 2]]);
    let isolated = Conn::connect(
        &cluster.members[0].url(),
        cluster.options(),
        Duration::from_secs(2),
    );
    let majority = Conn::connect(
        &cluster.members[1].url(),
        cluster.options(),
        Duration::from_secs(2),
    );
    // The majority elects a leader if it needs one and keeps serving writes and reads.
    let deadline = Instant::now() + Duration::from_secs(30);
    while majority.put("k", "v", 0).await.is_err() {
        assert!(Instant::now() < deadline, "majority never served a write");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Give a leader that was on the isolated side time to step down, then expect failures.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        isolated.get("k", false).await.is_err(),
        "an isolated member answered a linearizable read"
    );
    let (kv, _) = isolated
        .get("k", true)
        .await
        .expect("serializable reads stay local");
    assert!(
        kv.is_none(),
        "the isolated member cannot have seen the write"
    );

    cluster.net.heal();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((Some(kv), _)) = isolated.get("k", false).await {
            assert_eq!(kv.value, "v");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the healed member never caught up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
