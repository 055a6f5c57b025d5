//! `snapshot save|restore`. Saving streams the member's backend to `<file>.part` and renames it when the
//! stream ended cleanly, so a broken transfer never leaves a file that looks complete.

use std::io::Write;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use futures::StreamExt;

use crate::Global;

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Stores an etcd node backend snapshot to a given file
    Save {
        /// Destination file
        filename: String,
    },
    /// Explains how to restore: a Cairn member restores from a snapshot as it starts (`cairn --restore-from`)
    Restore {
        /// The snapshot file
        filename: String,
        /// Path to the data directory
        #[arg(long)]
        data_dir: Option<String>,
    },
}

pub async fn run(g: &Global, c: SnapshotCommand) -> Result<i32> {
    match c {
        SnapshotCommand::Save { filename } => {
            if g.endpoints.len() != 1 {
                bail!(
                    "snapshot must be requested to one selected node, not multiple {:?}",
                    g.endpoints
                );
            }
            let client = g.connect().await?;
            let part = format!("{filename}.part");
            let mut file =
                std::fs::File::create(&part).with_context(|| format!("could not open {part}"))?;
            let mut stream = client.snapshot().await?;
            let mut total = 0usize;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                total += chunk.blob.len();
                file.write_all(&chunk.blob)
                    .with_context(|| format!("write {part}"))?;
            }
            file.sync_all().with_context(|| format!("sync {part}"))?;
            drop(file);
            if total == 0 {
                let _ = std::fs::remove_file(&part);
                bail!("snapshot stream ended without data");
            }
            std::fs::rename(&part, &filename)
                .with_context(|| format!("rename {part} to {filename}"))?;
            println!("Snapshot saved at {filename}");
            Ok(0)
        }
        SnapshotCommand::Restore { filename, data_dir } => {
            // A Cairn member restores while it starts; there is no offline restore to run here.
            let dir = data_dir.unwrap_or_else(|| "<new dir>".into());
            bail!(
                "cairnctl cannot restore offline; start a new member on the snapshot instead: \
                 cairn --restore-from {filename} --data-dir {dir} --name <name> --initial-cluster <...>"
            )
        }
    }
}
