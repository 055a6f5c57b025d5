//! Generated gRPC types for Cairn: the etcd v3 client API (`etcdserverpb`, `mvccpb`) with etcd's package,
//! service and field numbers, and Cairn's internal Raft transport (`cairn.raft`).
#![allow(clippy::all, missing_docs)]

/// etcd's key-value and event messages.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// etcd's users, roles and permissions.
pub mod authpb {
    tonic::include_proto!("authpb");
}

/// etcd's client API services and messages.
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// Cairn's member-to-member Raft transport.
pub mod raftpb {
    tonic::include_proto!("cairn.raft");
}

/// etcd's lock service.
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

/// etcd's election service.
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}
