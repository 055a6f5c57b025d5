//! etcd's `v3lockpb.Lock` service.
//!
//! A lock on `name` is the key `name/<lease in hex>`, attached to the caller's lease; the holder is
//! the key with the lowest create revision under `name/`. Waiters watch the key just ahead of them.
//! A caller without a lease gets one of its own, as etcd's session would grant it (see
//! [`SESSION_TTL`]).
//! The create revision of the returned key grows with every acquisition, so it works as a fencing
//! token: a lock alone cannot stop a holder whose lease expired while it was paused from writing,
//! but a store that rejects writes carrying an older token can.

use cairn_proto::v3lockpb as pb;
use cairn_proto::v3lockpb::lock_server::Lock;
use tonic::{Request, Response, Status};

use super::recipes::{self, create_revision_is, first_created, AbandonGuard};
use super::{lease, ServerContext};
use crate::error::ServerError;
use crate::mvcc::{PutRequest, RangeRequest, RequestOp, ResponseOp, TxnRequest};

pub(crate) struct LockService {
    pub ctx: ServerContext,
}

/// The TTL (seconds) of the lease granted to a Lock request that names none: etcd's lock service
/// opens a session with the default session TTL and stops refreshing it at once, so nothing keeps
/// that lease alive. The lock is held until it is unlocked or this lease expires, whichever comes
/// first, and the lease is left to expire even if the request is abandoned.
pub(crate) const SESSION_TTL: i64 = 60;

/// The key a lease holds under an election or lock name, as etcd's clients name it.
pub(crate) fn lease_key(name: &[u8], lease: i64) -> (Vec<u8>, Vec<u8>) {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    let mut key = prefix.clone();
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    (prefix, key)
}

/// Creates `key` (if this lease does not hold it yet) and returns its create revision, its current
/// value and the txn revision.
pub(crate) async fn claim(
    ctx: &ServerContext,
    key: &[u8],
    value: &[u8],
    lease: i64,
) -> Result<(i64, Vec<u8>, i64), ServerError> {
    let get = RequestOp::Range(RangeRequest {
        key: key.to_vec(),
        ..Default::default()
    });
    let t = TxnRequest {
        compare: vec![create_revision_is(key, 0)],
        success: vec![RequestOp::Put(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..Default::default()
        })],
        failure: vec![get],
    };
    let (resp, rev) = recipes::txn(ctx, t).await?;
    if resp.succeeded {
        return Ok((rev, value.to_vec(), rev));
    }
    match resp.responses.first() {
        Some(ResponseOp::Range(r)) if !r.kvs.is_empty() => {
            Ok((r.kvs[0].create_revision, r.kvs[0].value.clone(), rev))
        }
        // Deleted between the compare and now cannot happen inside one txn; treat as a retryable miss.
        _ => Err(ServerError::Internal("lock key vanished".into())),
    }
}

/// Waits for ownership of `prefix` after claiming a key at `my_rev`, then checks the key survived.
pub(crate) async fn wait_turn(
    ctx: &ServerContext,
    prefix: &[u8],
    key: &[u8],
    my_rev: i64,
) -> Result<i64, ServerError> {
    let (owner, _) = recipes::range(ctx, first_created(prefix, None)).await?;
    if owner.kvs.first().map(|kv| kv.create_revision) != Some(my_rev) {
        recipes::wait_deletes(ctx, prefix, my_rev - 1).await?;
    }
    let (mine, rev) = recipes::range(
        ctx,
        RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        },
    )
    .await?;
    if mine.kvs.is_empty() {
        // The lease expired while waiting.
        return Err(ServerError::SessionExpired);
    }
    Ok(rev)
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(
        &self,
        req: Request<pb::LockRequest>,
    ) -> Result<Response<pb::LockResponse>, Status> {
        let ctx = self.ctx.for_caller(&req);
        let req = req.into_inner();
        let lease = match req.lease {
            0 => lease::grant(&ctx, 0, SESSION_TTL).await?.0,
            given => given,
        };
        let (prefix, key) = lease_key(&req.name, lease);
        let (my_rev, _, _) = claim(&ctx, &key, b"", lease).await?;
        let guard = AbandonGuard {
            ctx: ctx.clone(),
            key: Some(key.clone()),
        };
        let rev = wait_turn(&ctx, &prefix, &key, my_rev).await?;
        guard.disarm();
        Ok(Response::new(pb::LockResponse {
            header: ctx.header(rev),
            key,
        }))
    }

    async fn unlock(
        &self,
        req: Request<pb::UnlockRequest>,
    ) -> Result<Response<pb::UnlockResponse>, Status> {
        let ctx = self.ctx.for_caller(&req);
        let key = req.into_inner().key;
        let del = crate::mvcc::DeleteRangeRequest {
            key,
            ..Default::default()
        };
        let cmd = ctx.with_auth(
            ctx.caller_info().await?,
            crate::command::Command::DeleteRange(del),
        );
        let resp = ctx.raft.propose(cmd, 64).await.map_err(ServerError::from)?;
        resp.result.map_err(ServerError::from)?;
        Ok(Response::new(pb::UnlockResponse {
            header: ctx.header(resp.revision),
        }))
    }
}
