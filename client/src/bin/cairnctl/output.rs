//! Output in etcdctl's three everyday forms: `simple` (line-oriented), `json` (etcd's field names, zero
//! fields omitted, bytes in base64) and `table` (etcdctl's bordered layout: centered headers, right-aligned
//! cells). Commands etcdctl cannot print as a table refuse `-w table` with etcdctl's message.

use anyhow::{bail, Result};
use cairn_client::proto::{KeyValue, ResponseHeader};
use serde_json::{json, Map, Value};

/// The `-w` formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Line-oriented, as etcdctl prints by default.
    Simple,
    /// Machine-readable JSON.
    Json,
    /// Bordered table (member, endpoint and snapshot commands).
    Table,
}

/// How keys and values are printed.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    pub format: Format,
    pub hex: bool,
}

impl Printer {
    /// etcdctl refuses a table for commands without a tabular form.
    pub fn no_table(&self) -> Result<()> {
        if self.format == Format::Table {
            bail!("table not supported as output format");
        }
        Ok(())
    }

    pub fn bytes(&self, b: &[u8]) -> String {
        if self.hex {
            b.iter().map(|x| format!("\\x{x:02x}")).collect()
        } else {
            String::from_utf8_lossy(b).into_owned()
        }
    }

    /// etcdctl's printKV: the key (unless value-only), then the value.
    pub fn kv(&self, kv: &KeyValue, value_only: bool) {
        if !value_only {
            println!("{}", self.bytes(&kv.key));
        }
        println!("{}", self.bytes(&kv.value));
    }

    pub fn json(&self, v: &Value) {
        println!("{v}");
    }
}

pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Inserts `v` unless it is a zero value, as Go's `omitempty` does.
pub fn put(m: &mut Map<String, Value>, k: &str, v: Value) {
    let empty = match &v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    };
    if !empty {
        m.insert(k.to_string(), v);
    }
}

pub fn header_fields(h: Option<&ResponseHeader>) -> Map<String, Value> {
    let mut m = Map::new();
    if let Some(h) = h {
        put(&mut m, "cluster_id", json!(h.cluster_id));
        put(&mut m, "member_id", json!(h.member_id));
        put(&mut m, "revision", json!(h.revision));
        put(&mut m, "raft_term", json!(h.raft_term));
    }
    m
}

pub fn header(h: Option<&ResponseHeader>) -> Value {
    Value::Object(header_fields(h))
}

pub fn kv_json(kv: &KeyValue) -> Value {
    let mut m = Map::new();
    put(&mut m, "key", json!(base64(&kv.key)));
    put(&mut m, "create_revision", json!(kv.create_revision));
    put(&mut m, "mod_revision", json!(kv.mod_revision));
    put(&mut m, "version", json!(kv.version));
    put(&mut m, "value", json!(base64(&kv.value)));
    put(&mut m, "lease", json!(kv.lease));
    Value::Object(m)
}

pub fn kvs_json(kvs: &[KeyValue]) -> Value {
    Value::Array(kvs.iter().map(kv_json).collect())
}

/// A bordered table as etcdctl draws it.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([h.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let border: String = widths
        .iter()
        .map(|w| format!("+{}", "-".repeat(w + 2)))
        .collect::<String>()
        + "+\n";
    let mut out = border.clone();
    for (h, w) in headers.iter().zip(&widths) {
        let gap = w - h.len();
        let left = gap / 2;
        out.push_str(&format!(
            "| {}{}{} ",
            " ".repeat(left),
            h,
            " ".repeat(gap - left)
        ));
    }
    out.push_str("|\n");
    out.push_str(&border);
    for row in rows {
        for (cell, w) in row.iter().zip(&widths) {
            out.push_str(&format!("| {cell:>w$} "));
        }
        out.push_str("|\n");
    }
    out.push_str(&border);
    out
}

/// go-humanize's `Bytes`: SI units, one decimal below 10.
pub fn human_bytes(n: i64) -> String {
    let n = n.max(0) as f64;
    if n < 10.0 {
        return format!("{} B", n as u64);
    }
    const SIZES: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let e = (n.ln() / 1000f64.ln()).floor();
    let val = (n / 1000f64.powf(e) * 10.0 + 0.5).floor() / 10.0;
    let suffix = SIZES[e as usize];
    if val < 10.0 {
        format!("{val:.1} {suffix}")
    } else {
        format!("{val:.0} {suffix}")
    }
}

/// A Go duration string as etcdctl prints `took` values (ms precision is plenty).
pub fn go_duration(d: std::time::Duration) -> String {
    let us = d.as_micros();
    if us < 1000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{}ms", trim(us as f64 / 1000.0))
    } else {
        format!("{}s", trim(us as f64 / 1_000_000.0))
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.6}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"x"), "eA==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b""), "");
    }

    #[test]
    fn human_bytes_follows_go_humanize() {
        assert_eq!(human_bytes(20480), "20 kB");
        assert_eq!(human_bytes(5), "5 B");
        assert_eq!(human_bytes(2_500_000), "2.5 MB");
    }

    #[test]
    fn table_layout_matches_etcdctl() {
        let t = table(
            &["ENDPOINT", "HASH"],
            &[vec!["127.0.0.1:23791".into(), "1691089469".into()]],
        );
        assert_eq!(
            t,
            "+-----------------+------------+\n\
             |    ENDPOINT     |    HASH    |\n\
             +-----------------+------------+\n\
             | 127.0.0.1:23791 | 1691089469 |\n\
             +-----------------+------------+\n"
        );
    }
}
