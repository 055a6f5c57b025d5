//! Service account tokens: the signing key and the public keys that verify, the claims Kubernetes
//! puts in a token (`iss`, `sub`, `aud`, `exp`, `iat`, `nbf`, `jti` and the `kubernetes.io` claim
//! naming the namespace, the service account and the object the token is bound to), issuing and
//! checking the JWS. kube-apiserver's `--service-account-signing-key-file`,
//! `--service-account-key-file`, `--service-account-issuer` and `--api-audiences`.
//!
//! Keys are ES256 (P-256) or RS256 (RSA); without files, a P-256 key is generated once in the
//! certificate directory (`sa.key`, `sa.pub`) and reused, so tokens outlive a restart. The key id
//! is, as Kubernetes computes it, the unpadded base64url SHA-256 of the public key's DER.
//!
//! Checking here is cryptographic and temporal only (signature, issuer, audience, expiry); whether
//! the service account and the bound object still exist is the authenticator's business. Pure:
//! imports nothing of the registry, the HTTP layer or the rest of the crate.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::SubjectPublicKeyInfoDer;

/// kubeadm's issuer, the one in-cluster clients of most clusters see.
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// The lifetime of a token when the request names none (TokenRequestSpec's default).
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;

/// The shortest lifetime a TokenRequest may ask for.
pub const MIN_EXPIRATION_SECONDS: i64 = 600;

/// How far a token's times may be off the server's clock (go-jose's default leeway, which
/// Kubernetes' validator uses).
const LEEWAY_SECONDS: u64 = 60;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("service account key: {0}")]
    Key(String),
    #[error("signing: {0}")]
    Sign(String),
}

/// Why a presented token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("not a service account token")]
    Malformed,
    #[error("invalid signature")]
    Signature,
    #[error("service account token has expired")]
    Expired,
    #[error("service account token is not valid yet")]
    NotYetValid,
    #[error("token audiences do not match")]
    Audience,
    #[error("token issuer is not accepted")]
    Issuer,
}

fn file_err(path: &Path) -> impl Fn(std::io::Error) -> TokenError + '_ {
    move |e| TokenError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// A name and uid, as the `kubernetes.io` claim refers to objects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    pub name: String,
    pub uid: String,
}

/// The private `kubernetes.io` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesClaim {
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<ObjectRef>,
    pub serviceaccount: ObjectRef,
}

/// Every claim of a service account token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub iss: String,
    pub jti: String,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaim,
    pub nbf: i64,
    pub sub: String,
}

/// The object a token is bound to: it stops authenticating when that object goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bound {
    /// A pod, and the node it was scheduled to when the token was issued.
    Pod {
        pod: ObjectRef,
        node: Option<ObjectRef>,
    },
    Secret(ObjectRef),
}

/// `system:serviceaccount:<ns>:<name>`, the user a token authenticates as.
pub fn subject(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

impl Claims {
    /// The claims of a token for service account `sa` in `namespace`, issued at `now` (seconds
    /// since the epoch) for `expiration_seconds`, bound to `bound`.
    pub fn new(
        issuer: &str,
        namespace: &str,
        sa: ObjectRef,
        bound: Option<Bound>,
        audiences: Vec<String>,
        now: i64,
        expiration_seconds: i64,
    ) -> Claims {
        let (pod, node, secret) = match bound {
            Some(Bound::Pod { pod, node }) => (Some(pod), node, None),
            Some(Bound::Secret(s)) => (None, None, Some(s)),
            None => (None, None, None),
        };
        Claims {
            aud: audiences,
            exp: now + expiration_seconds,
            iat: now,
            iss: issuer.to_string(),
            jti: uuid::Uuid::new_v4().to_string(),
            sub: subject(namespace, &sa.name),
            kubernetes: KubernetesClaim {
                namespace: namespace.to_string(),
                node,
                pod,
                secret,
                serviceaccount: sa,
            },
            nbf: now,
        }
    }
}

struct PublicKey {
    kid: String,
    alg: Algorithm,
    key: DecodingKey,
}

/// The signing key and every key a token may be signed with.
pub struct Keys {
    kid: String,
    alg: Algorithm,
    signing: EncodingKey,
    public: Vec<PublicKey>,
}

/// The key id Kubernetes gives a public key: base64url (unpadded) of the SHA-256 of its DER.
fn key_id(spki_der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, spki_der))
}

/// A public key from its PEM (`PUBLIC KEY`, SubjectPublicKeyInfo).
fn public_key(pem: &str) -> Result<PublicKey, TokenError> {
    let der = SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| TokenError::Key(format!("public key: {e}")))?;
    let kid = key_id(der.as_ref());
    if let Ok(key) = DecodingKey::from_ec_pem(pem.as_bytes()) {
        return Ok(PublicKey {
            kid,
            alg: Algorithm::ES256,
            key,
        });
    }
    let key = DecodingKey::from_rsa_pem(pem.as_bytes())
        .map_err(|e| TokenError::Key(format!("neither a P-256 nor an RSA public key: {e}")))?;
    Ok(PublicKey {
        kid,
        alg: Algorithm::RS256,
        key,
    })
}

/// The public half of a private key's PEM, and the algorithm it signs with.
fn public_of_private(pem: &str) -> Result<(String, Algorithm), TokenError> {
    let kp = rcgen::KeyPair::from_pem(pem).map_err(|e| TokenError::Key(e.to_string()))?;
    let alg = if kp.algorithm() == &rcgen::PKCS_ECDSA_P256_SHA256 {
        Algorithm::ES256
    } else if kp.algorithm() == &rcgen::PKCS_RSA_SHA256 {
        Algorithm::RS256
    } else {
        return Err(TokenError::Key(
            "only P-256 (ES256) and RSA (RS256) keys sign service account tokens".into(),
        ));
    };
    Ok((kp.public_key_pem(), alg))
}

/// The public keys in a PEM file: its public keys, and the public halves of its private keys.
fn public_keys_in(text: &str) -> Result<Vec<PublicKey>, TokenError> {
    let mut out = Vec::new();
    let mut block = String::new();
    for line in text.lines() {
        if line.starts_with("-----BEGIN ") {
            block.clear();
        }
        block.push_str(line);
        block.push('\n');
        if line.starts_with("-----END ") {
            if line.contains("PRIVATE KEY") {
                out.push(public_key(&public_of_private(&block)?.0)?);
            } else if line.contains("PUBLIC KEY") {
                out.push(public_key(&block)?);
            }
        }
    }
    if out.is_empty() {
        return Err(TokenError::Key("no PEM key found".into()));
    }
    Ok(out)
}

impl Keys {
    /// Keys from PEM text: the private signing key, and further public (or private) keys that
    /// verify tokens too, as during a key rotation. The signing key always verifies.
    pub fn from_pem(signing: &str, verifying: &[String]) -> Result<Keys, TokenError> {
        let (public_pem, alg) = public_of_private(signing)?;
        let signing_key = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(signing.as_bytes()),
            _ => EncodingKey::from_rsa_pem(signing.as_bytes()),
        }
        .map_err(|e| TokenError::Key(e.to_string()))?;
        let own = public_key(&public_pem)?;
        let kid = own.kid.clone();
        let mut public = vec![own];
        for text in verifying {
            for k in public_keys_in(text)? {
                if !public.iter().any(|p| p.kid == k.kid) {
                    public.push(k);
                }
            }
        }
        Ok(Keys {
            kid,
            alg,
            signing: signing_key,
            public,
        })
    }

    /// Keys from files (`--service-account-signing-key-file`, `--service-account-key-file`).
    pub fn from_files(signing: &Path, verifying: &[PathBuf]) -> Result<Keys, TokenError> {
        let text = std::fs::read_to_string(signing).map_err(file_err(signing))?;
        let others = verifying
            .iter()
            .map(|p| std::fs::read_to_string(p).map_err(file_err(p)))
            .collect::<Result<Vec<_>, _>>()?;
        Keys::from_pem(&text, &others)
    }

    /// The keys kept in `dir` (`sa.key`, `sa.pub`), generated there the first time.
    pub fn in_dir(dir: &Path) -> Result<Keys, TokenError> {
        let (key, public) = (dir.join("sa.key"), dir.join("sa.pub"));
        if !key.exists() {
            std::fs::create_dir_all(dir).map_err(file_err(dir))?;
            let kp = rcgen::KeyPair::generate().map_err(|e| TokenError::Key(e.to_string()))?;
            write_private(&key, &kp.serialize_pem())?;
            std::fs::write(&public, kp.public_key_pem()).map_err(file_err(&public))?;
        }
        Keys::from_files(&key, &[])
    }

    /// The id of the signing key, as tokens carry it in their header.
    pub fn key_id(&self) -> &str {
        &self.kid
    }
}

fn write_private(path: &Path, pem: &str) -> Result<(), TokenError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(file_err(path))?;
    f.write_all(pem.as_bytes()).map_err(file_err(path))
}

/// Issues and checks tokens: keys, the issuer names and the API server's audiences.
pub struct Issuer {
    keys: Keys,
    /// The first signs; every one is accepted (`--service-account-issuer` given more than once).
    issuers: Vec<String>,
    /// The audiences a token must name one of to authenticate here, and those a request that
    /// names none gets (`--api-audiences`; the issuer by default).
    audiences: Vec<String>,
    /// The longest lifetime issued (`--service-account-max-token-expiration`); longer requests
    /// are shortened to it.
    max_expiration_seconds: Option<i64>,
}

impl Issuer {
    /// `issuers` must not be empty; `audiences` empty means the first issuer.
    pub fn new(
        keys: Keys,
        issuers: Vec<String>,
        audiences: Vec<String>,
        max_expiration_seconds: Option<i64>,
    ) -> Result<Issuer, TokenError> {
        let Some(first) = issuers.first() else {
            return Err(TokenError::Key(
                "at least one service account issuer is needed".into(),
            ));
        };
        let audiences = if audiences.is_empty() {
            vec![first.clone()]
        } else {
            audiences
        };
        Ok(Issuer {
            keys,
            issuers,
            audiences,
            max_expiration_seconds,
        })
    }

    /// The issuer tokens are signed as.
    pub fn issuer(&self) -> &str {
        &self.issuers[0]
    }

    /// The API server's own audiences.
    pub fn audiences(&self) -> &[String] {
        &self.audiences
    }

    /// A requested lifetime after the server's maximum.
    pub fn clamp_expiration(&self, seconds: i64) -> i64 {
        match self.max_expiration_seconds {
            Some(max) if max > 0 && seconds > max => max,
            _ => seconds,
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The signed token (compact JWS) carrying `claims`.
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let mut header = Header::new(self.keys.alg);
        header.kid = Some(self.keys.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.keys.signing)
            .map_err(|e| TokenError::Sign(e.to_string()))
    }

    /// Whether `token` looks like a JWS at all (three dot-separated parts), which bearer tokens
    /// of other kinds never do.
    pub fn looks_like_jwt(token: &str) -> bool {
        token.split('.').count() == 3 && token.starts_with("eyJ")
    }

    /// The claims of a token signed by one of the keys, by one of the issuers, for one of the
    /// server's audiences, and within its lifetime at the time of the call.
    pub fn verify(&self, token: &str) -> Result<Claims, Invalid> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Invalid::Malformed)?;
        // A token naming its key is checked against that key only; one without a key id against
        // each key of its algorithm, as Kubernetes does.
        let candidates: Vec<&PublicKey> = self
            .keys
            .public
            .iter()
            .filter(|k| k.alg == header.alg)
            .filter(|k| header.kid.as_deref().is_none_or(|kid| kid == k.kid))
            .collect();
        if candidates.is_empty() {
            return Err(Invalid::Signature);
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        validation.set_audience(&self.audiences);
        validation.set_issuer(&self.issuers);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let mut last = Invalid::Signature;
        for k in candidates {
            match jsonwebtoken::decode::<Claims>(token, &k.key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind;
                    last = match e.kind() {
                        ErrorKind::InvalidSignature => Invalid::Signature,
                        ErrorKind::ExpiredSignature => return Err(Invalid::Expired),
                        ErrorKind::ImmatureSignature => return Err(Invalid::NotYetValid),
                        ErrorKind::InvalidAudience => return Err(Invalid::Audience),
                        ErrorKind::InvalidIssuer => return Err(Invalid::Issuer),
                        _ => Invalid::Malformed,
                    };
                }
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer(keys: Keys) -> Issuer {
        Issuer::new(keys, vec![DEFAULT_ISSUER.into()], vec![], None).unwrap()
    }

    fn now() -> i64 {
        jiff::Timestamp::now().as_second()
    }

    fn claims(aud: &[&str], iat: i64, ttl: i64) -> Claims {
        Claims::new(
            DEFAULT_ISSUER,
            "team",
            ObjectRef {
                name: "robot".into(),
                uid: "sa-uid".into(),
            },
            Some(Bound::Pod {
                pod: ObjectRef {
                    name: "web".into(),
                    uid: "pod-uid".into(),
                },
                node: Some(ObjectRef {
                    name: "n1".into(),
                    uid: "node-uid".into(),
                }),
            }),
            aud.iter().map(|a| a.to_string()).collect(),
            iat,
            ttl,
        )
    }

    #[test]
    fn keys_are_generated_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = Keys::in_dir(dir.path()).unwrap();
        let b = Keys::in_dir(dir.path()).unwrap();
        assert_eq!(a.key_id(), b.key_id());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("sa.key"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        // A token from the first load verifies with the second: tokens outlive a restart.
        let t = issuer(a)
            .sign(&claims(&[DEFAULT_ISSUER], now(), 600))
            .unwrap();
        assert_eq!(
            issuer(b).verify(&t).unwrap().sub,
            "system:serviceaccount:team:robot"
        );
    }

    #[test]
    fn a_token_carries_kubernetes_claims_and_its_key_id() {
        let dir = tempfile::tempdir().unwrap();
        let iss = issuer(Keys::in_dir(dir.path()).unwrap());
        let t = iss.sign(&claims(&[DEFAULT_ISSUER], 1000, 3600)).unwrap();
        let parts: Vec<&str> = t.split('.').collect();
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], iss.keys().key_id());
        let body: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(body["aud"], serde_json::json!([DEFAULT_ISSUER]));
        assert_eq!(
            (body["iat"].clone(), body["nbf"].clone()),
            (1000.into(), 1000.into())
        );
        assert_eq!(body["exp"], 4600);
        assert_eq!(
            body["kubernetes.io"],
            serde_json::json!({"namespace": "team",
                "node": {"name": "n1", "uid": "node-uid"},
                "pod": {"name": "web", "uid": "pod-uid"},
                "serviceaccount": {"name": "robot", "uid": "sa-uid"}})
        );
    }

    #[test]
    fn verification_checks_signature_expiry_audience_and_issuer() {
        let dir = tempfile::tempdir().unwrap();
        let iss = issuer(Keys::in_dir(dir.path()).unwrap());
        let good = iss.sign(&claims(&[DEFAULT_ISSUER], now(), 600)).unwrap();
        assert!(iss.verify(&good).is_ok());

        let expired = iss
            .sign(&claims(&[DEFAULT_ISSUER], now() - 7200, 600))
            .unwrap();
        assert_eq!(iss.verify(&expired), Err(Invalid::Expired));

        let other_audience = iss.sign(&claims(&["vault"], now(), 600)).unwrap();
        assert_eq!(iss.verify(&other_audience), Err(Invalid::Audience));

        // A changed payload no longer matches the signature.
        let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
        let mut body: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
        body["sub"] = "system:serviceaccount:kube-system:admin".into();
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&body).unwrap());
        assert_eq!(iss.verify(&parts.join(".")), Err(Invalid::Signature));

        // Another cluster's key (same issuer name) is not trusted.
        let elsewhere = tempfile::tempdir().unwrap();
        let stranger = issuer(Keys::in_dir(elsewhere.path()).unwrap());
        let foreign = stranger
            .sign(&claims(&[DEFAULT_ISSUER], now(), 600))
            .unwrap();
        assert_eq!(iss.verify(&foreign), Err(Invalid::Signature));

        let renamed = Issuer::new(
            Keys::in_dir(dir.path()).unwrap(),
            vec!["https://elsewhere".into()],
            vec![DEFAULT_ISSUER.into()],
            None,
        )
        .unwrap();
        assert_eq!(renamed.verify(&good), Err(Invalid::Issuer));
        assert_eq!(iss.verify("abc.def.ghi"), Err(Invalid::Malformed));
    }

    #[test]
    fn an_added_public_key_verifies_tokens_of_a_retired_signing_key() {
        let (old, new) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let retired = issuer(Keys::in_dir(old.path()).unwrap());
        let token = retired
            .sign(&claims(&[DEFAULT_ISSUER], now(), 600))
            .unwrap();
        Keys::in_dir(new.path()).unwrap();
        let signing = std::fs::read_to_string(new.path().join("sa.key")).unwrap();
        let old_public = std::fs::read_to_string(old.path().join("sa.pub")).unwrap();
        let rotated = issuer(Keys::from_pem(&signing, &[old_public]).unwrap());
        assert!(rotated.verify(&token).is_ok());
        assert_ne!(rotated.keys().key_id(), retired.keys().key_id());
    }

    #[test]
    fn an_rsa_key_from_files_signs_rs256() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("rsa.key");
        let made = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&key)
            .output();
        if !made.is_ok_and(|o| o.status.success()) {
            println!(
                "SKIPPED: an_rsa_key_from_files_signs_rs256: openssl cannot make an RSA key here"
            );
            return;
        }
        let iss = issuer(Keys::from_files(&key, &[]).unwrap());
        let t = iss.sign(&claims(&[DEFAULT_ISSUER], now(), 600)).unwrap();
        let header: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(t.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header["alg"], "RS256");
        assert!(iss.verify(&t).is_ok());
        // An ES256 key of another cluster does not verify it.
        let other = tempfile::tempdir().unwrap();
        assert_eq!(
            issuer(Keys::in_dir(other.path()).unwrap()).verify(&t),
            Err(Invalid::Signature)
        );
    }

    #[test]
    fn the_maximum_lifetime_shortens_requests() {
        let dir = tempfile::tempdir().unwrap();
        let iss = Issuer::new(
            Keys::in_dir(dir.path()).unwrap(),
            vec![DEFAULT_ISSUER.into()],
            vec![],
            Some(7200),
        )
        .unwrap();
        assert_eq!(iss.clamp_expiration(3600), 3600);
        assert_eq!(iss.clamp_expiration(86400), 7200);
        assert_eq!(iss.audiences(), [DEFAULT_ISSUER.to_string()]);
    }
}
