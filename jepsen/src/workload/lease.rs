//! Lease workload: each client grants a lease, attaches a key to it and keeps it alive for a
//! while, then abandons it (lets it expire) and starts over; other clients keep reading the keys.
//! At the end every keep-alive stops, and after TTL plus the checker's grace every key is read
//! once more: expired leases must have taken their keys along.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use super::client::Conn;
use super::{spawn_clients, Ctx};
use crate::checker::lease::GRACE;

/// TTL of the workload's leases, in seconds.
pub const TTL: i64 = 3;

type Keys = Arc<Mutex<Vec<String>>>;

/// Runs the lease clients until stopped.
pub async fn run(ctx: Ctx) {
    let keys: Keys = ctx.keys.clone();
    let readers: Vec<_> = (0..2u64)
        .map(|r| tokio::spawn(reader(ctx.clone(), 700 + r, keys.clone())))
        .collect();
    let k = keys.clone();
    spawn_clients(&ctx, move |ctx, slot| holder(ctx, slot, k.clone())).await;
    for r in readers {
        let _ = r.await;
    }
}

async fn holder(ctx: Ctx, slot: u64, keys: Keys) {
    let mut p = slot;
    let conn = ctx.conn(slot);
    while !ctx.stopped() {
        let (np, granted) = ctx
            .record(
                p,
                "grant",
                json!({"ttl": TTL}),
                || conn.lease_grant(TTL),
                |(id, ttl)| json!({"lease": id, "ttl": ttl}),
            )
            .await;
        p = np;
        let Some((id, _)) = granted else {
            if !ctx.pace().await {
                break;
            }
            continue;
        };
        let key = format!("l/{id:x}");
        let (np, put) = ctx
            .record(
                p,
                "lease-put",
                json!({"key": key, "lease": id}),
                || conn.put(&key, "held", id),
                |rev| json!({"rev": rev}),
            )
            .await;
        p = np;
        if put.is_some() {
            keys.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(key.clone());
        }
        // Keep it alive for a few TTLs, then let it go.
        let until = tokio::time::Instant::now() + Duration::from_secs(fastrand::u64(4..10));
        while tokio::time::Instant::now() < until && !ctx.stopped() {
            let pause = Duration::from_millis(TTL as u64 * 1000 / 4);
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = ctx.until_stopped() => break,
            }
            let (np, ttl) = ctx
                .record(
                    p,
                    "keepalive",
                    json!({"lease": id}),
                    || conn.lease_keep_alive(id),
                    |ttl| json!({"lease": id, "ttl": ttl}),
                )
                .await;
            p = np;
            if matches!(ttl, Some(t) if t <= 0) {
                break;
            }
        }
    }
}

async fn read_key(ctx: &Ctx, conn: &Conn, p: u64, key: &str) -> u64 {
    read_as(ctx, conn, p, key, "lease-read").await
}

async fn read_as(ctx: &Ctx, conn: &Conn, p: u64, key: &str, f: &str) -> u64 {
    ctx.record(
        p,
        f,
        json!({"key": key}),
        || conn.get(key, false),
        |(kv, _)| json!({"present": kv.is_some()}),
    )
    .await
    .0
}

async fn reader(ctx: Ctx, p0: u64, keys: Keys) {
    let mut p = p0;
    let conn = ctx.conn(p0 + 1);
    while ctx.pace().await {
        let key = {
            let k = keys.lock().unwrap_or_else(|e| e.into_inner());
            // Recent keys mostly: they are the ones whose leases are being kept alive.
            let n = k.len();
            if n == 0 {
                continue;
            }
            k[n - 1 - fastrand::usize(..n.min(8))].clone()
        };
        p = read_key(&ctx, &conn, p, &key).await;
    }
}

/// Waits for every abandoned lease to be past TTL plus grace, then reads every key once.
pub async fn finish(ctx: Ctx) {
    tokio::time::sleep(Duration::from_secs(TTL as u64) + GRACE + Duration::from_secs(1)).await;
    let keys = ctx.keys.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let conn = Conn::connect(&ctx.endpoints[0], &ctx.options, ctx.timeout);
    let mut p = 800;
    for key in keys {
        p = read_as(&ctx, &conn, p, &key, "lease-final-read").await;
    }
}
