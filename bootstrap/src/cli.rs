//! Command line: arguments and Vault settings from flags and environment
//! (run by `dispatch`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use jss::signer::{self, PcrSelection, SignerConfig, SignerKind};

use crate::Error;
use crate::csr::{self, NodeIdentity};
use crate::lock::LockSpec;
pub use crate::node_args::{
    CsrArgs, DeregisterArgs, InstallChainArgs, RegisterArgs, RenewArgs, SignArgs, StatusArgs,
};
use crate::policy::Paths;
use crate::register::Target;
use crate::vault::{Secret, Vault, VaultError, VaultSettings};

#[derive(Parser, Debug)]
#[command(
    name = "jss-bootstrap",
    version,
    about = "Node key, CSR, Vault PKI signing and registration for JSS"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Cluster operations (run once per cluster, by the installer).
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Node operations.
    #[command(subcommand)]
    Node(NodeCmd),
    /// The cluster's OIDC discovery provider (JWKS mode).
    #[command(subcommand)]
    Discovery(DiscoveryCmd),
}

#[derive(Subcommand, Debug)]
pub enum DiscoveryCmd {
    /// Serve /.well-known/openid-configuration and the JWKS over HTTPS, built from the registry.
    Serve(crate::discovery::ServeArgs),
}

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Set up Vault for a cluster: PKI root, JWT auth mount, role, policies. Idempotent.
    Init(Box<ClusterInitArgs>),
    /// Delete the identity entities of workloads idle for longer than --older-than.
    Prune(ClusterPruneArgs),
    /// Show the key mode, the registered nodes, their kids and expiring certificates.
    Status(ClusterViewArgs),
    /// Print the cluster's JWKS (the document `discovery serve` serves).
    Jwks(ClusterViewArgs),
}

#[derive(Args, Clone, Debug)]
pub struct ClusterViewArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub vault: VaultArgs,
    /// Flag certificates that expire within this many hours.
    #[arg(long, default_value_t = 168)]
    pub expiring_within: u64,
}

/// Where the mount takes its keys from.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeysMode {
    /// jwt_validation_pubkeys: every key in the mount config (small clusters).
    Static,
    /// jwks_url: the discovery server's JWKS, key picked by kid.
    Jwks,
}

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// Create the node key if absent and print its public key and kid.
    Init(KeyArgs),
    /// Get the node CA certificate from Vault and register the node key. Idempotent.
    Register(RegisterArgs),
    /// Re-sign the node certificate (same key) and make sure the key is registered.
    Renew(RenewArgs),
    /// Remove a node key from the cluster's JWT auth mount.
    Deregister(DeregisterArgs),
    /// Show the key backend, kid, certificate and registration.
    Status(StatusArgs),
    /// Split flow, on the node: write a CSR signed by the node key.
    Csr(CsrArgs),
    /// Split flow, where the Vault credentials are: sign a CSR and register its key.
    Sign(SignArgs),
    /// Split flow, back on the node: install the signed chain.
    InstallChain(InstallChainArgs),
}

#[derive(Args, Clone, Debug)]
pub struct KeyArgs {
    /// State directory holding the node key and chain.
    #[arg(long, default_value = "/var/lib/jss")]
    pub state_dir: PathBuf,
    /// Where the node key lives: tpm (fail without one), software, or auto.
    #[arg(long, default_value = "tpm")]
    pub signer: SignerKind,
    /// TPM connection: device:/dev/tpmrm0, swtpm:host=H,port=P or tabrmd.
    #[arg(long, env = "JSS_TCTI", default_value = signer::DEFAULT_TCTI)]
    pub tcti: String,
    /// PCRs (SHA-256 bank) a new TPM key is bound to: e.g. 7 or 0,7, or
    /// none. Default 7 (Secure Boot state) for a TPM key; a software key
    /// cannot be bound. An existing key keeps its binding.
    #[arg(long)]
    pub pcrs: Option<PcrSelection>,
}

impl KeyArgs {
    pub fn config(&self) -> SignerConfig {
        SignerConfig {
            kind: self.signer,
            tcti: self.tcti.clone(),
            state_dir: self.state_dir.clone(),
            pcrs: self.pcrs.clone(),
        }
    }
}

/// How to reach Vault. The token comes from --token-file, VAULT_TOKEN or
/// BAO_TOKEN (never a flag: it would show in `ps`).
#[derive(Args, Clone, Debug)]
pub struct VaultArgs {
    /// Vault address [env: VAULT_ADDR, then BAO_ADDR; default http://127.0.0.1:8200]
    #[arg(long)]
    pub vault_addr: Option<String>,
    /// File holding the Vault token (instead of VAULT_TOKEN).
    #[arg(long, env = "JSS_VAULT_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The token is a response-wrapping token: unwrap it first (single use).
    #[arg(long)]
    pub wrapped_token: bool,
    /// CA bundle to verify Vault's TLS certificate [env: VAULT_CACERT or BAO_CACERT]
    #[arg(long)]
    pub vault_cacert: Option<PathBuf>,
    /// Vault Enterprise / OpenBao namespace [env: VAULT_NAMESPACE or BAO_NAMESPACE]
    #[arg(long)]
    pub vault_namespace: Option<String>,
    /// Attempts per Vault call when it fails transiently (1 = no retry).
    #[arg(long, default_value_t = 5)]
    pub vault_attempts: u32,
}

fn env_either(a: &str, b: &str) -> Option<String> {
    std::env::var(a)
        .ok()
        .or_else(|| std::env::var(b).ok())
        .filter(|s| !s.is_empty())
}

impl VaultArgs {
    pub fn settings(&self) -> Result<VaultSettings, VaultError> {
        let token = match &self.token_file {
            Some(p) => std::fs::read_to_string(p)
                .map(|t| t.trim().to_string())
                .map_err(|source| VaultError::TokenFile {
                    path: p.clone(),
                    source,
                })?,
            None => env_either("VAULT_TOKEN", "BAO_TOKEN").unwrap_or_default(),
        };
        Ok(VaultSettings {
            addr: self
                .vault_addr
                .clone()
                .or_else(|| env_either("VAULT_ADDR", "BAO_ADDR"))
                .unwrap_or_else(|| "http://127.0.0.1:8200".into()),
            token: Secret::new(token),
            wrapped: self.wrapped_token,
            cacert: self
                .vault_cacert
                .clone()
                .or_else(|| env_either("VAULT_CACERT", "BAO_CACERT").map(PathBuf::from)),
            namespace: self
                .vault_namespace
                .clone()
                .or_else(|| env_either("VAULT_NAMESPACE", "BAO_NAMESPACE")),
            attempts: self.vault_attempts,
        })
    }

    pub async fn connect(&self, policy: String) -> Result<Vault, VaultError> {
        Vault::connect(&self.settings()?, policy).await
    }
}

/// Which cluster, and the Vault mounts it uses.
#[derive(Args, Clone, Debug)]
pub struct ClusterArgs {
    /// Cluster name.
    #[arg(long, env = "JSS_CLUSTER")]
    pub cluster: String,
    /// JWT auth mount of the cluster [default: jss-<cluster>]
    #[arg(long)]
    pub mount: Option<String>,
    /// PKI mount holding the root CA.
    #[arg(long, default_value = "pki")]
    pub pki_mount: String,
    /// KV-v2 mount for the registration lock (and the ti-demo secrets).
    #[arg(long, default_value = "secret")]
    pub kv_mount: String,
    /// Seconds a registrant may hold the registration lock.
    #[arg(long, default_value_t = 30)]
    pub lock_ttl: u64,
    /// Seconds to wait for the registration lock.
    #[arg(long, default_value_t = 120)]
    pub lock_wait: u64,
}

impl ClusterArgs {
    pub fn mount(&self) -> String {
        self.mount
            .clone()
            .unwrap_or_else(|| format!("jss-{}", self.cluster))
    }

    pub fn target(&self, who: &str) -> Target {
        let mount = self.mount();
        let mut lock = LockSpec::for_mount(&self.kv_mount, &mount);
        lock.ttl = std::time::Duration::from_secs(self.lock_ttl.max(10));
        lock.wait = std::time::Duration::from_secs(self.lock_wait);
        Target {
            registry: crate::registry::Registry::new(&self.kv_mount, &mount),
            mount,
            lock,
            holder: holder_id(who),
        }
    }

    pub fn paths(&self) -> Paths {
        let mount = self.mount();
        Paths {
            lock_path: LockSpec::for_mount(&self.kv_mount, &mount).path,
            mount,
            pki_mount: self.pki_mount.clone(),
            kv_mount: self.kv_mount.clone(),
        }
    }

    pub(crate) fn check(&self) -> Result<(), Error> {
        csr::check_name("cluster name", &self.cluster)?;
        csr::check_name("mount", &self.mount())?;
        csr::check_name("pki mount", &self.pki_mount)?;
        csr::check_name("kv mount", &self.kv_mount)?;
        Ok(())
    }
}

/// Tells lock holders apart in errors, and lets a re-run on this node take
/// over a lock its killed predecessor left (see [`crate::lock::holder_id`]).
pub(crate) fn holder_id(who: &str) -> String {
    crate::lock::holder_id(who)
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

#[derive(Args, Clone, Debug)]
pub struct ClusterInitArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub vault: VaultArgs,
    /// Cluster region (pinned by the role's bound_claims).
    #[arg(long, env = "JSS_REGION")]
    pub region: String,
    /// Token issuer, Vault's bound_issuer [default: jss://<cluster>]
    #[arg(long)]
    pub issuer: Option<String>,
    /// Role name on the JWT mount (also the mount's default role).
    #[arg(long, default_value = "jss")]
    pub role: String,
    /// Audience the role accepts.
    #[arg(long, default_value = "vault")]
    pub audience: String,
    /// TTL of the Vault tokens a login gives (short: tokens are re-minted).
    #[arg(long, default_value = "5m")]
    pub token_ttl: String,
    /// Common name of the root CA, if one is created.
    #[arg(long, default_value = "JSS root CA")]
    pub root_cn: String,
    /// TTL of the root CA, if one is created (also the PKI mount's max TTL).
    #[arg(long, default_value = "87600h")]
    pub root_ttl: String,
    /// Key source of the mount; on an existing cluster, switches it live
    /// [default: keep the current one; static for a new mount]
    #[arg(long, value_enum)]
    pub keys: Option<KeysMode>,
    /// JWKS URL Vault fetches (--keys jwks): the discovery server's /keys.
    #[arg(long, required_if_eq("keys", "jwks"))]
    pub jwks_url: Option<String>,
    /// CA certificate (PEM) that verifies the JWKS URL's TLS certificate.
    #[arg(long)]
    pub jwks_ca_pem: Option<PathBuf>,
    /// Seconds to wait for the JWKS to serve every registered key before switching.
    #[arg(long, default_value_t = 60)]
    pub jwks_wait: u64,
    /// Also TSI's constraint roles tsi-role-r|ri|rcn|rcni with policies
    /// tsi-r|ri|rcn|rcni on secret/tsi-<kind>/<claims>/* (`tsi.secret/constraints`).
    #[arg(long)]
    pub tsi_compat: bool,
    /// Also a role `<role>-spiffe` for JWT-SVIDs of this SPIFFE trust domain
    /// (`sub` spiffe://<domain>/*, user_claim jss-sub; README.md, "Using JSS
    /// from SPIFFE clients").
    #[arg(long)]
    pub spiffe_trust_domain: Option<String>,
}

#[derive(Args, Clone, Debug)]
pub struct ClusterPruneArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub vault: VaultArgs,
    /// Prune entities whose last login is older than this (e.g. 7d, 36h);
    /// must exceed every role's token max TTL.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    pub older_than: std::time::Duration,
    /// Report what would be pruned; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Vault calls per second for the per-entity reads and deletions.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: u32,
}

/// Who the node is and where it registers.
#[derive(Args, Clone, Debug)]
pub struct NodeIdArgs {
    /// Cluster region.
    #[arg(long, env = "JSS_REGION")]
    pub region: String,
    /// Node name [default: NODE_NAME, then the hostname]
    #[arg(long, env = "NODE_NAME")]
    pub node: Option<String>,
}

impl NodeIdArgs {
    pub(crate) fn identity(&self, cluster: &str) -> Result<NodeIdentity, Error> {
        let node = self
            .node
            .clone()
            .or_else(hostname)
            .ok_or(Error::NoNodeName)?;
        Ok(NodeIdentity::new(&node, cluster, &self.region)?)
    }
}
