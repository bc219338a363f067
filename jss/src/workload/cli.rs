//! The workload commands (`token`, `secrets`) as one clap definition, shared
//! by `jss` and by `jss-agent`, the binary that holds only the workload side
//! (no TPM stack, no server): a sidecar in every pod should cost what it
//! does, not what the daemon's code and libraries do (README, "jss-agent").

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::client::{ClientError, DEFAULT_SOCKET};
use crate::token::TokenError;
use crate::workload::secrets::{self, SecretsArgs, SecretsError};
use crate::workload::shutdown::Shutdown;
use crate::workload::token_file::{self, TokenFileConfig, TokenFileError};

/// `token`: ask the local JSS for a token for this process and print it, or
/// keep it in a file (`--out`, `--refresh`) for an agent to read.
#[derive(Args, Debug)]
pub struct TokenArgs {
    #[arg(long, env = "JSS_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Audience (must be allowed by the daemon; default: its first).
    #[arg(long)]
    pub audience: Option<String>,
    /// Print the decoded header and claims instead of the token.
    #[arg(long)]
    pub decode: bool,
    #[arg(long, default_value = "40")]
    pub timeout_seconds: u64,
    /// Write the token to this file (atomically) instead of printing it.
    #[arg(long, conflicts_with = "decode")]
    pub out: Option<PathBuf>,
    /// Keep running and rewrite the file before each token's half-life.
    #[arg(long, requires = "out")]
    pub refresh: bool,
    /// Mode of the token file (octal).
    #[arg(long, default_value = "0644", value_parser = secrets::parse_mode)]
    pub mode: u32,
}

/// Why a workload command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    TokenFile(#[from] TokenFileError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot decode the token JSS returned")]
    Decode(#[from] TokenError),
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error("cannot print the decoded token")]
    Print(#[from] serde_json::Error),
}

/// Runs `token`: prints the token (or its decoded header and claims), or
/// writes it to `--out` once or, with `--refresh`, until SIGTERM/SIGINT.
///
/// # Errors
/// The daemon's refusal or an unreachable socket ([`ClientError`]), a file
/// that cannot be written ([`TokenFileError`]).
pub fn token(args: TokenArgs) -> Result<(), CliError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    let timeout = Duration::from_secs(args.timeout_seconds);
    if let Some(out) = args.out {
        let cfg = TokenFileConfig {
            socket: args.socket,
            audience: args.audience,
            out,
            mode: args.mode,
            timeout,
        };
        return rt
            .block_on(async {
                if args.refresh {
                    token_file::refresh(&cfg, Shutdown::install()?).await
                } else {
                    token_file::write_once(&cfg).await
                }
            })
            .map_err(CliError::from);
    }
    let resp = rt.block_on(crate::client::fetch_token(
        &args.socket,
        args.audience.as_deref(),
        timeout,
    ))?;
    if args.decode {
        let (header, claims) = crate::token::decode_unverified(&resp.token)?;
        let out = serde_json::json!({"header": header, "claims": claims});
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{}", resp.token);
    }
    Ok(())
}

/// Runs `secrets` (see [`secrets::run`]).
///
/// # Errors
/// As [`secrets::run`].
pub fn secrets(args: SecretsArgs) -> Result<(), CliError> {
    Ok(secrets::run(args)?)
}
