//! `jss-agent`: the workload side of JSS alone, for pods (`jss-agent token`,
//! `jss-agent secrets`; the same commands and flags as `jss token` and
//! `jss secrets`). It links neither the TPM stack nor the daemon, so an
//! injected sidecar's resident memory is its own (README, "jss-agent").

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use jss::workload::cli::{self, TokenArgs};
use jss::workload::secrets::SecretsArgs;

#[derive(Parser)]
#[command(
    name = "jss-agent",
    version,
    about = "JSS's workload side: token files and secrets from the node's attested token"
)]
struct Agent {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Ask the local JSS for a token for this process and print it, or
    /// keep it in a file (`--out`, `--refresh`) for an agent to read.
    Token(TokenArgs),
    /// Write the secrets a `tsi.secrets` annotation names into files and keep
    /// them fresh (TSI's sidecar), or `exec` a command with secrets in its environment.
    Secrets(Box<SecretsArgs>),
}

fn main() -> ExitCode {
    jss::logging::init();
    let done = match Agent::parse().cmd {
        Cmd::Token(args) => cli::token(args),
        Cmd::Secrets(args) => cli::secrets(*args),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jss-agent: {}", jss::logging::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
