//! The `KV` service: Range, Put, DeleteRange, Txn, Compact.

use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::kv_server::Kv;
use prost::Message;
use tonic::{Request, Response, Status};

use super::convert;
use super::ServerContext;
use crate::command::{Applied, Command, CommandResponse};
use crate::error::ServerError;
use crate::mvcc::{check_delete_shape, check_put_shape, check_range_shape, check_txn_shape};

pub(crate) struct KvService {
    pub ctx: ServerContext,
}

impl KvService {
    fn check_size(&self, len: usize) -> Result<(), ServerError> {
        if len > self.ctx.limits.max_request_bytes {
            return Err(ServerError::RequestTooLarge);
        }
        Ok(())
    }

    async fn propose(&self, cmd: Command, bytes: usize) -> Result<(Applied, i64), ServerError> {
        let CommandResponse { revision, result } = self.ctx.raft.propose(cmd, bytes).await?;
        Ok((result?, revision))
    }
}

/// Counts a request in a gauge for as long as it is served.
struct Serving<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> Serving<'a> {
    fn new(gauge: &'a prometheus_client::metrics::gauge::Gauge) -> Serving<'a> {
        gauge.inc();
        Serving(gauge)
    }
}

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn unexpected(a: &Applied) -> ServerError {
    ServerError::Internal(format!("unexpected apply result {a:?}"))
}

#[tonic::async_trait]
impl Kv for KvService {
    #[tracing::instrument(level = "debug", skip_all)]
    async fn range(
        &self,
        req: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let _serving = Serving::new(&self.ctx.reads_pending);
        let creds = self.ctx.credentials(&req);
        let req = req.into_inner();
        let serializable = req.serializable;
        let range = convert::range_request(req);
        check_range_shape(&range).map_err(ServerError::from)?;
        if !serializable {
            self.ctx
                .raft
                .read_index()
                .await
                .map_err(ServerError::from)?;
        }
        // Judged by the auth state the read sees, as etcd judges it after its read index: a
        // member may apply an enabling of auth only while this read waits.
        let info = self.ctx.resolve(&creds).await?;
        self.ctx.check_read(&info, &range.key, &range.range_end)?;
        let (resp, revision) = self
            .ctx
            .raft
            .state()
            .range(&range)
            .map_err(ServerError::from)?;
        Ok(Response::new(convert::range_response(
            resp,
            self.ctx.header(revision),
        )))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let info = self.ctx.auth_info(&req).await?;
        let req = req.into_inner();
        let bytes = req.encoded_len();
        self.check_size(bytes)?;
        let put = convert::put_request(req);
        check_put_shape(&put).map_err(ServerError::from)?;
        self.ctx.check_quota(bytes).await?;
        let cmd = self.ctx.with_auth(info, Command::Put(put));
        match self.propose(cmd, bytes).await? {
            (Applied::Put(r), rev) => Ok(Response::new(convert::put_response(
                r,
                self.ctx.header(rev),
            ))),
            (other, _) => Err(unexpected(&other).into()),
        }
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn delete_range(
        &self,
        req: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let info = self.ctx.auth_info(&req).await?;
        let req = req.into_inner();
        let bytes = req.encoded_len();
        self.check_size(bytes)?;
        let del = convert::delete_request(req);
        check_delete_shape(&del).map_err(ServerError::from)?;
        let cmd = self.ctx.with_auth(info, Command::DeleteRange(del));
        match self.propose(cmd, bytes).await? {
            (Applied::DeleteRange(r), rev) => Ok(Response::new(convert::delete_response(
                r,
                self.ctx.header(rev),
            ))),
            (other, _) => Err(unexpected(&other).into()),
        }
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let info = self.ctx.auth_info(&req).await?;
        let req = req.into_inner();
        let bytes = req.encoded_len();
        self.check_size(bytes)?;
        let txn = convert::txn_request(req)?;
        check_txn_shape(&txn, self.ctx.limits.max_txn_ops).map_err(ServerError::from)?;
        let cmd = Command::Txn(txn);
        if cmd.grows_store() {
            self.ctx.check_quota(bytes).await?;
        }
        let cmd = self.ctx.with_auth(info, cmd);
        match self.propose(cmd, bytes).await? {
            (Applied::Txn(r), rev) => Ok(Response::new(convert::txn_response(
                r,
                self.ctx.header(rev),
            ))),
            (other, _) => Err(unexpected(&other).into()),
        }
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn compact(
        &self,
        req: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let info = self.ctx.auth_info(&req).await?;
        let cmd = self
            .ctx
            .with_auth(info, Command::Compact(req.into_inner().revision));
        match self.propose(cmd, 16).await? {
            (Applied::Compact, rev) => Ok(Response::new(pb::CompactionResponse {
                header: self.ctx.header(rev),
            })),
            (other, _) => Err(unexpected(&other).into()),
        }
    }
}
