//! `jss`: the node daemon and its operator commands.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use jss::client::DEFAULT_SOCKET;

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
    Token {
        #[arg(long, env = "JSS_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Audience (must be allowed by the daemon; default: its first).
        #[arg(long)]
        audience: Option<String>,
        /// Print the decoded header and claims instead of the token.
        #[arg(long)]
        decode: bool,
        #[arg(long, default_value = "40")]
        timeout_seconds: u64,
        /// Write the token to this file (atomically) instead of printing it.
        #[arg(long, conflicts_with = "decode")]
        out: Option<PathBuf>,
        /// Keep running and rewrite the file before each token's half-life.
        #[arg(long, requires = "out")]
        refresh: bool,
        /// Mode of the token file (octal).
        #[arg(long, default_value = "0644", value_parser = jss::workload::secrets::parse_mode)]
        mode: u32,
    },
    /// Write the secrets a `tsi.secrets` annotation names into files and keep
    /// them fresh (TSI's sidecar), or `exec` a command with secrets in its environment.
    Secrets(Box<jss::workload::secrets::SecretsArgs>),
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
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, not for journald or a file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match run(Cli::parse().cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jss: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, leaving out causes its message already quotes.
fn error_chain(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
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
        Cmd::Token {
            socket,
            audience,
            timeout_seconds,
            out: Some(out),
            refresh,
            mode,
            ..
        } => {
            use jss::workload::{shutdown::Shutdown, token_file};
            let cfg = token_file::TokenFileConfig {
                socket,
                audience,
                out,
                mode,
                timeout: Duration::from_secs(timeout_seconds),
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            rt.block_on(async {
                if refresh {
                    token_file::refresh(&cfg, Shutdown::install()?).await
                } else {
                    token_file::write_once(&cfg).await
                }
            })?;
            Ok(())
        }
        Cmd::Token {
            socket,
            audience,
            decode,
            timeout_seconds,
            out: None,
            ..
        } => {
            let resp = runtime()?.block_on(jss::client::fetch_token(
                &socket,
                audience.as_deref(),
                Duration::from_secs(timeout_seconds),
            ))?;
            if decode {
                let (header, claims) = jss::token::decode_unverified(&resp.token)?;
                let out = serde_json::json!({"header": header, "claims": claims});
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!("{}", resp.token);
            }
            Ok(())
        }
        Cmd::Secrets(args) => Ok(jss::workload::secrets::run(*args)?),
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
