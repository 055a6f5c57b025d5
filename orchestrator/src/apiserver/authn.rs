//! Authentication: who a request comes from. Static bearer tokens (kube-apiserver's
//! `--token-auth-file`), bootstrap tokens (`--enable-bootstrap-token-auth`: `<id>.<secret>` checked
//! against the token Secrets in kube-system, as joining nodes present them), and the one anonymous
//! read Kubernetes clusters allow for joining: GET of kube-public's `cluster-info` ConfigMap.
//! Service account tokens (JWTs from `satoken`): a valid signature, issuer, audience and lifetime,
//! and the service account (and the Pod or Secret the token is bound to) still there with the
//! uid the token names; they authenticate as `system:serviceaccount:<ns>:<name>`.
//! The user found is put in the request's extensions for what runs after.
//!
//! Reads Secrets through the registry directly (never over HTTP to itself); imports nothing of the
//! controllers, the agent or the runtime.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State as AxState};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::Value;

use super::satoken::{self, Claims};
use super::status::ApiError;
use super::State;
use crate::api::{self, meta};
use crate::bootstrap::{self, Token, TokenSecret};
use crate::registry::{ReadRevision, StoreError};

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    pub fn new(name: impl Into<String>, groups: &[&str]) -> User {
        User {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn anonymous() -> User {
        User {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
        }
    }
}

/// How long a bootstrap token found valid is trusted without reading its Secret again: the
/// longest a deleted or expired token keeps working.
const BOOTSTRAP_CACHE_TTL: Duration = Duration::from_secs(5);

pub struct Authenticator {
    tokens: HashMap<String, User>,
    bootstrap: bool,
    cache: Mutex<HashMap<String, (Instant, User)>>,
}

impl Authenticator {
    /// `tokens`: bearer token -> user and the groups the token file gives it (every static user is
    /// in `system:authenticated` as well).
    pub fn new(tokens: HashMap<String, User>, bootstrap: bool) -> Authenticator {
        let tokens = tokens
            .into_iter()
            .map(|(t, mut user)| {
                if !user.groups.iter().any(|g| g == "system:authenticated") {
                    user.groups.push("system:authenticated".into());
                }
                (t, user)
            })
            .collect();
        Authenticator {
            tokens,
            bootstrap,
            cache: Mutex::new(HashMap::new()),
        }
    }

    async fn bootstrap_user(&self, st: &State, presented: &str) -> Option<User> {
        let token = Token::parse(presented).ok()?;
        {
            let cache = self.cache.lock().expect("not poisoned");
            if let Some((at, user)) = cache.get(presented) {
                if at.elapsed() < BOOTSTRAP_CACHE_TTL {
                    return Some(user.clone());
                }
            }
        }
        let secrets = crate::api::lookup("", "v1", "secrets").expect("secrets are served");
        let obj = st
            .registry
            .get(secrets, bootstrap::NAMESPACE, &token.secret_name())
            .await
            .ok()?;
        if obj["type"] != bootstrap::SECRET_TYPE || !obj["metadata"]["deletionTimestamp"].is_null()
        {
            return None;
        }
        let data: BTreeMap<String, Vec<u8>> = obj["data"]
            .as_object()?
            .iter()
            .filter_map(|(k, v)| {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(v.as_str()?)
                    .ok()?;
                Some((k.clone(), bytes))
            })
            .collect();
        let secret = TokenSecret::from_data(&token.secret_name(), &data)?;
        if !secret.authenticates(&token, jiff::Timestamp::now()) {
            return None;
        }
        let mut groups = secret.groups();
        groups.push("system:authenticated".into());
        let user = User {
            name: token.user(),
            groups,
        };
        let mut cache = self.cache.lock().expect("not poisoned");
        cache.retain(|_, (at, _)| at.elapsed() < BOOTSTRAP_CACHE_TTL);
        cache.insert(presented.to_string(), (Instant::now(), user.clone()));
        Some(user)
    }

    async fn user(&self, st: &State, token: Option<String>, cluster_info: bool) -> Option<User> {
        if let Some(t) = token {
            if let Some(u) = self.tokens.get(&t) {
                return Some(u.clone());
            }
            if satoken::Issuer::looks_like_jwt(&t) {
                return service_account_user(st, &t).await;
            }
            if self.bootstrap {
                return self.bootstrap_user(st, &t).await;
            }
            return None;
        }
        (self.bootstrap && cluster_info).then(User::anonymous)
    }
}

/// How long after its deletion began an object still vouches for the tokens bound to it
/// (Kubernetes' grace for pods that are shutting down).
const DELETION_GRACE_SECONDS: i64 = 60;

/// Whether `obj` is still the object `uid` names: present with that uid, and not deleted (or only
/// just started to be).
fn still_there(obj: Result<Value, StoreError>, uid: &str, now: i64) -> bool {
    let Ok(obj) = obj else {
        return false;
    };
    if meta::uid(&obj) != uid {
        return false;
    }
    match obj["metadata"]["deletionTimestamp"].as_str() {
        None => true,
        Some(at) => at
            .parse::<jiff::Timestamp>()
            .is_ok_and(|at| at.as_second() >= now - DELETION_GRACE_SECONDS),
    }
}

/// The object as this member has it; when it has none, or another one by that name, as the
/// leader has it (a member that is behind never refuses a token for an object just created).
async fn lookup(
    st: &State,
    plural: &str,
    ns: &str,
    name: &str,
    uid: &str,
) -> Result<Value, StoreError> {
    let r = api::lookup("", "v1", plural).expect("core resources are served");
    match st.registry.get_at(r, ns, name, ReadRevision::Any).await {
        Ok(obj) if meta::uid(&obj) == uid => Ok(obj),
        Ok(_) | Err(StoreError::NotFound) => st.registry.get(r, ns, name).await,
        Err(e) => Err(e),
    }
}

/// The service account a JWT authenticates, if it does.
async fn service_account_user(st: &State, token: &str) -> Option<User> {
    let issuer = st.service_accounts.as_ref()?;
    let claims: Claims = match issuer.verify(token) {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "service account token refused");
            return None;
        }
    };
    let k = &claims.kubernetes;
    let ns = k.namespace.as_str();
    let sa = &k.serviceaccount;
    if claims.sub != satoken::subject(ns, &sa.name) {
        return None;
    }
    let now = jiff::Timestamp::now().as_second();
    let valid = still_there(
        lookup(st, "serviceaccounts", ns, &sa.name, &sa.uid).await,
        &sa.uid,
        now,
    ) && match (&k.pod, &k.secret) {
        (Some(p), _) => still_there(lookup(st, "pods", ns, &p.name, &p.uid).await, &p.uid, now),
        (None, Some(s)) => still_there(
            lookup(st, "secrets", ns, &s.name, &s.uid).await,
            &s.uid,
            now,
        ),
        (None, None) => true,
    };
    if !valid {
        tracing::debug!(sub = %claims.sub, "service account token invalidated");
        return None;
    }
    Some(User {
        name: claims.sub.clone(),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".into(),
        ],
    })
}

/// The one request a node that is joining may make before it trusts anything: the public
/// cluster information, whose content it checks with its token's signature.
fn is_cluster_info_read(req: &Request) -> bool {
    req.method() == Method::GET
        && req.uri().path()
            == format!(
                "/api/v1/namespaces/{}/configmaps/{}",
                bootstrap::CLUSTER_INFO_NAMESPACE,
                bootstrap::CLUSTER_INFO
            )
}

pub async fn authenticate(
    AxState(st): AxState<Arc<State>>,
    mut req: Request,
    next: Next,
) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string());
    let cluster_info = is_cluster_info_read(&req);
    match st.authn.user(&st, token, cluster_info).await {
        Some(user) => {
            req.extensions_mut().insert(user);
            next.run(req).await
        }
        None => ApiError::unauthorized().into_response(),
    }
}
