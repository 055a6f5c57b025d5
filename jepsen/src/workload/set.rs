//! Set workload: unique elements are appended to a few comma-separated sets, each add a
//! read-modify-write guarded by the set's mod_revision (retried only when the guard failed, so
//! an add is applied at most once). After faults healed, one final read lists every set.

use std::time::Duration;

use serde_json::{json, Value};

use super::client::{ClientError, Conn, Guarded};
use super::{retry, spawn_clients, Ctx};

/// Number of sets.
pub const SETS: i64 = 8;

/// Runs the set clients until stopped.
pub async fn run(ctx: Ctx) {
    spawn_clients(&ctx, |ctx, slot| async move { client(ctx, slot).await }).await;
}

async fn client(ctx: Ctx, slot: u64) {
    let mut p = slot;
    let conn = ctx.conn(slot);
    while ctx.pace().await {
        let e = ctx.unique();
        let key = format!("s{}", e % SETS);
        p = ctx
            .record(
                p,
                "add",
                json!({"key": key, "element": e}),
                || add(&conn, &key, e),
                |_| json!({"key": key, "element": e}),
            )
            .await
            .0;
    }
}

/// One add: only a guard that certainly failed is retried.
async fn add(conn: &Conn, key: &str, e: i64) -> Result<(), ClientError> {
    for _ in 0..20 {
        let (kv, _) = conn.get(key, false).await.map_err(|mut err| {
            // Nothing was written yet: a failed read makes the add certainly not happen.
            err.definite = true;
            err
        })?;
        let (value, rev) = kv.map(|kv| (kv.value, kv.mod_revision)).unwrap_or_default();
        let next = if value.is_empty() {
            e.to_string()
        } else {
            format!("{value},{e}")
        };
        let g = Guarded {
            mod_revisions: vec![(key.to_string(), rev)],
            puts: vec![(key.to_string(), next)],
            ..Default::default()
        };
        let (ok, _, _) = conn.guarded(&g).await?;
        if ok {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(fastrand::u64(1..20))).await;
    }
    Err(ClientError {
        code: tonic::Code::Aborted,
        message: "contention: guard failed 20 times".into(),
        definite: true,
    })
}

/// Reads every set once the cluster serves again.
pub async fn finish(ctx: Ctx) {
    let conn = Conn::connect(&ctx.endpoints[0], &ctx.options, ctx.timeout);
    let p = 999_999;
    ctx.recorder.invoke(p, "final-read", json!({}));
    let got = retry(Duration::from_secs(30), || conn.get_prefix("s")).await;
    match got {
        Some((kvs, _)) => {
            let mut sets = serde_json::Map::new();
            for kv in kvs {
                let elems: Vec<Value> = kv
                    .value
                    .split(',')
                    .filter_map(|x| x.parse::<i64>().ok())
                    .map(Value::from)
                    .collect();
                sets.insert(kv.key, Value::Array(elems));
            }
            ctx.recorder.complete(
                p,
                crate::history::OpType::Ok,
                "final-read",
                json!({ "sets": sets }),
                None,
            );
        }
        None => ctx.recorder.complete(
            p,
            crate::history::OpType::Fail,
            "final-read",
            Value::Null,
            Some("no member answered".into()),
        ),
    }
}
