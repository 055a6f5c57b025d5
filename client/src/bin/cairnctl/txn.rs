//! `txn`: reads compares, success requests and failure requests from stdin, each section ended by an empty
//! line, in etcdctl's syntax:
//!
//! ```text
//! mod("key1") > "0"
//! value("key1") = "v"
//!
//! put key1 "new value"
//! get key1
//!
//! del key1 --prev-kv
//! ```
//!
//! With `-i` it prompts for each section, as etcdctl's interactive mode does.

use std::io::BufRead;

use anyhow::{anyhow, bail, Context, Result};
use cairn_client::proto::response_op::Response;
use cairn_client::proto::TxnResponse;
use cairn_client::{Compare, Txn, TxnOp};
use clap::{Args, Parser};
use serde_json::{json, Map, Value};

use crate::kv::{self, DelArgs, GetArgs};
use crate::output::{self, Format, Printer};
use crate::Global;

#[derive(Args, Debug)]
pub struct TxnArgs {
    /// Input transaction in interactive mode
    #[arg(short, long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    pub interactive: bool,
}

/// A request line inside a txn, parsed with the same flags as the top-level command.
#[derive(Parser, Debug)]
#[command(no_binary_name = true)]
enum OpLine {
    Put {
        key: String,
        value: String,
        #[arg(long, default_value = "0")]
        lease: String,
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
        prev_kv: bool,
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
        ignore_value: bool,
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
        ignore_lease: bool,
    },
    Get(GetArgs),
    Del(DelArgs),
}

/// Splits a line into words; double-quoted words may hold spaces and Go escapes.
pub fn argify(line: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut chars = line.trim().chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut word = String::new();
        if c == '"' {
            chars.next();
            loop {
                match chars.next() {
                    None => bail!("unterminated quote in {line:?}"),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some('n') => word.push('\n'),
                        Some('t') => word.push('\t'),
                        Some(other) => word.push(other),
                        None => bail!("dangling escape in {line:?}"),
                    },
                    Some(ch) => word.push(ch),
                }
            }
        } else {
            while let Some(&ch) = chars.peek() {
                if ch.is_whitespace() {
                    break;
                }
                word.push(ch);
                chars.next();
            }
        }
        out.push(word);
    }
    Ok(out)
}

/// Parses `target("key") op "value"`.
pub fn parse_compare(line: &str) -> Result<Compare> {
    let bad = || anyhow!("malformed comparison: {line}");
    let (target, rest) = line.split_once('(').ok_or_else(bad)?;
    let (key_part, rest) = rest.split_once(')').ok_or_else(bad)?;
    let key = argify(key_part)?.pop().ok_or_else(bad)?;
    let words = argify(rest)?;
    let [op, value] = words.as_slice() else {
        return Err(bad());
    };
    let int = |v: &str| -> Result<i64> {
        v.parse()
            .with_context(|| format!("invalid number {v:?} in: {line}"))
    };
    let cmp_int = |c: cairn_client::CompareInt, v: i64| -> Result<Compare> {
        Ok(match op.as_str() {
            "=" | "==" => c.eq(v),
            "!=" => c.ne(v),
            ">" => c.gt(v),
            "<" => c.lt(v),
            other => bail!("unknown op {other:?} in: {line}"),
        })
    };
    match target.trim() {
        "ver" | "version" => cmp_int(Compare::version(key), int(value)?),
        "c" | "create" => cmp_int(Compare::create_revision(key), int(value)?),
        "m" | "mod" => cmp_int(Compare::mod_revision(key), int(value)?),
        "lease" => cmp_int(Compare::lease(key), kv::parse_lease(value)?),
        "val" | "value" => {
            let c = Compare::value(key);
            let v = value.clone().into_bytes();
            Ok(match op.as_str() {
                "=" | "==" => c.eq(v),
                "!=" => c.ne(v),
                ">" => c.gt(v),
                "<" => c.lt(v),
                other => bail!("unknown op {other:?} in: {line}"),
            })
        }
        other => bail!("malformed comparison: {line} (unknown target {other:?})"),
    }
}

pub fn parse_op(line: &str) -> Result<TxnOp> {
    let words = argify(line)?;
    let parsed = OpLine::try_parse_from(&words)
        .map_err(|e| anyhow!("invalid txn request {line:?}: {}", e.kind()))?;
    Ok(match parsed {
        OpLine::Put {
            key,
            value,
            lease,
            prev_kv,
            ignore_value,
            ignore_lease,
        } => {
            let args = kv::PutArgs {
                key: key.clone(),
                value: Some(value.clone()),
                lease,
                prev_kv,
                ignore_value,
                ignore_lease,
            };
            TxnOp::put(key, value, Some(args.options()?))
        }
        OpLine::Get(a) => TxnOp::get(a.key.clone(), Some(a.options()?)),
        OpLine::Del(a) => TxnOp::delete(a.key.clone(), Some(a.options()?)),
    })
}

/// Reads one section: lines until an empty line or end of input.
fn section(lines: &mut impl Iterator<Item = std::io::Result<String>>) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for line in lines {
        let line = line.context("read stdin")?;
        if line.trim().is_empty() {
            break;
        }
        out.push(line);
    }
    Ok(out)
}

pub fn read_txn(input: impl BufRead, interactive: bool) -> Result<Txn> {
    let mut lines = input.lines();
    let prompt = |s: &str| {
        if interactive {
            println!("{s}");
        }
    };
    prompt("compares:");
    let compares = section(&mut lines)?
        .iter()
        .map(|l| parse_compare(l))
        .collect::<Result<Vec<_>>>()?;
    prompt("success requests (get, put, del):");
    let success = section(&mut lines)?
        .iter()
        .map(|l| parse_op(l))
        .collect::<Result<Vec<_>>>()?;
    prompt("failure requests (get, put, del):");
    let failure = section(&mut lines)?
        .iter()
        .map(|l| parse_op(l))
        .collect::<Result<Vec<_>>>()?;
    Ok(Txn::new().when(compares).and_then(success).or_else(failure))
}

fn txn_json(resp: &TxnResponse) -> Value {
    let mut m = Map::new();
    output::put(&mut m, "header", output::header(resp.header.as_ref()));
    output::put(&mut m, "succeeded", json!(resp.succeeded));
    let responses: Vec<Value> = resp
        .responses
        .iter()
        .map(|r| match &r.response {
            Some(Response::ResponseRange(x)) => {
                json!({"Response": {"ResponseRange": kv::range_json(x)}})
            }
            Some(Response::ResponsePut(x)) => {
                let mut m = Map::new();
                output::put(&mut m, "header", output::header(x.header.as_ref()));
                if let Some(kv) = &x.prev_kv {
                    m.insert("prev_kv".into(), output::kv_json(kv));
                }
                json!({"Response": {"ResponsePut": Value::Object(m)}})
            }
            Some(Response::ResponseDeleteRange(x)) => {
                json!({"Response": {"ResponseDeleteRange": kv::delete_json(x)}})
            }
            Some(Response::ResponseTxn(x)) => json!({"Response": {"ResponseTxn": txn_json(x)}}),
            None => json!({}),
        })
        .collect();
    output::put(&mut m, "responses", Value::Array(responses));
    Value::Object(m)
}

pub fn print_txn(p: &Printer, resp: &TxnResponse) {
    if p.format == Format::Json {
        p.json(&txn_json(resp));
        return;
    }
    println!("{}", if resp.succeeded { "SUCCESS" } else { "FAILURE" });
    for r in &resp.responses {
        println!();
        match &r.response {
            Some(Response::ResponseRange(x)) => kv::print_get(p, x, false),
            Some(Response::ResponsePut(x)) => kv::print_put(p, x),
            Some(Response::ResponseDeleteRange(x)) => kv::print_del(p, x),
            Some(Response::ResponseTxn(x)) => print_txn(p, x),
            None => {}
        }
    }
}

pub async fn run(g: &Global, a: TxnArgs) -> Result<i32> {
    let p = g.printer();
    p.no_table()?;
    let txn = read_txn(std::io::stdin().lock(), a.interactive)?;
    let client = g.connect().await?;
    let resp = client.txn(txn).await?;
    print_txn(&p, &resp);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcdctl_txn_syntax_parses() {
        let input = "mod(\"key1\") > \"0\"\nvalue(\"key1\") = \"a b\"\n\nput key1 \"x y\"\nget key1 --prefix\n\ndel key1\n";
        let txn = read_txn(input.as_bytes(), false).unwrap();
        let req = txn.request();
        assert_eq!(req.compare.len(), 2);
        assert_eq!(req.success.len(), 2);
        assert_eq!(req.failure.len(), 1);
        assert!(parse_compare("bogus(\"k\") = \"1\"").is_err());
        assert!(parse_op("frob k").is_err());
        assert_eq!(
            argify(r#"put k "a \"q\"""#).unwrap(),
            vec!["put", "k", "a \"q\""]
        );
    }
}
