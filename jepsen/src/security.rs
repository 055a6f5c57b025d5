//! Securing a test cluster as an operator would: mutual TLS on the client and peer ports, from a
//! CA made for the run, and optionally authentication on top (a root user, and a user whose role
//! may read and write every key, which the workloads run as). Faults then also cut TLS sessions
//! and tokens, not only plaintext streams.
//!
//! Owns the certificates, the member flags and the clients' connect options; imports nothing of
//! the workloads, nemeses or checkers.

use std::path::{Path, PathBuf};

use cairn_client::{Client, ConnectOptions, Permission, PermissionType, TlsOptions};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// How clients and members talk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Security {
    #[default]
    Plain,
    /// Mutual TLS on the client and peer ports.
    Tls,
    /// Mutual TLS, and authentication on: every request carries a token.
    Auth,
}

impl std::str::FromStr for Security {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "plain" => Ok(Security::Plain),
            "tls" => Ok(Security::Tls),
            "auth" => Ok(Security::Auth),
            other => Err(format!("unknown security {other:?} (plain, tls or auth)")),
        }
    }
}

/// The user workloads run as when authentication is on, and its password.
pub const USER: (&str, &str) = ("jepsen", "jepsen-password");
/// The root user's password (root must exist before authentication can be enabled).
pub const ROOT_PASSWORD: &str = "root-password";

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("making certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("writing certificates: {0}")]
    Io(#[from] std::io::Error),
    #[error("authentication on, but a request without a user got {0}")]
    NotEnforced(String),
    #[error("turning authentication on: {0}")]
    Auth(#[from] cairn_client::Error),
}

/// The run's certificates, as PEM files in the run's folder.
#[derive(Clone, Debug)]
pub struct Secrets {
    pub security: Security,
    ca: PathBuf,
    /// One certificate serves every member, for clients and peers alike (all are 127.0.0.1).
    member: (PathBuf, PathBuf),
    client: (Vec<u8>, Vec<u8>),
}

impl Secrets {
    /// Makes the CA and certificates `security` needs under `dir` (none for plaintext).
    pub fn create(dir: &Path, security: Security) -> Result<Secrets, SecurityError> {
        if security == Security::Plain {
            return Ok(Secrets {
                security,
                ca: PathBuf::new(),
                member: (PathBuf::new(), PathBuf::new()),
                client: (Vec::new(), Vec::new()),
            });
        }
        let dir = dir.join("pki");
        std::fs::create_dir_all(&dir)?;
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "jepsen-ca");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);
        let issue = |cn: &str| -> Result<(String, String), rcgen::Error> {
            let key = KeyPair::generate()?;
            let mut p = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])?;
            p.distinguished_name.push(DnType::CommonName, cn);
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            Ok((p.signed_by(&key, &issuer)?.pem(), key.serialize_pem()))
        };
        let (member_cert, member_key) = issue("member")?;
        let (client_cert, client_key) = issue("jepsen-client")?;
        let ca = dir.join("ca.crt");
        std::fs::write(&ca, ca_cert.pem())?;
        let member = (dir.join("member.crt"), dir.join("member.key"));
        std::fs::write(&member.0, member_cert)?;
        std::fs::write(&member.1, member_key)?;
        Ok(Secrets {
            security,
            ca,
            member,
            client: (client_cert.into_bytes(), client_key.into_bytes()),
        })
    }

    /// `http` or `https`, for every URL of the cluster.
    pub fn scheme(&self) -> &'static str {
        match self.security {
            Security::Plain => "http",
            _ => "https",
        }
    }

    /// The member's flags, as etcd names them.
    pub fn member_args(&self) -> Vec<String> {
        if self.security == Security::Plain {
            return Vec::new();
        }
        let (cert, key) = (&self.member.0, &self.member.1);
        let path = |p: &PathBuf| p.display().to_string();
        vec![
            "--cert-file".into(),
            path(cert),
            "--key-file".into(),
            path(key),
            "--trusted-ca-file".into(),
            path(&self.ca),
            "--client-cert-auth".into(),
            "--peer-cert-file".into(),
            path(cert),
            "--peer-key-file".into(),
            path(key),
            "--peer-trusted-ca-file".into(),
            path(&self.ca),
            "--peer-client-cert-auth".into(),
        ]
    }

    /// What a client needs to connect: the CA and its certificate over TLS.
    pub fn options(&self) -> ConnectOptions {
        let opts = ConnectOptions::new();
        if self.security == Security::Plain {
            return opts;
        }
        let ca = std::fs::read(&self.ca).unwrap_or_default();
        opts.with_tls(
            TlsOptions::new()
                .with_ca_certificate(ca)
                .with_identity(self.client.0.clone(), self.client.1.clone()),
        )
    }
}

/// Turns authentication on through `endpoint` as an operator would: user `root` with role
/// `root`, and [`USER`] with a role that may read and write every key. Returns the options the
/// workloads then connect with.
pub async fn enable_auth(
    endpoint: &str,
    options: &ConnectOptions,
) -> Result<ConnectOptions, SecurityError> {
    let admin = Client::connect([endpoint], Some(options.clone())).await?;
    admin.user_add("root", ROOT_PASSWORD).await?;
    admin.role_add("root").await?;
    admin.user_grant_role("root", "root").await?;
    admin.role_add("readwrite").await?;
    let every_key = Permission::new(PermissionType::ReadWrite, vec![0]).with_from_key();
    admin.role_grant_permission("readwrite", every_key).await?;
    admin.user_add(USER.0, USER.1).await?;
    admin.user_grant_role(USER.0, "readwrite").await?;
    admin.auth_enable().await?;
    // Proof that it is enforced: a request without a token is refused from now on (the client
    // certificate's name, "jepsen-client", is no user of the store).
    match admin.get("jepsen-probe", None).await {
        Err(cairn_client::Error::Server {
            code: tonic::Code::PermissionDenied,
            ..
        }) => {}
        other => return Err(SecurityError::NotEnforced(format!("{other:?}"))),
    }
    Ok(options.clone().with_user(USER.0, USER.1))
}
