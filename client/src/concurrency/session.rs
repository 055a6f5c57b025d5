//! A lease-backed session: one lease, kept alive in the background, that owns the keys of locks and
//! campaigns. When the session ends (closed, or its lease lost) those keys disappear with the lease.

use crate::client::Client;
use crate::error::Result;
use crate::lease::{KeeperState, LeaseKeeper};

/// Default session TTL in seconds, as etcd's concurrency package uses.
pub const DEFAULT_SESSION_TTL: i64 = 60;

/// A lease kept alive until [`Session::close`] or drop. Dropping stops the renewals, so the lease (and every
/// lock or campaign key it owns) expires after its TTL; `close` revokes it at once.
#[derive(Debug)]
pub struct Session {
    client: Client,
    keeper: LeaseKeeper,
    ttl: i64,
}

impl Session {
    /// Grants a lease of `ttl` seconds and starts keeping it alive.
    pub async fn new(client: &Client, ttl: i64) -> Result<Session> {
        let lease = client.lease_grant(ttl, 0).await?;
        Session::from_lease(client, lease.id, lease.ttl).await
    }

    /// Adopts an existing lease (for example one granted by an earlier run that is resuming).
    pub async fn from_lease(client: &Client, lease: i64, ttl: i64) -> Result<Session> {
        let mut keeper = client.lease_keeper(lease);
        keeper.ready().await?;
        Ok(Session {
            client: client.clone(),
            keeper,
            ttl,
        })
    }

    /// The session's lease id.
    pub fn lease(&self) -> i64 {
        self.keeper.id()
    }

    /// The TTL the lease was granted with.
    pub fn ttl(&self) -> i64 {
        self.ttl
    }

    /// The client the session was made with.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// `Err(LeaseLost)` once the session's lease is gone.
    pub fn check(&self) -> Result<()> {
        self.keeper.check()
    }

    /// The keeper's view of the lease.
    pub fn state(&self) -> KeeperState {
        self.keeper.state()
    }

    /// Waits until the session's lease is lost.
    pub async fn lost(&mut self) -> crate::Error {
        self.keeper.lost().await
    }

    /// Revokes the lease, releasing every key the session owns.
    pub async fn close(self) -> Result<()> {
        let id = self.keeper.id();
        drop(self.keeper);
        match self.client.lease_revoke(id).await {
            Ok(_) | Err(crate::Error::LeaseNotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
