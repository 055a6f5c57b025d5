//! TLS as etcd does it, with real `cairn` processes: etcdctl over https with client certificate
//! authentication (and the callers it must refuse), certificates replaced without a restart, a
//! cluster whose members authenticate each other (and refuse one with a foreign certificate), and
//! `https://` URLs without certificates refused at start.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::etcdctl::etcdctl_present;
use common::free_ports;
use common::pki::{Ca, Pair};

/// A `cairn` process, killed (by its pid) when dropped.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(dir: &Path, name: &str, args: &[String]) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .arg("--name")
            .arg(name)
            .arg("--data-dir")
            .arg(dir.join(format!("{name}.data")))
            .args(args)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn cairn");
        Proc { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status, if the process ends within `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Runs etcdctl 3.4 against `endpoint` with `tls` flags; returns (success, stdout, stderr).
fn etcdctl(endpoint: &str, tls: &[String], args: &[&str]) -> (bool, String, String) {
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(endpoint)
        .arg("--dial-timeout=2s")
        .arg("--command-timeout=4s")
        .args(tls)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn etcdctl");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("etcdctl status").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("etcdctl {args:?} did not finish within 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("etcdctl output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tls_flags(ca: &Path, pair: Option<&Pair>) -> Vec<String> {
    let mut flags = vec![format!("--cacert={}", s(ca))];
    if let Some(p) = pair {
        flags.push(format!("--cert={}", s(&p.cert)));
        flags.push(format!("--key={}", s(&p.key)));
    }
    flags
}

/// Retries `etcdctl put` until it succeeds (the member is starting), for at most 20 s.
fn wait_put(endpoint: &str, tls: &[String], member: &Proc) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, _, err) = etcdctl(endpoint, tls, &["put", "ready", "1"]);
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no successful put within 20 s: {err}\nmember log:\n{}",
            member.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn etcdctl_over_tls_with_client_certificate_auth() {
    if !etcdctl_present() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let ca = Ca::new(d, "ca");
    let other_ca = Ca::new(d, "other-ca");
    let server = ca.issue(d, "server");
    let client = ca.issue(d, "client");
    let stranger = other_ca.issue(d, "stranger");
    let ports = free_ports(2);
    let endpoint = format!("https://127.0.0.1:{}", ports[0]);
    let member = Proc::spawn(
        d,
        "m0",
        &[
            format!("--listen-client-urls={endpoint}"),
            format!("--listen-peer-urls=http://127.0.0.1:{}", ports[1]),
            format!("--cert-file={}", s(&server.cert)),
            format!("--key-file={}", s(&server.key)),
            format!("--trusted-ca-file={}", s(&ca.cert)),
            "--client-cert-auth".into(),
        ],
    );
    let good = tls_flags(&ca.cert, Some(&client));
    wait_put(&endpoint, &good, &member);

    let (ok, _, err) = etcdctl(&endpoint, &good, &["put", "k", "v"]);
    assert!(ok, "put: {err}");
    let (ok, out, err) = etcdctl(&endpoint, &good, &["get", "k"]);
    assert!(ok, "get: {err}");
    assert_eq!(out, "k\nv\n");
    // The per-endpoint commands dial differently (a URL as authority): over TLS too.
    let (ok, out, err) = etcdctl(&endpoint, &good, &["endpoint", "health"]);
    assert!(ok, "endpoint health: {out} {err}");

    // Plaintext on the TLS port.
    let plain = format!("http://127.0.0.1:{}", ports[0]);
    let (ok, out, _) = etcdctl(&plain, &[], &["get", "k"]);
    assert!(!ok, "a plaintext client was served: {out}");
    // A certificate from another CA.
    let (ok, out, _) = etcdctl(
        &endpoint,
        &tls_flags(&ca.cert, Some(&stranger)),
        &["get", "k"],
    );
    assert!(!ok, "a client with a foreign certificate was served: {out}");
    // No certificate at all.
    let (ok, out, _) = etcdctl(&endpoint, &tls_flags(&ca.cert, None), &["get", "k"]);
    assert!(!ok, "a client without a certificate was served: {out}");
    // A client that does not trust the server's CA refuses it.
    let (ok, out, _) = etcdctl(
        &endpoint,
        &tls_flags(&other_ca.cert, Some(&client)),
        &["get", "k"],
    );
    assert!(
        !ok,
        "the server's certificate was accepted by a foreign CA: {out}"
    );

    // A new server certificate (from the other CA) replaces the files: the running member serves
    // it from the next handshake on, with no restart.
    let renewed = other_ca.issue(d, "renewed");
    std::fs::copy(&renewed.key, &server.key).expect("replace key");
    std::fs::copy(&renewed.cert, &server.cert).expect("replace certificate");
    let trusting_new = tls_flags(&other_ca.cert, Some(&client));
    let (ok, out, err) = etcdctl(&endpoint, &trusting_new, &["get", "k"]);
    assert!(
        ok,
        "the renewed certificate is not served: {err}\n{}",
        member.log()
    );
    assert_eq!(out, "k\nv\n");
    let (ok, _, _) = etcdctl(&endpoint, &good, &["get", "k"]);
    assert!(!ok, "the old certificate is still served");
}

#[test]
fn https_without_certificates_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ports = free_ports(4);
    let cases = [
        (
            "client",
            vec![
                format!("--listen-client-urls=https://127.0.0.1:{}", ports[0]),
                format!("--listen-peer-urls=http://127.0.0.1:{}", ports[1]),
            ],
            "--cert-file, --key-file",
        ),
        (
            "peer",
            vec![
                format!("--listen-client-urls=http://127.0.0.1:{}", ports[2]),
                format!("--listen-peer-urls=https://127.0.0.1:{}", ports[3]),
            ],
            "--peer-cert-file, --peer-key-file",
        ),
    ];
    for (name, args, flags) in cases {
        let mut member = Proc::spawn(dir.path(), name, &args);
        let status = member
            .wait_exit(Duration::from_secs(15))
            .unwrap_or_else(|| {
                panic!("{name}: still running with an https URL and no certificate")
            });
        assert!(!status.success(), "{name}: exited with success");
        let log = member.log();
        assert!(
            log.contains(flags) && log.contains("HTTPS scheme"),
            "{name}: the message does not name the missing flags: {log}"
        );
    }
}

#[test]
fn auto_tls_serves_a_self_signed_certificate_from_the_data_dir() {
    if !etcdctl_present() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let ports = free_ports(3);
    let endpoint = format!("https://127.0.0.1:{}", ports[0]);
    let member = Proc::spawn(
        d,
        "auto",
        &[
            format!("--listen-client-urls={endpoint}"),
            format!("--listen-peer-urls=http://127.0.0.1:{}", ports[1]),
            format!("--listen-metrics-urls=https://127.0.0.1:{}", ports[2]),
            "--auto-tls".into(),
        ],
    );
    let cert = d.join("auto.data/fixtures/client/cert.pem");
    // The generated certificate is its own CA.
    let flags = vec![format!("--cacert={}", s(&cert))];
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cert.exists() {
        assert!(
            Instant::now() < deadline,
            "no certificate generated:\n{}",
            member.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_put(&endpoint, &flags, &member);
    let (ok, out, err) = etcdctl(&endpoint, &flags, &["get", "ready"]);
    assert!(ok, "get: {err}");
    assert_eq!(out, "ready\n1\n");
    // An https:// metrics URL serves TLS with the same certificate.
    let health = https_get(ports[2], &cert, "/health").expect("GET /health over TLS");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains("\"health\":\"true\""), "{health}");
}

/// `GET path` over TLS on 127.0.0.1:`port`, trusting `ca`; the raw response.
fn https_get(port: u16, ca: &Path, path: &str) -> Result<String, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| e.to_string())? {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let work = async {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            let name = ServerName::try_from("127.0.0.1").expect("an IP address is a server name");
            let mut tls = connector.connect(name, tcp).await?;
            let request =
                format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
            tls.write_all(request.as_bytes()).await?;
            let mut response = Vec::new();
            tls.read_to_end(&mut response).await?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&response).into_owned())
        };
        tokio::time::timeout(Duration::from_secs(10), work)
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())
    })
}

/// Flags of a member whose peers authenticate each other with certificates from `ca`.
fn peer_member_args(
    client_port: u16,
    peer_port: u16,
    pair: &Pair,
    ca: &Path,
    initial_cluster: &str,
) -> Vec<String> {
    vec![
        format!("--listen-client-urls=http://127.0.0.1:{client_port}"),
        format!("--listen-peer-urls=https://127.0.0.1:{peer_port}"),
        format!("--initial-cluster={initial_cluster}"),
        format!("--peer-cert-file={}", s(&pair.cert)),
        format!("--peer-key-file={}", s(&pair.key)),
        format!("--peer-trusted-ca-file={}", s(ca)),
        "--peer-client-cert-auth".into(),
        "--election-timeout=500".into(),
        "--heartbeat-interval=50".into(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_authenticate_each_other_and_refuse_a_foreign_member() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let ca = Ca::new(d, "peer-ca");
    let foreign_ca = Ca::new(d, "foreign-ca");
    let ports = free_ports(8);
    let peer_url = |i: usize| format!("https://127.0.0.1:{}", ports[2 * i + 1]);
    let client_url = |i: usize| format!("http://127.0.0.1:{}", ports[2 * i]);
    let initial = (0..3)
        .map(|i| format!("m{i}={}", peer_url(i)))
        .collect::<Vec<_>>()
        .join(",");
    let members: Vec<Proc> = (0..3)
        .map(|i| {
            let pair = ca.issue(d, &format!("m{i}"));
            let args = peer_member_args(ports[2 * i], ports[2 * i + 1], &pair, &ca.cert, &initial);
            Proc::spawn(d, &format!("m{i}"), &args)
        })
        .collect();

    let client_urls: Vec<String> = (0..3).map(client_url).collect();
    let mut writer = write_and_read_everywhere(&client_urls, &members, "replicated").await;

    // A fourth member, added properly, but holding a certificate the cluster's CA did not sign.
    writer
        .member_add([peer_url(3)], None)
        .await
        .expect("member add");
    let stranger = foreign_ca.issue(d, "m3");
    let initial4 = format!("{initial},m3={}", peer_url(3));
    let mut args = peer_member_args(ports[6], ports[7], &stranger, &ca.cert, &initial4);
    args.push("--initial-cluster-state=existing".into());
    let mut fourth = Proc::spawn(d, "m3", &args);
    let status = fourth.wait_exit(Duration::from_secs(30));
    let log = fourth.log();
    assert!(
        matches!(status, Some(s) if !s.success()),
        "the member with a foreign certificate did not fail to join within 30 s ({status:?}):\n{log}"
    );
    assert!(
        log.contains("could not reach the cluster"),
        "unexpected failure:\n{log}"
    );
    // It never published itself: the cluster lists it as added, not started.
    let list = writer.member_list().await.expect("member list");
    let m3 = list
        .members()
        .iter()
        .find(|m| m.peer_urls().contains(&peer_url(3)))
        .expect("the added member is listed");
    assert!(
        m3.name().is_empty() && m3.client_urls().is_empty(),
        "{m3:?}"
    );
    // The three founders still serve writes (3 of 4 voters).
    let mut c = common::connect(&client_url(1)).await.expect("connect");
    c.put("after", "1", None)
        .await
        .expect("put after the refusal");
}

/// Writes `value` at key `k` through the first member (retrying while the cluster forms, at most
/// 30 s), then waits until every member reads it from its own store (a serializable read), at most
/// 15 s each. Returns the client of the first member.
async fn write_and_read_everywhere(
    client_urls: &[String],
    members: &[Proc],
    value: &str,
) -> etcd_client::Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    let writer = loop {
        if let Some(mut c) = common::connect(&client_urls[0]).await {
            if c.put("k", value, None).await.is_ok() {
                break c;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the TLS cluster did not accept a write within 30 s; logs:\n{}",
            members
                .iter()
                .map(Proc::log)
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for (i, member) in members.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got = match common::connect(&client_urls[i]).await {
                Some(mut c) => c
                    .get(
                        "k",
                        Some(etcd_client::GetOptions::new().with_serializable()),
                    )
                    .await
                    .ok()
                    .and_then(|r| r.kvs().first().map(|kv| kv.value().to_vec())),
                None => None,
            };
            if got.as_deref() == Some(value.as_bytes()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "member {i} did not get the write within 15 s:\n{}",
                member.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    writer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_with_auto_tls_form_a_cluster() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let ports = free_ports(6);
    let initial = (0..3)
        .map(|i| format!("m{i}=https://127.0.0.1:{}", ports[2 * i + 1]))
        .collect::<Vec<_>>()
        .join(",");
    let members: Vec<Proc> = (0..3)
        .map(|i| {
            let args = vec![
                format!("--listen-client-urls=http://127.0.0.1:{}", ports[2 * i]),
                format!("--listen-peer-urls=https://127.0.0.1:{}", ports[2 * i + 1]),
                format!("--initial-cluster={initial}"),
                "--peer-auto-tls".into(),
                "--election-timeout=500".into(),
                "--heartbeat-interval=50".into(),
            ];
            Proc::spawn(d, &format!("m{i}"), &args)
        })
        .collect();
    let client_urls: Vec<String> = (0..3)
        .map(|i| format!("http://127.0.0.1:{}", ports[2 * i]))
        .collect();
    write_and_read_everywhere(&client_urls, &members, "replicated").await;
    for i in 0..3 {
        let fixtures = d.join(format!("m{i}.data/fixtures/peer"));
        assert!(fixtures.join("cert.pem").exists() && fixtures.join("key.pem").exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_member_serves_tls_and_reports_an_https_url() {
    let node = common::TestNode::start_with(|c| cairn_server::Config {
        listen_client_urls: vec!["https://127.0.0.1:0".into()],
        client_tls: cairn_server::TlsInfo {
            auto_tls: true,
            ..Default::default()
        },
        ..c
    })
    .await;
    let url = node.url();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let port = node.node.as_ref().expect("running").client_addr().port();
    let cert = node.dir.path().join("fixtures/client/cert.pem");
    // HTTP/1.1 over TLS on the client URL, beside gRPC.
    let health = tokio::task::spawn_blocking(move || https_get(port, &cert, "/health"))
        .await
        .expect("join")
        .expect("GET /health over TLS");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_peer_certificates_are_used_without_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let ca = Ca::new(d, "peer-ca");
    let ports = free_ports(6);
    let initial = (0..3)
        .map(|i| format!("m{i}=https://127.0.0.1:{}", ports[2 * i + 1]))
        .collect::<Vec<_>>()
        .join(",");
    let pairs: Vec<Pair> = (0..3).map(|i| ca.issue(d, &format!("m{i}"))).collect();
    let args = |i: usize| {
        peer_member_args(
            ports[2 * i],
            ports[2 * i + 1],
            &pairs[i],
            &ca.cert,
            &initial,
        )
    };
    let mut members: Vec<Proc> = (0..3)
        .map(|i| Proc::spawn(d, &format!("m{i}"), &args(i)))
        .collect();
    let client_urls: Vec<String> = (0..3)
        .map(|i| format!("http://127.0.0.1:{}", ports[2 * i]))
        .collect();
    write_and_read_everywhere(&client_urls, &members, "before").await;

    // m0's peer certificate is renewed in place while m0 keeps running; m1 and m2 restart, so
    // that m0 both accepts and makes connections after the change: writes through m0 and
    // linearizable reads through the others reach the leader whichever member it is.
    let renewed = ca.issue(d, "m0-renewed");
    std::fs::copy(&renewed.key, &pairs[0].key).expect("replace key");
    std::fs::copy(&renewed.cert, &pairs[0].cert).expect("replace certificate");
    for i in [1, 2] {
        drop(members.remove(i));
        members.insert(i, Proc::spawn(d, &format!("m{i}"), &args(i)));
    }
    write_and_read_everywhere(&client_urls, &members, "after").await;
    // One reload for the certificate m0 serves, one for the one it presents when dialing.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        for url in &client_urls[1..] {
            if let Some(mut c) = common::connect(url).await {
                let _ = c.get("k", None).await;
            }
        }
        let log0 = members[0].log();
        if log0.contains(r#"role="serving""#) && log0.contains(r#"role="dialing""#) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "m0 did not reload its certificate in both directions within 15 s:\n{log0}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
