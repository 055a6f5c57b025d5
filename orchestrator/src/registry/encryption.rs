//! Encryption at rest, configured by Kubernetes' `EncryptionConfiguration`
//! (`--encryption-provider-config`): per resource, the first provider encrypts new writes and every
//! listed provider can read. An encrypted value is stored as `k8s:enc:<provider>:v1:<key name>:`
//! followed by the provider's ciphertext; a value without the prefix is plain (the identity provider).
//!
//! Providers: `aesgcm` (AES-GCM, a random 12-byte nonce before the ciphertext, the store key as
//! additional authenticated data, so a value cannot be moved to another key) and `identity`.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;

use super::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading the encryption configuration: {0}")]
    Read(String),
    #[error("invalid encryption configuration: {0}")]
    Invalid(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EncryptionConfiguration {
    kind: Option<String>,
    resources: Vec<ResourceConfig>,
}

#[derive(Deserialize)]
struct ResourceConfig {
    resources: Vec<String>,
    providers: Vec<ProviderConfig>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProviderConfig {
    aesgcm: Option<KeysConfig>,
    aescbc: Option<KeysConfig>,
    secretbox: Option<KeysConfig>,
    identity: Option<serde_json::Value>,
    kms: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct KeysConfig {
    keys: Vec<KeyConfig>,
}

#[derive(Deserialize)]
struct KeyConfig {
    name: String,
    secret: String,
}

enum Provider {
    AesGcm(Vec<(String, Arc<LessSafeKey>)>),
    Identity,
}

impl Provider {
    fn name(&self) -> &'static str {
        match self {
            Provider::AesGcm(_) => "aesgcm",
            Provider::Identity => "identity",
        }
    }
}

/// The per-resource encryption in force; the default encrypts nothing.
#[derive(Clone, Default)]
pub struct Transformer {
    by_resource: Arc<HashMap<String, Vec<Provider>>>,
}

const PREFIX: &str = "k8s:enc:";

impl Transformer {
    /// Loads an `EncryptionConfiguration` file (YAML or JSON).
    pub fn from_file(path: &std::path::Path) -> Result<Transformer, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read(format!("{}: {e}", path.display())))?;
        Self::from_yaml(&text)
    }

    pub fn from_yaml(text: &str) -> Result<Transformer, ConfigError> {
        let cfg: EncryptionConfiguration =
            serde_yaml::from_str(text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if cfg
            .kind
            .as_deref()
            .is_some_and(|k| k != "EncryptionConfiguration")
        {
            return Err(ConfigError::Invalid(format!(
                "kind {:?} is not EncryptionConfiguration",
                cfg.kind.unwrap_or_default()
            )));
        }
        let mut by_resource = HashMap::new();
        for rc in cfg.resources {
            let mut providers = Vec::new();
            for p in rc.providers {
                providers.push(provider(p)?);
            }
            if providers.is_empty() {
                return Err(ConfigError::Invalid("a resource lists no providers".into()));
            }
            for r in rc.resources {
                // `secrets` and `secrets.` (core group) name the same resource.
                let r = r.trim_end_matches('.').to_string();
                if by_resource.contains_key(&r) {
                    return Err(ConfigError::Invalid(format!(
                        "resource {r:?} is listed twice"
                    )));
                }
                by_resource.insert(r, providers_clone(&providers));
            }
        }
        Ok(Transformer {
            by_resource: Arc::new(by_resource),
        })
    }

    /// The bytes to store for `plain` at `key`.
    pub fn encrypt(
        &self,
        resource: &str,
        key: &str,
        plain: Vec<u8>,
    ) -> Result<Vec<u8>, StoreError> {
        let Some(first) = self.by_resource.get(resource).and_then(|p| p.first()) else {
            return Ok(plain);
        };
        match first {
            Provider::Identity => Ok(plain),
            Provider::AesGcm(keys) => {
                let (name, k) = &keys[0];
                let mut nonce = [0u8; NONCE_LEN];
                SystemRandom::new()
                    .fill(&mut nonce)
                    .map_err(|_| StoreError::Internal("no randomness for a nonce".into()))?;
                let mut buf = plain;
                k.seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(key.as_bytes()),
                    &mut buf,
                )
                .map_err(|_| StoreError::Internal("encryption failed".into()))?;
                let mut out = format!("{PREFIX}aesgcm:v1:{name}:").into_bytes();
                out.extend_from_slice(&nonce);
                out.extend_from_slice(&buf);
                Ok(out)
            }
        }
    }

    /// The plain bytes of a stored value.
    pub fn decrypt(&self, resource: &str, key: &str, stored: &[u8]) -> Result<Vec<u8>, StoreError> {
        if !stored.starts_with(PREFIX.as_bytes()) {
            return Ok(stored.to_vec());
        }
        let rest = &stored[PREFIX.len()..];
        let mut parts = rest.splitn(4, |b| *b == b':');
        let (Some(provider), Some(_version), Some(key_name), Some(data)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(StoreError::Corrupt(format!(
                "{key}: malformed encryption prefix"
            )));
        };
        let provider = String::from_utf8_lossy(provider);
        let key_name = String::from_utf8_lossy(key_name);
        let providers = self
            .by_resource
            .get(resource)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for p in providers {
            if let Provider::AesGcm(keys) = p {
                if provider != p.name() {
                    continue;
                }
                if let Some((_, k)) = keys.iter().find(|(n, _)| *n == key_name) {
                    if data.len() < NONCE_LEN {
                        return Err(StoreError::Corrupt(format!("{key}: ciphertext too short")));
                    }
                    let (nonce, ct) = data.split_at(NONCE_LEN);
                    let nonce = Nonce::try_assume_unique_for_key(nonce)
                        .map_err(|_| StoreError::Corrupt(format!("{key}: bad nonce")))?;
                    let mut buf = ct.to_vec();
                    let plain = k
                        .open_in_place(nonce, Aad::from(key.as_bytes()), &mut buf)
                        .map_err(|_| StoreError::Corrupt(format!("{key}: decryption failed")))?;
                    return Ok(plain.to_vec());
                }
            }
        }
        Err(StoreError::Corrupt(format!(
            "{key}: no configured provider can read {provider} key {key_name:?}"
        )))
    }
}

fn providers_clone(ps: &[Provider]) -> Vec<Provider> {
    ps.iter()
        .map(|p| match p {
            Provider::AesGcm(k) => Provider::AesGcm(k.clone()),
            Provider::Identity => Provider::Identity,
        })
        .collect()
}

fn provider(p: ProviderConfig) -> Result<Provider, ConfigError> {
    if let Some(k) = p.aesgcm {
        let mut keys = Vec::new();
        for key in k.keys {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(key.secret.trim())
                .map_err(|e| ConfigError::Invalid(format!("key {:?}: {e}", key.name)))?;
            let alg = match raw.len() {
                16 => &AES_128_GCM,
                32 => &AES_256_GCM,
                n => {
                    return Err(ConfigError::Invalid(format!(
                        "key {:?}: aesgcm keys must be 16 or 32 bytes, got {n}",
                        key.name
                    )))
                }
            };
            let unbound = UnboundKey::new(alg, &raw)
                .map_err(|_| ConfigError::Invalid(format!("key {:?} rejected", key.name)))?;
            keys.push((key.name, Arc::new(LessSafeKey::new(unbound))));
        }
        if keys.is_empty() {
            return Err(ConfigError::Invalid("aesgcm lists no keys".into()));
        }
        return Ok(Provider::AesGcm(keys));
    }
    if p.identity.is_some() {
        return Ok(Provider::Identity);
    }
    let other = if p.aescbc.is_some() {
        "aescbc"
    } else if p.secretbox.is_some() {
        "secretbox"
    } else if p.kms.is_some() {
        "kms"
    } else {
        return Err(ConfigError::Invalid(
            "a provider names no known type".into(),
        ));
    };
    Err(ConfigError::Invalid(format!(
        "the {other} provider is not supported; use aesgcm or identity"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = r#"
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets]
    providers:
      - aesgcm:
          keys:
            - name: key1
              secret: MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=
      - identity: {}
"#;

    #[test]
    fn secrets_are_sealed_and_bound_to_their_key() {
        let t = Transformer::from_yaml(CFG).unwrap();
        let sealed = t
            .encrypt("secrets", "/registry/secrets/a/b", b"{\"x\":1}".to_vec())
            .unwrap();
        assert!(sealed.starts_with(b"k8s:enc:aesgcm:v1:key1:"));
        assert!(!sealed.windows(5).any(|w| w == b"\"x\":1"));
        assert_eq!(
            t.decrypt("secrets", "/registry/secrets/a/b", &sealed)
                .unwrap(),
            b"{\"x\":1}"
        );
        assert!(t
            .decrypt("secrets", "/registry/secrets/a/c", &sealed)
            .is_err());
        // Plain values written before encryption was turned on still read.
        assert_eq!(
            t.decrypt("secrets", "/registry/secrets/a/b", b"{}")
                .unwrap(),
            b"{}"
        );
        // Other resources are untouched.
        assert_eq!(
            t.encrypt("configmaps", "/k", b"{}".to_vec()).unwrap(),
            b"{}"
        );
    }
}
