//! `jss-bootstrap`: what the cluster installer runs. It sets up Vault for a
//! cluster (`cluster init`) and enrols nodes: node key, CSR signed by that key,
//! Vault PKI signature, `chain.pem`, and the key registered in the cluster's
//! JWT auth mount (docs/design.md, "Vault layout").
//!
//! The binary is a thin `main`; the library lets the integration tests run
//! the very same commands in-process.

pub mod cli;
mod cluster;
pub mod csr;
mod daemon;
mod discovery;
mod dispatch;
mod jwks;
mod lock;
mod membership;
mod migrate;
mod node;
mod node_args;
mod pki;
mod policy;
mod prune;
mod register;
mod registry;
mod rotate;
mod rotate_args;
mod vault;
mod view;

pub use cli::Cli;
pub use dispatch::run;

/// Every way a command can fail; each source carries what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Vault(#[from] vault::VaultError),
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    #[error(transparent)]
    Node(#[from] node::NodeError),
    #[error(transparent)]
    Prune(#[from] prune::PruneError),
    #[error(transparent)]
    Csr(#[from] csr::CsrError),
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
    #[error(transparent)]
    View(#[from] view::ViewError),
    #[error(transparent)]
    Discovery(#[from] discovery::DiscoveryError),
    #[error("no node name: pass --node or set NODE_NAME")]
    NoNodeName,
    #[error("{0}")]
    Usage(String),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// Parses `args` (argv, program name first) and runs the command.
pub fn run_args<I, T>(args: I, out: &mut dyn std::io::Write) -> Result<(), Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::Parser as _;
    match Cli::try_parse_from(args) {
        Ok(cli) => run(cli, out),
        Err(e) => Err(Error::Usage(e.to_string())),
    }
}
