//! Arguments of the `node` commands that register, renew, deregister and
//! inspect a node, and of the split flow (moved out of `cli.rs`).

use std::path::PathBuf;

use clap::Args;

use crate::cli::{ClusterArgs, KeyArgs, NodeIdArgs, VaultArgs};

#[derive(Args, Clone, Debug)]
pub struct RegisterArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub id: NodeIdArgs,
    #[command(flatten)]
    pub vault: VaultArgs,
    /// Lifetime of the node CA certificate.
    #[arg(long, default_value = "720h")]
    pub ttl: String,
    /// Re-sign an existing certificate once this share of its lifetime is left.
    #[arg(long, default_value_t = 0.2)]
    pub renew_below: f64,
    #[command(flatten)]
    pub rotation: crate::rotate_args::RotateArgs,
}

#[derive(Args, Clone, Debug)]
pub struct RenewArgs {
    #[command(flatten)]
    pub register: RegisterArgs,
    /// Only renew when less than this share of the lifetime is left (for timers).
    #[arg(long)]
    pub if_below: Option<f64>,
}

#[derive(Args, Clone, Debug)]
pub struct DeregisterArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub vault: VaultArgs,
    /// Deregister this public key (SPKI PEM) instead of the node key in --state-dir.
    #[arg(long, conflicts_with_all = ["node", "kid"])]
    pub public_key: Option<PathBuf>,
    /// Deregister the node of this name (from the registry; no TPM needed).
    #[arg(long, conflicts_with = "kid")]
    pub node: Option<String>,
    /// Deregister the node whose key has this kid (from the registry).
    #[arg(long)]
    pub kid: Option<String>,
    /// JWKS mode: seconds to wait for the JWKS to drop the key.
    #[arg(long, default_value_t = 60)]
    pub wait: u64,
}

#[derive(Args, Clone, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    #[command(flatten)]
    pub vault: VaultArgs,
    /// Check the registration in this cluster's mount (needs a Vault token).
    #[arg(long, env = "JSS_CLUSTER")]
    pub cluster: Option<String>,
    /// JWT auth mount [default: jss-<cluster>]
    #[arg(long)]
    pub mount: Option<String>,
    /// PKI mount (named in the policy printed on 403).
    #[arg(long, default_value = "pki")]
    pub pki_mount: String,
    /// KV-v2 mount holding the node registry.
    #[arg(long, default_value = "secret")]
    pub kv_mount: String,
}

#[derive(Args, Clone, Debug)]
pub struct CsrArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    /// Cluster name.
    #[arg(long, env = "JSS_CLUSTER")]
    pub cluster: String,
    #[command(flatten)]
    pub id: NodeIdArgs,
    /// Where to write the CSR (PEM).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args, Clone, Debug)]
pub struct SignArgs {
    /// The node's CSR (from `jss-bootstrap node csr`).
    #[arg(long)]
    pub csr: PathBuf,
    /// Where to write the chain (node certificate, then root; PEM).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub vault: VaultArgs,
    /// Lifetime of the node CA certificate.
    #[arg(long, default_value = "720h")]
    pub ttl: String,
}

#[derive(Args, Clone, Debug)]
pub struct InstallChainArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    /// The chain from `jss-bootstrap node sign`.
    pub chain: PathBuf,
}
