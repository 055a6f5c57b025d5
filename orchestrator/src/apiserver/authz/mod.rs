//! Authorization: whether the authenticated user may do what a request asks, decided on every
//! request after authentication and before routing, as kube-apiserver's `--authorization-mode`.
//!
//! `RBAC` (the default): members of `system:masters` are always allowed; everyone else needs a rule
//! of a role bound to them (`rules.rs`, over the watch-fed `cache.rs`). `AlwaysAllow` lets every
//! authenticated request through. Impersonation (`Impersonate-User`, `Impersonate-Group`) is checked
//! here too: the caller needs the `impersonate` verb on each user, group or service account named,
//! and what runs after sees the impersonated user. The access reviews (`reviews.rs`) ask the same
//! [`Authorizer`], so their answers are what is enforced.
//!
//! Owns the 403 answers; never imports the controllers, the agent or the runtime.

pub mod bootstrap;
pub mod cache;
pub mod escalation;
pub mod request_info;
pub mod rules;

use std::sync::Arc;

use axum::extract::{Request, State as AxState};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::authn::User;
use super::status::ApiError;
use super::State;
use rules::{Attributes, Decision, PolicyRule};

/// `--authorization-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Rbac,
    AlwaysAllow,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "RBAC" => Ok(Mode::Rbac),
            "AlwaysAllow" => Ok(Mode::AlwaysAllow),
            other => Err(format!(
                "authorization mode {other:?} is not supported: use RBAC or AlwaysAllow"
            )),
        }
    }
}

/// The authorizer every request and every access review asks.
pub struct Authorizer {
    mode: Mode,
    policy: Arc<cache::PolicyCache>,
}

impl Authorizer {
    pub fn new(mode: Mode, policy: Arc<cache::PolicyCache>) -> Authorizer {
        Authorizer { mode, policy }
    }

    pub fn decide(&self, user: &User, a: &Attributes) -> Decision {
        match self.mode {
            Mode::AlwaysAllow => Decision {
                allowed: true,
                reason: String::new(),
            },
            Mode::Rbac => self.policy.read(|p| rules::decide(p, user, a)),
        }
    }

    /// The rules of the role a binding in `namespace` refers to.
    pub fn referenced_rules(&self, namespace: &str, kind: &str, name: &str) -> Vec<PolicyRule> {
        self.policy
            .read(|p| p.referenced_rules(namespace, kind, name))
    }

    /// Whether nothing is ever refused to `user` (AlwaysAllow, or `system:masters`).
    pub fn unrestricted(&self, user: &User) -> bool {
        self.mode == Mode::AlwaysAllow || user.groups.iter().any(|g| g == rules::MASTERS)
    }

    /// The rules `user` holds in `namespace`: what SelfSubjectRulesReview lists.
    pub fn rules_for(&self, user: &User, namespace: &str) -> Vec<PolicyRule> {
        let everything = || {
            vec![
                PolicyRule {
                    verbs: vec!["*".into()],
                    api_groups: vec!["*".into()],
                    resources: vec!["*".into()],
                    ..Default::default()
                },
                PolicyRule {
                    verbs: vec!["*".into()],
                    non_resource_urls: vec!["*".into()],
                    ..Default::default()
                },
            ]
        };
        match self.mode {
            Mode::AlwaysAllow => everything(),
            Mode::Rbac if user.groups.iter().any(|g| g == rules::MASTERS) => everything(),
            Mode::Rbac => self.policy.read(|p| p.rules_for(user, namespace)),
        }
    }
}

/// Set on the response when the request impersonated someone (the audit log's
/// `impersonatedUser`).
#[derive(Debug, Clone)]
pub struct Impersonated(pub User);

/// Kubernetes' 403 for a refused request.
pub fn forbidden(a: &Attributes, user: &str, reason: &str) -> ApiError {
    let mut msg = a.forbidden_reason(user);
    if !reason.is_empty() {
        msg = format!("{msg}: {reason}");
    }
    if a.resource_request {
        ApiError::forbidden_raw(&a.api_group, &a.resource, &a.name, &msg)
    } else {
        ApiError::forbidden_raw("", "", "", &msg)
    }
}

const SA_PREFIX: &str = "system:serviceaccount:";

/// Applies `Impersonate-User`/`Impersonate-Group`: checks that `user` may impersonate each, and
/// returns the user to act as (`None` without impersonation headers).
fn impersonate(
    authz: &Authorizer,
    user: &User,
    headers: &HeaderMap,
) -> Result<Option<User>, ApiError> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect()
    };
    let users = values("impersonate-user");
    let groups = values("impersonate-group");
    if users.is_empty() {
        if !groups.is_empty() || !values("impersonate-uid").is_empty() {
            return Err(ApiError::bad_request(format!(
                "requested {groups:?} without impersonating a user"
            )));
        }
        return Ok(None);
    }
    let name = users[0].clone();
    let check = |a: Attributes| -> Result<(), ApiError> {
        let d = authz.decide(user, &a);
        if d.allowed {
            Ok(())
        } else {
            Err(forbidden(&a, &user.name, &d.reason))
        }
    };
    let attrs = |resource: &str, namespace: &str, name: &str| Attributes {
        verb: "impersonate".into(),
        resource_request: true,
        namespace: namespace.into(),
        api_group: String::new(),
        api_version: "v1".into(),
        resource: resource.into(),
        name: name.into(),
        ..Default::default()
    };
    let mut groups_out = groups.clone();
    match name.strip_prefix(SA_PREFIX).and_then(|r| r.split_once(':')) {
        Some((ns, sa)) => {
            check(attrs("serviceaccounts", ns, sa))?;
            if groups.is_empty() {
                groups_out = vec![
                    "system:serviceaccounts".into(),
                    format!("system:serviceaccounts:{ns}"),
                ];
            }
        }
        None => check(attrs("users", "", &name))?,
    }
    for g in &groups {
        check(attrs("groups", "", g))?;
    }
    if name != "system:anonymous"
        && !groups_out
            .iter()
            .any(|g| g == "system:authenticated" || g == "system:unauthenticated")
    {
        groups_out.push("system:authenticated".into());
    }
    Ok(Some(User {
        name,
        groups: groups_out,
    }))
}

fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn upgrades_to_create(a: &Attributes) -> bool {
    a.resource_request
        && a.verb == "get"
        && a.api_group.is_empty()
        && a.resource == "pods"
        && matches!(a.subresource.as_str(), "exec" | "attach" | "portforward")
}

/// The middleware: impersonation, then the decision on the request's attributes.
pub async fn authorize(AxState(st): AxState<Arc<State>>, mut req: Request, next: Next) -> Response {
    let Some(user) = req.extensions().get::<User>().cloned() else {
        return ApiError::unauthorized().into_response();
    };
    let acting = match impersonate(&st.authz, &user, req.headers()) {
        Ok(a) => a,
        Err(e) => {
            let refused = e.code == 403;
            let mut resp = e.into_response();
            if refused {
                resp.extensions_mut().insert(Decision {
                    allowed: false,
                    reason: String::new(),
                });
            }
            return resp;
        }
    };
    let effective = acting.clone().unwrap_or_else(|| user.clone());
    let a = request_info::attributes(req.method().as_str(), req.uri().path(), req.uri().query());
    let mut d = st.authz.decide(&effective, &a);
    let mut a = a;
    // A WebSocket exec, attach or port-forward arrives as a GET but starts a process or a
    // connection, so it needs `create` too (Kubernetes' AuthorizePodWebsocketUpgradeCreatePermission).
    if d.allowed && is_websocket_upgrade(req.headers()) && upgrades_to_create(&a) {
        let create = Attributes {
            verb: "create".into(),
            ..a.clone()
        };
        d = st.authz.decide(&effective, &create);
        a = create;
    }
    let allowed = d.allowed;
    let mut resp = if allowed {
        req.extensions_mut().insert(effective);
        next.run(req).await
    } else {
        tracing::debug!(user = %effective.name, verb = %a.verb, resource = %a.resource,
            namespace = %a.namespace, path = %a.path, "forbidden");
        forbidden(&a, &effective.name, &d.reason).into_response()
    };
    resp.extensions_mut().insert(d);
    if let Some(i) = acting {
        resp.extensions_mut().insert(Impersonated(i));
    }
    resp
}
