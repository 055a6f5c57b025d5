//! What securing a cluster costs a write, Cairn beside etcd in the same run: Puts at 1, 16 and
//! 256 clients over plaintext, over mutual TLS on the client and peer ports, and over mutual TLS
//! with authentication on (a user whose role may read and write every key, so every request
//! carries a token and passes a permission check). Prints a markdown table with the cost of each
//! secured mode against plaintext.
//!
//! `cargo bench -p cairn-server --bench secure`; the settings of the cluster bench apply
//! (`CAIRN_BENCH_SECS`, `CAIRN_BENCH_SYSTEMS`, `CAIRN_BENCH_CLIENTS`, `CAIRN_BENCH_MEMBERS`,
//! `CAIRN_BENCH_BIN`), and `CAIRN_BENCH_SECURITY=plaintext,tls,auth` picks the modes.

mod common;

use common::load::{client_counts, load, members, Op, CONNECTIONS, VALUE_SIZE};
use common::{connect_with, record, start_secured, Row, Security, System};

async fn bench(system: System, secs: u64, rows: &mut Vec<Row>) {
    let modes = modes();
    let mut plain: Vec<f64> = Vec::new();
    for &security in &modes {
        let cluster = start_secured(system, members(), security);
        if security == Security::TlsAuth {
            cluster.enable_auth().await;
        }
        let mut kvs = Vec::new();
        for i in 0..CONNECTIONS {
            let url = &cluster.client_urls[i % cluster.client_urls.len()];
            kvs.push(connect_with(url, cluster.options()).await.kv_client());
        }
        let pids: Vec<u32> = cluster.children.iter().map(|c| c.id()).collect();
        for (i, &n) in client_counts().iter().enumerate() {
            let m = load(&kvs, &pids, n, Op::Put, secs).await;
            eprintln!(
                "{} {} put, {n} clients: {:.0}/s p99 {:.2} ms",
                system.name(),
                security.name(),
                m.ops_per_sec,
                m.p99_ms
            );
            let cost = if security == Security::Plain {
                plain.push(m.ops_per_sec);
                String::new()
            } else {
                plain
                    .get(i)
                    .map(|p| format!(", {:+.0} %", (m.ops_per_sec / p - 1.0) * 100.0))
                    .unwrap_or_default()
            };
            record(
                rows,
                &format!("put, {n} clients, {}: ops/s (p99 ms)", security.name()),
                system,
                format!("{:.0} ({:.1}){cost}", m.ops_per_sec, m.p99_ms),
            );
            record(
                rows,
                &format!(
                    "put, {n} clients, {}: CPU per op, members / generator",
                    security.name()
                ),
                system,
                m.cost(),
            );
        }
    }
}

/// `CAIRN_BENCH_SECURITY` (default `plaintext,tls,auth`).
fn modes() -> Vec<Security> {
    let want =
        std::env::var("CAIRN_BENCH_SECURITY").unwrap_or_else(|_| "plaintext,tls,auth".into());
    let mut modes = Vec::new();
    for w in want.split(',').map(str::trim) {
        match w {
            "plaintext" => modes.push(Security::Plain),
            "tls" => modes.push(Security::Tls),
            "auth" => modes.push(Security::TlsAuth),
            other => panic!("CAIRN_BENCH_SECURITY: unknown mode {other:?}"),
        }
    }
    modes
}

fn main() {
    common::run(
        "secure",
        |secs| {
            format!(
                "{} members on 127.0.0.1, fsync on, {VALUE_SIZE}-byte values, {CONNECTIONS} connections, {secs} s per row; the percentage is the change against plaintext",
                members()
            )
        },
        |system, secs, mut rows| async move {
            bench(system, secs, &mut rows).await;
            rows
        },
    );
}
