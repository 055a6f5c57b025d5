//! TLS for the client and peer listeners and for dialing other members, configured as etcd's flags
//! describe it: certificate files that are re-read when they change (a renewed certificate needs no
//! restart), an optional CA that callers' certificates must chain to, and self-signed certificates
//! kept in the data dir for `--auto-tls` / `--peer-auto-tls`.
//!
//! Handshakes happen here, before tonic sees a connection (accepted or dialed), so plaintext
//! listeners and peer channels keep their direct path. Depends on `config` only; must never import
//! `raft/`, `storage/` or `grpc/`: they get ready-made acceptor configs and dialers from here.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

use crate::config::{is_https, Config, TlsInfo};

/// How long a caller may take over its handshake before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    #[error("generating a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// The TLS a member runs with: what its `https://` client and peer listeners present and accept,
/// and how it dials other members' `https://` peer URLs. `None` where nothing is `https://`.
#[derive(Clone, Default)]
pub(crate) struct MemberTls {
    pub client: Option<Arc<ServerConfig>>,
    pub peer: Option<Arc<ServerConfig>>,
    pub dial: Option<PeerDialTls>,
}

impl MemberTls {
    /// Loads (or, for auto TLS, generates in the data dir) what `cfg` asks for. Call after
    /// [`Config::check_tls`] and once the data dir exists.
    pub fn prepare(cfg: &Config) -> Result<MemberTls, TlsError> {
        let mut tls = MemberTls::default();
        // https:// metrics URLs are served with the client certificate, as etcd does.
        let client_side = cfg
            .listen_client_urls
            .iter()
            .chain(&cfg.listen_metrics_urls);
        if client_side.clone().any(|u| is_https(u)) {
            let hosts = hosts_of(client_side.chain(&cfg.advertise_client_urls));
            let (cert, key) = certificate(&cfg.client_tls, &cfg.data_dir, "client", &hosts)?;
            tls.client = Some(server_config(&cfg.client_tls, cert, key)?);
        }
        let peer_urls = cfg
            .listen_peer_urls
            .iter()
            .chain(&cfg.initial_advertise_peer_urls);
        let dials_https = cfg
            .initial_cluster
            .iter()
            .flat_map(|(_, urls)| urls)
            .chain(peer_urls.clone())
            .any(|u| is_https(u));
        if dials_https {
            let pair = if cfg.peer_tls.has_certificate() {
                let hosts = hosts_of(peer_urls);
                Some(certificate(&cfg.peer_tls, &cfg.data_dir, "peer", &hosts)?)
            } else {
                None
            };
            if let Some((cert, key)) = &pair {
                if cfg.listen_peer_urls.iter().any(|u| is_https(u)) {
                    tls.peer = Some(server_config(&cfg.peer_tls, cert.clone(), key.clone())?);
                }
            }
            tls.dial = Some(PeerDialTls::new(&cfg.peer_tls, pair.as_ref())?);
        }
        Ok(tls)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The hosts of `urls`, for the names a self-signed certificate covers.
fn hosts_of<'a>(urls: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut hosts: Vec<String> = urls
        .filter_map(|u| {
            let rest = u.split_once("://").map_or(u.as_str(), |(_, r)| r);
            let hostport = rest.split('/').next()?;
            let host = match hostport.rsplit_once(':') {
                Some((h, _)) => h,
                None => hostport,
            };
            Some(host.trim_matches(['[', ']']).to_string())
        })
        .filter(|h| !h.is_empty())
        .collect();
    hosts.push("localhost".into());
    hosts.sort();
    hosts.dedup();
    hosts
}

/// The certificate and key files a side serves: the given ones, or (auto TLS) a self-signed pair
/// in `<data-dir>/fixtures/<side>`, made on first start and reused after, as etcd keeps them.
fn certificate(
    info: &TlsInfo,
    data_dir: &Path,
    side: &str,
    hosts: &[String],
) -> Result<(PathBuf, PathBuf), TlsError> {
    if let (Some(cert), Some(key)) = (&info.cert_file, &info.key_file) {
        return Ok((cert.clone(), key.clone()));
    }
    let dir = data_dir.join("fixtures").join(side);
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(&dir).map_err(|source| TlsError::Write {
        path: dir.clone(),
        source,
    })?;
    let key_pair = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(hosts.to_vec())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "cairn");
    // Peers present the same certificate when they dial, so it serves as a client one too.
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let signed = params.self_signed(&key_pair)?;
    write_private(&key, key_pair.serialize_pem().as_bytes())?;
    std::fs::write(&cert, signed.pem()).map_err(|source| TlsError::Write {
        path: cert.clone(),
        source,
    })?;
    tracing::info!(dir = %dir.display(), ?hosts, side, "generated a self-signed certificate");
    Ok((cert, key))
}

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn pem_error(path: &Path, message: impl fmt::Display) -> TlsError {
    TlsError::Pem {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(&read(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(pem_error(path, "no certificate in the file"));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(&read(path)?).map_err(|e| pem_error(path, e))
}

fn load_certified(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    Ok(CertifiedKey::from_der(
        load_certs(cert)?,
        load_key(key)?,
        provider,
    )?)
}

fn root_store(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| pem_error(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// When the files last changed, as far as a cheap `stat` can tell.
type Stamp = [Option<(SystemTime, u64)>; 2];

fn stamp(cert: &Path, key: &Path) -> Stamp {
    let one = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    };
    [one(cert), one(key)]
}

/// Serves the certificate in `cert`/`key`, re-reading them on the first handshake after either
/// file changed (etcd reads them on every handshake; a `stat` per handshake keeps that behaviour
/// without parsing each time). A pair that does not load (say, the certificate was replaced and the
/// key not yet) leaves the previous certificate in service until it does.
#[derive(Debug)]
struct ReloadingCert {
    /// `serving` (listeners) or `dialing` (the client certificate for peers), for the logs.
    role: &'static str,
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: Mutex<(Stamp, Arc<CertifiedKey>)>,
}

impl ReloadingCert {
    fn current(&self) -> Arc<CertifiedKey> {
        let now = stamp(&self.cert, &self.key);
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if now != current.0 {
            match load_certified(&self.cert, &self.key, &self.provider) {
                Ok(key) => {
                    tracing::info!(cert = %self.cert.display(), role = self.role,
                        "reloaded the TLS certificate");
                    *current = (now, Arc::new(key));
                }
                Err(e) => tracing::warn!(error = %e, "keeping the previous TLS certificate"),
            }
        }
        current.1.clone()
    }
}

impl ReloadingCert {
    /// Loaded now so that a bad file stops the start rather than every handshake.
    fn open(
        role: &'static str,
        cert: &Path,
        key: &Path,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let first = load_certified(cert, key, &provider)?;
        Ok(ReloadingCert {
            role,
            current: Mutex::new((stamp(cert, key), Arc::new(first))),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider,
        })
    }
}

impl ResolvesClientCert for ReloadingCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The handshake a listener offers: its (reloading) certificate, and with `client_cert_auth` a
/// demand for a caller certificate that chains to `trusted_ca_file`.
fn server_config(
    info: &TlsInfo,
    cert: PathBuf,
    key: PathBuf,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let resolver = ReloadingCert::open("serving", &cert, &key, provider.clone())?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match (&info.trusted_ca_file, info.client_cert_auth) {
        (Some(ca), true) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(root_store(ca)?), provider)
                    .build()
                    .map_err(|e| TlsError::Verifier(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    // gRPC, plus HTTP/1.1 for /health and /metrics on client URLs.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Connections accepted on `listener`, each after its TLS handshake. Handshakes run side by side,
/// each bounded in time, so a slow or silent caller holds up no one; a failed one (a plaintext
/// caller, an untrusted certificate) is logged and its connection dropped.
pub(crate) fn accept(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    mut stop: watch::Receiver<bool>,
) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (stream, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of descriptors and the like: pause rather than spin.
                        tracing::warn!(error = %e, "accepting a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
            };
            let _ = stream.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::info!(%remote, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::info!(%remote, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// How this member dials other members' `https://` peer URLs: its peer certificate as client
/// certificate (re-read when the files change, like the served one), the members verified against
/// `--peer-trusted-ca-file`; with `--peer-auto-tls` and no CA, the self-signed certificates of other
/// members cannot be verified and are not, as in etcd.
#[derive(Clone)]
pub(crate) struct PeerDialTls {
    connector: tokio_rustls::TlsConnector,
}

impl PeerDialTls {
    /// `pair`: the certificate and key to present, if this member has one (a member serving
    /// plaintext may still dial members that serve TLS without asking for certificates).
    fn new(info: &TlsInfo, pair: Option<&(PathBuf, PathBuf)>) -> Result<PeerDialTls, TlsError> {
        let provider = provider();
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match &info.trusted_ca_file {
            Some(ca) => builder.with_root_certificates(root_store(ca)?),
            None => {
                tracing::warn!(
                    "--peer-auto-tls without --peer-trusted-ca-file: members' certificates are \
                     not verified"
                );
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(Unverified(provider.clone())))
            }
        };
        let mut config = match pair {
            Some((cert, key)) => builder.with_client_cert_resolver(Arc::new(ReloadingCert::open(
                "dialing", cert, key, provider,
            )?)),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(PeerDialTls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    /// A channel to `url` (`https://`) whose connections this member makes itself, TCP then TLS;
    /// tonic is handed the URL as `http://` so that it speaks HTTP/2 over the stream as it is.
    pub fn channel(
        &self,
        url: &str,
        endpoint: impl FnOnce(String) -> Result<Endpoint, tonic::transport::Error>,
    ) -> Result<Channel, tonic::transport::Error> {
        let plain = url.replacen("https://", "http://", 1);
        Ok(endpoint(plain)?.connect_with_connector_lazy(TlsDialer {
            connector: self.connector.clone(),
        }))
    }
}

/// Dials a member: TCP (no Nagle delay: small request/response messages), then the TLS handshake
/// against the host of the URL. The channel's connect timeout bounds both.
#[derive(Clone)]
struct TlsDialer {
    connector: tokio_rustls::TlsConnector,
}

type Dialed = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;

impl tower::Service<Uri> for TlsDialer {
    type Response = Dialed;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Dialed>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = self.connector.clone();
        Box::pin(async move {
            let invalid = |what: &str| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("{what} in {uri}"))
            };
            let host = uri.host().ok_or_else(|| invalid("no host"))?;
            let host = host.trim_matches(['[', ']']).to_string();
            let port = uri.port_u16().ok_or_else(|| invalid("no port"))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            let name = ServerName::try_from(host).map_err(|_| invalid("a bad server name"))?;
            Ok(hyper_util::rt::TokioIo::new(
                connector.connect(name, tcp).await?,
            ))
        })
    }
}

/// Accepts any server certificate but still checks the handshake signatures (so the connection is
/// at least encrypted to whoever holds the presented key). For peers with auto TLS and no CA, and
/// for the orchestrator's calls to node agents, which serve self-signed certificates.
#[derive(Debug)]
pub struct Unverified(pub Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_come_from_urls() {
        let urls = [
            "https://127.0.0.1:2379".to_string(),
            "https://[::1]:2379/".to_string(),
            "http://node-a:2380".to_string(),
        ];
        assert_eq!(
            hosts_of(urls.iter()),
            vec!["127.0.0.1", "::1", "localhost", "node-a"]
        );
    }

    #[test]
    fn auto_tls_certificate_is_made_once_and_reloads_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let info = TlsInfo {
            auto_tls: true,
            ..TlsInfo::default()
        };
        let hosts = vec!["127.0.0.1".to_string()];
        let (cert, key) = certificate(&info, dir.path(), "client", &hosts).unwrap();
        assert_eq!(cert, dir.path().join("fixtures/client/cert.pem"));
        let first = std::fs::read(&cert).unwrap();
        let (cert2, _) = certificate(&info, dir.path(), "client", &hosts).unwrap();
        assert_eq!(
            std::fs::read(cert2).unwrap(),
            first,
            "reused, not regenerated"
        );

        let resolver = ReloadingCert::open("serving", &cert, &key, provider()).unwrap();
        let before = resolver.current().cert[0].clone();
        assert_eq!(
            resolver.current().cert[0],
            before,
            "unchanged files, same certificate"
        );
        // A new pair in place of the old one (generated elsewhere, then copied over).
        let other = tempfile::tempdir().unwrap();
        let (c, k) = certificate(&info, other.path(), "client", &hosts).unwrap();
        std::fs::copy(k, &key).unwrap();
        std::fs::copy(c, &cert).unwrap();
        assert_ne!(resolver.current().cert[0], before);
    }
}
