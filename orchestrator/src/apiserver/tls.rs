//! Serving certificates and credentials: a CA and a serving certificate generated with rcgen and kept
//! in `--cert-dir` (reused on restart), or the files given by flag; the admin token; kubeconfigs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> TlsError + '_ {
    move |e| TlsError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// The serving material: certificate chain and key files, and the CA that signed them.
pub struct ServingFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// PEM of the CA clients should trust (the certificate itself when no CA was generated).
    pub ca_pem: String,
}

/// Uses the given files, or generates (once) a CA and a serving certificate in `cert_dir` for
/// loopback, localhost and `extra_sans`.
pub fn serving_files(
    cert_dir: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
    extra_sans: &[String],
) -> Result<ServingFiles, TlsError> {
    if let (Some(c), Some(k)) = (cert, key) {
        let pem = std::fs::read_to_string(c).map_err(io(c))?;
        return Ok(ServingFiles {
            cert: c.to_path_buf(),
            key: k.to_path_buf(),
            ca_pem: pem,
        });
    }
    std::fs::create_dir_all(cert_dir).map_err(io(cert_dir))?;
    let ca_crt = cert_dir.join("ca.crt");
    let ca_key = cert_dir.join("ca.key");
    let crt = cert_dir.join("apiserver.crt");
    let key = cert_dir.join("apiserver.key");
    // The names the serving certificate was issued for, so a new address (say a changed
    // --advertise-address) gets a certificate naming it while the CA, which nodes pin, stays.
    let sans_file = cert_dir.join("apiserver.sans");
    let mut names = vec![
        "localhost".to_string(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        "kubernetes.default.svc.cluster.local".into(),
        "127.0.0.1".into(),
        "::1".into(),
    ];
    for n in extra_sans {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    if !ca_crt.exists() || !ca_key.exists() {
        let ca_kp = KeyPair::generate()?;
        let ca = ca_params()?.self_signed(&ca_kp)?;
        write_private(&ca_key, &ca_kp.serialize_pem())?;
        std::fs::write(&ca_crt, ca.pem()).map_err(io(&ca_crt))?;
        let _ = std::fs::remove_file(&crt);
    }
    let issued_for = std::fs::read_to_string(&sans_file).unwrap_or_default();
    let wanted = names.join("\n");
    if !crt.exists() || !key.exists() || issued_for != wanted {
        let ca_kp = KeyPair::from_pem(&std::fs::read_to_string(&ca_key).map_err(io(&ca_key))?)?;
        let issuer = rcgen::Issuer::new(ca_params()?, ca_kp);
        // Strings that parse as addresses become IP SANs.
        let mut sp = CertificateParams::new(names)?;
        sp.distinguished_name
            .push(DnType::CommonName, "cairn-apiserver");
        sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        sp.not_after = rcgen::date_time_ymd(2036, 1, 1);
        let kp = KeyPair::generate()?;
        let cert = sp.signed_by(&kp, &issuer)?;
        write_private(&key, &kp.serialize_pem())?;
        std::fs::write(&crt, cert.pem()).map_err(io(&crt))?;
    }
    if issued_for != wanted {
        std::fs::write(&sans_file, &wanted).map_err(io(&sans_file))?;
    }
    let ca_pem = std::fs::read_to_string(&ca_crt).map_err(io(&ca_crt))?;
    Ok(ServingFiles {
        cert: crt,
        key,
        ca_pem,
    })
}

/// The generated CA's parameters; signing with them and the CA's key gives certificates the CA
/// certificate verifies.
fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, "cairn-ca");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_after = rcgen::date_time_ymd(2036, 1, 1);
    Ok(p)
}

/// The client certificate and key (PEM) the API server presents to node agents, signed (once) by
/// the CA generated in `cert_dir`, as kube-apiserver's `--kubelet-client-certificate`. `None` when
/// `cert_dir` holds no generated CA (certificates given by flag).
pub fn kubelet_client(cert_dir: &Path) -> Result<Option<(String, String)>, TlsError> {
    let ca_key = cert_dir.join("ca.key");
    if !ca_key.exists() {
        return Ok(None);
    }
    let crt = cert_dir.join("apiserver-kubelet-client.crt");
    let key = cert_dir.join("apiserver-kubelet-client.key");
    if !crt.exists() || !key.exists() {
        let ca_pem = std::fs::read_to_string(&ca_key).map_err(io(&ca_key))?;
        let issuer = rcgen::Issuer::new(ca_params()?, KeyPair::from_pem(&ca_pem)?);
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name
            .push(DnType::CommonName, "kube-apiserver-kubelet-client");
        p.distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.not_after = rcgen::date_time_ymd(2036, 1, 1);
        let kp = KeyPair::generate()?;
        let cert = p.signed_by(&kp, &issuer)?;
        write_private(&key, &kp.serialize_pem())?;
        std::fs::write(&crt, cert.pem()).map_err(io(&crt))?;
    }
    let cert_pem = std::fs::read_to_string(&crt).map_err(io(&crt))?;
    let key_pem = std::fs::read_to_string(&key).map_err(io(&key))?;
    Ok(Some((cert_pem, key_pem)))
}

fn write_private(path: &Path, pem: &str) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(pem.as_bytes()).map_err(io(path))
}

/// A rustls server configuration offering HTTP/2 and HTTP/1.1.
pub fn server_config(files: &ServingFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| TlsError::File {
            path: files.cert.clone(),
            message: e.to_string(),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::File {
            path: files.cert.clone(),
            message: e.to_string(),
        })?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::File {
        path: files.key.clone(),
        message: e.to_string(),
    })?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A random bearer token (256 bits from the system's CSPRNG, hex).
pub fn random_token() -> String {
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    format!("{a}{b}")
}
