//! etcd compatibility through the real `etcdctl` (v3.4) binary. Skips, saying why, when etcdctl is
//! not installed; the test script installs it.

use crate::common;

use std::process::Stdio;

use common::etcdctl::{etcdctl_present, Ctl};
use common::TestNode;

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

#[tokio::test]
async fn etcdctl_put_get_del_txn_compaction() {
    if !etcdctl_present() {
        return;
    }
    let mut node = TestNode::start().await;
    let ctl = Ctl {
        endpoint: node.url().trim_start_matches("http://").to_string(),
    };

    for (k, v) in [("a", "1"), ("b", "2"), ("b/x", "3"), ("c", "4")] {
        assert_eq!(ctl.ok(&["put", k, v]).await.trim(), "OK");
    }
    assert_eq!(lines(&ctl.ok(&["get", "a"]).await), ["a", "1"]);
    assert_eq!(
        lines(&ctl.ok(&["get", "b", "--prefix", "--keys-only"]).await),
        ["b", "", "b/x", ""]
    );
    assert_eq!(
        lines(&ctl.ok(&["get", "a", "c"]).await),
        ["a", "1", "b", "2", "b/x", "3"]
    );
    assert_eq!(
        lines(
            &ctl.ok(&["get", "b/x", "--from-key", "--print-value-only"])
                .await
        ),
        ["3", "4"]
    );
    assert_eq!(
        lines(
            &ctl.ok(&[
                "get",
                "",
                "--prefix",
                "--limit=2",
                "--order=DESCEND",
                "--sort-by=KEY",
                "--keys-only"
            ])
            .await
        ),
        ["c", "", "b/x", ""]
    );
    let json = ctl
        .ok(&["get", "", "--prefix", "--keys-only", "-w", "json"])
        .await;
    assert!(json.contains("\"count\":4"), "{json}");

    // History: overwrite, then read the old value at its revision.
    let rev_of = |json: &str| -> i64 {
        let at = json.find("\"revision\":").expect("revision in header") + "\"revision\":".len();
        json[at..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect::<String>()
            .parse()
            .unwrap()
    };
    let first = rev_of(&ctl.ok(&["put", "a", "one", "-w", "json"]).await);
    ctl.ok(&["put", "a", "two"]).await;
    assert_eq!(
        lines(
            &ctl.ok(&["get", "a", &format!("--rev={first}"), "--print-value-only"])
                .await
        ),
        ["one"]
    );

    // Transaction from stdin: compares, blank line, success ops, blank line, failure ops.
    let txn = "value(\"a\") = \"two\"\n\nput a three\nget b\n\nput a never\n\n";
    let out = ctl.run_with_input(&["txn"], Some(txn)).await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(lines(&out.stdout), ["SUCCESS", "", "OK", "", "b", "2"]);
    let txn = "value(\"a\") = \"two\"\n\nput a never\n\nget a\n\n";
    let out = ctl.run_with_input(&["txn"], Some(txn)).await;
    assert_eq!(lines(&out.stdout), ["FAILURE", "", "a", "three"]);

    assert_eq!(ctl.ok(&["del", "b", "--prefix"]).await.trim(), "2");
    assert_eq!(ctl.ok(&["get", "b", "--prefix"]).await, "");

    // Compaction, then a read below it fails with etcd's text.
    let now = rev_of(&ctl.ok(&["get", "a", "-w", "json"]).await);
    assert_eq!(
        ctl.ok(&["compaction", &now.to_string()]).await.trim(),
        format!("compacted revision {now}")
    );
    let err = ctl.fails(&["get", "a", &format!("--rev={first}")]).await;
    assert!(
        err.contains("etcdserver: mvcc: required revision has been compacted"),
        "{err}"
    );

    let err = ctl.fails(&["put", "", "v"]).await;
    assert!(err.contains("etcdserver: key is not provided"), "{err}");
    assert_eq!(
        lines(&ctl.ok(&["get", "a", "--print-value-only"]).await),
        ["three"]
    );
    node.stop().await;
}

/// Runs a long-lived etcdctl command (watch) until `want` lines arrived on stdout, then stops it.
async fn collect_lines(endpoint: &str, args: &[&str], want: usize) -> Vec<String> {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(endpoint)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn etcdctl");
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut lines = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while lines.len() < want {
        match tokio::time::timeout_at(deadline, out.next_line()).await {
            Ok(Ok(Some(l))) => lines.push(l),
            _ => break,
        }
    }
    let _ = child.kill().await;
    lines
}

#[tokio::test]
async fn etcdctl_watch_lease_and_lock() {
    if !etcdctl_present() {
        return;
    }
    let mut node = TestNode::start().await;
    let endpoint = node.url().trim_start_matches("http://").to_string();
    let ctl = Ctl {
        endpoint: endpoint.clone(),
    };

    // watch --rev --prefix --prev-kv replays history, then follows.
    ctl.ok(&["put", "w/a", "1"]).await;
    let json = ctl.ok(&["put", "w/a", "2", "-w", "json"]).await;
    let at = json.find("\"revision\":").unwrap() + "\"revision\":".len();
    let second: i64 = json[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .unwrap();
    ctl.ok(&["del", "w/a"]).await;
    let lines = collect_lines(
        &endpoint,
        &[
            "watch",
            "--prefix",
            "w/",
            &format!("--rev={second}"),
            "--prev-kv",
        ],
        8,
    )
    .await;
    assert_eq!(
        lines,
        ["PUT", "w/a", "1", "w/a", "2", "DELETE", "w/a", "2"],
        "{lines:?}"
    );

    // lease grant / put --lease / timetolive --keys / keep-alive --once / list / revoke
    let out = ctl.ok(&["lease", "grant", "60"]).await;
    let id = out.split_whitespace().nth(1).expect("lease id").to_string();
    assert!(out.contains("granted with TTL(60s)"), "{out}");
    ctl.ok(&["put", "leased", "v", &format!("--lease={id}")])
        .await;
    let ttl = ctl.ok(&["lease", "timetolive", &id, "--keys"]).await;
    assert!(
        ttl.contains("granted with TTL(60s)") && ttl.contains("attached keys([leased])"),
        "{ttl}"
    );
    let ka = ctl.ok(&["lease", "keep-alive", "--once", &id]).await;
    assert!(
        ka.contains(&format!("lease {id} keepalived with TTL(60)")),
        "{ka}"
    );
    assert!(ctl.ok(&["lease", "list"]).await.contains(&id));
    let revoked = ctl.ok(&["lease", "revoke", &id]).await;
    assert!(revoked.contains("revoked"), "{revoked}");
    assert_eq!(ctl.ok(&["get", "leased"]).await, "");

    // lock runs a command while holding the lock (a lease-backed client-side recipe).
    let out = ctl.ok(&["lock", "mutex1", "echo", "inside"]).await;
    assert_eq!(out.trim(), "inside");
    assert_eq!(
        ctl.ok(&["get", "mutex1", "--prefix"]).await,
        "",
        "the lock key is gone after unlock"
    );
    node.stop().await;
}
