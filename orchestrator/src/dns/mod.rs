//! Cluster DNS (CoreDNS's role with its kubernetes and forward plugins): answers names in the
//! cluster domain from watches of Services and EndpointSlices (see [`zone`] for which names), and
//! forwards every other name to upstream servers (by default the host's `/etc/resolv.conf`
//! nameservers), over UDP and TCP. An API client only: it never imports `registry`, `apiserver` or
//! `agent`; from `proxy` it borrows only the grouping of slices by Service.
//!
//! Answers carry a TTL of 5 s, the kubernetes plugin's default (kubeadm's Corefile raises it to
//! 30 s): short enough that a changed ClusterIP or endpoint set is seen within seconds. Unknown
//! names in the domain are NXDOMAIN with the zone's SOA in the authority section (its minimum is
//! the same 5 s, so negative answers are cached no longer). Until both watches have listed, names
//! in the domain get SERVFAIL rather than a wrong NXDOMAIN.
//!
//! The server is hickory-server's (`ServerFuture` with our `RequestHandler`): it owns the UDP and
//! TCP framing, and answers are built with hickory-proto's record types.

pub mod service;
pub mod zone;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_server::authority::MessageResponseBuilder;
use hickory_server::proto::op::{Edns, Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_server::proto::rr::rdata::{A, CNAME, SOA, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::proto::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::ServerFuture;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use zone::{Data, Lookup, Zone};

/// CoreDNS's kubernetes plugin default TTL.
pub const DEFAULT_TTL: u32 = 5;
/// How long an upstream has to answer before the next one is tried.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an idle TCP client connection is kept.
const TCP_IDLE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// The DNS server's settings (CoreDNS's Corefile, reduced to what a cluster needs).
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// UDP and TCP, same port (port 0: one the kernel picks, free for both).
    pub listen: SocketAddr,
    /// `cluster.local`
    pub cluster_domain: String,
    /// Where other names go; empty: nowhere (SERVFAIL).
    pub upstreams: Vec<SocketAddr>,
    pub ttl: u32,
}

impl DnsConfig {
    pub fn new(listen: SocketAddr) -> DnsConfig {
        DnsConfig {
            listen,
            cluster_domain: "cluster.local".into(),
            upstreams: Vec::new(),
            ttl: DEFAULT_TTL,
        }
    }
}

/// The nameservers of a resolv.conf, on port 53.
pub fn upstreams_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver"))
                .then(|| w.next())
                .flatten()
                .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .collect()
}

/// The cluster DNS Service's address: the tenth of the service range, as kubeadm picks
/// (10.96.0.10 for 10.96.0.0/12 or /16). Pods' resolv.conf points here (the agent's
/// `--cluster-dns`).
pub fn cluster_dns_ip(service_cidr: &str) -> Result<Ipv4Addr, DnsError> {
    let bad = || DnsError::Config(format!("{service_cidr:?} is not an IPv4 CIDR"));
    let (ip, len) = service_cidr.split_once('/').ok_or_else(bad)?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
    let len: u32 = len.parse().map_err(|_| bad())?;
    if len > 28 {
        return Err(DnsError::Config(format!(
            "{service_cidr:?} is too small to hold the DNS Service's tenth address"
        )));
    }
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Ok(Ipv4Addr::from((u32::from(ip) & mask) + 10))
}

/// A running DNS server.
pub struct DnsServer {
    /// Where it answers (UDP and TCP).
    pub addr: SocketAddr,
    zone: Arc<RwLock<Option<Arc<Zone>>>>,
    server: ServerFuture<Handler>,
    _watches: Vec<AbortOnDrop>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl DnsServer {
    /// Binds the sockets and starts the watches; answers in the domain once they have listed.
    pub async fn start(client: kube::Client, config: DnsConfig) -> Result<DnsServer, DnsError> {
        if config.cluster_domain.trim_matches('.').is_empty() {
            return Err(DnsError::Config("the cluster domain is empty".into()));
        }
        let (udp, tcp) = bind(config.listen).await?;
        let addr = udp.local_addr().map_err(|source| DnsError::Listen {
            addr: config.listen,
            source,
        })?;
        let zone: Arc<RwLock<Option<Arc<Zone>>>> = Arc::new(RwLock::new(None));
        let notify = Arc::new(Notify::new());
        let (services, t1) =
            crate::client::reflect(Api::<Service>::all(client.clone()), Some(notify.clone()));
        let (slices, t2) =
            crate::client::reflect(Api::<EndpointSlice>::all(client), Some(notify.clone()));
        let t3 = tokio::spawn(rebuild(
            config.cluster_domain.clone(),
            services,
            slices,
            notify,
            zone.clone(),
        ));
        // A resolv.conf that names this very server would send every outside name in a circle.
        let upstreams: Vec<SocketAddr> = config
            .upstreams
            .iter()
            .copied()
            .filter(|u| *u != addr)
            .collect();
        let handler = Handler {
            zone: zone.clone(),
            domain: zone::fqdn(&config.cluster_domain).to_ascii_lowercase(),
            ttl: config.ttl,
            upstreams,
        };
        let mut server = ServerFuture::new(handler);
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE);
        tracing::info!(%addr, domain = %config.cluster_domain, upstreams = ?config.upstreams, "cluster DNS listening");
        Ok(DnsServer {
            addr,
            zone,
            server,
            _watches: vec![AbortOnDrop(t1), AbortOnDrop(t2), AbortOnDrop(t3)],
        })
    }

    /// How many names the current snapshot holds (None before the first).
    pub fn names(&self) -> Option<usize> {
        self.zone
            .read()
            .expect("not poisoned")
            .as_ref()
            .map(|z| z.len())
    }

    /// Stops answering and closes the sockets. Requests still in flight get a moment to finish;
    /// after that they are dropped with the server.
    pub async fn shutdown(mut self) {
        let graceful = self.server.shutdown_gracefully();
        if tokio::time::timeout(Duration::from_secs(2), graceful)
            .await
            .is_err()
        {
            tracing::debug!("DNS requests still in flight at shutdown; dropped");
        }
    }
}

/// Runs a DNS server until `stop` resolves.
pub async fn run(
    client: kube::Client,
    config: DnsConfig,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), DnsError> {
    let server = DnsServer::start(client, config).await?;
    stop.await;
    server.shutdown().await;
    Ok(())
}

/// UDP and TCP sockets on one port; with port 0 the UDP port is picked first and TCP takes the
/// same (retried a few times in the rare case that port is taken for TCP).
async fn bind(
    listen: SocketAddr,
) -> Result<(tokio::net::UdpSocket, tokio::net::TcpListener), DnsError> {
    let err = |source| DnsError::Listen {
        addr: listen,
        source,
    };
    for _ in 0..10 {
        let udp = tokio::net::UdpSocket::bind(listen).await.map_err(err)?;
        let addr = udp.local_addr().map_err(err)?;
        match tokio::net::TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if listen.port() != 0 => return Err(err(e)),
            Err(_) => continue,
        }
    }
    Err(err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no port free for both UDP and TCP",
    )))
}

/// Keeps the zone snapshot current: one rebuild per burst of changes.
async fn rebuild(
    domain: String,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    notify: Arc<Notify>,
    zone: Arc<RwLock<Option<Arc<Zone>>>>,
) {
    let _ = services.wait_until_ready().await;
    let _ = slices.wait_until_ready().await;
    loop {
        let svcs = services.state();
        let sls = slices.state();
        let z = Zone::build(
            &domain,
            svcs.iter().map(|s| s.as_ref()),
            sls.iter().map(|s| s.as_ref()),
        );
        tracing::debug!(names = z.len(), "cluster DNS zone rebuilt");
        *zone.write().expect("not poisoned") = Some(Arc::new(z));
        notify.notified().await;
    }
}

struct Handler {
    zone: Arc<RwLock<Option<Arc<Zone>>>>,
    domain: String,
    ttl: u32,
    upstreams: Vec<SocketAddr>,
}

/// What a query gets.
struct Answer {
    code: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authority: Vec<Record>,
    additionals: Vec<Record>,
}

impl Answer {
    fn code(code: ResponseCode) -> Answer {
        Answer {
            code,
            authoritative: false,
            answers: vec![],
            authority: vec![],
            additionals: vec![],
        }
    }
}

fn name(s: &str) -> Option<Name> {
    Name::from_ascii(s).ok()
}

impl Handler {
    fn soa(&self) -> Option<Record> {
        let d = &self.domain;
        let soa = SOA::new(
            name(&format!("ns.dns.{d}"))?,
            name(&format!("hostmaster.{d}"))?,
            // The serial only has to change with the zone; CoreDNS uses a timestamp too.
            (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
                % u64::from(u32::MAX)) as u32,
            7200,
            1800,
            86400,
            self.ttl,
        );
        Some(Record::from_rdata(name(d)?, self.ttl, RData::SOA(soa)))
    }

    /// The answer from the zone, or None when the name is not ours.
    fn local(&self, qname: &Name, qtype: RecordType) -> Option<Answer> {
        let snapshot = self.zone.read().expect("not poisoned").clone();
        let key = qname.to_ascii().to_ascii_lowercase();
        let Some(zone) = snapshot else {
            let d = self.domain.as_str();
            let k = zone::fqdn(&key);
            let ours = k == d || k.ends_with(&format!(".{d}"));
            return ours.then(|| Answer::code(ResponseCode::ServFail));
        };
        let mut a = Answer::code(ResponseCode::NoError);
        a.authoritative = true;
        let rec = |d: &Data| -> Option<Record> {
            let rdata = match d {
                Data::A(ip) => RData::A(A(*ip)),
                Data::Cname(t) => RData::CNAME(CNAME(name(t)?)),
                Data::Srv {
                    priority,
                    weight,
                    port,
                    target,
                } => RData::SRV(SRV::new(*priority, *weight, *port, name(target)?)),
            };
            Some(Record::from_rdata(qname.clone(), self.ttl, rdata))
        };
        match zone.lookup(&key) {
            Lookup::Outside => return None,
            Lookup::NxDomain => a.code = ResponseCode::NXDomain,
            Lookup::Apex => {
                if matches!(qtype, RecordType::SOA | RecordType::ANY) {
                    a.answers.extend(self.soa());
                }
            }
            Lookup::Pod(ip) => {
                if matches!(qtype, RecordType::A | RecordType::ANY) {
                    a.answers.extend(rec(&Data::A(ip)));
                }
            }
            Lookup::Found(data) => {
                let cname = data.iter().find(|d| matches!(d, Data::Cname(_)));
                for d in data {
                    let wanted = matches!(
                        (d, qtype),
                        (_, RecordType::ANY)
                            | (Data::A(_), RecordType::A)
                            | (Data::Srv { .. }, RecordType::SRV)
                            | (Data::Cname(_), _)
                    );
                    if wanted && (cname.is_none() || matches!(d, Data::Cname(_))) {
                        a.answers.extend(rec(d));
                    }
                    // SRV targets' addresses ride along, as CoreDNS adds them.
                    if let (Data::Srv { target, .. }, RecordType::SRV) = (d, qtype) {
                        if let (Lookup::Found(t), Some(tn)) = (zone.lookup(target), name(target)) {
                            for td in t {
                                if let Data::A(ip) = td {
                                    a.additionals.push(Record::from_rdata(
                                        tn.clone(),
                                        self.ttl,
                                        RData::A(A(*ip)),
                                    ));
                                }
                            }
                        }
                    }
                }
            }
        }
        if a.answers.is_empty() {
            a.authority.extend(self.soa());
        }
        Some(a)
    }

    /// Asks the upstreams in order; the first answer wins.
    async fn forward(&self, query: &Query, protocol: Protocol, rd: bool) -> Answer {
        let mut m = Message::new();
        m.set_id(fastrand::u16(..))
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(rd)
            .add_query(query.clone());
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        m.set_edns(edns);
        let Ok(bytes) = m.to_vec() else {
            return Answer::code(ResponseCode::ServFail);
        };
        for up in &self.upstreams {
            let got = tokio::time::timeout(UPSTREAM_TIMEOUT, async {
                let reply = if protocol == Protocol::Tcp {
                    exchange_tcp(*up, &bytes).await?
                } else {
                    let r = exchange_udp(*up, &bytes).await?;
                    match Message::from_vec(&r) {
                        // Too big for UDP upstream: ask again over TCP, as a stub resolver would.
                        Ok(msg) if msg.truncated() => exchange_tcp(*up, &bytes).await?,
                        _ => r,
                    }
                };
                Message::from_vec(&reply)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
            })
            .await;
            match got {
                Ok(Ok(mut msg)) if msg.id() == m.id() => {
                    return Answer {
                        code: msg.response_code(),
                        authoritative: msg.authoritative(),
                        answers: msg.take_answers(),
                        authority: msg.take_name_servers(),
                        additionals: msg.take_additionals(),
                    };
                }
                Ok(Ok(_)) => tracing::debug!(upstream = %up, "answer with a foreign id"),
                Ok(Err(e)) => tracing::debug!(upstream = %up, error = %e, "upstream failed"),
                Err(_) => tracing::debug!(upstream = %up, "upstream timed out"),
            }
        }
        Answer::code(ResponseCode::ServFail)
    }
}

async fn exchange_udp(up: SocketAddr, q: &[u8]) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = match up {
        SocketAddr::V4(a) if a.ip().is_loopback() => "127.0.0.1:0".parse().expect("valid"),
        SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("valid"),
        SocketAddr::V6(_) => "[::]:0".parse().expect("valid"),
    };
    let sock = tokio::net::UdpSocket::bind(local).await?;
    sock.connect(up).await?;
    sock.send(q).await?;
    let mut buf = vec![0u8; 65535];
    let n = sock.recv(&mut buf).await?;
    buf.truncate(n);
    Ok(buf)
}

async fn exchange_tcp(up: SocketAddr, q: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = tokio::net::TcpStream::connect(up).await?;
    let len = u16::try_from(q.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "query too long"))?;
    let mut framed = Vec::with_capacity(q.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(q);
    s.write_all(&framed).await?;
    let n = s.read_u16().await?;
    let mut buf = vec![0u8; usize::from(n)];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let mut header = Header::response_from_request(request.header());
        header.set_recursion_available(true);
        let fail = |mut header: Header, code| {
            header.set_response_code(code);
            ResponseInfo::from(header)
        };
        if request.message_type() != MessageType::Query || request.op_code() != OpCode::Query {
            let msg = builder.error_msg(request.header(), ResponseCode::NotImp);
            return response
                .send_response(msg)
                .await
                .unwrap_or_else(|_| fail(header, ResponseCode::ServFail));
        }
        let info = match request.request_info() {
            Ok(i) => i,
            Err(_) => {
                let msg = builder.error_msg(request.header(), ResponseCode::FormErr);
                return response
                    .send_response(msg)
                    .await
                    .unwrap_or_else(|_| fail(header, ResponseCode::ServFail));
            }
        };
        let query = info.query.original().clone();
        let qname = query.name().clone();
        let answer = match self.local(&qname, query.query_type()) {
            Some(a) => a,
            None if self.upstreams.is_empty() => Answer::code(ResponseCode::ServFail),
            None => {
                self.forward(&query, request.protocol(), request.recursion_desired())
                    .await
            }
        };
        header.set_response_code(answer.code);
        header.set_authoritative(answer.authoritative);
        let mut builder = builder;
        if request.edns().is_some() {
            let mut e = Edns::new();
            e.set_max_payload(1232);
            builder.edns(e);
        }
        let msg = builder.build(
            header,
            answer.answers.iter(),
            answer.authority.iter(),
            std::iter::empty(),
            answer.additionals.iter(),
        );
        match response.send_response(msg).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "cannot send a DNS answer");
                fail(header, ResponseCode::ServFail)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dns_service_takes_the_tenth_address() {
        assert_eq!(
            cluster_dns_ip("10.96.0.0/16").unwrap(),
            Ipv4Addr::new(10, 96, 0, 10)
        );
        assert_eq!(
            cluster_dns_ip("10.96.0.0/12").unwrap(),
            Ipv4Addr::new(10, 96, 0, 10)
        );
        assert!(cluster_dns_ip("10.96.0.0/30").is_err());
        assert!(cluster_dns_ip("nonsense").is_err());
    }

    #[test]
    fn upstreams_come_from_nameserver_lines() {
        let text =
            "# comment\nsearch example.org\nnameserver 10.0.0.2\nnameserver ::1\noptions ndots:5\n";
        assert_eq!(
            upstreams_from_resolv_conf(text),
            vec![
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse::<SocketAddr>().unwrap()
            ]
        );
    }
}
