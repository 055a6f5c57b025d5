//! TLS from the client side: `cairnctl --cacert --cert --key` (as etcdctl takes them) and the
//! library's [`TlsOptions`] against a `cairn` member that requires client certificates.

use crate::common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_client::{Client, TlsOptions};
use common::pki::{Ca, Pair};
use common::{cairn_bin, free_ports, options};

/// The member process, killed by its pid when dropped.
struct Member(Child);

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Runs cairnctl (bounded to 20 s); returns (success, stdout, stderr).
fn cairnctl(args: &[String]) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairnctl"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cairnctl");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("cairnctl status").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("cairnctl {args:?} did not finish within 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("cairnctl output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tls_args(endpoint: &str, ca: &Path, pair: Option<&Pair>, rest: &[&str]) -> Vec<String> {
    let mut args = vec![
        format!("--endpoints={endpoint}"),
        format!("--cacert={}", s(ca)),
        "--dial-timeout=1s".into(),
        "--command-timeout=3s".into(),
    ];
    if let Some(p) = pair {
        args.push(format!("--cert={}", s(&p.cert)));
        args.push(format!("--key={}", s(&p.key)));
    }
    args.extend(rest.iter().map(|a| a.to_string()));
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cairnctl_and_the_library_speak_tls_with_client_certificates() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let ca = Ca::new(d, "ca");
    let server = ca.issue(d, "server");
    let client = ca.issue(d, "client");
    let ports = free_ports(2);
    let log = std::fs::File::create(d.join("member.log")).expect("log");
    let _member = Member(
        Command::new(cairn_bin())
            .arg(format!("--data-dir={}", s(&d.join("data"))))
            .arg(format!(
                "--listen-client-urls=https://127.0.0.1:{}",
                ports[0]
            ))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{}", ports[1]))
            .arg(format!("--cert-file={}", s(&server.cert)))
            .arg(format!("--key-file={}", s(&server.key)))
            .arg(format!("--trusted-ca-file={}", s(&ca.cert)))
            .arg("--client-cert-auth")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn cairn"),
    );
    // A bare host:port is dialed over TLS once TLS flags are given, as etcdctl does.
    let endpoint = format!("127.0.0.1:{}", ports[0]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, _, err) = cairnctl(&tls_args(
            &endpoint,
            &ca.cert,
            Some(&client),
            &["put", "k", "v"],
        ));
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no put within 20 s: {err}\n{}",
            std::fs::read_to_string(d.join("member.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ok, out, err) = cairnctl(&tls_args(&endpoint, &ca.cert, Some(&client), &["get", "k"]));
    assert!(ok, "get: {err}");
    assert_eq!(out, "k\nv\n");
    let (ok, out, _) = cairnctl(&tls_args(&endpoint, &ca.cert, None, &["get", "k"]));
    assert!(!ok, "served without a client certificate: {out}");

    // The library, with the same certificates.
    let pem = |p: &Path| std::fs::read(p).expect("read PEM");
    let tls = TlsOptions::new()
        .with_ca_certificate(pem(&ca.cert))
        .with_identity(pem(&client.cert), pem(&client.key));
    let url = format!("https://127.0.0.1:{}", ports[0]);
    let c = Client::connect([url.as_str()], Some(options().with_tls(tls)))
        .await
        .expect("connect over TLS");
    let got = c.get("k", None).await.expect("get over TLS");
    assert_eq!(got.kvs[0].value, b"v");
    let no_identity = TlsOptions::new().with_ca_certificate(pem(&ca.cert));
    // With TLS 1.3 the server judges the client's certificate after the client has finished its
    // side of the handshake, so the refusal may surface on connect or on the first call.
    if let Ok(c) = Client::connect(
        [url.as_str()],
        Some(
            options()
                .with_tls(no_identity)
                .with_request_timeout(Duration::from_secs(2)),
        ),
    )
    .await
    {
        let got = c.get("k", None).await;
        assert!(got.is_err(), "served without a client certificate: {got:?}");
    }
}
