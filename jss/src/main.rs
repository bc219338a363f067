//! `jss`: the node daemon and its operator commands.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "jss",
    version,
    about = "Per-node workload identity signer for Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the `images` claim (and `images-names`) for a pod's image list,
    /// as a secret maker needs it: containers in spec order, then init containers.
    ImagesHash {
        /// Image references exactly as in the pod spec.
        #[arg(required = true)]
        images: Vec<String>,
        /// Also print the joined `images-names` value.
        #[arg(long)]
        verbose: bool,
    },
    /// Show which pod and container a process belongs to, and why it would
    /// (not) get a token: JSON on stdout, the reason on stderr on failure.
    Inspect(jss::attest::inspect::InspectArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match Cli::parse().cmd {
        Cmd::Inspect(args) => {
            let report = jss::attest::inspect::run(&args)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Cmd::ImagesHash { images, verbose } => {
            if verbose {
                eprintln!("images-names: {}", jss::claims::images_names(&images));
            }
            println!("{}", jss::claims::images_hash(&images));
            Ok(())
        }
    }
}
