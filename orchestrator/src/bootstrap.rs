//! Bootstrap tokens, as Kubernetes' cluster-bootstrap package defines them: the `<id>.<secret>`
//! token format, the Secret that holds one in kube-system, the detached JWS that signs the public
//! `cluster-info` kubeconfig with a token (so a joining node can trust the CA it downloads without
//! trusting the connection), and the CA public-key pin (`sha256:<hex>`) that kubeadm prints.
//!
//! Shared by the API server (authentication), the controller manager (signing, cleaning), the
//! `token` command and the agent's `--join`; so it imports nothing else of the crate.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;
use sha2::{Digest, Sha256};

/// Namespace of token Secrets and the group every bootstrap user is in.
pub const NAMESPACE: &str = "kube-system";
pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
pub const SECRET_PREFIX: &str = "bootstrap-token-";
pub const USER_PREFIX: &str = "system:bootstrap:";
pub const GROUP: &str = "system:bootstrappers";
/// The group `kubeadm token create` adds by default.
pub const DEFAULT_NODE_GROUP: &str = "system:bootstrappers:kubeadm:default-node-token";
/// Where the public cluster information lives: readable without credentials.
pub const CLUSTER_INFO_NAMESPACE: &str = "kube-public";
pub const CLUSTER_INFO: &str = "cluster-info";
pub const KUBECONFIG_KEY: &str = "kubeconfig";
pub const JWS_PREFIX: &str = "jws-kubeconfig-";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the bootstrap token {0:?} was not of the form \"[a-z0-9]{{6}}.[a-z0-9]{{16}}\"")]
    Format(String),
    #[error("there is no JWS signed token in the cluster-info ConfigMap for token ID {0:?}")]
    NoSignature(String),
    #[error("failed to verify JWS signature of received cluster info object, can't trust this API Server")]
    BadSignature,
    #[error("cluster-info: {0}")]
    ClusterInfo(String),
    #[error("cluster CA found in cluster-info ConfigMap is invalid: {0}")]
    BadCa(String),
    #[error("none of the public keys \"{got}\" are pinned")]
    PinMismatch { got: String },
    #[error("invalid public key pin {0:?}: expected sha256:<64 hex digits>")]
    BadPin(String),
}

/// A bootstrap token: a public id (names the Secret and the user) and a secret part.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub id: String,
    pub secret: String,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret half never reaches a log.
        write!(f, "Token({}.****************)", self.id)
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.id, self.secret)
    }
}

fn token_chars(s: &str, n: usize) -> bool {
    s.len() == n
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

impl Token {
    pub fn parse(s: &str) -> Result<Token, TokenError> {
        match s.split_once('.') {
            Some((id, secret)) if token_chars(id, 6) && token_chars(secret, 16) => Ok(Token {
                id: id.into(),
                secret: secret.into(),
            }),
            _ => Err(TokenError::Format(s.into())),
        }
    }

    /// Whether `s` is shaped like a bootstrap token (so other authenticators can skip it).
    pub fn looks_like(s: &str) -> bool {
        Token::parse(s).is_ok()
    }

    /// A new token from the system's CSPRNG.
    pub fn generate() -> Token {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let rng = ring::rand::SystemRandom::new();
        let pick = |n: usize| -> String {
            let mut out = String::with_capacity(n);
            while out.len() < n {
                let mut b = [0u8; 1];
                ring::rand::SecureRandom::fill(&rng, &mut b).expect("the system CSPRNG works");
                // 252 = 7 * 36: rejecting the rest keeps every character equally likely.
                if b[0] < 252 {
                    out.push(ALPHABET[usize::from(b[0]) % 36] as char);
                }
            }
            out
        };
        let id = pick(6);
        let secret = pick(16);
        Token { id, secret }
    }

    pub fn secret_name(&self) -> String {
        format!("{SECRET_PREFIX}{}", self.id)
    }

    pub fn user(&self) -> String {
        format!("{USER_PREFIX}{}", self.id)
    }
}

/// What a token Secret says, from its decoded `data`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenSecret {
    pub id: String,
    pub secret: String,
    /// RFC 3339; none means it never expires.
    pub expiration: Option<String>,
    pub authentication: bool,
    pub signing: bool,
    pub extra_groups: Vec<String>,
    pub description: Option<String>,
}

impl TokenSecret {
    /// Reads a Secret's decoded data; `None` when the Secret is not a well-formed token (such
    /// Secrets are ignored, as Kubernetes ignores them).
    pub fn from_data(name: &str, data: &BTreeMap<String, Vec<u8>>) -> Option<TokenSecret> {
        let get = |k: &str| {
            data.get(k)
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(str::to_string)
        };
        let id = get("token-id")?;
        let secret = get("token-secret")?;
        if name != format!("{SECRET_PREFIX}{id}")
            || !token_chars(&id, 6)
            || !token_chars(&secret, 16)
        {
            return None;
        }
        Some(TokenSecret {
            id,
            secret,
            expiration: get("expiration"),
            authentication: get("usage-bootstrap-authentication").as_deref() == Some("true"),
            signing: get("usage-bootstrap-signing").as_deref() == Some("true"),
            extra_groups: get("auth-extra-groups")
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|g| g.starts_with("system:bootstrappers:"))
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            description: get("description"),
        })
    }

    /// The Secret's `data` for this token (values not yet base64-encoded).
    pub fn to_data(&self) -> BTreeMap<String, String> {
        let mut d = BTreeMap::from([
            ("token-id".to_string(), self.id.clone()),
            ("token-secret".to_string(), self.secret.clone()),
        ]);
        if let Some(e) = &self.expiration {
            d.insert("expiration".into(), e.clone());
        }
        if self.authentication {
            d.insert("usage-bootstrap-authentication".into(), "true".into());
        }
        if self.signing {
            d.insert("usage-bootstrap-signing".into(), "true".into());
        }
        if !self.extra_groups.is_empty() {
            d.insert("auth-extra-groups".into(), self.extra_groups.join(","));
        }
        if let Some(desc) = &self.description {
            d.insert("description".into(), desc.clone());
        }
        d
    }

    /// Whether the expiration has passed at `now`. An unparsable expiration counts as expired:
    /// a token nobody can date must not live forever.
    pub fn expired(&self, now: jiff::Timestamp) -> bool {
        match &self.expiration {
            None => false,
            Some(e) => e.parse::<jiff::Timestamp>().map_or(true, |t| t <= now),
        }
    }

    /// Whether `presented` authenticates as this token at `now`.
    pub fn authenticates(&self, presented: &Token, now: jiff::Timestamp) -> bool {
        self.authentication
            && !self.expired(now)
            && self.id == presented.id
            && same_secret(self.secret.as_bytes(), presented.secret.as_bytes())
    }

    /// The groups the authenticated user is in.
    pub fn groups(&self) -> Vec<String> {
        let mut g = vec![GROUP.to_string()];
        g.extend(self.extra_groups.iter().cloned());
        g
    }
}

/// Compares without stopping at the first difference, so the time taken does not tell an
/// attacker how much of a guess was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A detached JWS (RFC 7515 appendix F: `header..signature`) over `content`, HS256 keyed by the
/// token's secret, with the token id as `kid`: what the bootstrap signer puts in cluster-info.
pub fn sign_detached(content: &str, token: &Token) -> String {
    let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"HS256","kid":"{}"}}"#, token.id));
    let payload = URL_SAFE_NO_PAD.encode(content);
    let key = hmac::Key::new(hmac::HMAC_SHA256, token.secret.as_bytes());
    let sig = hmac::sign(&key, format!("{header}.{payload}").as_bytes());
    format!("{header}..{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

/// Checks a detached JWS made by [`sign_detached`] over `content` with `token`.
pub fn verify_detached(jws: &str, content: &str, token: &Token) -> Result<(), TokenError> {
    let (header, sig) = jws.split_once("..").ok_or(TokenError::BadSignature)?;
    let parsed: serde_json::Value = URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .ok_or(TokenError::BadSignature)?;
    if parsed["alg"] != "HS256" || parsed["kid"] != token.id.as_str() {
        return Err(TokenError::BadSignature);
    }
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| TokenError::BadSignature)?;
    let payload = URL_SAFE_NO_PAD.encode(content);
    let key = hmac::Key::new(hmac::HMAC_SHA256, token.secret.as_bytes());
    hmac::verify(&key, format!("{header}.{payload}").as_bytes(), &sig)
        .map_err(|_| TokenError::BadSignature)
}

/// kubeadm's CA pin: `sha256:` and the hex SHA-256 of the certificate's DER
/// SubjectPublicKeyInfo (so a re-issued CA with the same key keeps its pin).
pub fn ca_pin(cert_der: &[u8]) -> Result<String, TokenError> {
    let spki = subject_public_key_info(cert_der)
        .ok_or_else(|| TokenError::BadCa("not a DER X.509 certificate".into()))?;
    let digest = Sha256::digest(spki);
    Ok(format!("sha256:{}", hex(&digest)))
}

/// Checks a `sha256:<hex>` pin's shape, lower-casing it.
pub fn parse_pin(pin: &str) -> Result<String, TokenError> {
    match pin.split_once(':') {
        Some(("sha256", h)) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(format!("sha256:{}", h.to_ascii_lowercase()))
        }
        _ => Err(TokenError::BadPin(pin.into())),
    }
}

/// The kubeconfig published in cluster-info: where the API server is and the CA it serves with,
/// and no credentials.
pub fn cluster_info_kubeconfig(server: &str, ca_pem: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: \"\"\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\ncontexts: []\nusers: []\ncurrent-context: \"\"\npreferences: {{}}\n"
    )
}

/// The server and CA (PEM) of a cluster-info kubeconfig's first cluster.
pub fn parse_cluster_info(kubeconfig: &str) -> Result<(String, String), TokenError> {
    #[derive(serde::Deserialize)]
    struct Kc {
        clusters: Vec<Named>,
    }
    #[derive(serde::Deserialize)]
    struct Named {
        cluster: Cluster,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "kebab-case")]
    struct Cluster {
        server: String,
        certificate_authority_data: String,
    }
    let kc: Kc =
        serde_yaml::from_str(kubeconfig).map_err(|e| TokenError::ClusterInfo(e.to_string()))?;
    let c = kc
        .clusters
        .into_iter()
        .next()
        .ok_or_else(|| TokenError::ClusterInfo("the kubeconfig names no cluster".into()))?
        .cluster;
    let ca = base64::engine::general_purpose::STANDARD
        .decode(c.certificate_authority_data.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| TokenError::BadCa("certificate-authority-data is not base64 PEM".into()))?;
    Ok((c.server, ca))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One DER element, and what follows it.
struct Tlv<'a> {
    tag: u8,
    /// Tag, length and contents.
    whole: &'a [u8],
    contents: &'a [u8],
    rest: &'a [u8],
}

fn tlv(b: &[u8]) -> Option<Tlv<'_>> {
    let tag = *b.first()?;
    let first = *b.get(1)?;
    let (len, hdr) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | usize::from(*b.get(2 + i)?);
        }
        (len, 2 + n)
    };
    let end = hdr.checked_add(len)?;
    let whole = b.get(..end)?;
    Some(Tlv {
        tag,
        whole,
        contents: &whole[hdr..],
        rest: &b[end..],
    })
}

/// The SubjectPublicKeyInfo inside Certificate ::= SEQUENCE { tbsCertificate SEQUENCE {
/// [0] version OPTIONAL, serialNumber, signature, issuer, validity, subject,
/// subjectPublicKeyInfo, ... }, ... }.
fn subject_public_key_info(der: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    let cert = tlv(der).filter(|t| t.tag == SEQUENCE)?;
    let tbs = tlv(cert.contents).filter(|t| t.tag == SEQUENCE)?;
    let mut rest = tbs.contents;
    let first = tlv(rest)?;
    if first.tag == 0xa0 {
        rest = first.rest;
    }
    // serialNumber, signature, issuer, validity, subject.
    for _ in 0..5 {
        rest = tlv(rest)?.rest;
    }
    let spki = tlv(rest).filter(|t| t.tag == SEQUENCE)?;
    Some(spki.whole)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_only_in_the_bootstrap_shape() {
        let t = Token::parse("abcdef.0123456789abcdef").unwrap();
        assert_eq!(t.secret_name(), "bootstrap-token-abcdef");
        assert_eq!(t.user(), "system:bootstrap:abcdef");
        assert_eq!(format!("{t:?}"), "Token(abcdef.****************)");
        for bad in [
            "abcdef0123456789abcdef",
            "ABCDEF.0123456789abcdef",
            "abcde.0123456789abcdef",
            "abcdef.0123456789abcde",
            "abcdef.0123456789abcdef.",
        ] {
            assert!(Token::parse(bad).is_err(), "{bad}");
        }
        let g = Token::generate();
        assert_eq!(Token::parse(&g.to_string()).unwrap(), g);
        assert_ne!(Token::generate(), g);
    }

    #[test]
    fn a_secret_authenticates_its_token_until_it_expires() {
        let t = Token::parse("abcdef.0123456789abcdef").unwrap();
        let s = TokenSecret {
            id: t.id.clone(),
            secret: t.secret.clone(),
            expiration: Some("2030-01-01T00:00:00Z".into()),
            authentication: true,
            signing: true,
            extra_groups: vec![DEFAULT_NODE_GROUP.into(), "evil".into()],
            description: None,
        };
        let data = s
            .to_data()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        let back = TokenSecret::from_data("bootstrap-token-abcdef", &data).unwrap();
        // Groups outside system:bootstrappers: are dropped, as Kubernetes drops them.
        assert_eq!(back.groups(), vec![GROUP, DEFAULT_NODE_GROUP]);
        assert!(TokenSecret::from_data("bootstrap-token-zzzzzz", &data).is_none());
        let before: jiff::Timestamp = "2029-12-31T23:59:59Z".parse().unwrap();
        let after: jiff::Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
        assert!(back.authenticates(&t, before));
        assert!(!back.authenticates(&t, after));
        let wrong = Token::parse("abcdef.0123456789abcdee").unwrap();
        assert!(!back.authenticates(&wrong, before));
        let unusable = TokenSecret {
            authentication: false,
            ..back
        };
        assert!(!unusable.authenticates(&t, before));
    }

    #[test]
    fn detached_signatures_verify_only_with_their_token_and_content() {
        let t = Token::parse("abcdef.0123456789abcdef").unwrap();
        let jws = sign_detached("kubeconfig text", &t);
        assert!(jws.contains(".."));
        verify_detached(&jws, "kubeconfig text", &t).unwrap();
        assert_eq!(
            verify_detached(&jws, "kubeconfig text!", &t),
            Err(TokenError::BadSignature)
        );
        let other = Token::parse("abcdef.0123456789abcdee").unwrap();
        assert!(verify_detached(&jws, "kubeconfig text", &other).is_err());
        let other_id = Token::parse("zzzzzz.0123456789abcdef").unwrap();
        assert!(verify_detached(&jws, "kubeconfig text", &other_id).is_err());
        assert!(verify_detached("garbage", "kubeconfig text", &t).is_err());
    }

    #[test]
    fn cluster_info_round_trips() {
        let text =
            cluster_info_kubeconfig("https://10.0.0.1:6443", "-----BEGIN CERTIFICATE-----\n");
        let (server, ca) = parse_cluster_info(&text).unwrap();
        assert_eq!(server, "https://10.0.0.1:6443");
        assert_eq!(ca, "-----BEGIN CERTIFICATE-----\n");
        assert!(parse_cluster_info("clusters: []").is_err());
    }

    #[test]
    fn the_pin_hashes_the_public_key_of_the_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["a".into()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pin = ca_pin(cert.der()).unwrap();
        let expected = format!(
            "sha256:{}",
            hex(&Sha256::digest(
                rcgen::PublicKeyData::subject_public_key_info(&key)
            ))
        );
        assert_eq!(pin, expected);
        // A second certificate for the same key has the same pin.
        let params = rcgen::CertificateParams::new(vec!["b".into()]).unwrap();
        assert_eq!(
            ca_pin(params.self_signed(&key).unwrap().der()).unwrap(),
            pin
        );
        assert!(ca_pin(b"\x30\x03\x02\x01\x01").is_err());
        assert_eq!(
            parse_pin(&pin.to_uppercase().replacen("SHA256", "sha256", 1)),
            Ok(pin)
        );
        assert!(parse_pin("sha1:abcd").is_err());
    }
}
