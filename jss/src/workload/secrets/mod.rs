//! `jss secrets`: TSI's secret sidecar fed by the attested JSS token, and
//! `jss secrets exec` (environment references resolved before exec).
//!
//! `spec` parses the `tsi.secrets` annotation, `paths` builds Vault and
//! local paths, `vault` is the Vault client, `session` holds the logins,
//! `output` writes files, `sidecar` runs passes, `exec` resolves and execs.

pub mod exec;
pub mod output;
pub mod paths;
pub mod session;
pub mod sidecar;
pub mod spec;
pub mod vault;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use session::{Session, SessionConfig};
use sidecar::{OutputConfig, SidecarConfig};
use vault::{VaultSettings, VaultrsStore};

use crate::workload::shutdown::{Shutdown, ShutdownError};

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("cannot read the secrets spec {path}: {source}")]
    ReadSpec {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Spec {
        path: PathBuf,
        #[source]
        source: spec::SpecError,
    },
    #[error(
        "output directory {0} does not exist: mount the secrets volume there (an emptyDir with medium: Memory)"
    )]
    NoOutDir(PathBuf),
    #[error(transparent)]
    Vault(#[from] vault::VaultError),
    #[error(transparent)]
    Shutdown(#[from] ShutdownError),
    #[error("{failed} of {total} secrets not written:\n{lines}")]
    Incomplete {
        failed: usize,
        total: usize,
        lines: String,
    },
    #[error(transparent)]
    Exec(#[from] exec::ExecError),
    #[error("{0}")]
    Usage(&'static str),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// How to reach JSS and Vault (both `jss secrets` and `jss secrets exec`).
#[derive(Debug, Clone, clap::Args)]
pub struct ConnArgs {
    /// The JSS socket.
    #[arg(long, env = "JSS_SOCKET", default_value = crate::client::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Token audience (default: the daemon's first).
    #[arg(long)]
    pub audience: Option<String>,
    /// JWT auth mount, e.g. `auth/jss-prod-1` (default: `jss-<cluster-name claim>`).
    #[arg(long)]
    pub auth_mount: Option<String>,
    /// Per request to Vault, and to JSS.
    #[arg(long, default_value = "30")]
    pub timeout_seconds: u64,
}

impl ConnArgs {
    fn session(&self) -> Result<Session<VaultrsStore>, SecretsError> {
        let timeout = Duration::from_secs(self.timeout_seconds);
        let store = VaultrsStore::new(&VaultSettings::from_env(timeout)?)?;
        Ok(Session::new(
            store,
            SessionConfig {
                socket: self.socket.clone(),
                audience: self.audience.clone(),
                auth_mount: self.auth_mount.clone(),
                jss_timeout: timeout,
            },
        ))
    }
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct SecretsArgs {
    #[command(subcommand)]
    pub cmd: Option<SecretsCmd>,
    #[command(flatten)]
    pub files: FilesArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum SecretsCmd {
    /// Replace `vault:<path>#<key>` environment values by the secrets, then
    /// exec the command in place of this process.
    Exec(ExecArgs),
}

#[derive(Debug, clap::Args)]
pub struct FilesArgs {
    /// A file holding the `tsi.secrets` annotation (YAML), e.g. projected by the downward API.
    #[arg(long, required = true)]
    pub spec: Option<PathBuf>,
    /// Output directory (must exist): files go to `<local-path>/<name>` below it.
    #[arg(long, required = true)]
    pub out: Option<PathBuf>,
    /// Write every secret once and exit (init containers, Jobs).
    #[arg(long)]
    pub once: bool,
    #[arg(long, value_enum, default_value = "json")]
    pub format: output::Format,
    /// Mode of the secret files (octal).
    #[arg(long, default_value = "0644", value_parser = parse_mode)]
    pub file_mode: u32,
    /// Seconds between refreshes.
    #[arg(long, default_value = "600")]
    pub refresh_seconds: u64,
    /// Seconds between attempts until the first complete success.
    #[arg(long, default_value = "10")]
    pub retry_seconds: u64,
    /// Created after the first complete success (for a startupProbe).
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Run with `sh -c` after a pass that changed or removed a file.
    #[arg(long)]
    pub on_change: Option<String>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// Vault role to log in with.
    #[arg(long, default_value = "jss")]
    pub role: String,
    #[command(flatten)]
    pub conn: ConnArgs,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true)]
    pub command: Vec<OsString>,
}

/// An octal file mode such as `0644` or `0o600`.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.trim_start_matches("0o");
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!("{s:?} is not an octal file mode such as 0644")),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, SecretsError> {
    // One thread: a sidecar does one thing at a time, and stays small.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(SecretsError::Runtime)
}

/// Runs `jss secrets` or `jss secrets exec`. `exec` returns only on failure.
pub fn run(args: SecretsArgs) -> Result<(), SecretsError> {
    match args.cmd {
        Some(SecretsCmd::Exec(a)) => run_exec(a),
        None => run_files(args.files),
    }
}

fn run_files(a: FilesArgs) -> Result<(), SecretsError> {
    let (Some(spec_path), Some(dir)) = (a.spec, a.out) else {
        return Err(SecretsError::Usage(
            "jss secrets needs --spec FILE and --out DIR",
        ));
    };
    let text = std::fs::read_to_string(&spec_path).map_err(|source| SecretsError::ReadSpec {
        path: spec_path.clone(),
        source,
    })?;
    let items = spec::parse(&text).map_err(|source| SecretsError::Spec {
        path: spec_path,
        source,
    })?;
    if !dir.is_dir() {
        return Err(SecretsError::NoOutDir(dir));
    }
    let out = OutputConfig {
        dir,
        format: a.format,
        file_mode: a.file_mode,
    };
    let mut session = a.conn.session()?;
    let rt = runtime()?;
    if a.once {
        let report = rt.block_on(async {
            let r = sidecar::pass(&mut session, &items, &out).await;
            session.revoke_all().await;
            r
        });
        let failures = report.failures();
        if failures.is_empty() {
            return Ok(());
        }
        return Err(SecretsError::Incomplete {
            failed: failures.len(),
            total: items.len(),
            lines: failures.join("\n"),
        });
    }
    let cfg = SidecarConfig {
        refresh: Duration::from_secs(a.refresh_seconds.max(1)),
        retry: Duration::from_secs(a.retry_seconds.max(1)),
        ready_file: a.ready_file,
        on_change: a.on_change,
    };
    rt.block_on(async {
        let shutdown = Shutdown::install()?;
        sidecar::run(session, &items, &out, &cfg, shutdown).await;
        Ok(())
    })
}

fn run_exec(a: ExecArgs) -> Result<(), SecretsError> {
    let refs = exec::references(std::env::vars_os())?;
    let Some((cmd, args)) = a.command.split_first() else {
        return Ok(());
    };
    let values = if refs.is_empty() {
        Vec::new()
    } else {
        let mut session = a.conn.session()?;
        runtime()?.block_on(async {
            let r = exec::resolve(&mut session, &a.role, &refs).await;
            // The app needs the values, not our Vault token.
            session.revoke_all().await;
            r
        })?
    };
    tracing::info!(resolved = values.len(), command = %cmd.to_string_lossy(), "exec");
    Err(exec::exec(cmd, args, values).into())
}
