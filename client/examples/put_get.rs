//! Put and get: `cargo run -p cairn-client --example put_get -- 127.0.0.1:2379`
//! (endpoints as arguments, or `CAIRN_ENDPOINTS=a:2379,b:2379`).

use cairn_client::{Client, GetOptions, PutOptions, Result};

fn endpoints() -> Vec<String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.is_empty() {
        return args;
    }
    std::env::var("CAIRN_ENDPOINTS")
        .unwrap_or_else(|_| "127.0.0.1:2379".into())
        .split(',')
        .map(str::to_string)
        .collect()
}

#[tokio::main]
async fn main() -> Result<()> {
    let client = Client::connect(endpoints(), None).await?;
    client.put("example/greeting", "hello", None).await?;
    let prev = client
        .put(
            "example/greeting",
            "hello again",
            Some(PutOptions::new().with_prev_kv()),
        )
        .await?;
    if let Some(kv) = prev.prev_kv {
        println!("replaced {:?}", String::from_utf8_lossy(&kv.value));
    }
    let resp = client
        .get("example/", Some(GetOptions::new().with_prefix()))
        .await?;
    for kv in &resp.kvs {
        println!(
            "{} = {} (version {}, modified at revision {})",
            String::from_utf8_lossy(&kv.key),
            String::from_utf8_lossy(&kv.value),
            kv.version,
            kv.mod_revision
        );
    }
    Ok(())
}
