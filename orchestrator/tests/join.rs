//! Joining nodes with bootstrap tokens, through the real API server and the real command line:
//! `token create --print-join-command` prints a command whose CA pin is the one openssl computes;
//! the signer signs kube-public's cluster-info for each token, so discovery trusts the CA only with
//! the right token and pin; the token authenticates until it is deleted or expires, and expired
//! tokens are cleaned up; and (root) `agent --join` brings a real node into the cluster that runs a
//! pod.

use crate::common;
use crate::kube_api;

use std::process::{Command, Stdio};
use std::time::Duration;

use cairn_orchestrator::agent::join::{self, JoinError};
use cairn_orchestrator::bootstrap::{Token, TokenError};
use cairn_orchestrator::controllers;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube_api::{converge, eventually, Cluster};
use serde_json::json;

fn token_cmd(c: &Cluster, args: &[&str]) -> String {
    let out = Command::new(common::HELPER)
        .arg("token")
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .args(args)
        .output()
        .expect("run cairn-orchestrator token");
    assert!(
        out.status.success(),
        "token {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A cluster with the signer running and cluster-info published, as `up` has it.
async fn cluster() -> (Cluster, kube::Client, String) {
    let c = Cluster::start().await;
    let admin = c.kube().await;
    let ca_pem = std::fs::read_to_string(c.dir.path().join("certs/ca.crt")).unwrap();
    controllers::bootstrap::publish_cluster_info(&admin, &c.url(), &ca_pem)
        .await
        .unwrap();
    let signer = admin.clone();
    tokio::spawn(async move {
        controllers::bootstrap::run(signer, std::future::pending()).await;
    });
    (c, admin, ca_pem)
}

/// `--token T --discovery-token-ca-cert-hash H` out of a printed join command.
fn parse_join(cmd: &str) -> (String, Token, String) {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let after = |flag: &str| {
        let i = words.iter().position(|w| *w == flag).expect(flag);
        words[i + 1].to_string()
    };
    assert_eq!(&words[..3], ["cairn-orchestrator", "agent", "--join"]);
    (
        after("--join"),
        Token::parse(&after("--token")).unwrap(),
        after("--discovery-token-ca-cert-hash"),
    )
}

/// A client that presents `token`, trusting the cluster's CA.
async fn client_with(c: &Cluster, ca_pem: &str, token: &str) -> kube::Client {
    let path = c.dir.path().join(format!("kc-{}", fastrand::u32(..)));
    std::fs::write(
        &path,
        cairn_orchestrator::client::kubeconfig(&c.url(), ca_pem, "u", token),
    )
    .unwrap();
    let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    cfg.default_retry = false;
    kube::Client::try_from(cfg).unwrap()
}

async fn status_of(client: &kube::Client) -> u16 {
    match Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(_) => 200,
        Err(kube::Error::Api(e)) => e.code,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_sign_cluster_info_and_authenticate_until_deleted_or_expired() {
    let (c, admin, ca_pem) = cluster().await;
    let printed = token_cmd(&c, &["create", "--print-join-command"]);
    let (url, token, pin) = parse_join(&printed);
    assert_eq!(url, c.url());

    // The pin is kubeadm's: the SHA-256 of the CA's DER public key, as openssl computes it.
    let openssl = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -pubkey -noout -in {} | openssl pkey -pubin -outform der | sha256sum",
            c.dir.path().join("certs/ca.crt").display()
        ))
        .stderr(Stdio::null())
        .output();
    match openssl {
        Ok(o) if o.status.success() && o.stdout.len() >= 64 => {
            let hex = String::from_utf8_lossy(&o.stdout[..64]).to_string();
            assert_eq!(pin, format!("sha256:{hex}"));
        }
        _ => println!("openssl is not installed: the pin is checked against discovery only"),
    }

    // Discovery succeeds once the signer has signed cluster-info for this token.
    let found = eventually("discovery with the new token", 10, || {
        let (url, token, pin) = (url.clone(), token.clone(), pin.clone());
        async move { join::discover(&url, &token, &[pin], false).await.ok() }
    })
    .await;
    assert_eq!(found.ca_pem, ca_pem);

    // The wrong secret for the same id, a wrong pin, and no pin at all are all refused.
    let forged = Token {
        id: token.id.clone(),
        secret: "0000000000000000".into(),
    };
    let err = join::discover(&url, &forged, std::slice::from_ref(&pin), false)
        .await
        .unwrap_err();
    assert!(
        matches!(err, JoinError::Token(TokenError::BadSignature)),
        "{err}"
    );
    let unknown = Token::generate();
    let err = join::discover(&url, &unknown, std::slice::from_ref(&pin), false)
        .await
        .unwrap_err();
    assert!(
        matches!(err, JoinError::Token(TokenError::NoSignature(_))),
        "{err}"
    );
    let wrong_pin = format!("sha256:{}", "0".repeat(64));
    let err = join::discover(&url, &token, &[wrong_pin], false)
        .await
        .unwrap_err();
    assert!(
        matches!(err, JoinError::Token(TokenError::PinMismatch { .. })),
        "{err}"
    );
    let err = join::discover(&url, &token, &[], false).await.unwrap_err();
    assert!(matches!(err, JoinError::NoPins), "{err}");
    join::discover(&url, &token, &[], true).await.unwrap();

    // The written kubeconfig authenticates as the token's bootstrap user.
    let kc_path = c.dir.path().join("joined/kubeconfig");
    join::write_kubeconfig(&kc_path, &found, &token).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&kc_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let joined = cairn_orchestrator::client::from_kubeconfig(
        &kc_path,
        cairn_orchestrator::client::Throttle { qps: 0.0, burst: 0 },
    )
    .await
    .unwrap();
    assert_eq!(status_of(&joined).await, 200);
    assert_eq!(
        status_of(&client_with(&c, &ca_pem, &forged.to_string()).await).await,
        401
    );

    // Without credentials only cluster-info can be read.
    let mut cfg = kube::Config::new(c.url().parse().unwrap());
    cfg.root_cert = Some(found.ca_der.clone());
    cfg.default_retry = false;
    let anon = kube::Client::try_from(cfg).unwrap();
    let info = Api::<ConfigMap>::namespaced(anon.clone(), "kube-public")
        .get("cluster-info")
        .await
        .unwrap();
    assert!(info
        .data
        .unwrap()
        .contains_key(&format!("jws-kubeconfig-{}", token.id)));
    assert_eq!(status_of(&anon).await, 401);

    // `token list` shows it in kubeadm's columns.
    let list = token_cmd(&c, &["list"]);
    let line = list
        .lines()
        .find(|l| l.starts_with(&token.to_string()))
        .unwrap_or_else(|| panic!("token missing from:\n{list}"));
    assert!(line.contains("authentication,signing"), "{line}");
    assert!(
        line.contains("system:bootstrappers:kubeadm:default-node-token"),
        "{line}"
    );
    assert!(line.contains("23h") || line.contains("24h"), "{line}");

    // Deleted: it stops authenticating (within the 5 s the server trusts a checked token) and its
    // signature leaves cluster-info.
    let out = token_cmd(&c, &["delete", &token.id]);
    assert!(out.contains("deleted"), "{out}");
    converge("the deleted token to stop authenticating", 10, async || {
        status_of(&joined).await == 401
    })
    .await;
    let infos: Api<ConfigMap> = Api::namespaced(admin.clone(), "kube-public");
    converge("the deleted token's signature to go", 10, async || {
        let d = infos.get("cluster-info").await.unwrap().data.unwrap();
        !d.contains_key(&format!("jws-kubeconfig-{}", token.id)) && d.contains_key("kubeconfig")
    })
    .await;

    // Expired: refused, and the cleaner deletes its Secret.
    let short = token_cmd(&c, &["create", "--ttl", "3s"]);
    let short = Token::parse(short.trim()).unwrap();
    let short_client = client_with(&c, &ca_pem, &short.to_string()).await;
    assert_eq!(status_of(&short_client).await, 200);
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(admin.clone(), "kube-system");
    converge(
        "the expired token's Secret to be cleaned up",
        15,
        async || {
            secrets
                .get_opt(&short.secret_name())
                .await
                .unwrap()
                .is_none()
        },
    )
    .await;
    converge("the expired token to stop authenticating", 10, async || {
        status_of(&short_client).await == 401
    })
    .await;

    // Bad input gets kubeadm's words.
    let out = Command::new(common::HELPER)
        .args(["token", "--kubeconfig"])
        .arg(&c.kubeconfig)
        .args(["create", "not-a-token"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("[a-z0-9]{6}.[a-z0-9]{16}"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_joins_with_a_token_and_runs_a_pod() {
    if !common::can_run("an_agent_joins_with_a_token_and_runs_a_pod") {
        return;
    }
    let (c, admin, _) = cluster().await;
    let (url, token, pin) = parse_join(&token_cmd(&c, &["create", "--print-join-command"]));
    let infos: Api<ConfigMap> = Api::namespaced(admin.clone(), "kube-public");
    converge("cluster-info to be signed", 10, async || {
        infos
            .get("cluster-info")
            .await
            .unwrap()
            .data
            .unwrap()
            .contains_key(&format!("jws-kubeconfig-{}", token.id))
    })
    .await;

    let id = std::process::id();
    let root = c.dir.path().join("agent");
    let node_name = format!("joined-{id}");
    let cgroup_parent = format!("cairn-join-{id}");
    let mut child = Command::new(common::HELPER)
        .arg("agent")
        .args(["--join", &url, "--token", &token.to_string()])
        .args(["--discovery-token-ca-cert-hash", &pin])
        .arg("--root-dir")
        .arg(&root)
        .args(["--node-name", &node_name, "--port", "0"])
        .args(["--cgroup-parent", &cgroup_parent])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start the agent");
    let guard = scopeguard(child.id(), root.clone(), cgroup_parent.clone());

    let nodes: Api<Node> = Api::all(admin.clone());
    converge("the joined node to be Ready", 30, async || {
        nodes
            .get_opt(&node_name)
            .await
            .ok()
            .flatten()
            .is_some_and(|n| {
                n.status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
    })
    .await;
    assert!(root.join("kubeconfig").exists());

    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "on-joined"},
        "spec": {"nodeName": node_name, "containers": [{"name": "c", "image": "/",
            "command": ["/bin/sh", "-c", "echo joined; sleep 600"]}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    converge("the pod on the joined node to run", 30, async || {
        pods.get("on-joined")
            .await
            .unwrap()
            .status
            .and_then(|s| s.phase)
            .as_deref()
            == Some("Running")
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    drop(guard);
    c.shutdown().await;
}

/// Stops the agent process and removes its pods and cgroups when the test ends, even on failure.
fn scopeguard(pid: u32, root: std::path::PathBuf, cgroup_parent: String) -> impl Drop {
    struct Guard(u32, std::path::PathBuf, String);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.0 as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            std::thread::sleep(Duration::from_millis(200));
            let mut cfg = cairn_orchestrator::runtime::RuntimeConfig::new(&self.1, common::HELPER);
            cfg.cgroup_parent = self.2.clone();
            // Its own thread: a runtime cannot be started from inside the test's.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Ok(runtime) = cairn_orchestrator::runtime::Runtime::new(cfg.clone()) {
                        for p in runtime.list().unwrap_or_default() {
                            let _ = runtime.remove_pod(&p.name).await;
                        }
                        let _ = runtime
                            .cgroups()
                            .remove(std::path::Path::new(&cfg.cgroup_parent));
                    }
                })
            })
            .join();
        }
    }
    Guard(pid, root, cgroup_parent)
}
