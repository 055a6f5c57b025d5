//! Online membership changes with real `cairn` processes: grow 1 -> 3 under writes (a learner that
//! is promoted, and a voter added directly), then shrink 3 -> 2 by removing the leader. No
//! acknowledged write is lost and the survivors hash alike.

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{connect, leader_index, wait_serving, ProcessCluster};
use etcd_client::{GetOptions, MemberAddOptions};

/// Writers that put unique keys through the members in `targets` until stopped.
struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    fn start(targets: Arc<Mutex<Vec<String>>>, n: usize) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let hard_stop = Instant::now() + Duration::from_secs(120);
        let tasks = (0..n)
            .map(|w| {
                let (stop, acked, targets) = (stop.clone(), acked.clone(), targets.clone());
                tokio::spawn(async move {
                    let mut seq = 0u64;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < hard_stop {
                        let url = {
                            let t = targets.lock().unwrap();
                            t[(w + seq as usize) % t.len()].clone()
                        };
                        seq += 1;
                        let key = format!("w/{w}/{seq}");
                        let Some(mut c) = connect(&url).await else {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        };
                        if c.put(key.clone(), "v", None).await.is_ok() {
                            acked.lock().unwrap().push(key);
                        }
                    }
                })
            })
            .collect();
        Writers { stop, acked, tasks }
    }

    async fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("writer");
        }
        Arc::try_unwrap(self.acked).unwrap().into_inner().unwrap()
    }
}

/// Retries `op` until it succeeds or `secs` pass.
async fn eventually<T, F, Fut>(secs: u64, what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) => assert!(Instant::now() < deadline, "{what}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_one_to_three_then_remove_the_leader() {
    let mut cluster = ProcessCluster::define(3, &["--snapshot-count", "200"]);
    cluster.spawn_with(0, &cluster.initial_cluster_of(&[0]), &[]);
    wait_serving(&cluster, &[0]).await;
    let targets = Arc::new(Mutex::new(vec![cluster.members[0].url()]));
    let writers = Writers::start(targets.clone(), 4);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // m1 joins as a learner, catches up, and is promoted.
    let mut admin = connect(&cluster.members[0].url()).await.expect("connect");
    let added = admin
        .member_add(
            [cluster.peer_url(1)],
            Some(MemberAddOptions::new().with_is_learner()),
        )
        .await
        .expect("member add (learner)");
    let m1 = added.member().expect("added member").id();
    assert!(added.member().unwrap().is_learner());
    assert_eq!(added.member_list().len(), 2);
    cluster.spawn_with(
        1,
        &cluster.initial_cluster_of(&[0, 1]),
        &["--initial-cluster-state", "existing"],
    );
    eventually(60, "promoting m1", || {
        let url = cluster.members[0].url();
        async move {
            let mut c = connect(&url).await.ok_or("connect")?;
            c.member_promote(m1)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await;
    targets.lock().unwrap().push(cluster.members[1].url());

    // m2 is added as a voter: it starts as a learner and is promoted once it has caught up.
    let added = admin
        .member_add([cluster.peer_url(2)], None)
        .await
        .expect("member add (voter)");
    let m2 = added.member().expect("added member").id();
    assert!(!added.member().unwrap().is_learner());
    cluster.spawn_with(
        2,
        &cluster.initial_cluster_of(&[0, 1, 2]),
        &["--initial-cluster-state", "existing"],
    );
    wait_serving(&cluster, &[2]).await;
    eventually(60, "m2 becoming a voter", || {
        let url = cluster.members[2].url();
        async move {
            let mut c = connect(&url).await.ok_or("connect")?;
            let s = c.status().await.map_err(|e| e.to_string())?;
            if s.is_learner() {
                Err("still a learner".to_string())
            } else {
                Ok(())
            }
        }
    })
    .await;
    targets.lock().unwrap().push(cluster.members[2].url());
    // Members publish their names and client URLs through the log once they run.
    let list = eventually(30, "every member listed with its name", || {
        let url = cluster.members[0].url();
        async move {
            let mut c = connect(&url).await.ok_or("connect")?;
            let list = c.member_list().await.map_err(|e| e.to_string())?;
            let unnamed = list
                .members()
                .iter()
                .filter(|m| m.name().is_empty() || m.client_urls().len() != 1)
                .count();
            if unnamed > 0 {
                return Err(format!("{unnamed} members not published yet"));
            }
            Ok(list)
        }
    })
    .await;
    assert_eq!(list.members().len(), 3);
    for m in list.members() {
        assert!(!m.is_learner(), "{m:?} should be a voter");
    }
    assert!(list.members().iter().any(|m| m.id() == m2));
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Shrink: remove the leader through another member; it steps down and exits by itself.
    let leader = leader_index(&cluster, &[0, 1, 2]).await;
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let leader_id = common::member_id(&cluster, leader).await;
    *targets.lock().unwrap() = survivors
        .iter()
        .map(|&i| cluster.members[i].url())
        .collect();
    let mut via = connect(&cluster.members[survivors[0]].url())
        .await
        .expect("connect");
    let after = via
        .member_remove(leader_id)
        .await
        .expect("remove the leader");
    assert_eq!(after.members().len(), 2);
    assert!(
        cluster.wait_exit(leader, Duration::from_secs(15)),
        "the removed leader should shut itself down"
    );
    let new_leader = leader_index(&cluster, &survivors).await;
    assert_ne!(new_leader, leader);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked = writers.finish().await;
    assert!(
        acked.len() > 100,
        "too few writes got through: {}",
        acked.len()
    );

    // Every acknowledged write is on both survivors, and they hash alike at a common revision.
    let mut hashes = Vec::new();
    let mut c = connect(&cluster.members[survivors[0]].url()).await.unwrap();
    let revision = c
        .get("w/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    for &i in &survivors {
        let mut c = connect(&cluster.members[i].url()).await.expect("connect");
        let all = c
            .get("w/", Some(GetOptions::new().with_prefix().with_keys_only()))
            .await
            .expect("read");
        let present: std::collections::HashSet<Vec<u8>> =
            all.kvs().iter().map(|kv| kv.key().to_vec()).collect();
        let lost: Vec<&String> = acked
            .iter()
            .filter(|k| !present.contains(k.as_bytes()))
            .collect();
        assert!(
            lost.is_empty(),
            "member {i} lost acknowledged writes: {lost:?}"
        );
        hashes.push(c.hash_kv(revision).await.expect("hashkv").hash());
    }
    assert_eq!(
        hashes[0], hashes[1],
        "members disagree at revision {revision}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_moves_to_new_peer_urls() {
    let mut cluster = ProcessCluster::start(3);
    wait_serving(&cluster, &[0, 1, 2]).await;
    let leader = leader_index(&cluster, &[0, 1, 2]).await;
    let mover = (leader + 1) % 3;
    let mut c = connect(&cluster.members[leader].url())
        .await
        .expect("connect");
    let id = common::member_id(&cluster, mover).await;
    let new_port = common::free_ports(1)[0];
    let new_url = format!("http://127.0.0.1:{new_port}");
    let updated = c
        .member_update(id, vec![new_url.clone()])
        .await
        .expect("member update");
    let listed = updated
        .members()
        .iter()
        .find(|m| m.id() == id)
        .expect("listed");
    assert_eq!(listed.peer_urls(), std::slice::from_ref(&new_url));

    // The member restarts on its new address; the cluster reaches it there.
    cluster.kill(mover);
    cluster.members[mover].peer_port = new_port;
    let initial = cluster.initial_cluster_of(&[0, 1, 2]);
    cluster.spawn_with(mover, &initial, &[]);
    let rev = common::put_rev(&mut c, "moved", "yes").await;
    eventually(30, "the moved member catching up", || {
        let url = cluster.members[mover].url();
        async move {
            let mut m = connect(&url).await.ok_or("connect")?;
            let got = m
                .get("moved", Some(GetOptions::new().with_serializable()))
                .await
                .map_err(|e| e.to_string())?;
            match got.kvs().first() {
                Some(kv) if kv.mod_revision() == rev => Ok(()),
                _ => Err("not there yet".to_string()),
            }
        }
    })
    .await;
}
