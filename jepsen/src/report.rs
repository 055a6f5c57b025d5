//! The results folder of a run: `history.jsonl`, `verdict.json`, `nemesis.json` (what each fault
//! reported) and, for an invalid verdict, `timeline.svg`: the operations around the first
//! anomalies, one lane per process, bars from invocation to completion.

use std::fmt::Write as _;
use std::path::Path;

use crate::checker::Verdict;
use crate::history::{History, OpType};

/// Errors writing a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("report i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("report history: {0}")]
    History(#[from] crate::history::HistoryError),
    #[error("report encoding: {0}")]
    Json(#[from] serde_json::Error),
}

/// Writes history, verdict and (when anomalies exist) a timeline into `dir`.
pub fn write(
    dir: &Path,
    history: &History,
    verdict: &Verdict,
    extra: &serde_json::Value,
) -> Result<(), ReportError> {
    std::fs::create_dir_all(dir)?;
    history.write(&dir.join("history.jsonl"))?;
    std::fs::write(
        dir.join("verdict.json"),
        serde_json::to_string_pretty(verdict)?,
    )?;
    if !extra.is_null() {
        std::fs::write(dir.join("run.json"), serde_json::to_string_pretty(extra)?)?;
    }
    if !verdict.anomalies.is_empty() {
        std::fs::write(dir.join("timeline.svg"), timeline(history, verdict))?;
    }
    Ok(())
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An SVG timeline of the operations near the first anomalies.
pub fn timeline(history: &History, verdict: &Verdict) -> String {
    let pairs = history.pairs();
    let marked: std::collections::HashSet<usize> = verdict
        .anomalies
        .iter()
        .take(3)
        .flat_map(|a| a.ops.iter().copied())
        .collect();
    let involved: Vec<_> = pairs
        .iter()
        .filter(|p| marked.contains(&p.invoke.index))
        .collect();
    let (t0, t1) = if involved.is_empty() {
        (0, history.ops.last().map(|o| o.time).unwrap_or(1))
    } else {
        let lo = involved.iter().map(|p| p.invoke.time).min().unwrap_or(0);
        let hi = involved
            .iter()
            .map(|p| p.complete.map(|c| c.time).unwrap_or(p.invoke.time))
            .max()
            .unwrap_or(lo);
        (lo, hi.max(lo + 1))
    };
    // Some context on both sides of the anomaly.
    let pad = (t1 - t0) / 4 + 1;
    let (t0, t1) = (t0.saturating_sub(pad), t1 + pad);
    let mut shown: Vec<_> = pairs
        .iter()
        .filter(|p| {
            let end = p.complete.map(|c| c.time).unwrap_or(t1);
            p.invoke.time <= t1 && end >= t0
        })
        .collect();
    // For per-key anomalies only that key's operations matter.
    let keys: std::collections::HashSet<&str> = involved
        .iter()
        .filter_map(|p| p.invoke.value.get("key").and_then(|k| k.as_str()))
        .collect();
    if !keys.is_empty() {
        shown.retain(|p| {
            p.invoke
                .value
                .get("key")
                .and_then(|k| k.as_str())
                .is_none_or(|k| keys.contains(k))
        });
    }
    // Keep marked ops, then the nearest others, to stay readable.
    shown.sort_by_key(|p| {
        (
            !marked.contains(&p.invoke.index),
            p.invoke.time.abs_diff(t0),
        )
    });
    shown.truncate(80);
    let mut lanes: Vec<u64> = shown.iter().map(|p| p.invoke.process).collect();
    lanes.sort_unstable();
    lanes.dedup();
    let (w, lane_h, left) = (1200.0f64, 34.0f64, 90.0f64);
    let height = 60.0 + lane_h * lanes.len() as f64;
    let x = |t: u64| left + (t.clamp(t0, t1) - t0) as f64 / (t1 - t0) as f64 * (w - left - 10.0);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" font-family="monospace" font-size="10">"#
    );
    let title = verdict
        .anomalies
        .first()
        .map(|a| format!("{}: {}", a.kind, a.message))
        .unwrap_or_default();
    let _ = writeln!(
        svg,
        r#"<text x="5" y="15" font-size="12">{}</text>"#,
        escape(&title)
    );
    let _ = writeln!(
        svg,
        r#"<text x="5" y="30">{:.3} s .. {:.3} s; red outline = in the anomaly; green ok, red fail, orange unknown</text>"#,
        t0 as f64 / 1e9,
        t1 as f64 / 1e9
    );
    for (li, lane) in lanes.iter().enumerate() {
        let y = 45.0 + lane_h * li as f64;
        let _ = writeln!(
            svg,
            r#"<text x="5" y="{}">process {lane}</text>"#,
            y + lane_h / 2.0
        );
        for p in shown.iter().filter(|p| p.invoke.process == *lane) {
            let end = p.complete.map(|c| c.time).unwrap_or(t1);
            let (x0, x1) = (x(p.invoke.time), x(end).max(x(p.invoke.time) + 2.0));
            let fill = match p.kind() {
                OpType::Ok => "#9be39b",
                OpType::Fail => "#f19a9a",
                _ => "#f5c46b",
            };
            let stroke = if marked.contains(&p.invoke.index) {
                r##"stroke="#d00" stroke-width="2""##
            } else {
                r##"stroke="#555" stroke-width="0.5""##
            };
            let result = p.complete.map(|c| c.value.to_string()).unwrap_or_default();
            let label = format!(
                "#{} {} {} -> {}",
                p.invoke.index, p.invoke.f, p.invoke.value, result
            );
            let _ = writeln!(
                svg,
                r#"<g><title>{}</title><rect x="{x0:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{fill}" {stroke}/><text x="{:.1}" y="{:.1}">{}</text></g>"#,
                escape(&label),
                x1 - x0,
                lane_h - 8.0,
                x0 + 2.0,
                y + 16.0,
                escape(
                    &label
                        .chars()
                        .take(((x1 - x0) / 6.0).max(8.0) as usize)
                        .collect::<String>()
                )
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::register;
    use crate::history::Builder;
    use serde_json::json;

    #[test]
    fn invalid_run_writes_history_verdict_and_timeline() {
        let h = Builder::new()
            .op(
                0,
                0,
                OpType::Invoke,
                "write",
                json!({"key": "x", "value": 1}),
            )
            .op(
                10,
                0,
                OpType::Ok,
                "write",
                json!({"key": "x", "value": 1, "rev": 2}),
            )
            .op(20, 1, OpType::Invoke, "read", json!({"key": "x"}))
            .op(
                30,
                1,
                OpType::Ok,
                "read",
                json!({"key": "x", "value": null, "rev": 0}),
            )
            .build();
        let v = register::check(&h);
        assert!(!v.valid);
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &h, &v, &serde_json::Value::Null).unwrap();
        assert_eq!(History::read(&dir.path().join("history.jsonl")).unwrap(), h);
        let back: Verdict = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("verdict.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(back, v);
        let svg = std::fs::read_to_string(dir.path().join("timeline.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("#2 read"), "{svg}");
        assert!(svg.contains("stroke=\"#d00\""));
    }
}
