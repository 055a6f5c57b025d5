//! Tokens that name a caller after Authenticate, as etcd's `--auth-token` chooses them.
//!
//! `simple`: a random string plus a sequence number, meaningless by itself; the member handling
//! Authenticate proposes it through the log and every member records it on apply
//! ([`SimpleTokens`]), so the token works against whichever member a client talks to. Each member
//! forgets a token `--auth-token-ttl` after its last use, by its own clock, and all of them on a
//! restart, as etcd does.
//!
//! `jwt`: a signed token carrying the user name, the auth revision at issue and an expiry, which
//! any member holding the public key verifies without shared state.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::state::AuthStore;
use super::AuthInfo;

/// etcd's default `--auth-token-ttl`.
pub const DEFAULT_SIMPLE_TTL: Duration = Duration::from_secs(300);
/// etcd's default `ttl` of JWTs.
pub const DEFAULT_JWT_TTL: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("invalid --auth-token {0:?}: {1}")]
    Spec(String, String),
    #[error("reading JWT key {0}: {1}")]
    Key(PathBuf, String),
    #[error("signing a JWT: {0}")]
    Sign(String),
    #[error("this member has no private key to sign JWTs with")]
    NoPrivateKey,
}

/// Simple tokens this member knows, each with the user it names and when it lapses unless used.
pub struct SimpleTokens {
    tokens: Mutex<HashMap<String, (String, Instant)>>,
    ttl_ms: AtomicU64,
}

impl Default for SimpleTokens {
    fn default() -> Self {
        SimpleTokens {
            tokens: Mutex::new(HashMap::new()),
            ttl_ms: AtomicU64::new(DEFAULT_SIMPLE_TTL.as_millis() as u64),
        }
    }
}

impl SimpleTokens {
    pub fn set_ttl(&self, ttl: Duration) {
        self.ttl_ms.store(ttl.as_millis() as u64, Ordering::Relaxed);
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.load(Ordering::Relaxed))
    }

    pub(super) fn add(&self, token: String, user: String) {
        let now = Instant::now();
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        // Lapsed tokens go when new ones come, so the map stays as large as the live set.
        tokens.retain(|_, (_, until)| *until > now);
        tokens.insert(token, (user, now + self.ttl()));
    }

    /// The user a live token names; using it restarts its TTL.
    pub fn lookup(&self, token: &str) -> Option<String> {
        let now = Instant::now();
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        match tokens.get_mut(token) {
            Some((user, until)) if *until > now => {
                *until = now + self.ttl();
                Some(user.clone())
            }
            Some(_) => {
                tokens.remove(token);
                None
            }
            None => None,
        }
    }

    pub(super) fn invalidate_user(&self, user: &str) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.retain(|_, (u, _)| u != user);
    }

    pub(super) fn clear(&self) {
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

#[derive(Serialize, Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

/// JWT signing and verification keys, as `--auth-token jwt,...` names them.
pub struct JwtKeys {
    algorithm: Algorithm,
    encoding: Option<EncodingKey>,
    decoding: DecodingKey,
    ttl: Duration,
}

/// How this member issues and reads tokens.
pub enum TokenProvider {
    Simple { counter: AtomicU64 },
    Jwt(Box<JwtKeys>),
}

fn parse_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

impl TokenProvider {
    pub fn simple() -> TokenProvider {
        TokenProvider::Simple {
            counter: AtomicU64::new(0),
        }
    }

    /// Parses etcd's `--auth-token`: `simple`, or `jwt,pub-key=PATH,priv-key=PATH,
    /// sign-method=RS256|RS384|RS512|PS256|PS384|PS512|ES256|ES384|EdDSA|HS256|HS384|HS512,ttl=5m`
    /// (HS methods take the secret from `priv-key`). Reads the key files.
    pub fn parse(spec: &str) -> Result<TokenProvider, TokenError> {
        let bad = |m: &str| TokenError::Spec(spec.to_string(), m.to_string());
        let mut parts = spec.split(',');
        match parts.next().map(str::trim) {
            Some("simple") | Some("") | None => return Ok(TokenProvider::simple()),
            Some("jwt") => {}
            Some(other) => return Err(bad(&format!("unknown token type {other:?}"))),
        }
        let (mut public, mut private, mut method, mut ttl) = (None, None, None, DEFAULT_JWT_TTL);
        for part in parts {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| bad("expected key=value"))?;
            match k.trim() {
                "pub-key" => public = Some(PathBuf::from(v)),
                "priv-key" => private = Some(PathBuf::from(v)),
                "sign-method" => method = Some(v.to_string()),
                "ttl" => ttl = parse_duration(v).ok_or_else(|| bad("bad ttl"))?,
                other => return Err(bad(&format!("unknown option {other:?}"))),
            }
        }
        let method = method.ok_or_else(|| bad("sign-method is required"))?;
        let algorithm: Algorithm = method
            .parse()
            .map_err(|_| bad(&format!("unknown sign-method {method:?}")))?;
        let read =
            |p: &PathBuf| std::fs::read(p).map_err(|e| TokenError::Key(p.clone(), e.to_string()));
        let key_err =
            |p: &PathBuf, e: jsonwebtoken::errors::Error| TokenError::Key(p.clone(), e.to_string());
        use Algorithm::*;
        let (encoding, decoding) = match algorithm {
            HS256 | HS384 | HS512 => {
                let path = private.ok_or_else(|| bad("priv-key is required for HS methods"))?;
                let secret = read(&path)?;
                (
                    Some(EncodingKey::from_secret(&secret)),
                    DecodingKey::from_secret(&secret),
                )
            }
            _ => {
                let path = public.ok_or_else(|| bad("pub-key is required"))?;
                let pem = read(&path)?;
                let decoding = match algorithm {
                    ES256 | ES384 => DecodingKey::from_ec_pem(&pem),
                    EdDSA => DecodingKey::from_ed_pem(&pem),
                    _ => DecodingKey::from_rsa_pem(&pem),
                }
                .map_err(|e| key_err(&path, e))?;
                let encoding = match private {
                    None => None,
                    Some(path) => {
                        let pem = read(&path)?;
                        Some(
                            match algorithm {
                                ES256 | ES384 => EncodingKey::from_ec_pem(&pem),
                                EdDSA => EncodingKey::from_ed_pem(&pem),
                                _ => EncodingKey::from_rsa_pem(&pem),
                            }
                            .map_err(|e| key_err(&path, e))?,
                        )
                    }
                };
                (encoding, decoding)
            }
        };
        Ok(TokenProvider::Jwt(Box::new(JwtKeys {
            algorithm,
            encoding,
            decoding,
            ttl,
        })))
    }

    pub fn is_simple(&self) -> bool {
        matches!(self, TokenProvider::Simple { .. })
    }

    /// A new simple token to propose with Authenticate (`None` with JWTs): 16 random letters, a
    /// dot and this member's sequence number, etcd's shape.
    pub fn new_simple_token(&self) -> Option<String> {
        let TokenProvider::Simple { counter } = self else {
            return None;
        };
        const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        let rng = ring::rand::SystemRandom::new();
        let mut bytes = [0u8; 16];
        // The system's random source failing leaves no safe token to give: fall back to none.
        ring::rand::SecureRandom::fill(&rng, &mut bytes).ok()?;
        let prefix: String = bytes
            .iter()
            .map(|b| LETTERS[*b as usize % LETTERS.len()] as char)
            .collect();
        Some(format!(
            "{prefix}.{}",
            counter.fetch_add(1, Ordering::Relaxed) + 1
        ))
    }

    /// The token Authenticate answers with once the entry applied: the simple token proposed, or
    /// a JWT for `user` at auth revision `revision`.
    pub fn token_for(
        &self,
        simple: Option<String>,
        user: &str,
        revision: u64,
    ) -> Result<String, TokenError> {
        match self {
            TokenProvider::Simple { .. } => {
                simple.ok_or(TokenError::Sign("no simple token".into()))
            }
            TokenProvider::Jwt(keys) => {
                let key = keys.encoding.as_ref().ok_or(TokenError::NoPrivateKey)?;
                let exp = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    + keys.ttl;
                let claims = Claims {
                    username: user.to_string(),
                    revision,
                    exp: exp.as_secs(),
                };
                jsonwebtoken::encode(&Header::new(keys.algorithm), &claims, key)
                    .map_err(|e| TokenError::Sign(e.to_string()))
            }
        }
    }

    /// Who a token names, if it is valid: a simple token this member knows (checked at the
    /// current auth revision), or a JWT with a good signature that has not expired (checked at the
    /// revision it carries).
    pub fn info(&self, store: &AuthStore, token: &str) -> Option<AuthInfo> {
        match self {
            TokenProvider::Simple { .. } => store.tokens.lookup(token).map(|user| AuthInfo {
                user,
                revision: store.revision(),
            }),
            TokenProvider::Jwt(keys) => {
                let mut validation = Validation::new(keys.algorithm);
                validation.leeway = 0;
                let data =
                    jsonwebtoken::decode::<Claims>(token, &keys.decoding, &validation).ok()?;
                Some(AuthInfo {
                    user: data.claims.username,
                    revision: data.claims.revision,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_tokens_lapse_unless_used_and_go_with_their_user() {
        let tokens = SimpleTokens::default();
        tokens.set_ttl(Duration::from_millis(200));
        tokens.add("a.1".into(), "alice".into());
        tokens.add("b.2".into(), "bob".into());
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(100));
            assert_eq!(tokens.lookup("a.1").as_deref(), Some("alice"));
        }
        assert_eq!(tokens.lookup("b.2"), None);
        tokens.invalidate_user("alice");
        assert_eq!(tokens.lookup("a.1"), None);
    }

    #[test]
    fn auth_token_specs_parse_as_etcd_writes_them() {
        assert!(matches!(
            TokenProvider::parse("simple").unwrap(),
            TokenProvider::Simple { .. }
        ));
        assert!(TokenProvider::parse("jwt,pub-key=/nonexistent,sign-method=RS256").is_err());
        assert!(TokenProvider::parse("jwt,pub-key=/x").is_err());
        assert!(TokenProvider::parse("bogus").is_err());
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        let simple = TokenProvider::simple();
        let t = simple.new_simple_token().unwrap();
        assert_eq!(t.len(), 18);
        assert_ne!(simple.new_simple_token().unwrap(), t);
    }
}
