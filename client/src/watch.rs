//! Watches that survive member failure.
//!
//! Each [`WatchStream`] owns one gRPC watch stream, run by a background task that remembers the next
//! revision it owes the caller (`next`): the last delivered event's revision + 1, or a progress
//! notification's revision + 1. When the stream breaks (connection lost, member killed, member without a
//! leader) the task reopens the watch on another endpoint with `start_revision = next`, and drops any event
//! below `next` that a resumed stream repeats. So the caller sees every revision once, in order, with no gap,
//! across failovers.
//!
//! If the history the watch needs has been compacted meanwhile, the stream yields
//! [`Error::Compacted`] with the server's compaction point and ends. Streams carry `hasleader: true`
//! metadata, so a member cut off from its leader refuses the watch instead of going silent. Dropping the
//! [`WatchStream`] cancels the watch.
//!
//! Worked example: a watch on `k/` has delivered revisions 10 and 11 (`next` = 12) when the member dies. The
//! task reopens on another member from 12. That member replays 12 and 13 from history and then streams live
//! events; nothing below 12 is delivered again even if a server repeats it.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use cairn_proto::etcdserverpb::watch_client::WatchClient;
use cairn_proto::etcdserverpb::watch_create_request::FilterType;
use cairn_proto::etcdserverpb::watch_request::RequestUnion;
use cairn_proto::etcdserverpb::{
    ResponseHeader, WatchCancelRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest,
};
use cairn_proto::mvccpb::Event;
use futures::Stream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::client::{is_retryable, is_transport_failure, Client};
use crate::error::{Error, Result};
use crate::kv::RangeSpec;

/// Options of [`Client::watch`].
#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    range: RangeSpec,
    start_revision: i64,
    prev_kv: bool,
    progress_notify: bool,
    no_put: bool,
    no_delete: bool,
}

impl WatchOptions {
    /// Watches the single key from now on.
    pub fn new() -> Self {
        Self::default()
    }
    crate::kv::range_setters!();
    /// Starts at `revision` (replaying history from there); 0 means after the current revision.
    pub fn with_start_revision(mut self, revision: i64) -> Self {
        self.start_revision = revision;
        self
    }
    /// Events carry the key's previous value.
    pub fn with_prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }
    /// Asks the server for periodic progress notifications while idle.
    pub fn with_progress_notify(mut self) -> Self {
        self.progress_notify = true;
        self
    }
    /// Leaves out PUT events.
    pub fn with_no_put(mut self) -> Self {
        self.no_put = true;
        self
    }
    /// Leaves out DELETE events.
    pub fn with_no_delete(mut self) -> Self {
        self.no_delete = true;
        self
    }

    pub(crate) fn build(&self, key: Vec<u8>) -> WatchCreateRequest {
        let mut filters = Vec::new();
        if self.no_put {
            filters.push(FilterType::Noput as i32);
        }
        if self.no_delete {
            filters.push(FilterType::Nodelete as i32);
        }
        let (key, range_end) = self.range.resolve(key);
        WatchCreateRequest {
            range_end,
            key,
            start_revision: self.start_revision,
            progress_notify: self.progress_notify,
            filters,
            prev_kv: self.prev_kv,
            watch_id: 0,
            fragment: false,
        }
    }
}

/// One batch delivered by a [`WatchStream`]: the events of one or more whole revisions, or (with no events)
/// a progress notification.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchResponse {
    /// The header of the server response this batch came from.
    pub header: Option<ResponseHeader>,
    /// The events, in revision order.
    pub events: Vec<Event>,
}

impl WatchResponse {
    /// The store revision the server reported with this batch.
    pub fn revision(&self) -> i64 {
        self.header.as_ref().map(|h| h.revision).unwrap_or(0)
    }
    /// A progress notification: no event at or below [`WatchResponse::revision`] is still to come.
    pub fn is_progress_notify(&self) -> bool {
        self.events.is_empty()
    }
}

enum Control {
    Progress,
}

/// A stream of watch batches that resumes by itself; see the module docs. Dropping it cancels the watch.
pub struct WatchStream {
    rx: mpsc::Receiver<Result<WatchResponse>>,
    control: mpsc::UnboundedSender<Control>,
    created_revision: i64,
    resumes: Arc<AtomicU64>,
}

impl std::fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchStream")
            .field("created_revision", &self.created_revision)
            .finish()
    }
}

impl WatchStream {
    /// The store revision when the watch was created: with start revision 0, every event after it is
    /// delivered.
    pub fn created_revision(&self) -> i64 {
        self.created_revision
    }

    /// How many times the watch has been reopened after losing its stream.
    pub fn resumes(&self) -> u64 {
        self.resumes.load(Ordering::Relaxed)
    }

    /// Asks the server for a progress notification (delivered as a batch without events).
    pub fn request_progress(&self) -> Result<()> {
        self.control
            .send(Control::Progress)
            .map_err(|_| Error::WatchCanceled {
                reason: "watch ended".into(),
            })
    }

    /// The next batch, or `None` once the watch has ended (after an error or cancellation).
    pub async fn message(&mut self) -> Option<Result<WatchResponse>> {
        self.rx.recv().await
    }
}

impl Stream for WatchStream {
    type Item = Result<WatchResponse>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Client {
    /// Starts a watch and returns once the server has created it (retrying on other members until the
    /// request deadline). From then on the stream resumes by itself after failures.
    pub async fn watch(
        &self,
        key: impl Into<Vec<u8>>,
        options: Option<WatchOptions>,
    ) -> Result<WatchStream> {
        let create = options.unwrap_or_default().build(key.into());
        self.watch_request(create, None).await
    }

    /// Starts a watch from a raw create request; `strip` is removed from the front of every delivered key.
    pub(crate) async fn watch_request(
        &self,
        create: WatchCreateRequest,
        strip: Option<Vec<u8>>,
    ) -> Result<WatchStream> {
        if create.start_revision < 0 {
            return Err(Error::InvalidArgument(
                "watch start revision must not be negative".into(),
            ));
        }
        let (tx, rx) = mpsc::channel(64);
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (created_tx, created_rx) = oneshot::channel();
        let resumes = Arc::new(AtomicU64::new(0));
        let task = WatchTask {
            resumes: resumes.clone(),
            client: self.clone(),
            next: create.start_revision,
            create,
            tx,
            control: control_rx,
            created: Some(created_tx),
            strip,
        };
        tokio::spawn(task.run());
        let created_revision = match created_rx.await {
            Ok(Ok(rev)) => rev,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(Error::WatchCanceled {
                    reason: "watch task ended before creation".into(),
                })
            }
        };
        Ok(WatchStream {
            rx,
            control: control_tx,
            created_revision,
            resumes,
        })
    }
}

/// What ended one stream attempt.
enum Ended {
    /// Reopen elsewhere.
    Resume { endpoint: usize, broken: bool },
    /// The caller is gone or the watch failed for good (the error, if any, was delivered).
    Done,
}

struct WatchTask {
    client: Client,
    create: WatchCreateRequest,
    /// The next revision owed to the caller; 0 until the first creation when watching "from now".
    next: i64,
    tx: mpsc::Sender<Result<WatchResponse>>,
    control: mpsc::UnboundedReceiver<Control>,
    created: Option<oneshot::Sender<Result<i64>>>,
    resumes: Arc<AtomicU64>,
    strip: Option<Vec<u8>>,
}

fn watch_request(union: RequestUnion) -> WatchRequest {
    WatchRequest {
        request_union: Some(union),
    }
}

/// Cancel reasons (or stream errors) after which another member may well serve the watch.
fn cancel_is_transient(reason: &str) -> bool {
    reason.contains("no leader")
        || reason.contains("leader changed")
        || reason.contains("timed out")
}

impl WatchTask {
    async fn run(mut self) {
        let initial_deadline = Instant::now() + self.client.options().request_timeout;
        let mut attempt = 0u32;
        loop {
            let deadline = if self.created.is_some() {
                initial_deadline
            } else {
                // Once created, a watch keeps trying for as long as the caller holds it.
                Instant::now() + self.client.options().request_timeout
            };
            let picked = match self.client.pick(deadline).await {
                Ok(p) => p,
                Err(e) => {
                    if let Some(created) = self.created.take() {
                        let _ = created.send(Err(e));
                        return;
                    }
                    tracing::warn!(error = %e, "watch: no endpoint reachable, still trying");
                    if self.tx.is_closed() {
                        return;
                    }
                    continue;
                }
            };
            let url = picked.url.clone();
            let opened_at = Instant::now();
            let channel = self.client.authed(picked.channel);
            match self.stream_once(channel, picked.index).await {
                Ended::Done => return,
                Ended::Resume { endpoint, broken } => {
                    tracing::info!(endpoint = %url, next = self.next, "watch stream lost, resuming");
                    self.client.mark_failed(endpoint, broken).await;
                    if self.created.is_none() {
                        self.resumes.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            // A stream that served for a while starts the backoff afresh; quick failures back off further.
            if opened_at.elapsed() > self.client.options().max_backoff * 4 {
                attempt = 0;
            }
            attempt += 1;
            let pause = self.client.backoff(attempt);
            if let Some(created) = self.created.take() {
                if Instant::now() + pause >= initial_deadline {
                    let _ = created.send(Err(Error::Unavailable {
                        message: format!("could not create the watch on any endpoint (last {url})"),
                    }));
                    return;
                }
                self.created = Some(created);
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.tx.closed() => return,
            }
        }
    }

    /// Fails the watch for good: to the creator if not yet created, else on the stream.
    async fn fail(&mut self, e: Error) -> Ended {
        if let Some(created) = self.created.take() {
            let _ = created.send(Err(e));
        } else {
            let _ = self.tx.send(Err(e)).await;
        }
        Ended::Done
    }

    async fn stream_once(
        &mut self,
        channel: crate::client::AuthedChannel,
        endpoint: usize,
    ) -> Ended {
        let resume = |broken| Ended::Resume { endpoint, broken };
        let (req_tx, req_rx) = mpsc::channel(8);
        let mut create = self.create.clone();
        create.start_revision = self.next;
        // Capacity 8 and nothing sent yet: this cannot fail.
        let _ = req_tx.try_send(watch_request(RequestUnion::CreateRequest(create)));
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(req_rx));
        request
            .metadata_mut()
            .insert("hasleader", MetadataValue::from_static("true"));
        let open = tokio::time::timeout(
            self.client.options().request_timeout,
            WatchClient::new(channel)
                .max_decoding_message_size(crate::kv::MAX_RECV)
                .watch(request),
        )
        .await;
        let mut stream = match open {
            Ok(Ok(resp)) => resp.into_inner(),
            Ok(Err(status)) => return self.on_status(status, endpoint).await,
            Err(_) => return resume(true),
        };
        let mut watch_id = None;
        loop {
            let message = tokio::select! {
                m = stream.message() => m,
                c = self.control.recv() => {
                    match c {
                        Some(Control::Progress) => {
                            let _ = req_tx.send(watch_request(RequestUnion::ProgressRequest(WatchProgressRequest {}))).await;
                        }
                        // The WatchStream (which holds the control sender) is gone: cancel.
                        None => {
                            if let Some(id) = watch_id {
                                let _ = req_tx.try_send(watch_request(RequestUnion::CancelRequest(WatchCancelRequest { watch_id: id })));
                            }
                            return Ended::Done;
                        }
                    }
                    continue;
                }
                _ = self.tx.closed() => {
                    if let Some(id) = watch_id {
                        let _ = req_tx.try_send(watch_request(RequestUnion::CancelRequest(WatchCancelRequest { watch_id: id })));
                    }
                    return Ended::Done;
                }
            };
            let resp = match message {
                Ok(Some(resp)) => resp,
                Ok(None) => return resume(false),
                Err(status) => return self.on_status(status, endpoint).await,
            };
            if resp.canceled {
                if resp.compact_revision > 0 {
                    return self
                        .fail(Error::Compacted {
                            compact_revision: resp.compact_revision,
                        })
                        .await;
                }
                if cancel_is_transient(&resp.cancel_reason) {
                    return resume(false);
                }
                let reason = if resp.cancel_reason.is_empty() {
                    "canceled by the server".to_string()
                } else {
                    resp.cancel_reason
                };
                return self.fail(Error::WatchCanceled { reason }).await;
            }
            if resp.created {
                watch_id = Some(resp.watch_id);
                let revision = resp.header.as_ref().map(|h| h.revision).unwrap_or(0);
                if self.next == 0 {
                    self.next = revision + 1;
                }
                if let Some(created) = self.created.take() {
                    let _ = created.send(Ok(revision));
                }
                if resp.events.is_empty() {
                    continue;
                }
            }
            if resp.events.is_empty() {
                // A progress notification at R promises nothing at or below R is still to come. One from a
                // member that lags behind what was already delivered says nothing new: skip it.
                let revision = resp.header.as_ref().map(|h| h.revision).unwrap_or(0);
                if revision + 1 < self.next {
                    continue;
                }
                self.next = revision + 1;
            }
            let next = self.next;
            let total = resp.events.len();
            let events: Vec<Event> = resp
                .events
                .into_iter()
                .filter(|e| e.kv.as_ref().map(|kv| kv.mod_revision).unwrap_or(0) >= next)
                .collect();
            if total > 0 && events.is_empty() {
                continue;
            }
            if let Some(last) = events.last().and_then(|e| e.kv.as_ref()) {
                self.next = last.mod_revision + 1;
            }
            let mut batch = WatchResponse {
                header: resp.header,
                events,
            };
            if let Some(prefix) = &self.strip {
                for e in &mut batch.events {
                    crate::namespace::strip_kv(prefix, e.kv.as_mut());
                    crate::namespace::strip_kv(prefix, e.prev_kv.as_mut());
                }
            }
            if self.tx.send(Ok(batch)).await.is_err() {
                return Ended::Done;
            }
        }
    }

    async fn on_status(&mut self, status: Status, endpoint: usize) -> Ended {
        let broken = is_transport_failure(&status);
        let transient = is_retryable(&status)
            || matches!(
                status.code(),
                Code::Unknown | Code::Internal | Code::Cancelled
            )
            || cancel_is_transient(status.message());
        if transient {
            tracing::debug!(code = ?status.code(), message = status.message(), "watch stream failed");
            Ended::Resume { endpoint, broken }
        } else {
            self.fail(status.into()).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_build_create_requests() {
        let c = WatchOptions::new()
            .with_prefix()
            .with_start_revision(5)
            .with_prev_kv()
            .with_no_delete()
            .build(b"k/".to_vec());
        assert_eq!(c.range_end, b"k0");
        assert_eq!(c.start_revision, 5);
        assert!(c.prev_kv);
        assert_eq!(c.filters, vec![FilterType::Nodelete as i32]);
    }
}
