//! `jss-bootstrap`: what the cluster installer runs on each node.

use clap::Parser as _;
use jss_bootstrap::Cli;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, not for a pipe, a file or
        // journald (jss-bootstrap.service, the DaemonSet's init container).
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                // vaultrs logs expected 404s (absent mounts, roles) as errors.
                "warn,vaultrs=off,rustify=off".into()
            }),
        )
        .init();
    let cli = Cli::parse();
    jss_bootstrap::run(cli, &mut std::io::stdout().lock())?;
    Ok(())
}
