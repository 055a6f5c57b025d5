//! `?watch=true`: a chunked stream of JSON events, one per line, built on the store's watch from the
//! requested resourceVersion.
//!
//! Without a resourceVersion (or with "0") the current objects come first as ADDED events, then the
//! changes after the revision they were read at. Selectors are applied to both sides of a change, so
//! an object leaving the selector is a DELETED event and one entering it is ADDED. A compacted start
//! is an ERROR event holding a 410 Expired Status. The store watch lives in a task that ends as soon
//! as the client goes away or `timeoutSeconds` passes, which cancels the store watch.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::request::{Query, Target};
use super::resources::{self, Selectors};
use super::status::{ApiError, ApiResult};
use super::watchcache::{self, Cached, CachedChange, Subscription};
use super::{table, State};
use crate::api::Resource;
use crate::registry::{self, StoreError};

struct Renderer {
    resource: &'static Resource,
    table: bool,
    include: String,
}

impl Renderer {
    fn event(&self, ty: &str, obj: &Value) -> Bytes {
        let object = if self.table {
            table::table(
                self.resource,
                std::slice::from_ref(obj),
                json!({"resourceVersion": super::meta_rv(obj)}),
                &self.include,
            )
        } else {
            obj.clone()
        };
        line(&json!({"type": ty, "object": object}))
    }

    /// An event whose object JSON is already encoded (shared by every watcher of a hub).
    fn event_encoded(&self, ty: &str, obj: &Value, json: &Bytes) -> Bytes {
        if self.table {
            return self.event(ty, obj);
        }
        let mut b = Vec::with_capacity(json.len() + 32);
        b.extend_from_slice(b"{\"type\":\"");
        b.extend_from_slice(ty.as_bytes());
        b.extend_from_slice(b"\",\"object\":");
        b.extend_from_slice(json);
        b.extend_from_slice(b"}\n");
        Bytes::from(b)
    }

    fn bookmark(&self, rev: i64, initial_end: bool) -> Bytes {
        let mut md = json!({"resourceVersion": rev.to_string()});
        if initial_end {
            md["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        line(
            &json!({"type": "BOOKMARK", "object": {"kind": self.resource.kind, "apiVersion": self.resource.api_version(), "metadata": md}}),
        )
    }
}

fn line(v: &Value) -> Bytes {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

fn error_event(e: &ApiError) -> Bytes {
    line(&json!({"type": "ERROR", "object": e.to_status()}))
}

pub async fn watch(st: Arc<State>, t: Target, q: Query, as_table: bool) -> ApiResult<Response> {
    let r = t.resource;
    let sel = Selectors::parse(r, &q)?;
    let timeout =
        Duration::from_secs(q.int("timeoutSeconds")?.filter(|s| *s > 0).unwrap_or(1800) as u64);
    let bookmarks = q.flag("allowWatchBookmarks");
    let rv = q.get("resourceVersion").unwrap_or("");
    let send_initial = q.get("sendInitialEvents").map(|v| v == "true");
    let render = Renderer {
        resource: r,
        table: as_table,
        include: q.get("includeObject").unwrap_or("Metadata").to_string(),
    };
    let prefix = registry::prefix(r, t.namespace.as_deref());
    let (tx, rx) = mpsc::channel::<Bytes>(256);

    // The starting point: a list first (no resourceVersion, "0", or sendInitialEvents), else the
    // revision after the one given.
    let mut initial = Vec::new();
    let from = if rv.is_empty() || rv == "0" || send_initial == Some(true) {
        let mut lq = q.clone_without_watch();
        lq.remove("limit");
        lq.remove("continue");
        if !rv.is_empty() && rv != "0" {
            lq.set("resourceVersionMatch", "NotOlderThan");
        }
        let listed = resources::list(&st, &t, &lq).await?;
        for o in &listed.items {
            initial.push(render.event("ADDED", o));
        }
        if send_initial == Some(true) && bookmarks {
            initial.push(render.bookmark(listed.revision, true));
        }
        listed.revision + 1
    } else {
        let n: i64 = rv
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))?;
        n + 1
    };
    let sub = st
        .watch_cache
        .subscribe(&st.registry, r, from)
        .await
        .map_err(|e| ApiError::store(r, "", e))?;
    let guard = st.register_watcher(r);
    let w = Watcher {
        sel,
        render,
        namespace: t.namespace.clone(),
        bookmarks,
        timeout,
        interval: st.bookmark_interval,
    };
    if let Some(sub) = sub {
        tokio::spawn(async move {
            w.run(Source::Shared(sub), initial, tx).await;
            drop(guard);
        });
        return Ok(respond(rx));
    }
    // Older than what the resource's hub has seen: a store watch of this watch's own.
    let store_watch = st
        .registry
        .watch(r, &prefix, from)
        .await
        .map_err(|e| ApiError::store(r, "", e))?;
    tokio::spawn(async move {
        w.run(Source::Own(store_watch, from), initial, tx).await;
        drop(guard);
    });
    Ok(respond(rx))
}

fn respond(rx: mpsc::Receiver<Bytes>) -> Response {
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let body = Body::from_stream(futures::StreamExt::map(
        stream,
        Ok::<_, std::convert::Infallible>,
    ));
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    resp
}

/// One API watch: which changes it sees and how it writes them.
struct Watcher {
    sel: Selectors,
    render: Renderer,
    namespace: Option<String>,
    bookmarks: bool,
    timeout: Duration,
    interval: Duration,
}

impl Watcher {
    /// The event line for one cached change, or none when this watch does not see it.
    fn line_for(&self, c: &Cached) -> Option<Bytes> {
        let progress = matches!(c.change, CachedChange::Progress);
        if let Some(ns) = self.namespace.as_ref().filter(|_| !progress) {
            if c.namespace() != ns {
                return None;
            }
        }
        match &c.change {
            CachedChange::Put { object, json, prev } => {
                let now = self.sel.matches(object);
                let before = prev
                    .as_ref()
                    .is_some_and(|p| self.sel.is_empty() || self.sel.matches(p.object()));
                let ty = match (before, now) {
                    (false, true) => "ADDED",
                    (true, true) => "MODIFIED",
                    (true, false) => "DELETED",
                    (false, false) => return None,
                };
                Some(self.render.event_encoded(ty, object, json))
            }
            CachedChange::Delete { object, json } => self
                .sel
                .matches(object)
                .then(|| self.render.event_encoded("DELETED", object, json)),
            CachedChange::Progress => self
                .bookmarks
                .then(|| self.render.bookmark(c.revision, false)),
        }
    }

    /// Sends the initial events, then what `source` yields, until the deadline, the client leaving,
    /// or the source ending (an error the client should see is sent as an ERROR event first).
    async fn run(self, mut source: Source, initial: Vec<Bytes>, tx: mpsc::Sender<Bytes>) {
        for b in initial {
            if tx.send(b).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(self.timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(self.interval);
        ticker.tick().await;
        loop {
            let next = tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                _ = ticker.tick() => {
                    if self.bookmarks {
                        source.request_progress();
                    }
                    continue;
                }
                n = source.next(self.render.resource) => n,
            };
            let changes = match next {
                Ok(c) => c,
                Err(e) => {
                    if let Some(e) = e {
                        let _ = tx.send(error_event(&e)).await;
                    }
                    return;
                }
            };
            for c in changes {
                if let Some(b) = self.line_for(&c) {
                    if tx.send(b).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// Where a watch's changes come from.
enum Source {
    /// The resource's hub: first the replayed history, then live changes past it.
    Shared(Subscription),
    /// A store watch of this watch's own, started at revision `from`.
    Own(registry::Watch, i64),
}

impl Source {
    fn request_progress(&self) {
        match self {
            Source::Shared(sub) => sub.request_progress(),
            Source::Own(w, _) => w.request_progress(),
        }
    }

    /// The next changes; `Err` ends the watch, with the error to show the client if any.
    async fn next(
        &mut self,
        r: &'static crate::api::Resource,
    ) -> Result<Vec<Arc<Cached>>, Option<ApiError>> {
        match self {
            Source::Shared(sub) => {
                if !sub.replay.is_empty() {
                    return Ok(std::mem::take(&mut sub.replay));
                }
                loop {
                    // Lagging too far behind, or the hub gone: the client re-watches from the last
                    // resourceVersion it saw.
                    let c = sub.live.recv().await.map_err(|_| None)?;
                    if c.revision > sub.replayed || matches!(c.change, CachedChange::Progress) {
                        return Ok(vec![c]);
                    }
                }
            }
            Source::Own(w, from) => match w.next().await {
                None => Err(None),
                Some(Err(StoreError::Expired { current, .. })) => Err(Some(ApiError::expired(
                    format!("too old resource version: {} ({current})", *from - 1),
                ))),
                Some(Err(e)) => Err(Some(ApiError::store(r, "", e))),
                Some(Ok(batch)) if batch.changes.is_empty() => Ok(vec![Arc::new(Cached {
                    revision: batch.revision,
                    change: CachedChange::Progress,
                })]),
                Some(Ok(batch)) => Ok(batch
                    .changes
                    .into_iter()
                    .map(|c| Arc::new(watchcache::cached(c)))
                    .collect()),
            },
        }
    }
}
