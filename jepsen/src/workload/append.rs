//! List-append workload (Elle): transactions of 1-4 micro-operations, each a read of a list or
//! an append of a unique value, over a few keys. A transaction reads its keys in one snapshot,
//! then commits its appends with a transaction guarded by every key's mod_revision, so the reads
//! are still current at the commit point. A guard that failed makes the transaction `fail`.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::client::{ClientError, Conn, Guarded};
use super::{spawn_clients, Ctx, Fault};

/// Keys the transactions share.
pub const KEYS: usize = 5;

/// Runs the append clients until stopped.
pub async fn run(ctx: Ctx) {
    spawn_clients(&ctx, |ctx, slot| async move { client(ctx, slot).await }).await;
}

#[derive(Clone, Debug)]
enum Mop {
    Read(String),
    Append(String, i64),
}

async fn client(ctx: Ctx, slot: u64) {
    let mut p = slot;
    let conn = ctx.conn(slot);
    let stale = ctx.fault == Some(Fault::StaleReads);
    while ctx.pace().await {
        // The faulty mode mostly reads: only read-only transactions are served wrongly, and a
        // write on a partitioned member blocks the client for a whole timeout.
        let read_only = stale && fastrand::u8(..100) < 80;
        let mops: Vec<Mop> = (0..fastrand::usize(1..=4))
            .map(|_| {
                let k = format!("a{}", fastrand::usize(..KEYS));
                if read_only || fastrand::bool() {
                    Mop::Read(k)
                } else {
                    Mop::Append(k, ctx.unique())
                }
            })
            .collect();
        let invoke = json!({ "ops": encode(&mops, None) });
        p = ctx
            .record(
                p,
                "txn",
                invoke,
                || execute(&conn, &mops, stale),
                |reads| json!({ "ops": encode(&mops, Some(reads)) }),
            )
            .await
            .0;
    }
}

fn encode(mops: &[Mop], reads: Option<&Vec<Option<Vec<i64>>>>) -> Value {
    Value::Array(
        mops.iter()
            .enumerate()
            .map(|(i, m)| match m {
                Mop::Read(k) => json!(["r", k, reads.and_then(|r| r[i].clone())]),
                Mop::Append(k, v) => json!(["append", k, v]),
            })
            .collect(),
    )
}

fn parse(v: &str) -> Vec<i64> {
    v.split(',').filter_map(|x| x.parse().ok()).collect()
}

/// Runs one transaction; returns per micro-op the list a read saw.
async fn execute(
    conn: &Conn,
    mops: &[Mop],
    stale: bool,
) -> Result<Vec<Option<Vec<i64>>>, ClientError> {
    let mut keys: Vec<String> = mops
        .iter()
        .map(|m| match m {
            Mop::Read(k) | Mop::Append(k, _) => k.clone(),
        })
        .collect();
    keys.sort();
    keys.dedup();
    // One snapshot of every involved key.
    let read_only = mops.iter().all(|m| matches!(m, Mop::Read(_)));
    if stale && read_only {
        // Wrong on purpose: each list read separately and locally (serializable) by the member
        // this client is bound to, which may be partitioned away and behind.
        let mut reads = Vec::new();
        for m in mops {
            if let Mop::Read(k) = m {
                let (kv, _) = conn.get(k, true).await.map_err(|mut e| {
                    e.definite = true;
                    e
                })?;
                reads.push(Some(kv.map(|kv| parse(&kv.value)).unwrap_or_default()));
            }
        }
        return Ok(reads);
    }
    let snapshot = Guarded {
        reads: keys.clone(),
        ..Default::default()
    };
    let (_, _, kvs) = conn.guarded(&snapshot).await.map_err(|mut e| {
        e.definite = true;
        e
    })?;
    let mut lists: BTreeMap<String, (Vec<i64>, i64)> = BTreeMap::new();
    for (k, kv) in keys.iter().zip(kvs) {
        let (list, rev) = kv
            .map(|kv| (parse(&kv.value), kv.mod_revision))
            .unwrap_or_default();
        lists.insert(k.clone(), (list, rev));
    }
    let mut reads = Vec::with_capacity(mops.len());
    let mut written: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for m in mops {
        match m {
            Mop::Read(k) => {
                let mut l = lists[k].0.clone();
                l.extend(written.get(k).into_iter().flatten());
                reads.push(Some(l));
            }
            Mop::Append(k, v) => {
                written.entry(k.clone()).or_default().push(*v);
                reads.push(None);
            }
        }
    }
    if written.is_empty() {
        return Ok(reads);
    }
    let commit = Guarded {
        mod_revisions: lists.iter().map(|(k, (_, r))| (k.clone(), *r)).collect(),
        puts: written
            .iter()
            .map(|(k, new)| {
                let mut l = lists[k].0.clone();
                l.extend(new);
                let s: Vec<String> = l.iter().map(i64::to_string).collect();
                (k.clone(), s.join(","))
            })
            .collect(),
        ..Default::default()
    };
    let (ok, _, _) = conn.guarded(&commit).await?;
    if ok {
        Ok(reads)
    } else {
        Err(ClientError {
            code: tonic::Code::Aborted,
            message: "a key changed since the snapshot".into(),
            definite: true,
        })
    }
}

/// One last read of every list once the cluster serves again, so every acknowledged append has
/// a place in the version order.
pub async fn finish(ctx: Ctx) {
    let conn = Conn::connect(&ctx.endpoints[0], &ctx.options, ctx.timeout);
    let mops: Vec<Mop> = (0..KEYS).map(|k| Mop::Read(format!("a{k}"))).collect();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut p = 999_997;
    loop {
        let (np, done) = ctx
            .record(
                p,
                "txn",
                json!({ "ops": encode(&mops, None) }),
                || execute(&conn, &mops, false),
                |reads| json!({ "ops": encode(&mops, Some(reads)) }),
            )
            .await;
        p = np;
        if done.is_some() || tokio::time::Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}
