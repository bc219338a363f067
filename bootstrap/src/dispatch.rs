//! Dispatch: runs a parsed command line (`cli`) on a current-thread
//! runtime and routes it to the command modules.

use std::io::Write;

use jss::signer::KeyPolicy;

use crate::Error;
use crate::cli::{Cli, ClusterCmd, Cmd, DiscoveryCmd, NodeCmd, RegisterArgs, holder_id};
use crate::cluster::{self, ClusterSpec};
use crate::csr;
use crate::lock::LockSpec;
use crate::node::{self, SignSpec};
use crate::policy::Paths;
use crate::prune::{self, PruneSpec};
use crate::register::Target;

/// Runs a parsed command, writing its report to `out`.
pub fn run(cli: Cli, out: &mut dyn Write) -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    rt.block_on(dispatch(cli, out))
}

async fn dispatch(cli: Cli, out: &mut dyn Write) -> Result<(), Error> {
    match cli.cmd {
        Cmd::Cluster(ClusterCmd::Init(a)) => {
            a.cluster.check()?;
            csr::check_name("region", &a.region)?;
            let v = a.vault.connect(a.cluster.paths().cluster_init()).await?;
            let spec = ClusterSpec {
                cluster: a.cluster.cluster.clone(),
                region: a.region.clone(),
                mount: a.cluster.mount(),
                pki_mount: a.cluster.pki_mount.clone(),
                kv_mount: a.cluster.kv_mount.clone(),
                issuer: a
                    .issuer
                    .clone()
                    .unwrap_or_else(|| format!("jss://{}", a.cluster.cluster)),
                role: a.role.clone(),
                audience: a.audience.clone(),
                token_ttl: a.token_ttl.clone(),
                root_cn: a.root_cn.clone(),
                root_ttl: a.root_ttl.clone(),
                keys: a.keys,
                jwks_url: a.jwks_url.clone(),
                jwks_ca_pem: match &a.jwks_ca_pem {
                    Some(p) => Some(std::fs::read_to_string(p).map_err(|e| {
                        Error::Usage(format!("cannot read --jwks-ca-pem {}: {e}", p.display()))
                    })?),
                    None => None,
                },
                jwks_wait: std::time::Duration::from_secs(a.jwks_wait),
                tsi_compat: a.tsi_compat,
                spiffe_trust_domain: a.spiffe_trust_domain.clone(),
            };
            for s in cluster::init(&v, &spec, &a.cluster.target("cluster-init")).await? {
                let _ = writeln!(out, "{s}");
            }
            Ok(())
        }
        Cmd::Cluster(ClusterCmd::Prune(a)) => {
            a.cluster.check()?;
            let v = a.vault.connect(a.cluster.paths().prune()).await?;
            let spec = PruneSpec {
                mount: a.cluster.mount(),
                older_than: a.older_than,
                dry_run: a.dry_run,
                rate: a.rate,
            };
            prune::prune(&v, &spec, out).await?;
            Ok(())
        }
        Cmd::Cluster(ClusterCmd::Status(a)) => {
            a.cluster.check()?;
            let v = a.vault.connect(a.cluster.paths().status()).await?;
            let within = std::time::Duration::from_secs(a.expiring_within * 3600);
            crate::view::status(&v, &a.cluster.target("status"), within, out).await?;
            Ok(())
        }
        Cmd::Cluster(ClusterCmd::Jwks(a)) => {
            a.cluster.check()?;
            let v = a.vault.connect(a.cluster.paths().discovery()).await?;
            let doc = crate::registry::jwks(
                a.cluster
                    .target("jwks")
                    .registry
                    .all(&v)
                    .await?
                    .into_values(),
            );
            let _ = writeln!(out, "{doc:#}");
            Ok(())
        }
        Cmd::Discovery(DiscoveryCmd::Serve(a)) => {
            a.cluster.check()?;
            let v = a.vault.connect(a.cluster.paths().discovery()).await?;
            crate::discovery::serve(v, &a).await?;
            Ok(())
        }
        Cmd::Node(NodeCmd::Init(k)) => {
            let s = node::open_key(&k.config(), KeyPolicy::CreateIfMissing, out)?;
            let _ = write!(out, "{}", s.public_key().spki_pem());
            Ok(())
        }
        Cmd::Node(NodeCmd::Register(a)) => register(&a, false, None, out).await,
        Cmd::Node(NodeCmd::Renew(a)) => register(&a.register, true, a.if_below, out).await,
        Cmd::Node(NodeCmd::Deregister(a)) => {
            a.cluster.check()?;
            let v = a.vault.connect(a.cluster.paths().deregister()).await?;
            let which = match (&a.node, &a.kid) {
                (Some(n), _) => crate::membership::Which::Node(n.clone()),
                (None, Some(k)) => crate::membership::Which::Kid(k.clone()),
                (None, None) => {
                    crate::membership::Which::Key(crate::membership::key_for_deregister(
                        a.public_key.as_deref(),
                        &a.key.config(),
                        out,
                    )?)
                }
            };
            let wait = std::time::Duration::from_secs(a.wait);
            crate::membership::deregister(&v, &a.cluster.target("deregister"), which, wait, out)
                .await?;
            Ok(())
        }
        Cmd::Node(NodeCmd::Status(a)) => {
            let Some(cluster) = &a.cluster else {
                crate::membership::status(&a.key.config(), None, out).await?;
                return Ok(());
            };
            let mount = a.mount.clone().unwrap_or_else(|| format!("jss-{cluster}"));
            let paths = Paths {
                mount: mount.clone(),
                pki_mount: a.pki_mount.clone(),
                kv_mount: a.kv_mount.clone(),
                lock_path: String::new(),
            };
            let v = a.vault.connect(paths.status()).await?;
            let target = Target {
                registry: crate::registry::Registry::new(&a.kv_mount, &mount),
                lock: LockSpec::for_mount(&a.kv_mount, &mount),
                mount,
                holder: holder_id("status"),
            };
            crate::membership::status(&a.key.config(), Some((&v, &target)), out).await?;
            Ok(())
        }
        Cmd::Node(NodeCmd::Csr(a)) => {
            let id = a.id.identity(&a.cluster)?;
            node::make_csr(&a.key.config(), &id, &a.out, out)?;
            Ok(())
        }
        Cmd::Node(NodeCmd::Sign(a)) => {
            a.cluster.check()?;
            let v = a.vault.connect(a.cluster.paths().register()).await?;
            let spec = SignSpec {
                pki_mount: a.cluster.pki_mount.clone(),
                ttl: a.ttl.clone(),
                target: a.cluster.target("sign"),
            };
            node::sign(&v, &a.csr, &a.cluster.cluster, &spec, &a.out, out).await?;
            Ok(())
        }
        Cmd::Node(NodeCmd::InstallChain(a)) => {
            node::install_chain(&a.key.config(), &a.chain, out)?;
            Ok(())
        }
    }
}

async fn register(
    a: &RegisterArgs,
    renew: bool,
    if_below: Option<f64>,
    out: &mut dyn Write,
) -> Result<(), Error> {
    a.cluster.check()?;
    let id = a.id.identity(&a.cluster.cluster)?;
    let v = a.vault.connect(a.cluster.paths().register()).await?;
    let spec = SignSpec {
        pki_mount: a.cluster.pki_mount.clone(),
        ttl: a.ttl.clone(),
        target: a.cluster.target(&id.node),
    };
    // `renew --if-below F` renews only under F; plain `renew` always does.
    let (below, force) = match (renew, if_below) {
        (true, Some(f)) => (f, false),
        (true, None) => (a.renew_below, true),
        (false, _) => (a.renew_below, false),
    };
    let key = a.key.config();
    let r = a.rotation.spec();
    if a.rotation.rotate {
        crate::rotate::rotate(&v, &key, &id, &spec, &r, out).await?;
        return Ok(());
    }
    node::register(&v, &key, &id, &spec, below, force, out).await?;
    crate::rotate::finish_pending(&v, &key, &id, &spec, &r, out).await?;
    Ok(())
}
