//! Running the real `etcdctl` (v3.4) from tests.

use std::process::Stdio;

use tokio::io::AsyncWriteExt;

/// Runs the real `etcdctl` against one or more endpoints.
pub struct Ctl {
    pub endpoint: String,
}

pub struct Out {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Ctl {
    pub async fn run_with_input(&self, args: &[&str], input: Option<&str>) -> Out {
        let mut cmd = tokio::process::Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(&self.endpoint)
            .arg("--command-timeout=10s")
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn etcdctl");
        if let Some(input) = input {
            let mut stdin = child.stdin.take().expect("stdin");
            stdin
                .write_all(input.as_bytes())
                .await
                .expect("write stdin");
        }
        let out =
            tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output())
                .await
                .expect("etcdctl finished in time")
                .expect("etcdctl output");
        Out {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub async fn ok(&self, args: &[&str]) -> String {
        let out = self.run_with_input(args, None).await;
        assert!(out.ok, "etcdctl {args:?} failed: {}", out.stderr);
        out.stdout
    }

    pub async fn fails(&self, args: &[&str]) -> String {
        let out = self.run_with_input(args, None).await;
        assert!(
            !out.ok,
            "etcdctl {args:?} unexpectedly succeeded: {}",
            out.stdout
        );
        out.stderr
    }
}

/// Whether etcdctl is installed; prints why the caller skips when it is not.
pub fn etcdctl_present() -> bool {
    match std::process::Command::new("etcdctl")
        .arg("version")
        .output()
    {
        Ok(o) if o.status.success() => true,
        _ => {
            eprintln!("SKIPPED: etcdctl is not installed (apt-get install etcd-client); ./scripts/test.sh installs it");
            false
        }
    }
}
