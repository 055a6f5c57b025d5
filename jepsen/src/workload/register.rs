//! Register workload: reads, writes, compare-and-set on value and on mod_revision over a few
//! keys; checked for linearizability per key. Values are unique, so every read names the write
//! it saw.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::{spawn_clients, Ctx, Fault};

/// Keys the clients share; few, so operations contend.
pub const KEYS: usize = 3;

/// Runs the register clients until stopped.
pub async fn run(ctx: Ctx) {
    spawn_clients(&ctx, |ctx, slot| async move { client(ctx, slot).await }).await;
}

async fn client(ctx: Ctx, slot: u64) {
    let mut p = slot;
    let conn = ctx.conn(slot);
    let serializable = ctx.fault == Some(Fault::StaleReads);
    // What this client last saw per key, to aim its compare-and-sets at plausible states.
    let mut seen: HashMap<String, (i64, i64)> = HashMap::new();
    while ctx.pace().await {
        let key = format!("r{}", fastrand::usize(..KEYS));
        let roll = fastrand::u8(..100);
        // Reading mostly in the faulty mode lets a stale member answer often within a short
        // run; writes to a partitioned member block the client for a whole timeout.
        let reads = if serializable { 85 } else { 50 };
        if roll < reads {
            let (np, got) = ctx
                .record(
                    p,
                    "read",
                    json!({"key": key}),
                    || conn.get(&key, serializable),
                    |(kv, _)| {
                        let value = kv.as_ref().and_then(|kv| kv.value.parse::<i64>().ok());
                        json!({"key": key, "value": value,
                               "rev": kv.as_ref().map(|kv| kv.mod_revision).unwrap_or(0)})
                    },
                )
                .await;
            p = np;
            if let Some((Some(kv), _)) = got {
                if let Ok(v) = kv.value.parse() {
                    seen.insert(key.clone(), (v, kv.mod_revision));
                }
            }
        } else if roll < reads + (100 - reads) / 2 {
            let v = ctx.unique();
            let text = v.to_string();
            p = ctx
                .record(
                    p,
                    "write",
                    json!({"key": key, "value": v}),
                    || conn.put(&key, &text, 0),
                    |rev| json!({"key": key, "value": v, "rev": rev}),
                )
                .await
                .0;
        } else {
            let to = ctx.unique();
            let last = seen.get(&key).copied();
            let by_rev = roll >= 90;
            let mut g = super::client::Guarded {
                puts: vec![(key.clone(), to.to_string())],
                ..Default::default()
            };
            let (f, invoke): (&str, Value) = if by_rev {
                let expect = last.map(|l| l.1).unwrap_or(0);
                g.mod_revisions.push((key.clone(), expect));
                ("cas-rev", json!({"key": key, "expect": expect, "to": to}))
            } else {
                let from = last.map(|l| l.0).unwrap_or(0);
                g.values.push((key.clone(), from.to_string()));
                ("cas", json!({"key": key, "from": from, "to": to}))
            };
            let mut done = invoke.clone();
            p = ctx
                .record(
                    p,
                    f,
                    invoke,
                    || conn.guarded(&g),
                    |(ok, rev, _)| {
                        done["ok"] = json!(ok);
                        done["rev"] = json!(rev);
                        done
                    },
                )
                .await
                .0;
        }
    }
}
