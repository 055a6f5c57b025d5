//! Watch workload: writers put unique values under `w/` (some as two-key transactions, so one
//! revision holds several events) while watchers follow the prefix with prev_kv and progress
//! notifications. A watcher whose stream breaks resumes from the revision after the last event or
//! progress notification it saw. After faults healed, a reference watch from revision 1 records
//! the complete event history the checker compares everything against.

use std::time::Duration;

use serde_json::{json, Value};

use super::client::{Batch, Conn, Guarded};
use super::{spawn_clients, Ctx, PROCESS_STRIDE};
use crate::history::OpType;

/// Concurrent watchers.
pub const WATCHERS: u64 = 3;
const PREFIX: &str = "w/";
/// Watcher processes are numbered from here.
const WATCHER_BASE: u64 = 500;

/// Runs writers and watchers until stopped.
pub async fn run(ctx: Ctx) {
    let watchers: Vec<_> = (0..WATCHERS)
        .map(|w| tokio::spawn(watcher(ctx.clone(), w)))
        .collect();
    spawn_clients(&ctx, |ctx, slot| async move { writer(ctx, slot).await }).await;
    for w in watchers {
        let _ = w.await;
    }
}

async fn writer(ctx: Ctx, slot: u64) {
    let mut p = slot;
    let conn = ctx.conn(slot);
    while ctx.pace().await {
        let n = if fastrand::u8(..4) == 0 { 2 } else { 1 };
        let mut keys: Vec<String> = (0..n)
            .map(|_| format!("{PREFIX}k{}", fastrand::u8(..4)))
            .collect();
        keys.dedup();
        let puts: Vec<(String, String)> = keys
            .into_iter()
            .map(|k| (k, ctx.unique().to_string()))
            .collect();
        let g = Guarded {
            puts: puts.clone(),
            ..Default::default()
        };
        p = ctx
            .record(
                p,
                "put",
                json!({ "puts": puts }),
                || async { conn.guarded(&g).await.map(|(_, rev, _)| rev) },
                |rev| json!({ "rev": rev }),
            )
            .await
            .0;
    }
}

/// The JSON form of a watch response's events.
fn events(r: &Batch) -> Vec<Value> {
    r.events
        .iter()
        .filter_map(|e| {
            let kv = e.kv.as_ref()?;
            let kind = if e.r#type == 1 { "delete" } else { "put" };
            Some(json!({
                "type": kind,
                "key": String::from_utf8_lossy(&kv.key),
                "value": (kind == "put").then(|| String::from_utf8_lossy(&kv.value).into_owned()),
                "rev": kv.mod_revision,
                "prev": e.prev_kv.as_ref().map(|p| String::from_utf8_lossy(&p.value).into_owned()),
            }))
        })
        .collect()
}

async fn watcher(ctx: Ctx, w: u64) {
    let mut p = WATCHER_BASE + w;
    // Watchers sit on different members than the writers' first clients.
    let conn = ctx.conn(w + 1);
    let mut from: i64 = 1;
    while !ctx.stopped() {
        ctx.recorder
            .invoke(p, "watch", json!({"watcher": w, "from": from}));
        let mut responses: Vec<Value> = Vec::new();
        let mut broken: Option<String> = None;
        let mut resumes = 0;
        match conn.watch(PREFIX, from, true).await {
            Err(e) => broken = Some(e.to_string()),
            Ok(mut stream) => {
                let mut progress = tokio::time::interval(Duration::from_millis(700));
                loop {
                    tokio::select! {
                        _ = ctx.until_stopped() => break,
                        _ = progress.tick() => stream.request_progress().await,
                        msg = stream.next() => match msg {
                            Ok(Some(r)) => {
                                let rev = r.revision;
                                let ev = events(&r);
                                let is_progress = ev.is_empty();
                                if let Some(last) = ev.last().and_then(|e| e["rev"].as_i64()) {
                                    from = from.max(last + 1);
                                } else if is_progress {
                                    from = from.max(rev + 1);
                                }
                                responses.push(json!({"rev": rev, "progress": is_progress, "events": ev}));
                            }
                            Ok(None) => { broken = Some("stream ended".into()); break; }
                            Err(e) => { broken = Some(e.to_string()); break; }
                        }
                    }
                }
                resumes = stream.resumes();
            }
        }
        let value = json!({"watcher": w, "resumes": resumes, "responses": responses});
        match broken {
            None => ctx.recorder.complete(p, OpType::Ok, "watch", value, None),
            Some(e) => {
                ctx.recorder
                    .complete(p, OpType::Info, "watch", value, Some(e));
                p += PROCESS_STRIDE;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Records the complete event history with a watch from revision 1.
pub async fn finish(ctx: Ctx) {
    let p = 999_998;
    ctx.recorder.invoke(p, "watch-reference", json!({}));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut last_error = String::new();
    for endpoint in ctx.endpoints.iter().cycle() {
        if tokio::time::Instant::now() > deadline {
            break;
        }
        let conn = Conn::connect(endpoint, &ctx.options, ctx.timeout);
        let target = match conn.get_prefix(PREFIX).await {
            Ok((_, rev)) => rev,
            Err(e) => {
                last_error = e.to_string();
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        match reference(&conn, target).await {
            Ok(all) => {
                ctx.recorder.complete(
                    p,
                    OpType::Ok,
                    "watch-reference",
                    json!({"events": all}),
                    None,
                );
                return;
            }
            Err(e) => last_error = e,
        }
    }
    ctx.recorder.complete(
        p,
        OpType::Fail,
        "watch-reference",
        Value::Null,
        Some(last_error),
    );
}

async fn reference(conn: &Conn, target: i64) -> Result<Vec<Value>, String> {
    let mut stream = conn
        .watch(PREFIX, 1, true)
        .await
        .map_err(|e| e.to_string())?;
    let mut all = Vec::new();
    let mut seen_rev = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    stream.request_progress().await;
    while seen_rev < target {
        let msg = tokio::time::timeout_at(deadline, stream.next())
            .await
            .map_err(|_| format!("reference watch stalled at {seen_rev} of {target}"))?
            .map_err(|e| e.to_string())?
            .ok_or("reference stream ended")?;
        let ev = events(&msg);
        if let Some(r) = ev.last().and_then(|e| e["rev"].as_i64()) {
            seen_rev = r;
        } else {
            seen_rev = seen_rev.max(msg.revision);
        }
        all.extend(ev);
    }
    Ok(all)
}
