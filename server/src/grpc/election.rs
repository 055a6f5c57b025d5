//! etcd's `v3electionpb.Election` service: the leader of election `name` is the key under `name/`
//! with the lowest create revision; campaigning creates `name/<lease in hex>` and waits its turn.
//! A Campaign naming no lease (0) campaigns with a lease of its own, as etcd's election service
//! does: it opens a session, which grants the default session TTL (60 s), and stops refreshing it
//! at once. The granted lease is returned in the leader key; leadership ends at Resign or when that
//! lease expires, whichever comes first.

use cairn_proto::v3electionpb as pb;
use cairn_proto::v3electionpb::election_server::Election;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use super::lock::{claim, lease_key, wait_turn, SESSION_TTL};
use super::recipes::{self, create_revision_is, first_created, prefix_end, AbandonGuard};
use super::{convert, lease, ServerContext};
use crate::error::ServerError;
use crate::mvcc::{DeleteRangeRequest, EventType, KeyValue, PutRequest, RequestOp, TxnRequest};
use crate::watch::{WatchMessage, WatchSpec};

pub(crate) struct ElectionService {
    pub ctx: ServerContext,
    /// Ends observers when the member shuts down, so connections can close.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

fn election_prefix(name: &[u8]) -> Vec<u8> {
    let mut p = name.to_vec();
    p.push(b'/');
    p
}

fn leader_key(l: Option<pb::LeaderKey>) -> Result<pb::LeaderKey, ServerError> {
    l.ok_or(ServerError::InvalidRequest("leader key is not provided"))
}

/// Replaces the leader's value, provided `leader` still holds the election.
async fn proclaim(
    ctx: &ServerContext,
    leader: &pb::LeaderKey,
    value: &[u8],
) -> Result<i64, ServerError> {
    let t = TxnRequest {
        compare: vec![create_revision_is(&leader.key, leader.rev)],
        success: vec![RequestOp::Put(PutRequest {
            key: leader.key.clone(),
            value: value.to_vec(),
            lease: leader.lease,
            ..Default::default()
        })],
        failure: Vec::new(),
    };
    let (resp, rev) = recipes::txn(ctx, t).await?;
    if !resp.succeeded {
        return Err(ServerError::ElectionNotLeader);
    }
    Ok(rev)
}

async fn current_leader(
    ctx: &ServerContext,
    name: &[u8],
) -> Result<(Option<KeyValue>, i64), ServerError> {
    let (resp, rev) = recipes::range(ctx, first_created(&election_prefix(name), None)).await?;
    Ok((resp.kvs.into_iter().next(), rev))
}

/// Sends the leader's key-value each time the leader or its value changes, until the client leaves.
async fn observe(
    ctx: ServerContext,
    name: Vec<u8>,
    tx: mpsc::Sender<Result<pb::LeaderResponse, Status>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let prefix = election_prefix(&name);
    let mut last: Option<KeyValue> = None;
    loop {
        let (leader, rev) = match current_leader(&ctx, &name).await {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        };
        if leader.is_some() && leader != last {
            let msg = pb::LeaderResponse {
                header: ctx.header(rev),
                kv: leader.clone().map(convert::key_value),
            };
            if tx.send(Ok(msg)).await.is_err() {
                return;
            }
            last = leader.clone();
        }
        // With a leader: wait for its key to change. Without one: wait for any campaign.
        let spec = match &leader {
            Some(kv) => WatchSpec {
                key: kv.key.clone(),
                start_revision: rev + 1,
                ..Default::default()
            },
            None => WatchSpec {
                key: prefix.clone(),
                range_end: prefix_end(&prefix),
                start_revision: rev + 1,
                no_delete: true,
                ..Default::default()
            },
        };
        let mut w = match recipes::watch(&ctx, spec).await {
            Ok(w) => w,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        };
        loop {
            tokio::select! {
                msg = w.rx.recv() => match msg {
                    Some(WatchMessage::Events { events, .. })
                        if events.iter().any(|e| e.kind == EventType::Put || e.kind == EventType::Delete) => break,
                    Some(WatchMessage::Canceled { .. }) | None => break,
                    Some(_) => {}
                },
                _ = tx.closed() => return,
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }
}

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        req: Request<pb::CampaignRequest>,
    ) -> Result<Response<pb::CampaignResponse>, Status> {
        let ctx = self.ctx.for_caller(&req);
        let req = req.into_inner();
        let lease = match req.lease {
            0 => lease::grant(&ctx, 0, SESSION_TTL).await?.0,
            given => given,
        };
        let (prefix, key) = lease_key(&req.name, lease);
        let (my_rev, value, _) = claim(&ctx, &key, &req.value, lease).await?;
        let guard = AbandonGuard {
            ctx: ctx.clone(),
            key: Some(key.clone()),
        };
        let leader = pb::LeaderKey {
            name: req.name.clone(),
            key: key.clone(),
            rev: my_rev,
            lease,
        };
        // Campaigning again with a new value updates the value in place, as etcd's clients do.
        if value != req.value {
            proclaim(&ctx, &leader, &req.value).await?;
        }
        let rev = wait_turn(&ctx, &prefix, &key, my_rev).await?;
        guard.disarm();
        Ok(Response::new(pb::CampaignResponse {
            header: ctx.header(rev),
            leader: Some(leader),
        }))
    }

    async fn proclaim(
        &self,
        req: Request<pb::ProclaimRequest>,
    ) -> Result<Response<pb::ProclaimResponse>, Status> {
        let ctx = self.ctx.for_caller(&req);
        let req = req.into_inner();
        let leader = leader_key(req.leader)?;
        let rev = proclaim(&ctx, &leader, &req.value).await?;
        Ok(Response::new(pb::ProclaimResponse {
            header: ctx.header(rev),
        }))
    }

    async fn leader(
        &self,
        req: Request<pb::LeaderRequest>,
    ) -> Result<Response<pb::LeaderResponse>, Status> {
        let ctx = self.ctx.for_caller(&req);
        let name = req.into_inner().name;
        match current_leader(&ctx, &name).await? {
            (Some(kv), rev) => Ok(Response::new(pb::LeaderResponse {
                header: ctx.header(rev),
                kv: Some(convert::key_value(kv)),
            })),
            (None, _) => Err(ServerError::ElectionNoLeader.into()),
        }
    }

    async fn observe(
        &self,
        req: Request<pb::LeaderRequest>,
    ) -> Result<Response<BoxStream<pb::LeaderResponse>>, Status> {
        let ctx = self.ctx.for_caller(&req);
        let name = req.into_inner().name;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(observe(ctx.clone(), name, tx, self.shutdown.clone()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn resign(
        &self,
        req: Request<pb::ResignRequest>,
    ) -> Result<Response<pb::ResignResponse>, Status> {
        let ctx = self.ctx.for_caller(&req);
        let leader = leader_key(req.into_inner().leader)?;
        let t = TxnRequest {
            compare: vec![create_revision_is(&leader.key, leader.rev)],
            success: vec![RequestOp::DeleteRange(DeleteRangeRequest {
                key: leader.key.clone(),
                ..Default::default()
            })],
            failure: Vec::new(),
        };
        let (_, rev) = recipes::txn(&ctx, t).await?;
        Ok(Response::new(pb::ResignResponse {
            header: ctx.header(rev),
        }))
    }
}
