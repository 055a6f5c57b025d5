//! Running `nft -f -`: one script, one kernel transaction. Either every command of it takes effect
//! or none does, which is what lets a sync rewrite a Service's chains under live traffic.

use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use super::ProxyError;

/// How `nft` is started: the binary and any wrapper before it (e.g. `ip netns exec <ns>`).
#[derive(Debug, Clone)]
pub struct Nft {
    pub command: Vec<String>,
}

impl Default for Nft {
    fn default() -> Self {
        Nft {
            command: vec!["nft".into()],
        }
    }
}

impl Nft {
    fn cmd(&self) -> Result<tokio::process::Command, ProxyError> {
        let (bin, args) = self
            .command
            .split_first()
            .ok_or_else(|| ProxyError::Nft("empty nft command".into()))?;
        let mut c = tokio::process::Command::new(bin);
        c.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        Ok(c)
    }

    /// Applies `script` as one transaction.
    pub async fn apply(&self, script: &str) -> Result<(), ProxyError> {
        let mut c = self.cmd()?;
        c.args(["-f", "-"]);
        let mut child = c
            .spawn()
            .map_err(|e| ProxyError::Nft(format!("start {:?}: {e}", self.command)))?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let body = script.as_bytes().to_vec();
        // Written from a task of its own so a large script cannot deadlock against nft's stderr.
        let writer = tokio::spawn(async move {
            let r = stdin.write_all(&body).await;
            drop(stdin);
            r
        });
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| ProxyError::Nft(format!("wait for nft: {e}")))?;
        let _ = writer.await;
        if out.status.success() {
            return Ok(());
        }
        let mut err = String::from_utf8_lossy(&out.stderr).into_owned();
        if err.len() > 2000 {
            let mut cut = 2000;
            while !err.is_char_boundary(cut) {
                cut -= 1;
            }
            err.truncate(cut);
            err.push_str("...");
        }
        Err(ProxyError::Nft(format!("nft -f: {}: {err}", out.status)))
    }

    /// The table's rules as `nft list table` prints them, or None when there is no such table.
    pub async fn list_table(&self, table: &str) -> Result<Option<String>, ProxyError> {
        let mut c = self.cmd()?;
        c.args(["list", "table", "ip", table])
            .stdout(Stdio::piped());
        let out = c
            .output()
            .await
            .map_err(|e| ProxyError::Nft(format!("start {:?}: {e}", self.command)))?;
        if out.status.success() {
            Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
        } else {
            Ok(None)
        }
    }

    /// Removes the table, if there is one.
    pub async fn delete_table(&self, table: &str) -> Result<(), ProxyError> {
        self.apply(&format!("add table ip {table}\ndelete table ip {table}\n"))
            .await
    }
}
