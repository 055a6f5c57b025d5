//! A watch that survives the loss of its member, the leader included: start a 3-member cluster, run
//! `cargo run -p cairn-client --example watch_failover -- a:2379 b:2379 c:2379`, write keys under `jobs/`,
//! then kill any member. The stream reopens on another member from the last delivered revision + 1, so every
//! event is printed exactly once, in order.

use cairn_client::proto::EventType;
use cairn_client::{Client, ConnectOptions, Error, WatchOptions};
use futures::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let endpoints: Vec<String> = std::env::args().skip(1).collect();
    let endpoints = if endpoints.is_empty() {
        vec!["127.0.0.1:2379".to_string()]
    } else {
        endpoints
    };
    let client = Client::connect(endpoints, Some(ConnectOptions::new())).await?;
    let mut watch = client
        .watch("jobs/", Some(WatchOptions::new().with_prefix()))
        .await?;
    println!(
        "watching jobs/ from revision {}",
        watch.created_revision() + 1
    );
    while let Some(batch) = watch.next().await {
        let batch = match batch {
            Ok(b) => b,
            // The history this watch needed is gone: re-list, then watch from the compaction point.
            Err(Error::Compacted { compact_revision }) => {
                eprintln!("compacted at {compact_revision}; re-list and watch again");
                break;
            }
            Err(e) => return Err(e),
        };
        for e in &batch.events {
            let kv = e.kv.as_ref().expect("events carry a key-value");
            let kind = if e.r#type == EventType::Delete as i32 {
                "DELETE"
            } else {
                "PUT"
            };
            println!(
                "{kind} {} at revision {} (stream reopened {} times)",
                String::from_utf8_lossy(&kv.key),
                kv.mod_revision,
                watch.resumes()
            );
        }
    }
    Ok(())
}
