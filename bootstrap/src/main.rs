//! `jss-bootstrap`: what the cluster installer runs on each node.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use jss::signer::{self, KeyOrigin, KeyPolicy, SignerConfig, SignerKind};

#[derive(Parser)]
#[command(
    name = "jss-bootstrap",
    version,
    about = "Node key, CSR, Vault PKI signing and registration for JSS"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Node operations.
    #[command(subcommand)]
    Node(NodeCmd),
}

#[derive(clap::Args, Clone)]
struct KeyArgs {
    /// State directory holding the node key and chain.
    #[arg(long, default_value = "/var/lib/jss")]
    state_dir: PathBuf,
    /// Where the node key lives: tpm (fail without one), software, or auto.
    #[arg(long, default_value = "tpm")]
    signer: SignerKind,
    /// TPM connection: device:/dev/tpmrm0, swtpm:host=H,port=P or tabrmd.
    #[arg(long, env = "JSS_TCTI", default_value = signer::DEFAULT_TCTI)]
    tcti: String,
}

impl KeyArgs {
    fn config(&self) -> SignerConfig {
        SignerConfig {
            kind: self.signer,
            tcti: self.tcti.clone(),
            state_dir: self.state_dir.clone(),
        }
    }
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Create the node key if absent and print its public key and kid.
    Init(KeyArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    match Cli::parse().cmd {
        Cmd::Node(NodeCmd::Init(args)) => node_init(&args),
    }
}

fn node_init(args: &KeyArgs) -> anyhow::Result<()> {
    let (signer, origin) =
        signer::open(&args.config(), KeyPolicy::CreateIfMissing).with_context(|| {
            format!(
                "cannot create or load the node key in {}",
                args.state_dir.display()
            )
        })?;
    match origin {
        KeyOrigin::Created => eprintln!("created a new {} node key", signer.backend()),
        KeyOrigin::Loaded => {
            eprintln!("node key already exists ({}); keeping it", signer.backend())
        }
    }
    println!("backend: {}", signer.backend());
    println!("kid: {}", signer.kid());
    print!("{}", signer.public_key().spki_pem());
    Ok(())
}
