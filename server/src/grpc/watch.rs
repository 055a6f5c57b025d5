//! The `Watch` service: one bidirectional stream carrying many watchers.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::watch_server::Watch;
use cairn_proto::mvccpb;
use futures::StreamExt;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

use super::{convert, Credentials, ServerContext};
use crate::mvcc::{Event, EventType};
use crate::watch::hub::WatchError;
use crate::watch::{WatchHub, WatchMessage, WatchSpec};

/// The cancel reason of a watch its caller may not read (a bad token included), as etcd words it:
/// the text of its gRPC permission-denied status, which etcd clients show as is.
const WATCH_PERMISSION_DENIED: &str =
    "rpc error: code = PermissionDenied desc = etcdserver: permission denied";

/// Messages a stream may have queued before its watchers fall back to catching up from history.
const STREAM_BUFFER: usize = 128;

pub(crate) struct WatchService {
    pub ctx: ServerContext,
    /// Ends every stream when the member shuts down, so connections can close.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

/// Kubernetes and etcd clients set `hasleader` to have requests refused while there is no leader.
pub(crate) fn requires_leader<T>(req: &Request<T>) -> bool {
    req.metadata().get("hasleader").is_some_and(|v| v == "true")
}

fn spec(c: &pb::WatchCreateRequest) -> WatchSpec {
    use pb::watch_create_request::FilterType;
    WatchSpec {
        key: c.key.clone(),
        range_end: c.range_end.clone(),
        start_revision: c.start_revision,
        no_put: c.filters.contains(&(FilterType::Noput as i32)),
        no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
        prev_kv: c.prev_kv,
        progress_notify: c.progress_notify,
        fragment: c.fragment,
    }
}

async fn serve_requests(
    ctx: ServerContext,
    creds: Credentials,
    hub: Arc<WatchHub>,
    stream: u64,
    mut inbound: Streaming<pb::WatchRequest>,
    tx: mpsc::Sender<WatchMessage>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    use pb::watch_request::RequestUnion;
    let mut next_auto_id = 0i64;
    loop {
        let req = tokio::select! {
            msg = inbound.message() => match msg {
                Ok(Some(req)) => req,
                _ => break,
            },
            _ = shutdown.wait_for(|s| *s) => break,
        };
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => {
                let watch_id = if c.watch_id != 0 {
                    c.watch_id
                } else {
                    while hub.contains(stream, next_auto_id) {
                        next_auto_id += 1;
                    }
                    next_auto_id
                };
                // Checked at each create, so a permission granted or revoked since the stream
                // opened counts.
                let permitted = ctx
                    .resolve(&creds)
                    .await
                    .and_then(|info| ctx.check_read(&info, &c.key, &c.range_end));
                if permitted.is_err() {
                    let msg = WatchMessage::Rejected {
                        watch_id: -1,
                        revision: hub.published(),
                        reason: WATCH_PERMISSION_DENIED.to_string(),
                    };
                    if tx.send(msg).await.is_err() {
                        break;
                    }
                    continue;
                }
                if c.start_revision < 0 {
                    let reason =
                        "etcdserver: watch start revision must not be negative".to_string();
                    let msg = WatchMessage::Rejected {
                        watch_id,
                        revision: hub.published(),
                        reason,
                    };
                    if tx.send(msg).await.is_err() {
                        break;
                    }
                    continue;
                }
                match hub.watch(stream, watch_id, spec(&c), &tx).await {
                    Ok(()) => {}
                    Err(WatchError::DuplicateId) => {
                        let msg = WatchMessage::Rejected {
                            watch_id,
                            revision: hub.published(),
                            reason: WatchError::DuplicateId.to_string(),
                        };
                        if tx.send(msg).await.is_err() {
                            break;
                        }
                    }
                    Err(WatchError::Closed) => break,
                }
            }
            Some(RequestUnion::CancelRequest(c)) if hub.cancel(stream, c.watch_id) => {
                let msg = WatchMessage::Canceled {
                    watch_id: c.watch_id,
                    revision: hub.published(),
                    compact_revision: 0,
                    reason: String::new(),
                };
                if tx.send(msg).await.is_err() {
                    break;
                }
            }
            Some(RequestUnion::CancelRequest(_)) => {}
            Some(RequestUnion::ProgressRequest(_)) => hub.request_progress(stream, &tx),
            None => {}
        }
    }
    hub.close_stream(stream);
}

fn event(e: Event) -> mvccpb::Event {
    mvccpb::Event {
        r#type: match e.kind {
            EventType::Put => mvccpb::event::EventType::Put as i32,
            EventType::Delete => mvccpb::event::EventType::Delete as i32,
        },
        kv: Some(convert::key_value(e.kv)),
        prev_kv: e.prev_kv.map(convert::key_value),
    }
}

/// One hub message as one or more responses (more only when a fragmenting watcher's events exceed
/// the request size limit).
fn responses(ctx: &ServerContext, msg: WatchMessage) -> Vec<pb::WatchResponse> {
    match msg {
        WatchMessage::Created { watch_id, revision } => vec![pb::WatchResponse {
            header: ctx.header(revision),
            watch_id,
            created: true,
            ..Default::default()
        }],
        WatchMessage::Rejected {
            watch_id,
            revision,
            reason,
        } => vec![pb::WatchResponse {
            header: ctx.header(revision),
            watch_id,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..Default::default()
        }],
        WatchMessage::Canceled {
            watch_id,
            revision,
            compact_revision,
            reason,
        } => vec![pb::WatchResponse {
            header: ctx.header(revision),
            watch_id,
            canceled: true,
            compact_revision,
            cancel_reason: reason,
            ..Default::default()
        }],
        WatchMessage::Progress { watch_id, revision } => vec![pb::WatchResponse {
            header: ctx.header(revision),
            watch_id,
            ..Default::default()
        }],
        WatchMessage::Events {
            watch_id,
            revision,
            events,
            fragment,
        } => {
            let events: Vec<mvccpb::Event> = events.into_iter().map(event).collect();
            let limit = ctx.limits.max_request_bytes;
            let mut chunks: Vec<Vec<mvccpb::Event>> = Vec::new();
            if fragment {
                let mut size = 0;
                let mut chunk = Vec::new();
                for e in events {
                    let len = e.encoded_len();
                    if !chunk.is_empty() && size + len > limit {
                        chunks.push(std::mem::take(&mut chunk));
                        size = 0;
                    }
                    size += len;
                    chunk.push(e);
                }
                chunks.push(chunk);
            } else {
                chunks.push(events);
            }
            let last = chunks.len() - 1;
            chunks
                .into_iter()
                .enumerate()
                .map(|(i, events)| pb::WatchResponse {
                    header: ctx.header(revision),
                    watch_id,
                    fragment: i < last,
                    events,
                    ..Default::default()
                })
                .collect()
        }
    }
}

#[tonic::async_trait]
impl Watch for WatchService {
    async fn watch(
        &self,
        req: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<BoxStream<pb::WatchResponse>>, Status> {
        if requires_leader(&req) && self.ctx.raft.leader().is_none() {
            return Err(Status::unavailable("etcdserver: no leader"));
        }
        let stream = self.ctx.streams.fetch_add(1, Ordering::Relaxed);
        let hub = self.ctx.raft.state().hub().clone();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let creds = self.ctx.credentials(&req);
        tokio::spawn(serve_requests(
            self.ctx.clone(),
            creds,
            hub,
            stream,
            req.into_inner(),
            tx,
            self.shutdown.clone(),
        ));
        let ctx = self.ctx.clone();
        let out = ReceiverStream::new(rx)
            .flat_map(move |msg| futures::stream::iter(responses(&ctx, msg).into_iter().map(Ok)));
        Ok(Response::new(Box::pin(out)))
    }
}
