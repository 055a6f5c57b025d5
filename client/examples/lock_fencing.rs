//! A lock with fencing: `cargo run -p cairn-client --example lock_fencing -- 127.0.0.1:2379`.
//!
//! Holding a lock is not enough to write safely: a holder can pause (GC, swap, partition) past its lease and
//! wake up after someone else took the lock. So the protected write is a transaction that also checks the
//! holder's lock key still exists with the fencing revision it was granted — a stale holder's write fails.

use cairn_client::{Client, Compare, Mutex, Result, Session, Txn, TxnOp};

#[tokio::main]
async fn main() -> Result<()> {
    let endpoints: Vec<String> = std::env::args().skip(1).collect();
    let endpoints = if endpoints.is_empty() {
        vec!["127.0.0.1:2379".to_string()]
    } else {
        endpoints
    };
    let client = Client::connect(endpoints, None).await?;
    let session = Session::new(&client, 10).await?;
    let mut lock = Mutex::new(&session, "example/locks/report");
    let fence = lock.lock().await?;
    println!(
        "holding {} with fencing revision {}",
        String::from_utf8_lossy(&fence.key),
        fence.revision
    );

    // The write happens only while our lock key is the one we were granted.
    let write = client
        .txn(
            Txn::new()
                .when([Compare::create_revision(fence.key.clone()).eq(fence.revision)])
                .and_then([TxnOp::put(
                    "example/report",
                    format!("written under fence {}", fence.revision),
                    None,
                )]),
        )
        .await?;
    println!(
        "{}",
        if write.succeeded {
            "write applied"
        } else {
            "lock lost: write refused"
        }
    );

    lock.unlock().await?;
    session.close().await?;
    Ok(())
}
