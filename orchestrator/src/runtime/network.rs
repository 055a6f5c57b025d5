//! Pod networking: a host bridge, one veth pair per pod, and node-local IPAM
//! persisted in a JSON file so allocations survive agent restarts.
//!
//! Host-side links are managed from the caller's (async) context; addressing
//! inside a pod's network namespace is done by the `__netcfg` helper, which
//! joins the namespace in a fresh single-threaded process.
//!
//! Must never import anything outside `runtime/`.

use futures_util::stream::TryStreamExt;
use rtnetlink::{new_connection, Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("netlink {op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("netlink socket: {0} (needs CAP_NET_ADMIN)")]
    Socket(#[source] io::Error),
    #[error("invalid pod CIDR {0:?}: expected IPv4 a.b.c.d/len with len 8..=30")]
    BadCidr(String),
    #[error("pod CIDR {0} is exhausted")]
    Exhausted(String),
    #[error("IPAM state {path}: {message}")]
    Ipam { path: PathBuf, message: String },
    #[error("configuring the pod network namespace failed: {0}")]
    InNamespace(String),
}

fn nl(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    let op = op.into();
    move |source| NetworkError::Netlink { op, source }
}

/// Bridge and address range for pods on this node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetworkConfig {
    pub bridge: String,
    /// IPv4 CIDR; the first host address goes to the bridge (the pods'
    /// gateway), pods get the following ones.
    pub cidr: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Net {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Net {
    pub fn parse(s: &str) -> Result<Self, NetworkError> {
        let bad = || NetworkError::BadCidr(s.to_string());
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Ipv4Net {
            network: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }

    /// Whether `ip` lies in this range.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix);
        u32::from(ip) & mask == u32::from(self.network)
    }

    fn host(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + n)
    }

    pub fn gateway(&self) -> Ipv4Addr {
        self.host(1)
    }

    fn hosts(&self) -> u32 {
        (1u32 << (32 - self.prefix)) - 2
    }
}

impl std::fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct IpamFile {
    cidr: String,
    /// address -> pod name
    allocations: BTreeMap<Ipv4Addr, String>,
}

/// Node-local allocator; a file lock serialises concurrent allocators
/// (several agents or CLI invocations on one node).
#[derive(Debug, Clone)]
pub struct Ipam {
    path: PathBuf,
    net: Ipv4Net,
    cidr: String,
}

impl Ipam {
    pub fn new(dir: &Path, cfg: &NetworkConfig) -> Result<Self, NetworkError> {
        Ok(Ipam {
            path: dir.join(format!("{}.json", cfg.bridge)),
            net: Ipv4Net::parse(&cfg.cidr)?,
            cidr: cfg.cidr.clone(),
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> NetworkError {
        NetworkError::Ipam {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    fn with_locked<T>(
        &self,
        f: impl FnOnce(&mut IpamFile) -> Result<T, NetworkError>,
    ) -> Result<T, NetworkError> {
        if let Some(parent) = self.path.parent() {
            fs::create_dir_all(parent).map_err(|e| self.err(e))?;
        }
        let lock_file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.path.with_extension("lock"))
            .map_err(|e| self.err(e))?;
        let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| self.err(e))?;
        let mut state: IpamFile = match fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| self.err(e))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => IpamFile {
                cidr: self.cidr.clone(),
                ..Default::default()
            },
            Err(e) => return Err(self.err(e)),
        };
        let out = f(&mut state)?;
        let tmp = self.path.with_extension("tmp");
        fs::write(
            &tmp,
            serde_json::to_vec_pretty(&state).map_err(|e| self.err(e))?,
        )
        .map_err(|e| self.err(e))?;
        fs::rename(&tmp, &self.path).map_err(|e| self.err(e))?;
        Ok(out)
    }

    /// Returns the pod's existing address or the lowest free one.
    pub fn allocate(&self, pod: &str) -> Result<Ipv4Addr, NetworkError> {
        let net = self.net;
        self.with_locked(|st| {
            if let Some((ip, _)) = st.allocations.iter().find(|(_, p)| *p == pod) {
                return Ok(*ip);
            }
            let ip = (2..=net.hosts())
                .map(|n| net.host(n))
                .find(|ip| !st.allocations.contains_key(ip))
                .ok_or_else(|| NetworkError::Exhausted(self.cidr.clone()))?;
            st.allocations.insert(ip, pod.to_string());
            Ok(ip)
        })
    }

    pub fn release(&self, pod: &str) -> Result<(), NetworkError> {
        self.with_locked(|st| {
            st.allocations.retain(|_, p| p != pod);
            Ok(())
        })
    }

    pub fn allocations(&self) -> Result<BTreeMap<Ipv4Addr, String>, NetworkError> {
        self.with_locked(|st| Ok(st.allocations.clone()))
    }
}

/// Interface names are limited to 15 bytes, so they are derived from a hash
/// of the pod name (FNV-1a, stable across builds).
pub fn veth_names(bridge: &str, pod: &str) -> (String, String) {
    let mut h: u32 = 0x811c_9dc5;
    for b in bridge.bytes().chain([0]).chain(pod.bytes()) {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    (format!("cv{h:08x}"), format!("cp{h:08x}"))
}

fn connect() -> Result<Handle, NetworkError> {
    let (conn, handle, _) = new_connection().map_err(NetworkError::Socket)?;
    tokio::spawn(conn);
    Ok(handle)
}

async fn link_index(h: &Handle, name: &str) -> Option<u32> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    links
        .try_next()
        .await
        .ok()
        .flatten()
        .map(|l| l.header.index)
}

/// Creates the bridge with the gateway address if either is missing.
pub async fn ensure_bridge(cfg: &NetworkConfig) -> Result<(), NetworkError> {
    let net = Ipv4Net::parse(&cfg.cidr)?;
    let h = connect()?;
    if link_index(&h, &cfg.bridge).await.is_none() {
        h.link()
            .add(LinkBridge::new(&cfg.bridge).up().build())
            .execute()
            .await
            .map_err(nl(format!("add bridge {}", cfg.bridge)))?;
    }
    let idx = link_index(&h, &cfg.bridge)
        .await
        .ok_or_else(|| NetworkError::InNamespace(format!("bridge {} vanished", cfg.bridge)))?;
    let mut addrs = h
        .address()
        .get()
        .set_link_index_filter(idx)
        .set_address_filter(IpAddr::V4(net.gateway()))
        .execute();
    if addrs
        .try_next()
        .await
        .map_err(nl(format!("addresses of {}", cfg.bridge)))?
        .is_none()
    {
        h.address()
            .add(idx, IpAddr::V4(net.gateway()), net.prefix)
            .execute()
            .await
            .map_err(nl(format!("address on {}", cfg.bridge)))?;
    }
    Ok(())
}

/// IPv4 routes of the main table installed with routing protocol `proto`: (destination, gateway).
pub async fn routes(proto: u8) -> Result<Vec<(Ipv4Net, Ipv4Addr)>, NetworkError> {
    use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteProtocol};
    let h = connect()?;
    let mut out = Vec::new();
    let mut stream = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    while let Some(r) = stream.try_next().await.map_err(nl("list routes"))? {
        if r.header.protocol != RouteProtocol::from(proto) {
            continue;
        }
        let mut dst = None;
        let mut gw = None;
        for a in &r.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = Some(*ip),
                RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gw = Some(*ip),
                _ => {}
            }
        }
        if let (Some(network), Some(gw)) = (dst, gw) {
            let prefix = r.header.destination_prefix_length;
            out.push((Ipv4Net { network, prefix }, gw));
        }
    }
    Ok(out)
}

fn route_message(
    dst: Ipv4Net,
    via: Ipv4Addr,
    proto: u8,
) -> rtnetlink::packet_route::route::RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst.network, dst.prefix)
        .gateway(via)
        .protocol(proto.into())
        .build()
}

/// Routes `dst` through `via` (which must be directly reachable), replacing any route to `dst`.
pub async fn replace_route(dst: Ipv4Net, via: Ipv4Addr, proto: u8) -> Result<(), NetworkError> {
    let h = connect()?;
    h.route()
        .add(route_message(dst, via, proto))
        .replace()
        .execute()
        .await
        .map_err(nl(format!("route {dst} via {via}")))
}

pub async fn delete_route(dst: Ipv4Net, via: Ipv4Addr, proto: u8) -> Result<(), NetworkError> {
    let h = connect()?;
    h.route()
        .del(route_message(dst, via, proto))
        .execute()
        .await
        .map_err(nl(format!("delete route {dst} via {via}")))
}

pub async fn delete_link(name: &str) -> Result<bool, NetworkError> {
    let h = connect()?;
    match link_index(&h, name).await {
        Some(idx) => match h.link().del(idx).execute().await {
            Ok(()) => Ok(true),
            // Gone between the lookup and the delete (its pod's other end went first, or
            // another removal of the same pod won): what was asked for holds.
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::ENODEV => Ok(false),
            Err(e) => Err(nl(format!("delete {name}"))(e)),
        },
        None => Ok(false),
    }
}

pub async fn link_exists(name: &str) -> Result<bool, NetworkError> {
    let h = connect()?;
    Ok(link_index(&h, name).await.is_some())
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PodNetwork {
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub host_veth: String,
}

/// Creates the pod's veth pair, moves one end into the holder's network
/// namespace and configures it there via the helper.
pub async fn attach_pod(
    cfg: &NetworkConfig,
    ipam: &Ipam,
    pod: &str,
    holder_pid: i32,
    helper: &Path,
) -> Result<PodNetwork, NetworkError> {
    let net = Ipv4Net::parse(&cfg.cidr)?;
    ensure_bridge(cfg).await?;
    let ip = ipam.allocate(pod)?;
    let (host, peer) = veth_names(&cfg.bridge, pod);
    let h = connect()?;
    if let Some(idx) = link_index(&h, &host).await {
        // Left over from a pod of the same name that was not removed cleanly.
        h.link()
            .del(idx)
            .execute()
            .await
            .map_err(nl(format!("delete stale {host}")))?;
    }
    h.link()
        .add(LinkVeth::new(&host, &peer).build())
        .execute()
        .await
        .map_err(nl(format!("add veth {host}")))?;
    let bridge_idx = link_index(&h, &cfg.bridge)
        .await
        .ok_or_else(|| NetworkError::InNamespace(format!("bridge {} missing", cfg.bridge)))?;
    h.link()
        .set(
            LinkUnspec::new_with_name(&host)
                .controller(bridge_idx)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(nl(format!("attach {host} to {}", cfg.bridge)))?;
    h.link()
        .set(
            LinkUnspec::new_with_name(&peer)
                .setns_by_pid(holder_pid as u32)
                .build(),
        )
        .execute()
        .await
        .map_err(nl(format!("move {peer} into pod netns")))?;
    let out = tokio::process::Command::new(helper)
        .arg(super::init::NETCFG)
        .arg(holder_pid.to_string())
        .arg(&peer)
        .arg(format!("{ip}/{}", net.prefix))
        .arg(net.gateway().to_string())
        .output()
        .await
        .map_err(|e| NetworkError::InNamespace(format!("spawn helper: {e}")))?;
    if !out.status.success() {
        return Err(NetworkError::InNamespace(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(PodNetwork {
        ip,
        prefix: net.prefix,
        gateway: net.gateway(),
        host_veth: host,
    })
}

/// Brings `lo` up inside the holder's namespace (pods without a bridge).
pub async fn loopback_only(holder_pid: i32, helper: &Path) -> Result<(), NetworkError> {
    let out = tokio::process::Command::new(helper)
        .arg(super::init::NETCFG)
        .arg(holder_pid.to_string())
        .output()
        .await
        .map_err(|e| NetworkError::InNamespace(format!("spawn helper: {e}")))?;
    if !out.status.success() {
        return Err(NetworkError::InNamespace(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

/// `__netcfg <pid> [<peer> <ip/prefix> <gateway>]`, run in a fresh process.
pub(crate) fn netcfg_main(args: &[String]) -> i32 {
    match netcfg(args) {
        Ok(()) => 0,
        Err(e) => {
            // The runtime reads the helper's stderr as the error message.
            let _ = writeln!(io::stderr(), "cairn netcfg: {e}");
            1
        }
    }
}

fn netcfg(args: &[String]) -> Result<(), String> {
    let pid = args.first().ok_or("pid missing")?;
    let ns = fs::File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|e| format!("open netns of {pid}: {e}"))?;
    // Joined before the single-threaded runtime below is built, so the
    // netlink socket is created inside the pod's namespace.
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("setns net: {e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let h = connect().map_err(|e| e.to_string())?;
        let lo = link_index(&h, "lo").await.ok_or("no lo")?;
        h.link()
            .set(LinkUnspec::new_with_index(lo).up().build())
            .execute()
            .await
            .map_err(|e| format!("lo up: {e}"))?;
        let (Some(peer), Some(addr), Some(gw)) = (args.get(1), args.get(2), args.get(3)) else {
            return Ok(());
        };
        let (ip, prefix) = addr.split_once('/').ok_or("bad address")?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| "bad address")?;
        let prefix: u8 = prefix.parse().map_err(|_| "bad prefix")?;
        let gw: Ipv4Addr = gw.parse().map_err(|_| "bad gateway")?;
        let idx = link_index(&h, peer)
            .await
            .ok_or_else(|| format!("{peer} not in namespace"))?;
        h.link()
            .set(LinkUnspec::new_with_index(idx).name("eth0").up().build())
            .execute()
            .await
            .map_err(|e| format!("eth0 up: {e}"))?;
        h.address()
            .add(idx, IpAddr::V4(ip), prefix)
            .execute()
            .await
            .map_err(|e| format!("address: {e}"))?;
        h.route()
            .add(RouteMessageBuilder::<Ipv4Addr>::new().gateway(gw).build())
            .execute()
            .await
            .map_err(|e| format!("default route: {e}"))?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_and_names() {
        let n = Ipv4Net::parse("10.99.3.7/24").unwrap();
        assert_eq!(n.network, Ipv4Addr::new(10, 99, 3, 0));
        assert_eq!(n.gateway(), Ipv4Addr::new(10, 99, 3, 1));
        assert_eq!(n.hosts(), 254);
        assert!(Ipv4Net::parse("10.0.0.0/31").is_err());
        assert!(Ipv4Net::parse("nope").is_err());
        let (a, b) = veth_names("br", "pod");
        assert!(a.len() <= 15 && b.len() <= 15 && a != b);
    }

    #[test]
    fn ipam_persists_and_reuses() {
        let dir = std::env::temp_dir().join(format!("cairn-ipam-{}", std::process::id()));
        let cfg = NetworkConfig {
            bridge: "t".into(),
            cidr: "10.250.0.0/30".into(),
        };
        let ipam = Ipam::new(&dir, &cfg).unwrap();
        let a = ipam.allocate("a").unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 250, 0, 2));
        assert_eq!(ipam.allocate("a").unwrap(), a);
        // A fresh allocator (as after a restart) sees the same state.
        let again = Ipam::new(&dir, &cfg).unwrap();
        assert!(matches!(
            again.allocate("b"),
            Err(NetworkError::Exhausted(_))
        ));
        again.release("a").unwrap();
        assert_eq!(again.allocate("b").unwrap(), a);
        fs::remove_dir_all(&dir).unwrap();
    }
}
