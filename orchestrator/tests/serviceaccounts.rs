//! Service accounts end to end, through the real kubectl builds: `kubectl create token` gives a
//! signed JWT with Kubernetes' claims that authenticates as the account until it expires, is
//! tampered with, or its account (or the pod it is bound to) is deleted; the controller manager
//! gives every namespace its `default` account and `kube-root-ca.crt`; admission gives pods their
//! account and token volume; and (root) a pod run by the node agent finds its token, CA and
//! namespace under /var/run/secrets/kubernetes.io/serviceaccount, and that token lists pods.

use crate::common;
use crate::kube_api;

use std::process::Output;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use cairn_orchestrator::apiserver::satoken::{self, Claims, Issuer, Keys, ObjectRef};
use common::node::AgentNode;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, PostParams};
use kube_api::{converge, eventually, have_kubectl, Cluster};
use serde_json::{json, Value};

const MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

fn kubectl(c: &Cluster, minor: u32, args: &[&str]) -> Output {
    tokio::task::block_in_place(|| c.kubectl(minor, args))
}

fn ok(c: &Cluster, minor: u32, args: &[&str]) -> String {
    tokio::task::block_in_place(|| c.ok(minor, args))
}

fn fails(c: &Cluster, minor: u32, args: &[&str]) -> String {
    tokio::task::block_in_place(|| c.fails(minor, args))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The payload of a JWT.
fn claims(token: &str) -> Value {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a JWS: {token}");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("base64url")).expect("JSON")
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn ca_pem(c: &Cluster) -> String {
    std::fs::read_to_string(c.dir.path().join("certs/ca.crt")).unwrap()
}

/// The controller manager, in this process, publishing the cluster's CA.
fn controllers(c: &Cluster, client: kube::Client) -> tokio::task::JoinHandle<()> {
    let cfg = cairn_orchestrator::controllers::ControllerConfig {
        root_ca: Some(ca_pem(c)),
        ..Default::default()
    };
    tokio::spawn(async move {
        let _ = cairn_orchestrator::controllers::run(client, cfg, std::future::pending()).await;
    })
}

/// Waits for what the controller manager gives a namespace: its `default` account and the CA.
async fn namespace_ready(c: &Cluster, client: &kube::Client, ns: &str) {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    converge("the default ServiceAccount", 20, async || {
        sas.get_opt("default").await.unwrap().is_some()
    })
    .await;
    let cm = eventually("kube-root-ca.crt", 20, || async {
        cms.get_opt("kube-root-ca.crt").await.unwrap()
    })
    .await;
    assert_eq!(cm.data.unwrap()["ca.crt"], ca_pem(c));
}

/// Runs `kubectl get pods` with `token` instead of the admin's; Ok(stdout+stderr) or Err(stderr).
fn get_pods_as(c: &Cluster, minor: u32, token: &str, ns: &str) -> Result<String, String> {
    let out = kubectl(
        c,
        minor,
        &["--token", token, "get", "pods", "-n", ns, "-o", "name"],
    );
    if out.status.success() {
        Ok(text(&out.stdout) + &text(&out.stderr))
    } else {
        Err(text(&out.stderr))
    }
}

const UNAUTHORIZED: &str = "error: You must be logged in to the server (Unauthorized)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_token_gives_tokens_that_authenticate_until_revoked() {
    let test = "kubectl_create_token_gives_tokens_that_authenticate_until_revoked";
    if !have_kubectl(test, 33) {
        return;
    }
    let c = Cluster::start().await;
    let client = c.kube().await;
    let _cm = controllers(&c, client.clone());
    ok(&c, 33, &["create", "namespace", "robots"]);
    namespace_ready(&c, &client, "robots").await;
    ok(&c, 33, &["create", "serviceaccount", "bot", "-n", "robots"]);
    ok(
        &c,
        33,
        &[
            "create",
            "rolebinding",
            "bot-view",
            "-n",
            "robots",
            "--clusterrole=view",
            "--serviceaccount=robots:bot",
        ],
    );
    let sa_uid = ok(
        &c,
        33,
        &[
            "get",
            "sa",
            "bot",
            "-n",
            "robots",
            "-o",
            "jsonpath={.metadata.uid}",
        ],
    );

    // Every kubectl from 1.27 to 1.33 asks for a token and uses it.
    let mut tokens = Vec::new();
    for minor in 27..=33 {
        if !have_kubectl(test, minor) {
            continue;
        }
        let token = ok(
            &c,
            minor,
            &["create", "token", "bot", "-n", "robots", "--duration", "1h"],
        )
        .trim()
        .to_string();
        let cl = claims(&token);
        assert_eq!(cl["iss"], satoken::DEFAULT_ISSUER, "1.{minor}");
        assert_eq!(cl["sub"], "system:serviceaccount:robots:bot");
        assert_eq!(cl["aud"], json!([satoken::DEFAULT_ISSUER]));
        let iat = cl["iat"].as_i64().unwrap();
        assert!((iat - now()).abs() < 60, "issued now: {cl}");
        assert_eq!(cl["nbf"], iat);
        assert_eq!(cl["exp"].as_i64().unwrap() - iat, 3600);
        assert_eq!(
            cl["kubernetes.io"],
            json!({"namespace": "robots", "serviceaccount": {"name": "bot", "uid": sa_uid}})
        );
        if let Err(e) = get_pods_as(&c, minor, &token, "robots") {
            panic!("1.{minor}: the token does not authenticate: {e}");
        }
        tokens.push(token);
    }
    let token = tokens.pop().expect("kubectl 1.33 made one");

    // A token for another audience is not for this server.
    let vault = ok(
        &c,
        33,
        &[
            "create",
            "token",
            "bot",
            "-n",
            "robots",
            "--audience",
            "vault",
        ],
    );
    let vault = vault.trim();
    assert_eq!(claims(vault)["aud"], json!(["vault"]));
    assert_eq!(
        claims(vault)["exp"].as_i64().unwrap() - claims(vault)["iat"].as_i64().unwrap(),
        3600
    );
    assert!(get_pods_as(&c, 33, vault, "robots")
        .unwrap_err()
        .contains(UNAUTHORIZED));

    // Kubernetes' refusals, word for word.
    assert!(fails(
        &c,
        33,
        &["create", "token", "bot", "-n", "robots", "--duration", "5m"]
    )
    .contains(
        r#"error: failed to create token: TokenRequest.authentication.k8s.io "" is invalid: spec.expirationSeconds: Invalid value: 300: may not specify a duration less than 10 minutes"#
    ));
    assert!(
        fails(&c, 33, &["create", "token", "nobody", "-n", "robots"])
            .contains(r#"error: failed to create token: serviceaccounts "nobody" not found"#)
    );

    // A changed payload (another account's name) breaks the signature.
    let parts: Vec<&str> = token.split('.').collect();
    let mut body = claims(&token);
    body["sub"] = json!("system:serviceaccount:kube-system:default");
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&body).unwrap()),
        parts[2]
    );
    assert!(get_pods_as(&c, 33, &forged, "robots")
        .unwrap_err()
        .contains(UNAUTHORIZED));

    // Signed with the cluster's own key: authenticates while in its lifetime, not after.
    let issuer = Issuer::new(
        Keys::in_dir(&c.dir.path().join("certs")).unwrap(),
        vec![satoken::DEFAULT_ISSUER.into()],
        vec![],
        None,
    )
    .unwrap();
    let sa_ref = ObjectRef {
        name: "bot".into(),
        uid: sa_uid.clone(),
    };
    let signed_at = |iat: i64| {
        let cl = Claims::new(
            satoken::DEFAULT_ISSUER,
            "robots",
            sa_ref.clone(),
            None,
            vec![satoken::DEFAULT_ISSUER.into()],
            iat,
            600,
        );
        issuer.sign(&cl).unwrap()
    };
    assert!(get_pods_as(&c, 33, &signed_at(now()), "robots").is_ok());
    let expired = signed_at(now() - 2 * 3600);
    assert!(get_pods_as(&c, 33, &expired, "robots")
        .unwrap_err()
        .contains(UNAUTHORIZED));
    // The 401 is Kubernetes' Status.
    let raw = reqwest_like_get(&c, &expired).await;
    assert_eq!(raw.0, 401);
    assert_eq!(raw.1["reason"], "Unauthorized");
    assert_eq!(raw.1["message"], "Unauthorized");

    // Bound to a pod: the claim names it, and the token dies with it.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "robots");
    let holder: Pod = serde_json::from_value(json!({"metadata": {"name": "holder"},
        "spec": {"serviceAccountName": "bot", "containers": [{"name": "c", "image": "x"}]}}))
    .unwrap();
    let holder = pods.create(&PostParams::default(), &holder).await.unwrap();
    let bound = ok(
        &c,
        33,
        &[
            "create",
            "token",
            "bot",
            "-n",
            "robots",
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            "holder",
        ],
    );
    let bound = bound.trim();
    assert_eq!(
        claims(bound)["kubernetes.io"]["pod"],
        json!({"name": "holder", "uid": holder.metadata.uid.clone().unwrap()})
    );
    assert!(get_pods_as(&c, 33, bound, "robots")
        .unwrap()
        .contains("pod/holder"));
    assert!(fails(
        &c,
        33,
        &[
            "create", "token", "default", "-n", "robots",
            "--bound-object-kind", "Pod", "--bound-object-name", "holder",
        ],
    )
    .contains(r#"error: failed to create token: cannot bind token for serviceaccount "default" to pod running with different serviceaccount name."#));
    pods.delete("holder", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    converge("holder gone", 10, async || {
        pods.get_opt("holder").await.unwrap().is_none()
    })
    .await;
    assert!(get_pods_as(&c, 33, bound, "robots")
        .unwrap_err()
        .contains(UNAUTHORIZED));
    // The unbound token still works, until its account goes.
    assert!(get_pods_as(&c, 33, &token, "robots").is_ok());
    ok(&c, 33, &["delete", "serviceaccount", "bot", "-n", "robots"]);
    assert!(get_pods_as(&c, 33, &token, "robots")
        .unwrap_err()
        .contains(UNAUTHORIZED));
    // A new account of the same name is another account: the old token stays dead.
    ok(&c, 33, &["create", "serviceaccount", "bot", "-n", "robots"]);
    assert!(get_pods_as(&c, 33, &token, "robots")
        .unwrap_err()
        .contains(UNAUTHORIZED));
}

/// GET of the pod list with `token`, over a client of our own: the status code and the body.
async fn reqwest_like_get(c: &Cluster, token: &str) -> (u16, Value) {
    let kc = kube::config::Kubeconfig::read_from(&c.kubeconfig).unwrap();
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    cfg.auth_info.token = Some(token.to_string().into());
    cfg.default_retry = false;
    let client = kube::Client::try_from(cfg).unwrap();
    let req = axum::http::Request::get("/api/v1/namespaces/robots/pods")
        .body(Vec::new())
        .unwrap();
    match client.request_text(req).await {
        Ok(body) => (200, serde_json::from_str(&body).unwrap_or(Value::Null)),
        Err(kube::Error::Api(s)) => (s.code, json!({"reason": s.reason, "message": s.message})),
        Err(e) => panic!("request failed: {e}"),
    }
}

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: NAME}
spec:
  EXTRA
  containers:
  - name: app
    image: busybox
  initContainers:
  - name: setup
    image: busybox
"#;

fn pod_yaml(name: &str, extra: &str) -> String {
    POD.replace("NAME", name).replace("EXTRA", extra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_gives_pods_their_account_and_token_volume() {
    let test = "admission_gives_pods_their_account_and_token_volume";
    if !have_kubectl(test, 33) {
        return;
    }
    let c = Cluster::start().await;
    let client = c.kube().await;
    let _cm = controllers(&c, client.clone());
    ok(&c, 33, &["create", "namespace", "apps"]);
    namespace_ready(&c, &client, "apps").await;
    let create = |yaml: String| {
        tokio::task::block_in_place(|| {
            c.kubectl_stdin(33, &["create", "-n", "apps", "-f", "-"], Some(&yaml))
        })
    };
    let get = |name: &str| -> Value {
        serde_json::from_str(&ok(
            &c,
            33,
            &["get", "pod", name, "-n", "apps", "-o", "json"],
        ))
        .unwrap()
    };

    assert!(create(pod_yaml("plain", "")).status.success());
    let p = get("plain");
    assert_eq!(p["spec"]["serviceAccountName"], "default");
    let vols = p["spec"]["volumes"].as_array().unwrap();
    assert_eq!(vols.len(), 1);
    let vname = vols[0]["name"].as_str().unwrap();
    assert!(
        vname.starts_with("kube-api-access-") && vname.len() == 21,
        "{vname}"
    );
    assert_eq!(
        vols[0]["projected"],
        json!({"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace",
                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]})
    );
    for list in ["containers", "initContainers"] {
        assert_eq!(
            p["spec"][list][0]["volumeMounts"],
            json!([{"name": vname, "readOnly": true, "mountPath": MOUNT}]),
            "{list}"
        );
    }

    // Opting out, on the pod or on its account.
    assert!(
        create(pod_yaml("optout", "automountServiceAccountToken: false"))
            .status
            .success()
    );
    assert!(get("optout")["spec"]["volumes"].is_null());
    let quiet = "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: quiet}\nautomountServiceAccountToken: false\nimagePullSecrets: [{name: regcred}]\n";
    assert!(create(quiet.to_string()).status.success());
    assert!(create(pod_yaml("quiet", "serviceAccountName: quiet"))
        .status
        .success());
    let q = get("quiet");
    assert!(q["spec"]["volumes"].is_null());
    assert_eq!(q["spec"]["imagePullSecrets"], json!([{"name": "regcred"}]));
    // The pod's own choice wins over its account's.
    assert!(create(pod_yaml(
        "insist",
        "serviceAccountName: quiet\n  automountServiceAccountToken: true"
    ))
    .status
    .success());
    assert_eq!(
        get("insist")["spec"]["volumes"].as_array().unwrap().len(),
        1
    );

    // An account that does not exist.
    let out = create(pod_yaml("lost", "serviceAccountName: nope"));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains(
        r#"Error from server (Forbidden): error when creating "STDIN": pods "lost" is forbidden: error looking up service account apps/nope: serviceaccount "nope" not found"#
    ), "{}", text(&out.stderr));

    // What the controllers keep: a deleted default account and CA ConfigMap come back.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "apps");
    let old = sas.get("default").await.unwrap().metadata.uid;
    ok(&c, 33, &["delete", "sa", "default", "-n", "apps"]);
    converge("a new default ServiceAccount", 20, async || {
        sas.get_opt("default")
            .await
            .unwrap()
            .is_some_and(|s| s.metadata.uid != old)
    })
    .await;
    ok(
        &c,
        33,
        &["delete", "configmap", "kube-root-ca.crt", "-n", "apps"],
    );
    namespace_ready(&c, &client, "apps").await;
    // And a namespace made later gets both too.
    ok(&c, 33, &["create", "namespace", "later"]);
    namespace_ready(&c, &client, "later").await;
}

/// The cluster's CA (DER), as the agent reads it from its kubeconfig.
fn cluster_ca(c: &Cluster) -> Vec<Vec<u8>> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    tokio_rustls::rustls::pki_types::CertificateDer::pem_file_iter(
        c.dir.path().join("certs/ca.crt"),
    )
    .unwrap()
    .map(|c| c.unwrap().to_vec())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_reads_its_token_ca_and_namespace_and_its_token_lists_pods() {
    let test = "a_pod_reads_its_token_ca_and_namespace_and_its_token_lists_pods";
    if !common::can_run(test) || !have_kubectl(test, 33) {
        return;
    }
    let c = Cluster::start().await;
    let client = c.kube().await;
    let _cm = controllers(&c, client.clone());
    namespace_ready(&c, &client, "default").await;
    let node = AgentNode::new("satoken");
    let name = format!("agent-sa-{}", std::process::id());
    let _agent = node.agent_with_ca(client.clone(), &name, cluster_ca(&c));
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": "reader"},
        "spec": {"nodeName": name, "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": "/", "command": ["/bin/sh", "-c", "exec sleep 300"]}]},
    }))
    .unwrap();
    let created = pods.create(&PostParams::default(), &p).await.unwrap();
    let uid = created.metadata.uid.clone().unwrap();
    converge("reader running", 30, async || {
        let p = pods.get("reader").await.unwrap();
        p.status.and_then(|s| s.phase).as_deref() == Some("Running")
    })
    .await;

    let cat = |file: &str| {
        ok(
            &c,
            33,
            &["exec", "reader", "--", "cat", &format!("{MOUNT}/{file}")],
        )
    };
    assert_eq!(cat("namespace"), "default");
    assert_eq!(cat("ca.crt"), ca_pem(&c));
    let token = cat("token");
    let cl = claims(&token);
    assert_eq!(cl["sub"], "system:serviceaccount:default:default");
    assert_eq!(
        cl["kubernetes.io"]["pod"],
        json!({"name": "reader", "uid": uid})
    );
    assert_eq!(cl["kubernetes.io"]["node"]["name"], json!(name));
    assert_eq!(
        cl["exp"].as_i64().unwrap() - cl["iat"].as_i64().unwrap(),
        3607
    );

    // The mount is read-only, and the API server's address is in the environment.
    let out = kubectl(
        &c,
        33,
        &[
            "exec",
            "reader",
            "--",
            "sh",
            "-c",
            &format!("echo x > {MOUNT}/token"),
        ],
    );
    assert!(!out.status.success(), "the token volume is writable");
    assert_eq!(
        ok(
            &c,
            33,
            &[
                "exec",
                "reader",
                "--",
                "sh",
                "-c",
                "echo $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"
            ]
        )
        .trim(),
        "10.96.0.1:443"
    );

    // What a client in the pod would send: the token lists the pods of its namespace.
    // With RBAC, reading takes a role: the namespace's `view`, as an operator would grant it.
    ok(
        &c,
        33,
        &[
            "create",
            "rolebinding",
            "default-view",
            "-n",
            "default",
            "--clusterrole=view",
            "--serviceaccount=default:default",
        ],
    );
    let listed = eventually("the binding taking effect", 10, || async {
        get_pods_as(&c, 33, &token, "default").ok()
    })
    .await;
    assert!(listed.contains("pod/reader"), "{listed}");
    // An in-cluster client trusts only the pod's ca.crt and asks for the name it knows the
    // server by: the certificate checks out and the token lists pods.
    let in_cluster = {
        use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer};
        let ca: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(cat("ca.crt").as_bytes())
            .map(|c| c.unwrap().to_vec())
            .collect();
        let mut cfg = kube::Config::new(c.url().parse().unwrap());
        cfg.root_cert = Some(ca);
        cfg.tls_server_name = Some("kubernetes.default.svc".into());
        cfg.auth_info.token = Some(token.clone().into());
        cfg.default_retry = false;
        kube::Client::try_from(cfg).unwrap()
    };
    let seen = Api::<Pod>::namespaced(in_cluster, "default")
        .list(&Default::default())
        .await
        .expect("the in-cluster client lists pods");
    assert!(seen
        .items
        .iter()
        .any(|p| p.metadata.name.as_deref() == Some("reader")));

    // The token ends with its pod.
    pods.delete("reader", &DeleteParams::default())
        .await
        .unwrap();
    converge("reader gone", 30, async || {
        pods.get_opt("reader").await.unwrap().is_none()
    })
    .await;
    assert!(get_pods_as(&c, 33, &token, "default")
        .unwrap_err()
        .contains(UNAUTHORIZED));
}

/// `kubectl auth can-i` for `args`, answered for the caller `who` (`--token T` or `--as U`):
/// "yes" or "no".
fn can_i(c: &Cluster, who: &[&str], args: &[&str]) -> String {
    let mut all = who.to_vec();
    all.extend(["auth", "can-i"]);
    all.extend(args);
    text(&kubectl(c, 33, &all).stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_token_is_confined_to_what_its_roles_allow() {
    let test = "a_service_account_token_is_confined_to_what_its_roles_allow";
    if !have_kubectl(test, 33) {
        return;
    }
    let c = Cluster::start().await;
    let client = c.kube().await;
    let _cm = controllers(&c, client.clone());
    for ns in ["a", "b"] {
        ok(&c, 33, &["create", "namespace", ns]);
        namespace_ready(&c, &client, ns).await;
    }
    ok(&c, 33, &["create", "serviceaccount", "app", "-n", "a"]);
    ok(
        &c,
        33,
        &[
            "create",
            "secret",
            "generic",
            "s",
            "-n",
            "b",
            "--from-literal=k=v",
        ],
    );
    ok(
        &c,
        33,
        &["run", "p", "-n", "a", "--image=busybox", "--restart=Never"],
    );
    let token = ok(&c, 33, &["create", "token", "app", "-n", "a"]);
    let token = token.trim();
    let user = "system:serviceaccount:a:app";

    // Authenticated, but no role yet: nothing to read.
    assert_eq!(
        get_pods_as(&c, 33, token, "a").unwrap_err().trim(),
        format!(
            "Error from server (Forbidden): pods is forbidden: User \"{user}\" cannot list \
             resource \"pods\" in API group \"\" in the namespace \"a\""
        )
    );
    ok(
        &c,
        33,
        &[
            "create",
            "role",
            "pod-reader",
            "-n",
            "a",
            "--verb=get,list,watch",
            "--resource=pods",
        ],
    );
    ok(
        &c,
        33,
        &[
            "create",
            "rolebinding",
            "app-reads-pods",
            "-n",
            "a",
            "--role=pod-reader",
            "--serviceaccount=a:app",
        ],
    );
    let listed = eventually("the binding taking effect", 10, || async {
        get_pods_as(&c, 33, token, "a").ok()
    })
    .await;
    assert!(listed.contains("pod/p"), "{listed}");

    // Everything else stays refused, in Kubernetes' words.
    let secrets = kubectl(&c, 33, &["--token", token, "get", "secrets", "-n", "b"]);
    assert_eq!(
        text(&secrets.stderr).trim(),
        format!(
            "Error from server (Forbidden): secrets is forbidden: User \"{user}\" cannot list \
             resource \"secrets\" in API group \"\" in the namespace \"b\""
        )
    );
    let secret = kubectl(&c, 33, &["--token", token, "get", "secret", "s", "-n", "b"]);
    assert!(
        text(&secret.stderr).contains(&format!(
            "secrets \"s\" is forbidden: User \"{user}\" cannot get resource \"secrets\" in API \
             group \"\" in the namespace \"b\""
        )),
        "{}",
        text(&secret.stderr)
    );
    assert!(get_pods_as(&c, 33, token, "b").is_err());
    let delete = kubectl(&c, 33, &["--token", token, "delete", "pod", "p", "-n", "a"]);
    assert!(
        text(&delete.stderr).contains("cannot delete resource \"pods\""),
        "{}",
        text(&delete.stderr)
    );

    // can-i, asked by the token itself and by the admin impersonating the account, answers what
    // was enforced above.
    let cases: [(&[&str], &str); 5] = [
        (&["list", "pods", "-n", "a"], "yes"),
        (&["get", "pods/p", "-n", "a"], "yes"),
        (&["delete", "pods", "-n", "a"], "no"),
        (&["list", "secrets", "-n", "b"], "no"),
        (&["list", "pods", "-n", "b"], "no"),
    ];
    for (args, want) in cases {
        assert_eq!(can_i(&c, &["--token", token], args), want, "self: {args:?}");
        let who = format!("--as={user}");
        assert_eq!(can_i(&c, &[&who], args), want, "--as: {args:?}");
    }
    let whoami = ok(
        &c,
        33,
        &[
            "--token",
            token,
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
    );
    assert_eq!(whoami.trim(), user);
}
