//! Concurrency recipes on top of the client's primitives (KV, Txn, Watch, Lease) only, so they work the same
//! against Cairn and etcd: [`Session`], [`Mutex`] with fencing, [`Election`].

mod election;
mod mutex;
mod session;

pub use election::{Election, LeaderKey};
pub use mutex::{Fence, Mutex};
pub use session::{Session, DEFAULT_SESSION_TTL};
