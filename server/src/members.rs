//! How members are named: etcd-style member and cluster ids, derived from names, URLs and the
//! cluster token, and the member URLs they are derived from.
//!
//! A leaf: it must never import another module of the crate, so that configuration, node start and
//! membership changes in `raft/` all derive ids the same way.

use std::net::{SocketAddr, ToSocketAddrs};

/// A member URL that names no address.
#[derive(Debug, thiserror::Error)]
#[error("invalid URL {0:?}: {1}")]
pub struct UrlError(pub String, pub String);

/// `http://host:port` -> a socket address.
pub fn parse_url(url: &str) -> Result<SocketAddr, UrlError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url);
    let hostport = rest.trim_end_matches('/');
    hostport
        .to_socket_addrs()
        .map_err(|e| UrlError(url.to_string(), e.to_string()))?
        .next()
        .ok_or_else(|| UrlError(url.to_string(), "no address".into()))
}

/// etcd-style member id: a stable 64-bit hash of the member's name, peer URLs and cluster token.
pub fn member_id(name: &str, peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let id = fnv1a(format!("{name}\n{}\n{token}", urls.join(",")).as_bytes());
    id.max(1)
}

/// Cluster id: a hash of the founding member ids and the token.
pub fn cluster_id(mut member_ids: Vec<u64>, token: &str) -> u64 {
    member_ids.sort_unstable();
    let mut bytes = Vec::new();
    for id in member_ids {
        bytes.extend_from_slice(&id.to_be_bytes());
    }
    bytes.extend_from_slice(token.as_bytes());
    fnv1a(&bytes).max(1)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids_are_stable_and_distinct() {
        let a = member_id("a", &["http://127.0.0.1:1".into()], "t");
        assert_eq!(a, member_id("a", &["http://127.0.0.1:1".into()], "t"));
        assert_ne!(a, member_id("b", &["http://127.0.0.1:1".into()], "t"));
        assert_ne!(a, member_id("a", &["http://127.0.0.1:1".into()], "u"));
    }
}
