//! `watch`: prints events as etcdctl does, optionally running a command per event; `-i` reads `watch ...`
//! and `progress` lines from stdin. The stream resumes by itself across member failures.

use std::io::BufRead;

use anyhow::{bail, Result};
use cairn_client::proto::EventType;
use cairn_client::{Client, WatchOptions, WatchResponse, WatchStream};
use clap::{Args, Parser};
use serde_json::{json, Map, Value};

use crate::output::{self, Format, Printer};
use crate::Global;

#[derive(Args, Debug, Clone)]
pub struct WatchArgs {
    /// The key or prefix
    pub key: Option<String>,
    /// The end of the range [key, range_end)
    pub range_end: Option<String>,
    /// Interactive mode
    #[arg(short, long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    pub interactive: bool,
    /// Watch on a prefix if prefix is set
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    pub prefix: bool,
    /// Revision to start watching
    #[arg(long, default_value_t = 0)]
    pub rev: i64,
    /// Get the previous key-value pair before the event happens
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    pub prev_kv: bool,
    /// Get periodic watch progress notification from server
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    pub progress_notify: bool,
    /// Command to run for each event, with ETCD_WATCH_* variables set
    #[arg(last = true)]
    pub exec: Vec<String>,
}

/// An interactive `watch ...` line.
#[derive(Parser, Debug)]
#[command(no_binary_name = true)]
enum Line {
    Watch(WatchArgs),
}

impl WatchArgs {
    fn options(&self) -> Result<WatchOptions> {
        let mut o = WatchOptions::new();
        match (&self.range_end, self.prefix) {
            (Some(_), true) => bail!("unexpected range_end with --prefix"),
            (Some(end), false) => o = o.with_range(end.as_bytes().to_vec()),
            (None, true) => o = o.with_prefix(),
            (None, false) => {}
        }
        if self.rev != 0 {
            o = o.with_start_revision(self.rev);
        }
        if self.prev_kv {
            o = o.with_prev_kv();
        }
        if self.progress_notify {
            o = o.with_progress_notify();
        }
        Ok(o)
    }
}

fn event_name(t: i32) -> &'static str {
    if t == EventType::Delete as i32 {
        "DELETE"
    } else {
        "PUT"
    }
}

fn print_response(p: &Printer, resp: &WatchResponse) {
    if p.format == Format::Json {
        let events: Vec<Value> = resp
            .events
            .iter()
            .map(|e| {
                let mut m = Map::new();
                output::put(&mut m, "type", json!(e.r#type));
                if let Some(kv) = &e.kv {
                    m.insert("kv".into(), output::kv_json(kv));
                }
                if let Some(kv) = &e.prev_kv {
                    m.insert("prev_kv".into(), output::kv_json(kv));
                }
                Value::Object(m)
            })
            .collect();
        p.json(&json!({
            "Header": output::header(resp.header.as_ref()),
            "Events": events,
            "CompactRevision": 0,
            "Canceled": false,
            "Created": false,
        }));
        return;
    }
    if resp.is_progress_notify() {
        println!("progress notify: {}", resp.revision());
    }
    for e in &resp.events {
        println!("{}", event_name(e.r#type));
        if let Some(prev) = &e.prev_kv {
            p.kv(prev, false);
        }
        if let Some(kv) = &e.kv {
            p.kv(kv, false);
        }
    }
}

fn run_exec(cmd: &[String], resp: &WatchResponse) {
    for e in &resp.events {
        let Some(kv) = &e.kv else { continue };
        let status = std::process::Command::new(&cmd[0])
            .args(&cmd[1..])
            .env("ETCD_WATCH_REVISION", resp.revision().to_string())
            .env("ETCD_WATCH_KEY", String::from_utf8_lossy(&kv.key).as_ref())
            .env("ETCD_WATCH_EVENT_TYPE", event_name(e.r#type))
            .env(
                "ETCD_WATCH_VALUE",
                String::from_utf8_lossy(&kv.value).as_ref(),
            )
            .status();
        if let Err(err) = status {
            eprintln!("command {:?} failed: {err}", cmd[0]);
        }
    }
}

async fn pump(p: Printer, mut w: WatchStream, exec: Vec<String>) -> Result<()> {
    while let Some(resp) = w.message().await {
        match resp {
            Ok(resp) => {
                print_response(&p, &resp);
                if !exec.is_empty() {
                    run_exec(&exec, &resp);
                }
            }
            Err(e) => bail!("watch was canceled ({e})"),
        }
    }
    Ok(())
}

async fn start(client: &Client, a: &WatchArgs) -> Result<WatchStream> {
    let Some(key) = &a.key else {
        bail!("watch requires a key or prefix");
    };
    Ok(client.watch(key.clone(), Some(a.options()?)).await?)
}

pub async fn run(g: &Global, a: WatchArgs) -> Result<i32> {
    let p = g.printer();
    p.no_table()?;
    let client = g.connect().await?;
    if !a.interactive {
        let w = start(&client, &a).await?;
        pump(p, w, a.exec.clone()).await?;
        return Ok(0);
    }
    // Interactive: each line starts a watch or asks every open watch for progress.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut progress: Vec<tokio::sync::mpsc::UnboundedSender<()>> = Vec::new();
    while let Some(line) = rx.recv().await {
        let words = crate::txn::argify(&line)?;
        if words.is_empty() {
            continue;
        }
        if words == ["progress"] {
            progress.retain(|t| t.send(()).is_ok());
            continue;
        }
        let Line::Watch(args) = match Line::try_parse_from(&words) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("Invalid command {line:?} ({})", e.kind());
                continue;
            }
        };
        let w = start(&client, &args).await?;
        let (ptx, mut prx) = tokio::sync::mpsc::unbounded_channel();
        progress.push(ptx);
        tokio::spawn(async move {
            let mut w = w;
            loop {
                tokio::select! {
                    m = w.message() => match m {
                        Some(Ok(resp)) => {
                            print_response(&p, &resp);
                            if !args.exec.is_empty() {
                                run_exec(&args.exec, &resp);
                            }
                        }
                        Some(Err(e)) => {
                            eprintln!("watch was canceled ({e})");
                            return;
                        }
                        None => return,
                    },
                    Some(()) = prx.recv() => {
                        let _ = w.request_progress();
                    }
                }
            }
        });
    }
    // Input closed: keep printing until interrupted, as etcdctl does.
    let _ = tokio::signal::ctrl_c().await;
    Ok(0)
}
