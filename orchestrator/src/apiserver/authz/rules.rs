//! RBAC rule evaluation, as Kubernetes' RBAC authorizer does it: which bindings apply to a user,
//! which rules the bound roles hold, and whether one rule covers a request's attributes.
//!
//! Pure data in, a decision out: no HTTP, no store, no clock. The policy is the four RBAC kinds as
//! plain maps; the cache in `cache.rs` keeps one up to date from the store's watches.
//!
//! Matching, by example: a rule `{verbs: [get], apiGroups: [""], resources: ["pods/log"]}` allows
//! `get` of `pods/log` but not of `pods`; `resources: ["*/status"]` allows every resource's status;
//! `resources: ["*"]` allows every resource and subresource; `resourceNames: ["a"]` allows only
//! requests naming `a` (so never `list` or `create`, which name nothing); `nonResourceURLs:
//! ["/healthz/*"]` allows every path under `/healthz/`.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value};

use crate::apiserver::authn::User;

/// The group whose members are never refused (kube-apiserver's privileged group).
pub const MASTERS: &str = "system:masters";

/// What a request asks to do, as Kubernetes' authorizer attributes describe it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    pub verb: String,
    /// False for non-resource paths (`/healthz`, `/api`, `/version`).
    pub resource_request: bool,
    pub path: String,
    pub namespace: String,
    pub api_group: String,
    pub api_version: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
}

impl Attributes {
    /// `pods` or `pods/log`.
    pub fn combined_resource(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }

    /// Kubernetes' 403 text for a refused request (`responsewriters.ForbiddenStatusError`), without
    /// the qualified resource prefix that the Status adds.
    pub fn forbidden_reason(&self, user: &str) -> String {
        if !self.resource_request {
            return format!("User {user:?} cannot {} path {:?}", self.verb, self.path);
        }
        let scope = if self.namespace.is_empty() {
            "at the cluster scope".to_string()
        } else {
            format!("in the namespace {:?}", self.namespace)
        };
        format!(
            "User {user:?} cannot {} resource {:?} in API group {:?} {scope}",
            self.verb,
            self.combined_resource(),
            self.api_group
        )
    }
}

/// One rule of a Role or ClusterRole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyRule {
    pub verbs: Vec<String>,
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub resource_names: Vec<String>,
    pub non_resource_urls: Vec<String>,
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

fn has(list: &[String], want: &str) -> bool {
    list.iter().any(|x| x == "*" || x == want)
}

impl PolicyRule {
    pub fn from_json(v: &Value) -> PolicyRule {
        PolicyRule {
            verbs: strings(v, "verbs"),
            api_groups: strings(v, "apiGroups"),
            resources: strings(v, "resources"),
            resource_names: strings(v, "resourceNames"),
            non_resource_urls: strings(v, "nonResourceURLs"),
        }
    }

    pub fn to_json(&self) -> Value {
        let mut o = json!({"verbs": self.verbs});
        for (k, v) in [
            ("apiGroups", &self.api_groups),
            ("resources", &self.resources),
            ("resourceNames", &self.resource_names),
            ("nonResourceURLs", &self.non_resource_urls),
        ] {
            if !v.is_empty() {
                o[k] = json!(v);
            }
        }
        o
    }

    fn resource_matches(&self, a: &Attributes) -> bool {
        let combined = a.combined_resource();
        self.resources.iter().any(|r| {
            r == "*"
                || *r == combined
                || (!a.subresource.is_empty()
                    && r.strip_prefix("*/") == Some(a.subresource.as_str()))
        })
    }

    fn name_matches(&self, a: &Attributes) -> bool {
        self.resource_names.is_empty() || self.resource_names.contains(&a.name)
    }

    fn url_matches(&self, path: &str) -> bool {
        self.non_resource_urls.iter().any(|u| {
            u == "*"
                || u == path
                || u.strip_suffix('*')
                    .is_some_and(|prefix| path.starts_with(prefix))
        })
    }

    /// Whether this rule allows the request.
    pub fn allows(&self, a: &Attributes) -> bool {
        if !has(&self.verbs, &a.verb) {
            return false;
        }
        if a.resource_request {
            has(&self.api_groups, &a.api_group) && self.resource_matches(a) && self.name_matches(a)
        } else {
            self.url_matches(&a.path)
        }
    }
}

/// Who a binding grants its role to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub kind: String,
    pub name: String,
    pub namespace: String,
}

impl Subject {
    /// Whether the subject names `user`; `binding_ns` is the RoleBinding's namespace ("" for a
    /// ClusterRoleBinding), which a ServiceAccount subject without a namespace defaults to.
    pub fn applies_to(&self, user: &User, binding_ns: &str) -> bool {
        match self.kind.as_str() {
            "User" => user.name == self.name,
            "Group" => user.groups.contains(&self.name),
            "ServiceAccount" => {
                let ns = if self.namespace.is_empty() {
                    binding_ns
                } else {
                    &self.namespace
                };
                !ns.is_empty() && user.name == format!("system:serviceaccount:{ns}:{}", self.name)
            }
            _ => false,
        }
    }

    fn describe(&self) -> String {
        match self.kind.as_str() {
            "ServiceAccount" => format!("ServiceAccount \"{}/{}\"", self.namespace, self.name),
            k => format!("{k} {:?}", self.name),
        }
    }
}

/// A RoleBinding or ClusterRoleBinding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub name: String,
    /// "" for a ClusterRoleBinding.
    pub namespace: String,
    pub role_kind: String,
    pub role_name: String,
    pub subjects: Vec<Subject>,
}

impl Binding {
    pub fn from_json(v: &Value) -> Binding {
        let md = &v["metadata"];
        let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        Binding {
            name: s(md, "name"),
            namespace: s(md, "namespace"),
            role_kind: s(&v["roleRef"], "kind"),
            role_name: s(&v["roleRef"], "name"),
            subjects: v
                .get("subjects")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|sub| Subject {
                    kind: s(sub, "kind"),
                    name: s(sub, "name"),
                    namespace: s(sub, "namespace"),
                })
                .collect(),
        }
    }
}

/// Which of the four RBAC kinds an object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Role,
    ClusterRole,
    RoleBinding,
    ClusterRoleBinding,
}

impl Kind {
    pub fn of(kind: &str) -> Option<Kind> {
        match kind {
            "Role" => Some(Kind::Role),
            "ClusterRole" => Some(Kind::ClusterRole),
            "RoleBinding" => Some(Kind::RoleBinding),
            "ClusterRoleBinding" => Some(Kind::ClusterRoleBinding),
            _ => None,
        }
    }
}

/// The decision on one request, with Kubernetes' reason text when allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: String,
}

/// Every Role, ClusterRole and binding, by name.
#[derive(Debug, Default, Clone)]
pub struct Policy {
    roles: HashMap<(String, String), Vec<PolicyRule>>,
    cluster_roles: HashMap<String, Vec<PolicyRule>>,
    role_bindings: HashMap<String, BTreeMap<String, Binding>>,
    cluster_role_bindings: BTreeMap<String, Binding>,
}

/// The rules of a Role or ClusterRole object.
pub fn rules_of(obj: &Value) -> Vec<PolicyRule> {
    obj.get("rules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(PolicyRule::from_json)
        .collect()
}

impl Policy {
    /// Adds or replaces an object of `kind`.
    pub fn put(&mut self, kind: Kind, obj: &Value) {
        let ns = crate::api::meta::namespace(obj).to_string();
        let name = crate::api::meta::name(obj).to_string();
        match kind {
            Kind::Role => {
                self.roles.insert((ns, name), rules_of(obj));
            }
            Kind::ClusterRole => {
                self.cluster_roles.insert(name, rules_of(obj));
            }
            Kind::RoleBinding => {
                self.role_bindings
                    .entry(ns)
                    .or_default()
                    .insert(name, Binding::from_json(obj));
            }
            Kind::ClusterRoleBinding => {
                self.cluster_role_bindings
                    .insert(name, Binding::from_json(obj));
            }
        }
    }

    pub fn remove(&mut self, kind: Kind, ns: &str, name: &str) {
        match kind {
            Kind::Role => {
                self.roles.remove(&(ns.to_string(), name.to_string()));
            }
            Kind::ClusterRole => {
                self.cluster_roles.remove(name);
            }
            Kind::RoleBinding => {
                if let Some(m) = self.role_bindings.get_mut(ns) {
                    m.remove(name);
                }
            }
            Kind::ClusterRoleBinding => {
                self.cluster_role_bindings.remove(name);
            }
        }
    }

    /// Forgets every object of `kind` (before a relist).
    pub fn clear(&mut self, kind: Kind) {
        match kind {
            Kind::Role => self.roles.clear(),
            Kind::ClusterRole => self.cluster_roles.clear(),
            Kind::RoleBinding => self.role_bindings.clear(),
            Kind::ClusterRoleBinding => self.cluster_role_bindings.clear(),
        }
    }

    fn role_rules(&self, b: &Binding) -> &[PolicyRule] {
        let rules = match b.role_kind.as_str() {
            "ClusterRole" => self.cluster_roles.get(&b.role_name),
            "Role" => self.roles.get(&(b.namespace.clone(), b.role_name.clone())),
            _ => None,
        };
        rules.map(Vec::as_slice).unwrap_or(&[])
    }

    /// The rules of the role a binding in `namespace` refers to (none when it does not exist).
    pub fn referenced_rules(&self, namespace: &str, kind: &str, name: &str) -> Vec<PolicyRule> {
        let b = Binding {
            name: String::new(),
            namespace: namespace.into(),
            role_kind: kind.into(),
            role_name: name.into(),
            subjects: vec![],
        };
        self.role_rules(&b).to_vec()
    }

    /// The bindings that apply to `user` for a request in `namespace` ("" for cluster scope):
    /// every ClusterRoleBinding, and the RoleBindings of that namespace.
    fn applying<'a>(
        &'a self,
        user: &'a User,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a Binding> {
        let ns_bindings = if namespace.is_empty() {
            None
        } else {
            self.role_bindings.get(namespace)
        };
        self.cluster_role_bindings
            .values()
            .chain(ns_bindings.into_iter().flat_map(BTreeMap::values))
            .filter(move |b| b.subjects.iter().any(|s| s.applies_to(user, &b.namespace)))
    }

    /// RBAC's decision: allowed when some rule of some role bound to the user covers the request.
    pub fn authorize(&self, user: &User, a: &Attributes) -> Decision {
        for b in self.applying(user, &a.namespace) {
            if self.role_rules(b).iter().any(|r| r.allows(a)) {
                let subject = b
                    .subjects
                    .iter()
                    .find(|s| s.applies_to(user, &b.namespace))
                    .map(Subject::describe)
                    .unwrap_or_default();
                let via = if b.namespace.is_empty() {
                    format!("ClusterRoleBinding {:?}", b.name)
                } else {
                    format!("RoleBinding \"{}/{}\"", b.namespace, b.name)
                };
                return Decision {
                    allowed: true,
                    reason: format!(
                        "RBAC: allowed by {via} of {} {:?} to {subject}",
                        b.role_kind, b.role_name
                    ),
                };
            }
        }
        Decision {
            allowed: false,
            reason: String::new(),
        }
    }

    /// Every rule that applies to `user` in `namespace`, as SelfSubjectRulesReview lists them.
    pub fn rules_for(&self, user: &User, namespace: &str) -> Vec<PolicyRule> {
        self.applying(user, namespace)
            .flat_map(|b| self.role_rules(b).iter().cloned())
            .collect()
    }
}

/// One rule per verb, group, resource (and name) or per verb and URL: the atoms whose coverage
/// Kubernetes checks one by one (`BreakdownRule`).
fn breakdown(r: &PolicyRule) -> Vec<PolicyRule> {
    let mut out = Vec::new();
    for g in &r.api_groups {
        for res in &r.resources {
            for v in &r.verbs {
                let atom = |names: Vec<String>| PolicyRule {
                    verbs: vec![v.clone()],
                    api_groups: vec![g.clone()],
                    resources: vec![res.clone()],
                    resource_names: names,
                    non_resource_urls: vec![],
                };
                if r.resource_names.is_empty() {
                    out.push(atom(vec![]));
                } else {
                    out.extend(r.resource_names.iter().map(|n| atom(vec![n.clone()])));
                }
            }
        }
    }
    for u in &r.non_resource_urls {
        for v in &r.verbs {
            out.push(PolicyRule {
                verbs: vec![v.clone()],
                non_resource_urls: vec![u.clone()],
                ..Default::default()
            });
        }
    }
    out
}

fn has_all(set: &[String], want: &[String]) -> bool {
    want.iter().all(|w| set.contains(w))
}

/// Whether `owner` grants everything the atom `sub` does (Kubernetes' `ruleCovers`).
fn covers(owner: &PolicyRule, sub: &PolicyRule) -> bool {
    let star = |l: &[String]| l.iter().any(|x| x == "*");
    let verbs = star(&owner.verbs) || has_all(&owner.verbs, &sub.verbs);
    let groups = star(&owner.api_groups) || has_all(&owner.api_groups, &sub.api_groups);
    let resources = star(&owner.resources)
        || sub.resources.iter().all(|r| {
            owner.resources.contains(r)
                || r.split_once('/')
                    .is_some_and(|(_, sub)| owner.resources.contains(&format!("*/{sub}")))
        });
    let urls = sub.non_resource_urls.iter().all(|u| {
        owner
            .non_resource_urls
            .iter()
            .any(|o| o == "*" || o == u || o.strip_suffix('*').is_some_and(|p| u.starts_with(p)))
    });
    let names = owner.resource_names.is_empty()
        || (!sub.resource_names.is_empty() && has_all(&owner.resource_names, &sub.resource_names));
    verbs && groups && resources && urls && names
}

/// The permissions of `wanted` that `held` does not cover, merged and worded as Kubernetes lists
/// them when it refuses an escalation (`{APIGroups:[""], Resources:["pods"], Verbs:["get" "list"]}`),
/// sorted; empty when `held` covers everything.
pub fn not_held(held: &[PolicyRule], wanted: &[PolicyRule]) -> Vec<String> {
    let missing: Vec<PolicyRule> = wanted
        .iter()
        .flat_map(breakdown)
        .filter(|atom| !held.iter().any(|h| covers(h, atom)))
        .collect();
    // Rules for one group and resource (and at most one name) merge their verbs.
    let mut merged: Vec<PolicyRule> = Vec::new();
    for m in missing {
        let simple = m.non_resource_urls.is_empty();
        let same = merged.iter_mut().find(|r| {
            simple
                && r.non_resource_urls.is_empty()
                && r.api_groups == m.api_groups
                && r.resources == m.resources
                && r.resource_names == m.resource_names
        });
        match same {
            Some(r) => r.verbs.extend(m.verbs),
            None => merged.push(m),
        }
    }
    let q = |l: &[String]| {
        format!(
            "[{}]",
            l.iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(" ")
        )
    };
    let mut out: Vec<String> = merged
        .iter()
        .map(|r| {
            let mut parts = Vec::new();
            for (k, v) in [
                ("APIGroups", &r.api_groups),
                ("Resources", &r.resources),
                ("NonResourceURLs", &r.non_resource_urls),
                ("ResourceNames", &r.resource_names),
                ("Verbs", &r.verbs),
            ] {
                if !v.is_empty() {
                    parts.push(format!("{k}:{}", q(v)));
                }
            }
            format!("{{{}}}", parts.join(", "))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The full decision: the privileged group first (it never reaches RBAC), then RBAC.
pub fn decide(policy: &Policy, user: &User, a: &Attributes) -> Decision {
    if user.groups.iter().any(|g| g == MASTERS) {
        return Decision {
            allowed: true,
            reason: String::new(),
        };
    }
    policy.authorize(user, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, groups: &[&str]) -> User {
        User {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn res(verb: &str, ns: &str, group: &str, resource: &str, sub: &str, name: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            resource_request: true,
            namespace: ns.into(),
            api_group: group.into(),
            api_version: "v1".into(),
            resource: resource.into(),
            subresource: sub.into(),
            name: name.into(),
            ..Default::default()
        }
    }

    fn path(verb: &str, p: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            path: p.into(),
            ..Default::default()
        }
    }

    fn rule(v: Value) -> PolicyRule {
        PolicyRule::from_json(&v)
    }

    #[test]
    fn verbs_groups_and_resources() {
        let r = rule(json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}));
        assert!(r.allows(&res("list", "a", "", "pods", "", "")));
        assert!(r.allows(&res("get", "a", "", "pods", "", "p")));
        assert!(!r.allows(&res("watch", "a", "", "pods", "", "")));
        assert!(!r.allows(&res("get", "a", "apps", "pods", "", "p")));
        assert!(!r.allows(&res("get", "a", "", "secrets", "", "p")));
        // A rule on the resource does not reach its subresources.
        assert!(!r.allows(&res("get", "a", "", "pods", "log", "p")));
        let star = rule(json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}));
        assert!(star.allows(&res("deletecollection", "", "apps", "deployments", "", "")));
        assert!(star.allows(&res("create", "a", "", "pods", "exec", "p")));
    }

    #[test]
    fn subresources() {
        let r = rule(json!({"verbs": ["create"], "apiGroups": [""], "resources": ["pods/exec"]}));
        assert!(r.allows(&res("create", "a", "", "pods", "exec", "p")));
        assert!(!r.allows(&res("create", "a", "", "pods", "", "")));
        assert!(!r.allows(&res("create", "a", "", "pods", "attach", "p")));
        let any_status =
            rule(json!({"verbs": ["update"], "apiGroups": ["*"], "resources": ["*/status"]}));
        assert!(any_status.allows(&res("update", "a", "apps", "deployments", "status", "d")));
        assert!(!any_status.allows(&res("update", "a", "apps", "deployments", "", "d")));
        assert!(!any_status.allows(&res("update", "a", "apps", "deployments", "scale", "d")));
    }

    #[test]
    fn resource_names_need_a_named_request() {
        let r = rule(
            json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["configmaps"],
            "resourceNames": ["settings"]}),
        );
        assert!(r.allows(&res("get", "a", "", "configmaps", "", "settings")));
        assert!(!r.allows(&res("get", "a", "", "configmaps", "", "other")));
        assert!(!r.allows(&res("list", "a", "", "configmaps", "", "")));
    }

    #[test]
    fn non_resource_urls() {
        let r =
            rule(json!({"verbs": ["get"], "nonResourceURLs": ["/healthz", "/api/*", "/version"]}));
        assert!(r.allows(&path("get", "/healthz")));
        assert!(r.allows(&path("get", "/api/v1")));
        assert!(!r.allows(&path("get", "/api")));
        assert!(!r.allows(&path("post", "/healthz")));
        assert!(!r.allows(&path("get", "/metrics")));
        // A resource rule never allows a path, nor a path rule a resource.
        assert!(!r.allows(&res("get", "", "", "healthz", "", "")));
        let all = rule(json!({"verbs": ["*"], "nonResourceURLs": ["*"]}));
        assert!(all.allows(&path("delete", "/anything")));
    }

    fn policy() -> Policy {
        let mut p = Policy::default();
        p.put(
            Kind::Role,
            &json!({"metadata": {"name": "reader", "namespace": "a"},
                "rules": [{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}]}),
        );
        p.put(
            Kind::RoleBinding,
            &json!({"metadata": {"name": "rb", "namespace": "a"},
                "roleRef": {"kind": "Role", "name": "reader"},
                "subjects": [{"kind": "User", "name": "alice"}, {"kind": "ServiceAccount", "name": "bot"}]}),
        );
        p.put(
            Kind::ClusterRole,
            &json!({"metadata": {"name": "view"},
                "rules": [{"verbs": ["get", "list", "watch"], "apiGroups": ["", "apps"], "resources": ["*"]}]}),
        );
        p.put(
            Kind::ClusterRoleBinding,
            &json!({"metadata": {"name": "viewers"}, "roleRef": {"kind": "ClusterRole", "name": "view"},
                "subjects": [{"kind": "Group", "name": "auditors"},
                    {"kind": "ServiceAccount", "name": "mon", "namespace": "ops"}]}),
        );
        p
    }

    #[test]
    fn bindings_apply_by_user_group_and_service_account() {
        let p = policy();
        let alice = user("alice", &["system:authenticated"]);
        let d = p.authorize(&alice, &res("list", "a", "", "pods", "", ""));
        assert!(d.allowed);
        assert_eq!(
            d.reason,
            "RBAC: allowed by RoleBinding \"a/rb\" of Role \"reader\" to User \"alice\""
        );
        // The RoleBinding only reaches its own namespace.
        assert!(
            !p.authorize(&alice, &res("list", "b", "", "pods", "", ""))
                .allowed
        );
        assert!(
            !p.authorize(&alice, &res("list", "", "", "pods", "", ""))
                .allowed
        );
        // A ServiceAccount subject without a namespace is the binding's namespace's account.
        let bot = user("system:serviceaccount:a:bot", &["system:serviceaccounts"]);
        assert!(
            p.authorize(&bot, &res("get", "a", "", "pods", "", "p"))
                .allowed
        );
        let other_bot = user("system:serviceaccount:b:bot", &[]);
        assert!(
            !p.authorize(&other_bot, &res("get", "a", "", "pods", "", "p"))
                .allowed
        );
        // Groups, and namespaced ServiceAccount subjects of a ClusterRoleBinding.
        let carol = user("carol", &["auditors"]);
        let d = p.authorize(&carol, &res("watch", "z", "apps", "deployments", "", ""));
        assert!(d.allowed);
        assert_eq!(
            d.reason,
            "RBAC: allowed by ClusterRoleBinding \"viewers\" of ClusterRole \"view\" to Group \"auditors\""
        );
        assert!(
            !p.authorize(&carol, &res("delete", "z", "apps", "deployments", "", "d"))
                .allowed
        );
        let mon = user("system:serviceaccount:ops:mon", &[]);
        assert!(
            p.authorize(&mon, &res("get", "", "", "nodes", "", "n"))
                .allowed
        );
    }

    #[test]
    fn removal_and_missing_roles() {
        let mut p = policy();
        let alice = user("alice", &[]);
        p.remove(Kind::Role, "a", "reader");
        // A binding to a role that does not exist grants nothing.
        assert!(
            !p.authorize(&alice, &res("list", "a", "", "pods", "", ""))
                .allowed
        );
        p.remove(Kind::ClusterRoleBinding, "", "viewers");
        assert!(
            !p.authorize(
                &user("c", &["auditors"]),
                &res("get", "", "", "nodes", "", "n")
            )
            .allowed
        );
        assert_eq!(p.rules_for(&alice, "a"), vec![]);
    }

    #[test]
    fn masters_bypass_rbac() {
        let p = Policy::default();
        let root = user("root", &[MASTERS]);
        assert!(decide(&p, &root, &res("delete", "", "", "nodes", "", "n")).allowed);
        assert!(
            !decide(
                &p,
                &user("root", &[]),
                &res("delete", "", "", "nodes", "", "n")
            )
            .allowed
        );
    }

    #[test]
    fn rules_for_lists_namespace_and_cluster_rules() {
        let p = policy();
        let rules = p.rules_for(&user("alice", &["auditors"]), "a");
        assert_eq!(rules.len(), 2);
        assert_eq!(p.rules_for(&user("alice", &["auditors"]), "b").len(), 1);
    }

    #[test]
    fn escalation_coverage() {
        let held = vec![
            rule(
                json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods", "*/status"]}),
            ),
            rule(
                json!({"verbs": ["*"], "apiGroups": ["apps"], "resources": ["deployments"],
                "resourceNames": ["web"]}),
            ),
            rule(json!({"verbs": ["get"], "nonResourceURLs": ["/healthz/*"]})),
        ];
        let ok = [
            rule(
                json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods", "services/status"]}),
            ),
            rule(
                json!({"verbs": ["delete"], "apiGroups": ["apps"], "resources": ["deployments"],
                "resourceNames": ["web"]}),
            ),
            rule(json!({"verbs": ["get"], "nonResourceURLs": ["/healthz/etcd"]})),
        ];
        assert!(not_held(&held, &ok).is_empty());
        let wanted = [
            rule(
                json!({"verbs": ["get", "watch", "create"], "apiGroups": [""], "resources": ["pods", "secrets"]}),
            ),
            rule(json!({"verbs": ["delete"], "apiGroups": ["apps"], "resources": ["deployments"]})),
            rule(json!({"verbs": ["get"], "nonResourceURLs": ["/metrics"]})),
        ];
        assert_eq!(
            not_held(&held, &wanted),
            vec![
                "{APIGroups:[\"\"], Resources:[\"pods\"], Verbs:[\"watch\" \"create\"]}",
                "{APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"get\" \"watch\" \"create\"]}",
                "{APIGroups:[\"apps\"], Resources:[\"deployments\"], Verbs:[\"delete\"]}",
                "{NonResourceURLs:[\"/metrics\"], Verbs:[\"get\"]}",
            ]
        );
        // A wildcard is only covered by a wildcard.
        let star = [rule(
            json!({"verbs": ["*"], "apiGroups": [""], "resources": ["pods"]}),
        )];
        assert_eq!(not_held(&held, &star).len(), 1);
    }

    #[test]
    fn forbidden_texts() {
        assert_eq!(
            res("list", "b", "", "pods", "", "").forbidden_reason("x"),
            "User \"x\" cannot list resource \"pods\" in API group \"\" in the namespace \"b\""
        );
        assert_eq!(
            res("create", "a", "", "pods", "exec", "p").forbidden_reason("x"),
            "User \"x\" cannot create resource \"pods/exec\" in API group \"\" in the namespace \"a\""
        );
        assert_eq!(
            res("list", "", "apps", "deployments", "", "").forbidden_reason("x"),
            "User \"x\" cannot list resource \"deployments\" in API group \"apps\" at the cluster scope"
        );
        assert_eq!(
            path("get", "/foo").forbidden_reason("x"),
            "User \"x\" cannot get path \"/foo\""
        );
    }
}
