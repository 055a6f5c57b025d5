//! Authorization through the real API server and the real kubectl: Roles and bindings made with
//! `kubectl create role|rolebinding|clusterrolebinding`, enforced on every request with Kubernetes'
//! 403 texts; resourceNames and subresource rules; a new binding taking effect while the user
//! waits; `kubectl auth can-i` (also `--as`, `--list`) agreeing with what is enforced; `kubectl auth
//! whoami` from 1.27 and 1.33; the audit log's lines; and roleRef immutability.

use crate::kube_api;

use std::path::Path;
use std::time::{Duration, Instant};

use cairn_orchestrator::apiserver::authn::User;
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, ListParams, LogParams, PostParams};
use kube_api::{have_kubectl, Cluster, Options};
use serde_json::{json, Value};

fn users() -> Vec<(String, User)> {
    ["alice", "bob", "carol"]
        .into_iter()
        .map(|u| (format!("{u}-token"), User::new(u, &[])))
        .chain([(
            "dave-token".to_string(),
            User::new("dave", &["auditors", "system:masters"]),
        )])
        .collect()
}

async fn cluster(audit: Option<&Path>) -> Cluster {
    Cluster::start_with(Options {
        tokens: users(),
        audit_log: audit.map(Path::to_path_buf),
        ..Default::default()
    })
    .await
}

/// Runs kubectl 1.`minor` as `user` (whose token is `<user>-token`).
fn kubectl_as(c: &Cluster, minor: u32, user: &str, args: &[&str]) -> std::process::Output {
    let kc = c.kubeconfig_for(user, &format!("{user}-token"));
    let mut all = vec!["--kubeconfig", kc.to_str().unwrap()];
    all.extend_from_slice(args);
    c.kubectl(minor, &all)
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

async fn kube_as(c: &Cluster, user: &str) -> kube::Client {
    let kc = c.kubeconfig_for(user, &format!("{user}-token"));
    let kc = kube::config::Kubeconfig::read_from(&kc).unwrap();
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    cfg.default_retry = false;
    kube::Client::try_from(cfg).unwrap()
}

/// A raw GET; returns the code and the body as JSON.
async fn get(client: &kube::Client, path: &str) -> (u16, Value) {
    let req = axum::http::Request::builder()
        .method("GET")
        .uri(path)
        .body(kube::client::Body::empty())
        .unwrap();
    let resp = client.send(req).await.expect("request sent");
    let code = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn error_of(r: kube::Result<impl std::fmt::Debug>) -> kube::core::Status {
    match r {
        Err(kube::Error::Api(e)) => *e,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_bindings_from_kubectl_are_enforced_with_kubernetes_texts() {
    if !have_kubectl("roles_and_bindings_from_kubectl_are_enforced", 33) {
        return;
    }
    let c = cluster(None).await;
    c.ok(33, &["create", "namespace", "a"]);
    c.ok(33, &["create", "namespace", "b"]);
    c.ok(
        33,
        &[
            "create",
            "role",
            "pod-reader",
            "--verb=get,list,watch",
            "--resource=pods",
            "-n",
            "a",
        ],
    );
    c.ok(
        33,
        &[
            "create",
            "rolebinding",
            "alice-reads",
            "--role=pod-reader",
            "--user=alice",
            "-n",
            "a",
        ],
    );

    // Allowed in a; refused for secrets in b, in Kubernetes' words, through kubectl.
    let out = kubectl_as(&c, 33, "alice", &["get", "pods", "-n", "a"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = kubectl_as(&c, 33, "alice", &["get", "secrets", "-n", "b"]);
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out).trim(),
        "Error from server (Forbidden): secrets is forbidden: User \"alice\" cannot list resource \"secrets\" in API group \"\" in the namespace \"b\""
    );
    let out = kubectl_as(&c, 33, "alice", &["get", "secret", "s", "-n", "b"]);
    assert_eq!(
        stderr(&out).trim(),
        "Error from server (Forbidden): secrets \"s\" is forbidden: User \"alice\" cannot get resource \"secrets\" in API group \"\" in the namespace \"b\""
    );
    // Pods in another namespace, and at the cluster scope, are refused too.
    let out = kubectl_as(&c, 33, "alice", &["get", "pods", "-n", "b"]);
    assert!(
        stderr(&out).contains(
            "User \"alice\" cannot list resource \"pods\" in API group \"\" in the namespace \"b\""
        ),
        "{}",
        stderr(&out)
    );
    let out = kubectl_as(&c, 33, "alice", &["get", "deployments", "-A"]);
    assert_eq!(
        stderr(&out).trim(),
        "Error from server (Forbidden): deployments.apps is forbidden: User \"alice\" cannot list resource \"deployments\" in API group \"apps\" at the cluster scope"
    );
    // A path no role grants.
    let out = kubectl_as(&c, 33, "alice", &["get", "--raw", "/foo"]);
    assert_eq!(
        stderr(&out).trim(),
        "Error from server (Forbidden): forbidden: User \"alice\" cannot get path \"/foo\""
    );

    // The Status body itself.
    let alice = kube_as(&c, "alice").await;
    let (code, body) = get(&alice, "/api/v1/namespaces/b/secrets/s").await;
    assert_eq!(code, 403);
    assert_eq!(
        body,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "secrets \"s\" is forbidden: User \"alice\" cannot get resource \"secrets\" in API group \"\" in the namespace \"b\"",
            "reason": "Forbidden", "details": {"name": "s", "kind": "secrets"}, "code": 403})
    );
    let (code, body) = get(&alice, "/foo").await;
    assert_eq!(code, 403);
    assert_eq!(body["details"], json!({}));

    // Bindings list with their role and subjects, as kubectl prints them.
    let wide = c.ok(33, &["get", "rolebindings", "-n", "a", "-o", "wide"]);
    let line = wide
        .lines()
        .find(|l| l.starts_with("alice-reads"))
        .unwrap_or_else(|| panic!("{wide}"));
    assert!(
        line.contains("Role/pod-reader") && line.contains("alice"),
        "{line}"
    );

    // A ClusterRoleBinding to view: bob reads everywhere but writes nowhere.
    c.ok(
        33,
        &[
            "create",
            "clusterrolebinding",
            "bob-views",
            "--clusterrole=view",
            "--user=bob",
        ],
    );
    let out = kubectl_as(&c, 33, "bob", &["get", "pods,deployments,services", "-A"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = kubectl_as(&c, 33, "bob", &["create", "configmap", "x", "-n", "a"]);
    assert_eq!(
        stderr(&out).trim(),
        "error: failed to create configmap: configmaps is forbidden: User \"bob\" cannot create resource \"configmaps\" in API group \"\" in the namespace \"a\""
    );
    let out = kubectl_as(&c, 33, "bob", &["get", "secrets", "-n", "a"]);
    assert!(
        stderr(&out).contains("cannot list resource \"secrets\""),
        "{}",
        stderr(&out)
    );
    let out = kubectl_as(&c, 33, "bob", &["get", "nodes"]);
    assert_eq!(
        stderr(&out).trim(),
        "Error from server (Forbidden): nodes is forbidden: User \"bob\" cannot list resource \"nodes\" in API group \"\" at the cluster scope"
    );
    let out = kubectl_as(&c, 33, "bob", &["delete", "namespace", "a"]);
    assert!(stderr(&out).contains("namespaces \"a\" is forbidden: User \"bob\" cannot delete resource \"namespaces\" in API group \"\" in the namespace \"a\""), "{}", stderr(&out));

    // A ClusterRole of one's own, bound cluster-wide.
    c.ok(
        33,
        &[
            "create",
            "clusterrole",
            "node-reader",
            "--verb=get,list,watch",
            "--resource=nodes",
        ],
    );
    c.ok(
        33,
        &[
            "create",
            "clusterrolebinding",
            "bob-nodes",
            "--clusterrole=node-reader",
            "--user=bob",
        ],
    );
    let out = kubectl_as(&c, 33, "bob", &["get", "nodes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let roles = c.ok(33, &["get", "clusterroles"]);
    assert!(
        roles.lines().any(|l| l.starts_with("node-reader ")),
        "{roles}"
    );
    let crb = c.ok(33, &["get", "clusterrolebinding", "bob-nodes"]);
    assert!(crb.contains("ClusterRole/node-reader"), "{crb}");
    // Declarative management works too (kubectl apply reads the kinds' OpenAPI schemas).
    let manifest = "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: applied\n  namespace: a\nrules:\n- apiGroups: [\"\"]\n  resources: [\"services\"]\n  verbs: [\"get\"]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: applied\n  namespace: a\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: Role\n  name: applied\nsubjects:\n- kind: ServiceAccount\n  name: bot\n  namespace: a\n";
    for _ in 0..2 {
        let out = c.kubectl_stdin(33, &["apply", "-f", "-"], Some(manifest));
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = c.kubectl(
        33,
        &[
            "auth",
            "can-i",
            "get",
            "services",
            "-n",
            "a",
            "--as",
            "system:serviceaccount:a:bot",
        ],
    );
    assert_eq!(stdout(&out).trim(), "yes", "{}", stderr(&out));

    // The review groups are discoverable, as `kubectl api-resources` lists them.
    let resources = c.ok(33, &["api-resources", "--api-group=authorization.k8s.io"]);
    assert!(
        resources.contains("selfsubjectaccessreviews"),
        "{resources}"
    );

    // system:masters needs no binding.
    let out = kubectl_as(&c, 33, "dave", &["create", "configmap", "y", "-n", "b"]);
    assert!(out.status.success(), "{}", stderr(&out));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_names_and_subresources_are_matched() {
    if !have_kubectl("resource_names_and_subresources_are_matched", 33) {
        return;
    }
    let c = cluster(None).await;
    c.ok(33, &["create", "namespace", "a"]);
    c.ok(
        33,
        &[
            "create",
            "configmap",
            "settings",
            "-n",
            "a",
            "--from-literal=k=v",
        ],
    );
    c.ok(33, &["create", "configmap", "other", "-n", "a"]);
    c.ok(33, &["run", "p", "--image=busybox", "-n", "a"]);
    c.ok(
        33,
        &[
            "create",
            "role",
            "narrow",
            "-n",
            "a",
            "--verb=get",
            "--resource=configmaps",
            "--resource-name=settings",
        ],
    );
    c.ok(
        33,
        &[
            "create",
            "role",
            "logs",
            "-n",
            "a",
            "--verb=get",
            "--resource=pods,pods/log",
        ],
    );
    c.ok(
        33,
        &[
            "create",
            "rolebinding",
            "carol-narrow",
            "-n",
            "a",
            "--role=narrow",
            "--user=carol",
        ],
    );
    c.ok(
        33,
        &[
            "create",
            "rolebinding",
            "carol-logs",
            "-n",
            "a",
            "--role=logs",
            "--user=carol",
        ],
    );

    let out = kubectl_as(
        &c,
        33,
        "carol",
        &["get", "configmap", "settings", "-n", "a"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = kubectl_as(&c, 33, "carol", &["get", "configmap", "other", "-n", "a"]);
    assert_eq!(
        stderr(&out).trim(),
        "Error from server (Forbidden): configmaps \"other\" is forbidden: User \"carol\" cannot get resource \"configmaps\" in API group \"\" in the namespace \"a\""
    );
    // A list names nothing, so a rule limited to names never allows it.
    let out = kubectl_as(&c, 33, "carol", &["get", "configmaps", "-n", "a"]);
    assert!(
        stderr(&out).contains("cannot list resource \"configmaps\""),
        "{}",
        stderr(&out)
    );

    // pods/log is granted, pods/exec is not.
    let carol = kube_as(&c, "carol").await;
    let pods: Api<Pod> = Api::namespaced(carol.clone(), "a");
    let logs = pods.logs("p", &LogParams::default()).await;
    if let Err(kube::Error::Api(e)) = &logs {
        assert_ne!(e.code, 403, "{e:?}");
    }
    let (code, body) = get(&carol, "/api/v1/namespaces/a/pods/p/status").await;
    assert_eq!(code, 403);
    assert_eq!(
        body["message"],
        "pods \"p\" is forbidden: User \"carol\" cannot get resource \"pods/status\" in API group \"\" in the namespace \"a\""
    );
    let out = kubectl_as(&c, 33, "carol", &["exec", "p", "-n", "a", "--", "true"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("pods \"p\" is forbidden: User \"carol\" cannot create resource \"pods/exec\" in API group \"\" in the namespace \"a\""),
        "{}",
        stderr(&out)
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_binding_takes_effect_within_a_second() {
    let c = cluster(None).await;
    let admin = c.kube().await;
    let alice = kube_as(&c, "alice").await;
    let cms: Api<ConfigMap> = Api::namespaced(alice.clone(), "default");
    let e = error_of(cms.list(&ListParams::default()).await);
    assert_eq!(e.code, 403);
    let role: k8s_openapi::api::rbac::v1::Role = serde_json::from_value(json!({
        "metadata": {"name": "cm-reader", "namespace": "default"},
        "rules": [{"verbs": ["list"], "apiGroups": [""], "resources": ["configmaps"]}]}))
    .unwrap();
    Api::namespaced(admin.clone(), "default")
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let rb: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "alice-cm", "namespace": "default"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm-reader"},
        "subjects": [{"kind": "User", "name": "alice"}]}))
    .unwrap();
    let rbs: Api<RoleBinding> = Api::namespaced(admin.clone(), "default");
    let start = Instant::now();
    rbs.create(&PostParams::default(), &rb).await.unwrap();
    loop {
        if cms.list(&ListParams::default()).await.is_ok() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "the binding did not take effect within a second"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("binding took effect after {:?}", start.elapsed());
    // And a removed binding stops granting just as fast.
    let start = Instant::now();
    rbs.delete("alice-cm", &Default::default()).await.unwrap();
    loop {
        if cms.list(&ListParams::default()).await.is_err() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "the removal did not take effect within a second"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("removal took effect after {:?}", start.elapsed());

    // The default policy exists, and roleRef cannot change.
    let crs: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(admin.clone());
    for name in [
        "cluster-admin",
        "admin",
        "edit",
        "view",
        "system:basic-user",
        "system:discovery",
        "system:public-info-viewer",
        "system:node-bootstrapper",
        "system:kube-scheduler",
        "system:kube-controller-manager",
        "system:node",
        "system:node-proxier",
    ] {
        crs.get(name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let mut created = rbs.create(&PostParams::default(), &rb).await.unwrap();
    created.role_ref.name = "other".into();
    let e = error_of(
        rbs.replace("alice-cm", &PostParams::default(), &created)
            .await,
    );
    assert_eq!(e.code, 422);
    assert_eq!(
        e.message,
        "RoleBinding.rbac.authorization.k8s.io \"alice-cm\" is invalid: roleRef: Invalid value: rbac.RoleRef{APIGroup:\"rbac.authorization.k8s.io\", Kind:\"Role\", Name:\"other\"}: cannot change roleRef"
    );
    let bad: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "bad", "namespace": "default"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Secret", "name": "x"},
        "subjects": [{"kind": "Robot", "name": "r"}]}))
    .unwrap();
    let e = error_of(rbs.create(&PostParams::default(), &bad).await);
    assert_eq!(
        e.message,
        "RoleBinding.rbac.authorization.k8s.io \"bad\" is invalid: [roleRef.kind: Unsupported value: \"Secret\": supported values: \"Role\", \"ClusterRole\", subjects[0].kind: Unsupported value: \"Robot\": supported values: \"ServiceAccount\", \"User\", \"Group\"]"
    );
    c.shutdown().await;
}

/// A raw POST of a JSON body; returns the code and the answer.
async fn post(client: &kube::Client, path: &str, body: &Value) -> (u16, Value) {
    let req = axum::http::Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/json")
        .body(kube::client::Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap();
    let resp = client.send(req).await.expect("request sent");
    let code = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// `kubectl auth can-i --as alice` for a request, and what alice actually gets for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn can_i_answers_what_is_enforced() {
    if !have_kubectl("can_i_answers_what_is_enforced", 33) {
        return;
    }
    let c = cluster(None).await;
    c.ok(33, &["create", "namespace", "a"]);
    c.ok(33, &["create", "namespace", "b"]);
    c.ok(
        33,
        &[
            "create",
            "role",
            "r",
            "-n",
            "a",
            "--verb=get,list,create",
            "--resource=configmaps",
        ],
    );
    c.ok(
        33,
        &[
            "create",
            "role",
            "d",
            "-n",
            "a",
            "--verb=delete",
            "--resource=configmaps",
            "--resource-name=gone",
        ],
    );
    c.ok(
        33,
        &[
            "create",
            "rolebinding",
            "r",
            "-n",
            "a",
            "--role=r",
            "--user=alice",
        ],
    );
    c.ok(
        33,
        &[
            "create",
            "rolebinding",
            "d",
            "-n",
            "a",
            "--role=d",
            "--user=alice",
        ],
    );
    c.ok(33, &["create", "configmap", "gone", "-n", "a"]);
    c.ok(33, &["create", "configmap", "kept", "-n", "a"]);
    c.ok(33, &["create", "configmap", "kept", "-n", "b"]);

    let alice = kube_as(&c, "alice").await;
    let cm = |name: &str| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
    };
    // (can-i arguments, what alice's own request returns)
    let cases: Vec<(Vec<&str>, bool)> = vec![
        (
            vec!["list", "configmaps", "-n", "a"],
            Api::<ConfigMap>::namespaced(alice.clone(), "a")
                .list(&ListParams::default())
                .await
                .is_ok(),
        ),
        (
            vec!["list", "configmaps", "-n", "b"],
            Api::<ConfigMap>::namespaced(alice.clone(), "b")
                .list(&ListParams::default())
                .await
                .is_ok(),
        ),
        (
            vec!["get", "configmaps/kept", "-n", "a"],
            Api::<ConfigMap>::namespaced(alice.clone(), "a")
                .get("kept")
                .await
                .is_ok(),
        ),
        (
            vec!["create", "configmaps", "-n", "a"],
            Api::<ConfigMap>::namespaced(alice.clone(), "a")
                .create(&PostParams::default(), &cm("new"))
                .await
                .is_ok(),
        ),
        (
            vec!["create", "configmaps", "-n", "b"],
            Api::<ConfigMap>::namespaced(alice.clone(), "b")
                .create(&PostParams::default(), &cm("new"))
                .await
                .is_ok(),
        ),
        (
            vec!["delete", "configmaps/kept", "-n", "a"],
            Api::<ConfigMap>::namespaced(alice.clone(), "a")
                .delete("kept", &Default::default())
                .await
                .is_ok(),
        ),
        (
            vec!["delete", "configmaps/gone", "-n", "a"],
            Api::<ConfigMap>::namespaced(alice.clone(), "a")
                .delete("gone", &Default::default())
                .await
                .is_ok(),
        ),
        (
            vec!["list", "pods", "-n", "a"],
            Api::<Pod>::namespaced(alice.clone(), "a")
                .list(&ListParams::default())
                .await
                .is_ok(),
        ),
    ];
    let expected = [true, false, true, true, false, false, true, false];
    for ((args, enforced), want) in cases.iter().zip(expected) {
        assert_eq!(*enforced, want, "alice's own request {args:?}");
        let mut all = vec!["auth", "can-i"];
        all.extend(args.iter());
        all.extend(["--as", "alice"]);
        let out = c.kubectl(33, &all);
        let answer = stdout(&out).trim().to_string();
        assert_eq!(
            answer,
            if *enforced { "yes" } else { "no" },
            "can-i {args:?}: {}",
            stderr(&out)
        );
        assert_eq!(out.status.success(), *enforced);
        // Alice asking for herself gets the same answer.
        let mut own = vec!["auth", "can-i"];
        own.extend(args.iter());
        let out = kubectl_as(&c, 33, "alice", &own);
        assert_eq!(stdout(&out).trim(), answer, "alice's own can-i {args:?}");
    }

    // SubjectAccessReview and LocalSubjectAccessReview ask about someone else.
    let admin = c.kube().await;
    let sar = |ns: &str| {
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": "alice", "resourceAttributes":
                {"namespace": ns, "verb": "list", "resource": "configmaps"}}})
    };
    let sars = "/apis/authorization.k8s.io/v1/subjectaccessreviews";
    let (code, v) = post(&admin, sars, &sar("a")).await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(
        v["status"],
        json!({"allowed": true, "reason": "RBAC: allowed by RoleBinding \"a/r\" of Role \"r\" to User \"alice\""})
    );
    let (_, v) = post(&admin, sars, &sar("b")).await;
    assert_eq!(v["status"], json!({"allowed": false}));
    let mut local = sar("");
    local["kind"] = json!("LocalSubjectAccessReview");
    let (code, v) = post(
        &admin,
        "/apis/authorization.k8s.io/v1/namespaces/a/localsubjectaccessreviews",
        &local,
    )
    .await;
    assert_eq!((code, &v["status"]["allowed"]), (201, &json!(true)), "{v}");
    let (code, v) = post(
        &admin,
        sars,
        &json!({"kind": "SubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
        "spec": {"resourceAttributes": {"verb": "get", "resource": "pods"}}}),
    )
    .await;
    assert_eq!(code, 422);
    assert_eq!(
        v["message"],
        "SubjectAccessReview.authorization.k8s.io \"\" is invalid: spec.user: Invalid value: \"\": at least one of user or group must be specified"
    );
    // Asking about others is itself a permission alice lacks.
    let (code, v) = post(&alice, sars, &sar("a")).await;
    assert_eq!(code, 403);
    assert_eq!(
        v["message"],
        "subjectaccessreviews.authorization.k8s.io is forbidden: User \"alice\" cannot create resource \"subjectaccessreviews\" in API group \"authorization.k8s.io\" at the cluster scope"
    );

    // --list is SelfSubjectRulesReview.
    let list = c.ok(33, &["auth", "can-i", "--list", "-n", "a", "--as", "alice"]);
    let rows: Vec<&str> = list
        .lines()
        .filter(|l| l.starts_with("configmaps "))
        .collect();
    assert!(
        rows.iter()
            .any(|r| r.contains("[]") && r.contains("[get list create]")),
        "{list}"
    );
    assert!(
        rows.iter()
            .any(|r| r.contains("[gone]") && r.contains("[delete]")),
        "{list}"
    );
    assert!(
        list.contains("selfsubjectaccessreviews.authorization.k8s.io"),
        "{list}"
    );

    // Impersonating takes the impersonate verb, which alice lacks.
    let out = kubectl_as(&c, 33, "alice", &["get", "pods", "--as", "bob"]);
    assert_eq!(
        stderr(&out).trim(),
        "Error from server (Forbidden): users \"bob\" is forbidden: User \"alice\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"
    );
    // Groups given with --as-group are what the impersonated user has.
    let out = c.kubectl(
        33,
        &[
            "auth",
            "can-i",
            "delete",
            "nodes",
            "--as",
            "eve",
            "--as-group",
            "system:masters",
        ],
    );
    assert_eq!(stdout(&out).trim(), "yes");
    let out = c.kubectl(33, &["auth", "can-i", "delete", "nodes", "--as", "eve"]);
    assert_eq!(stdout(&out).trim(), "no");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoami_from_old_and_new_kubectl() {
    let c = cluster(None).await;
    for minor in [27, 33] {
        if !have_kubectl("whoami_from_old_and_new_kubectl", minor) {
            continue;
        }
        let out = kubectl_as(&c, minor, "dave", &["auth", "whoami", "-o", "json"]);
        assert!(out.status.success(), "1.{minor}: {}", stderr(&out));
        let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(v["kind"], "SelfSubjectReview", "1.{minor}");
        assert_eq!(v["status"]["userInfo"]["username"], "dave");
        assert_eq!(
            v["status"]["userInfo"]["groups"],
            json!(["auditors", "system:masters", "system:authenticated"])
        );
        let table = stdout(&kubectl_as(&c, minor, "alice", &["auth", "whoami"]));
        assert!(
            table.contains("Username") && table.contains("alice"),
            "1.{minor}: {table}"
        );
        assert!(
            table.contains("[system:authenticated]"),
            "1.{minor}: {table}"
        );
        // Impersonated, it is the impersonated user.
        let out = c.kubectl(
            minor,
            &[
                "auth",
                "whoami",
                "--as",
                "bob",
                "--as-group",
                "devs",
                "-o",
                "json",
            ],
        );
        let v: Value = serde_json::from_str(&stdout(&out))
            .unwrap_or_else(|_| panic!("1.{minor}: {}", stderr(&out)));
        assert_eq!(v["status"]["userInfo"]["username"], "bob");
        assert_eq!(
            v["status"]["userInfo"]["groups"],
            json!(["devs", "system:authenticated"])
        );
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_records_writes() {
    if !have_kubectl("the_audit_log_records_writes", 33) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("logs/audit.log");
    let c = cluster(Some(&path)).await;
    c.ok(33, &["create", "configmap", "audited", "-n", "default"]);
    c.ok(
        33,
        &[
            "label",
            "configmap",
            "audited",
            "x=y",
            "--as",
            "dave",
            "--as-group",
            "system:masters",
        ],
    );
    let _ = kubectl_as(&c, 33, "alice", &["delete", "configmap", "audited"]);
    c.ok(33, &["delete", "configmap", "audited"]);
    let find = |want: &dyn Fn(&Value) -> bool| -> Option<Value> {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .find(|v| want(v))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let create = loop {
        if let Some(v) =
            find(&|v| v["verb"] == "create" && v["objectRef"]["resource"] == "configmaps")
        {
            break v;
        }
        assert!(Instant::now() < deadline, "no create in the audit log");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(create["kind"], "Event");
    assert_eq!(create["apiVersion"], "audit.k8s.io/v1");
    assert_eq!(create["level"], "Metadata");
    assert_eq!(create["stage"], "ResponseComplete");
    assert_eq!(create["user"]["username"], "admin");
    assert_eq!(create["responseStatus"]["code"], 201);
    assert_eq!(
        create["objectRef"],
        json!({"resource": "configmaps", "namespace": "default", "name": "audited", "apiVersion": "v1"})
    );
    assert!(create["requestURI"]
        .as_str()
        .unwrap()
        .starts_with("/api/v1/namespaces/default/configmaps"));
    assert_eq!(create["auditID"].as_str().unwrap().len(), 36);
    for k in ["requestReceivedTimestamp", "stageTimestamp"] {
        let ts = create[k].as_str().unwrap();
        assert!(
            ts.parse::<jiff::Timestamp>().is_ok() && ts.ends_with('Z') && ts.len() == 27,
            "{ts}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let patch = find(&|v| v["verb"] == "patch" && v["objectRef"]["name"] == "audited");
        let refused = find(&|v| v["verb"] == "delete" && v["user"]["username"] == "alice");
        let deleted = find(&|v| v["verb"] == "delete" && v["user"]["username"] == "admin");
        if let (Some(patch), Some(refused), Some(deleted)) = (patch, refused, deleted) {
            assert_eq!(patch["user"]["username"], "admin");
            assert_eq!(patch["impersonatedUser"]["username"], "dave");
            assert_eq!(refused["responseStatus"]["code"], 403);
            assert_eq!(
                refused["annotations"]["authorization.k8s.io/decision"],
                "forbid"
            );
            assert_eq!(deleted["responseStatus"]["code"], 200);
            break;
        }
        assert!(Instant::now() < deadline, "missing writes in the audit log");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_allow_lets_every_user_through() {
    let c = Cluster::start_with(Options {
        tokens: users(),
        always_allow: true,
        ..Default::default()
    })
    .await;
    let alice = kube_as(&c, "alice").await;
    Api::<ConfigMap>::namespaced(alice, "kube-system")
        .list(&ListParams::default())
        .await
        .unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_bindings_cannot_grant_more_than_their_author_holds() {
    if !have_kubectl(
        "roles_and_bindings_cannot_grant_more_than_their_author_holds",
        33,
    ) {
        return;
    }
    let c = cluster(None).await;
    c.ok(33, &["create", "namespace", "a"]);
    c.ok(
        33,
        &[
            "create",
            "rolebinding",
            "alice-admin",
            "--clusterrole=admin",
            "--user=alice",
            "-n",
            "a",
        ],
    );

    // What alice holds she may grant.
    let out = kubectl_as(
        &c,
        33,
        "alice",
        &[
            "create",
            "role",
            "readers",
            "--verb=get,list",
            "--resource=pods",
            "-n",
            "a",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = kubectl_as(
        &c,
        33,
        "alice",
        &[
            "create",
            "rolebinding",
            "carol-edits",
            "--clusterrole=edit",
            "--user=carol",
            "-n",
            "a",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // More than she holds she may not.
    let out = kubectl_as(
        &c,
        33,
        "alice",
        &[
            "create",
            "role",
            "nodes",
            "--verb=list",
            "--resource=nodes",
            "-n",
            "a",
        ],
    );
    assert_eq!(
        stderr(&out).trim(),
        "Error from server (Forbidden): roles.rbac.authorization.k8s.io \"nodes\" is forbidden: user \"alice\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"\"], Resources:[\"nodes\"], Verbs:[\"list\"]}"
    );
    let out = kubectl_as(
        &c,
        33,
        "alice",
        &[
            "create",
            "rolebinding",
            "root",
            "--clusterrole=cluster-admin",
            "--user=alice",
            "-n",
            "a",
        ],
    );
    assert_eq!(
        stderr(&out).trim(),
        "error: failed to create rolebinding: rolebindings.rbac.authorization.k8s.io \"root\" is forbidden: user \"alice\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"*\"], Resources:[\"*\"], Verbs:[\"*\"]}\n{NonResourceURLs:[\"*\"], Verbs:[\"*\"]}"
    );
    // Nor by patching a role she may edit.
    let out = kubectl_as(
        &c,
        33,
        "alice",
        &[
            "patch",
            "role",
            "readers",
            "-n",
            "a",
            "--type=json",
            "-p",
            r#"[{"op": "add", "path": "/rules/-", "value": {"verbs": ["delete"], "apiGroups": [""], "resources": ["nodes"]}}]"#,
        ],
    );
    assert!(
        stderr(&out).contains("is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"\"], Resources:[\"nodes\"], Verbs:[\"delete\"]}"),
        "{}",
        stderr(&out)
    );

    // The bind verb on a role allows binding it without holding it.
    c.ok(
        33,
        &[
            "create",
            "clusterrole",
            "view-binder",
            "--verb=bind",
            "--resource=clusterroles",
            "--resource-name=view",
        ],
    );
    c.ok(
        33,
        &[
            "create",
            "rolebinding",
            "bob-binds",
            "--clusterrole=view-binder",
            "--user=bob",
            "-n",
            "a",
        ],
    );
    c.ok(
        33,
        &[
            "create",
            "rolebinding",
            "bob-manages",
            "--clusterrole=admin",
            "--user=bob",
            "-n",
            "a",
        ],
    );
    let out = kubectl_as(
        &c,
        33,
        "bob",
        &[
            "create",
            "rolebinding",
            "dan-views",
            "--clusterrole=view",
            "--user=dan",
            "-n",
            "a",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    c.shutdown().await;
}
