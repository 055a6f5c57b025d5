//! Runs a Cairn member inside this program, writes and reads a key through the etcd API, and stops.
//!
//! `cargo run -p cairn-server --example embedded`

use cairn_proto::etcdserverpb::kv_client::KvClient;
use cairn_proto::etcdserverpb::{PutRequest, RangeRequest};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("cairn-embedded-{}", std::process::id()));
    let node = cairn_server::Node::start(cairn_server::Config::ephemeral(&dir)).await?;
    println!(
        "member {:x} serving the etcd API at {}",
        node.member_id(),
        node.client_url()
    );

    let mut kv = KvClient::connect(node.client_url()).await?;
    kv.put(PutRequest {
        key: b"hello".to_vec(),
        value: b"world".to_vec(),
        ..Default::default()
    })
    .await?;
    let got = kv
        .range(RangeRequest {
            key: b"hello".to_vec(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let kv0 = &got.kvs[0];
    println!(
        "hello = {} (revision {})",
        String::from_utf8_lossy(&kv0.value),
        kv0.mod_revision
    );

    node.shutdown().await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
