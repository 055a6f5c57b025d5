//! What the proxy programs, derived from Services and EndpointSlices: one [`ServicePort`] per
//! port of every Service that has a virtual IP, with the endpoints traffic may go to. Pure data:
//! no kernel, no API calls, so the selection rules (which endpoints, which ports) are unit-tested
//! alone.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One port of one Service, as the rules need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub namespace: String,
    pub service: String,
    /// The port's name, or its number when it has none (a single-port Service).
    pub port_name: String,
    /// `tcp`, `udp` or `sctp`, as nft spells it.
    pub protocol: &'static str,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub node_port: Option<u16>,
    /// sessionAffinity ClientIP's timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// Where connections go, sorted; empty means the Service rejects.
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

impl ServicePort {
    /// `namespace/service/protocol/port`: unique per service port, the base of its chains' names.
    pub fn key(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.namespace, self.service, self.protocol, self.port_name
        )
    }
}

fn protocol(p: Option<&str>) -> Option<&'static str> {
    match p.unwrap_or("TCP") {
        "TCP" => Some("tcp"),
        "UDP" => Some("udp"),
        "SCTP" => Some("sctp"),
        _ => None,
    }
}

/// A slice endpoint's usable state, by KEP-1669: ready ones take traffic; when a Service has
/// none, the serving ones that are terminating do, so connections drain instead of failing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Usable {
    Ready,
    ServingTerminating,
    No,
}

fn usable(c: Option<&k8s_openapi::api::discovery::v1::EndpointConditions>) -> Usable {
    // Unset conditions are to be read as true (discovery.k8s.io/v1), except terminating.
    let ready = c.and_then(|c| c.ready).unwrap_or(true);
    let serving = c.and_then(|c| c.serving).unwrap_or(ready);
    let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
    if ready && !terminating {
        Usable::Ready
    } else if serving && terminating {
        Usable::ServingTerminating
    } else {
        Usable::No
    }
}

/// Slices grouped by the Service they belong to, `(namespace, name)`.
pub fn slices_by_service<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> HashMap<(String, String), Vec<&'a EndpointSlice>> {
    let mut out: HashMap<(String, String), Vec<&EndpointSlice>> = HashMap::new();
    for s in slices {
        if s.address_type != "IPv4" || s.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(svc) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        let ns = s.metadata.namespace.clone().unwrap_or_default();
        out.entry((ns, svc.clone())).or_default().push(s);
    }
    out
}

/// The ports of `svc` the proxy handles, with their endpoints from `slices` (the Service's own).
/// Headless and ExternalName Services and non-IPv4 cluster IPs have no rules.
pub fn service_ports(svc: &Service, slices: &[&EndpointSlice]) -> Vec<ServicePort> {
    let Some(spec) = &svc.spec else {
        return vec![];
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return vec![];
    }
    let Some(cluster_ip) = spec
        .cluster_ip
        .as_deref()
        .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
    else {
        return vec![];
    };
    let node_ports = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
    let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            // The API's default: three hours.
            .unwrap_or(10800)
            .clamp(1, 86400) as u32
    });
    let namespace = svc.metadata.namespace.clone().unwrap_or_default();
    let service = svc.metadata.name.clone().unwrap_or_default();
    let mut out = Vec::new();
    for p in spec.ports.iter().flatten() {
        let Some(proto) = protocol(p.protocol.as_deref()) else {
            continue;
        };
        let name = p.name.clone().unwrap_or_default();
        // Every endpoint once, with the best state any slice reports for it.
        let mut found: BTreeMap<(Ipv4Addr, u16), Usable> = BTreeMap::new();
        for s in slices {
            let Some(sp) = s.ports.iter().flatten().find(|sp| {
                sp.name.clone().unwrap_or_default() == name
                    && protocol(sp.protocol.as_deref()) == Some(proto)
            }) else {
                continue;
            };
            let Some(port) = sp.port.and_then(|p| u16::try_from(p).ok()) else {
                continue;
            };
            for e in &s.endpoints {
                let u = usable(e.conditions.as_ref());
                for a in &e.addresses {
                    let Ok(ip) = a.parse::<Ipv4Addr>() else {
                        continue;
                    };
                    let slot = found.entry((ip, port)).or_insert(Usable::No);
                    if u == Usable::Ready
                        || (u == Usable::ServingTerminating && *slot == Usable::No)
                    {
                        *slot = u;
                    }
                }
            }
        }
        let pick = |want: Usable| -> Vec<(Ipv4Addr, u16)> {
            found
                .iter()
                .filter(|(_, u)| **u == want)
                .map(|(k, _)| *k)
                .collect()
        };
        let mut endpoints = pick(Usable::Ready);
        if endpoints.is_empty() {
            endpoints = pick(Usable::ServingTerminating);
        }
        out.push(ServicePort {
            namespace: namespace.clone(),
            service: service.clone(),
            port_name: if name.is_empty() {
                p.port.to_string()
            } else {
                name
            },
            protocol: proto,
            cluster_ip,
            port: u16::try_from(p.port).unwrap_or(0),
            node_port: if node_ports {
                p.node_port.and_then(|n| u16::try_from(n).ok())
            } else {
                None
            },
            affinity_timeout,
            endpoints,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }

    fn slice(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn ready_endpoints_win_and_terminating_serving_ones_are_the_fallback() {
        let s = svc(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.5", "type": "NodePort",
                "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}
        }));
        let mut sl = slice(json!({
            "metadata": {"name": "web-1", "namespace": "default",
                "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.0.0.2"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.3"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.0.0.4"], "conditions": {"ready": false}}
            ]
        }));
        let ports = service_ports(&s, &[&sl]);
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].key(), "default/web/tcp/http");
        assert_eq!(ports[0].node_port, Some(30080));
        assert_eq!(
            ports[0].endpoints,
            vec![("10.0.0.2".parse().unwrap(), 8080)]
        );

        sl.endpoints[0].conditions.as_mut().unwrap().ready = Some(false);
        let ports = service_ports(&s, &[&sl]);
        assert_eq!(
            ports[0].endpoints,
            vec![("10.0.0.3".parse().unwrap(), 8080)]
        );
    }

    #[test]
    fn headless_and_external_name_services_have_no_rules() {
        let headless = svc(json!({
            "metadata": {"name": "db", "namespace": "default"},
            "spec": {"clusterIP": "None", "ports": [{"port": 5432}]}
        }));
        assert!(service_ports(&headless, &[]).is_empty());
        let ext = svc(json!({
            "metadata": {"name": "ext", "namespace": "default"},
            "spec": {"type": "ExternalName", "externalName": "example.org"}
        }));
        assert!(service_ports(&ext, &[]).is_empty());
    }

    #[test]
    fn client_ip_affinity_defaults_to_three_hours() {
        let s = svc(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.5", "sessionAffinity": "ClientIP",
                "ports": [{"port": 80, "protocol": "UDP"}]}
        }));
        let ports = service_ports(&s, &[]);
        assert_eq!(ports[0].affinity_timeout, Some(10800));
        assert_eq!(ports[0].protocol, "udp");
        assert_eq!(ports[0].port_name, "80");
        assert!(ports[0].endpoints.is_empty());
    }
}
