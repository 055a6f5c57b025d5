//! A client for Cairn and etcd (same v3 API): a shared, cloneable [`Client`] with endpoint failover, a
//! typed KV and [`Txn`] API, watches that resume by themselves without gap or duplicate
//! ([`WatchStream`]), lease keepers ([`LeaseKeeper`]), and the classic concurrency recipes.
//!
//! ```no_run
//! # async fn demo() -> Result<(), cairn_client::Error> {
//! use cairn_client::{Client, GetOptions};
//! let client = Client::connect(["127.0.0.1:2379"], None).await?;
//! client.put("greeting", "hello", None).await?;
//! let resp = client.get("greet", Some(GetOptions::new().with_prefix())).await?;
//! assert_eq!(resp.kvs[0].value, b"hello");
//! # Ok(()) }
//! ```
//!
//! Retry rules: reads, lease renewals and listings are retried on another member until the request deadline
//! when a member is unreachable or has no leader; writes are retried only when they provably never left the
//! client, and otherwise fail with [`Error::OutcomeUnknown`].
#![warn(missing_docs)]

mod auth;
mod client;
mod cluster;
pub mod concurrency;
mod error;
mod kv;
mod lease;
mod maintenance;
mod namespace;
mod txn;
mod watch;

pub use auth::{Permission, PermissionType};
pub use client::{Client, ConnectOptions, TlsOptions};
pub use concurrency::{Election, Fence, LeaderKey, Mutex, Session};
pub use error::{Error, Result};
pub use kv::{
    prefix_end, CompactOptions, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget,
};
pub use lease::{KeeperState, LeaseKeeper};
pub use maintenance::AlarmAction;
pub use namespace::Namespace;
pub use txn::{Compare, CompareInt, CompareValue, Txn, TxnOp};
pub use watch::{WatchOptions, WatchResponse, WatchStream};

/// The wire types of etcd's v3 API, as returned by this client's calls.
pub mod proto {
    pub use cairn_proto::etcdserverpb::*;
    pub use cairn_proto::mvccpb::{event::EventType, Event, KeyValue};
}
