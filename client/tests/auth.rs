//! A client with a user against a `cairn` member with auth enabled: it authenticates on connect,
//! sends its token with every request, gets a new token when the server forgets the old one, and
//! `cairnctl --user` works as etcdctl's does.

use crate::common;

use std::process::Command;

use cairn_client::proto::auth_client::AuthClient;
use cairn_client::proto::{
    AuthDisableRequest, AuthEnableRequest, AuthRoleAddRequest, AuthRoleGrantPermissionRequest,
    AuthUserAddRequest, AuthUserGrantRoleRequest, AuthenticateRequest,
};
use cairn_client::{Client, ConnectOptions, Error};
use common::Cluster;
use tonic::transport::Channel;

/// A request carrying `token` as etcd expects it.
fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("token", token.parse().expect("ascii token"));
    req
}

/// root (password rootpw) and alice (alicepw), who may read and write under `/app/`; auth enabled.
async fn set_up_auth(auth: &mut AuthClient<Channel>) {
    for (name, password) in [("root", "rootpw"), ("alice", "alicepw")] {
        auth.user_add(AuthUserAddRequest {
            name: name.into(),
            password: password.into(),
            ..Default::default()
        })
        .await
        .expect("user add");
    }
    auth.role_add(AuthRoleAddRequest { name: "app".into() })
        .await
        .expect("role add");
    auth.role_grant_permission(AuthRoleGrantPermissionRequest {
        name: "app".into(),
        perm: Some(cairn_proto::authpb::Permission {
            perm_type: cairn_proto::authpb::permission::Type::Readwrite as i32,
            key: b"/app/".to_vec(),
            range_end: b"/app0".to_vec(),
        }),
    })
    .await
    .expect("grant permission");
    for (user, role) in [("root", "root"), ("alice", "app")] {
        auth.user_grant_role(AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        })
        .await
        .expect("grant role");
    }
    auth.auth_enable(AuthEnableRequest {})
        .await
        .expect("enable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_user_authenticates_and_renews_its_token() {
    let cluster = Cluster::cairn(1).await;
    let url = cluster.members[0].url();
    let mut auth = AuthClient::connect(url.clone()).await.unwrap();
    set_up_auth(&mut auth).await;

    let alice = Client::connect(
        [url.as_str()],
        Some(ConnectOptions::new().with_user("alice", "alicepw")),
    )
    .await
    .expect("alice connects");
    alice
        .put("/app/x", "1", None)
        .await
        .expect("alice writes /app/");
    let got = alice.get("/app/x", None).await.unwrap();
    assert_eq!(got.kvs[0].value, b"1");
    match alice.put("/other", "1", None).await {
        Err(Error::Server { code, message }) => {
            assert_eq!(code, tonic::Code::PermissionDenied);
            assert_eq!(message, "etcdserver: permission denied");
        }
        other => panic!("expected permission denied, got {other:?}"),
    }

    // Auth disabled and enabled again: the server forgot every token, alice's among them.
    let root = auth
        .authenticate(AuthenticateRequest {
            name: "root".into(),
            password: "rootpw".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    auth.auth_disable(with_token(AuthDisableRequest {}, &root))
        .await
        .unwrap();
    auth.auth_enable(AuthEnableRequest {}).await.unwrap();
    let got = alice.get("/app/x", None).await.expect("renewed token");
    assert_eq!(got.kvs[0].value, b"1");
    alice
        .put("/app/y", "2", None)
        .await
        .expect("a write with the renewed token");

    let wrong = Client::connect(
        [url.as_str()],
        Some(ConnectOptions::new().with_user("alice", "nope")),
    )
    .await
    .expect_err("a wrong password");
    assert!(
        wrong
            .to_string()
            .contains("etcdserver: authentication failed, invalid user ID or password"),
        "{wrong}"
    );

    // cairnctl takes --user name:password, or --user name with --password.
    let cairnctl = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_cairnctl"))
            .arg(format!("--endpoints={url}"))
            .args(args)
            .output()
            .expect("run cairnctl")
    };
    let out = cairnctl(&["--user", "alice:alicepw", "put", "/app/z", "3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cairnctl(&["--user", "alice", "--password", "alicepw", "get", "/app/z"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "/app/z\n3\n");
    let out = cairnctl(&["get", "/app/z"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("etcdserver: user name is empty"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_user_works_while_auth_is_disabled() {
    let cluster = Cluster::cairn(1).await;
    let client = Client::connect(
        [cluster.members[0].url()],
        Some(ConnectOptions::new().with_user("nobody", "x")),
    )
    .await
    .expect("connects without a token");
    client.put("k", "v", None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_roles_and_permissions_are_managed_through_the_client() {
    use cairn_client::{Permission, PermissionType};
    let cluster = Cluster::cairn(1).await;
    let url = cluster.members[0].url();
    let admin = Client::connect([url.as_str()], None).await.unwrap();
    admin.user_add("root", "rootpw").await.unwrap();
    admin.role_add("root").await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.user_add("alice", "alicepw").await.unwrap();
    admin.role_add("app").await.unwrap();
    admin
        .role_grant_permission(
            "app",
            Permission::new(PermissionType::ReadWrite, "/app/").with_prefix(),
        )
        .await
        .unwrap();
    admin.user_grant_role("alice", "app").await.unwrap();
    assert_eq!(admin.user_get("alice").await.unwrap(), vec!["app"]);
    assert_eq!(admin.user_list().await.unwrap(), vec!["alice", "root"]);
    assert_eq!(admin.role_list().await.unwrap(), vec!["app", "root"]);
    let perm = &admin.role_get("app").await.unwrap().perm[0];
    assert_eq!(
        (&perm.key[..], &perm.range_end[..]),
        (&b"/app/"[..], &b"/app0"[..])
    );
    match admin.user_add("alice", "again").await {
        Err(Error::Server { message, .. }) => {
            assert_eq!(message, "etcdserver: user name already exists")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(!admin.auth_status().await.unwrap().enabled);
    admin.auth_enable().await.unwrap();

    let root = Client::connect(
        [url.as_str()],
        Some(ConnectOptions::new().with_user("root", "rootpw")),
    )
    .await
    .unwrap();
    assert!(root.auth_status().await.unwrap().enabled);
    let alice = Client::connect(
        [url.as_str()],
        Some(ConnectOptions::new().with_user("alice", "alicepw")),
    )
    .await
    .unwrap();
    alice.put("/app/x", "1", None).await.expect("granted");
    // Taken back: the next request is refused.
    root.role_revoke_permission("app", "/app/", "/app0")
        .await
        .unwrap();
    match alice.get("/app/x", None).await {
        Err(Error::Server { code, message }) => {
            assert_eq!(code, tonic::Code::PermissionDenied);
            assert_eq!(message, "etcdserver: permission denied");
        }
        other => panic!("expected permission denied, got {other:?}"),
    }
    root.user_revoke_role("alice", "app").await.unwrap();
    root.role_delete("app").await.unwrap();
    root.user_change_password("alice", "newpw").await.unwrap();
    root.user_delete("alice").await.unwrap();
    root.auth_disable().await.unwrap();
    assert!(!admin.auth_status().await.unwrap().enabled);
}
