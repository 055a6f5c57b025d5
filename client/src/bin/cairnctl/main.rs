//! `cairnctl`: etcdctl's everyday commands and flags for Cairn (and etcd). Flags can also come from
//! `CAIRNCTL_<FLAG>` environment variables (`CAIRNCTL_ENDPOINTS=a:2379,b:2379`), as etcdctl reads
//! `ETCDCTL_<FLAG>`. Errors print one `Error: ...` line on stderr and exit non-zero.

mod elect;
mod endpoint;
mod kv;
mod lease;
mod lock;
mod maintenance;
mod member;
mod output;
mod snapshot;
mod txn;
mod watch;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use cairn_client::{Client, ConnectOptions, TlsOptions};
use clap::{Parser, Subcommand};

use output::{Format, Printer};

/// Exit code for a failure to reach the cluster, as etcdctl uses.
const EXIT_BAD_CONNECTION: i32 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "cairnctl",
    version,
    about = "A command line client for Cairn (and etcd), with etcdctl's commands and flags"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Flags every command takes.
#[derive(clap::Args, Debug, Clone)]
pub struct Global {
    /// gRPC endpoints, comma-separated
    #[arg(
        long,
        global = true,
        env = "CAIRNCTL_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,
    /// Output format: simple, json or table
    #[arg(
        short = 'w',
        long = "write-out",
        global = true,
        env = "CAIRNCTL_WRITE_OUT",
        value_enum,
        default_value = "simple"
    )]
    pub write_out: Format,
    /// Print byte strings as hex encoded strings
    #[arg(long, global = true, env = "CAIRNCTL_HEX", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    pub hex: bool,
    /// Dial timeout for client connections (Go duration: 2s, 500ms)
    #[arg(long, global = true, env = "CAIRNCTL_DIAL_TIMEOUT", value_parser = parse_duration, default_value = "2s")]
    pub dial_timeout: Duration,
    /// Timeout for short running commands (excluding dial timeout)
    #[arg(long, global = true, env = "CAIRNCTL_COMMAND_TIMEOUT", value_parser = parse_duration, default_value = "5s")]
    pub command_timeout: Duration,
    /// Keepalive time for client connections
    #[arg(long, global = true, env = "CAIRNCTL_KEEPALIVE_TIME", value_parser = parse_duration, default_value = "2s")]
    pub keepalive_time: Duration,
    /// Keepalive timeout for client connections
    #[arg(long, global = true, env = "CAIRNCTL_KEEPALIVE_TIMEOUT", value_parser = parse_duration, default_value = "6s")]
    pub keepalive_timeout: Duration,
    /// Verify certificates of TLS-enabled secure servers using this CA bundle
    #[arg(
        long = "cacert",
        id = "tls_cacert",
        global = true,
        env = "CAIRNCTL_CACERT"
    )]
    pub cacert: Option<PathBuf>,
    /// Identify secure client using this TLS certificate file
    #[arg(long = "cert", id = "tls_cert", global = true, env = "CAIRNCTL_CERT")]
    pub cert: Option<PathBuf>,
    /// Identify secure client using this TLS key file
    // Own ids: commands have positional `key` arguments of their own.
    #[arg(long = "key", id = "tls_key", global = true, env = "CAIRNCTL_KEY")]
    pub key: Option<PathBuf>,
    /// username[:password] for authentication (prompt if password is not supplied)
    #[arg(long, global = true, env = "CAIRNCTL_USER")]
    pub user: Option<String>,
    /// password for authentication (if this option is used, --user option shouldn't include password)
    #[arg(long, global = true, env = "CAIRNCTL_PASSWORD")]
    pub password: Option<String>,
}

impl Global {
    pub fn printer(&self) -> Printer {
        Printer {
            format: self.write_out,
            hex: self.hex,
        }
    }

    pub fn options(&self) -> Result<ConnectOptions> {
        let options = ConnectOptions::new()
            .with_dial_timeout(self.dial_timeout)
            .with_request_timeout(self.command_timeout)
            .with_keep_alive(self.keepalive_time, self.keepalive_timeout);
        let options = match self.tls()? {
            Some(tls) => options.with_tls(tls),
            None => options,
        };
        Ok(match self.credentials()? {
            Some((name, password)) => options.with_user(name, password),
            None => options,
        })
    }

    /// The user and password of `--user name[:password]` and `--password`, as etcdctl reads them;
    /// without either password, it is read from standard input.
    fn credentials(&self) -> Result<Option<(String, String)>> {
        let Some(user) = &self.user else {
            return Ok(None);
        };
        let (name, password) = match (user.split_once(':'), &self.password) {
            (Some(_), Some(_)) => {
                anyhow::bail!("--user option shouldn't include password when --password is given")
            }
            (Some((name, password)), None) => (name.to_string(), password.to_string()),
            (None, Some(password)) => (user.clone(), password.clone()),
            (None, None) => {
                eprint!("Password: ");
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .context("reading the password")?;
                (
                    user.clone(),
                    line.trim_end_matches(['\r', '\n']).to_string(),
                )
            }
        };
        if name.is_empty() {
            anyhow::bail!("--user needs a user name");
        }
        Ok(Some((name, password)))
    }

    /// TLS from `--cacert --cert --key`, as etcdctl takes them; `None` when none is given.
    fn tls(&self) -> Result<Option<TlsOptions>> {
        let read = |path: &PathBuf| {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))
        };
        let mut tls = TlsOptions::new();
        if let Some(ca) = &self.cacert {
            tls = tls.with_ca_certificate(read(ca)?);
        }
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => tls = tls.with_identity(read(cert)?, read(key)?),
            (None, None) => {}
            _ => anyhow::bail!("--cert and --key must be given together"),
        }
        let any = self.cacert.is_some() || self.cert.is_some();
        Ok(any.then_some(tls))
    }

    /// A client over every `--endpoints` entry.
    pub async fn connect(&self) -> Result<Client> {
        connect_endpoints(&self.endpoints, self.options()?).await
    }
}

/// A connection failure carries its own exit code.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadConnection(String);

pub async fn connect_endpoints(endpoints: &[String], options: ConnectOptions) -> Result<Client> {
    Client::connect(endpoints, Some(options))
        .await
        .map_err(|e| BadConnection(e.to_string()).into())
}

/// Go's duration syntax for the common units: `1h2m3.5s`, `500ms`, `10us`, `1ns`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let mut total = 0f64;
    let mut rest = s.trim();
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("missing unit in duration {s:?}"))?;
        let value: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("invalid duration {s:?}"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            u => return Err(format!("unknown unit {u:?} in duration {s:?}")),
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    Ok(Duration::from_secs_f64(total))
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Puts the given key into the store
    Put(kv::PutArgs),
    /// Gets the key or a range of keys
    Get(kv::GetArgs),
    /// Removes the specified key or range of keys [key, range_end)
    Del(kv::DelArgs),
    /// Txn processes all the requests in one transaction
    Txn(txn::TxnArgs),
    /// Compacts the event history in etcd
    Compaction(kv::CompactionArgs),
    /// Watches events stream on keys or prefixes
    Watch(watch::WatchArgs),
    /// Lease related commands
    #[command(subcommand)]
    Lease(lease::LeaseCommand),
    /// Membership related commands
    #[command(subcommand)]
    Member(member::MemberCommand),
    /// Endpoint related commands
    #[command(subcommand)]
    Endpoint(endpoint::EndpointCommand),
    /// Manages snapshots
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
    /// Defragments the storage of the members with the given endpoints
    Defrag(maintenance::DefragArgs),
    /// Transfers leadership to another member
    MoveLeader(maintenance::MoveLeaderArgs),
    /// Alarm related commands
    #[command(subcommand)]
    Alarm(maintenance::AlarmCommand),
    /// Acquires a named lock
    Lock(lock::LockArgs),
    /// Observes and participates in leader election
    Elect(elect::ElectArgs),
}

async fn run(cli: Cli) -> Result<i32> {
    let g = &cli.global;
    match cli.command {
        Command::Put(a) => kv::put(g, a).await,
        Command::Get(a) => kv::get(g, a).await,
        Command::Del(a) => kv::del(g, a).await,
        Command::Txn(a) => txn::run(g, a).await,
        Command::Compaction(a) => kv::compaction(g, a).await,
        Command::Watch(a) => watch::run(g, a).await,
        Command::Lease(c) => lease::run(g, c).await,
        Command::Member(c) => member::run(g, c).await,
        Command::Endpoint(c) => endpoint::run(g, c).await,
        Command::Snapshot(c) => snapshot::run(g, c).await,
        Command::Defrag(a) => maintenance::defrag(g, a).await,
        Command::Alarm(c) => maintenance::alarm(g, c).await,
        Command::MoveLeader(a) => maintenance::move_leader(g, a).await,
        Command::Lock(a) => lock::run(g, a).await,
        Command::Elect(a) => elect::run(g, a).await,
    }
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the async runtime");
    let code = match runtime.and_then(|rt| rt.block_on(run(cli))) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {}", one_line(&e));
            if e.downcast_ref::<BadConnection>().is_some() {
                EXIT_BAD_CONNECTION
            } else {
                1
            }
        }
    };
    std::process::exit(code);
}

/// The error and its causes on one line.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    out.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("3x").is_err());
    }
}
