//! Service ClusterIPs and NodePorts handed out from their ranges through the store.
//!
//! Each allocated value is a key (`/registry/ranges/serviceips/<ip>`,
//! `/registry/ranges/servicenodeports/<port>`) created in the same Txn as the Service, guarded by
//! `create_revision == 0`, and deleted in the same Txn that deletes the Service. Two API servers picking
//! the same value race on that compare: one Txn fails and its caller picks again, so a value is never
//! handed out twice and never leaks with a failed write.

use std::net::Ipv4Addr;

use cairn_client::{Client, Compare, DeleteOptions, GetOptions, TxnOp};

use super::{Result, StoreError};

const IP_PREFIX: &str = "/registry/ranges/serviceips/";
const PORT_PREFIX: &str = "/registry/ranges/servicenodeports/";

/// A CIDR parsed from `--service-cluster-ip-range`.
#[derive(Debug, Clone, Copy)]
pub struct IpRange {
    base: u32,
    size: u32,
}

impl IpRange {
    pub fn parse(s: &str) -> std::result::Result<IpRange, String> {
        let (ip, bits) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let bits: u32 = bits.parse().map_err(|e| format!("{s:?}: {e}"))?;
        if !(8..=30).contains(&bits) {
            return Err(format!("{s:?}: the prefix length must be between 8 and 30"));
        }
        let size = 1u32 << (32 - bits);
        Ok(IpRange {
            base: u32::from(ip) & !(size - 1),
            size,
        })
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        v > self.base && v < self.base + self.size - 1
    }

    /// The first usable address, which Kubernetes gives the `kubernetes` Service.
    pub fn first(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub fn parse(s: &str) -> std::result::Result<PortRange, String> {
        let (lo, hi) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?} is not a port range"))?;
        let lo: u16 = lo.trim().parse().map_err(|e| format!("{s:?}: {e}"))?;
        let hi: u16 = hi.trim().parse().map_err(|e| format!("{s:?}: {e}"))?;
        if lo == 0 || hi < lo {
            return Err(format!("{s:?} is not a valid port range"));
        }
        Ok(PortRange { lo, hi })
    }

    pub fn contains(&self, p: u16) -> bool {
        (self.lo..=self.hi).contains(&p)
    }
}

async fn taken(client: &Client, prefix: &str) -> Result<Vec<String>> {
    let resp = client
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await?;
    Ok(resp
        .kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned())
        .collect())
}

/// A free address (a hint: the Txn that claims it decides), `None` when the range is full.
pub async fn free_ip(client: &Client, range: IpRange) -> Result<Option<Ipv4Addr>> {
    let used = taken(client, IP_PREFIX).await?;
    let start = fastrand::u32(2..range.size - 1);
    for i in 0..range.size {
        let off = (start + i) % range.size;
        if off < 2 || off == range.size - 1 {
            continue;
        }
        let ip = Ipv4Addr::from(range.base + off);
        if !used.contains(&ip.to_string()) {
            return Ok(Some(ip));
        }
    }
    Ok(None)
}

pub async fn free_port(
    client: &Client,
    range: PortRange,
    also_taken: &[u16],
) -> Result<Option<u16>> {
    let used = taken(client, PORT_PREFIX).await?;
    let n = u32::from(range.hi - range.lo) + 1;
    let start = fastrand::u32(0..n);
    for i in 0..n {
        let p = range.lo + ((start + i) % n) as u16;
        if !also_taken.contains(&p) && !used.contains(&p.to_string()) {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// The compare and put that claim `ip` for `owner` in the Service's Txn.
pub fn claim_ip(ip: Ipv4Addr, owner: &str) -> (Compare, TxnOp) {
    let k = format!("{IP_PREFIX}{ip}");
    (
        Compare::create_revision(k.as_str()).eq(0),
        TxnOp::put(k.as_str(), owner, None),
    )
}

pub fn claim_port(port: u16, owner: &str) -> (Compare, TxnOp) {
    let k = format!("{PORT_PREFIX}{port}");
    (
        Compare::create_revision(k.as_str()).eq(0),
        TxnOp::put(k.as_str(), owner, None),
    )
}

pub fn release_ip(ip: &str) -> TxnOp {
    TxnOp::delete(format!("{IP_PREFIX}{ip}"), Some(DeleteOptions::new()))
}

pub fn release_port(port: u16) -> TxnOp {
    TxnOp::delete(format!("{PORT_PREFIX}{port}"), Some(DeleteOptions::new()))
}

/// Whether `ip` is already claimed.
pub async fn ip_taken(client: &Client, ip: Ipv4Addr) -> Result<bool> {
    let resp = client
        .get(
            format!("{IP_PREFIX}{ip}"),
            Some(GetOptions::new().with_count_only()),
        )
        .await?;
    Ok(resp.count > 0)
}

pub async fn port_taken(client: &Client, port: u16) -> Result<bool> {
    let resp = client
        .get(
            format!("{PORT_PREFIX}{port}"),
            Some(GetOptions::new().with_count_only()),
        )
        .await
        .map_err(StoreError::from)?;
    Ok(resp.count > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse() {
        let r = IpRange::parse("10.96.0.0/16").unwrap();
        assert_eq!(r.first(), Ipv4Addr::new(10, 96, 0, 1));
        assert!(r.contains(Ipv4Addr::new(10, 96, 255, 254)));
        assert!(!r.contains(Ipv4Addr::new(10, 96, 255, 255)));
        assert!(!r.contains(Ipv4Addr::new(10, 97, 0, 1)));
        let p = PortRange::parse("30000-32767").unwrap();
        assert!(p.contains(30000) && p.contains(32767) && !p.contains(29999));
        assert!(PortRange::parse("5-1").is_err());
    }
}
