//! Building blocks for the server-side concurrency services (Lock, Election): the same recipes
//! etcd's clients use (a key per lease under a prefix, ordered by create revision, waiting via
//! watch), run against this member's own Raft and watch hub.

use tokio::sync::mpsc;

use super::ServerContext;
use crate::command::{Applied, Command, CommandResponse};
use crate::error::ServerError;
use crate::mvcc::{
    Compare, CompareResult, CompareTarget, EventType, RangeRequest, RangeResponse, SortOrder,
    SortTarget, TxnRequest, TxnResponse,
};
use crate::watch::{WatchMessage, WatchSpec};

/// `prefix`'s range end: the prefix with its last byte incremented (trailing 0xff bytes dropped).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

pub(crate) fn create_revision_is(key: &[u8], rev: i64) -> Compare {
    Compare {
        key: key.to_vec(),
        range_end: Vec::new(),
        result: CompareResult::Equal,
        target: CompareTarget::CreateRevision(rev),
    }
}

/// The first-created key under `prefix` (the owner), optionally only among keys created at or
/// before `max_create_revision`, newest first.
pub(crate) fn first_created(prefix: &[u8], newest_before: Option<i64>) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_target: SortTarget::Create,
        sort_order: if newest_before.is_some() {
            SortOrder::Descend
        } else {
            SortOrder::Ascend
        },
        max_create_revision: newest_before.unwrap_or(0),
        ..Default::default()
    }
}

pub(crate) async fn txn(
    ctx: &ServerContext,
    t: TxnRequest,
) -> Result<(TxnResponse, i64), ServerError> {
    ctx.check_change_size(&t)?;
    let cmd = ctx.with_auth(ctx.caller_info().await?, Command::Txn(t));
    let CommandResponse { revision, result } = ctx.raft.propose(cmd, 256).await?;
    match result? {
        Applied::Txn(r) => Ok((r, revision)),
        other => Err(ServerError::Internal(format!(
            "unexpected apply result {other:?}"
        ))),
    }
}

/// A linearizable read.
pub(crate) async fn range(
    ctx: &ServerContext,
    r: RangeRequest,
) -> Result<(RangeResponse, i64), ServerError> {
    // Checked against the auth state the read sees (see the KV service's range).
    ctx.raft.read_index().await?;
    ctx.check_read(&ctx.caller_info().await?, &r.key, &r.range_end)?;
    Ok(ctx.raft.state().range(&r)?)
}

/// A private watcher on the hub, removed when dropped.
pub(crate) struct Watching {
    ctx: ServerContext,
    stream: u64,
    pub rx: mpsc::Receiver<WatchMessage>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.ctx.raft.state().hub().close_stream(self.stream);
    }
}

pub(crate) async fn watch(ctx: &ServerContext, spec: WatchSpec) -> Result<Watching, ServerError> {
    ctx.check_read(&ctx.caller_info().await?, &spec.key, &spec.range_end)?;
    let stream = ctx
        .streams
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (tx, rx) = mpsc::channel(16);
    ctx.raft
        .state()
        .hub()
        .watch(stream, 0, spec, &tx)
        .await
        .map_err(|e| ServerError::Internal(e.to_string()))?;
    Ok(Watching {
        ctx: ctx.clone(),
        stream,
        rx,
    })
}

/// Waits until `key` is deleted at some revision after `after`.
pub(crate) async fn wait_delete(
    ctx: &ServerContext,
    key: &[u8],
    after: i64,
) -> Result<(), ServerError> {
    let mut w = watch(
        ctx,
        WatchSpec {
            key: key.to_vec(),
            start_revision: after + 1,
            no_put: true,
            ..Default::default()
        },
    )
    .await?;
    while let Some(msg) = w.rx.recv().await {
        match msg {
            WatchMessage::Events { events, .. }
                if events.iter().any(|e| e.kind == EventType::Delete) =>
            {
                return Ok(())
            }
            WatchMessage::Canceled { .. } => return Err(ServerError::Compacted),
            _ => {}
        }
    }
    Err(ServerError::Internal("watch ended".into()))
}

/// Waits until every key under `prefix` created at or before `max_create_revision` is gone.
pub(crate) async fn wait_deletes(
    ctx: &ServerContext,
    prefix: &[u8],
    max_create_revision: i64,
) -> Result<(), ServerError> {
    loop {
        let (resp, rev) = range(ctx, first_created(prefix, Some(max_create_revision))).await?;
        match resp.kvs.first() {
            None => return Ok(()),
            Some(kv) => wait_delete(ctx, &kv.key, rev).await?,
        }
    }
}

/// Deletes `key` if the request that created it is abandoned before it finishes (a client that gave
/// up waiting must not become the owner later).
pub(crate) struct AbandonGuard {
    pub ctx: ServerContext,
    pub key: Option<Vec<u8>>,
}

impl AbandonGuard {
    pub fn disarm(mut self) {
        self.key = None;
    }
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let ctx = self.ctx.clone();
            tokio::spawn(async move {
                let del = crate::mvcc::DeleteRangeRequest {
                    key,
                    ..Default::default()
                };
                // Without the caller's credentials (which may have lapsed since): the member
                // removes what the abandoned request itself created.
                let _ = ctx.raft.propose(Command::DeleteRange(del), 64).await;
            });
        }
    }
}
