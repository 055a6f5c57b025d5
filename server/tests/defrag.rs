//! `etcdctl defrag` returns freed space to the file system: a real `cairn` process is filled with
//! about 200 MB, 90 % of it is deleted and compacted away, and defragmenting the member must at
//! least halve its data directory while every remaining key still reads back and writes go on.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::etcdctl::{etcdctl_present, Ctl};
use common::{connect, wait_serving, ProcessCluster};
use etcd_client::{Client, DeleteOptions, GetOptions};

const KEYS: usize = 2_000;
const VALUE_BYTES: usize = 100 * 1024;

/// Bytes the files under `path` occupy on disk (what `du` counts), directories included.
fn du(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        total += meta.blocks() * 512;
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&p) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    total
}

/// `du` of the data dir and of each of its entries, for the test's output.
fn sizes(dir: &Path) -> String {
    let mut parts = vec![format!("total {} MB", du(dir) / 1_000_000)];
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut names: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        names.sort();
        for p in names {
            parts.push(format!(
                "{} {:.1} MB",
                p.file_name().unwrap_or_default().to_string_lossy(),
                du(&p) as f64 / 1e6
            ));
        }
    }
    parts.join(", ")
}

fn value(i: usize) -> Vec<u8> {
    let mut v = vec![(i % 251) as u8; VALUE_BYTES];
    v[..8].copy_from_slice(&(i as u64).to_le_bytes());
    v
}

fn key(i: usize) -> String {
    format!("big/{i:05}")
}

async fn fill(url: &str) {
    let mut tasks = Vec::new();
    for t in 0..8 {
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let mut c = connect(&url).await.expect("connect");
            for i in (t..KEYS).step_by(8) {
                c.put(key(i), value(i), None).await.expect("put");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
}

/// Every tenth key is kept, so the survivors are spread over the whole file and the store cannot
/// give the space back by cutting its file's end.
fn survives(i: usize) -> bool {
    i.is_multiple_of(10)
}

/// Every kept key reads back unchanged, and all `acked` writes made during the defrag are there.
async fn check_survivors(c: &mut Client, acked: usize) {
    let resp = c
        .get(
            "big/",
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .expect("list");
    assert_eq!(resp.count() as usize, KEYS / 10);
    for i in (0..KEYS).filter(|&i| survives(i)) {
        let got = c.get(key(i), None).await.expect("get");
        assert_eq!(got.kvs().len(), 1, "{} is missing", key(i));
        assert!(
            got.kvs()[0].value() == value(i).as_slice(),
            "{} changed",
            key(i)
        );
    }
    let during = c
        .get(
            "during/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("count");
    assert_eq!(
        during.count() as usize,
        acked,
        "writes made during the defrag"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defrag_returns_the_space_of_deleted_and_compacted_data() {
    if !etcdctl_present() {
        return;
    }
    // Frequent snapshots so the Raft log of the 200 MB of puts is purged: what is measured is
    // the store, as etcd's defrag measures its backend file.
    let mut cluster = ProcessCluster::start_with(1, &["--snapshot-count", "200"]);
    wait_serving(&cluster, &[0]).await;
    let url = cluster.members[0].url();
    let dir = cluster.data_dir(0).to_path_buf();
    let ctl = Ctl {
        endpoint: url.clone(),
    };

    let started = Instant::now();
    fill(&url).await;
    eprintln!("wrote {KEYS} x {VALUE_BYTES} B in {:?}", started.elapsed());
    let mut c = connect(&url).await.expect("connect");
    // 90 % deleted: the nine keys after each survivor, one range at a time.
    for i in (0..KEYS).filter(|&i| survives(i)) {
        c.delete(
            key(i + 1),
            Some(DeleteOptions::new().with_range(key(i + 10))),
        )
        .await
        .expect("delete");
    }
    let rev = c
        .get("big/", None)
        .await
        .expect("get")
        .header()
        .unwrap()
        .revision();
    c.compact(
        rev,
        Some(etcd_client::CompactionOptions::new().with_physical()),
    )
    .await
    .expect("compact");
    // Writes after the compaction, so a snapshot after it is taken and the log purged.
    for i in 0..400 {
        c.put(format!("small/{i}"), "x", None).await.expect("put");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = du(&dir);
    eprintln!("before defrag: {}", sizes(&dir));

    // Writes go on while the member defragments; every acknowledged one must survive.
    let writer_url = url.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_writer = stop.clone();
    let writer = tokio::spawn(async move {
        let mut c = connect(&writer_url).await.expect("connect");
        let mut acked = 0usize;
        while !stop_writer.load(std::sync::atomic::Ordering::Relaxed) && acked < 100_000 {
            if let Err(e) = c.put(format!("during/{acked:06}"), "v", None).await {
                panic!("write during defrag: {e}");
            }
            acked += 1;
        }
        acked
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let out = ctl.run_with_input(&["defrag"], None).await;
    let log = cluster.log_of(0);
    assert!(
        out.ok,
        "defrag failed: {}\nmember log tail:\n{}",
        out.stderr,
        &log[log.len().saturating_sub(6000)..]
    );
    let out = out.stdout;
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = writer.await.expect("writer");
    assert!(out.contains("Finished defragmenting etcd member"), "{out}");
    let after = du(&dir);
    eprintln!("after defrag ({took:?}): {}", sizes(&dir));
    assert!(
        after * 2 <= before,
        "defrag left {after} bytes of {before}: {}",
        sizes(&dir)
    );

    check_survivors(&mut c, acked).await;
    c.put("after-defrag", "yes", None)
        .await
        .expect("write after defrag");

    // And all of it is still there after a crash.
    cluster.kill(0);
    cluster.spawn(0);
    wait_serving(&cluster, &[0]).await;
    let mut c = connect(&url).await.expect("connect");
    check_survivors(&mut c, acked).await;
    assert_eq!(
        c.get("after-defrag", None).await.expect("get").kvs()[0].value(),
        b"yes"
    );
    eprintln!("{acked} writes acknowledged during the defrag; all survived a restart");
}
