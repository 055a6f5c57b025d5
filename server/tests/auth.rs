//! etcd's auth, driven by the real `etcdctl` 3.4 (and raw gRPC where a client would hide what is
//! checked): users and roles, auth enable's preconditions, key permissions on reads, writes, txns
//! and watches, revocation on the next request, token expiry, client-certificate names, JWTs, and
//! auth state that survives a restart and is shared by a cluster.

use crate::common;

use std::time::{Duration, Instant};

use cairn_proto::etcdserverpb::auth_client::AuthClient;
use cairn_proto::etcdserverpb::kv_client::KvClient;
use cairn_proto::etcdserverpb::{AuthenticateRequest, RangeRequest};
use cairn_server::config::TlsInfo;
use common::etcd::{etcd_present, Etcd};
use common::etcdctl::{etcdctl_present, Ctl};
use common::pki::Ca;
use common::{connect, free_ports, leader_index, options, wait_serving, ProcessCluster, TestNode};
use tonic::transport::Channel;

/// bcrypt's cheapest cost: the tests hash many passwords and measure nothing about hashing.
const COST: u32 = 4;

async fn node() -> TestNode {
    TestNode::start_with(|mut c| {
        c.bcrypt_cost = COST;
        c
    })
    .await
}

/// Runs etcdctl with `user` (`name:password`) and `args`.
async fn as_user(ctl: &Ctl, user: &str, args: &[&str]) -> common::etcdctl::Out {
    let mut all = vec!["--user", user];
    all.extend_from_slice(args);
    ctl.run_with_input(&all, None).await
}

const ROOT: &str = "root:rootpw";
const ALICE: &str = "alice:alicepw";

/// Root (with the root role) and auth enabled, as an operator sets them up with etcdctl.
async fn enable_auth(ctl: &Ctl) {
    ctl.ok(&["user", "add", ROOT]).await;
    // etcdctl's `auth enable` adds and grants the root role when the server says it is missing.
    assert!(ctl
        .ok(&["auth", "enable"])
        .await
        .contains("Authentication Enabled"));
}

/// Alice, whose role `app-reader` reads keys under `/app/`.
async fn add_app_reader(ctl: &Ctl) {
    for args in [
        &["role", "add", "app-reader"][..],
        &[
            "role",
            "grant-permission",
            "app-reader",
            "read",
            "/app/",
            "--prefix",
        ],
        &["user", "add", ALICE],
        &["user", "grant-role", "alice", "app-reader"],
    ] {
        let out = as_user(ctl, ROOT, args).await;
        assert!(out.ok, "{args:?}: {}", out.stderr);
    }
}

async fn fails_with(ctl: &Ctl, user: Option<&str>, args: &[&str], text: &str) {
    let out = match user {
        Some(u) => as_user(ctl, u, args).await,
        None => ctl.run_with_input(args, None).await,
    };
    assert!(!out.ok, "{args:?} unexpectedly succeeded: {}", out.stdout);
    assert!(
        out.stderr.contains(text),
        "{args:?}: expected {text:?}, got {}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_roles_live_and_die_as_in_etcd() {
    if !etcdctl_present() {
        return;
    }
    let node = node().await;
    let ctl = Ctl {
        endpoint: node.url(),
    };
    fails_with(
        &ctl,
        None,
        &["auth", "enable"],
        "Error: etcdserver: root user does not exist",
    )
    .await;
    enable_auth(&ctl).await;
    fails_with(&ctl, None, &["get", "k"], "etcdserver: user name is empty").await;
    fails_with(
        &ctl,
        None,
        &["user", "add", "bob:x"],
        "etcdserver: user name is empty",
    )
    .await;
    fails_with(
        &ctl,
        Some("root:wrong"),
        &["get", "k"],
        "etcdserver: authentication failed, invalid user ID or password",
    )
    .await;
    fails_with(
        &ctl,
        Some("nobody:x"),
        &["get", "k"],
        "etcdserver: authentication failed, invalid user ID or password",
    )
    .await;
    add_app_reader(&ctl).await;
    let users = as_user(&ctl, ROOT, &["user", "list"]).await.stdout;
    assert_eq!(users, "alice\nroot\n");
    let roles = as_user(&ctl, ROOT, &["role", "list"]).await.stdout;
    assert_eq!(roles, "app-reader\nroot\n");
    let role = as_user(&ctl, ROOT, &["role", "get", "app-reader"])
        .await
        .stdout;
    assert!(role.contains("[/app/, /app0) (prefix /app/)"), "{role}");
    // Refusals of root's own requests, each in etcd 3.4's words.
    let refusals: [(&[&str], &str); 7] = [
        (
            &["user", "add", "alice:again"],
            "etcdserver: user name already exists",
        ),
        (
            &["role", "add", "app-reader"],
            "etcdserver: role name already exists",
        ),
        (
            &["user", "get", "nobody"],
            "etcdserver: user name not found",
        ),
        (
            &["role", "get", "nobody"],
            "etcdserver: role name not found",
        ),
        (
            &["user", "grant-role", "alice", "nobody"],
            "etcdserver: role name not found",
        ),
        (
            &["user", "revoke-role", "alice", "root"],
            "etcdserver: role is not granted to the user",
        ),
        (
            &["role", "revoke-permission", "app-reader", "/nope"],
            "etcdserver: permission is not granted to the role",
        ),
    ];
    for (args, text) in refusals {
        fails_with(&ctl, Some(ROOT), args, text).await;
    }
    for args in [
        &["user", "delete", "root"][..],
        &["role", "delete", "root"],
        &["user", "revoke-role", "root", "root"],
    ] {
        fails_with(
            &ctl,
            Some(ROOT),
            args,
            "etcdserver: invalid auth management",
        )
        .await;
    }
    // Only root manages auth; a user may still look itself and its roles up.
    fails_with(
        &ctl,
        Some(ALICE),
        &["user", "list"],
        "etcdserver: permission denied",
    )
    .await;
    let me = as_user(&ctl, ALICE, &["user", "get", "alice"]).await;
    assert!(me.stdout.contains("Roles: app-reader"), "{}", me.stderr);
    assert!(
        as_user(&ctl, ALICE, &["role", "get", "app-reader"])
            .await
            .ok
    );
    fails_with(
        &ctl,
        Some(ALICE),
        &["role", "get", "root"],
        "etcdserver: permission denied",
    )
    .await;
    // A new password replaces the old one; deleting a role takes it from its users.
    let out = ctl
        .run_with_input(
            &[
                "--user",
                ROOT,
                "user",
                "passwd",
                "alice",
                "--interactive=false",
            ],
            Some("newpw\n"),
        )
        .await;
    assert!(out.ok, "{}", out.stderr);
    fails_with(
        &ctl,
        Some(ALICE),
        &["get", "/app/x"],
        "authentication failed",
    )
    .await;
    assert!(as_user(&ctl, "alice:newpw", &["get", "/app/x"]).await.ok);
    assert!(
        as_user(&ctl, ROOT, &["role", "delete", "app-reader"])
            .await
            .ok
    );
    let alice = as_user(&ctl, ROOT, &["user", "get", "alice"]).await.stdout;
    assert!(!alice.contains("app-reader"), "{alice}");
    assert!(as_user(&ctl, ROOT, &["user", "delete", "alice"]).await.ok);
    // Disabled again, anyone may do anything.
    assert!(as_user(&ctl, ROOT, &["auth", "disable"]).await.ok);
    ctl.ok(&["put", "k", "v"]).await;
    assert_eq!(ctl.ok(&["user", "list"]).await, "root\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_reader_reads_its_prefix_only_and_loses_it_on_the_next_request() {
    if !etcdctl_present() {
        return;
    }
    let node = node().await;
    let ctl = Ctl {
        endpoint: node.url(),
    };
    enable_auth(&ctl).await;
    add_app_reader(&ctl).await;
    assert!(as_user(&ctl, ROOT, &["put", "/app/x", "1"]).await.ok);
    assert!(as_user(&ctl, ROOT, &["put", "/other/y", "2"]).await.ok);
    let got = as_user(&ctl, ALICE, &["get", "/app/", "--prefix"]).await;
    assert_eq!(got.stdout, "/app/x\n1\n", "{}", got.stderr);
    assert_eq!(
        as_user(&ctl, ALICE, &["get", "/app/x"]).await.stdout,
        "/app/x\n1\n"
    );
    let denied = "etcdserver: permission denied";
    fails_with(&ctl, Some(ALICE), &["put", "/app/x", "2"], denied).await;
    fails_with(&ctl, Some(ALICE), &["del", "/app/x"], denied).await;
    fails_with(&ctl, Some(ALICE), &["get", "/other/y"], denied).await;
    fails_with(&ctl, Some(ALICE), &["get", "/ap", "--prefix"], denied).await;
    fails_with(&ctl, Some(ALICE), &["get", "/app/", "--from-key"], denied).await;
    // Txn: every compare and every operation of both branches is checked, whichever runs.
    let txn = |input: &'static str| {
        let ctl = &ctl;
        async move {
            ctl.run_with_input(&["--user", ALICE, "txn"], Some(input))
                .await
        }
    };
    let read_only = txn("value(\"/app/x\") = \"1\"\n\nget /app/x\n\nget /app/y\n\n").await;
    assert!(read_only.ok, "{}", read_only.stderr);
    assert!(
        read_only.stdout.starts_with("SUCCESS"),
        "{}",
        read_only.stdout
    );
    let compare_elsewhere = txn("value(\"/other/y\") = \"2\"\n\nget /app/x\n\n\n").await;
    assert!(
        compare_elsewhere.stderr.contains(denied),
        "{}",
        compare_elsewhere.stderr
    );
    let write_in_failure = txn("value(\"/app/x\") = \"1\"\n\nget /app/x\n\nput /app/x 9\n\n").await;
    assert!(
        write_in_failure.stderr.contains(denied),
        "{}",
        write_in_failure.stderr
    );
    // A watch on a key alice cannot read is refused as etcd refuses it.
    let watch = as_user(&ctl, ALICE, &["watch", "/other/y"]).await;
    assert!(
        watch.stderr.contains(
            "watch was canceled (rpc error: code = PermissionDenied desc = etcdserver: permission denied)"
        ),
        "{} / {}",
        watch.stdout,
        watch.stderr
    );
    // etcdctl's lock recipe (lease, txn, range, watch) needs write access to the lock's keys.
    fails_with(
        &ctl,
        Some(ALICE),
        &["lock", "/app/l", "echo", "held"],
        denied,
    )
    .await;
    fails_with(
        &ctl,
        None,
        &["lock", "/app/l", "echo", "held"],
        "etcdserver: user name is empty",
    )
    .await;
    let locked = as_user(&ctl, ROOT, &["lock", "/app/l", "echo", "held"]).await;
    assert_eq!(locked.stdout, "held\n", "{}", locked.stderr);
    // Revoked: the very next request is refused.
    let revoke = as_user(
        &ctl,
        ROOT,
        &[
            "role",
            "revoke-permission",
            "app-reader",
            "/app/",
            "--prefix",
        ],
    )
    .await;
    assert!(revoke.ok, "{}", revoke.stderr);
    fails_with(&ctl, Some(ALICE), &["get", "/app/x"], denied).await;
    // Granted write on one key: a put there works, a put beside it does not.
    let grant = as_user(
        &ctl,
        ROOT,
        &[
            "role",
            "grant-permission",
            "app-reader",
            "readwrite",
            "/app/x",
        ],
    )
    .await;
    assert!(grant.ok, "{}", grant.stderr);
    assert!(as_user(&ctl, ALICE, &["put", "/app/x", "3"]).await.ok);
    fails_with(&ctl, Some(ALICE), &["put", "/app/xy", "3"], denied).await;
}

async fn authenticate(url: &str, name: &str, password: &str) -> Result<String, tonic::Status> {
    let mut auth = AuthClient::connect(url.to_string()).await.expect("connect");
    auth.authenticate(AuthenticateRequest {
        name: name.into(),
        password: password.into(),
    })
    .await
    .map(|r| r.into_inner().token)
}

/// A linearizable Range of `key` with `token` in the request metadata.
async fn get_with_token(
    kv: &mut KvClient<Channel>,
    token: &str,
    key: &str,
) -> Result<i64, tonic::Status> {
    let mut req = tonic::Request::new(RangeRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("token", token.parse().expect("ascii token"));
    kv.range(req).await.map(|r| r.into_inner().count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_tokens_expire_unless_used() {
    if !etcdctl_present() {
        return;
    }
    let node = TestNode::start_with(|mut c| {
        c.bcrypt_cost = COST;
        c.auth_token_ttl = Duration::from_secs(2);
        c
    })
    .await;
    let ctl = Ctl {
        endpoint: node.url(),
    };
    enable_auth(&ctl).await;
    let token = authenticate(&node.url(), "root", "rootpw").await.unwrap();
    let mut kv = KvClient::connect(node.url()).await.unwrap();
    // Used every second, the token outlives its TTL several times over.
    for _ in 0..5 {
        get_with_token(&mut kv, &token, "k")
            .await
            .expect("live token");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let err = get_with_token(&mut kv, &token, "k").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert_eq!(err.message(), "etcdserver: invalid auth token");
    let err = get_with_token(&mut kv, "made.up", "k").await.unwrap_err();
    assert_eq!(err.message(), "etcdserver: invalid auth token");
    // Authenticate while auth is disabled.
    assert!(as_user(&ctl, ROOT, &["auth", "disable"]).await.ok);
    let err = authenticate(&node.url(), "root", "rootpw")
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (
            tonic::Code::FailedPrecondition,
            "etcdserver: authentication is not enabled"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_names_its_user() {
    if !etcdctl_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let server = ca.issue(dir.path(), "server");
    let root = ca.issue(dir.path(), "root");
    let alice = ca.issue(dir.path(), "alice");
    let (ca_cert, server_pair) = (ca.cert.clone(), server);
    let node = TestNode::start_with(move |mut c| {
        c.bcrypt_cost = COST;
        c.listen_client_urls = vec!["https://127.0.0.1:0".into()];
        c.client_tls = TlsInfo {
            cert_file: Some(server_pair.cert),
            key_file: Some(server_pair.key),
            trusted_ca_file: Some(ca_cert),
            client_cert_auth: true,
            auto_tls: false,
        };
        c
    })
    .await;
    let s = |p: &std::path::Path| p.display().to_string();
    let with_cert = |pair: &common::pki::Pair| {
        vec![
            format!("--cacert={}", s(&ca.cert)),
            format!("--cert={}", s(&pair.cert)),
            format!("--key={}", s(&pair.key)),
        ]
    };
    let ctl = Ctl {
        endpoint: node.url(),
    };
    let run = |flags: Vec<String>, args: &'static [&'static str]| {
        let ctl = &ctl;
        async move {
            let mut all: Vec<&str> = flags.iter().map(String::as_str).collect();
            all.extend_from_slice(args);
            ctl.run_with_input(&all, None).await
        }
    };
    for args in [
        &["user", "add", "root", "--new-user-password=rootpw"][..],
        &["auth", "enable"],
        &["user", "add", "alice", "--new-user-password=alicepw"],
        &["role", "add", "app-reader"],
        &[
            "role",
            "grant-permission",
            "app-reader",
            "read",
            "/app/",
            "--prefix",
        ],
        &["user", "grant-role", "alice", "app-reader"],
        &["put", "/app/x", "1"],
    ] {
        let out = run(with_cert(&root), args).await;
        assert!(out.ok, "{args:?} as root's certificate: {}", out.stderr);
    }
    let got = run(with_cert(&alice), &["get", "/app/x"]).await;
    assert_eq!(got.stdout, "/app/x\n1\n", "{}", got.stderr);
    let put = run(with_cert(&alice), &["put", "/app/x", "2"]).await;
    assert!(
        put.stderr.contains("etcdserver: permission denied"),
        "{}",
        put.stderr
    );
    let list = run(with_cert(&alice), &["user", "list"]).await;
    assert!(
        list.stderr.contains("etcdserver: permission denied"),
        "{}",
        list.stderr
    );

    // A certificate naming no user, with `--user`: the token's user is who acts (etcdctl 3.4
    // --cacert --cert --key --user against a TLS + auth member).
    let stranger = ca.issue(dir.path(), "stranger");
    let as_alice = |args: &'static [&'static str]| {
        let mut flags = with_cert(&stranger);
        flags.push("--user=alice:alicepw".into());
        run(flags, args)
    };
    let got = as_alice(&["get", "/app/x"]).await;
    assert_eq!(got.stdout, "/app/x\n1\n", "{}", got.stderr);
    for args in [&["put", "/app/x", "3"][..], &["get", "/other/x"]] {
        let out = as_alice(args).await;
        assert!(
            out.stderr.contains("etcdserver: permission denied"),
            "{args:?}: {}",
            out.stderr
        );
    }
    let nobody = run(with_cert(&stranger), &["get", "/app/x"]).await;
    assert!(
        nobody.stderr.contains("etcdserver: permission denied"),
        "{}",
        nobody.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_tokens_name_the_user_and_its_auth_revision() {
    if !etcdctl_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let (private, public) = (dir.path().join("jwt.key"), dir.path().join("jwt.pub"));
    std::fs::write(&private, key.serialize_pem()).unwrap();
    std::fs::write(&public, key.public_key_pem()).unwrap();
    let spec = format!(
        "jwt,pub-key={},priv-key={},sign-method=ES256,ttl=1m",
        public.display(),
        private.display()
    );
    let node = TestNode::start_with(move |mut c| {
        c.bcrypt_cost = COST;
        c.auth_token = spec;
        c
    })
    .await;
    let ctl = Ctl {
        endpoint: node.url(),
    };
    enable_auth(&ctl).await;
    add_app_reader(&ctl).await;
    let token = authenticate(&node.url(), "alice", "alicepw").await.unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token}");
    let claims = decode_base64url(parts[1]);
    let claims: serde_json::Value = serde_json::from_slice(&claims).unwrap();
    assert_eq!(claims["username"], "alice");
    let revision = claims["revision"].as_u64().expect("revision claim");
    assert!(claims["exp"].as_u64().is_some());
    let mut kv = KvClient::connect(node.url()).await.unwrap();
    get_with_token(&mut kv, &token, "/app/x")
        .await
        .expect("JWT accepted");
    // A JWT carries the auth revision it was issued at: after any auth change it is stale.
    assert!(as_user(&ctl, ROOT, &["role", "add", "other"]).await.ok);
    let err = get_with_token(&mut kv, &token, "/app/x").await.unwrap_err();
    assert_eq!(err.message(), "etcdserver: revision of auth store is old");
    let fresh = authenticate(&node.url(), "alice", "alicepw").await.unwrap();
    let claims: serde_json::Value =
        serde_json::from_slice(&decode_base64url(fresh.split('.').nth(1).unwrap())).unwrap();
    assert_eq!(claims["revision"].as_u64(), Some(revision + 1));
    get_with_token(&mut kv, &fresh, "/app/x")
        .await
        .expect("fresh JWT");
    // A token signed by anyone else is refused.
    let forged = format!("{}.{}.{}", parts[0], parts[1], "AAAA");
    let err = get_with_token(&mut kv, &forged, "/app/x")
        .await
        .unwrap_err();
    assert_eq!(err.message(), "etcdserver: invalid auth token");
    // etcdctl works unchanged with JWTs.
    assert!(as_user(&ctl, ALICE, &["get", "/app/x"]).await.ok);
}

fn decode_base64url(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let v = ALPHABET.iter().position(|&a| a == c).expect("base64url") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_shares_users_and_tokens_and_keeps_them_across_a_restart() {
    if !etcdctl_present() {
        return;
    }
    let mut cluster = ProcessCluster::start_with(3, &["--bcrypt-cost", "4"]);
    wait_serving(&cluster, &[0, 1, 2]).await;
    let urls = cluster.endpoints();
    let ctl = |i: usize| Ctl {
        endpoint: urls[i].clone(),
    };
    enable_auth(&ctl(0)).await;
    add_app_reader(&ctl(0)).await;
    assert!(as_user(&ctl(0), ROOT, &["put", "/app/x", "1"]).await.ok);
    // Added through member 0, alice authenticates on member 2.
    let got = as_user(&ctl(2), ALICE, &["get", "/app/x"]).await;
    assert_eq!(got.stdout, "/app/x\n1\n", "{}", got.stderr);
    // A simple token issued by member 0 works on member 1 at once: issuance is replicated, and a
    // member that has not applied it yet catches up before refusing it.
    for i in 0..5 {
        let token = authenticate(&urls[0], "alice", "alicepw").await.unwrap();
        let mut kv1 = KvClient::connect(urls[1].clone()).await.unwrap();
        let count = get_with_token(&mut kv1, &token, "/app/x")
            .await
            .unwrap_or_else(|e| panic!("member 1 refused member 0's token (try {i}): {e}"));
        assert_eq!(count, 1);
    }
    // etcdctl with every endpoint.
    let all = Ctl {
        endpoint: cluster.endpoints().join(","),
    };
    fails_with(
        &all,
        Some(ALICE),
        &["put", "/app/x", "2"],
        "etcdserver: permission denied",
    )
    .await;
    // Restarted, member 1 still knows alice and her permissions.
    cluster.kill(1);
    cluster.spawn(1);
    // Serving again once root's linearizable read through it succeeds.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !as_user(&ctl(1), ROOT, &["get", "probe"]).await.ok {
        assert!(
            Instant::now() < deadline,
            "member 1 did not serve again: {}",
            cluster.log_of(1)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let got = as_user(&ctl(1), ALICE, &["get", "/app/x", "--consistency=s"]).await;
    assert_eq!(got.stdout, "/app/x\n1\n", "{}", got.stderr);
    fails_with(
        &ctl(1),
        Some(ALICE),
        &["get", "/other"],
        "etcdserver: permission denied",
    )
    .await;
    fails_with(
        &ctl(1),
        None,
        &["get", "/app/x"],
        "etcdserver: user name is empty",
    )
    .await;
}

/// A linearizable read is judged by the auth state it reads at: through a follower, right after
/// auth was enabled through it, a read without credentials is refused, never served unchecked
/// because the follower had not applied the enabling when the read arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_right_after_auth_is_enabled_through_a_follower_is_checked() {
    let cluster = ProcessCluster::start_with(3, &["--bcrypt-cost", "4"]);
    wait_serving(&cluster, &[0, 1, 2]).await;
    let follower = (leader_index(&cluster, &[0, 1, 2]).await + 1) % 3;
    let url = cluster.members[follower].url();
    let mut c = connect(&url).await.expect("connect");
    c.user_add("root", "rootpw", None).await.unwrap();
    c.role_add("root").await.unwrap();
    c.user_grant_role("root", "root").await.unwrap();
    let as_root = options().with_user("root", "rootpw");
    for round in 0..10 {
        c.auth_enable().await.unwrap();
        match c.get("k", None).await {
            Err(e) => assert!(
                e.to_string().contains("user name is empty"),
                "round {round}: {e}"
            ),
            Ok(r) => panic!("round {round}: read without credentials served: {r:?}"),
        }
        let mut root = etcd_client::Client::connect([url.clone()], Some(as_root.clone()))
            .await
            .unwrap();
        root.auth_disable().await.unwrap();
    }
}

/// Retries root's read through `ctl` until it succeeds (bounded at 30 s).
async fn wait_root_serves(ctl: &Ctl, log: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = as_user(ctl, ROOT, &["get", "probe"]).await;
        if out.ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not serving root within 30 s: {}\n{}",
            out.stderr,
            log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_keeps_users_and_roles_for_cairn_and_for_etcd() {
    if !etcd_present() {
        return;
    }
    let node = node().await;
    let ctl = Ctl {
        endpoint: node.url(),
    };
    enable_auth(&ctl).await;
    add_app_reader(&ctl).await;
    assert!(as_user(&ctl, ROOT, &["put", "/app/x", "1"]).await.ok);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("auth.db");
    let file_name = file.to_str().unwrap();
    // A backup is root's to take.
    fails_with(
        &ctl,
        Some(ALICE),
        &["snapshot", "save", file_name],
        "auth: permission denied",
    )
    .await;
    let saved = as_user(&ctl, ROOT, &["snapshot", "save", file_name]).await;
    assert!(saved.stdout.contains("Snapshot saved"), "{}", saved.stderr);

    // Restored into Cairn.
    let mut cluster = ProcessCluster::define(1, &["--bcrypt-cost", "4"]);
    let initial = cluster.initial_cluster_of(&[0]);
    cluster.spawn_with(0, &initial, &["--restore-from", file_name]);
    let restored = Ctl {
        endpoint: cluster.members[0].url(),
    };
    wait_root_serves(&restored, || cluster.log_of(0)).await;
    let got = as_user(&restored, ALICE, &["get", "/app/x"]).await;
    assert_eq!(got.stdout, "/app/x\n1\n", "{}", got.stderr);
    fails_with(
        &restored,
        Some(ALICE),
        &["put", "/app/x", "2"],
        "etcdserver: permission denied",
    )
    .await;
    fails_with(
        &restored,
        None,
        &["get", "/app/x"],
        "etcdserver: user name is empty",
    )
    .await;

    // Restored into etcd: the password hashes and permissions are etcd's own format.
    let peer_port = free_ports(1)[0];
    let data_dir = dir.path().join("etcd");
    let out = ctl
        .run_with_input(
            &[
                "snapshot",
                "restore",
                file_name,
                "--name",
                "etcd0",
                "--data-dir",
                data_dir.to_str().unwrap(),
                "--initial-cluster",
                &format!("etcd0={}", Etcd::peer_url(peer_port)),
                "--initial-advertise-peer-urls",
                &Etcd::peer_url(peer_port),
            ],
            None,
        )
        .await;
    assert!(out.ok, "{}", out.stderr);
    let etcd = Etcd::start("etcd0", &data_dir, peer_port);
    let etcd_ctl = Ctl {
        endpoint: etcd.url(),
    };
    wait_root_serves(&etcd_ctl, String::new).await;
    let got = as_user(&etcd_ctl, ALICE, &["get", "/app/x"]).await;
    assert_eq!(got.stdout, "/app/x\n1\n", "{}", got.stderr);
    fails_with(
        &etcd_ctl,
        Some(ALICE),
        &["put", "/app/x", "2"],
        "etcdserver: permission denied",
    )
    .await;
    fails_with(
        &etcd_ctl,
        None,
        &["get", "/app/x"],
        "etcdserver: user name is empty",
    )
    .await;
}

/// A user or role name larger than `--max-request-bytes` (1.5 MiB, under gRPC's 2 MiB message
/// limit) is refused in etcd's words, as etcd refuses any such proposal, and leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_over_the_request_limit_are_refused_as_etcd_refuses_them() {
    let node = node().await;
    let dir = tempfile::tempdir().unwrap();
    let etcd =
        etcd_present().then(|| Etcd::start("etcd0", &dir.path().join("etcd0"), free_ports(1)[0]));
    let mut clients = vec![(
        "cairn",
        etcd_client::Client::connect([node.url()], None)
            .await
            .unwrap(),
    )];
    match &etcd {
        Some(e) => clients.push(("etcd", e.client().await)),
        None => println!("etcd is not installed: Cairn checked alone"),
    }
    let big = "n".repeat(1600 * 1024);
    for (system, c) in &mut clients {
        let e = c.user_add(big.clone(), "pw", None).await.unwrap_err();
        assert!(
            e.to_string().contains("etcdserver: request is too large"),
            "{system}: {e}"
        );
        let e = c.role_add(big.clone()).await.unwrap_err();
        assert!(
            e.to_string().contains("etcdserver: request is too large"),
            "{system}: {e}"
        );
        c.user_add("small", "pw", None).await.unwrap();
        let users = c.user_list().await.unwrap();
        assert_eq!(users.users(), ["small"], "{system}");
        assert!(c.role_list().await.unwrap().roles().is_empty(), "{system}");
    }
}
