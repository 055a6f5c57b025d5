//! `cairn-orchestrator image import|ls|rm|pull`: the node's image store, as `crictl images` and
//! `ctr images import` see containerd's, working on the agent's root directory directly (the
//! agent may be running: the store is shared through its lock files).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use cairn_orchestrator::agent::images::{self, ImageStore, InUse};
use cairn_orchestrator::runtime::{Runtime, RuntimeConfig};

#[derive(clap::Args)]
pub struct ImageArgs {
    /// The agent's root directory (images live in its `images/`).
    #[arg(long, default_value = "/var/lib/cairn/agent", global = true)]
    root_dir: PathBuf,
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(clap::Subcommand)]
enum ImageCommand {
    /// Load images from an OCI image layout (directory or tar) or a `docker save` archive.
    Import {
        /// The layout or archive.
        file: PathBuf,
        /// Name the (first) image this instead of what the archive says.
        #[arg(long)]
        name: Option<String>,
    },
    /// List the images.
    Ls,
    /// Remove an image (by name or ID) unless a container uses it.
    Rm { image: String },
    /// Pull an image from its registry.
    Pull { image: String },
}

/// Images and layers the pods recorded under the root directory use.
fn in_use(root: &std::path::Path) -> Result<InUse> {
    let helper = std::env::current_exe().context("locate own executable")?;
    let rt = Runtime::new(RuntimeConfig::new(root, helper))?;
    Ok(InUse::of(&rt))
}

pub async fn run(args: ImageArgs) -> Result<ExitCode> {
    let store = ImageStore::open(&args.root_dir)?;
    let mut out = std::io::stdout();
    match args.command {
        ImageCommand::Import { file, name } => {
            let (s, f, n) = (store.clone(), file.clone(), name.clone());
            let imgs = tokio::task::spawn_blocking(move || s.import(&f, n.as_deref()))
                .await?
                .with_context(|| format!("import {}", file.display()))?;
            for img in imgs {
                let names = if img.names.is_empty() {
                    "<none>".to_string()
                } else {
                    img.names.join(", ")
                };
                writeln!(out, "imported {names} ({})", img.id)?;
            }
        }
        ImageCommand::Ls => {
            writeln!(
                out,
                "{:<48} {:<20} {:<14} SIZE",
                "REPOSITORY", "TAG", "DIGEST"
            )?;
            for img in store.list()? {
                let digest = img.id.trim_start_matches("sha256:");
                let digest = &digest[..digest.len().min(13)];
                let mut rows: Vec<(String, String)> = img
                    .names
                    .iter()
                    .filter(|n| !n.contains('@'))
                    .filter_map(|n| {
                        let r = images::normalize(n).ok()?;
                        Some((
                            images::reference::repository(&r),
                            r.tag().unwrap_or("<none>").to_string(),
                        ))
                    })
                    .collect();
                if rows.is_empty() {
                    let repo = img
                        .names
                        .first()
                        .and_then(|n| n.split_once('@'))
                        .map_or("<none>", |(r, _)| r);
                    rows.push((repo.to_string(), "<none>".into()));
                }
                for (repo, tag) in rows {
                    writeln!(
                        out,
                        "{repo:<48} {tag:<20} {digest:<14} {}",
                        images::human_size(img.size)
                    )?;
                }
            }
        }
        ImageCommand::Rm { image } => {
            let used = in_use(&args.root_dir)?;
            let id = store.remove(&image, &used)?;
            writeln!(out, "Deleted: {id}")?;
        }
        ImageCommand::Pull { image } => {
            let img = store.pull(&image).await?;
            writeln!(out, "Image is up to date for {}", img.id)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
