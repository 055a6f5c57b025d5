//! The `Lease` service.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::lease_server::Lease;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

use super::ServerContext;
use crate::command::{Applied, Command, CommandResponse};
use crate::error::ServerError;
use crate::lease::MAX_LEASE_TTL;

pub(crate) struct LeaseService {
    pub ctx: ServerContext,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

/// A fresh positive lease id. Collisions are caught at apply ("lease already exists") and retried.
fn new_lease_id(member_id: u64) -> i64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(member_id);
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    ((h.finish() >> 1) as i64).max(1)
}

async fn grant_as(ctx: &ServerContext, id: i64, ttl: i64) -> Result<(i64, i64, i64), ServerError> {
    let CommandResponse { revision, result } = ctx
        .raft
        .propose(Command::LeaseGrant { id, ttl }, 16)
        .await?;
    match result? {
        Applied::LeaseGrant { id, ttl } => Ok((id, ttl, revision)),
        other => Err(ServerError::Internal(format!(
            "unexpected apply result {other:?}"
        ))),
    }
}

/// Grants a lease of `ttl` seconds (raised to the minimum) under `id`, or a fresh id for 0.
/// Returns (id, granted TTL, revision).
pub(crate) async fn grant(
    ctx: &ServerContext,
    id: i64,
    ttl: i64,
) -> Result<(i64, i64, i64), ServerError> {
    let ttl = ttl.max(ctx.limits.min_lease_ttl);
    ctx.check_quota(16).await?;
    if id != 0 {
        return grant_as(ctx, id, ttl).await;
    }
    let mut attempt = 0;
    loop {
        match grant_as(ctx, new_lease_id(ctx.member_id), ttl).await {
            Err(ServerError::LeaseExists) if attempt < 3 => attempt += 1,
            other => return other,
        }
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        // Anyone may grant a lease, as in etcd 3.4; a bad token is still refused.
        self.ctx.auth_info(&req).await?;
        let req = req.into_inner();
        if req.ttl > MAX_LEASE_TTL {
            return Err(ServerError::LeaseTtlTooLarge.into());
        }
        let (id, ttl, revision) = grant(&self.ctx, req.id, req.ttl).await?;
        Ok(Response::new(pb::LeaseGrantResponse {
            header: self.ctx.header(revision),
            id,
            ttl,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        req: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let info = self.ctx.auth_info(&req).await?;
        let id = req.into_inner().id;
        let cmd = self.ctx.with_auth(info, Command::LeaseRevoke(id));
        let CommandResponse { revision, result } = self
            .ctx
            .raft
            .propose(cmd, 16)
            .await
            .map_err(ServerError::from)?;
        result.map_err(ServerError::from)?;
        Ok(Response::new(pb::LeaseRevokeResponse {
            header: self.ctx.header(revision),
        }))
    }

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<BoxStream<pb::LeaseKeepAliveResponse>>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let ctx = self.ctx.clone();
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let req = tokio::select! {
                    msg = inbound.message() => match msg {
                        Ok(Some(req)) => req,
                        _ => break,
                    },
                    _ = shutdown.wait_for(|s| *s) => break,
                };
                let reply = match ctx.raft.lease_keep_alive(req.id).await {
                    Ok(ttl) => Ok(pb::LeaseKeepAliveResponse {
                        header: ctx.header(ctx.raft.state().current_revision()),
                        id: req.id,
                        ttl,
                    }),
                    Err(e) => Err(Status::from(ServerError::from(e))),
                };
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let req = req.into_inner();
        let found = self
            .ctx
            .raft
            .lease_time_to_live(req.id)
            .await
            .map_err(ServerError::from)?;
        let header = self.ctx.header(self.ctx.raft.state().current_revision());
        Ok(Response::new(match found {
            Some((remaining, granted, keys)) => pb::LeaseTimeToLiveResponse {
                header,
                id: req.id,
                ttl: remaining,
                granted_ttl: granted,
                keys: if req.keys { keys } else { Vec::new() },
            },
            None => pb::LeaseTimeToLiveResponse {
                header,
                id: req.id,
                ttl: -1,
                ..Default::default()
            },
        }))
    }

    async fn lease_leases(
        &self,
        _req: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        let state = self.ctx.raft.state();
        let leases = state
            .lease_ttls()
            .into_iter()
            .map(|(id, _)| pb::LeaseStatus { id })
            .collect();
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: self.ctx.header(state.current_revision()),
            leases,
        }))
    }
}
