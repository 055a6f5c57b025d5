//! The watch hub, modelled on etcd's watchable store.
//!
//! Every watcher is either *synced* (it has received everything up to the last published revision,
//! so new changes go straight to it as they are applied) or *catching up* (it needs revisions that
//! are already in the store: the sync task reads them from history and sends them in order, and once
//! it reaches the last published revision the watcher becomes synced again). A watcher whose stream
//! is full when a change is published falls back to catching up instead of blocking the apply path,
//! so a slow reader never slows writers or other watchers, and memory per stream stays bounded by its
//! channel.
//!
//! Invariants, all kept under the hub lock:
//! - `published` is the highest revision whose changes are in the store *and* were offered to synced
//!   watchers; catch-up reads never go past it.
//! - a watcher's `next_rev` is the first revision it has not been sent; everything below was sent, in
//!   order, exactly once.
//! - messages for one stream go through one FIFO channel, so a progress notification at R queued after
//!   all of the stream's watchers reached R is never followed by an event at or below R.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify};

use crate::mvcc::{Event, EventType, KeyValue, MvccError};

/// About the most one catch-up message carries: clients commonly refuse messages over 4 MiB.
const CATCH_UP_EVENTS: usize = 1000;
const CATCH_UP_BYTES: usize = 1024 * 1024;

/// What a stream receives, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchMessage {
    Created {
        watch_id: i64,
        revision: i64,
    },
    Events {
        watch_id: i64,
        revision: i64,
        events: Vec<Event>,
        /// Split responses larger than the request limit, as the watcher asked.
        fragment: bool,
    },
    /// A create that failed: reported as created and canceled at once, as etcd does.
    Rejected {
        watch_id: i64,
        revision: i64,
        reason: String,
    },
    Canceled {
        watch_id: i64,
        revision: i64,
        compact_revision: i64,
        reason: String,
    },
    /// `watch_id` -1 answers a stream-wide progress request.
    Progress {
        watch_id: i64,
        revision: i64,
    },
}

/// What a watcher asks for.
#[derive(Debug, Clone, Default)]
pub struct WatchSpec {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    /// 0 = from the next revision on.
    pub start_revision: i64,
    pub no_put: bool,
    pub no_delete: bool,
    pub prev_kv: bool,
    pub progress_notify: bool,
    pub fragment: bool,
}

impl WatchSpec {
    pub fn matches(&self, key: &[u8]) -> bool {
        match self.range_end.as_slice() {
            [] => key == self.key.as_slice(),
            [0] => key >= self.key.as_slice(),
            end => key >= self.key.as_slice() && key < end,
        }
    }

    pub fn wants(&self, e: &Event) -> bool {
        let kind_ok = match e.kind {
            EventType::Put => !self.no_put,
            EventType::Delete => !self.no_delete,
        };
        kind_ok && self.matches(&e.kv.key)
    }

    pub fn shape(&self, e: &Event) -> Event {
        if self.prev_kv {
            e.clone()
        } else {
            Event {
                kind: e.kind,
                kv: e.kv.clone(),
                prev_kv: None,
            }
        }
    }
}

/// The store's history, as the sync task reads it.
pub trait History: Send + Sync + 'static {
    /// Events with main revision in `[from, to]` whose key is in `spec`'s range, in revision order,
    /// stopping at a revision boundary once `max_events` events or `max_bytes` of keys and values
    /// are gathered. Returns the events and the last revision covered.
    fn events(
        &self,
        spec: &WatchSpec,
        from: i64,
        to: i64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Event>, i64), MvccError>;
    fn compact_revision(&self) -> i64;
}

/// Reads an event's previous value: the key as of the revision before the event's.
pub type PrevLoader<'a> = dyn Fn(&Event) -> Result<Option<KeyValue>, MvccError> + 'a;

/// An event as watchers asking for previous values receive it.
enum Filled {
    /// Nobody needs more than the event as written.
    AsIs,
    Loaded(Event),
    /// Reading the previous value failed.
    Unreadable,
}

/// Loads the previous values that a synced watcher asking for them would receive unloaded; empty
/// (every event as is) when no watcher asks.
fn fill_prev(st: &HubState, events: &[Event], load_prev: &PrevLoader<'_>) -> Vec<Filled> {
    let asking: Vec<&Watcher> = st
        .watchers
        .values()
        .filter(|w| w.synced && w.spec.prev_kv)
        .collect();
    if asking.is_empty() {
        return Vec::new();
    }
    events
        .iter()
        .map(|e| {
            let wanted = e.prev_unloaded()
                && asking
                    .iter()
                    .any(|w| e.kv.mod_revision >= w.next_rev && w.spec.wants(e));
            if !wanted {
                return Filled::AsIs;
            }
            match load_prev(e) {
                Ok(prev_kv) => Filled::Loaded(Event {
                    prev_kv,
                    ..e.clone()
                }),
                Err(error) => {
                    tracing::warn!(%error, revision = e.kv.mod_revision, "reading a previous value for watchers failed");
                    Filled::Unreadable
                }
            }
        })
        .collect()
}

type WatcherKey = (u64, i64);

/// A catching-up watcher as the sync task copies it out of the lock.
type Lagging = (WatcherKey, WatchSpec, i64, mpsc::Sender<WatchMessage>);

struct Watcher {
    spec: WatchSpec,
    next_rev: i64,
    synced: bool,
    out: mpsc::Sender<WatchMessage>,
    /// When a progress notification is next due (`progress_notify` watchers only).
    progress_due: Option<Instant>,
}

#[derive(Default)]
struct HubState {
    published: i64,
    watchers: HashMap<WatcherKey, Watcher>,
    /// Streams with a progress request that waits for their watchers to catch up.
    pending_progress: HashMap<u64, mpsc::Sender<WatchMessage>>,
}

/// Why a watch could not be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    #[error("mvcc: duplicate watch ID provided on the WatchStream")]
    DuplicateId,
    #[error("the watch stream is closed")]
    Closed,
}

pub struct WatchHub {
    state: Mutex<HubState>,
    wake: Notify,
    progress_interval: Duration,
}

impl WatchHub {
    pub fn new(published: i64, progress_interval: Duration) -> Arc<WatchHub> {
        Arc::new(WatchHub {
            state: Mutex::new(HubState {
                published,
                ..Default::default()
            }),
            wake: Notify::new(),
            progress_interval,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn published(&self) -> i64 {
        self.lock().published
    }

    /// Number of registered watchers.
    pub fn watchers(&self) -> usize {
        self.lock().watchers.len()
    }

    /// Registers a watcher and queues its `Created` message ahead of any of its events.
    pub async fn watch(
        &self,
        stream: u64,
        watch_id: i64,
        spec: WatchSpec,
        out: &mpsc::Sender<WatchMessage>,
    ) -> Result<(), WatchError> {
        let permit = out.reserve().await.map_err(|_| WatchError::Closed)?;
        let mut st = self.lock();
        if st.watchers.contains_key(&(stream, watch_id)) {
            return Err(WatchError::DuplicateId);
        }
        let published = st.published;
        let next_rev = if spec.start_revision <= 0 {
            published + 1
        } else {
            spec.start_revision
        };
        let synced = next_rev > published;
        let progress_due = spec
            .progress_notify
            .then(|| Instant::now() + self.progress_interval);
        permit.send(WatchMessage::Created {
            watch_id,
            revision: published,
        });
        st.watchers.insert(
            (stream, watch_id),
            Watcher {
                spec,
                next_rev,
                synced,
                out: out.clone(),
                progress_due,
            },
        );
        drop(st);
        if !synced {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Jumps to `revision` when the store was replaced wholesale (a snapshot was installed): synced
    /// watchers catch up on the gap from the new store.
    pub fn reset_published(&self, revision: i64) {
        let mut st = self.lock();
        if revision > st.published {
            for w in st.watchers.values_mut() {
                w.synced = false;
            }
            st.published = revision;
            drop(st);
            self.wake.notify_one();
        }
    }

    /// Removes a watcher; true if it existed.
    pub fn cancel(&self, stream: u64, watch_id: i64) -> bool {
        self.lock().watchers.remove(&(stream, watch_id)).is_some()
    }

    /// Whether the stream has a watcher with this id.
    pub fn contains(&self, stream: u64, watch_id: i64) -> bool {
        self.lock().watchers.contains_key(&(stream, watch_id))
    }

    /// Drops every watcher of a closed stream.
    pub fn close_stream(&self, stream: u64) {
        let mut st = self.lock();
        st.watchers.retain(|(s, _), _| *s != stream);
        st.pending_progress.remove(&stream);
    }

    /// Answers a progress request once every watcher of the stream has caught up.
    pub fn request_progress(&self, stream: u64, out: &mpsc::Sender<WatchMessage>) {
        let mut st = self.lock();
        if !Self::try_progress(&st, stream, out) {
            st.pending_progress.insert(stream, out.clone());
            drop(st);
            self.wake.notify_one();
        }
    }

    fn try_progress(st: &HubState, stream: u64, out: &mpsc::Sender<WatchMessage>) -> bool {
        let caught_up = st
            .watchers
            .iter()
            .filter(|((s, _), _)| *s == stream)
            .all(|(_, w)| w.synced);
        caught_up
            && out
                .try_send(WatchMessage::Progress {
                    watch_id: -1,
                    revision: st.published,
                })
                .is_ok()
    }

    /// Offers applied changes up to `revision` (now readable from the store) to synced watchers.
    /// Never blocks: a watcher whose stream is full is left to catch up from history.
    ///
    /// `load_prev` reads an event's previous value (the key as of the revision before it), for
    /// watchers that ask for previous values when the write did not load it
    /// ([`Event::prev_unloaded`]). It runs under the hub lock, so a watcher registered while
    /// the entry was applied cannot miss it; each value is read once however many watchers want it.
    pub fn publish(&self, events: &[Event], revision: i64, load_prev: &PrevLoader<'_>) {
        let mut st = self.lock();
        if revision <= st.published {
            return;
        }
        let filled = fill_prev(&st, events, load_prev);
        let mut fell_behind = false;
        let mut closed = Vec::new();
        for (key, w) in st.watchers.iter_mut().filter(|(_, w)| w.synced) {
            let mut unreadable = false;
            let mine: Vec<Event> = events
                .iter()
                .enumerate()
                .filter(|(_, e)| e.kv.mod_revision >= w.next_rev && w.spec.wants(e))
                .filter_map(|(i, e)| match filled.get(i).unwrap_or(&Filled::AsIs) {
                    Filled::Loaded(full) if w.spec.prev_kv => Some(full.clone()),
                    Filled::Unreadable if w.spec.prev_kv => {
                        unreadable = true;
                        None
                    }
                    _ => Some(w.spec.shape(e)),
                })
                .collect();
            if unreadable {
                // Catching up reads history, which reports what went wrong.
                w.synced = false;
                fell_behind = true;
                continue;
            }
            if !mine.is_empty() {
                match w.out.try_send(WatchMessage::Events {
                    watch_id: key.1,
                    revision,
                    events: mine,
                    fragment: w.spec.fragment,
                }) {
                    Ok(()) => {
                        if let Some(due) = w.progress_due.as_mut() {
                            *due = Instant::now() + self.progress_interval;
                        }
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        w.synced = false;
                        fell_behind = true;
                        continue;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        closed.push(*key);
                        continue;
                    }
                }
            }
            w.next_rev = w.next_rev.max(revision + 1);
        }
        for key in closed {
            st.watchers.remove(&key);
        }
        st.published = revision;
        drop(st);
        if fell_behind {
            self.wake.notify_one();
        }
    }

    /// Runs catch-up and periodic progress notifications until `stop` fires.
    pub async fn sync_loop(
        self: Arc<Self>,
        history: Arc<dyn History>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let tick = Duration::from_millis(100).min(self.progress_interval);
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(tick) => {}
                _ = stop.wait_for(|s| *s) => {
                    // Dropping every watcher's sender lets the streams end.
                    let mut st = self.lock();
                    st.watchers.clear();
                    st.pending_progress.clear();
                    return;
                }
            }
            // Several rounds while there is progress, so a burst catches up without waiting for ticks.
            for _ in 0..64 {
                if !self.sync_round(history.as_ref()) {
                    break;
                }
                tokio::task::yield_now().await;
            }
            self.progress_round();
        }
    }

    /// One catch-up pass over every lagging watcher; true if it sent anything.
    fn sync_round(&self, history: &dyn History) -> bool {
        let (published, lagging): (i64, Vec<Lagging>) = {
            let st = self.lock();
            let lagging = st
                .watchers
                .iter()
                .filter(|(_, w)| !w.synced)
                .map(|(k, w)| (*k, w.spec.clone(), w.next_rev, w.out.clone()))
                .collect();
            (st.published, lagging)
        };
        let compacted = history.compact_revision();
        let mut progressed = false;
        for (key, spec, next_rev, out) in lagging {
            let permit = match out.try_reserve() {
                Ok(p) => p,
                Err(mpsc::error::TrySendError::Full(_)) => continue,
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.lock().watchers.remove(&key);
                    continue;
                }
            };
            if next_rev < compacted {
                if self.lock().watchers.remove(&key).is_some() {
                    permit.send(WatchMessage::Canceled {
                        watch_id: key.1,
                        revision: published,
                        compact_revision: compacted,
                        reason: "etcdserver: mvcc: required revision has been compacted".into(),
                    });
                }
                progressed = true;
                continue;
            }
            let (events, upto) = if next_rev <= published {
                match history.events(&spec, next_rev, published, CATCH_UP_EVENTS, CATCH_UP_BYTES) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "watch catch-up read failed");
                        continue;
                    }
                }
            } else {
                // Starts in the future: nothing to read yet, and nothing to skip.
                (Vec::new(), next_rev - 1)
            };
            let mut st = self.lock();
            let current = st.published;
            let Some(w) = st.watchers.get_mut(&key) else {
                continue;
            };
            if w.next_rev != next_rev || w.synced {
                continue;
            }
            if !events.is_empty() {
                permit.send(WatchMessage::Events {
                    watch_id: key.1,
                    revision: upto,
                    events,
                    fragment: spec.fragment,
                });
            }
            w.next_rev = upto + 1;
            // Changes published after `upto` skipped this watcher; it is synced only if none were.
            w.synced = upto >= current;
            progressed = true;
        }
        progressed
    }

    fn progress_round(&self) {
        let mut st = self.lock();
        let pending: Vec<(u64, mpsc::Sender<WatchMessage>)> = st.pending_progress.drain().collect();
        for (stream, out) in pending {
            if !Self::try_progress(&st, stream, &out) {
                st.pending_progress.insert(stream, out);
            }
        }
        let now = Instant::now();
        let published = st.published;
        let interval = self.progress_interval;
        for (key, w) in st.watchers.iter_mut() {
            if let Some(due) = w.progress_due.as_mut() {
                if w.synced && *due <= now {
                    let _ = w.out.try_send(WatchMessage::Progress {
                        watch_id: key.1,
                        revision: published,
                    });
                    *due = now + interval;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::KeyValue;

    struct NoHistory;

    impl History for NoHistory {
        fn events(
            &self,
            _: &WatchSpec,
            _: i64,
            to: i64,
            _: usize,
            _: usize,
        ) -> Result<(Vec<Event>, i64), MvccError> {
            Ok((Vec::new(), to))
        }
        fn compact_revision(&self) -> i64 {
            -1
        }
    }

    fn put(key: &str, rev: i64) -> Event {
        Event {
            kind: EventType::Put,
            kv: KeyValue {
                key: key.into(),
                mod_revision: rev,
                ..Default::default()
            },
            prev_kv: None,
        }
    }

    fn drain(rx: &mut mpsc::Receiver<WatchMessage>) -> Vec<i64> {
        let mut revs = Vec::new();
        while let Ok(m) = rx.try_recv() {
            if let WatchMessage::Events { events, .. } = m {
                revs.extend(events.iter().map(|e| e.kv.mod_revision));
            }
        }
        revs
    }

    #[tokio::test]
    async fn a_future_start_revision_is_honoured_even_after_a_store_reset() {
        let hub = WatchHub::new(5, Duration::from_secs(600));
        let (tx, mut rx) = mpsc::channel(16);
        let spec = WatchSpec {
            key: b"k".to_vec(),
            start_revision: 10,
            ..Default::default()
        };
        hub.watch(1, 0, spec, &tx).await.unwrap();
        hub.publish(&[put("k", 6)], 6, &|_| Ok(None));
        // A snapshot install makes every watcher catch up; the future start must survive that.
        hub.reset_published(8);
        assert!(hub.sync_round(&NoHistory));
        hub.publish(&[put("k", 9)], 9, &|_| Ok(None));
        hub.publish(&[put("k", 10)], 10, &|_| Ok(None));
        assert_eq!(drain(&mut rx), vec![10]);
    }

    #[tokio::test]
    async fn a_full_stream_falls_back_to_catch_up_without_blocking_publish() {
        let hub = WatchHub::new(1, Duration::from_secs(600));
        let (tx, mut rx) = mpsc::channel(2);
        hub.watch(
            1,
            0,
            WatchSpec {
                key: b"k".to_vec(),
                ..Default::default()
            },
            &tx,
        )
        .await
        .unwrap();
        for rev in 2..10 {
            hub.publish(&[put("k", rev)], rev, &|_| Ok(None));
        }
        // Created + one event fit; the rest were left for catch-up instead of blocking.
        let st = hub.lock();
        let w = st.watchers.get(&(1, 0)).unwrap();
        assert!(!w.synced);
        assert_eq!(w.next_rev, 3);
        drop(st);
        assert_eq!(drain(&mut rx), vec![2]);
    }
}
