//! A 3-member cluster of real `cairn` processes on loopback: any member serves reads and writes,
//! killing the leader with SIGKILL under load loses no acknowledged write, moving leadership under
//! load leaves no write unanswered, and a leader restarted at once reads nothing older than what
//! it acknowledged.

use crate::common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{connect, leader_index, member_id, wait_serving, ProcessCluster};
use etcd_client::GetOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_linearizable_reads_through_every_member() {
    let cluster = ProcessCluster::start(3);
    wait_serving(&cluster, &[0, 1, 2]).await;
    for round in 0..5 {
        for i in 0..3 {
            let mut c = connect(&cluster.members[i].url()).await.expect("connect");
            let key = format!("k-{round}-{i}");
            c.put(key.clone(), format!("from-{i}"), None)
                .await
                .expect("put through member");
            // Read-your-write on every member, linearizably, right after the write.
            for j in 0..3 {
                let mut r = connect(&cluster.members[j].url()).await.expect("connect");
                let got = r.get(key.clone(), None).await.expect("linearizable get");
                assert_eq!(
                    got.kvs().len(),
                    1,
                    "member {j} missed {key} written through {i}"
                );
            }
        }
    }
    let mut c = connect(&cluster.members[1].url()).await.unwrap();
    let all = c
        .get("k-", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(all.count(), 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_loses_no_acknowledged_write() {
    let mut cluster = ProcessCluster::start(3);
    wait_serving(&cluster, &[0, 1, 2]).await;
    let old_leader = leader_index(&cluster, &[0, 1, 2]).await;

    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    // Writers run until told to stop, or for at most a minute.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hard_stop = Instant::now() + Duration::from_secs(60);
    let mut writers = Vec::new();
    for w in 0..12 {
        let url = cluster.members[w % 3].url();
        let acked = acked.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut client = None;
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < hard_stop {
                if client.is_none() {
                    client = connect(&url).await;
                    if client.is_none() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
                let key = format!("w{w:02}-{n:05}");
                n += 1;
                match client.as_mut().unwrap().put(key.clone(), "v", None).await {
                    Ok(_) => acked.lock().unwrap().push(key),
                    Err(_) => {
                        client = None;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    let before_kill = acked.lock().unwrap().len();
    cluster.kill(old_leader);
    let survivors: Vec<usize> = (0..3).filter(|i| *i != old_leader).collect();
    let new_leader = leader_index(&cluster, &survivors).await;
    assert_ne!(new_leader, old_leader);
    // Keep writing until the new leader has acknowledged a good number of writes (bounded).
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < before_kill + 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(before_kill > 0, "no write was acknowledged before the kill");
    assert!(
        acked.len() > before_kill,
        "no write was acknowledged after the kill"
    );

    cluster.spawn(old_leader);
    wait_serving(&cluster, &[0, 1, 2]).await;
    for i in 0..3 {
        assert_all_present(&cluster, i, "w", &acked).await;
    }
    eprintln!(
        "{} writes acknowledged ({} before the kill); all present on every member",
        acked.len(),
        before_kill
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_behind_a_purged_log_catches_up_by_snapshot() {
    // Snapshot every 50 entries and keep only 50 entries behind it.
    let mut cluster = ProcessCluster::start_with(3, &["--snapshot-count", "50"]);
    wait_serving(&cluster, &[0, 1, 2]).await;
    let leader = leader_index(&cluster, &[0, 1, 2]).await;
    let lagging = (leader + 1) % 3;
    let writer = (leader + 2) % 3;
    cluster.kill(lagging);

    // Sequential writes: one log entry each, far more than the log keeps.
    let mut c = connect(&cluster.members[writer].url())
        .await
        .expect("connect");
    for i in 0..400 {
        c.put(format!("s{i:04}"), format!("{i}"), None)
            .await
            .expect("put");
    }
    let last = c
        .get("s0399", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();

    cluster.spawn(lagging);
    wait_serving(&cluster, &[lagging]).await;
    let mut r = connect(&cluster.members[lagging].url())
        .await
        .expect("connect");
    let got = r
        .get(
            "s",
            Some(GetOptions::new().with_prefix().with_serializable()),
        )
        .await
        .unwrap();
    assert_eq!(
        got.count(),
        400,
        "the restarted member serves every write from its own state"
    );
    assert!(got.header().unwrap().revision() >= last);
    let log = cluster.log_of(lagging);
    assert!(
        log.contains("installed snapshot"),
        "member did not catch up by snapshot; log:\n{log}"
    );

    // It keeps up through the log afterwards.
    c.put("after-snapshot", "x", None).await.unwrap();
    let got = r.get("after-snapshot", None).await.unwrap();
    assert_eq!(got.kvs().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_list_shows_every_member_with_its_published_urls() {
    let cluster = ProcessCluster::start(3);
    wait_serving(&cluster, &[0, 1, 2]).await;
    let mut c = connect(&cluster.members[1].url()).await.expect("connect");
    // Each member publishes its client URLs through Raft shortly after it starts.
    let deadline = Instant::now() + Duration::from_secs(20);
    let members = loop {
        let list = c.member_list().await.unwrap();
        let members: Vec<(String, Vec<String>, Vec<String>, bool)> = list
            .members()
            .iter()
            .map(|m| {
                (
                    m.name().to_string(),
                    m.peer_urls().to_vec(),
                    m.client_urls().to_vec(),
                    m.is_learner(),
                )
            })
            .collect();
        if members.iter().all(|m| !m.2.is_empty()) || Instant::now() > deadline {
            break members;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(members.len(), 3);
    for m in &cluster.members {
        let listed = members
            .iter()
            .find(|x| x.0 == m.name)
            .expect("member listed by name");
        assert_eq!(listed.1, vec![format!("http://127.0.0.1:{}", m.peer_port)]);
        assert_eq!(listed.2, vec![m.url()]);
        assert!(!listed.3, "founding members are voters");
    }
}

/// A leader killed right after acknowledging a write and started again at once, inside the
/// followers' election timeout, recovers its state machine from its last flush and a commit index
/// that was never made durable. Its first linearizable read must still see the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_reads_nothing_older_than_it_acknowledged() {
    let mut cluster = ProcessCluster::start(3);
    wait_serving(&cluster, &[0, 1, 2]).await;
    for round in 0..3 {
        let leader = leader_index(&cluster, &[0, 1, 2]).await;
        let mut c = connect(&cluster.members[leader].url())
            .await
            .expect("connect");
        c.put("register", format!("old-{round}"), None)
            .await
            .expect("put");
        // Long enough for every member to have flushed the old value.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        c.put("register", format!("new-{round}"), None)
            .await
            .expect("acknowledged put");
        cluster.kill(leader);
        cluster.spawn(leader);
        let deadline = Instant::now() + Duration::from_secs(30);
        let value = loop {
            if let Some(mut r) = connect(&cluster.members[leader].url()).await {
                if let Ok(got) = r.get("register", None).await {
                    break got.kvs()[0].value_str().unwrap().to_string();
                }
            }
            assert!(
                Instant::now() < deadline,
                "the restarted member served no read"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(value, format!("new-{round}"), "stale read in round {round}");
        wait_serving(&cluster, &[0, 1, 2]).await;
    }
}

/// Leadership moved three times under load from clients on every member: writes wait out each
/// move and are neither refused nor left unanswered (within the client's 5 s), writes go on being
/// acknowledged after each move, and every acknowledged write is on every member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_while_leadership_moves_are_answered_and_kept() {
    let cluster = ProcessCluster::start(3);
    let all = [0, 1, 2];
    wait_serving(&cluster, &all).await;
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..12 {
        let mut client = connect(&cluster.members[w % 3].url())
            .await
            .expect("connect");
        let (acked, failed, stop) = (acked.clone(), failed.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("m{w:02}-{n:05}");
                n += 1;
                match client.put(key.clone(), "v", None).await {
                    Ok(_) => acked.lock().unwrap().push(key),
                    Err(e) => failed.lock().unwrap().push(format!("{key}: {e}")),
                }
            }
        }));
    }

    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let before = acked.lock().unwrap().len();
        let leader = leader_index(&cluster, &all).await;
        let target = (leader + 1) % 3;
        let mut c = connect(&cluster.members[leader].url())
            .await
            .expect("connect");
        c.move_leader(member_id(&cluster, target).await)
            .await
            .unwrap_or_else(|e| panic!("move-leader in round {round}: {e}"));
        assert_eq!(leader_index(&cluster, &all).await, target);
        let deadline = Instant::now() + Duration::from_secs(20);
        while acked.lock().unwrap().len() < before + 100 {
            assert!(
                Instant::now() < deadline,
                "writes stopped being acknowledged after move {round}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let failed = failed.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "{} writes failed, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );

    let acked = acked.lock().unwrap().clone();
    for i in all {
        assert_all_present(&cluster, i, "m", &acked).await;
    }
    eprintln!(
        "{} writes acknowledged across three moves of leadership",
        acked.len()
    );
}

/// Asserts that member `i` holds every acknowledged key (all under `prefix`).
async fn assert_all_present(cluster: &ProcessCluster, i: usize, prefix: &str, acked: &[String]) {
    let mut c = connect(&cluster.members[i].url()).await.expect("connect");
    let got = c
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .unwrap();
    let present: BTreeSet<String> = got
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_string())
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|k| !present.contains(*k)).collect();
    assert!(
        lost.is_empty(),
        "member {i} lost {} acknowledged writes, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
}
