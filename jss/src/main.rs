//! `jss`: the node daemon and its operator commands.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use jss::client::DEFAULT_SOCKET;
use jss::workload::cli::{self, TokenArgs};
use jss::workload::secrets::SecretsArgs;

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
    /// Serve tokens on the unix socket.
    Serve {
        #[arg(long, default_value = "/etc/jss/config.toml")]
        config: PathBuf,
    },
    /// Ask the local JSS for a token for this process and print it, or
    /// keep it in a file (`--out`, `--refresh`) for an agent to read.
    Token(TokenArgs),
    /// Write the secrets a `tsi.secrets` annotation names into files and keep
    /// them fresh (TSI's sidecar), or `exec` a command with secrets in its environment.
    Secrets(Box<SecretsArgs>),
    /// Exit 0 if the daemon answers /healthz: it serves its socket
    /// (liveness). With --ready, exit 0 only if it can also sign (/readyz,
    /// readiness): a key whose PCR policy no longer matches is live, not ready.
    Health {
        #[arg(long, env = "JSS_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long)]
        ready: bool,
    },
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
    Inspect(jss::inspect::InspectArgs),
    /// Serve the CSI node plugin (driver csi.jss.dev): inline volumes that
    /// carry the JSS socket into pods that may not mount hostPath.
    Csi(jss::csi::CsiArgs),
}

fn main() -> ExitCode {
    jss::logging::init();
    match run(Cli::parse().cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jss: {}", jss::logging::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Serve { config } => {
            let cfg = jss::config::Config::load(&config)?;
            runtime()?.block_on(jss::server::run(cfg))?;
            Ok(())
        }
        Cmd::Token(args) => Ok(cli::token(args)?),
        Cmd::Secrets(args) => Ok(cli::secrets(*args)?),
        Cmd::Health { socket, ready } => {
            runtime()?.block_on(jss::client::get(
                &socket,
                if ready { "/readyz" } else { "/healthz" },
                Duration::from_secs(5),
            ))?;
            Ok(())
        }
        Cmd::Csi(args) => {
            let cfg = jss::config::Config::load(&args.config)?;
            runtime()?.block_on(jss::csi::run(cfg, &args))?;
            Ok(())
        }
        Cmd::Inspect(args) => {
            let report = jss::inspect::run(&args)?;
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
