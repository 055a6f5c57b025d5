//! The store's tests against real parts, one module per area, all in one test binary: a binary
//! per area took longer to build than its tests take to run. `common` holds the shared fixtures:
//! members and clusters as processes, the reference etcd and etcdctl, certificates and damaged
//! input.

mod common;

mod auth;
mod cluster;
mod cluster_watch;
mod decoders;
mod defrag;
mod etcd_client_compat;
mod etcdctl_cluster_ops;
mod etcdctl_compat;
mod lease;
mod lock_election;
mod maintenance;
mod membership;
mod mirror;
mod snapshot_migration;
mod tls;
mod watch;
