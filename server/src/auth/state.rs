//! The replicated auth state ([`AuthState`]: users, roles, enabled flag, auth revision), how a log
//! entry changes it ([`AuthState::apply`]), and the permission checks made against it
//! ([`AuthStore`]), on the gRPC path for reads and at apply for writes.
//!
//! The auth revision starts at 1 and grows by one with every change that alters users, roles,
//! permissions or the enabled flag (a request that changes nothing, such as granting a role the
//! user already has, leaves it). Credentials carry the revision they were checked at: a write
//! checked at apply with an older revision is refused with "revision of auth store is old", as in
//! etcd, so a permission change takes effect on the very next request.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::perms::RangePerms;
use super::tokens::SimpleTokens;
use super::{AuthError, AuthInfo, AuthOp, Role, User, ROOT};
use crate::mvcc::{RequestOp, TxnRequest};

/// Users, roles, the enabled flag and the auth revision: the part every member holds alike.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthState {
    pub enabled: bool,
    pub revision: u64,
    pub users: BTreeMap<String, User>,
    pub roles: BTreeMap<String, Role>,
}

impl Default for AuthState {
    fn default() -> Self {
        AuthState {
            enabled: false,
            revision: 1,
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
        }
    }
}

/// What an applied [`AuthOp`] changed, for storage to rewrite: a user's or a role's row (removed
/// if it no longer exists), or the enabled flag and revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthChange {
    User(String),
    Role(String),
    Meta,
}

fn has_root(user: &User) -> bool {
    user.roles.iter().any(|r| r == ROOT)
}

impl AuthState {
    /// Applies one change. Deterministic: reads only `op` and the state. Issued simple tokens go
    /// to `tokens` (member-local, not part of the state); tokens of a user whose password changes
    /// or who is deleted, and all of them on auth disable, are dropped.
    pub fn apply(
        &mut self,
        op: AuthOp,
        tokens: &SimpleTokens,
        changes: &mut Vec<AuthChange>,
    ) -> Result<(), AuthError> {
        let before = changes.len();
        let result = self.apply_op(op, tokens, changes);
        if changes.len() > before {
            self.revision += 1;
            changes.push(AuthChange::Meta);
        }
        result
    }

    fn user_mut(&mut self, name: &str) -> Result<&mut User, AuthError> {
        self.users.get_mut(name).ok_or(AuthError::UserNotFound)
    }

    fn apply_op(
        &mut self,
        op: AuthOp,
        tokens: &SimpleTokens,
        changes: &mut Vec<AuthChange>,
    ) -> Result<(), AuthError> {
        match op {
            AuthOp::Enable => {
                if self.enabled {
                    return Ok(());
                }
                let root = self.users.get(ROOT).ok_or(AuthError::RootUserNotExist)?;
                if !has_root(root) {
                    return Err(AuthError::RootRoleNotExist);
                }
                self.enabled = true;
                changes.push(AuthChange::Meta);
            }
            AuthOp::Disable => {
                if self.enabled {
                    self.enabled = false;
                    tokens.clear();
                    changes.push(AuthChange::Meta);
                }
            }
            AuthOp::Authenticate { user, token } => {
                if !self.enabled {
                    return Err(AuthError::AuthNotEnabled);
                }
                let u = self.users.get(&user).ok_or(AuthError::AuthFailed)?;
                if u.no_password {
                    return Err(AuthError::AuthFailed);
                }
                if let Some(token) = token {
                    tokens.add(token, user);
                }
            }
            AuthOp::UserAdd {
                name,
                hash,
                no_password,
            } => {
                if name.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                if self.users.contains_key(&name) {
                    return Err(AuthError::UserAlreadyExist);
                }
                let user = User {
                    name: name.clone(),
                    password: hash,
                    roles: Vec::new(),
                    no_password,
                };
                self.users.insert(name.clone(), user);
                changes.push(AuthChange::User(name));
            }
            AuthOp::UserDelete(name) => {
                if self.enabled && name == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.users.remove(&name).ok_or(AuthError::UserNotFound)?;
                tokens.invalidate_user(&name);
                changes.push(AuthChange::User(name));
            }
            AuthOp::UserChangePassword { name, hash } => {
                self.user_mut(&name)?.password = hash;
                tokens.invalidate_user(&name);
                changes.push(AuthChange::User(name));
            }
            AuthOp::UserGrantRole { user, role } => {
                if !self.users.contains_key(&user) {
                    return Err(AuthError::UserNotFound);
                }
                // The root role needs no row to be granted, as in etcd.
                if role != ROOT && !self.roles.contains_key(&role) {
                    return Err(AuthError::RoleNotFound);
                }
                let u = self.user_mut(&user)?;
                if let Err(at) = u.roles.binary_search(&role) {
                    u.roles.insert(at, role);
                    changes.push(AuthChange::User(user));
                }
            }
            AuthOp::UserRevokeRole { user, role } => {
                if self.enabled && user == ROOT && role == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let u = self.user_mut(&user)?;
                let at = u
                    .roles
                    .binary_search(&role)
                    .map_err(|_| AuthError::RoleNotGranted)?;
                u.roles.remove(at);
                changes.push(AuthChange::User(user));
            }
            AuthOp::RoleAdd(name) => {
                if name.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                if self.roles.contains_key(&name) {
                    return Err(AuthError::RoleAlreadyExist);
                }
                self.roles.insert(
                    name.clone(),
                    Role {
                        name: name.clone(),
                        perms: Vec::new(),
                    },
                );
                changes.push(AuthChange::Role(name));
            }
            AuthOp::RoleDelete(name) => {
                if self.enabled && name == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.roles.remove(&name).ok_or(AuthError::RoleNotFound)?;
                changes.push(AuthChange::Role(name.clone()));
                for user in self.users.values_mut() {
                    if let Ok(at) = user.roles.binary_search(&name) {
                        user.roles.remove(at);
                        changes.push(AuthChange::User(user.name.clone()));
                    }
                }
            }
            AuthOp::RoleGrantPermission { role, perm } => {
                let r = self.roles.get_mut(&role).ok_or(AuthError::RoleNotFound)?;
                let at = r.perms.binary_search_by(|p| {
                    (&p.key, &p.range_end).cmp(&(&perm.key, &perm.range_end))
                });
                match at {
                    // The same key or range again: its type is replaced.
                    Ok(at) => r.perms[at].perm_type = perm.perm_type,
                    Err(at) => r.perms.insert(at, perm),
                }
                changes.push(AuthChange::Role(role));
            }
            AuthOp::RoleRevokePermission {
                role,
                key,
                range_end,
            } => {
                let r = self.roles.get_mut(&role).ok_or(AuthError::RoleNotFound)?;
                let at = r
                    .perms
                    .iter()
                    .position(|p| p.key == key && p.range_end == range_end)
                    .ok_or(AuthError::PermissionNotGranted)?;
                r.perms.remove(at);
                changes.push(AuthChange::Role(role));
            }
        }
        Ok(())
    }
}

/// The auth state of one member, shared by apply (the only writer) and the request paths, with
/// its permission cache and the simple tokens this member knows.
pub struct AuthStore {
    /// Mirrors `state.enabled`: the one check requests make while auth is disabled.
    enabled: AtomicBool,
    revision: AtomicU64,
    state: RwLock<AuthState>,
    /// Each user's merged permissions, valid for the auth revision they were built at.
    perms: Mutex<HashMap<String, (u64, Arc<RangePerms>)>>,
    pub tokens: SimpleTokens,
}

impl Default for AuthStore {
    fn default() -> Self {
        AuthStore {
            enabled: AtomicBool::new(false),
            revision: AtomicU64::new(1),
            state: RwLock::new(AuthState::default()),
            perms: Mutex::new(HashMap::new()),
            tokens: SimpleTokens::default(),
        }
    }
}

impl AuthStore {
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    pub fn read(&self) -> RwLockReadGuard<'_, AuthState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The state for apply to change; [`AuthStore::publish`] must follow any change.
    pub fn write(&self) -> RwLockWriteGuard<'_, AuthState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the flag and revision of `state` (just changed under [`AuthStore::write`]) visible
    /// to the request paths.
    pub fn publish(&self, state: &AuthState) {
        self.revision.store(state.revision, Ordering::Release);
        self.enabled.store(state.enabled, Ordering::Release);
    }

    /// Replaces the whole state (a load at open or after a snapshot install).
    pub fn replace(&self, state: AuthState) {
        let mut guard = self.write();
        *guard = state;
        self.publish(&guard);
        self.perms.lock().unwrap_or_else(|p| p.into_inner()).clear();
        if !guard.enabled {
            self.tokens.clear();
        }
    }

    fn range_perms(&self, state: &AuthState, user: &User) -> Arc<RangePerms> {
        let mut cache = self.perms.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((rev, perms)) = cache.get(&user.name) {
            if *rev == state.revision {
                return perms.clone();
            }
        }
        let perms = Arc::new(RangePerms::of_roles(
            user.roles.iter().filter_map(|r| state.roles.get(r)),
        ));
        cache.insert(user.name.clone(), (state.revision, perms.clone()));
        perms
    }

    /// etcd's isOpPermitted: whether `info` may read (or `write`) `key` .. `range_end`.
    pub fn permitted(
        &self,
        state: &AuthState,
        info: &AuthInfo,
        write: bool,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), AuthError> {
        if !state.enabled {
            return Ok(());
        }
        if info.revision == 0 {
            return Err(AuthError::UserEmpty);
        }
        if info.revision < state.revision {
            return Err(AuthError::AuthOldRevision);
        }
        let user = state
            .users
            .get(&info.user)
            .ok_or(AuthError::PermissionDenied)?;
        if has_root(user) {
            return Ok(());
        }
        if self.range_perms(state, user).allows(write, key, range_end) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// etcd's IsAdminPermitted: whether `info` names a user with the root role.
    pub fn admin_permitted(&self, state: &AuthState, info: &AuthInfo) -> Result<(), AuthError> {
        if !state.enabled {
            return Ok(());
        }
        if info.user.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        let user = state.users.get(&info.user).ok_or(AuthError::UserNotFound)?;
        if has_root(user) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// etcd's checkTxnAuth: every compare needs read access to its key or range, every operation
    /// of both branches (nested transactions included) the access it would need on its own.
    pub fn txn_permitted(
        &self,
        state: &AuthState,
        info: &AuthInfo,
        txn: &TxnRequest,
    ) -> Result<(), AuthError> {
        for c in &txn.compare {
            self.permitted(state, info, false, &c.key, &c.range_end)?;
        }
        for op in txn.success.iter().chain(&txn.failure) {
            match op {
                RequestOp::Range(r) => self.permitted(state, info, false, &r.key, &r.range_end)?,
                RequestOp::Put(p) => {
                    self.permitted(state, info, true, &p.key, &[])?;
                    if p.prev_kv {
                        self.permitted(state, info, false, &p.key, &[])?;
                    }
                }
                RequestOp::DeleteRange(d) => {
                    if d.prev_kv {
                        self.permitted(state, info, false, &d.key, &d.range_end)?;
                    }
                    self.permitted(state, info, true, &d.key, &d.range_end)?;
                }
                RequestOp::Txn(t) => self.txn_permitted(state, info, t)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{PermType, Permission};
    use super::*;

    fn apply(state: &mut AuthState, op: AuthOp) -> Result<(), AuthError> {
        state.apply(op, &SimpleTokens::default(), &mut Vec::new())
    }

    #[test]
    fn enable_needs_a_root_user_with_the_root_role() {
        let mut s = AuthState::default();
        assert_eq!(
            apply(&mut s, AuthOp::Enable),
            Err(AuthError::RootUserNotExist)
        );
        let add = AuthOp::UserAdd {
            name: ROOT.into(),
            hash: "h".into(),
            no_password: false,
        };
        apply(&mut s, add.clone()).unwrap();
        assert_eq!(apply(&mut s, add), Err(AuthError::UserAlreadyExist));
        assert_eq!(
            apply(&mut s, AuthOp::Enable),
            Err(AuthError::RootRoleNotExist)
        );
        let grant = AuthOp::UserGrantRole {
            user: ROOT.into(),
            role: ROOT.into(),
        };
        apply(&mut s, grant).unwrap();
        let rev = s.revision;
        apply(&mut s, AuthOp::Enable).unwrap();
        assert!(s.enabled);
        assert_eq!(s.revision, rev + 1);
        assert_eq!(
            apply(&mut s, AuthOp::UserDelete(ROOT.into())),
            Err(AuthError::InvalidAuthMgmt)
        );
    }

    #[test]
    fn writes_are_refused_with_credentials_older_than_the_auth_revision() {
        let store = AuthStore::default();
        let mut s = AuthState::default();
        for op in [
            AuthOp::UserAdd {
                name: ROOT.into(),
                hash: String::new(),
                no_password: false,
            },
            AuthOp::UserGrantRole {
                user: ROOT.into(),
                role: ROOT.into(),
            },
            AuthOp::UserAdd {
                name: "u".into(),
                hash: String::new(),
                no_password: false,
            },
            AuthOp::RoleAdd("r".into()),
            AuthOp::RoleGrantPermission {
                role: "r".into(),
                perm: Permission {
                    perm_type: PermType::Read,
                    key: b"/app/".to_vec(),
                    range_end: b"/app0".to_vec(),
                },
            },
            AuthOp::UserGrantRole {
                user: "u".into(),
                role: "r".into(),
            },
            AuthOp::Enable,
        ] {
            apply(&mut s, op).unwrap();
        }
        let info = AuthInfo {
            user: "u".into(),
            revision: s.revision,
        };
        assert_eq!(store.permitted(&s, &info, false, b"/app/x", b""), Ok(()));
        assert_eq!(
            store.permitted(&s, &info, true, b"/app/x", b""),
            Err(AuthError::PermissionDenied)
        );
        assert_eq!(
            store.permitted(&s, &AuthInfo::default(), false, b"/app/x", b""),
            Err(AuthError::UserEmpty)
        );
        let revoke = AuthOp::RoleRevokePermission {
            role: "r".into(),
            key: b"/app/".to_vec(),
            range_end: b"/app0".to_vec(),
        };
        apply(&mut s, revoke.clone()).unwrap();
        assert_eq!(
            store.permitted(&s, &info, false, b"/app/x", b""),
            Err(AuthError::AuthOldRevision)
        );
        let fresh = AuthInfo {
            revision: s.revision,
            ..info
        };
        assert_eq!(
            store.permitted(&s, &fresh, false, b"/app/x", b""),
            Err(AuthError::PermissionDenied)
        );
        assert_eq!(apply(&mut s, revoke), Err(AuthError::PermissionNotGranted));
    }
}
