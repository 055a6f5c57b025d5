//! etcd's auth store: users, roles and their key permissions, the enabled flag and the auth
//! revision, the checks every request passes when auth is enabled, and the tokens that name a
//! caller.
//!
//! The replicated part ([`AuthState`]) changes only by applying an [`AuthOp`] from the log, so
//! every member holds the same users and roles: passwords arrive already hashed (the proposing
//! member hashes them) and nothing here reads a clock or a random number while applying. Tokens
//! ([`tokens`]) are member-local, as in etcd: simple tokens are issued through the log so every
//! member learns them, and each member expires them by its own clock.
//!
//! Below `storage/` (which persists and loads [`AuthState`]) and `grpc/` (which asks for
//! checks); it may use `mvcc`'s request types, and must never import `storage/`, `raft/`, `grpc/`
//! or tonic.

pub mod perms;
pub mod state;
pub mod tokens;

use serde::{Deserialize, Serialize};

pub use perms::{Intervals, RangePerms};
pub use state::{AuthChange, AuthState, AuthStore};
pub use tokens::{TokenError, TokenProvider};

/// The user and the role that may do everything, and whose existence auth enable requires.
pub const ROOT: &str = "root";

/// etcd's Permission.Type, with its wire numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PermType {
    Read = 0,
    Write = 1,
    ReadWrite = 2,
}

impl PermType {
    pub fn from_i32(n: i32) -> Option<PermType> {
        match n {
            0 => Some(PermType::Read),
            1 => Some(PermType::Write),
            2 => Some(PermType::ReadWrite),
            _ => None,
        }
    }

    fn reads(self) -> bool {
        matches!(self, PermType::Read | PermType::ReadWrite)
    }

    fn writes(self) -> bool {
        matches!(self, PermType::Write | PermType::ReadWrite)
    }
}

/// Access to one key (`range_end` empty), to `[key, range_end)`, or to every key from `key` on
/// (`range_end` = `"\0"`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    pub perm_type: PermType,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    /// bcrypt hash; empty for a user added without a password.
    pub password: String,
    /// Sorted, without duplicates.
    pub roles: Vec<String>,
    pub no_password: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub name: String,
    /// Sorted by (key, range_end); at most one per (key, range_end).
    pub perms: Vec<Permission>,
}

/// Who a request comes from: a user name and the auth revision its credentials were checked at.
/// Revision 0 means "no credentials", which etcd refuses with "user name is empty".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthInfo {
    pub user: String,
    pub revision: u64,
}

/// A replicated change of the auth store, as it travels in the log. Passwords are bcrypt hashes
/// computed by the proposing member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthOp {
    Enable,
    Disable,
    UserAdd {
        name: String,
        hash: String,
        no_password: bool,
    },
    UserDelete(String),
    UserChangePassword {
        name: String,
        hash: String,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        user: String,
        role: String,
    },
    RoleAdd(String),
    RoleDelete(String),
    RoleGrantPermission {
        role: String,
        perm: Permission,
    },
    RoleRevokePermission {
        role: String,
        key: Vec<u8>,
        range_end: Vec<u8>,
    },
    /// A password the proposing member checked; `token` is the simple
    /// token to issue (every member learns it), `None` with JWTs.
    Authenticate {
        user: String,
        token: Option<String>,
    },
}

impl AuthOp {
    pub fn name(&self) -> &'static str {
        match self {
            AuthOp::Enable => "enable",
            AuthOp::Disable => "disable",
            AuthOp::UserAdd { .. } => "user_add",
            AuthOp::UserDelete(_) => "user_delete",
            AuthOp::UserChangePassword { .. } => "user_change_password",
            AuthOp::UserGrantRole { .. } => "user_grant_role",
            AuthOp::UserRevokeRole { .. } => "user_revoke_role",
            AuthOp::RoleAdd(_) => "role_add",
            AuthOp::RoleDelete(_) => "role_delete",
            AuthOp::RoleGrantPermission { .. } => "role_grant_permission",
            AuthOp::RoleRevokePermission { .. } => "role_revoke_permission",
            AuthOp::Authenticate { .. } => "authenticate",
        }
    }

    /// Whether only a root user may ask for it (every change but Authenticate).
    pub fn needs_admin(&self) -> bool {
        !matches!(self, AuthOp::Authenticate { .. })
    }
}

/// etcd's auth errors; the gRPC edge maps each to etcd's code and text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AuthError {
    #[error("root user does not exist")]
    RootUserNotExist,
    #[error("root user does not have root role")]
    RootRoleNotExist,
    #[error("user name already exists")]
    UserAlreadyExist,
    #[error("user name is empty")]
    UserEmpty,
    #[error("user name not found")]
    UserNotFound,
    #[error("role name already exists")]
    RoleAlreadyExist,
    #[error("role name not found")]
    RoleNotFound,
    #[error("role name is empty")]
    RoleEmpty,
    #[error("authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("permission denied")]
    PermissionDenied,
    #[error("role is not granted to the user")]
    RoleNotGranted,
    #[error("permission is not granted to the role")]
    PermissionNotGranted,
    #[error("authentication is not enabled")]
    AuthNotEnabled,
    #[error("invalid auth token")]
    InvalidAuthToken,
    #[error("invalid auth management")]
    InvalidAuthMgmt,
    #[error("revision of auth store is old")]
    AuthOldRevision,
}
