//! A pod's names and resolver as the kubelet forms them: its hostname and the domain of its own
//! /etc/hosts line (`spec.hostname`, `spec.subdomain`), its host aliases, and its resolv.conf from
//! `dnsPolicy` (ClusterFirst, ClusterFirstWithHostNet, Default, None) merged with `dnsConfig`,
//! trimmed to the resolver's limits. The results go into the runtime's pod spec, which writes the
//! files. Pure functions apart from reading the host's resolv.conf; this file never imports
//! `registry`, `apiserver` or the kube client.

use std::net::IpAddr;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Pod;

use super::convert::Refusal;
use crate::runtime;

/// What the kubelet's `--cluster-dns`, `--cluster-domain` and `--resolv-conf` say.
#[derive(Debug, Clone)]
pub struct DnsSettings {
    /// Nameservers of ClusterFirst pods; none: they fall back to the host's resolver.
    pub cluster_dns: Vec<IpAddr>,
    pub cluster_domain: String,
    /// The host's resolver configuration, the base of Default pods (empty: none).
    pub resolv_conf: PathBuf,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            cluster_dns: Vec::new(),
            cluster_domain: "cluster.local".into(),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
        }
    }
}

/// Something the pod's owner should hear about, as a Warning event on the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub reason: &'static str,
    pub message: String,
}

/// The resolver's limits, as Kubernetes validates them.
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCHES: usize = 32;
const MAX_SEARCH_CHARS: usize = 2048;

/// The nameserver, search and options lines of a resolv.conf (options as `name[:value]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolver {
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// Reads a resolv.conf as the kubelet does: every nameserver, the last search line (without
/// trailing dots), every option; comments (`#`, `;`) ignored.
pub fn parse_resolv_conf(text: &str) -> Resolver {
    let mut r = Resolver::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("nameserver") => r.nameservers.extend(fields.next().map(str::to_string)),
            Some("search") => {
                r.searches = fields
                    .filter(|s| *s != ".")
                    .map(|s| s.trim_end_matches('.').to_string())
                    .collect();
            }
            Some("options") => {
                for o in fields {
                    merge_option(&mut r.options, o);
                }
            }
            _ => {}
        }
    }
    r
}

/// Sets `option` (`name[:value]`), replacing one of the same name in place.
fn merge_option(options: &mut Vec<String>, option: &str) {
    let name = option.split(':').next().unwrap_or(option);
    match options
        .iter_mut()
        .find(|o| o.split(':').next() == Some(name))
    {
        Some(o) => *o = option.to_string(),
        None => options.push(option.to_string()),
    }
}

fn push_unique(to: &mut Vec<String>, items: impl IntoIterator<Item = String>) {
    for i in items {
        if !to.contains(&i) {
            to.push(i);
        }
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The pod's hostname (`spec.hostname`, else its name cut to 63 characters) and the domain of its
/// own /etc/hosts line (`<subdomain>.<namespace>.svc.<cluster domain>`, when it has a subdomain).
pub fn hostname_and_domain(
    pod: &Pod,
    cluster_domain: &str,
) -> Result<(String, Option<String>), Refusal> {
    let spec = pod.spec.as_ref();
    let invalid = |what: &str, v: &str| Refusal {
        reason: "CreateContainerConfigError",
        message: format!("pod {what} {v:?} is not a valid DNS label"),
    };
    let hostname = match spec.and_then(|s| s.hostname.as_deref()) {
        Some(h) if !h.is_empty() => {
            if !is_dns_label(h) {
                return Err(invalid("Hostname", h));
            }
            h.to_string()
        }
        _ => {
            let name = pod.metadata.name.as_deref().unwrap_or("");
            let cut = &name[..name.len().min(63)];
            let cut = cut.trim_end_matches(['-', '.']);
            if cut.is_empty() {
                return Err(invalid("name", name));
            }
            cut.to_string()
        }
    };
    let domain = match spec.and_then(|s| s.subdomain.as_deref()) {
        Some(sub) if !sub.is_empty() => {
            if !is_dns_label(sub) {
                return Err(invalid("Subdomain", sub));
            }
            let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
            Some(format!("{sub}.{ns}.svc.{cluster_domain}"))
        }
        _ => None,
    };
    Ok((hostname, domain))
}

/// The pod's resolver from its dnsPolicy and dnsConfig over the host's `host` resolver, with the
/// warnings the kubelet records as events.
pub fn pod_resolver(pod: &Pod, s: &DnsSettings, host: &Resolver) -> (Resolver, Vec<Warning>) {
    let spec = pod.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let policy = spec
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst");
    let mut warnings = Vec::new();
    // ClusterFirst on the host's network resolves as the host does; only
    // ClusterFirstWithHostNet gives such a pod the cluster's DNS.
    let cluster = match policy {
        "None" => None,
        "ClusterFirstWithHostNet" => Some(true),
        "ClusterFirst" if !host_network => Some(true),
        _ => Some(false),
    };
    let mut r = match cluster {
        None => Resolver::default(),
        Some(true) if !s.cluster_dns.is_empty() => {
            let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
            let d = &s.cluster_domain;
            let mut searches = Vec::new();
            if !d.is_empty() {
                searches = vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.clone()];
            }
            push_unique(&mut searches, host.searches.iter().cloned());
            Resolver {
                nameservers: s.cluster_dns.iter().map(IpAddr::to_string).collect(),
                searches,
                options: vec!["ndots:5".into()],
            }
        }
        Some(cluster_first) => {
            if cluster_first {
                warnings.push(Warning {
                    reason: "MissingClusterDNS",
                    message: "kubelet does not have ClusterDNS IP configured and cannot create Pod using \"ClusterFirst\" policy. Falling back to \"Default\" policy.".into(),
                });
            }
            if s.resolv_conf.as_os_str().is_empty() {
                Resolver {
                    nameservers: vec!["127.0.0.1".into()],
                    ..Default::default()
                }
            } else {
                host.clone()
            }
        }
    };
    if let Some(cfg) = spec.and_then(|s| s.dns_config.as_ref()) {
        push_unique(
            &mut r.nameservers,
            cfg.nameservers.iter().flatten().cloned(),
        );
        push_unique(&mut r.searches, cfg.searches.iter().flatten().cloned());
        for o in cfg.options.iter().flatten() {
            let Some(name) = o.name.as_deref() else {
                continue;
            };
            match o.value.as_deref() {
                Some(v) if !v.is_empty() => merge_option(&mut r.options, &format!("{name}:{v}")),
                _ => merge_option(&mut r.options, name),
            }
        }
    }
    if r.nameservers.len() > MAX_NAMESERVERS {
        r.nameservers.truncate(MAX_NAMESERVERS);
        warnings.push(Warning {
            reason: "DNSConfigForming",
            message: format!("Nameserver limits were exceeded, some nameservers have been omitted, the applied nameserver line is: {}", r.nameservers.join(" ")),
        });
    }
    let mut chars = 0;
    let fits = r
        .searches
        .iter()
        .take(MAX_SEARCHES)
        .take_while(|s| {
            chars += s.len() + 1;
            chars - 1 <= MAX_SEARCH_CHARS
        })
        .count();
    if fits < r.searches.len() {
        r.searches.truncate(fits);
        warnings.push(Warning {
            reason: "DNSConfigForming",
            message: format!("Search Line limits were exceeded, some search paths have been omitted, the applied search line is: {}", r.searches.join(" ")),
        });
    }
    (r, warnings)
}

/// Host aliases as the runtime takes them.
fn host_aliases(pod: &Pod) -> Vec<runtime::spec::HostAlias> {
    pod.spec
        .iter()
        .flat_map(|s| s.host_aliases.iter().flatten())
        .map(|a| runtime::spec::HostAlias {
            ip: a.ip.clone(),
            hostnames: a.hostnames.clone().unwrap_or_default(),
        })
        .collect()
}

/// Fills the runtime spec's hostname, hosts and resolver fields for `pod`; returns the warnings
/// to record.
pub fn apply(
    rspec: &mut runtime::Pod,
    pod: &Pod,
    s: &DnsSettings,
) -> Result<Vec<Warning>, Refusal> {
    let (hostname, domain) = hostname_and_domain(pod, &s.cluster_domain)?;
    let host = if s.resolv_conf.as_os_str().is_empty() {
        Resolver::default()
    } else {
        match std::fs::read_to_string(&s.resolv_conf) {
            Ok(t) => parse_resolv_conf(&t),
            // As the kubelet: a missing host file gives an empty base, not a refusal.
            Err(e) => {
                tracing::warn!(path = %s.resolv_conf.display(), error = %e, "cannot read the host's resolv.conf");
                Resolver::default()
            }
        }
    };
    let (r, warnings) = pod_resolver(pod, s, &host);
    rspec.spec.hostname = Some(hostname);
    rspec.spec.host_domain = domain;
    rspec.spec.host_aliases = host_aliases(pod);
    rspec.spec.dns_config = Some(runtime::spec::DnsConfig {
        nameservers: r.nameservers,
        searches: r.searches,
        options: r
            .options
            .iter()
            .map(|o| match o.split_once(':') {
                Some((n, v)) => runtime::spec::DnsOption {
                    name: n.into(),
                    value: Some(v.into()),
                },
                None => runtime::spec::DnsOption {
                    name: o.clone(),
                    value: None,
                },
            })
            .collect(),
    });
    rspec.validate().map_err(|e| Refusal {
        reason: "CreateContainerConfigError",
        message: e.to_string(),
    })?;
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(extra: serde_json::Value) -> Pod {
        let mut spec = json!({"containers": [{"name": "c"}]});
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        serde_json::from_value(
            json!({"metadata": {"name": "web", "namespace": "shop"}, "spec": spec}),
        )
        .unwrap()
    }

    fn settings(dns: &[&str]) -> DnsSettings {
        DnsSettings {
            cluster_dns: dns.iter().map(|s| s.parse().unwrap()).collect(),
            ..Default::default()
        }
    }

    fn host() -> Resolver {
        parse_resolv_conf(
            "# host\nnameserver 192.0.2.53\nsearch old.example\nsearch corp.example. lab.example\noptions timeout:2 ndots:1\noptions timeout:3\n",
        )
    }

    #[test]
    fn the_host_file_is_read_as_the_kubelet_reads_it() {
        let h = host();
        assert_eq!(h.nameservers, ["192.0.2.53"]);
        assert_eq!(h.searches, ["corp.example", "lab.example"]);
        assert_eq!(h.options, ["timeout:3", "ndots:1"]);
    }

    #[test]
    fn cluster_first_uses_the_cluster_dns_and_search_path() {
        let (r, w) = pod_resolver(&pod(json!({})), &settings(&["10.96.0.10"]), &host());
        assert!(w.is_empty());
        assert_eq!(r.nameservers, ["10.96.0.10"]);
        assert_eq!(
            r.searches,
            [
                "shop.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "corp.example",
                "lab.example"
            ]
        );
        assert_eq!(r.options, ["ndots:5"]);
    }

    #[test]
    fn host_network_pods_resolve_as_the_host_unless_they_ask_for_the_cluster() {
        let s = settings(&["10.96.0.10"]);
        let (r, _) = pod_resolver(&pod(json!({"hostNetwork": true})), &s, &host());
        assert_eq!(r, host());
        let (r, _) = pod_resolver(
            &pod(json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"})),
            &s,
            &host(),
        );
        assert_eq!(r.nameservers, ["10.96.0.10"]);
        let (r, _) = pod_resolver(&pod(json!({"dnsPolicy": "Default"})), &s, &host());
        assert_eq!(r, host());
    }

    #[test]
    fn without_cluster_dns_cluster_first_falls_back_to_default_with_a_warning() {
        let (r, w) = pod_resolver(&pod(json!({})), &settings(&[]), &host());
        assert_eq!(r, host());
        assert_eq!(w[0].reason, "MissingClusterDNS");
    }

    #[test]
    fn dns_config_is_merged_and_none_takes_only_it() {
        let cfg = json!({"nameservers": ["192.0.2.1", "10.96.0.10"], "searches": ["my.example"],
            "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]});
        let (r, _) = pod_resolver(
            &pod(json!({"dnsConfig": cfg})),
            &settings(&["10.96.0.10"]),
            &host(),
        );
        assert_eq!(r.nameservers, ["10.96.0.10", "192.0.2.1"]);
        assert_eq!(r.searches.last().unwrap(), "my.example");
        assert_eq!(r.options, ["ndots:2", "edns0"]);
        let (r, _) = pod_resolver(
            &pod(json!({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["192.0.2.1"]}})),
            &settings(&["10.96.0.10"]),
            &host(),
        );
        assert_eq!(
            r,
            Resolver {
                nameservers: vec!["192.0.2.1".into()],
                ..Default::default()
            }
        );
    }

    #[test]
    fn limits_trim_with_a_warning() {
        let cfg = json!({"nameservers": ["192.0.2.1", "192.0.2.2", "192.0.2.3"]});
        let (r, w) = pod_resolver(
            &pod(json!({"dnsConfig": cfg})),
            &settings(&["10.96.0.10"]),
            &host(),
        );
        assert_eq!(r.nameservers.len(), 3);
        assert_eq!(w[0].reason, "DNSConfigForming");
        assert!(w[0]
            .message
            .ends_with("the applied nameserver line is: 10.96.0.10 192.0.2.1 192.0.2.2"));
    }

    #[test]
    fn hostname_and_subdomain() {
        let (h, d) = hostname_and_domain(
            &pod(json!({"hostname": "web-0", "subdomain": "web"})),
            "cluster.local",
        )
        .unwrap();
        assert_eq!(
            (h.as_str(), d.as_deref()),
            ("web-0", Some("web.shop.svc.cluster.local"))
        );
        let (h, d) = hostname_and_domain(&pod(json!({})), "cluster.local").unwrap();
        assert_eq!((h.as_str(), d), ("web", None));
        let mut long = pod(json!({}));
        long.metadata.name = Some(format!("{}-x", "a".repeat(62)));
        assert_eq!(
            hostname_and_domain(&long, "cluster.local").unwrap().0,
            "a".repeat(62)
        );
        let e = hostname_and_domain(&pod(json!({"hostname": "Not_A_Label"})), "cluster.local")
            .unwrap_err();
        assert_eq!(e.reason, "CreateContainerConfigError");
    }
}
