//! The figures the member's consensus and storage record as they run: handles that `metrics`
//! registers under etcd's names and scrapes, and that `raft/` and `node` count into. Passing these
//! down, instead of the metrics registry, keeps the arrows one way (metrics observes raft; raft
//! never imports metrics).
//!
//! A leaf: it must never import another module of the crate.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

/// Cheap to clone: every clone counts into the same figures.
#[derive(Clone)]
pub struct Counters {
    pub leader_changes: Counter,
    pub proposals_pending: Gauge,
    /// Range requests the member is serving. Not exported (etcd has no such figure): with
    /// `proposals_pending` it tells the log store whether clients wait on this member.
    pub reads_pending: Gauge,
    pub proposals_failed: Counter,
    pub apply_duration: Histogram,
    pub wal_fsync_duration: Histogram,
}

impl Default for Counters {
    fn default() -> Counters {
        let seconds = || Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        Counters {
            leader_changes: Counter::default(),
            proposals_pending: Gauge::default(),
            reads_pending: Gauge::default(),
            proposals_failed: Counter::default(),
            apply_duration: seconds(),
            wal_fsync_duration: seconds(),
        }
    }
}
