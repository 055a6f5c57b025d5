//! Privilege escalation prevention, as Kubernetes' RBAC registry does it: a user may write a Role
//! or ClusterRole only with rules they already hold (in that namespace, or cluster-wide), unless
//! they have the `escalate` verb on it; and a binding only to a role whose rules they hold, unless
//! they have the `bind` verb on that role. Members of `system:masters` are never refused.
//!
//! Decides from the object about to be stored and the policy cache; never writes.

use serde_json::Value;

use super::rules::{self, Attributes};
use super::Authorizer;
use crate::api::{meta, Resource};
use crate::apiserver::authn::User;
use crate::apiserver::status::{ApiError, ApiResult};

const GROUP: &str = "rbac.authorization.k8s.io";

/// Whether `r` is one of the kinds this check guards.
pub fn guards(r: &Resource) -> bool {
    r.group == GROUP
}

fn allowed(
    authz: &Authorizer,
    user: &User,
    verb: &str,
    resource: &str,
    ns: &str,
    name: &str,
) -> bool {
    let a = Attributes {
        verb: verb.into(),
        resource_request: true,
        namespace: ns.into(),
        api_group: GROUP.into(),
        api_version: "v1".into(),
        resource: resource.into(),
        name: name.into(),
        ..Default::default()
    };
    authz.decide(user, &a).allowed
}

/// Refuses storing `obj` (of `r`, in `namespace`) when it would grant `user` more than they hold.
pub fn check(
    authz: &Authorizer,
    user: &User,
    r: &Resource,
    namespace: &str,
    obj: &Value,
) -> ApiResult<()> {
    if !guards(r) || authz.unrestricted(user) {
        return Ok(());
    }
    let name = meta::name(obj);
    let wanted = match r.kind {
        "Role" | "ClusterRole" => {
            if allowed(authz, user, "escalate", r.plural, namespace, name) {
                return Ok(());
            }
            rules::rules_of(obj)
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            let rr = &obj["roleRef"];
            let kind = rr["kind"].as_str().unwrap_or("");
            let role = rr["name"].as_str().unwrap_or("");
            let plural = if kind == "Role" {
                "roles"
            } else {
                "clusterroles"
            };
            if allowed(authz, user, "bind", plural, namespace, role) {
                return Ok(());
            }
            authz.referenced_rules(namespace, kind, role)
        }
        _ => return Ok(()),
    };
    let held = authz.rules_for(user, namespace);
    let missing = rules::not_held(&held, &wanted);
    if missing.is_empty() {
        return Ok(());
    }
    let groups: Vec<String> = user.groups.iter().map(|g| format!("{g:?}")).collect();
    let why = format!(
        "user {:?} (groups=[{}]) is attempting to grant RBAC permissions not currently held:\n{}",
        user.name,
        groups.join(" "),
        missing.join("\n")
    );
    Err(ApiError::forbidden_raw(GROUP, r.plural, name, &why))
}
