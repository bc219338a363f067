//! `jss-injector serve`: the mutating admission webhook.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use jss_injector::config::{Config, Overrides, SidecarMode, SocketVolume};

#[derive(Parser)]
#[command(
    name = "jss-injector",
    version,
    about = "Mutating admission webhook: adds `jss secrets` to annotated pods"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Sidecar {
    Native,
    Container,
}

#[derive(Clone, Copy, ValueEnum)]
enum Socket {
    #[value(name = "hostPath")]
    HostPath,
    Csi,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve POST /mutate, /healthz and /metrics over HTTPS.
    Serve {
        /// TOML file with the settings below and more (README.md, "The injector").
        #[arg(long)]
        config: Option<PathBuf>,
        /// HOST:PORT (numeric IP); default 0.0.0.0:8443.
        #[arg(long)]
        listen: Option<String>,
        /// Serving certificate chain (PEM); re-read when it changes.
        #[arg(long)]
        tls_cert: Option<PathBuf>,
        /// Serving key (PEM); re-read when it changes.
        #[arg(long)]
        tls_key: Option<PathBuf>,
        /// JSS image for the injected containers.
        #[arg(long)]
        image: Option<String>,
        /// `native` (init container with restartPolicy Always, Kubernetes ≥ 1.29) or `container`.
        #[arg(long, value_enum)]
        sidecar: Option<Sidecar>,
        /// The JSS socket as a `hostPath` volume, or as an inline volume of the
        /// JSS CSI driver (`csi`: for clusters that run it; Pod Security restricted).
        #[arg(long, value_enum)]
        socket_volume: Option<Socket>,
        /// VAULT_ADDR for the injected containers.
        #[arg(long)]
        vault_addr: Option<String>,
        /// ConfigMap (in the pod's namespace) holding Vault's CA.
        #[arg(long)]
        vault_ca_config_map: Option<String>,
        /// Secret (in the pod's namespace) holding Vault's CA.
        #[arg(long)]
        vault_ca_secret: Option<String>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jss-injector: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let Cmd::Serve {
        config,
        listen,
        tls_cert,
        tls_key,
        image,
        sidecar,
        socket_volume,
        vault_addr,
        vault_ca_config_map,
        vault_ca_secret,
    } = Cli::parse().cmd;
    let flags = Overrides {
        listen,
        tls_cert,
        tls_key,
        image,
        sidecar: sidecar.map(|s| match s {
            Sidecar::Native => SidecarMode::Native,
            Sidecar::Container => SidecarMode::Container,
        }),
        socket_volume: socket_volume.map(|s| match s {
            Socket::HostPath => SocketVolume::HostPath,
            Socket::Csi => SocketVolume::Csi,
        }),
        vault_addr,
        vault_ca_config_map,
        vault_ca_secret,
    };
    let cfg = Config::load(config.as_deref(), flags)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(jss_injector::server::serve(cfg))?;
    Ok(())
}
