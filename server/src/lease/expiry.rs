//! Lease expiry: a loop on every member that acts only while it leads. It keeps the leader's lease
//! clock ([`Lessor`]) in step with leadership and proposes a revoke for every lease whose deadline
//! passed, through Raft, so apply stays deterministic.
//!
//! Must never import `raft/`, `storage/` or `grpc/`: the member is reached only through
//! [`ExpiryHost`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::lessor::Lessor;

/// What the expiry loop needs from the member it runs on.
pub trait ExpiryHost: Send + Sync + 'static {
    /// The term this member leads in, if it leads.
    fn leading_term(&self) -> Option<u64>;
    /// `(id, ttl)` of every lease the store holds.
    fn lease_ttls(&self) -> Vec<(i64, i64)>;
    /// Proposes revoking `ids`, all in one log entry.
    fn propose_revokes(&self, ids: Vec<i64>) -> impl Future<Output = Result<(), String>> + Send;
}

/// Runs until `stop` turns true.
pub async fn run<H: ExpiryHost>(
    host: Arc<H>,
    lessor: Arc<Lessor>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let full_tick = Duration::from_millis(500);
    let mut last_leading = None;
    let mut last_tick = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let leading = host.leading_term();
        // A leadership change is handled at once; otherwise the table is scanned twice a second.
        if leading == last_leading && last_tick.elapsed() < full_tick {
            continue;
        }
        last_leading = leading;
        last_tick = Instant::now();
        let expired = lessor.tick(leading, &host.lease_ttls(), std::time::Instant::now());
        if expired.is_empty() {
            continue;
        }
        tracing::debug!(count = expired.len(), "revoking expired leases");
        if let Err(e) = host.propose_revokes(expired).await {
            tracing::warn!(error = %e, "revoking expired leases failed; retrying");
        }
    }
}
