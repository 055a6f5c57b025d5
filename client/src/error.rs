//! Typed errors. Server answers are classified by etcd's gRPC code and exact message text, so a caller can
//! match on `Error::Compacted` or `Error::LeaseNotFound` against Cairn and etcd alike, and still read the
//! original code with [`Error::code`].

use tonic::{Code, Status};

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The requested revision has been compacted away. For watches `compact_revision` is the store's
    /// compaction point (resume from `compact_revision` or later); for reads the server does not say, and it
    /// is 0. The message is etcd's, unchanged.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted {
        /// The compaction point the server reported, 0 when unknown.
        compact_revision: i64,
    },
    /// The requested revision is above the store's current revision.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// The lease does not exist (expired or revoked).
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// The member that answered has no leader; retried on other members for idempotent requests.
    #[error("etcdserver: no leader")]
    NoLeader,
    /// A transaction has more operations than the server allows.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// The request is above the server's size limit.
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// A write may or may not have been applied: the connection or the leader was lost after it was sent.
    /// Such requests are never retried blindly; read back to learn the outcome.
    #[error("outcome unknown at {endpoint}: {message}")]
    OutcomeUnknown {
        /// The endpoint the request was sent to.
        endpoint: String,
        /// What went wrong after the request left.
        message: String,
    },
    /// No endpoint could serve the request before its deadline.
    #[error("unavailable: {message}")]
    Unavailable {
        /// The last failure seen.
        message: String,
    },
    /// The request's deadline passed.
    #[error("deadline exceeded: {message}")]
    DeadlineExceeded {
        /// The last failure seen.
        message: String,
    },
    /// A watch was canceled by the server for a reason other than compaction.
    #[error("watch canceled: {reason}")]
    WatchCanceled {
        /// The server's cancel reason.
        reason: String,
    },
    /// A lease kept by a [`crate::LeaseKeeper`] is gone: revoked, expired, or not renewed within its TTL.
    #[error("lease {id:x} lost: {reason}")]
    LeaseLost {
        /// The lease id.
        id: i64,
        /// Why the keeper gave up.
        reason: String,
    },
    /// An endpoint string could not be parsed.
    #[error("invalid endpoint {endpoint:?}: {message}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why it is invalid.
        message: String,
    },
    /// A caller-side argument is invalid (checked before anything is sent).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Any other status from the server, with etcd's code and message kept (the message is shown as the
    /// server sent it; the code is in [`Error::code`]).
    #[error("{message}")]
    Server {
        /// The gRPC code.
        code: Code,
        /// The server's message.
        message: String,
    },
}

impl Error {
    /// The gRPC code this error corresponds to in etcd's API.
    pub fn code(&self) -> Code {
        match self {
            Error::Compacted { .. } | Error::FutureRevision => Code::OutOfRange,
            Error::LeaseNotFound => Code::NotFound,
            Error::NoLeader | Error::Unavailable { .. } | Error::OutcomeUnknown { .. } => {
                Code::Unavailable
            }
            Error::TooManyOps
            | Error::RequestTooLarge
            | Error::InvalidEndpoint { .. }
            | Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::DeadlineExceeded { .. } => Code::DeadlineExceeded,
            Error::WatchCanceled { .. } => Code::Cancelled,
            Error::LeaseLost { .. } => Code::NotFound,
            Error::Server { code, .. } => *code,
        }
    }

    /// Whether retrying on another member may help (the member had no leader or could not be reached).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Error::NoLeader | Error::Unavailable { .. } | Error::DeadlineExceeded { .. }
        )
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Error {
        let message = status.message();
        match status.code() {
            Code::OutOfRange if message.contains("required revision has been compacted") => {
                Error::Compacted {
                    compact_revision: 0,
                }
            }
            Code::OutOfRange if message.contains("required revision is a future revision") => {
                Error::FutureRevision
            }
            Code::NotFound if message.contains("requested lease not found") => Error::LeaseNotFound,
            Code::Unavailable if message.contains("no leader") => Error::NoLeader,
            Code::InvalidArgument if message.contains("too many operations in txn request") => {
                Error::TooManyOps
            }
            Code::InvalidArgument if message.contains("request is too large") => {
                Error::RequestTooLarge
            }
            // tonic reports a message above its decode limit on either side this way.
            Code::ResourceExhausted if message.contains("message length too large") => {
                Error::RequestTooLarge
            }
            Code::Unavailable => Error::Unavailable {
                message: message.to_string(),
            },
            Code::DeadlineExceeded => Error::DeadlineExceeded {
                message: message.to_string(),
            },
            code => Error::Server {
                code,
                message: message.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_etcd_errors() {
        let cases = [
            (
                Status::out_of_range("etcdserver: mvcc: required revision has been compacted"),
                Code::OutOfRange,
            ),
            (
                Status::out_of_range("etcdserver: mvcc: required revision is a future revision"),
                Code::OutOfRange,
            ),
            (
                Status::not_found("etcdserver: requested lease not found"),
                Code::NotFound,
            ),
            (
                Status::unavailable("etcdserver: no leader"),
                Code::Unavailable,
            ),
            (
                Status::invalid_argument("etcdserver: too many operations in txn request"),
                Code::InvalidArgument,
            ),
            (
                Status::invalid_argument("etcdserver: request is too large"),
                Code::InvalidArgument,
            ),
        ];
        let mapped: Vec<Error> = cases.iter().map(|(s, _)| Error::from(s.clone())).collect();
        assert!(matches!(mapped[0], Error::Compacted { .. }));
        assert!(matches!(mapped[1], Error::FutureRevision));
        assert!(matches!(mapped[2], Error::LeaseNotFound));
        assert!(matches!(mapped[3], Error::NoLeader));
        assert!(matches!(mapped[4], Error::TooManyOps));
        assert!(matches!(mapped[5], Error::RequestTooLarge));
        for (e, (_, code)) in mapped.iter().zip(cases.iter()) {
            assert_eq!(e.code(), *code, "{e}");
        }
        let other = Error::from(Status::permission_denied("nope"));
        assert_eq!(other.code(), Code::PermissionDenied);
        assert_eq!(other.to_string(), "nope");
    }
}
