//! `defrag`, `alarm list|disarm` and `move-leader`.

use anyhow::{bail, Result};
use cairn_client::proto::{AlarmResponse, AlarmType};
use cairn_client::AlarmAction;
use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use crate::endpoint::{endpoints, single};
use crate::output::{self, Format, Printer};
use crate::Global;

#[derive(Args, Debug)]
pub struct DefragArgs {
    /// Use all endpoints from the cluster member list
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    pub cluster: bool,
}

#[derive(Args, Debug)]
pub struct MoveLeaderArgs {
    /// The member ID (in hex) to transfer leadership to
    pub transferee: String,
}

#[derive(Subcommand, Debug)]
pub enum AlarmCommand {
    /// Lists all alarms
    List,
    /// Disarms all alarms
    Disarm,
}

pub async fn defrag(g: &Global, a: DefragArgs) -> Result<i32> {
    let mut failed = false;
    for ep in endpoints(g, a.cluster).await? {
        let r = match single(g, &ep).await {
            Ok(c) => c
                .defragment()
                .await
                .map(|_| ())
                .map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => println!("Finished defragmenting etcd member[{ep}]"),
            Err(e) => {
                eprintln!("Failed to defragment etcd member[{ep}] ({e})");
                failed = true;
            }
        }
    }
    if failed {
        bail!("defragment failed on at least one member");
    }
    Ok(0)
}

fn alarm_name(a: i32) -> &'static str {
    match AlarmType::try_from(a) {
        Ok(AlarmType::Nospace) => "NOSPACE",
        Ok(AlarmType::Corrupt) => "CORRUPT",
        _ => "NONE",
    }
}

fn print_alarms(p: &Printer, r: &AlarmResponse) {
    if p.format == Format::Json {
        let mut m = Map::new();
        output::put(&mut m, "header", output::header(r.header.as_ref()));
        let alarms: Vec<Value> = r
            .alarms
            .iter()
            .map(|a| json!({"memberID": a.member_id, "alarm": a.alarm}))
            .collect();
        output::put(&mut m, "alarms", Value::Array(alarms));
        p.json(&Value::Object(m));
        return;
    }
    for a in &r.alarms {
        println!("memberID:{} alarm:{} ", a.member_id, alarm_name(a.alarm));
    }
}

pub async fn alarm(g: &Global, c: AlarmCommand) -> Result<i32> {
    let p = g.printer();
    p.no_table()?;
    let client = g.connect().await?;
    let listed = client.alarm(AlarmAction::Get, 0, AlarmType::None).await?;
    match c {
        AlarmCommand::List => print_alarms(&p, &listed),
        AlarmCommand::Disarm => {
            let mut last = listed.clone();
            for a in &listed.alarms {
                let kind = AlarmType::try_from(a.alarm).unwrap_or(AlarmType::None);
                last = client
                    .alarm(AlarmAction::Deactivate, a.member_id, kind)
                    .await?;
            }
            last.alarms = listed.alarms;
            print_alarms(&p, &last);
        }
    }
    Ok(0)
}

/// Finds the leader among the given endpoints and asks it to hand leadership over.
pub async fn move_leader(g: &Global, a: MoveLeaderArgs) -> Result<i32> {
    let target = u64::from_str_radix(&a.transferee, 16).map_err(|_| {
        anyhow::anyhow!(
            "bad transferee ID arg ({}), expecting ID in Hex",
            a.transferee
        )
    })?;
    let mut leader = None;
    for ep in &g.endpoints {
        let Ok(c) = single(g, ep).await else { continue };
        if let Ok(s) = c.status().await {
            let id = s.header.as_ref().map(|h| h.member_id).unwrap_or(0);
            if s.leader == id {
                leader = Some((c, id));
                break;
            }
        }
    }
    let Some((client, from)) = leader else {
        bail!("no leader endpoint given at {:?}", g.endpoints);
    };
    client.move_leader(target).await?;
    println!("Leadership transferred from {from:x} to {target:x}");
    Ok(0)
}
