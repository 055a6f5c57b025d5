//! The cluster DNS server against a real API server: Services and EndpointSlices are created
//! through it, and queries go over real UDP and TCP sockets on 127.0.0.1 as a stub resolver sends
//! them. Names outside the cluster go to an upstream server the test runs on loopback.

use crate::kube_api;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use cairn_orchestrator::dns::{DnsConfig, DnsServer};
use hickory_server::authority::MessageResponseBuilder;
use hickory_server::proto::op::{Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_server::proto::rr::rdata::A;
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::ServerFuture;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The upstream: every A question under example.test gets 192.0.2.7.
struct Upstream;

#[async_trait::async_trait]
impl RequestHandler for Upstream {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let q = request.request_info().unwrap().query.original().clone();
        let mut header = Header::response_from_request(request.header());
        let mut answers = vec![];
        if q.name().to_ascii().ends_with("example.test.") && q.query_type() == RecordType::A {
            answers.push(Record::from_rdata(
                q.name().clone(),
                60,
                RData::A(A(Ipv4Addr::new(192, 0, 2, 7))),
            ));
        } else {
            header.set_response_code(ResponseCode::NXDomain);
        }
        let msg = MessageResponseBuilder::from_message_request(request).build(
            header,
            answers.iter(),
            [],
            [],
            [],
        );
        response.send_response(msg).await.unwrap()
    }
}

async fn upstream() -> (SocketAddr, ServerFuture<Upstream>) {
    // The kernel picks a free UDP port; the same TCP port may be taken (by any connection's
    // source port), so pick again until both are free.
    let mut tries = 0;
    let (udp, tcp, addr) = loop {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        match tokio::net::TcpListener::bind(addr).await {
            Ok(tcp) => break (udp, tcp, addr),
            Err(e) if tries < 20 => {
                tries += 1;
                eprintln!("TCP port {} taken ({e}); picking another", addr.port());
            }
            Err(e) => panic!("no port free for both UDP and TCP after 20 tries: {e}"),
        }
    };
    let mut s = ServerFuture::new(Upstream);
    s.register_socket(udp);
    s.register_listener(tcp, Duration::from_secs(5));
    (addr, s)
}

/// One question, over UDP or TCP, as a stub resolver asks it.
async fn ask(server: SocketAddr, name: &str, rtype: RecordType, tcp: bool) -> Message {
    let mut m = Message::new();
    m.set_id(fastrand::u16(..))
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    let q = m.to_vec().unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), async {
        if tcp {
            let mut s = tokio::net::TcpStream::connect(server).await.unwrap();
            let mut framed = (q.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&q);
            s.write_all(&framed).await.unwrap();
            let n = s.read_u16().await.unwrap();
            let mut buf = vec![0; n as usize];
            s.read_exact(&mut buf).await.unwrap();
            buf
        } else {
            let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            s.connect(server).await.unwrap();
            s.send(&q).await.unwrap();
            let mut buf = vec![0; 65535];
            let n = s.recv(&mut buf).await.unwrap();
            buf.truncate(n);
            buf
        }
    })
    .await
    .expect("an answer within 5 s");
    let r = Message::from_vec(&reply).unwrap();
    assert_eq!(r.id(), m.id());
    r
}

fn a_records(m: &Message) -> Vec<Ipv4Addr> {
    let mut v: Vec<Ipv4Addr> = m
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

/// Asks until `done` holds for the answer (bounded): the zone follows the API within moments.
async fn until(
    server: SocketAddr,
    name: &str,
    rtype: RecordType,
    what: &str,
    done: impl Fn(&Message) -> bool,
) -> Message {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = ask(server, name, rtype, false).await;
        if done(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "{what}: last answer {m:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_answers_services_endpoints_and_forwards_the_rest() {
    let cluster = kube_api::Cluster::start().await;
    let client = cluster.kube().await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let web: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
    }))
    .unwrap();
    let web = svcs.create(&PostParams::default(), &web).await.unwrap();
    let web_ip: Ipv4Addr = web.spec.unwrap().cluster_ip.unwrap().parse().unwrap();
    let db: Service = serde_json::from_value(json!({
        "metadata": {"name": "db"},
        "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]}
    }))
    .unwrap();
    svcs.create(&PostParams::default(), &db).await.unwrap();
    let db_slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "db-1", "labels": {"kubernetes.io/service-name": "db"}},
        "addressType": "IPv4",
        "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": ["10.244.0.7"], "hostname": "db-0", "conditions": {"ready": true}},
            {"addresses": ["10.244.0.8"], "conditions": {"ready": true}},
            {"addresses": ["10.244.0.9"], "conditions": {"ready": false}}
        ]
    }))
    .unwrap();
    slices
        .create(&PostParams::default(), &db_slice)
        .await
        .unwrap();
    let ext: Service = serde_json::from_value(json!({
        "metadata": {"name": "ext"},
        "spec": {"type": "ExternalName", "externalName": "www.example.test"}
    }))
    .unwrap();
    svcs.create(&PostParams::default(), &ext).await.unwrap();

    let (up_addr, mut up) = upstream().await;
    let mut cfg = DnsConfig::new("127.0.0.1:0".parse().unwrap());
    cfg.upstreams = vec![up_addr];
    let server = DnsServer::start(client.clone(), cfg).await.unwrap();
    let addr = server.addr;

    // A ClusterIP, over UDP and TCP.
    let web_name = "web.default.svc.cluster.local.";
    let m = until(addr, web_name, RecordType::A, "web's A", |m| {
        a_records(m) == vec![web_ip]
    })
    .await;
    assert!(m.authoritative());
    assert_eq!(m.answers()[0].ttl(), 5);
    let m = ask(addr, web_name, RecordType::A, true).await;
    assert_eq!(a_records(&m), vec![web_ip], "over TCP");

    // Headless: the ready endpoints, each also under its own name.
    let m = ask(addr, "db.default.svc.cluster.local.", RecordType::A, false).await;
    assert_eq!(
        a_records(&m),
        vec![Ipv4Addr::new(10, 244, 0, 7), Ipv4Addr::new(10, 244, 0, 8)]
    );
    let m = ask(
        addr,
        "db-0.db.default.svc.cluster.local.",
        RecordType::A,
        true,
    )
    .await;
    assert_eq!(a_records(&m), vec![Ipv4Addr::new(10, 244, 0, 7)]);

    // SRV for a named port, with the target's address alongside.
    let m = ask(
        addr,
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
        false,
    )
    .await;
    let RData::SRV(srv) = m.answers()[0].data() else {
        panic!("not SRV: {m:?}");
    };
    assert_eq!(srv.port(), 80);
    assert_eq!(srv.target().to_ascii(), web_name);
    assert!(m
        .additionals()
        .iter()
        .any(|r| r.data() == &RData::A(A(web_ip))));
    let m = ask(
        addr,
        "_pg._tcp.db.default.svc.cluster.local.",
        RecordType::SRV,
        true,
    )
    .await;
    assert_eq!(m.answers().len(), 2, "{m:?}");

    // Unknown names in the domain: NXDOMAIN with the zone's SOA.
    let m = ask(
        addr,
        "nope.default.svc.cluster.local.",
        RecordType::A,
        false,
    )
    .await;
    assert_eq!(m.response_code(), ResponseCode::NXDomain);
    assert!(m.answers().is_empty());
    assert_eq!(m.name_servers().len(), 1);
    assert_eq!(m.name_servers()[0].record_type(), RecordType::SOA);
    assert_eq!(m.name_servers()[0].name().to_ascii(), "cluster.local.");
    // A name that exists without the type asked: no error, no data, the SOA.
    let m = ask(addr, web_name, RecordType::AAAA, false).await;
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert!(m.answers().is_empty());
    assert_eq!(m.name_servers()[0].record_type(), RecordType::SOA);

    // ExternalName: a CNAME.
    let m = ask(addr, "ext.default.svc.cluster.local.", RecordType::A, false).await;
    let RData::CNAME(c) = m.answers()[0].data() else {
        panic!("not CNAME: {m:?}");
    };
    assert_eq!(c.0.to_ascii(), "www.example.test.");

    // Pods by address.
    let m = ask(
        addr,
        "10-244-0-7.default.pod.cluster.local.",
        RecordType::A,
        false,
    )
    .await;
    assert_eq!(a_records(&m), vec![Ipv4Addr::new(10, 244, 0, 7)]);

    // Changes through the API show up: a new Service, an endpoint turning ready, a deletion.
    let late: Service = serde_json::from_value(json!({
        "metadata": {"name": "late"},
        "spec": {"ports": [{"port": 8080, "protocol": "TCP"}]}
    }))
    .unwrap();
    let late = svcs.create(&PostParams::default(), &late).await.unwrap();
    let late_ip: Ipv4Addr = late.spec.unwrap().cluster_ip.unwrap().parse().unwrap();
    until(
        addr,
        "late.default.svc.cluster.local.",
        RecordType::A,
        "a new Service",
        |m| a_records(m) == vec![late_ip],
    )
    .await;
    let patch = json!({"endpoints": [
        {"addresses": ["10.244.0.9"], "conditions": {"ready": true}}
    ]});
    slices
        .patch("db-1", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    until(
        addr,
        "db.default.svc.cluster.local.",
        RecordType::A,
        "new endpoints",
        |m| a_records(m) == vec![Ipv4Addr::new(10, 244, 0, 9)],
    )
    .await;
    svcs.delete("web", &DeleteParams::default()).await.unwrap();
    until(addr, web_name, RecordType::A, "a deleted Service", |m| {
        m.response_code() == ResponseCode::NXDomain
    })
    .await;

    // Everything else goes upstream, over the client's transport.
    for tcp in [false, true] {
        let m = ask(addr, "www.example.test.", RecordType::A, tcp).await;
        assert_eq!(
            a_records(&m),
            vec![Ipv4Addr::new(192, 0, 2, 7)],
            "tcp {tcp}"
        );
        assert!(!m.authoritative());
    }
    let m = ask(addr, "nothing.invalid.", RecordType::A, false).await;
    assert_eq!(m.response_code(), ResponseCode::NXDomain);

    // An upstream that is gone: SERVFAIL, not silence.
    up.shutdown_gracefully().await.unwrap();
    let t = Instant::now();
    let m = ask(addr, "www.example.test.", RecordType::A, false).await;
    assert_eq!(m.response_code(), ResponseCode::ServFail);
    assert!(t.elapsed() < Duration::from_secs(4));
    server.shutdown().await;
}
