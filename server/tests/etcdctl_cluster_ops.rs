//! Operating a cluster of real `cairn` processes with the real `etcdctl` (v3.4), the way an etcd
//! operator would: grow it with `member add` (using the environment etcdctl prints to start the new
//! member), promote a learner, check it with `endpoint status|health|hashkv --cluster`, remove a
//! member, back it up with `snapshot save`, `defrag`, and restore the backup into a new cluster.

use crate::common;

use std::time::{Duration, Instant};

use common::etcdctl::{etcdctl_present, Ctl};
use common::{wait_serving, ProcessCluster};

/// Value of `NAME="value"` in etcdctl's `member add` output.
fn env_value<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=\"")))
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no {name} in {out}"))
}

/// The hex member id in "Member <id> added to cluster <id>".
fn added_id(out: &str) -> String {
    out.split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no member id in {out}"))
        .to_string()
}

/// Runs etcdctl until it succeeds and `check` accepts its output, for at most `secs`.
async fn until(ctl: &Ctl, args: &[&str], secs: u64, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let out = ctl.run_with_input(args, None).await;
        if out.ok && check(&out.stdout) {
            return out.stdout;
        }
        assert!(
            Instant::now() < deadline,
            "etcdctl {args:?} never gave the expected answer: {}{}",
            out.stdout,
            out.stderr
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_grows_checks_shrinks_backs_up_and_restores_a_cluster() {
    if !etcdctl_present() {
        return;
    }
    let mut cluster = ProcessCluster::define(4, &[]);
    cluster.spawn_with(0, &cluster.initial_cluster_of(&[0]), &[]);
    wait_serving(&cluster, &[0]).await;
    let ctl = Ctl {
        endpoint: cluster.members[0].url(),
    };
    ctl.ok(&["put", "greeting", "hello"]).await;

    // A learner, started from the environment etcdctl prints, then promoted.
    let peer1 = format!("--peer-urls={}", cluster.peer_url(1));
    let out = ctl.ok(&["member", "add", "m1", &peer1, "--learner"]).await;
    let m1 = added_id(&out);
    assert_eq!(env_value(&out, "ETCD_INITIAL_CLUSTER_STATE"), "existing");
    let initial = env_value(&out, "ETCD_INITIAL_CLUSTER").to_string();
    let sorted = |s: &str| {
        let mut v: Vec<String> = s.split(',').map(String::from).collect();
        v.sort();
        v
    };
    assert_eq!(
        sorted(&initial),
        sorted(&cluster.initial_cluster_of(&[0, 1]))
    );
    let table = ctl.ok(&["member", "list", "-w", "table"]).await;
    assert!(table.contains("unstarted"), "{table}");
    cluster.spawn_with(1, &initial, &["--initial-cluster-state", "existing"]);
    until(&ctl, &["member", "promote", &m1], 60, |_| true).await;

    // A voter.
    let peer2 = format!("--peer-urls={}", cluster.peer_url(2));
    let out = ctl.ok(&["member", "add", "m2", &peer2]).await;
    let initial = env_value(&out, "ETCD_INITIAL_CLUSTER").to_string();
    cluster.spawn_with(2, &initial, &["--initial-cluster-state", "existing"]);
    let table = until(&ctl, &["member", "list", "-w", "table"], 60, |t| {
        t.matches("| started |").count() == 3 && !t.contains("true")
    })
    .await;
    for name in ["m0", "m1", "m2"] {
        assert!(table.contains(&format!(" {name} ")), "{table}");
    }

    // Every member is reachable through the client URLs it published.
    let status = ctl
        .ok(&["endpoint", "status", "--cluster", "-w", "table"])
        .await;
    assert_eq!(status.matches("http://127.0.0.1:").count(), 3, "{status}");
    assert_eq!(status.matches("3.5.13").count(), 3, "{status}");
    // etcdctl 3.4 prints health verdicts on stderr.
    let health = ctl
        .run_with_input(&["endpoint", "health", "--cluster"], None)
        .await;
    assert!(health.ok, "{}", health.stderr);
    assert_eq!(
        health.stderr.matches("is healthy").count(),
        3,
        "{}",
        health.stderr
    );
    until(&ctl, &["endpoint", "hashkv", "--cluster"], 30, |out| {
        let hashes: std::collections::BTreeSet<&str> =
            out.lines().filter_map(|l| l.rsplit(", ").next()).collect();
        out.lines().count() == 3 && hashes.len() == 1
    })
    .await;

    // Hand leadership from the founder to m1.
    let everyone = Ctl {
        endpoint: cluster.endpoints()[..3].join(","),
    };
    let moved = everyone.ok(&["move-leader", &m1]).await;
    assert!(moved.contains("Leadership transferred"), "{moved}");
    let m1_decimal = u64::from_str_radix(&m1, 16).unwrap().to_string();
    let via1 = Ctl {
        endpoint: cluster.members[1].url(),
    };
    let st = via1.ok(&["endpoint", "status", "-w", "json"]).await;
    assert!(st.contains(&format!("\"leader\":{m1_decimal}")), "{st}");
    via1.ok(&["put", "after-move", "yes"]).await;

    // Shrink: remove m0 through m1; m0 leaves and the other two keep serving.
    let list = via1.ok(&["member", "list"]).await;
    let m0 = list
        .lines()
        .find(|l| l.contains(", m0, "))
        .and_then(|l| l.split(',').next())
        .expect("m0 listed")
        .to_string();
    via1.ok(&["member", "remove", &m0]).await;
    assert!(
        cluster.wait_exit(0, Duration::from_secs(15)),
        "m0 did not leave"
    );
    let list = until(&via1, &["member", "list"], 30, |l| l.lines().count() == 2).await;
    assert!(!list.contains(", m0, "), "{list}");
    until(&via1, &["put", "after-shrink", "yes"], 30, |_| true).await;

    // Back up, defragment, restore into a new single-member cluster at the same revision.
    let revision = |json: &str| -> i64 {
        let at = json.find("\"revision\":").expect("revision in json") + 11;
        json[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let before = revision(&via1.ok(&["get", "greeting", "-w", "json"]).await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.db");
    let saved = via1.ok(&["snapshot", "save", file.to_str().unwrap()]).await;
    assert!(saved.contains("Snapshot saved"), "{saved}");
    assert!(via1
        .ok(&["defrag"])
        .await
        .contains("Finished defragmenting"));
    cluster.spawn_with(
        3,
        &cluster.initial_cluster_of(&[3]),
        &["--restore-from", file.to_str().unwrap()],
    );
    wait_serving(&cluster, &[3]).await;
    let restored = Ctl {
        endpoint: cluster.members[3].url(),
    };
    let got = restored.ok(&["get", "greeting", "-w", "json"]).await;
    assert_eq!(revision(&got), before, "{got}");
    assert_eq!(
        restored
            .ok(&["get", "after-shrink", "--print-value-only"])
            .await,
        "yes\n"
    );
    let members = restored.ok(&["member", "list"]).await;
    assert_eq!(members.lines().count(), 1, "a new cluster: {members}");
}
