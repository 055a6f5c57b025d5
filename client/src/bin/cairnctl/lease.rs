//! `lease grant|revoke|timetolive|list|keep-alive`, printed as etcdctl prints them (ids in hex).

use anyhow::{anyhow, Result};
use cairn_client::Error;
use clap::Subcommand;
use serde_json::{json, Map, Value};

use crate::kv::parse_lease;
use crate::output::{self, Format};
use crate::Global;

#[derive(Subcommand, Debug)]
pub enum LeaseCommand {
    /// Creates leases
    Grant {
        /// TTL in seconds
        ttl: i64,
    },
    /// Revokes leases
    Revoke {
        /// Lease ID in hex
        id: String,
    },
    /// Get lease information
    Timetolive {
        /// Lease ID in hex
        id: String,
        /// Get keys attached to this lease
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
        keys: bool,
    },
    /// List all active leases
    List,
    /// Keeps leases alive (renew)
    KeepAlive {
        /// Lease ID in hex
        id: String,
        /// Resets the keep-alive time to its original value and exits immediately
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
        once: bool,
    },
}

fn flat(h: Option<&cairn_client::proto::ResponseHeader>) -> Map<String, Value> {
    output::header_fields(h)
}

pub async fn run(g: &Global, c: LeaseCommand) -> Result<i32> {
    let p = g.printer();
    p.no_table()?;
    let json = p.format == Format::Json;
    let client = g.connect().await?;
    match c {
        LeaseCommand::Grant { ttl } => {
            let r = client
                .lease_grant(ttl, 0)
                .await
                .map_err(|e| anyhow!("failed to grant lease ({e})"))?;
            if json {
                let mut m = flat(r.header.as_ref());
                m.insert("ID".into(), json!(r.id));
                m.insert("TTL".into(), json!(r.ttl));
                m.insert("Error".into(), json!(r.error));
                p.json(&Value::Object(m));
            } else {
                println!("lease {:016x} granted with TTL({}s)", r.id, r.ttl);
            }
        }
        LeaseCommand::Revoke { id } => {
            let id = parse_lease(&id)?;
            let r = client
                .lease_revoke(id)
                .await
                .map_err(|e| anyhow!("failed to revoke lease ({e})"))?;
            if json {
                p.json(&json!({"header": output::header(r.header.as_ref())}));
            } else {
                println!("lease {id:016x} revoked");
            }
        }
        LeaseCommand::Timetolive { id, keys } => {
            let id = parse_lease(&id)?;
            let r = client.lease_time_to_live(id, keys).await?;
            if json {
                let mut m = flat(r.header.as_ref());
                m.insert("id".into(), json!(r.id));
                m.insert("ttl".into(), json!(r.ttl));
                m.insert("granted-ttl".into(), json!(r.granted_ttl));
                let ks: Value = if r.keys.is_empty() {
                    Value::Null
                } else {
                    Value::Array(r.keys.iter().map(|k| json!(output::base64(k))).collect())
                };
                m.insert("keys".into(), ks);
                p.json(&Value::Object(m));
            } else if r.ttl == -1 {
                println!("lease {id:016x} already expired");
            } else {
                let mut line = format!(
                    "lease {id:016x} granted with TTL({}s), remaining({}s)",
                    r.granted_ttl, r.ttl
                );
                if keys {
                    let names: Vec<String> = r.keys.iter().map(|k| p.bytes(k)).collect();
                    line.push_str(&format!(", attached keys([{}])", names.join(" ")));
                }
                println!("{line}");
            }
        }
        LeaseCommand::List => {
            let r = client
                .leases()
                .await
                .map_err(|e| anyhow!("failed to list leases ({e})"))?;
            if json {
                let mut m = flat(r.header.as_ref());
                let ls: Vec<Value> = r.leases.iter().map(|l| json!({"id": l.id})).collect();
                m.insert("leases".into(), Value::Array(ls));
                p.json(&Value::Object(m));
            } else {
                println!("found {} leases", r.leases.len());
                for l in &r.leases {
                    println!("{:016x}", l.id);
                }
            }
        }
        LeaseCommand::KeepAlive { id, once } => {
            let id = parse_lease(&id)?;
            let print = |r: &cairn_client::proto::LeaseKeepAliveResponse| {
                if json {
                    let mut m = flat(r.header.as_ref());
                    m.insert("ID".into(), json!(r.id));
                    m.insert("TTL".into(), json!(r.ttl));
                    p.json(&Value::Object(m));
                } else {
                    println!("lease {:016x} keepalived with TTL({})", r.id, r.ttl);
                }
            };
            if once {
                let r = client.lease_keep_alive_once(id).await?;
                print(&r);
                return Ok(0);
            }
            // Renew at TTL/3 and print each renewal until the lease is gone or we are interrupted.
            loop {
                let r = match client.lease_keep_alive_once(id).await {
                    Ok(r) => r,
                    Err(Error::LeaseNotFound) => {
                        println!("lease {id:016x} expired or revoked.");
                        return Ok(0);
                    }
                    Err(e) => return Err(e.into()),
                };
                print(&r);
                let pause = std::time::Duration::from_millis((r.ttl as u64 * 1000 / 3).max(100));
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = tokio::signal::ctrl_c() => return Ok(0),
                }
            }
        }
    }
    Ok(0)
}
