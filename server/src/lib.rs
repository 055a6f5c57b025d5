//! Cairn: an embeddable, Raft-replicated key-value store that speaks etcd's v3 gRPC API.
//!
//! Start a member in-process with [`Node::start`] and talk to it with any etcd v3 client at
//! [`Node::client_url`]; or run the `cairn` binary.

pub mod auth;
pub(crate) mod codec;
pub mod command;
pub(crate) mod compactor;
pub mod config;
pub mod counters;
pub mod error;
pub(crate) mod grpc;
pub mod lease;
pub mod members;
pub mod metrics;
pub mod mvcc;
pub mod node;
pub mod raft;
pub mod storage;
pub mod tls;
pub mod watch;

pub use compactor::parse_policy as parse_auto_compaction;
pub use config::{AutoCompaction, ClusterState, Config, TlsInfo};
pub use node::{Node, NodeError};
