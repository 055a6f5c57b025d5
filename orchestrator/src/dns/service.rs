//! The Service in front of the cluster DNS server, as kubeadm makes it for CoreDNS:
//! kube-system/kube-dns (label `k8s-app=kube-dns`) on the tenth address of the service range, with
//! ports 53/UDP `dns` and 53/TCP `dns-tcp`. The server is not a pod here, so the Service has no
//! selector and its EndpointSlice, written here, names the address the server listens on.

use std::net::{Ipv4Addr, SocketAddrV4};

use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

pub const NAMESPACE: &str = "kube-system";
pub const NAME: &str = "kube-dns";
const MANAGER: &str = "cairn-orchestrator";

/// Creates (or brings up to date) kube-system/kube-dns at `cluster_ip` and its EndpointSlice
/// pointing at `server`.
pub async fn publish(
    client: kube::Client,
    cluster_ip: Ipv4Addr,
    server: SocketAddrV4,
) -> Result<(), kube::Error> {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))
        .expect("a valid Namespace");
    create_or_merge(&Api::<Namespace>::all(client.clone()), NAMESPACE, &ns).await?;
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": NAME, "namespace": NAMESPACE,
            "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}},
        "spec": {
            "clusterIP": cluster_ip.to_string(),
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": server.port()},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": server.port()}
            ]
        }
    }))
    .expect("a valid Service");
    create_or_merge(&Api::namespaced(client.clone(), NAMESPACE), NAME, &svc).await?;
    let slice_name = format!("{NAME}-server");
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": slice_name, "namespace": NAMESPACE,
            "labels": {"kubernetes.io/service-name": NAME,
                "endpointslice.kubernetes.io/managed-by": MANAGER}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [server.ip().to_string()],
            "conditions": {"ready": true, "serving": true, "terminating": false}}],
        "ports": [
            {"name": "dns", "port": server.port(), "protocol": "UDP"},
            {"name": "dns-tcp", "port": server.port(), "protocol": "TCP"}
        ]
    }))
    .expect("a valid EndpointSlice");
    create_or_merge(&Api::namespaced(client, NAMESPACE), &slice_name, &slice).await
}

async fn create_or_merge<K>(api: &Api<K>, name: &str, obj: &K) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            // Left from an earlier run: the server may listen elsewhere now.
            let mut body = serde_json::to_value(obj).expect("serializable");
            if let Some(m) = body.as_object_mut() {
                m.remove("metadata");
            }
            api.patch(name, &PatchParams::default(), &Patch::Merge(&body))
                .await
                .map(|_| ())
        }
        Err(e) => Err(e),
    }
}
