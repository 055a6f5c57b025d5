//! Cairn beside etcd on the same machine in the same run: 3 members on loopback each, fsync on.
//! Measures Put throughput and latency at 1, 16 and 256 concurrent clients, a lone client's
//! serializable point reads (the round trip under its puts), compare-and-swap Txns at 64 clients,
//! linearizable point reads at 256 clients, and idle memory per member. Prints a markdown table.
//!
//! `cargo bench -p cairn-server --bench cluster` (etcd comes from Debian's `etcd-server`; without it
//! only Cairn is measured). `CAIRN_BENCH_SECS` sets the seconds per measurement (default 10),
//! `CAIRN_BENCH_SYSTEMS=cairn` skips etcd, `CAIRN_BENCH_CLIENTS=256` picks put concurrency levels,
//! `CAIRN_BENCH_TARGET=leader` (or `=follower`) sends every request to one member of that kind,
//! and a list (`=leader,follower`, `=follower,follower`) spreads them over one member of each,
//! `CAIRN_BENCH_MEMBERS=1|3|5` sets the cluster size, `CAIRN_BENCH_ROWS=puts` runs only the put
//! rows. Each row also reports the CPU time per
//! operation of the members and of the load generator, the members' context switches, and for
//! writes how many a Raft entry carried.

mod common;

use std::time::Duration;

use common::load::{
    client_counts, load, members, report, Measured, Op, CONNECTIONS, KEY_SPACE, VALUE_SIZE,
};
use common::{connect, histogram_totals, peak_rss_kib, record, rss_kib, start, Row, System};
use etcd_client::KvClient;

async fn bench(system: System, secs: u64, rows: &mut Vec<Row>) {
    let cluster = start(system, members());
    let mut clients = Vec::new();
    for url in &cluster.client_urls {
        clients.push(connect(url).await);
    }
    // Idle memory: settled members with an empty store.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss: Vec<u64> = cluster.children.iter().map(|c| rss_kib(c.id())).collect();
    let max_rss = *rss.iter().max().unwrap() as f64 / 1024.0;
    record(
        rows,
        "idle RSS per member (max of 3)",
        system,
        format!("{max_rss:.1} MiB"),
    );

    // Connections spread over all members, as a client given every endpoint would (or, with
    // CAIRN_BENCH_TARGET, over the members of the kinds listed, one each: to tell forwarding
    // costs, and what serving clients costs a follower, from the rest).
    // Whether each member leads, in the order of `client_urls`.
    let mut leads = Vec::new();
    for c in clients.iter_mut() {
        let status = c.status().await.expect("status");
        leads.push(status.header().map(|h| h.member_id()) == Some(status.leader()));
    }
    let mut targets = cluster.client_urls.clone();
    if let Ok(wants) = std::env::var("CAIRN_BENCH_TARGET") {
        targets = Vec::new();
        for want in wants.split(',') {
            let leader = match want {
                "leader" => true,
                "follower" => false,
                _ => panic!("CAIRN_BENCH_TARGET: {want:?} is neither leader nor follower"),
            };
            let found = (0..leads.len())
                .find(|&i| leads[i] == leader && !targets.contains(&cluster.client_urls[i]));
            let i = found.unwrap_or_else(|| panic!("no {want} left to put load on"));
            targets.push(cluster.client_urls[i].clone());
        }
    }
    // A lone client uses the first connection: whether its member leads decides whether its
    // writes are forwarded, so the 1-client rows of two runs compare only alongside this.
    let first = cluster.client_urls.iter().position(|u| *u == targets[0]);
    record(
        rows,
        "the 1-client rows' member",
        system,
        if first.is_some_and(|i| leads[i]) {
            "leader"
        } else {
            "follower"
        }
        .to_string(),
    );
    let mut kvs = Vec::new();
    for i in 0..CONNECTIONS {
        let url = &targets[i % targets.len()];
        kvs.push(connect(url).await.kv_client());
    }
    let pids: Vec<u32> = cluster.children.iter().map(|c| c.id()).collect();
    let mut order: Vec<usize> = (0..leads.len()).collect();
    order.sort_by_key(|&i| !leads[i]);
    let members = Members(
        order
            .iter()
            .map(|&i| cluster.client_urls[i].clone())
            .collect(),
    );
    for &n in &client_counts() {
        let w = writes(&mut clients[0], &kvs, &pids, &members, n, Op::Put, secs).await;
        report_writes(rows, system, &format!("put, {n} clients"), &w);
    }
    // Only the put rows, for comparing builds on them alone (`CAIRN_BENCH_ROWS=puts`).
    let puts_only = std::env::var("CAIRN_BENCH_ROWS").is_ok_and(|r| r == "puts");
    if !puts_only {
        other_rows(&mut clients[0], &kvs, &pids, &members, system, secs, rows).await;
    }
    let max_of = |read: fn(u32) -> u64| {
        let kib = cluster.children.iter().map(|c| read(c.id())).max();
        format!("{:.1} MiB", kib.unwrap_or(0) as f64 / 1024.0)
    };
    record(
        rows,
        "RSS per member after load (max of 3)",
        system,
        max_of(rss_kib),
    );
    record(
        rows,
        "peak RSS per member during load (max of 3)",
        system,
        max_of(peak_rss_kib),
    );
    // What a member keeps once the load stops: an allocator may hold freed memory for a while.
    tokio::time::sleep(Duration::from_secs(3)).await;
    record(
        rows,
        "RSS per member 3 s after load (max of 3)",
        system,
        max_of(rss_kib),
    );
}

/// The rows beside the puts: the 1-client read floor, compare-and-swap, linearizable gets.
async fn other_rows(
    status: &mut etcd_client::Client,
    kvs: &[KvClient],
    pids: &[u32],
    members: &Members,
    system: System,
    secs: u64,
    rows: &mut Vec<Row>,
) {
    // The floor under the 1-client put: the same client's round trip with no consensus in it.
    let m = load(kvs, pids, 1, Op::SerializableGet, secs).await;
    report(rows, system, "serializable get, 1 client", &m);
    let w = writes(status, kvs, pids, members, 64, Op::Cas, secs).await;
    report_writes(rows, system, "txn compare-and-swap, 64 clients", &w);
    let m = load(kvs, pids, 256, Op::Get, secs).await;
    report(rows, system, "linearizable get, 256 clients", &m);
}

/// A row of writes, with how many writes a Raft entry carried (the difference in the Raft index
/// `status`'s member reports). etcd proposes every write as an entry of its own; Cairn batches
/// them, so the writes per entry tell what each entry's fixed cost (a log append and sync on a
/// quorum, a round trip to each follower, an apply) was shared by.
///
/// Also the members' mean log `fdatasync` over the row (etcd's and Cairn's
/// `etcd_disk_wal_fsync_duration_seconds`), the leader's first: at 1 client the commit waits for
/// a follower's.
async fn writes(
    status: &mut etcd_client::Client,
    kvs: &[KvClient],
    pids: &[u32],
    members: &Members,
    clients: usize,
    op: Op,
    secs: u64,
) -> Written {
    let before = status.status().await.expect("status").raft_index();
    let syncs_before = members.syncs().await;
    let m = load(kvs, pids, clients, op, secs).await;
    let after = status.status().await.expect("status").raft_index();
    let syncs = members.syncs().await;
    let per_entry = m.ops as f64 / after.saturating_sub(before).max(1) as f64;
    let fsync = syncs
        .iter()
        .zip(&syncs_before)
        .map(|((sum, n), (sum0, n0))| {
            let n = n - n0;
            if n > 0.0 {
                format!("{:.0}", (sum - sum0) / n * 1e6)
            } else {
                "-".to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" / ");
    Written {
        m,
        per_entry,
        fsync: format!("{fsync} µs"),
    }
}

/// The members' client URLs, the leader's first.
struct Members(Vec<String>);

impl Members {
    async fn syncs(&self) -> Vec<(f64, f64)> {
        let mut out = Vec::new();
        for url in &self.0 {
            out.push(histogram_totals(url, "etcd_disk_wal_fsync_duration_seconds").await);
        }
        out
    }
}

struct Written {
    m: Measured,
    per_entry: f64,
    fsync: String,
}

fn report_writes(rows: &mut Vec<Row>, system: System, what: &str, w: &Written) {
    let Written {
        m,
        per_entry,
        fsync,
    } = w;
    report(rows, system, what, m);
    record(
        rows,
        &format!("{what}: mean log fdatasync per member, leader first"),
        system,
        fsync.clone(),
    );
    eprintln!(
        "{} {what}: {per_entry:.1} writes per Raft entry",
        system.name()
    );
    let per_entry = format!("{per_entry:.1}");
    record(
        rows,
        &format!("{what}: writes per Raft entry"),
        system,
        per_entry,
    );
}

fn main() {
    common::run(
        "cluster",
        |secs| {
            format!(
            "{} members on 127.0.0.1, fsync on, {VALUE_SIZE}-byte values, 8-byte keys from {KEY_SPACE}, {CONNECTIONS} connections, {secs} s per row",
            members()
        )
        },
        |system, secs, mut rows| async move {
            bench(system, secs, &mut rows).await;
            rows
        },
    );
}
