//! The nftables ruleset of the proxy, as `nft -f` commands: the fixed skeleton of the table (hooks,
//! the verdict maps, masquerading) and per service port a rendering of its chains, sets and map
//! elements. Syncs diff renderings, so a change to one Service sends the kernel the commands for
//! that Service only, while a full sync replaces the whole table; either is one transaction.
//!
//! The layout follows kube-proxy's nftables mode:
//!
//! ```text
//! nat-prerouting / nat-output ──> services: ip daddr . l4proto . dport vmap @service-ips
//!                                           node address . l4proto . dport vmap @service-nodeports
//!   service-ips[10.96.0.5 . tcp . 80] = goto service-<hash>-ns/web/tcp/http
//!   service chain:  ip saddr @affinity-<ep> goto endpoint-<ep>   (ClientIP affinity)
//!                   numgen random mod 2 vmap { 0 : goto endpoint-a, 1 : goto endpoint-b }
//!   endpoint chain: ip saddr <self> jump mark-for-masquerade      (hairpin)
//!                   dnat to <ip>:<port>
//! filter-prerouting (tcp) / -input / -forward / -output ──> ct state new:
//!     @no-endpoint-services -> reject (tcp reset, else icmp port unreachable)
//! nat-postrouting ──> masquerade packets marked 0x4000
//! ```
//!
//! Names are bounded: a chain or set name is `<prefix>-<hash>-<key>`, where the hash (8 base32
//! characters of SHA-256 over the full key) keeps names unique when a long key is truncated. It
//! never imports `registry` or `apiserver`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::Ipv4Addr;

use sha2::{Digest, Sha256};

use super::model::ServicePort;

/// The longest chain or set name we generate, well within the kernel's 256-byte limit.
pub const MAX_NAME_LEN: usize = 128;
/// The packet mark that asks for masquerading (kube-proxy's bit).
const MASQ_MARK: &str = "0x4000";

pub const SERVICE_IPS: &str = "service-ips";
pub const SERVICE_NODEPORTS: &str = "service-nodeports";
pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";

/// A bounded, valid nft identifier for `key` under `prefix`.
pub fn name(prefix: &str, key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let mut n = format!("{prefix}-{}-{key}", base32_8(&digest));
    if n.len() > MAX_NAME_LEN {
        let mut cut = MAX_NAME_LEN;
        while !n.is_char_boundary(cut) {
            cut -= 1;
        }
        n.truncate(cut);
    }
    n
}

/// The first 40 bits of `bytes` as 8 base32 (RFC 4648) characters.
fn base32_8(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut v: u64 = 0;
    for b in &bytes[..5] {
        v = (v << 8) | u64::from(*b);
    }
    (0..8)
        .rev()
        .map(|i| ALPHABET[((v >> (i * 5)) & 31) as usize] as char)
        .collect()
}

/// Which node addresses NodePorts answer on: every local address, or those in the CIDRs given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodePortAddresses {
    AllLocal,
    Cidrs(Vec<String>),
}

impl NodePortAddresses {
    fn matcher(&self) -> String {
        match self {
            // Loopback is left out as kube-proxy's nftables mode does: DNAT of 127/8 would need
            // route_localnet.
            NodePortAddresses::AllLocal => "fib daddr type local ip daddr != 127.0.0.0/8".into(),
            NodePortAddresses::Cidrs(c) => format!("ip daddr {{ {} }}", c.join(", ")),
        }
    }
}

/// Settings that shape the rules.
#[derive(Debug, Clone)]
pub struct RuleConfig {
    pub table: String,
    pub nodeport_addresses: NodePortAddresses,
    /// Traffic to a ClusterIP from outside this range is masqueraded.
    pub cluster_cidr: Option<String>,
}

impl RuleConfig {
    fn t(&self) -> String {
        format!("ip {}", self.table)
    }

    /// The commands that build the table's fixed part, maps empty.
    pub fn skeleton(&self) -> String {
        let t = self.t();
        let np = self.nodeport_addresses.matcher();
        let key = "ipv4_addr . inet_proto . inet_service";
        // Every chain is declared before any rule jumps to it, as nft resolves jump targets when
        // it reads a rule.
        // Priorities are numbers: nft's names (dstnat, srcnat) are not accepted on every hook.
        // -100 is dstnat, 100 srcnat; the filter chains run just before DNAT.
        let chains = [
            (
                "filter-prerouting",
                "{ type filter hook prerouting priority -110 ; }",
            ),
            ("filter-input", "{ type filter hook input priority -110 ; }"),
            (
                "filter-forward",
                "{ type filter hook forward priority -110 ; }",
            ),
            (
                "filter-output",
                "{ type filter hook output priority -110 ; }",
            ),
            (
                "nat-prerouting",
                "{ type nat hook prerouting priority -100 ; }",
            ),
            ("nat-output", "{ type nat hook output priority -100 ; }"),
            (
                "nat-postrouting",
                "{ type nat hook postrouting priority 100 ; }",
            ),
            ("endpoints-check", ""),
            ("reject-chain", ""),
            ("masquerading", ""),
            ("mark-for-masquerade", ""),
            ("services", ""),
        ];
        let rules = [
            // New connections to a service without endpoints are refused.
            // TCP is reset before routing, so it works on a node without a route to the service
            // range; other protocols get their ICMP error after routing (input, forward), where
            // the kernel can send it back.
            (
                "filter-prerouting",
                "ct state new meta l4proto tcp jump endpoints-check".to_string(),
            ),
            (
                "filter-input",
                "ct state new jump endpoints-check".to_string(),
            ),
            (
                "filter-forward",
                "ct state new jump endpoints-check".to_string(),
            ),
            (
                "filter-output",
                "ct state new jump endpoints-check".to_string(),
            ),
            (
                "endpoints-check",
                format!("ip daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES}"),
            ),
            (
                "endpoints-check",
                format!("{np} meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}"),
            ),
            // A TCP reset refuses the connection on the spot; an ICMP error sent from the
            // prerouting hook would not reach the client.
            (
                "reject-chain",
                "meta l4proto tcp reject with tcp reset".to_string(),
            ),
            ("reject-chain", "reject".to_string()),
            ("nat-prerouting", "jump services".to_string()),
            ("nat-output", "jump services".to_string()),
            ("nat-postrouting", "jump masquerading".to_string()),
            (
                "masquerading",
                format!("meta mark & {MASQ_MARK} == 0 return"),
            ),
            // Clear the bit so a packet that is routed again is not masqueraded twice.
            (
                "masquerading",
                format!("meta mark set meta mark ^ {MASQ_MARK}"),
            ),
            ("masquerading", "masquerade fully-random".to_string()),
            (
                "mark-for-masquerade",
                format!("meta mark set meta mark | {MASQ_MARK}"),
            ),
            (
                "services",
                format!("ip daddr . meta l4proto . th dport vmap @{SERVICE_IPS}"),
            ),
            (
                "services",
                format!("{np} meta l4proto . th dport vmap @{SERVICE_NODEPORTS}"),
            ),
        ];
        let mut s = format!("add table {t}\n");
        for m in [SERVICE_IPS, NO_ENDPOINT_SERVICES] {
            let _ = writeln!(s, "add map {t} {m} {{ type {key} : verdict ; }}");
        }
        for m in [SERVICE_NODEPORTS, NO_ENDPOINT_NODEPORTS] {
            let _ = writeln!(
                s,
                "add map {t} {m} {{ type inet_proto . inet_service : verdict ; }}"
            );
        }
        for (c, def) in chains {
            let _ = writeln!(s, "add chain {t} {c} {def}");
        }
        for (c, r) in rules {
            let _ = writeln!(s, "add rule {t} {c} {r}");
        }
        s
    }

    /// The chains, sets and map elements of one service port.
    pub fn render(&self, sp: &ServicePort) -> Rendered {
        let key = sp.key();
        let svc_chain = name("service", &key);
        let ext_chain = name("external", &key);
        let ip_key = format!("{} . {} . {}", sp.cluster_ip, sp.protocol, sp.port);
        let mut r = Rendered::default();
        if sp.endpoints.is_empty() {
            r.elements.insert((
                NO_ENDPOINT_SERVICES,
                format!("{ip_key} : goto reject-chain"),
            ));
            if let Some(np) = sp.node_port {
                r.elements.insert((
                    NO_ENDPOINT_NODEPORTS,
                    format!("{} . {np} : goto reject-chain", sp.protocol),
                ));
            }
            return r;
        }
        let eps: Vec<(String, Option<String>, Ipv4Addr, u16)> = sp
            .endpoints
            .iter()
            .map(|(ip, port)| {
                let ek = format!("{key}__{ip}/{port}");
                // The timeout is part of the set's name: a changed timeout is a new set, and the
                // endpoint chain that updates it is rewritten in the same transaction.
                let aff = sp
                    .affinity_timeout
                    .map(|t| name("affinity", &format!("{ek}_{t}")));
                (name("endpoint", &ek), aff, *ip, *port)
            })
            .collect();
        let mut rules = Vec::new();
        if let Some(cidr) = &self.cluster_cidr {
            rules.push(format!("ip saddr != {cidr} jump mark-for-masquerade"));
        }
        for (chain, aff, _, _) in &eps {
            if let Some(set) = aff {
                rules.push(format!("ip saddr @{set} goto {chain}"));
            }
        }
        let targets: Vec<String> = eps
            .iter()
            .enumerate()
            .map(|(i, (chain, ..))| format!("{i} : goto {chain}"))
            .collect();
        rules.push(format!(
            "numgen random mod {} vmap {{ {} }}",
            eps.len(),
            targets.join(", ")
        ));
        r.chains.insert(svc_chain.clone(), rules);
        for (chain, aff, ip, port) in eps {
            let mut rules = vec![format!("ip saddr {ip} jump mark-for-masquerade")];
            if let (Some(set), Some(timeout)) = (aff, sp.affinity_timeout) {
                r.sets.insert(
                    set.clone(),
                    format!("{{ type ipv4_addr ; flags dynamic,timeout ; timeout {timeout}s ; }}"),
                );
                rules.push(format!("update @{set} {{ ip saddr }}"));
            }
            rules.push(format!("meta l4proto {} dnat to {ip}:{port}", sp.protocol));
            r.chains.insert(chain, rules);
        }
        r.elements
            .insert((SERVICE_IPS, format!("{ip_key} : goto {svc_chain}")));
        if let Some(np) = sp.node_port {
            // Traffic from outside arrives with a source the endpoint may not route back to.
            r.chains.insert(
                ext_chain.clone(),
                vec![
                    "jump mark-for-masquerade".into(),
                    format!("goto {svc_chain}"),
                ],
            );
            r.elements.insert((
                SERVICE_NODEPORTS,
                format!("{} . {np} : goto {ext_chain}", sp.protocol),
            ));
        }
        r
    }
}

/// One service port's share of the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rendered {
    /// Chain name -> its rules, in order.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Set name -> its definition.
    pub sets: BTreeMap<String, String>,
    /// (map, element) pairs.
    pub elements: BTreeSet<(&'static str, String)>,
}

/// The commands of one transaction, in the order the kernel needs them: references go before the
/// things they point at are removed, and things exist before references to them are added.
#[derive(Default)]
pub struct Transaction {
    delete_elements: String,
    flush_chains: String,
    delete_chains: String,
    delete_sets: String,
    add_sets: String,
    add_chains: String,
    add_rules: String,
    add_elements: String,
    /// Chains and sets touched, for the sync's report.
    pub changed: usize,
}

impl Transaction {
    pub fn is_empty(&self) -> bool {
        self.changed == 0
    }

    /// Adds the commands that turn `old` into `new` (either may be empty: a Service added or
    /// removed).
    pub fn diff(&mut self, cfg: &RuleConfig, old: &Rendered, new: &Rendered) {
        let t = cfg.t();
        for (map, e) in old.elements.difference(&new.elements) {
            let _ = writeln!(self.delete_elements, "delete element {t} {map} {{ {e} }}");
            self.changed += 1;
        }
        for (chain, rules) in &old.chains {
            match new.chains.get(chain) {
                Some(r) if r == rules => {}
                Some(_) => {
                    let _ = writeln!(self.flush_chains, "flush chain {t} {chain}");
                }
                None => {
                    let _ = writeln!(self.flush_chains, "flush chain {t} {chain}");
                    let _ = writeln!(self.delete_chains, "delete chain {t} {chain}");
                    self.changed += 1;
                }
            }
        }
        for (set, def) in &old.sets {
            if new.sets.get(set) != Some(def) {
                let _ = writeln!(self.delete_sets, "delete set {t} {set}");
                self.changed += 1;
            }
        }
        for (set, def) in &new.sets {
            if old.sets.get(set) != Some(def) {
                let _ = writeln!(self.add_sets, "add set {t} {set} {def}");
                self.changed += 1;
            }
        }
        for (chain, rules) in &new.chains {
            if old.chains.get(chain) == Some(rules) {
                continue;
            }
            if !old.chains.contains_key(chain) {
                let _ = writeln!(self.add_chains, "add chain {t} {chain}");
            }
            for r in rules {
                let _ = writeln!(self.add_rules, "add rule {t} {chain} {r}");
            }
            self.changed += 1;
        }
        for (map, e) in new.elements.difference(&old.elements) {
            let _ = writeln!(self.add_elements, "add element {t} {map} {{ {e} }}");
            self.changed += 1;
        }
    }

    /// The `nft -f` script.
    pub fn script(&self) -> String {
        let mut s = String::with_capacity(
            self.delete_elements.len()
                + self.flush_chains.len()
                + self.delete_chains.len()
                + self.delete_sets.len()
                + self.add_sets.len()
                + self.add_chains.len()
                + self.add_rules.len()
                + self.add_elements.len(),
        );
        for part in [
            &self.delete_elements,
            &self.flush_chains,
            &self.delete_chains,
            &self.delete_sets,
            &self.add_sets,
            &self.add_chains,
            &self.add_rules,
            &self.add_elements,
        ] {
            s.push_str(part);
        }
        s
    }
}

/// The script that replaces the whole table with `rendered`: the table is created (so the delete
/// cannot fail), deleted and built again inside one transaction.
pub fn full_script<'a>(cfg: &RuleConfig, rendered: impl Iterator<Item = &'a Rendered>) -> String {
    let t = cfg.t();
    let mut s = format!("add table {t}\ndelete table {t}\n");
    s.push_str(&cfg.skeleton());
    let mut tx = Transaction::default();
    let empty = Rendered::default();
    for r in rendered {
        tx.diff(cfg, &empty, r);
    }
    s.push_str(&tx.script());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RuleConfig {
        RuleConfig {
            table: "cairn-proxy".into(),
            nodeport_addresses: NodePortAddresses::AllLocal,
            cluster_cidr: Some("10.244.0.0/16".into()),
        }
    }

    fn sp(eps: &[(&str, u16)]) -> ServicePort {
        ServicePort {
            namespace: "default".into(),
            service: "web".into(),
            port_name: "http".into(),
            protocol: "tcp",
            cluster_ip: "10.96.0.5".parse().unwrap(),
            port: 80,
            node_port: Some(30080),
            affinity_timeout: None,
            endpoints: eps.iter().map(|(i, p)| (i.parse().unwrap(), *p)).collect(),
        }
    }

    #[test]
    fn names_are_bounded_valid_and_distinct() {
        let long = "n".repeat(63);
        let a = name("endpoint", &format!("{long}/{long}/tcp/http__10.0.0.1/80"));
        let b = name("endpoint", &format!("{long}/{long}/tcp/http__10.0.0.2/80"));
        assert!(a.len() <= MAX_NAME_LEN && b.len() <= MAX_NAME_LEN);
        assert_ne!(a, b, "the hash tells truncated names apart");
        assert!(a.starts_with("endpoint-"));
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/-_.".contains(c)));
        assert_eq!(name("service", "default/web/tcp/http").len(), 37);
    }

    #[test]
    fn a_service_without_endpoints_rejects() {
        let r = cfg().render(&sp(&[]));
        assert!(r.chains.is_empty());
        assert!(r.elements.contains(&(
            NO_ENDPOINT_SERVICES,
            "10.96.0.5 . tcp . 80 : goto reject-chain".into()
        )));
        assert!(r.elements.contains(&(
            NO_ENDPOINT_NODEPORTS,
            "tcp . 30080 : goto reject-chain".into()
        )));
    }

    #[test]
    fn endpoints_are_picked_at_random_and_dnatted() {
        let r = cfg().render(&sp(&[("10.0.0.2", 8080), ("10.0.0.3", 8080)]));
        let svc = name("service", "default/web/tcp/http");
        let rules = &r.chains[&svc];
        assert_eq!(
            rules[0],
            "ip saddr != 10.244.0.0/16 jump mark-for-masquerade"
        );
        assert!(rules[1].starts_with("numgen random mod 2 vmap { 0 : goto endpoint-"));
        let ep = name("endpoint", "default/web/tcp/http__10.0.0.2/8080");
        assert_eq!(
            r.chains[&ep],
            vec![
                "ip saddr 10.0.0.2 jump mark-for-masquerade".to_string(),
                "meta l4proto tcp dnat to 10.0.0.2:8080".to_string()
            ]
        );
        assert_eq!(r.chains.len(), 4, "service, external and two endpoints");
    }

    #[test]
    fn a_diff_touches_only_what_changed_in_kernel_order() {
        let c = cfg();
        let old = c.render(&sp(&[("10.0.0.2", 8080)]));
        let new = c.render(&sp(&[("10.0.0.2", 8080), ("10.0.0.3", 8080)]));
        let mut tx = Transaction::default();
        tx.diff(&c, &old, &new);
        let s = tx.script();
        // The service chain is rewritten, the new endpoint's chain added, the old one untouched.
        let svc = name("service", "default/web/tcp/http");
        let flush = s
            .find(&format!("flush chain ip cairn-proxy {svc}"))
            .unwrap();
        let add_ep = s
            .find(&format!(
                "add chain ip cairn-proxy {}",
                name("endpoint", "default/web/tcp/http__10.0.0.3/8080")
            ))
            .unwrap();
        assert!(flush < add_ep);
        let kept = name("endpoint", "default/web/tcp/http__10.0.0.2/8080");
        assert!(!s.contains(&format!("chain ip cairn-proxy {kept}\n")));
        assert!(!s.contains(&format!("rule ip cairn-proxy {kept} ")));
        assert!(!s.contains("element"));

        let mut tx = Transaction::default();
        tx.diff(&c, &new, &Rendered::default());
        let s = tx.script();
        let del_elem = s.find("delete element").unwrap();
        let del_chain = s.find("delete chain").unwrap();
        assert!(del_elem < del_chain);

        let mut tx = Transaction::default();
        tx.diff(&c, &new, &new);
        assert!(tx.is_empty());
    }
}
