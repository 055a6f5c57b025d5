//! `member list|add|remove|update|promote`, printed as etcdctl prints them.

use anyhow::{Context, Result};
use cairn_client::proto::Member;
use clap::Subcommand;
use serde_json::{json, Map, Value};

use crate::output::{self, Format};
use crate::Global;

#[derive(Subcommand, Debug)]
pub enum MemberCommand {
    /// Lists all members in the cluster
    List,
    /// Adds a member into the cluster
    Add {
        /// The new member's name
        name: String,
        /// Comma separated peer URLs for the new member
        #[arg(long, value_delimiter = ',', required = true)]
        peer_urls: Vec<String>,
        /// Indicates if the new member is raft learner
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
        learner: bool,
    },
    /// Removes a member from the cluster
    Remove {
        /// Member ID in hex
        id: String,
    },
    /// Updates a member in the cluster
    Update {
        /// Member ID in hex
        id: String,
        /// Comma separated peer URLs for the updated member
        #[arg(long, value_delimiter = ',', required = true)]
        peer_urls: Vec<String>,
    },
    /// Promotes a non-voting member in the cluster
    Promote {
        /// Member ID in hex
        id: String,
    },
}

fn parse_id(s: &str) -> Result<u64> {
    u64::from_str_radix(s, 16)
        .with_context(|| format!("bad member ID arg ({s}), expecting ID in Hex"))
}

pub fn member_json(m: &Member) -> Value {
    let mut o = Map::new();
    output::put(&mut o, "ID", json!(m.id));
    output::put(&mut o, "name", json!(m.name));
    output::put(&mut o, "peerURLs", json!(m.peer_ur_ls));
    output::put(&mut o, "clientURLs", json!(m.client_ur_ls));
    output::put(&mut o, "isLearner", json!(m.is_learner));
    Value::Object(o)
}

fn status(m: &Member) -> &'static str {
    if m.name.is_empty() {
        "unstarted"
    } else {
        "started"
    }
}

pub async fn run(g: &Global, c: MemberCommand) -> Result<i32> {
    let p = g.printer();
    let client = g.connect().await?;
    match c {
        MemberCommand::List => {
            let r = client.member_list().await?;
            match p.format {
                Format::Json => {
                    let mut m = Map::new();
                    output::put(&mut m, "header", output::header(r.header.as_ref()));
                    m.insert(
                        "members".into(),
                        Value::Array(r.members.iter().map(member_json).collect()),
                    );
                    p.json(&Value::Object(m));
                }
                Format::Simple => {
                    for m in &r.members {
                        println!(
                            "{:x}, {}, {}, {}, {}, {}",
                            m.id,
                            status(m),
                            m.name,
                            m.peer_ur_ls.join(","),
                            m.client_ur_ls.join(","),
                            m.is_learner
                        );
                    }
                }
                Format::Table => {
                    let rows: Vec<Vec<String>> = r
                        .members
                        .iter()
                        .map(|m| {
                            vec![
                                format!("{:x}", m.id),
                                status(m).to_string(),
                                m.name.clone(),
                                m.peer_ur_ls.join(","),
                                m.client_ur_ls.join(","),
                                m.is_learner.to_string(),
                            ]
                        })
                        .collect();
                    print!(
                        "{}",
                        output::table(
                            &[
                                "ID",
                                "STATUS",
                                "NAME",
                                "PEER ADDRS",
                                "CLIENT ADDRS",
                                "IS LEARNER"
                            ],
                            &rows
                        )
                    );
                }
            }
        }
        MemberCommand::Add {
            name,
            peer_urls,
            learner,
        } => {
            p.no_table()?;
            let r = client.member_add(peer_urls.clone(), learner).await?;
            let cluster = r.header.as_ref().map(|h| h.cluster_id).unwrap_or(0);
            let id = r.member.as_ref().map(|m| m.id).unwrap_or(0);
            if p.format == Format::Json {
                let mut m = Map::new();
                output::put(&mut m, "header", output::header(r.header.as_ref()));
                if let Some(member) = &r.member {
                    m.insert("member".into(), member_json(member));
                }
                m.insert(
                    "members".into(),
                    Value::Array(r.members.iter().map(member_json).collect()),
                );
                p.json(&Value::Object(m));
                return Ok(0);
            }
            println!("Member {id:16x} added to cluster {cluster:16x}");
            let mut conf = Vec::new();
            for m in &r.members {
                for u in &m.peer_ur_ls {
                    let n = if m.id == id {
                        name.as_str()
                    } else {
                        m.name.as_str()
                    };
                    conf.push(format!("{n}={u}"));
                }
            }
            println!();
            println!("ETCD_NAME=\"{name}\"");
            println!("ETCD_INITIAL_CLUSTER=\"{}\"", conf.join(","));
            println!(
                "ETCD_INITIAL_ADVERTISE_PEER_URLS=\"{}\"",
                peer_urls.join(",")
            );
            println!("ETCD_INITIAL_CLUSTER_STATE=\"existing\"");
        }
        MemberCommand::Remove { id } => {
            p.no_table()?;
            let id = parse_id(&id)?;
            let r = client.member_remove(id).await?;
            let cluster = r.header.as_ref().map(|h| h.cluster_id).unwrap_or(0);
            println!("Member {id:16x} removed from cluster {cluster:16x}");
        }
        MemberCommand::Update { id, peer_urls } => {
            p.no_table()?;
            let id = parse_id(&id)?;
            let r = client.member_update(id, peer_urls).await?;
            let cluster = r.header.as_ref().map(|h| h.cluster_id).unwrap_or(0);
            println!("Member {id:16x} updated in cluster {cluster:16x}");
        }
        MemberCommand::Promote { id } => {
            p.no_table()?;
            let id = parse_id(&id)?;
            let r = client.member_promote(id).await?;
            let cluster = r.header.as_ref().map(|h| h.cluster_id).unwrap_or(0);
            println!("Member {id:16x} promoted in cluster {cluster:16x}");
        }
    }
    Ok(0)
}
