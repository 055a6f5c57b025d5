//! Deterministic apply: a command runs against the key index with its writes held in [`Pending`]
//! (so later commands of a batch read them), then everything the entry changed is written as one
//! crash-atomic change set ([`RowWrites`]). It reads only the entry and stored state, never a clock.
//!
//! After a crash (and the replay on open) the stored state is exactly the state after some applied
//! prefix of the log; consensus re-applies the rest. Must never import `raft/` or `grpc/`.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{RwLockReadGuard, RwLockWriteGuard};

use serde::Serialize;

use super::backend::RowWrites;
use super::error::StoreError;
use super::keys::{
    alarm_key, lease_key, member_key, prefixed, StoredKv, META_APPLIED, META_AUTH, META_COMPACT,
    META_MEMBERSHIP, META_REVISION, ROLE_PREFIX, USER_PREFIX,
};
use super::revisions;
use super::store::{SledValues, StoreState};
use crate::auth::{AuthChange, AuthError, AuthInfo, AuthState, AuthStore};
use crate::codec::encode;
use crate::command::{Applied, ApplyError, Command, CommandResponse, ALARM_NOSPACE};
use crate::lease::LeaseTable;
use crate::mvcc::{
    BackendOp, DeleteRangeRequest, Event, KeyValue, KvIndex, MvccError, RequestOp, Revision,
    TxnRequest, ValueReader,
};

/// What one log entry asks of the store.
pub enum Payload<'a, M> {
    /// Blank entries change nothing but the applied position.
    Blank,
    /// A membership change, stored as consensus encodes it.
    Membership(&'a M),
    Command(Command),
}

impl StoreState {
    /// Applies one log entry: executes its command against the index, then writes its effects,
    /// `applied` (consensus' position of the entry) and the store revisions as one crash-atomic
    /// change set, then publishes its events to watchers.
    pub async fn apply<A: Serialize, M: Serialize>(
        &self,
        applied: &A,
        payload: Payload<'_, M>,
    ) -> Result<CommandResponse, StoreError> {
        let state = self;
        // A compaction deletes stored revisions: it waits for copies in progress.
        let _rewriting = match &payload {
            Payload::Command(cmd) if cmd.compacts() => {
                let mut rewriting = state.rewrite_guard.write().await;
                *rewriting += 1;
                state.drop_kept_revisions();
                Some(rewriting)
            }
            _ => None,
        };
        let mut batch = RowWrites::default();
        let mut events = Vec::new();
        let mut index = state.index.write().unwrap_or_else(|p| p.into_inner());
        let before = (index.current_revision(), index.compact_revision());
        // Taken under the index lock, which a defragmentation holds while it swaps the database:
        // a tree taken before could be the replaced one.
        let sm = &state.backend.sm();
        let response = match payload {
            Payload::Blank => CommandResponse {
                revision: index.current_revision(),
                result: Ok(Applied::Nothing),
            },
            Payload::Membership(m) => {
                batch.insert(META_MEMBERSHIP, encode(m)?);
                CommandResponse {
                    revision: index.current_revision(),
                    result: Ok(Applied::Nothing),
                }
            }
            Payload::Command(cmd) => {
                let mut leases = state.leases.lock().unwrap_or_else(|p| p.into_inner());
                let mut pending = Pending {
                    auth: AuthLock::for_command(&state.auth, &cmd),
                    auth_store: &state.auth,
                    auth_changes: Vec::new(),
                    stored: SledValues(sm),
                    overlay: HashMap::new(),
                    ops: Vec::new(),
                    events: Vec::new(),
                    leases: &mut leases,
                    lease_ops: Vec::new(),
                    published: Vec::new(),
                    alarms: state
                        .alarms
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone(),
                    alarm_ops: Vec::new(),
                };
                let response = execute(&mut index, &mut pending, cmd);
                events = pending.events;
                if let (false, Some(auth)) = (pending.auth_changes.is_empty(), pending.auth.get()) {
                    for change in &pending.auth_changes {
                        match change {
                            AuthChange::User(name) => match auth.users.get(name) {
                                Some(u) => batch.insert(prefixed(USER_PREFIX, name), encode(u)?),
                                None => batch.remove(prefixed(USER_PREFIX, name)),
                            },
                            AuthChange::Role(name) => match auth.roles.get(name) {
                                Some(r) => batch.insert(prefixed(ROLE_PREFIX, name), encode(r)?),
                                None => batch.remove(prefixed(ROLE_PREFIX, name)),
                            },
                            AuthChange::Meta => {
                                batch.insert(META_AUTH, encode(&(auth.enabled, auth.revision))?)
                            }
                        }
                    }
                    state.auth.publish(auth);
                }
                let mut attrs = state.member_attrs.lock().unwrap_or_else(|p| p.into_inner());
                for (id, name, client_urls) in pending.published {
                    let row = encode(&(&name, &client_urls))?;
                    batch.insert(member_key(id), row);
                    attrs.insert(id, (name, client_urls));
                }
                drop(attrs);
                for (activate, member, alarm) in pending.alarm_ops {
                    let key = alarm_key(member, alarm);
                    if activate {
                        batch.insert(key, []);
                    } else {
                        batch.remove(key);
                    }
                }
                if !pending.alarms.is_empty()
                    || !state
                        .alarms
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .is_empty()
                {
                    *state.alarms.lock().unwrap_or_else(|p| p.into_inner()) = pending.alarms;
                }
                let (mut added, mut freed) = (0u64, 0u64);
                for (id, ttl) in pending.lease_ops {
                    match ttl {
                        Some(ttl) => batch.insert(lease_key(id), encode(&ttl)?),
                        None => batch.remove(lease_key(id)),
                    }
                }
                let mut deleted = Vec::new();
                for op in pending.ops {
                    match op {
                        BackendOp::Put { rev, kv, tombstone } => {
                            let stored = StoredKv { kv, tombstone };
                            let value = encode(&stored)?;
                            added += revisions::stored_size(value.len());
                            batch.insert_new_revision(rev, value);
                        }
                        BackendOp::Delete { rev } => deleted.push(rev),
                    }
                }
                if !deleted.is_empty() {
                    // A compaction: revisions this entry wrote itself are simply not stored.
                    deleted.sort_unstable();
                    deleted.retain(|rev| match batch.remove_new_revision(*rev) {
                        Some(len) => {
                            freed += revisions::stored_size(len);
                            false
                        }
                        None => true,
                    });
                    let (changes, bytes) = revisions::removals(sm, &deleted)?;
                    freed += bytes;
                    for (key, value) in changes {
                        match value {
                            Some(value) => batch.insert(key, value),
                            None => batch.remove(key),
                        }
                    }
                }
                let in_use = state.bytes_in_use.load(Ordering::Relaxed);
                state
                    .bytes_in_use
                    .store((in_use + added).saturating_sub(freed), Ordering::Relaxed);
                // Only a revision that moved is written: every row is a tree insert.
                if index.current_revision() != before.0 {
                    batch.insert(META_REVISION, encode(&index.current_revision())?);
                }
                if index.compact_revision() != before.1 {
                    batch.insert(META_COMPACT, encode(&index.compact_revision())?);
                }
                response
            }
        };
        batch.insert(META_APPLIED, encode(applied)?);
        if !batch.new_revisions().is_empty() {
            state.keep_revisions(batch.new_revisions());
        }
        batch.commit(sm)?;
        let revision = index.current_revision();
        drop(index);
        // Only now is the entry readable from sled, which watchers catching up depend on, and so
        // are the previous values watchers may need loaded.
        state
            .hub
            .publish(&events, revision, &|e| state.previous_value(e));
        Ok(response)
    }

    /// The value `e`'s key had just before `e`'s revision, if any.
    fn previous_value(&self, e: &Event) -> Result<Option<KeyValue>, MvccError> {
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        match index.revision_at(&e.kv.key, e.kv.mod_revision - 1) {
            // Taken under the index lock, as in `apply`.
            Some(rev) => SledValues(&self.backend.sm()).read(rev),
            None => Ok(None),
        }
    }
}

/// Runs one command against the index; its writes go to `pending` so that later commands of the
/// same entry read them before they reach sled.
fn execute(index: &mut KvIndex, pending: &mut Pending<'_>, cmd: Command) -> CommandResponse {
    execute_as(index, pending, cmd, false)
}

/// [`execute`]; `checked` when `cmd` came with credentials that were checked.
fn execute_as(
    index: &mut KvIndex,
    pending: &mut Pending<'_>,
    cmd: Command,
    checked: bool,
) -> CommandResponse {
    // Puts and transactions come only from clients. Without credentials once auth is enabled,
    // one was sent before its member saw auth enabled: refused as etcd refuses a request without
    // a user. (Deletes and lease revokes also come from the members themselves.)
    if !checked && matches!(cmd, Command::Put(_) | Command::Txn(_)) && pending.auth_enabled() {
        return CommandResponse {
            revision: index.current_revision(),
            result: Err(ApplyError::Auth(AuthError::UserEmpty)),
        };
    }
    let no_space = pending.alarms.iter().any(|(_, a)| *a == ALARM_NOSPACE);
    if no_space && !matches!(cmd, Command::Batch(_)) && cmd.grows_store() {
        return CommandResponse {
            revision: index.current_revision(),
            result: Err(ApplyError::NoSpace),
        };
    }
    let result = match cmd {
        Command::Alarm {
            activate,
            member,
            alarm,
        } => {
            let changed = if activate {
                pending.alarms.insert((member, alarm))
            } else {
                pending.alarms.remove(&(member, alarm))
            };
            if changed {
                pending.alarm_ops.push((activate, member, alarm));
            }
            Ok(Applied::Nothing)
        }
        Command::Put(req) => index.put(req, pending).map_err(ApplyError::from).map(|w| {
            pending.record(w.ops, w.events);
            Applied::Put(w.response)
        }),
        Command::DeleteRange(req) => index
            .delete_range(req, pending)
            .map_err(ApplyError::from)
            .map(|w| {
                pending.record(w.ops, w.events);
                Applied::DeleteRange(w.response)
            }),
        Command::Txn(req) => index.txn(req, pending).map_err(ApplyError::from).map(|w| {
            pending.record(w.ops, w.events);
            Applied::Txn(w.response)
        }),
        Command::Compact(rev) => index.compact(rev).map_err(ApplyError::from).map(|ops| {
            pending.record(ops, Vec::new());
            Applied::Compact
        }),
        Command::Auth(op) => {
            // Without credentials, an admin change can only come from a member that had not
            // yet seen auth enabled: refused like any anonymous one once it is.
            let anonymous = match (op.needs_admin(), pending.auth.get()) {
                (true, Some(state)) => pending
                    .auth_store
                    .admin_permitted(state, &AuthInfo::default()),
                _ => Ok(()),
            };
            match anonymous {
                Ok(()) => apply_auth(pending, op),
                Err(e) => Err(ApplyError::Auth(e)),
            }
        }
        Command::Authed {
            user,
            revision,
            cmd,
        } => match check_access(pending, &AuthInfo { user, revision }, &cmd) {
            Ok(()) => match *cmd {
                Command::Auth(op) => apply_auth(pending, op),
                cmd => return execute_as(index, pending, cmd, true),
            },
            Err(e) => Err(ApplyError::Auth(e)),
        },
        Command::Batch(cmds) => Ok(Applied::Batch(
            cmds.into_iter()
                .map(|c| execute(index, pending, c))
                .collect(),
        )),
        Command::LeaseGrant { id, ttl } => {
            if pending.leases.contains(id) {
                Err(ApplyError::LeaseExists)
            } else {
                pending.leases.insert(id, ttl);
                pending.lease_ops.push((id, Some(ttl)));
                Ok(Applied::LeaseGrant { id, ttl })
            }
        }
        Command::Publish {
            id,
            name,
            client_urls,
        } => {
            pending.published.push((id, name, client_urls));
            Ok(Applied::Nothing)
        }
        Command::LeaseRevoke(id) => match pending.leases.get(id) {
            None => Err(ApplyError::Mvcc(MvccError::LeaseNotFound)),
            Some(lease) => {
                let deletes = lease
                    .keys
                    .iter()
                    .map(|k| {
                        RequestOp::DeleteRange(DeleteRangeRequest {
                            key: k.clone(),
                            ..Default::default()
                        })
                    })
                    .collect();
                let txn = TxnRequest {
                    success: deletes,
                    ..Default::default()
                };
                index.txn(txn, pending).map_err(ApplyError::from).map(|w| {
                    pending.record(w.ops, w.events);
                    pending.leases.remove(id);
                    pending.lease_ops.push((id, None));
                    Applied::LeaseRevoke
                })
            }
        },
    };
    CommandResponse {
        revision: index.current_revision(),
        result,
    }
}

fn apply_auth(pending: &mut Pending<'_>, op: crate::auth::AuthOp) -> Result<Applied, ApplyError> {
    let AuthLock::Write(state) = &mut pending.auth else {
        // Not reached: the lock is chosen from the command, and every auth change takes it for
        // writing.
        return Err(ApplyError::Auth(AuthError::InvalidAuthMgmt));
    };
    state.apply(op, &pending.auth_store.tokens, &mut pending.auth_changes)?;
    Ok(Applied::Auth {
        revision: state.revision,
    })
}

/// The auth state as an entry needs it: written by auth changes, read by the credential checks
/// of clients' commands, and left unlocked by entries with neither (the members' own, and every
/// command while auth is disabled), so requests checking permissions never wait on those.
enum AuthLock<'a> {
    Unused,
    Read(RwLockReadGuard<'a, AuthState>),
    Write(RwLockWriteGuard<'a, AuthState>),
}

impl<'a> AuthLock<'a> {
    fn for_command(store: &'a AuthStore, cmd: &Command) -> AuthLock<'a> {
        fn needs(cmd: &Command) -> (bool, bool) {
            match cmd {
                Command::Auth(_) => (true, true),
                Command::Authed { cmd, .. } => {
                    let (_, write) = needs(cmd);
                    (true, write)
                }
                Command::Batch(cmds) => cmds
                    .iter()
                    .map(needs)
                    .fold((false, false), |a, b| (a.0 || b.0, a.1 || b.1)),
                _ => (false, false),
            }
        }
        match needs(cmd) {
            (_, true) => AuthLock::Write(store.write()),
            (true, false) => AuthLock::Read(store.read()),
            _ => AuthLock::Unused,
        }
    }

    fn get(&self) -> Option<&AuthState> {
        match self {
            AuthLock::Unused => None,
            AuthLock::Read(g) => Some(g),
            AuthLock::Write(g) => Some(g),
        }
    }
}

/// etcd's apply-time auth checks of a client's command: the access each key or range it touches
/// needs, including the keys attached to a lease it revokes or attaches a key to (whoever cannot
/// write those keys cannot end the lease that deletes them); only root may change auth.
fn check_access(pending: &Pending<'_>, info: &AuthInfo, cmd: &Command) -> Result<(), AuthError> {
    let Some(state) = pending.auth.get() else {
        return Ok(());
    };
    if !state.enabled {
        return Ok(());
    }
    let store = pending.auth_store;
    let lease_keys = |id: i64| -> Result<(), AuthError> {
        if let Some(lease) = pending.leases.get(id) {
            for key in &lease.keys {
                store.permitted(state, info, true, key, &[])?;
            }
        }
        Ok(())
    };
    match cmd {
        Command::Put(p) => {
            store.permitted(state, info, true, &p.key, &[])?;
            if p.lease != 0 {
                lease_keys(p.lease)?;
            }
            if p.prev_kv {
                store.permitted(state, info, false, &p.key, &[])?;
            }
        }
        Command::DeleteRange(d) => {
            store.permitted(state, info, true, &d.key, &d.range_end)?;
            if d.prev_kv {
                store.permitted(state, info, false, &d.key, &d.range_end)?;
            }
        }
        Command::Txn(t) => store.txn_permitted(state, info, t)?,
        Command::LeaseRevoke(id) => lease_keys(*id)?,
        Command::Auth(op) if op.needs_admin() => store.admin_permitted(state, info)?,
        Command::Batch(cmds) => {
            for c in cmds {
                check_access(pending, info, c)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Writes of the entry being applied, not yet in sled, layered over the stored values.
struct Pending<'a> {
    /// The auth state as this entry changes it, and what it changed.
    auth: AuthLock<'a>,
    auth_store: &'a AuthStore,
    auth_changes: Vec<AuthChange>,
    stored: SledValues<'a>,
    /// Where in `ops` each revision this entry wrote is; `None` marks a revision deleted by
    /// compaction.
    overlay: HashMap<Revision, Option<usize>>,
    ops: Vec<BackendOp>,
    events: Vec<Event>,
    leases: &'a mut LeaseTable,
    /// Lease rows to write (`Some(ttl)`) or delete (`None`).
    lease_ops: Vec<(i64, Option<i64>)>,
    /// Member attributes announced by this entry.
    published: Vec<(u64, String, Vec<String>)>,
    /// Alarms as this entry leaves them, and the rows to write (`true`) or delete.
    alarms: BTreeSet<(u64, i32)>,
    alarm_ops: Vec<(bool, u64, i32)>,
}

impl Pending<'_> {
    /// Whether auth is enabled as of this point of the entry.
    fn auth_enabled(&self) -> bool {
        match self.auth.get() {
            Some(state) => state.enabled,
            // Nothing in this entry changes auth, so the state before it holds.
            None => self.auth_store.is_enabled(),
        }
    }

    fn record(&mut self, ops: Vec<BackendOp>, events: Vec<Event>) {
        self.leases.track(&events);
        self.events.extend(events);
        for (at, op) in (self.ops.len()..).zip(&ops) {
            match op {
                BackendOp::Put { rev, .. } => self.overlay.insert(*rev, Some(at)),
                BackendOp::Delete { rev } => self.overlay.insert(*rev, None),
            };
        }
        self.ops.extend(ops);
    }
}

impl ValueReader for Pending<'_> {
    fn read(&self, rev: Revision) -> Result<Option<KeyValue>, MvccError> {
        match self.overlay.get(&rev) {
            Some(Some(at)) => match &self.ops[*at] {
                BackendOp::Put { kv, .. } => Ok(Some(kv.clone())),
                BackendOp::Delete { .. } => Ok(None),
            },
            Some(None) => Ok(None),
            None => self.stored.read(rev),
        }
    }

    fn lease_exists(&self, id: i64) -> bool {
        self.leases.contains(id)
    }
}
