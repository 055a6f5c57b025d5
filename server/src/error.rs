//! Server errors, and the one place that turns them into gRPC statuses with etcd's codes and texts.
//!
//! At the gRPC edge: it may name the errors of `command`, `mvcc` and `raft`; nothing below `grpc/`
//! may import it.

use tonic::{Code, Status};

use crate::auth::AuthError;
use crate::command::ApplyError;
use crate::mvcc::{MvccError, ShapeError};
use crate::raft::admin::AdminError;
use crate::raft::ProposeError;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ServerError {
    /// Malformed request: empty key, too many txn ops, duplicate txn key, value or lease given
    /// together with ignore_value or ignore_lease.
    #[error("etcdserver: {0}")]
    Shape(#[from] ShapeError),
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("concurrency: session expired")]
    SessionExpired,
    #[error("election: not leader")]
    ElectionNotLeader,
    #[error("election: no leader")]
    ElectionNoLeader,
    #[error("etcdserver: {0}")]
    InvalidRequest(&'static str),
    #[error(transparent)]
    Propose(#[from] ProposeError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("etcdserver: {0}")]
    Auth(#[from] AuthError),
    /// An auth refusal of the Maintenance service's admin calls (Hash, HashKV, Defragment,
    /// Snapshot), which etcd passes on without its usual translation: code Unknown, `auth: ` text.
    #[error("auth: {0}")]
    AuthUntranslated(AuthError),
    #[error("etcdserver: {0}")]
    Internal(String),
}

impl From<MvccError> for ServerError {
    fn from(e: MvccError) -> Self {
        match e {
            MvccError::Compacted => ServerError::Compacted,
            MvccError::FutureRevision => ServerError::FutureRevision,
            MvccError::KeyNotFound => ServerError::KeyNotFound,
            MvccError::LeaseNotFound => ServerError::LeaseNotFound,
            other => ServerError::Internal(other.to_string()),
        }
    }
}

impl From<ApplyError> for ServerError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::Mvcc(e) => e.into(),
            ApplyError::LeaseExists => ServerError::LeaseExists,
            ApplyError::NoSpace => ServerError::NoSpace,
            ApplyError::Auth(e) => ServerError::Auth(e),
        }
    }
}

impl From<ServerError> for Status {
    fn from(e: ServerError) -> Status {
        let code = match &e {
            ServerError::Shape(_)
            | ServerError::RequestTooLarge
            | ServerError::KeyNotFound
            | ServerError::InvalidRequest(_) => Code::InvalidArgument,
            ServerError::Compacted
            | ServerError::FutureRevision
            | ServerError::LeaseTtlTooLarge => Code::OutOfRange,
            ServerError::LeaseNotFound => Code::NotFound,
            ServerError::NoSpace => Code::ResourceExhausted,
            ServerError::SessionExpired
            | ServerError::ElectionNotLeader
            | ServerError::ElectionNoLeader => Code::Unknown,
            ServerError::LeaseExists => Code::FailedPrecondition,
            ServerError::Propose(_) => Code::Unavailable,
            ServerError::Admin(a) => match a {
                AdminError::MemberNotFound => Code::NotFound,
                AdminError::BadUrls => Code::InvalidArgument,
                AdminError::PeerUrlExists
                | AdminError::NotLearner
                | AdminError::LearnerNotReady
                | AdminError::NotEnoughStarted => Code::FailedPrecondition,
                AdminError::Failed(_) | AdminError::TransferFailed => Code::Unavailable,
            },
            ServerError::Auth(a) => match a {
                AuthError::UserEmpty
                | AuthError::RoleEmpty
                | AuthError::AuthFailed
                | AuthError::AuthOldRevision => Code::InvalidArgument,
                AuthError::PermissionDenied => Code::PermissionDenied,
                AuthError::InvalidAuthToken => Code::Unauthenticated,
                AuthError::RootUserNotExist
                | AuthError::RootRoleNotExist
                | AuthError::UserAlreadyExist
                | AuthError::UserNotFound
                | AuthError::RoleAlreadyExist
                | AuthError::RoleNotFound
                | AuthError::RoleNotGranted
                | AuthError::PermissionNotGranted
                | AuthError::AuthNotEnabled
                | AuthError::InvalidAuthMgmt => Code::FailedPrecondition,
            },
            ServerError::AuthUntranslated(_) => Code::Unknown,
            ServerError::Internal(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}
