//! Managing users, roles and permissions, and turning authentication on and off: etcd's Auth
//! service as `etcdctl user|role|auth` drives it. Authenticating is the connection's business
//! ([`crate::ConnectOptions::with_user`]); this module only changes what the store enforces.
//!
//! Every change is a write through the log, so none is retried after it may have been applied.

use cairn_proto::authpb::permission::Type as PbType;
use cairn_proto::authpb::Permission as PbPermission;
use cairn_proto::etcdserverpb::auth_client::AuthClient;
use cairn_proto::etcdserverpb::{
    AuthDisableRequest, AuthEnableRequest, AuthRoleAddRequest, AuthRoleDeleteRequest,
    AuthRoleGetRequest, AuthRoleGetResponse, AuthRoleGrantPermissionRequest, AuthRoleListRequest,
    AuthRoleRevokePermissionRequest, AuthStatusRequest, AuthStatusResponse, AuthUserAddRequest,
    AuthUserChangePasswordRequest, AuthUserDeleteRequest, AuthUserGetRequest,
    AuthUserGrantRoleRequest, AuthUserListRequest, AuthUserRevokeRoleRequest,
};

use crate::client::Client;
use crate::error::Result;
use crate::kv::prefix_end;

/// What a permission allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PermissionType {
    /// Range, watch and the compares of a Txn.
    Read,
    /// Put, delete and the writes of a Txn.
    Write,
    /// Both.
    ReadWrite,
}

/// Access to one key, a range of keys, a prefix, or every key from one on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    kind: PermissionType,
    key: Vec<u8>,
    range_end: Vec<u8>,
}

impl Permission {
    /// `kind` access to `key` alone.
    pub fn new(kind: PermissionType, key: impl Into<Vec<u8>>) -> Self {
        Permission {
            kind,
            key: key.into(),
            range_end: Vec::new(),
        }
    }

    /// To every key in `[key, end)`.
    pub fn with_range_end(mut self, end: impl Into<Vec<u8>>) -> Self {
        self.range_end = end.into();
        self
    }

    /// To every key that starts with the key.
    pub fn with_prefix(mut self) -> Self {
        self.range_end = prefix_end(&self.key);
        self
    }

    /// To every key from the key on (etcd's `--from-key`).
    pub fn with_from_key(mut self) -> Self {
        self.range_end = vec![0];
        self
    }

    fn into_proto(self) -> PbPermission {
        PbPermission {
            perm_type: match self.kind {
                PermissionType::Read => PbType::Read,
                PermissionType::Write => PbType::Write,
                PermissionType::ReadWrite => PbType::Readwrite,
            } as i32,
            key: self.key,
            range_end: self.range_end,
        }
    }
}

/// One Auth call as a write (`false`: never retried) or a read.
macro_rules! auth_call {
    ($self:ident, $idempotent:expr, $method:ident, $req:expr) => {{
        let req = $req;
        $self
            .unary($idempotent, |ch, _| {
                let req = req.clone();
                async move { Ok(AuthClient::new(ch).$method(req).await?.into_inner()) }
            })
            .await
    }};
}

impl Client {
    /// Turns authentication on; the store refuses unless user `root` exists with role `root`.
    pub async fn auth_enable(&self) -> Result<()> {
        auth_call!(self, false, auth_enable, AuthEnableRequest {}).map(drop)
    }

    /// Turns authentication off (root only).
    pub async fn auth_disable(&self) -> Result<()> {
        auth_call!(self, false, auth_disable, AuthDisableRequest {}).map(drop)
    }

    /// Whether authentication is on, and the auth revision.
    pub async fn auth_status(&self) -> Result<AuthStatusResponse> {
        auth_call!(self, true, auth_status, AuthStatusRequest {})
    }

    /// Adds a user with a password.
    pub async fn user_add(&self, name: &str, password: &str) -> Result<()> {
        let req = AuthUserAddRequest {
            name: name.into(),
            password: password.into(),
            ..Default::default()
        };
        auth_call!(self, false, user_add, req).map(drop)
    }

    /// Deletes a user.
    pub async fn user_delete(&self, name: &str) -> Result<()> {
        let req = AuthUserDeleteRequest { name: name.into() };
        auth_call!(self, false, user_delete, req).map(drop)
    }

    /// Sets a user's password.
    pub async fn user_change_password(&self, name: &str, password: &str) -> Result<()> {
        let req = AuthUserChangePasswordRequest {
            name: name.into(),
            password: password.into(),
            ..Default::default()
        };
        auth_call!(self, false, user_change_password, req).map(drop)
    }

    /// The roles of a user.
    pub async fn user_get(&self, name: &str) -> Result<Vec<String>> {
        let req = AuthUserGetRequest { name: name.into() };
        auth_call!(self, true, user_get, req).map(|r| r.roles)
    }

    /// Every user's name, sorted.
    pub async fn user_list(&self) -> Result<Vec<String>> {
        auth_call!(self, true, user_list, AuthUserListRequest {}).map(|r| r.users)
    }

    /// Gives a user a role.
    pub async fn user_grant_role(&self, user: &str, role: &str) -> Result<()> {
        let req = AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        };
        auth_call!(self, false, user_grant_role, req).map(drop)
    }

    /// Takes a role from a user.
    pub async fn user_revoke_role(&self, user: &str, role: &str) -> Result<()> {
        let req = AuthUserRevokeRoleRequest {
            name: user.into(),
            role: role.into(),
        };
        auth_call!(self, false, user_revoke_role, req).map(drop)
    }

    /// Adds a role without permissions.
    pub async fn role_add(&self, name: &str) -> Result<()> {
        let req = AuthRoleAddRequest { name: name.into() };
        auth_call!(self, false, role_add, req).map(drop)
    }

    /// Deletes a role (and takes it from its users).
    pub async fn role_delete(&self, role: &str) -> Result<()> {
        let req = AuthRoleDeleteRequest { role: role.into() };
        auth_call!(self, false, role_delete, req).map(drop)
    }

    /// A role's permissions.
    pub async fn role_get(&self, role: &str) -> Result<AuthRoleGetResponse> {
        let req = AuthRoleGetRequest { role: role.into() };
        auth_call!(self, true, role_get, req)
    }

    /// Every role's name, sorted.
    pub async fn role_list(&self) -> Result<Vec<String>> {
        auth_call!(self, true, role_list, AuthRoleListRequest {}).map(|r| r.roles)
    }

    /// Gives a role a permission.
    pub async fn role_grant_permission(&self, role: &str, perm: Permission) -> Result<()> {
        let req = AuthRoleGrantPermissionRequest {
            name: role.into(),
            perm: Some(perm.into_proto()),
        };
        auth_call!(self, false, role_grant_permission, req).map(drop)
    }

    /// Takes back the permission on exactly `key` .. `range_end` (as it was granted).
    pub async fn role_revoke_permission(
        &self,
        role: &str,
        key: impl Into<Vec<u8>>,
        range_end: impl Into<Vec<u8>>,
    ) -> Result<()> {
        let req = AuthRoleRevokePermissionRequest {
            role: role.into(),
            key: key.into(),
            range_end: range_end.into(),
        };
        auth_call!(self, false, role_revoke_permission, req).map(drop)
    }
}
