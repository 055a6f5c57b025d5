//! `put`, `get`, `del` and `compaction`, with etcdctl's flags and output.

use std::io::Read;

use anyhow::{bail, Context, Result};
use cairn_client::proto::{DeleteRangeResponse, PutResponse, RangeResponse};
use cairn_client::{DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget};
use clap::Args;
use serde_json::{json, Map, Value};

use crate::output::{self, Format, Printer};
use crate::Global;

#[derive(Args, Debug)]
pub struct PutArgs {
    /// The key
    pub key: String,
    /// The value (read from stdin when absent and --ignore-value is not set)
    pub value: Option<String>,
    /// Lease ID (in hexadecimal) to attach to the key
    #[arg(long, default_value = "0")]
    pub lease: String,
    /// Return the previous key-value pair before modification
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    pub prev_kv: bool,
    /// Updates the key using its current value
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    pub ignore_value: bool,
    /// Updates the key using its current lease
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    pub ignore_lease: bool,
}

#[derive(Args, Debug, Clone, Default)]
pub struct GetArgs {
    /// The key
    pub key: String,
    /// The end of the range [key, range_end)
    pub range_end: Option<String>,
    /// Linearizable(l) or Serializable(s)
    #[arg(long, default_value = "l")]
    pub consistency: String,
    /// Get keys that are greater than or equal to the given key using byte compare
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    pub from_key: bool,
    /// Get only the keys
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    pub keys_only: bool,
    /// Get only the count
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    pub count_only: bool,
    /// Maximum number of results
    #[arg(long, default_value_t = 0)]
    pub limit: i64,
    /// Order of results; ASCEND or DESCEND (ASCEND by default)
    #[arg(long, default_value = "")]
    pub order: String,
    /// Get keys with matching prefix
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    pub prefix: bool,
    /// Only write values when using the "simple" output format
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    pub print_value_only: bool,
    /// Specify the kv revision
    #[arg(long, default_value_t = 0)]
    pub rev: i64,
    /// Sort target; CREATE, KEY, MODIFY, VALUE, or VERSION
    #[arg(long, default_value = "")]
    pub sort_by: String,
}

#[derive(Args, Debug, Clone, Default)]
pub struct DelArgs {
    /// The key
    pub key: String,
    /// The end of the range [key, range_end)
    pub range_end: Option<String>,
    /// Delete keys with matching prefix
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    pub prefix: bool,
    /// Return deleted key-value pairs
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    pub prev_kv: bool,
    /// Delete keys that are greater than or equal to the given key using byte compare
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    pub from_key: bool,
}

#[derive(Args, Debug)]
pub struct CompactionArgs {
    /// The revision to compact up to
    pub revision: i64,
    /// Wait for the compaction to physically remove all old revisions
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    pub physical: bool,
}

pub fn parse_lease(s: &str) -> Result<i64> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16)
        .map(|v| v as i64)
        .with_context(|| format!("bad lease ID ({s}), expecting ID in Hex"))
}

impl PutArgs {
    pub fn options(&self) -> Result<PutOptions> {
        let mut o = PutOptions::new();
        let lease = parse_lease(&self.lease)?;
        if lease != 0 {
            o = o.with_lease(lease);
        }
        if self.prev_kv {
            o = o.with_prev_kv();
        }
        if self.ignore_value {
            o = o.with_ignore_value();
        }
        if self.ignore_lease {
            o = o.with_ignore_lease();
        }
        Ok(o)
    }
}

impl GetArgs {
    pub fn options(&self) -> Result<GetOptions> {
        let mut o = GetOptions::new();
        if self.prefix && self.from_key {
            bail!("`--prefix` and `--from-key` cannot be set at the same time, choose one");
        }
        match (&self.range_end, self.prefix, self.from_key) {
            (Some(_), true, _) => {
                bail!("too many arguments, only accept one argument when `--prefix` is set.")
            }
            (Some(_), _, true) => {
                bail!("too many arguments, only accept one argument when `--from-key` is set.")
            }
            (Some(end), _, _) => o = o.with_range(end.as_bytes().to_vec()),
            (None, true, _) => o = o.with_prefix(),
            (None, _, true) => o = o.with_from_key(),
            _ => {}
        }
        match self.consistency.as_str() {
            "l" => {}
            "s" => o = o.with_serializable(),
            c => bail!("unknown consistency flag {c:?}"),
        }
        let order = match self.order.to_uppercase().as_str() {
            "" => None,
            "ASCEND" => Some(SortOrder::Ascend),
            "DESCEND" => Some(SortOrder::Descend),
            other => bail!("bad sort order {other:?}"),
        };
        let target = match self.sort_by.to_uppercase().as_str() {
            "" => None,
            "CREATE" => Some(SortTarget::Create),
            "KEY" => Some(SortTarget::Key),
            "MODIFY" => Some(SortTarget::Modify),
            "VALUE" => Some(SortTarget::Value),
            "VERSION" => Some(SortTarget::Version),
            other => bail!("bad sort target {other:?}"),
        };
        if order.is_some() || target.is_some() {
            o = o.with_sort(
                target.unwrap_or(SortTarget::Key),
                order.unwrap_or(SortOrder::Ascend),
            );
        }
        if self.limit != 0 {
            o = o.with_limit(self.limit);
        }
        if self.rev != 0 {
            o = o.with_revision(self.rev);
        }
        if self.keys_only {
            o = o.with_keys_only();
        }
        if self.count_only {
            o = o.with_count_only();
        }
        Ok(o)
    }
}

impl DelArgs {
    pub fn options(&self) -> Result<DeleteOptions> {
        let mut o = DeleteOptions::new();
        if self.prefix && self.from_key {
            bail!("`--prefix` and `--from-key` cannot be set at the same time, choose one");
        }
        match (&self.range_end, self.prefix, self.from_key) {
            (Some(_), true, _) | (Some(_), _, true) => {
                bail!("too many arguments, only accept one argument when `--prefix` or `--from-key` is set.")
            }
            (Some(end), _, _) => o = o.with_range(end.as_bytes().to_vec()),
            (None, true, _) => o = o.with_prefix(),
            (None, _, true) => o = o.with_from_key(),
            _ => {}
        }
        if self.prev_kv {
            o = o.with_prev_kv();
        }
        Ok(o)
    }
}

pub fn print_put(p: &Printer, resp: &PutResponse) {
    match p.format {
        Format::Json => {
            let mut m = Map::new();
            output::put(&mut m, "header", output::header(resp.header.as_ref()));
            if let Some(kv) = &resp.prev_kv {
                m.insert("prev_kv".into(), output::kv_json(kv));
            }
            p.json(&Value::Object(m));
        }
        _ => {
            println!("OK");
            if let Some(kv) = &resp.prev_kv {
                p.kv(kv, false);
            }
        }
    }
}

pub fn print_get(p: &Printer, resp: &RangeResponse, value_only: bool) {
    match p.format {
        Format::Json => p.json(&range_json(resp)),
        _ => {
            for kv in &resp.kvs {
                p.kv(kv, value_only);
            }
        }
    }
}

pub fn range_json(resp: &RangeResponse) -> Value {
    let mut m = Map::new();
    output::put(&mut m, "header", output::header(resp.header.as_ref()));
    output::put(&mut m, "kvs", output::kvs_json(&resp.kvs));
    output::put(&mut m, "more", json!(resp.more));
    output::put(&mut m, "count", json!(resp.count));
    Value::Object(m)
}

pub fn delete_json(resp: &DeleteRangeResponse) -> Value {
    let mut m = Map::new();
    output::put(&mut m, "header", output::header(resp.header.as_ref()));
    output::put(&mut m, "deleted", json!(resp.deleted));
    output::put(&mut m, "prev_kvs", output::kvs_json(&resp.prev_kvs));
    Value::Object(m)
}

pub fn print_del(p: &Printer, resp: &DeleteRangeResponse) {
    match p.format {
        Format::Json => p.json(&delete_json(resp)),
        _ => {
            println!("{}", resp.deleted);
            for kv in &resp.prev_kvs {
                p.kv(kv, false);
            }
        }
    }
}

pub async fn put(g: &Global, a: PutArgs) -> Result<i32> {
    let p = g.printer();
    p.no_table()?;
    let options = a.options()?;
    let value = match &a.value {
        Some(v) => v.clone().into_bytes(),
        None if a.ignore_value => Vec::new(),
        None => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("read the value from stdin")?;
            buf
        }
    };
    let client = g.connect().await?;
    let resp = client.put(a.key.clone(), value, Some(options)).await?;
    print_put(&p, &resp);
    Ok(0)
}

pub async fn get(g: &Global, a: GetArgs) -> Result<i32> {
    let p = g.printer();
    p.no_table()?;
    let options = a.options()?;
    let client = g.connect().await?;
    let resp = client.get(a.key.clone(), Some(options)).await?;
    print_get(&p, &resp, a.print_value_only);
    Ok(0)
}

pub async fn del(g: &Global, a: DelArgs) -> Result<i32> {
    let p = g.printer();
    p.no_table()?;
    let options = a.options()?;
    let client = g.connect().await?;
    let resp = client.delete(a.key.clone(), Some(options)).await?;
    print_del(&p, &resp);
    Ok(0)
}

pub async fn compaction(g: &Global, a: CompactionArgs) -> Result<i32> {
    let client = g.connect().await?;
    let mut o = cairn_client::CompactOptions::new();
    if a.physical {
        o = o.with_physical();
    }
    client.compact(a.revision, Some(o)).await?;
    println!("compacted revision {}", a.revision);
    Ok(0)
}
