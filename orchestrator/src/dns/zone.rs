//! The cluster's names, as CoreDNS's kubernetes plugin serves them, built from Services and
//! EndpointSlices into one immutable snapshot per change:
//!
//! ```text
//! web.default.svc.cluster.local.              A     10.96.0.5          (the ClusterIP)
//! db.default.svc.cluster.local.               A     10.244.1.7, ...    (headless: ready endpoints)
//! db-0.db.default.svc.cluster.local.          A     10.244.1.7         (an endpoint's hostname)
//! 10-244-1-8.db.default.svc.cluster.local.    A     10.244.1.8         (headless, no hostname)
//! _http._tcp.web.default.svc.cluster.local.   SRV   0 100 80 web.default.svc.cluster.local.
//! ext.default.svc.cluster.local.              CNAME example.org.       (ExternalName)
//! 10-244-1-7.default.pod.cluster.local.       A     10.244.1.7         (any such name, CoreDNS's
//!                                                                       `pods insecure`)
//! ```
//!
//! Names are kept lowercase with the trailing dot. Every ancestor of a name up to the domain
//! exists too (an empty non-terminal answers NOERROR with no data, not NXDOMAIN, so resolvers that
//! walk labels are not misled). Pure data: no sockets, no API calls.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::proxy::model::slices_by_service;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Data {
    A(Ipv4Addr),
    Cname(String),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
}

/// What a name in the cluster domain resolves to.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// The name exists; these are all its records (possibly none of the type asked for).
    Found(&'a [Data]),
    /// A synthesized pod record.
    Pod(Ipv4Addr),
    /// The zone's apex.
    Apex,
    NxDomain,
    /// Not ours: forward it.
    Outside,
}

/// One snapshot of the cluster's names.
#[derive(Debug, Default)]
pub struct Zone {
    /// `cluster.local.`
    pub domain: String,
    records: HashMap<String, Vec<Data>>,
    /// Names with no records of their own but with names below them.
    interior: HashSet<String>,
}

impl Zone {
    /// Builds the names of `services` and their `slices` under `domain` (`cluster.local`).
    pub fn build<'a>(
        domain: &str,
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
    ) -> Zone {
        let domain = fqdn(domain);
        let mut z = Zone {
            domain: domain.clone(),
            ..Default::default()
        };
        let by_service = slices_by_service(slices);
        for svc in services {
            let ns = svc.metadata.namespace.clone().unwrap_or_default();
            let name = svc.metadata.name.clone().unwrap_or_default();
            let Some(spec) = &svc.spec else { continue };
            let base = format!("{name}.{ns}.svc.{domain}").to_ascii_lowercase();
            if spec.type_.as_deref() == Some("ExternalName") {
                if let Some(target) = &spec.external_name {
                    z.add(&base, Data::Cname(fqdn(target).to_ascii_lowercase()));
                }
                continue;
            }
            let own = by_service
                .get(&(ns.clone(), name.clone()))
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            match spec.cluster_ip.as_deref() {
                Some("None") => z.add_headless(&base, spec, own),
                Some(ip) => {
                    let Ok(ip) = ip.parse::<Ipv4Addr>() else {
                        continue;
                    };
                    z.add(&base, Data::A(ip));
                    for p in spec.ports.iter().flatten() {
                        let Some(pn) = p.name.as_deref().filter(|n| !n.is_empty()) else {
                            continue;
                        };
                        let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
                        z.add(
                            &format!("_{pn}._{proto}.{base}"),
                            Data::Srv {
                                priority: 0,
                                weight: 100,
                                port: u16::try_from(p.port).unwrap_or(0),
                                target: base.clone(),
                            },
                        );
                    }
                }
                None => {}
            }
        }
        for v in z.records.values_mut() {
            v.sort();
            v.dedup();
        }
        z
    }

    fn add_headless(
        &mut self,
        base: &str,
        spec: &k8s_openapi::api::core::v1::ServiceSpec,
        slices: &[&EndpointSlice],
    ) {
        let publish_all = spec.publish_not_ready_addresses.unwrap_or(false);
        // SRV targets per named port and protocol: (port name, protocol) -> (host name, port).
        let mut srv: HashMap<(String, String), BTreeSet<(String, u16)>> = HashMap::new();
        for s in slices {
            for e in &s.endpoints {
                let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                if !ready && !publish_all {
                    continue;
                }
                for a in &e.addresses {
                    let Ok(ip) = a.parse::<Ipv4Addr>() else {
                        continue;
                    };
                    let host = match &e.hostname {
                        Some(h) if !h.is_empty() => h.to_ascii_lowercase(),
                        _ => a.replace('.', "-"),
                    };
                    let host_name = format!("{host}.{base}");
                    self.add(base, Data::A(ip));
                    self.add(&host_name, Data::A(ip));
                    for p in s.ports.iter().flatten() {
                        let (Some(pn), Some(port)) = (
                            p.name.as_deref().filter(|n| !n.is_empty()),
                            p.port.and_then(|p| u16::try_from(p).ok()),
                        ) else {
                            continue;
                        };
                        let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
                        srv.entry((pn.to_string(), proto))
                            .or_default()
                            .insert((host_name.clone(), port));
                    }
                }
            }
        }
        for ((pn, proto), targets) in srv {
            // Equal shares of 100, as CoreDNS weighs a headless service's records.
            let weight = (100 / targets.len().max(1)).max(1) as u16;
            for (target, port) in targets {
                self.add(
                    &format!("_{pn}._{proto}.{base}"),
                    Data::Srv {
                        priority: 0,
                        weight,
                        port,
                        target,
                    },
                );
            }
        }
    }

    fn add(&mut self, name: &str, d: Data) {
        self.records.entry(name.to_string()).or_default().push(d);
        // Ancestors up to (not including) the domain become interior nodes.
        let mut rest = name;
        while let Some((_, parent)) = rest.split_once('.') {
            if parent.len() <= self.domain.len() {
                break;
            }
            self.interior.insert(parent.to_string());
            rest = parent;
        }
    }

    /// Looks up `name` (any case, with or without the trailing dot).
    pub fn lookup(&self, name: &str) -> Lookup<'_> {
        let name = fqdn(name).to_ascii_lowercase();
        if name == self.domain {
            return Lookup::Apex;
        }
        let Some(head) = name
            .strip_suffix(self.domain.as_str())
            .and_then(|h| h.strip_suffix('.'))
        else {
            return Lookup::Outside;
        };
        if let Some(d) = self.records.get(&name) {
            return Lookup::Found(d);
        }
        if self.interior.contains(&name) {
            return Lookup::Found(&[]);
        }
        // <a-b-c-d>.<namespace>.pod
        let labels: Vec<&str> = head.split('.').collect();
        if let [ip, _ns, "pod"] = labels.as_slice() {
            if let Ok(ip) = ip.replace('-', ".").parse::<Ipv4Addr>() {
                return Lookup::Pod(ip);
            }
        }
        if matches!(
            labels.as_slice(),
            ["svc"] | ["pod"] | [_, "svc"] | [_, "pod"]
        ) {
            // The fixed structure of the zone exists even when empty.
            return Lookup::Found(&[]);
        }
        Lookup::NxDomain
    }

    /// How many names the snapshot holds.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// `name` with exactly one trailing dot.
pub fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn zone() -> Zone {
        let services: Vec<Service> = vec![
            serde_json::from_value(json!({
                "metadata": {"name": "web", "namespace": "default"},
                "spec": {"clusterIP": "10.96.0.5", "ports": [{"name": "http", "port": 80}]}
            }))
            .unwrap(),
            serde_json::from_value(json!({
                "metadata": {"name": "db", "namespace": "prod"},
                "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}
            }))
            .unwrap(),
            serde_json::from_value(json!({
                "metadata": {"name": "ext", "namespace": "default"},
                "spec": {"type": "ExternalName", "externalName": "Example.org"}
            }))
            .unwrap(),
        ];
        let slices: Vec<EndpointSlice> = vec![serde_json::from_value(json!({
            "metadata": {"name": "db-x", "namespace": "prod",
                "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.244.1.7"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["10.244.1.8"], "conditions": {"ready": true}},
                {"addresses": ["10.244.1.9"], "conditions": {"ready": false}}
            ]
        }))
        .unwrap()];
        Zone::build("cluster.local", &services, &slices)
    }

    #[test]
    fn services_endpoints_and_pods_resolve_as_coredns_answers() {
        let z = zone();
        assert_eq!(
            z.lookup("WEB.default.svc.cluster.local"),
            Lookup::Found(&[Data::A("10.96.0.5".parse().unwrap())])
        );
        assert_eq!(
            z.lookup("db.prod.svc.cluster.local."),
            Lookup::Found(&[
                Data::A("10.244.1.7".parse().unwrap()),
                Data::A("10.244.1.8".parse().unwrap())
            ])
        );
        assert_eq!(
            z.lookup("db-0.db.prod.svc.cluster.local."),
            Lookup::Found(&[Data::A("10.244.1.7".parse().unwrap())])
        );
        let Lookup::Found(srv) = z.lookup("_pg._tcp.db.prod.svc.cluster.local.") else {
            panic!("no SRV");
        };
        assert_eq!(srv.len(), 2);
        assert!(srv.contains(&Data::Srv {
            priority: 0,
            weight: 50,
            port: 5432,
            target: "10-244-1-8.db.prod.svc.cluster.local.".into()
        }));
        assert_eq!(
            z.lookup("ext.default.svc.cluster.local."),
            Lookup::Found(&[Data::Cname("example.org.".into())])
        );
        assert_eq!(
            z.lookup("10-1-2-3.any.pod.cluster.local."),
            Lookup::Pod("10.1.2.3".parse().unwrap())
        );
        assert_eq!(
            z.lookup("_tcp.db.prod.svc.cluster.local."),
            Lookup::Found(&[])
        );
        assert_eq!(
            z.lookup("nope.default.svc.cluster.local."),
            Lookup::NxDomain
        );
        assert_eq!(
            z.lookup("10-244-1-9.db.prod.svc.cluster.local."),
            Lookup::NxDomain
        );
        assert_eq!(z.lookup("cluster.local."), Lookup::Apex);
        assert_eq!(z.lookup("example.org."), Lookup::Outside);
        assert_eq!(z.lookup("notcluster.local."), Lookup::Outside);
    }
}
