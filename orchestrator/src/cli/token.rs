//! `cairn-orchestrator token create|list|delete|generate`: bootstrap tokens for joining nodes, as
//! `kubeadm token` manages them (Secrets in kube-system, printed in kubeadm's columns).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use cairn_orchestrator::bootstrap::{self, Token, TokenSecret};
use cairn_orchestrator::client::{self, Throttle};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, ListParams, PostParams};

#[derive(clap::Args)]
pub struct TokenArgs {
    /// The admin kubeconfig (as `cairn-orchestrator up` writes it).
    #[arg(
        long,
        env = "KUBECONFIG",
        default_value = "./cairn.kubeconfig",
        global = true
    )]
    kubeconfig: PathBuf,
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(clap::Subcommand)]
enum TokenCommand {
    /// Create a bootstrap token (a new random one unless given) and print it.
    Create {
        token: Option<String>,
        /// How long until it expires (`24h`, `90m`, `1h30m`; `0` never).
        #[arg(long, default_value = "24h0m0s")]
        ttl: String,
        #[arg(long)]
        description: Option<String>,
        /// What it may be used for.
        #[arg(long, value_delimiter = ',', default_value = "signing,authentication")]
        usages: Vec<String>,
        /// Extra groups it authenticates as (each `system:bootstrappers:...`).
        #[arg(long, value_delimiter = ',', default_value = bootstrap::DEFAULT_NODE_GROUP)]
        groups: Vec<String>,
        /// Print the whole `cairn-orchestrator agent --join` command instead of the token.
        #[arg(long)]
        print_join_command: bool,
    },
    /// List bootstrap tokens.
    List,
    /// Delete bootstrap tokens (by id or whole token).
    Delete {
        #[arg(required = true)]
        tokens: Vec<String>,
    },
    /// Print a random token without creating it.
    Generate,
}

/// Go's duration syntax as kubeadm's --ttl takes it (`24h0m0s`, `90m`, `0`).
fn parse_ttl(s: &str) -> Result<Option<jiff::SignedDuration>> {
    if s == "0" || s == "0s" {
        return Ok(None);
    }
    let d: jiff::SignedDuration = s
        .parse()
        .with_context(|| format!("invalid --ttl {s:?}: expected a duration such as 24h0m0s"))?;
    if d.is_negative() {
        bail!("invalid --ttl {s:?}: must not be negative");
    }
    Ok(Some(d))
}

fn decoded(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    s.data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect()
}

/// `agent --join` for this cluster: the address from cluster-info (what other machines are told),
/// else the kubeconfig's, and the CA's pin.
async fn join_command(kc: &kube::Client, kubeconfig: &PathBuf, token: &Token) -> Result<String> {
    let cfg = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(kubeconfig)?,
        &Default::default(),
    )
    .await?;
    let info: Api<ConfigMap> = Api::namespaced(kc.clone(), bootstrap::CLUSTER_INFO_NAMESPACE);
    let from_info = info
        .get_opt(bootstrap::CLUSTER_INFO)
        .await?
        .and_then(|cm| cm.data?.get(bootstrap::KUBECONFIG_KEY).cloned())
        .and_then(|text| bootstrap::parse_cluster_info(&text).ok());
    let (server, ca_der) = match from_info {
        Some((server, ca_pem)) => {
            use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer};
            let der = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
                .next()
                .context("cluster-info holds no CA certificate")??;
            (server, der.to_vec())
        }
        None => (
            cfg.cluster_url.to_string(),
            cfg.root_cert
                .and_then(|c| c.into_iter().next())
                .context("the kubeconfig names no CA")?,
        ),
    };
    let pin = bootstrap::ca_pin(&ca_der)?;
    Ok(format!(
        "cairn-orchestrator agent --join {} --token {token} --discovery-token-ca-cert-hash {pin}",
        server.trim_end_matches('/')
    ))
}

pub async fn run(args: TokenArgs) -> Result<ExitCode> {
    if let TokenCommand::Generate = args.command {
        println!("{}", Token::generate());
        return Ok(ExitCode::SUCCESS);
    }
    let unthrottled = Throttle { qps: 0.0, burst: 0 };
    let kc = client::from_kubeconfig(&args.kubeconfig, unthrottled).await?;
    let secrets: Api<Secret> = Api::namespaced(kc.clone(), bootstrap::NAMESPACE);
    match args.command {
        TokenCommand::Generate => unreachable!("answered above"),
        TokenCommand::Create {
            token,
            ttl,
            description,
            usages,
            groups,
            print_join_command,
        } => {
            let token = match token {
                Some(t) => Token::parse(&t)?,
                None => Token::generate(),
            };
            for u in &usages {
                if u != "signing" && u != "authentication" {
                    bail!("invalid bootstrap token usage {u:?}: valid values are \"signing\" and \"authentication\"");
                }
            }
            for g in &groups {
                if !g.starts_with("system:bootstrappers:") {
                    bail!("bootstrap group {g:?} is invalid (must match system:bootstrappers:[a-z0-9:-]{{0,255}}[a-z0-9])");
                }
            }
            let expiration = parse_ttl(&ttl)?
                .map(|d| jiff::Timestamp::now().checked_add(d))
                .transpose()
                .context("the expiry is out of range")?
                .map(|t| t.round(jiff::Unit::Second).unwrap_or(t).to_string());
            let ts = TokenSecret {
                id: token.id.clone(),
                secret: token.secret.clone(),
                expiration,
                authentication: usages.iter().any(|u| u == "authentication"),
                signing: usages.iter().any(|u| u == "signing"),
                extra_groups: groups,
                description,
            };
            let secret = Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some(token.secret_name()),
                    namespace: Some(bootstrap::NAMESPACE.into()),
                    ..Default::default()
                },
                type_: Some(bootstrap::SECRET_TYPE.into()),
                data: Some(
                    ts.to_data()
                        .into_iter()
                        .map(|(k, v)| (k, ByteString(v.into_bytes())))
                        .collect(),
                ),
                ..Default::default()
            };
            secrets
                .create(&PostParams::default(), &secret)
                .await
                .with_context(|| format!("create bootstrap token {:?}", token.id))?;
            if print_join_command {
                println!("{}", join_command(&kc, &args.kubeconfig, &token).await?);
            } else {
                println!("{token}");
            }
        }
        TokenCommand::List => {
            let now = jiff::Timestamp::now();
            let list = secrets
                .list(&ListParams::default().fields(&format!("type={}", bootstrap::SECRET_TYPE)))
                .await?;
            println!("TOKEN                     TTL         EXPIRES                USAGES                   DESCRIPTION                                                EXTRA GROUPS");
            for s in list.items {
                let name = s.metadata.name.clone().unwrap_or_default();
                let Some(t) = TokenSecret::from_data(&name, &decoded(&s)) else {
                    continue;
                };
                let (ttl, expires) = match t.expiration.as_deref() {
                    None => ("<forever>".to_string(), "<never>".to_string()),
                    Some(e) => {
                        let ttl = match e.parse::<jiff::Timestamp>() {
                            Ok(at) if at > now => {
                                let secs = at.duration_since(now).as_secs();
                                if secs >= 3600 {
                                    format!("{}h", (secs + 1800) / 3600)
                                } else {
                                    format!("{}m", (secs + 30) / 60)
                                }
                            }
                            _ => "<invalid>".to_string(),
                        };
                        (ttl, e.to_string())
                    }
                };
                let mut usages = Vec::new();
                if t.authentication {
                    usages.push("authentication");
                }
                if t.signing {
                    usages.push("signing");
                }
                println!(
                    "{:<25} {:<11} {:<22} {:<24} {:<58} {}",
                    format!("{}.{}", t.id, t.secret),
                    ttl,
                    expires,
                    usages.join(","),
                    t.description.as_deref().unwrap_or("<none>"),
                    t.extra_groups.join(",")
                );
            }
        }
        TokenCommand::Delete { tokens } => {
            for t in tokens {
                let id = match Token::parse(&t) {
                    Ok(tok) => tok.id,
                    Err(_) if t.len() == 6 && !t.contains('.') => t.clone(),
                    Err(e) => bail!("given token didn't match pattern \"[a-z0-9]{{6}}\" or \"[a-z0-9]{{6}}\\.[a-z0-9]{{16}}\": {e}"),
                };
                secrets
                    .delete(
                        &format!("{}{id}", bootstrap::SECRET_PREFIX),
                        &DeleteParams::default(),
                    )
                    .await
                    .with_context(|| format!("delete bootstrap token {id:?}"))?;
                println!("bootstrap token {id:?} deleted");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
