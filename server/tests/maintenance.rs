//! Maintenance and observability of one in-process member over real gRPC and HTTP: the space
//! quota and its alarm, alarm requests of type NONE, HashKV, auto compaction, `/metrics` (parsed
//! as Prometheus text), `/health` and the gRPC health service; and, on a cluster of `cairn`
//! processes, the answers of Defragment and MoveLeader and the agreement of Hash.

use crate::common;

use std::time::{Duration, Instant};

use common::etcdctl::{etcdctl_present, Ctl};
use common::{
    connect, leader_index, member_id, put_rev, status, wait_serving, ProcessCluster, TestNode,
};
use etcd_client::{AlarmAction, AlarmType, Client, GetOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn client(node: &TestNode) -> Client {
    Client::connect([node.url()], None).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_alarm_rejects_writes_until_space_is_freed_and_the_alarm_disarmed() {
    let node = TestNode::start_with(|c| cairn_server::Config {
        quota_backend_bytes: 64 * 1024,
        ..c
    })
    .await;
    let mut c = client(&node).await;
    let value = vec![b'x'; 1024];
    let mut written = 0;
    let err = loop {
        match c.put(format!("k{written}"), value.clone(), None).await {
            Ok(_) => written += 1,
            Err(e) => break status(e),
        }
        assert!(written < 1000, "the quota never tripped");
    };
    assert!(written > 40, "tripped too early, after {written} puts");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert_eq!(err.message(), "etcdserver: mvcc: database space exceeded");

    // Reads still work; the alarm is listed; Status reports it; every write that adds data fails.
    let all = c
        .get("k", Some(GetOptions::new().with_prefix().with_count_only()))
        .await
        .unwrap();
    assert_eq!(all.count(), written);
    let alarms = c
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .unwrap();
    assert_eq!(alarms.alarms().len(), 1);
    assert_eq!(alarms.alarms()[0].alarm(), AlarmType::Nospace);
    assert_eq!(
        alarms.alarms()[0].member_id(),
        node.node.as_ref().unwrap().member_id()
    );
    let s = c.status().await.unwrap();
    assert!(
        s.errors().iter().any(|e| e.contains("NOSPACE")),
        "{:?}",
        s.errors()
    );
    let small = c.put("tiny", "1", None).await.map_err(status).unwrap_err();
    assert_eq!(small.code(), tonic::Code::ResourceExhausted);
    assert!(c.lease_grant(60, None).await.is_err());

    // Disarming alone does not help: the next write trips the alarm again.
    c.alarm(AlarmAction::Deactivate, AlarmType::Nospace, None)
        .await
        .unwrap();
    assert!(c.put("tiny", "1", None).await.is_err());

    // Delete, compact, defragment, disarm: writes go through again.
    let deleted = c
        .delete("k", Some(etcd_client::DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    let rev = deleted.header().unwrap().revision();
    c.compact(rev, None).await.unwrap();
    c.defragment().await.unwrap();
    if etcdctl_present() {
        // etcdctl lists alarms as etcd does, and disarms every one of them.
        let ctl = Ctl {
            endpoint: node.url(),
        };
        let listed = ctl.ok(&["alarm", "list"]).await;
        let member = node.node.as_ref().unwrap().member_id();
        assert_eq!(listed, format!("memberID:{member} alarm:NOSPACE \n"));
        let disarmed = ctl.ok(&["alarm", "disarm"]).await;
        assert_eq!(disarmed, listed);
    } else {
        let alarms = c
            .alarm(AlarmAction::Get, AlarmType::None, None)
            .await
            .unwrap();
        for a in alarms.alarms() {
            let mut opts = etcd_client::AlarmOptions::new();
            opts.with_member(a.member_id());
            c.alarm(AlarmAction::Deactivate, a.alarm(), Some(opts))
                .await
                .unwrap();
        }
    }
    c.put("after", "ok", None)
        .await
        .expect("writes work after disarm");
    let alarms = c
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .unwrap();
    assert!(alarms.alarms().is_empty());
}

/// Raising or clearing alarm type NONE changes nothing and answers with no alarms, as etcd 3.5 does;
/// etcd client test suites send it to clear alarms before their checks.
#[tokio::test]
async fn alarm_raise_or_clear_of_type_none_changes_nothing() {
    let node = TestNode::start().await;
    let member = node.node.as_ref().unwrap().member_id();
    let mut c = client(&node).await;
    let mut mine = etcd_client::AlarmOptions::new();
    mine.with_member(member);
    let listed = |r: &etcd_client::AlarmResponse| -> Vec<(u64, AlarmType)> {
        r.alarms()
            .iter()
            .map(|a| (a.member_id(), a.alarm()))
            .collect()
    };
    let none_actions = [
        (AlarmAction::Deactivate, None),
        (AlarmAction::Deactivate, Some(mine.clone())),
        (AlarmAction::Activate, None),
        (AlarmAction::Activate, Some(mine.clone())),
    ];
    for (action, opts) in none_actions.clone() {
        let r = c.alarm(action, AlarmType::None, opts).await.unwrap();
        assert_eq!(listed(&r), vec![], "{action:?}");
        assert_eq!(r.header().unwrap().member_id(), member);
    }
    let all = c.alarm(AlarmAction::Get, AlarmType::None, None).await;
    assert_eq!(listed(&all.unwrap()), vec![]);

    // A raised alarm is neither cleared nor joined by a NONE one.
    let raised = c
        .alarm(
            AlarmAction::Activate,
            AlarmType::Nospace,
            Some(mine.clone()),
        )
        .await
        .unwrap();
    assert_eq!(listed(&raised), vec![(member, AlarmType::Nospace)]);
    for (action, opts) in none_actions {
        let r = c.alarm(action, AlarmType::None, opts).await.unwrap();
        assert_eq!(listed(&r), vec![], "{action:?}");
    }
    let all = c.alarm(AlarmAction::Get, AlarmType::None, None).await;
    assert_eq!(listed(&all.unwrap()), vec![(member, AlarmType::Nospace)]);
    let cleared = c
        .alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(mine))
        .await
        .unwrap();
    assert_eq!(listed(&cleared), vec![(member, AlarmType::Nospace)]);
    let all = c.alarm(AlarmAction::Get, AlarmType::None, None).await;
    assert_eq!(listed(&all.unwrap()), vec![]);
}

#[tokio::test]
async fn hash_kv_is_stable_and_checks_its_revision() {
    let node = TestNode::start().await;
    let mut c = client(&node).await;
    for i in 0..10 {
        c.put(format!("h{i}"), format!("{i}"), None).await.unwrap();
    }
    let rev = c
        .get("h0", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let a = c.hash_kv(rev).await.unwrap();
    c.put("later", "x", None).await.unwrap();
    let b = c.hash_kv(rev).await.unwrap();
    assert_eq!(
        a.hash(),
        b.hash(),
        "a later write must not change the hash at {rev}"
    );
    assert_ne!(c.hash_kv(0).await.unwrap().hash(), a.hash());
    let future = status(c.hash_kv(rev + 100).await.unwrap_err());
    assert_eq!(
        future.message(),
        "etcdserver: mvcc: required revision is a future revision"
    );
    c.compact(rev, None).await.unwrap();
    let old = status(c.hash_kv(rev - 5).await.unwrap_err());
    assert_eq!(
        old.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_auto_compaction_compacts_on_its_own() {
    let node = TestNode::start_with(|c| cairn_server::Config {
        auto_compaction: Some(cairn_server::AutoCompaction::Periodic(Duration::from_secs(
            1,
        ))),
        ..c
    })
    .await;
    let mut c = client(&node).await;
    for i in 0..20 {
        c.put("churn", format!("{i}"), None).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match c
            .get("churn", Some(GetOptions::new().with_revision(2)))
            .await
        {
            Err(e) => {
                assert_eq!(
                    status(e).message(),
                    "etcdserver: mvcc: required revision has been compacted"
                );
                break;
            }
            Ok(_) => assert!(Instant::now() < deadline, "never auto-compacted"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A plain HTTP/1.1 GET; returns (status code, body).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let (head, body) = text.split_once("\r\n\r\n").expect("headers end");
    // Bodies may come chunked.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        out
    } else {
        body.to_string()
    };
    (code, body)
}

fn sample(scrape: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(ref h) => {
                h.iter().map(|b| b.count).fold(0.0, f64::max)
            }
            _ => 0.0,
        })
        .sum()
}

async fn scrape(addr: std::net::SocketAddr) -> prometheus_parse::Scrape {
    let (code, body) = http_get(addr, "/metrics").await;
    assert_eq!(code, 200);
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .expect("valid Prometheus text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_under_load_and_health_answers() {
    let node = TestNode::start().await;
    let addr = node.node.as_ref().unwrap().client_addr();
    let before = scrape(addr).await;
    assert_eq!(sample(&before, "etcd_server_has_leader", None), 1.0);
    let mut c = client(&node).await;
    for i in 0..50 {
        c.put(format!("m{i}"), "v", None).await.unwrap();
    }
    let _ = c
        .get("missing", Some(GetOptions::new().with_revision(1_000_000)))
        .await;
    let after = scrape(addr).await;
    let applied = |s| sample(s, "etcd_server_proposals_applied_total", None);
    assert!(
        applied(&after) >= applied(&before) + 1.0,
        "applied index did not move"
    );
    let puts = Some(("grpc_method", "Put"));
    assert!(sample(&after, "grpc_server_handled_total", puts) >= 50.0);
    assert!(
        sample(
            &after,
            "grpc_server_handled_total",
            Some(("grpc_code", "OutOfRange"))
        ) >= 1.0,
        "the failed read is counted with its code"
    );
    // A stream is counted when it ends, with how it ended, not when its headers leave.
    let watch = Some(("grpc_method", "Watch"));
    let mut events = c.watch("m", None).await.unwrap();
    events.message().await.unwrap().expect("created");
    let open = scrape(addr).await;
    assert_eq!(sample(&open, "grpc_server_started_total", watch), 1.0);
    assert_eq!(sample(&open, "grpc_server_handled_total", watch), 0.0);
    drop(events);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let ended = loop {
        let s = scrape(addr).await;
        if sample(&s, "grpc_server_handled_total", watch) > 0.0 {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a dropped watch stream was never counted as handled"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    // Dropping the stream both ends the client's requests (the server then ends the stream: OK)
    // and resets the stream (Canceled); whichever the server sees first decides the code.
    let watch_ended = ended.samples.iter().any(|x| {
        x.metric == "grpc_server_handled_total"
            && x.labels.get("grpc_method") == Some("Watch")
            && matches!(x.labels.get("grpc_code"), Some("Canceled" | "OK"))
    });
    assert!(watch_ended, "{:?}", ended.samples);
    assert!(sample(&after, "etcd_disk_wal_fsync_duration_seconds_count", None) > 0.0);
    assert!(
        sample(
            &after,
            "etcd_disk_backend_commit_duration_seconds_count",
            None
        ) > 0.0
    );
    assert_eq!(sample(&after, "etcd_debugging_mvcc_keys_total", None), 50.0);
    assert!(sample(&after, "etcd_mvcc_db_total_size_in_use_in_bytes", None) > 50.0 * 20.0);

    let (code, body) = http_get(addr, "/health").await;
    assert_eq!(code, 200);
    assert_eq!(body, r#"{"health":"true","reason":""}"#);

    let channel = tonic::transport::Endpoint::from_shared(node.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let resp = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("grpc health check");
    assert_eq!(
        resp.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_writes_and_compactions_restores_a_point_in_time() {
    let node = TestNode::start().await;
    let mut c = client(&node).await;
    for i in 0..2000 {
        c.put(format!("k{i:04}"), format!("{i}"), None)
            .await
            .unwrap();
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy = |c: Client, compact: bool| {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut c = c;
            let mut i = 0u64;
            let hard_stop = Instant::now() + Duration::from_secs(30);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < hard_stop {
                i += 1;
                if compact {
                    let rev = c
                        .get("k0000", None)
                        .await
                        .unwrap()
                        .header()
                        .unwrap()
                        .revision();
                    let _ = c.compact(rev - 50, None).await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                } else {
                    c.put(format!("k{:04}", i % 2000), format!("w{i}"), None)
                        .await
                        .unwrap();
                }
            }
        })
    };
    let writer = busy(c.clone(), false);
    let compactor = busy(c.clone(), true);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut stream = c.snapshot().await.expect("snapshot");
    let mut backup = Vec::new();
    while let Some(msg) = stream.message().await.expect("snapshot chunk") {
        backup.extend_from_slice(msg.blob());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();
    compactor.await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.db");
    std::fs::write(&file, &backup).unwrap();
    let restored = TestNode::start_with(|cfg| cairn_server::Config {
        restore_from: Some(file.clone()),
        ..cfg
    })
    .await;
    let mut r = client(&restored).await;
    let all = GetOptions::new().with_prefix();
    let now = r.get("k", Some(all.clone())).await.unwrap();
    let at = now.header().unwrap().revision();
    // The original, read at the backup's revision, holds exactly what was restored.
    let then = c
        .get("k", Some(all.with_revision(at)))
        .await
        .expect("the backup's revision is still readable on the original");
    let shape = |kvs: &[etcd_client::KeyValue]| -> Vec<String> {
        kvs.iter()
            .map(|kv| {
                format!(
                    "{:?}={:?} c{} m{} v{}",
                    kv.key(),
                    kv.value(),
                    kv.create_revision(),
                    kv.mod_revision(),
                    kv.version()
                )
            })
            .collect()
    };
    assert_eq!(now.kvs().len(), 2000);
    assert_eq!(shape(now.kvs()), shape(then.kvs()));
}

/// A backup client that stops reading holds up neither compaction nor the writes behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_backup_reader_holds_up_nothing() {
    let node = TestNode::start().await;
    let mut c = client(&node).await;
    let value = vec![b'x'; 1 << 20];
    for i in 0..12 {
        c.put(format!("big{i}"), value.clone(), None).await.unwrap();
    }
    let mut stream = c.snapshot().await.expect("snapshot");
    let first = stream.message().await.unwrap().expect("a first chunk");
    let total = first.blob().len() as u64 + first.remaining_bytes();
    assert!(total > 12 << 20, "{total}");
    // The stream is now stalled far short of its end.
    let rev = c
        .put("after", "1", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    tokio::time::timeout(Duration::from_secs(5), c.compact(rev, None))
        .await
        .expect("compaction waited on the stalled backup")
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), c.put("after", "2", None))
        .await
        .expect("a write after the compaction waited on the stalled backup")
        .unwrap();
    let mut received = first.blob().len() as u64;
    while let Some(msg) = stream.message().await.expect("snapshot chunk") {
        received += msg.blob().len() as u64;
        assert_eq!(msg.remaining_bytes(), total - received);
    }
    assert_eq!(received, total, "remaining_bytes adds up to the file");
}

/// User and role names are keys of etcd's snapshot database: names longer than a page, among
/// short ones, make a backup that finishes and restores like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_holds_user_and_role_names_larger_than_a_page() {
    let node = TestNode::start().await;
    let mut c = client(&node).await;
    let long = |c: char, len: usize| c.to_string().repeat(len);
    let users = [
        "a".to_string(),
        long('m', 9000),
        long('n', 5000),
        "z".to_string(),
    ];
    for name in &users {
        c.user_add(name.as_str(), "pw", None).await.unwrap();
    }
    let roles = ["a".to_string(), long('r', 9000), "z".to_string()];
    for name in &roles {
        c.role_add(name.as_str()).await.unwrap();
    }
    let backup = tokio::time::timeout(Duration::from_secs(30), async {
        let mut stream = c.snapshot().await.expect("snapshot");
        let mut backup = Vec::new();
        while let Some(msg) = stream.message().await.expect("snapshot chunk") {
            backup.extend_from_slice(msg.blob());
        }
        backup
    })
    .await
    .expect("the backup finished");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.db");
    std::fs::write(&file, &backup).unwrap();
    if etcdctl_present() {
        // etcdctl checks the file with bbolt's own consistency check.
        let ctl = Ctl {
            endpoint: node.url(),
        };
        let status = ctl
            .ok(&["snapshot", "status", file.to_str().unwrap(), "-w", "json"])
            .await;
        assert!(status.contains("\"hash\":"), "{status}");
    }
    let restored = TestNode::start_with(|cfg| cairn_server::Config {
        restore_from: Some(file.clone()),
        ..cfg
    })
    .await;
    let mut r = client(&restored).await;
    assert_eq!(r.user_list().await.unwrap().users(), users.as_slice());
    assert_eq!(r.role_list().await.unwrap().roles(), roles.as_slice());
}

/// etcd answers Defragment and MoveLeader without a response header; clients that check the shape
/// of the answer expect none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defragment_and_move_leader_answer_without_a_header() {
    let cluster = ProcessCluster::start(3);
    let all = [0, 1, 2];
    wait_serving(&cluster, &all).await;
    let leader = leader_index(&cluster, &all).await;
    let target = (leader + 1) % 3;
    let target_id = member_id(&cluster, target).await;
    let mut c = connect(&cluster.members[leader].url())
        .await
        .expect("connect");
    let defragmented = c.defragment().await.unwrap();
    assert!(defragmented.header().is_none(), "{defragmented:?}");
    let moved = c.move_leader(target_id).await.unwrap();
    assert!(moved.header().is_none(), "{moved:?}");
    assert_eq!(leader_index(&cluster, &all).await, target);
    // Answers that carry a header in etcd still do.
    let listed = c.alarm(AlarmAction::Get, AlarmType::None, None).await;
    assert!(listed.unwrap().header().is_some());
}

/// Waits (up to 30 s) until each of `members` reports the same Hash at `revision`. Members at the
/// same revision may differ for a moment, until each applied the entries that change no revision
/// (a member publishing its URLs).
async fn agreed_hash(cluster: &ProcessCluster, members: &[usize], revision: i64) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut seen = Vec::new();
        for &i in members {
            if let Some(mut c) = connect(&cluster.members[i].url()).await {
                if let Ok(h) = c.hash().await {
                    seen.push((h.header().expect("header").revision(), h.hash()));
                }
            }
        }
        if seen.len() == members.len() && seen.iter().all(|&s| s == (revision, seen[0].1)) {
            return seen[0].1;
        }
        assert!(
            Instant::now() < deadline,
            "members {members:?} did not agree at revision {revision}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Maintenance.Hash is the same on every member that applied the same writes, whether entry by
/// entry or from a snapshot; it changes with a write and stays the same across a member's restart
/// and a change of leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_agrees_across_members_snapshots_restarts_and_leader_changes() {
    // Snapshot every 50 entries, so a member that misses more catches up from a snapshot.
    let mut cluster = ProcessCluster::start_with(3, &["--snapshot-count", "50"]);
    let all = [0, 1, 2];
    wait_serving(&cluster, &all).await;
    let leader = leader_index(&cluster, &all).await;
    let mut c = connect(&cluster.members[leader].url())
        .await
        .expect("connect");
    // Keys, a lease holding some of them, a deletion and a compaction: all of it replicated.
    let lease = c.lease_grant(600, None).await.unwrap().id();
    for i in 0..20 {
        let opts = (i % 3 == 0).then(|| etcd_client::PutOptions::new().with_lease(lease));
        c.put(format!("h{i}"), format!("{i}"), opts).await.unwrap();
    }
    c.delete("h1", None).await.unwrap();
    let rev = put_rev(&mut c, "last", "1").await;
    c.compact(rev - 5, None).await.unwrap();
    let before = agreed_hash(&cluster, &all, rev).await;
    assert_eq!(agreed_hash(&cluster, &all, rev).await, before, "stable");

    let rev = put_rev(&mut c, "last", "2").await;
    let hash = agreed_hash(&cluster, &all, rev).await;
    assert_ne!(hash, before, "a write changes the hash");

    // A follower killed (only what it made durable survives) and started again.
    let restarted = (leader + 1) % 3;
    cluster.kill(restarted);
    cluster.spawn(restarted);
    wait_serving(&cluster, &[restarted]).await;
    assert_eq!(agreed_hash(&cluster, &all, rev).await, hash);

    // The other follower misses more entries than the log keeps and catches up from a snapshot.
    let behind = (leader + 2) % 3;
    cluster.kill(behind);
    for i in 0..200 {
        c.put(format!("s{i:03}"), format!("{i}"), None)
            .await
            .unwrap();
    }
    let rev = put_rev(&mut c, "last", "3").await;
    // The leader purges its log behind a snapshot once no replication to the stopped member is
    // in flight: at its next failed attempt to reach it, within the 1 s retry cap.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.spawn(behind);
    wait_serving(&cluster, &[behind]).await;
    let hash = agreed_hash(&cluster, &all, rev).await;
    let log = cluster.log_of(behind);
    assert!(
        log.contains("installed snapshot"),
        "no snapshot; log:\n{log}"
    );

    // Leadership moves to the restarted one: a new term and its entries change no data.
    let target = member_id(&cluster, restarted).await;
    c.move_leader(target).await.unwrap();
    assert_eq!(leader_index(&cluster, &all).await, restarted);
    assert_eq!(agreed_hash(&cluster, &all, rev).await, hash);
}
