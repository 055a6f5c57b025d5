//! `endpoint health|status|hashkv`, per endpoint (each gets its own single-endpoint client, so the answer is
//! that member's), with `--cluster` taking the endpoints from the member list.

use std::time::Instant;

use anyhow::{bail, Result};
use cairn_client::Client;
use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use crate::output::{self, Format};
use crate::{connect_endpoints, Global};

#[derive(Args, Debug, Clone, Copy)]
pub struct ClusterFlag {
    /// Use all endpoints from the cluster member list
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    pub cluster: bool,
}

#[derive(Subcommand, Debug)]
pub enum EndpointCommand {
    /// Checks the healthiness of endpoints specified in `--endpoints` flag
    Health(ClusterFlag),
    /// Prints out the status of endpoints specified in `--endpoints` flag
    Status(ClusterFlag),
    /// Prints the KV history hash for each endpoint in --endpoints
    Hashkv {
        #[command(flatten)]
        cluster: ClusterFlag,
        /// Maximum revision to hash (default: all revisions)
        #[arg(long, default_value_t = 0)]
        rev: i64,
    },
}

/// The endpoints to visit: as given, or every member's client URLs.
pub async fn endpoints(g: &Global, cluster: bool) -> Result<Vec<String>> {
    if !cluster {
        return Ok(g.endpoints.clone());
    }
    let client = g.connect().await?;
    let members = client.member_list().await?;
    let mut out: Vec<String> = Vec::new();
    for m in &members.members {
        for u in &m.client_ur_ls {
            if !out.contains(u) {
                out.push(u.clone());
            }
        }
    }
    Ok(out)
}

/// A client bound to one endpoint.
pub async fn single(g: &Global, ep: &str) -> Result<Client> {
    connect_endpoints(&[ep.to_string()], g.options()?).await
}

struct Health {
    ep: String,
    ok: bool,
    took: std::time::Duration,
    error: String,
}

async fn health(g: &Global, ep: String) -> Health {
    let start = Instant::now();
    let result = match single(g, &ep).await {
        Ok(c) => c
            .get("health", None)
            .await
            .map(|_| ())
            .map_err(anyhow::Error::from),
        Err(e) => Err(e),
    };
    let (ok, error) = match result {
        Ok(()) => (true, String::new()),
        // Permission denied still proves the member commits proposals.
        Err(e)
            if e.downcast_ref::<cairn_client::Error>()
                .map(|c| c.code() == tonic::Code::PermissionDenied)
                .unwrap_or(false) =>
        {
            (true, String::new())
        }
        Err(e) => (false, e.to_string()),
    };
    Health {
        ep,
        ok,
        took: start.elapsed(),
        error,
    }
}

pub async fn run(g: &Global, c: EndpointCommand) -> Result<i32> {
    let p = g.printer();
    match c {
        EndpointCommand::Health(f) => {
            let eps = endpoints(g, f.cluster).await?;
            let list = futures::future::join_all(eps.into_iter().map(|ep| health(g, ep))).await;
            match p.format {
                Format::Simple => {
                    for h in &list {
                        if h.ok {
                            println!(
                                "{} is healthy: successfully committed proposal: took = {}",
                                h.ep,
                                output::go_duration(h.took)
                            );
                        } else {
                            eprintln!(
                                "{} is unhealthy: failed to commit proposal: {}",
                                h.ep, h.error
                            );
                        }
                    }
                }
                Format::Json => {
                    let v: Vec<Value> = list
                        .iter()
                        .map(|h| {
                            let mut m = Map::new();
                            m.insert("endpoint".into(), json!(h.ep));
                            m.insert("health".into(), json!(h.ok));
                            m.insert("took".into(), json!(output::go_duration(h.took)));
                            output::put(&mut m, "error", json!(h.error));
                            Value::Object(m)
                        })
                        .collect();
                    p.json(&Value::Array(v));
                }
                Format::Table => {
                    let rows: Vec<Vec<String>> = list
                        .iter()
                        .map(|h| {
                            vec![
                                h.ep.clone(),
                                h.ok.to_string(),
                                output::go_duration(h.took),
                                h.error.clone(),
                            ]
                        })
                        .collect();
                    print!(
                        "{}",
                        output::table(&["ENDPOINT", "HEALTH", "TOOK", "ERROR"], &rows)
                    );
                }
            }
            if list.iter().any(|h| !h.ok) {
                bail!("unhealthy cluster");
            }
        }
        EndpointCommand::Status(f) => {
            let eps = endpoints(g, f.cluster).await?;
            let mut rows = Vec::new();
            let mut failed = None;
            for ep in eps {
                let r = match single(g, &ep).await {
                    Ok(c) => c.status().await.map_err(anyhow::Error::from),
                    Err(e) => Err(e),
                };
                match r {
                    Ok(s) => rows.push((ep, s)),
                    Err(e) => {
                        eprintln!("Failed to get the status of endpoint {ep} ({e})");
                        failed = Some(e);
                    }
                }
            }
            match p.format {
                Format::Json => {
                    let v: Vec<Value> = rows
                        .iter()
                        .map(|(ep, s)| {
                            let mut m = Map::new();
                            output::put(&mut m, "header", output::header(s.header.as_ref()));
                            output::put(&mut m, "version", json!(s.version));
                            output::put(&mut m, "dbSize", json!(s.db_size));
                            output::put(&mut m, "leader", json!(s.leader));
                            output::put(&mut m, "raftIndex", json!(s.raft_index));
                            output::put(&mut m, "raftTerm", json!(s.raft_term));
                            output::put(&mut m, "raftAppliedIndex", json!(s.raft_applied_index));
                            output::put(&mut m, "errors", json!(s.errors));
                            output::put(&mut m, "dbSizeInUse", json!(s.db_size_in_use));
                            output::put(&mut m, "isLearner", json!(s.is_learner));
                            json!({"Endpoint": ep, "Status": Value::Object(m)})
                        })
                        .collect();
                    p.json(&Value::Array(v));
                }
                format => {
                    let table: Vec<Vec<String>> = rows
                        .iter()
                        .map(|(ep, s)| {
                            let id = s.header.as_ref().map(|h| h.member_id).unwrap_or(0);
                            vec![
                                ep.clone(),
                                format!("{id:x}"),
                                s.version.clone(),
                                output::human_bytes(s.db_size),
                                (s.leader == id).to_string(),
                                s.is_learner.to_string(),
                                s.raft_term.to_string(),
                                s.raft_index.to_string(),
                                s.raft_applied_index.to_string(),
                                s.errors.join(", "),
                            ]
                        })
                        .collect();
                    if format == Format::Table {
                        print!(
                            "{}",
                            output::table(
                                &[
                                    "ENDPOINT",
                                    "ID",
                                    "VERSION",
                                    "DB SIZE",
                                    "IS LEADER",
                                    "IS LEARNER",
                                    "RAFT TERM",
                                    "RAFT INDEX",
                                    "RAFT APPLIED INDEX",
                                    "ERRORS",
                                ],
                                &table
                            )
                        );
                    } else {
                        for row in table {
                            println!("{}", row.join(", "));
                        }
                    }
                }
            }
            if let Some(e) = failed {
                return Err(e);
            }
        }
        EndpointCommand::Hashkv { cluster, rev } => {
            let eps = endpoints(g, cluster.cluster).await?;
            let mut rows = Vec::new();
            let mut failed = None;
            for ep in eps {
                let r = match single(g, &ep).await {
                    Ok(c) => c.hash_kv(rev).await.map_err(anyhow::Error::from),
                    Err(e) => Err(e),
                };
                match r {
                    Ok(h) => rows.push((ep, h)),
                    Err(e) => {
                        eprintln!("Failed to get the hash of endpoint {ep} ({e})");
                        failed = Some(e);
                    }
                }
            }
            match p.format {
                Format::Json => {
                    let v: Vec<Value> = rows
                        .iter()
                        .map(|(ep, h)| {
                            let mut m = Map::new();
                            output::put(&mut m, "header", output::header(h.header.as_ref()));
                            output::put(&mut m, "hash", json!(h.hash));
                            output::put(&mut m, "compact_revision", json!(h.compact_revision));
                            json!({"Endpoint": ep, "HashKV": Value::Object(m)})
                        })
                        .collect();
                    p.json(&Value::Array(v));
                }
                Format::Table => {
                    let t: Vec<Vec<String>> = rows
                        .iter()
                        .map(|(ep, h)| vec![ep.clone(), h.hash.to_string()])
                        .collect();
                    print!("{}", output::table(&["ENDPOINT", "HASH"], &t));
                }
                Format::Simple => {
                    for (ep, h) in &rows {
                        println!("{ep}, {}", h.hash);
                    }
                }
            }
            if let Some(e) = failed {
                return Err(e);
            }
        }
    }
    Ok(0)
}
