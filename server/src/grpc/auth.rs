//! The `Auth` service: enable/disable, Authenticate, users and roles.
//!
//! Changes go through the log (with the caller's credentials, which apply checks for the root
//! role, as etcd does); passwords are hashed here, before proposing, so apply stays deterministic.
//! Reads (get, list, status) are served from this member's state after a read index, with the same
//! admin check made here.

use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::auth_server::Auth;
use tonic::{Request, Response, Status};

use super::convert;
use super::ServerContext;
use crate::auth::{AuthError, AuthInfo, AuthOp};
use crate::command::{Applied, Command, CommandResponse};
use crate::error::ServerError;

/// Authenticate retries while the auth store keeps changing between the password check and the
/// apply of the issued token.
const AUTHENTICATE_ATTEMPTS: usize = 5;

pub(crate) struct AuthService {
    pub ctx: ServerContext,
}

type Reply<T> = Result<Response<T>, Status>;

impl AuthService {
    /// Proposes `op` with the caller's credentials; returns (store revision, auth revision).
    async fn change<T>(&self, req: &Request<T>, op: AuthOp) -> Result<(i64, u64), ServerError> {
        self.ctx.check_change_size(&op)?;
        let info = self.ctx.auth_info(req).await?;
        self.propose(self.ctx.with_auth(info, Command::Auth(op)))
            .await
    }

    async fn propose(&self, cmd: Command) -> Result<(i64, u64), ServerError> {
        let CommandResponse { revision, result } = self.ctx.raft.propose(cmd, 128).await?;
        match result? {
            Applied::Auth { revision: auth } => Ok((revision, auth)),
            other => Err(ServerError::Internal(format!(
                "unexpected apply result {other:?}"
            ))),
        }
    }

    /// Waits until this member has applied every committed change, then returns the caller.
    async fn read<T>(&self, req: &Request<T>) -> Result<Option<AuthInfo>, ServerError> {
        self.ctx.raft.read_index().await?;
        self.ctx.auth_info(req).await
    }

    fn header(&self) -> Option<pb::ResponseHeader> {
        self.ctx.header(self.ctx.raft.state().current_revision())
    }

    /// Refuses a caller who could not make the change anyway before spending a hash on it (apply
    /// checks again, against the state the change meets).
    async fn before_hashing<T>(&self, req: &Request<T>) -> Result<(), ServerError> {
        self.ctx.require_admin(req).await
    }

    async fn hash(&self, password: String, hashed: String) -> Result<String, ServerError> {
        if !hashed.is_empty() {
            return Ok(hashed);
        }
        let cost = self.ctx.auth.bcrypt_cost;
        tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
            .await
            .map_err(|e| ServerError::Internal(e.to_string()))?
            .map_err(|e| ServerError::Internal(e.to_string()))
    }

    /// etcd's CheckPassword: the auth revision the password was found good at.
    async fn check_password(&self, name: &str, password: String) -> Result<u64, ServerError> {
        let (hash, revision) = {
            let state = self.ctx.auth.store.read();
            if !state.enabled {
                return Err(AuthError::AuthNotEnabled.into());
            }
            let user = state.users.get(name).ok_or(AuthError::AuthFailed)?;
            if user.no_password {
                return Err(AuthError::AuthFailed.into());
            }
            (user.password.clone(), state.revision)
        };
        let good = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .map_err(|e| ServerError::Internal(e.to_string()))?
            .unwrap_or(false);
        if good {
            Ok(revision)
        } else {
            Err(AuthError::AuthFailed.into())
        }
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    #[tracing::instrument(level = "debug", skip_all)]
    async fn auth_enable(
        &self,
        req: Request<pb::AuthEnableRequest>,
    ) -> Reply<pb::AuthEnableResponse> {
        let (rev, _) = self.change(&req, AuthOp::Enable).await?;
        Ok(Response::new(pb::AuthEnableResponse {
            header: self.ctx.header(rev),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn auth_disable(
        &self,
        req: Request<pb::AuthDisableRequest>,
    ) -> Reply<pb::AuthDisableResponse> {
        let (rev, _) = self.change(&req, AuthOp::Disable).await?;
        Ok(Response::new(pb::AuthDisableResponse {
            header: self.ctx.header(rev),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn auth_status(
        &self,
        _: Request<pb::AuthStatusRequest>,
    ) -> Reply<pb::AuthStatusResponse> {
        self.ctx
            .raft
            .read_index()
            .await
            .map_err(ServerError::from)?;
        let (enabled, auth_revision) = {
            let state = self.ctx.auth.store.read();
            (state.enabled, state.revision)
        };
        Ok(Response::new(pb::AuthStatusResponse {
            header: self.header(),
            enabled,
            auth_revision,
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn authenticate(
        &self,
        req: Request<pb::AuthenticateRequest>,
    ) -> Reply<pb::AuthenticateResponse> {
        let req = req.into_inner();
        self.ctx
            .raft
            .read_index()
            .await
            .map_err(ServerError::from)?;
        for _ in 0..AUTHENTICATE_ATTEMPTS {
            let checked = self.check_password(&req.name, req.password.clone()).await?;
            let token = self.ctx.auth.tokens.new_simple_token();
            let op = AuthOp::Authenticate {
                user: req.name.clone(),
                token: token.clone(),
            };
            let (rev, applied) = self.propose(Command::Auth(op)).await?;
            // A change between the check and the apply (a new password, a deleted user) means
            // the check proved nothing: check again, as etcd does.
            if applied != checked {
                tracing::info!(user = %req.name, "auth store changed while authenticating; retrying");
                continue;
            }
            let token = self
                .ctx
                .auth
                .tokens
                .token_for(token, &req.name, applied)
                .map_err(|e| ServerError::Internal(e.to_string()))?;
            return Ok(Response::new(pb::AuthenticateResponse {
                header: self.ctx.header(rev),
                token,
            }));
        }
        Err(ServerError::Auth(AuthError::AuthFailed).into())
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn user_add(
        &self,
        req: Request<pb::AuthUserAddRequest>,
    ) -> Reply<pb::AuthUserAddResponse> {
        let (meta, r) = split(req);
        self.before_hashing(&meta).await?;
        let no_password = r.options.is_some_and(|o| o.no_password);
        let hash = if no_password {
            String::new()
        } else {
            self.hash(r.password, r.hashed_password).await?
        };
        let op = AuthOp::UserAdd {
            name: r.name,
            hash,
            no_password,
        };
        let (rev, _) = self.change(&meta, op).await?;
        Ok(Response::new(pb::AuthUserAddResponse {
            header: self.ctx.header(rev),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn user_get(
        &self,
        req: Request<pb::AuthUserGetRequest>,
    ) -> Reply<pb::AuthUserGetResponse> {
        let info = self.read(&req).await?;
        let name = &req.get_ref().name;
        // A user may look itself up.
        if let Err(e) = self.ctx.check_admin(&info) {
            if info.as_ref().is_none_or(|i| i.user != *name) {
                return Err(e.into());
            }
        }
        let roles = {
            let state = self.ctx.auth.store.read();
            let user = state.users.get(name).ok_or(AuthError::UserNotFound);
            user.map_err(ServerError::from)?.roles.clone()
        };
        Ok(Response::new(pb::AuthUserGetResponse {
            header: self.header(),
            roles,
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn user_list(
        &self,
        req: Request<pb::AuthUserListRequest>,
    ) -> Reply<pb::AuthUserListResponse> {
        let info = self.read(&req).await?;
        self.ctx.check_admin(&info)?;
        let users = self.ctx.auth.store.read().users.keys().cloned().collect();
        Ok(Response::new(pb::AuthUserListResponse {
            header: self.header(),
            users,
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn user_delete(
        &self,
        req: Request<pb::AuthUserDeleteRequest>,
    ) -> Reply<pb::AuthUserDeleteResponse> {
        let name = req.get_ref().name.clone();
        let (rev, _) = self.change(&req, AuthOp::UserDelete(name)).await?;
        Ok(Response::new(pb::AuthUserDeleteResponse {
            header: self.ctx.header(rev),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn user_change_password(
        &self,
        req: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Reply<pb::AuthUserChangePasswordResponse> {
        let (meta, r) = split(req);
        self.before_hashing(&meta).await?;
        let hash = self.hash(r.password, r.hashed_password).await?;
        let op = AuthOp::UserChangePassword { name: r.name, hash };
        let (rev, _) = self.change(&meta, op).await?;
        Ok(Response::new(pb::AuthUserChangePasswordResponse {
            header: self.ctx.header(rev),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn user_grant_role(
        &self,
        req: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Reply<pb::AuthUserGrantRoleResponse> {
        let r = req.get_ref();
        let op = AuthOp::UserGrantRole {
            user: r.user.clone(),
            role: r.role.clone(),
        };
        let (rev, _) = self.change(&req, op).await?;
        Ok(Response::new(pb::AuthUserGrantRoleResponse {
            header: self.ctx.header(rev),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn user_revoke_role(
        &self,
        req: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Reply<pb::AuthUserRevokeRoleResponse> {
        let r = req.get_ref();
        let op = AuthOp::UserRevokeRole {
            user: r.name.clone(),
            role: r.role.clone(),
        };
        let (rev, _) = self.change(&req, op).await?;
        Ok(Response::new(pb::AuthUserRevokeRoleResponse {
            header: self.ctx.header(rev),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn role_add(
        &self,
        req: Request<pb::AuthRoleAddRequest>,
    ) -> Reply<pb::AuthRoleAddResponse> {
        let name = req.get_ref().name.clone();
        let (rev, _) = self.change(&req, AuthOp::RoleAdd(name)).await?;
        Ok(Response::new(pb::AuthRoleAddResponse {
            header: self.ctx.header(rev),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn role_get(
        &self,
        req: Request<pb::AuthRoleGetRequest>,
    ) -> Reply<pb::AuthRoleGetResponse> {
        let info = self.read(&req).await?;
        let name = &req.get_ref().role;
        let state = self.ctx.auth.store.read();
        // A user may look up the roles it has.
        if let Err(e) = self.ctx.check_admin(&info) {
            let has = info
                .as_ref()
                .and_then(|i| state.users.get(&i.user))
                .is_some_and(|u| u.roles.contains(name));
            if !has {
                return Err(e.into());
            }
        }
        let role = state.roles.get(name).ok_or(AuthError::RoleNotFound);
        let perm = role
            .map_err(ServerError::from)?
            .perms
            .iter()
            .map(convert::permission_pb)
            .collect();
        drop(state);
        Ok(Response::new(pb::AuthRoleGetResponse {
            header: self.header(),
            perm,
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn role_list(
        &self,
        req: Request<pb::AuthRoleListRequest>,
    ) -> Reply<pb::AuthRoleListResponse> {
        let info = self.read(&req).await?;
        self.ctx.check_admin(&info)?;
        let roles = self.ctx.auth.store.read().roles.keys().cloned().collect();
        Ok(Response::new(pb::AuthRoleListResponse {
            header: self.header(),
            roles,
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn role_delete(
        &self,
        req: Request<pb::AuthRoleDeleteRequest>,
    ) -> Reply<pb::AuthRoleDeleteResponse> {
        let name = req.get_ref().role.clone();
        let (rev, _) = self.change(&req, AuthOp::RoleDelete(name)).await?;
        Ok(Response::new(pb::AuthRoleDeleteResponse {
            header: self.ctx.header(rev),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn role_grant_permission(
        &self,
        req: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Reply<pb::AuthRoleGrantPermissionResponse> {
        let r = req.get_ref();
        let perm = r
            .perm
            .clone()
            .and_then(convert::permission)
            .ok_or(ServerError::InvalidRequest("permission type is invalid"))?;
        let op = AuthOp::RoleGrantPermission {
            role: r.name.clone(),
            perm,
        };
        let (rev, _) = self.change(&req, op).await?;
        Ok(Response::new(pb::AuthRoleGrantPermissionResponse {
            header: self.ctx.header(rev),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn role_revoke_permission(
        &self,
        req: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Reply<pb::AuthRoleRevokePermissionResponse> {
        let r = req.get_ref();
        let op = AuthOp::RoleRevokePermission {
            role: r.role.clone(),
            key: r.key.clone(),
            range_end: r.range_end.clone(),
        };
        let (rev, _) = self.change(&req, op).await?;
        Ok(Response::new(pb::AuthRoleRevokePermissionResponse {
            header: self.ctx.header(rev),
        }))
    }
}

/// The request's metadata and extensions (kept for the credentials) apart from its message.
fn split<T>(req: Request<T>) -> (Request<()>, T) {
    let (metadata, extensions, message) = req.into_parts();
    (Request::from_parts(metadata, extensions, ()), message)
}
