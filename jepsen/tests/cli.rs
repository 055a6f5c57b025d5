//! `cairn-jepsen check`: exit code 0 only for a valid verdict, 1 for an invalid one, and the
//! report files written next to it.

use std::process::Command;

use cairn_jepsen::history::{Builder, OpType};
use serde_json::json;

fn check(history: &cairn_jepsen::history::History) -> (i32, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("history.jsonl");
    history.write(&path).expect("write history");
    let status = Command::new(env!("CARGO_BIN_EXE_cairn-jepsen"))
        .arg("check")
        .arg(&path)
        .arg("--results")
        .arg(dir.path().join("report"))
        .status()
        .expect("run cairn-jepsen");
    (status.code().expect("exit code"), dir)
}

#[test]
fn check_exits_zero_only_for_a_valid_history() {
    let valid = Builder::new()
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
            json!({"key": "x", "value": 1, "rev": 2}),
        )
        .build();
    let (code, dir) = check(&valid);
    assert_eq!(code, 0);
    assert!(dir.path().join("report/verdict.json").is_file());

    // The same history with a lost write: the read, invoked after the write was acknowledged,
    // finds nothing.
    let mut lost = valid.clone();
    lost.ops[3].value = json!({"key": "x", "value": null, "rev": 0});
    let (code, dir) = check(&lost);
    assert_eq!(code, 1);
    assert!(dir.path().join("report/timeline.svg").is_file());
}
