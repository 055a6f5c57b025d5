//! Encryption at rest, configured by Kubernetes' `EncryptionConfiguration`
//! (`--encryption-provider-config`): per resource, the first provider encrypts new writes and every
//! listed provider can read. An encrypted value is stored as `k8s:enc:<provider>:v1:<key name>:`
//! followed by the provider's ciphertext; a value without the prefix is plain (the identity provider).
//!
//! Providers: `aesgcm` (AES-GCM, a random 12-byte nonce before the ciphertext, the store key as
//! additional authenticated data, so a value cannot be moved to another key), `aescbc` (AES-CBC with
//! PKCS#7 padding, a random 16-byte IV first), `secretbox` (XSalsa20-Poly1305, a random 24-byte
//! nonce first, the tag before the ciphertext as NaCl lays it out) and `identity`.

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

#[derive(Clone)]
enum Provider {
    AesGcm(Vec<(String, Arc<LessSafeKey>)>),
    AesCbc(Vec<(String, Arc<Vec<u8>>)>),
    Secretbox(Vec<(String, Arc<Vec<u8>>)>),
    Identity,
}

impl Provider {
    fn name(&self) -> &'static str {
        match self {
            Provider::AesGcm(_) => "aesgcm",
            Provider::AesCbc(_) => "aescbc",
            Provider::Secretbox(_) => "secretbox",
            Provider::Identity => "identity",
        }
    }

    fn key_names(&self) -> Vec<&str> {
        match self {
            Provider::AesGcm(k) => k.iter().map(|(n, _)| n.as_str()).collect(),
            Provider::AesCbc(k) | Provider::Secretbox(k) => {
                k.iter().map(|(n, _)| n.as_str()).collect()
            }
            Provider::Identity => Vec::new(),
        }
    }
}

fn random<const N: usize>() -> Result<[u8; N], StoreError> {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| StoreError::Internal("no randomness for a nonce".into()))?;
    Ok(b)
}

fn seal(p: &Provider, store_key: &str, plain: Vec<u8>) -> Result<(String, Vec<u8>), StoreError> {
    use aes::cipher::{BlockEncryptMut, KeyIvInit};
    let failed = |_| StoreError::Internal("encryption failed".into());
    match p {
        Provider::Identity => Ok((String::new(), plain)),
        Provider::AesGcm(keys) => {
            let (name, k) = &keys[0];
            let nonce = random::<NONCE_LEN>()?;
            let mut buf = plain;
            k.seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(store_key.as_bytes()),
                &mut buf,
            )
            .map_err(|_| StoreError::Internal("encryption failed".into()))?;
            Ok((name.clone(), [nonce.as_slice(), &buf].concat()))
        }
        Provider::AesCbc(keys) => {
            let (name, k) = &keys[0];
            let iv = random::<16>()?;
            let ct = match k.len() {
                16 => cbc::Encryptor::<aes::Aes128>::new_from_slices(k, &iv)
                    .map_err(|_| StoreError::Internal("bad key".into()))?
                    .encrypt_padded_vec_mut::<aes::cipher::block_padding::Pkcs7>(&plain),
                24 => cbc::Encryptor::<aes::Aes192>::new_from_slices(k, &iv)
                    .map_err(|_| StoreError::Internal("bad key".into()))?
                    .encrypt_padded_vec_mut::<aes::cipher::block_padding::Pkcs7>(&plain),
                _ => cbc::Encryptor::<aes::Aes256>::new_from_slices(k, &iv)
                    .map_err(|_| StoreError::Internal("bad key".into()))?
                    .encrypt_padded_vec_mut::<aes::cipher::block_padding::Pkcs7>(&plain),
            };
            Ok((name.clone(), [iv.as_slice(), &ct].concat()))
        }
        Provider::Secretbox(keys) => {
            use crypto_secretbox::aead::{Aead, KeyInit};
            let (name, k) = &keys[0];
            let nonce = random::<24>()?;
            let cipher = crypto_secretbox::XSalsa20Poly1305::new_from_slice(k)
                .map_err(|_| StoreError::Internal("bad key".into()))?;
            let ct = cipher
                .encrypt(&nonce.into(), plain.as_slice())
                .map_err(failed)?;
            Ok((name.clone(), [nonce.as_slice(), &ct].concat()))
        }
    }
}

fn open(
    p: &Provider,
    key_name: &str,
    store_key: &str,
    data: &[u8],
) -> Option<Result<Vec<u8>, StoreError>> {
    use aes::cipher::{BlockDecryptMut, KeyIvInit};
    let corrupt = |what: &str| StoreError::Corrupt(format!("{store_key}: {what}"));
    match p {
        Provider::Identity => None,
        Provider::AesGcm(keys) => {
            let (_, k) = keys.iter().find(|(n, _)| n == key_name)?;
            Some((|| {
                if data.len() < NONCE_LEN {
                    return Err(corrupt("ciphertext too short"));
                }
                let (nonce, ct) = data.split_at(NONCE_LEN);
                let nonce =
                    Nonce::try_assume_unique_for_key(nonce).map_err(|_| corrupt("bad nonce"))?;
                let mut buf = ct.to_vec();
                let plain = k
                    .open_in_place(nonce, Aad::from(store_key.as_bytes()), &mut buf)
                    .map_err(|_| corrupt("decryption failed"))?;
                Ok(plain.to_vec())
            })())
        }
        Provider::AesCbc(keys) => {
            let (_, k) = keys.iter().find(|(n, _)| n == key_name)?;
            Some((|| {
                if data.len() < 32 || !data.len().is_multiple_of(16) {
                    return Err(corrupt("ciphertext has a wrong length"));
                }
                let (iv, ct) = data.split_at(16);
                let bad = |_| corrupt("decryption failed");
                let bad_key = |_| corrupt("bad key");
                use aes::cipher::block_padding::Pkcs7;
                match k.len() {
                    16 => cbc::Decryptor::<aes::Aes128>::new_from_slices(k, iv)
                        .map_err(bad_key)?
                        .decrypt_padded_vec_mut::<Pkcs7>(ct)
                        .map_err(bad),
                    24 => cbc::Decryptor::<aes::Aes192>::new_from_slices(k, iv)
                        .map_err(bad_key)?
                        .decrypt_padded_vec_mut::<Pkcs7>(ct)
                        .map_err(bad),
                    _ => cbc::Decryptor::<aes::Aes256>::new_from_slices(k, iv)
                        .map_err(bad_key)?
                        .decrypt_padded_vec_mut::<Pkcs7>(ct)
                        .map_err(bad),
                }
            })())
        }
        Provider::Secretbox(keys) => {
            use crypto_secretbox::aead::{Aead, KeyInit};
            let (_, k) = keys.iter().find(|(n, _)| n == key_name)?;
            Some((|| {
                if data.len() < 24 + 16 {
                    return Err(corrupt("ciphertext too short"));
                }
                let (nonce, ct) = data.split_at(24);
                let cipher = crypto_secretbox::XSalsa20Poly1305::new_from_slice(k)
                    .map_err(|_| corrupt("bad key"))?;
                cipher
                    .decrypt(crypto_secretbox::Nonce::from_slice(nonce), ct)
                    .map_err(|_| corrupt("decryption failed"))
            })())
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
                by_resource.insert(r, providers.clone());
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
        if let Provider::Identity = first {
            return Ok(plain);
        }
        let (name, sealed) = seal(first, key, plain)?;
        let mut out = format!("{PREFIX}{}:v1:{name}:", first.name()).into_bytes();
        out.extend_from_slice(&sealed);
        Ok(out)
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
        for p in providers.iter().filter(|p| p.name() == provider) {
            if let Some(r) = open(p, &key_name, key, data) {
                return r;
            }
        }
        Err(StoreError::Corrupt(format!(
            "{key}: no configured provider can read {provider} key {key_name:?} (configured: {})",
            providers
                .iter()
                .map(|p| format!("{}{:?}", p.name(), p.key_names()))
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

fn raw_keys(
    k: KeysConfig,
    provider: &str,
    sizes: &[usize],
) -> Result<Vec<(String, Vec<u8>)>, ConfigError> {
    let mut out = Vec::new();
    for key in k.keys {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(key.secret.trim())
            .map_err(|e| ConfigError::Invalid(format!("key {:?}: {e}", key.name)))?;
        if !sizes.contains(&raw.len()) {
            return Err(ConfigError::Invalid(format!(
                "key {:?}: {provider} keys must be {sizes:?} bytes, got {}",
                key.name,
                raw.len()
            )));
        }
        out.push((key.name, raw));
    }
    if out.is_empty() {
        return Err(ConfigError::Invalid(format!("{provider} lists no keys")));
    }
    Ok(out)
}

fn provider(p: ProviderConfig) -> Result<Provider, ConfigError> {
    if let Some(k) = p.aesgcm {
        let mut keys = Vec::new();
        for (name, raw) in raw_keys(k, "aesgcm", &[16, 32])? {
            let alg = if raw.len() == 16 {
                &AES_128_GCM
            } else {
                &AES_256_GCM
            };
            let unbound = UnboundKey::new(alg, &raw)
                .map_err(|_| ConfigError::Invalid(format!("key {name:?} rejected")))?;
            keys.push((name, Arc::new(LessSafeKey::new(unbound))));
        }
        return Ok(Provider::AesGcm(keys));
    }
    if let Some(k) = p.aescbc {
        let keys = raw_keys(k, "aescbc", &[16, 24, 32])?;
        return Ok(Provider::AesCbc(
            keys.into_iter().map(|(n, k)| (n, Arc::new(k))).collect(),
        ));
    }
    if let Some(k) = p.secretbox {
        let keys = raw_keys(k, "secretbox", &[32])?;
        return Ok(Provider::Secretbox(
            keys.into_iter().map(|(n, k)| (n, Arc::new(k))).collect(),
        ));
    }
    if p.identity.is_some() {
        return Ok(Provider::Identity);
    }
    if p.kms.is_some() {
        return Err(ConfigError::Invalid(
            "the kms provider is not supported; use aesgcm, aescbc, secretbox or identity".into(),
        ));
    }
    Err(ConfigError::Invalid(
        "a provider names no known type".into(),
    ))
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

    #[test]
    fn every_provider_round_trips_and_old_providers_still_read() {
        let key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
        let plain = b"{\"data\":{\"password\":\"c2VjcmV0\"}}".to_vec();
        let mut written = Vec::new();
        for provider in ["aesgcm", "aescbc", "secretbox"] {
            let cfg = format!("kind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - {provider}:\n      keys:\n      - name: k\n        secret: {key}\n");
            let t = Transformer::from_yaml(&cfg).unwrap();
            let sealed = t
                .encrypt("secrets", "/registry/secrets/a/b", plain.clone())
                .unwrap();
            assert!(
                sealed.starts_with(format!("k8s:enc:{provider}:v1:k:").as_bytes()),
                "{provider}"
            );
            assert!(!sealed.windows(8).any(|w| w == b"password"), "{provider}");
            assert_eq!(
                t.decrypt("secrets", "/registry/secrets/a/b", &sealed)
                    .unwrap(),
                plain,
                "{provider}"
            );
            // The authenticated providers refuse a changed byte (CBC has no integrity, as in Kubernetes).
            if provider != "aescbc" {
                let mut tampered = sealed.clone();
                let last = tampered.len() - 1;
                tampered[last] ^= 1;
                assert!(
                    t.decrypt("secrets", "/registry/secrets/a/b", &tampered)
                        .is_err(),
                    "{provider}"
                );
            }
            written.push(sealed);
        }
        // After a key rotation to a new first provider, values written by the older ones still read.
        let cfg = format!("kind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - secretbox:\n      keys:\n      - name: k\n        secret: {key}\n  - aescbc:\n      keys:\n      - name: k\n        secret: {key}\n  - aesgcm:\n      keys:\n      - name: k\n        secret: {key}\n");
        let t = Transformer::from_yaml(&cfg).unwrap();
        for w in &written {
            assert_eq!(
                t.decrypt("secrets", "/registry/secrets/a/b", w).unwrap(),
                plain
            );
        }
        assert!(Transformer::from_yaml(
            "resources:\n- resources: [secrets]\n  providers:\n  - kms: {}\n"
        )
        .is_err());
    }
}
