//! A whole registered cluster on one machine, for the workload-side tests:
//! a real OpenBao set up by `jss-bootstrap cluster init`, a swtpm-held node
//! key enrolled by `jss-bootstrap node register`, the kubelet stand-in
//! listing the given pods, and `jss serve`. Pods are real processes in
//! kubepods cgroups ([`Cluster::pod`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::bao::{Bao, ROOT_TOKEN};
use crate::daemon::{Daemon, bin};
use crate::kubelet::{Ctr, KubeletStandin, PodBuilder, pod_list};
use crate::node::spawn_in;
use crate::pods::{Layout, PodProcess, Qos, random_container_id, random_pod_uid};
use crate::swtpm::Swtpm;

pub const CLUSTER: &str = "EUCluster";
pub const REGION: &str = "eu-de";

/// `node register` of `node` in [`CLUSTER`]/[`REGION`] with its state in
/// `state_dir` and a `signer` key: the arguments every test starts from.
pub fn register_args<'a>(state_dir: &'a str, node: &'a str, signer: &'a str) -> Vec<&'a str> {
    vec![
        "node",
        "register",
        "--state-dir",
        state_dir,
        "--cluster",
        CLUSTER,
        "--region",
        REGION,
        "--node",
        node,
        "--signer",
        signer,
    ]
}
pub const MOUNT: &str = "jss-EUCluster";
/// The TSI demo pod's namespace and image.
pub const DEMO_NS: &str = "trusted-identity";
pub const DEMO_IMG: &str = "docker.io/library/ubuntu:24.04";

/// A pod the kubelet stand-in lists: one container.
#[derive(Debug, Clone)]
pub struct PodDef {
    pub uid: String,
    pub container_id: String,
    pub namespace: String,
    pub name: String,
    pub container: String,
    pub image: String,
}

impl PodDef {
    pub fn new(namespace: &str, name: &str, container: &str, image: &str) -> Self {
        Self {
            uid: random_pod_uid(),
            container_id: random_container_id(),
            namespace: namespace.into(),
            name: name.into(),
            container: container.into(),
            image: image.into(),
        }
    }

    /// The TSI demo's pod: namespace trusted-identity, one ubuntu container.
    pub fn tsi_demo() -> Self {
        Self::new(DEMO_NS, "myubuntu-698b8cb4b-n6xgk", "myubuntu", DEMO_IMG)
    }

    /// The pod as the kubelet lists it: its one container running.
    pub fn json(&self) -> serde_json::Value {
        PodBuilder::new(&self.uid, &self.namespace, &self.name)
            .container(Ctr::running(
                &self.container,
                &self.image,
                &self.container_id,
            ))
            .json()
    }

    /// The pod's `images` claim.
    pub fn images(&self) -> String {
        jss::claims::images_hash(&[self.image.as_str()])
    }

    /// `name` at this pod's ti-demo-all path (KV CLI form).
    pub fn ti_demo_all(&self, name: &str) -> String {
        format!(
            "secret/ti-demo-all/{REGION}/{CLUSTER}/{}/{}/{name}",
            self.namespace,
            self.images()
        )
    }

    /// `name` at this pod's ti-demo-ri path (KV CLI form).
    pub fn ti_demo_ri(&self, name: &str) -> String {
        format!("secret/ti-demo-ri/{REGION}/{}/{name}", self.images())
    }
}

pub struct Cluster {
    pub bao: Bao,
    pub dir: tempfile::TempDir,
    pub daemon: Daemon,
    kubelet: KubeletStandin,
    _tpm: Option<Swtpm>,
    /// The TPM connection every client uses (empty for a software key).
    pub tcti: String,
    _proxy: Option<crate::tpm_proxy::TpmProxy>,
}

/// How [`Cluster::start_node`] sets up the node key.
#[derive(Debug, Clone)]
pub struct NodeKey {
    /// `tpm` or `software`.
    pub signer: &'static str,
    /// `--pcrs` for registration (`None`: the default).
    pub pcrs: Option<&'static str>,
    /// Put the test tooling's TPM proxy in front of swtpm, so the daemon,
    /// `jss-bootstrap` and tpm2-tools can use the TPM at the same time.
    pub shared_tpm: bool,
}

impl NodeKey {
    /// A software key (no TPM).
    pub fn software() -> Self {
        Self {
            signer: "software",
            pcrs: None,
            shared_tpm: false,
        }
    }
}

impl Default for NodeKey {
    fn default() -> Self {
        Self {
            signer: "tpm",
            pcrs: None,
            shared_tpm: false,
        }
    }
}

/// The cgroup layout of this host: v2 if there is one, else v1.
pub fn layout() -> Layout {
    if Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists()
        || Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
    {
        Layout::V2Systemd(Qos::BestEffort)
    } else {
        Layout::V1Cgroupfs(Qos::BestEffort)
    }
}

/// Runs `jss-bootstrap ARGS` against `bao` with its root token; panics
/// with its output on failure.
pub fn bootstrap(bao: &Bao, args: &[&str]) -> String {
    let out = Command::new(bin("jss-bootstrap"))
        .args(args)
        .env("VAULT_ADDR", bao.addr())
        .env("VAULT_TOKEN", ROOT_TOKEN)
        .env("TSS2_LOG", "all+none")
        .env_remove("BAO_ADDR")
        .env_remove("BAO_TOKEN")
        .output()
        .unwrap_or_else(|e| panic!("jss-bootstrap: {e}"));
    assert!(
        out.status.success(),
        "jss-bootstrap {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Cluster {
    /// `cluster init` with `init_args` added, a TPM node registered, the
    /// daemon serving `pods` with `daemon_extra` TOML at the config's top level.
    pub fn start(init_args: &[&str], daemon_extra: &str, pods: &[&PodDef]) -> Self {
        Self::start_node(init_args, daemon_extra, pods, &NodeKey::default())
    }

    /// As [`Cluster::start`], with the node key set up as `key` says.
    pub fn start_node(
        init_args: &[&str],
        daemon_extra: &str,
        pods: &[&PodDef],
        key: &NodeKey,
    ) -> Self {
        let bao = Bao::start();
        let mut init = vec!["cluster", "init", "--cluster", CLUSTER, "--region", REGION];
        init.extend_from_slice(init_args);
        bootstrap(&bao, &init);
        let tpm = (key.signer == "tpm").then(Swtpm::start);
        let proxy = match &tpm {
            Some(t) if key.shared_tpm => Some(
                crate::tpm_proxy::TpmProxy::start(t.port(), std::time::Duration::ZERO, &[])
                    .unwrap_or_else(|e| panic!("TPM proxy: {e}")),
            ),
            _ => None,
        };
        let tcti = match (&proxy, &tpm) {
            (Some(p), _) => p.tcti(),
            (None, Some(t)) => t.tcti(),
            (None, None) => String::new(),
        };
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let state = dir.path().join("state");
        let state_s = state.display().to_string();
        let mut register = register_args(&state_s, "node-1", key.signer);
        register.extend(["--tcti", &tcti]);
        if let Some(p) = key.pcrs {
            register.extend(["--pcrs", p]);
        }
        bootstrap(&bao, &register);
        let kubelet =
            KubeletStandin::start(pod_list(&pods.iter().map(|p| p.json()).collect::<Vec<_>>()));
        std::fs::write(
            dir.path().join("machine-id"),
            "0f1e2d3c4b5a69788796a5b4c3d2e1f0\n",
        )
        .unwrap_or_else(|e| panic!("machine-id: {e}"));
        let d = dir.path().display();
        let config = format!(
            r#"socket = "{d}/jss.sock"
state_dir = "{d}/state"
cluster_name = "{CLUSTER}"
cluster_region = "{REGION}"
node_name = "node-1"
machine_id_path = "{d}/machine-id"
audiences = ["vault"]
audit_log = "{d}/audit.log"
{daemon_extra}
[signer]
kind = "{kind}"
tcti = "{tcti}"

[kubelet]
url = "{url}"
token_path = "{token}"
ca_path = "{ca}"
"#,
            kind = key.signer,
            url = kubelet.url(),
            token = kubelet.token_path().display(),
            ca = kubelet.ca_path().display(),
        );
        let daemon = Daemon::start(dir.path(), &config);
        Self {
            bao,
            dir,
            daemon,
            kubelet,
            _tpm: tpm,
            tcti,
            _proxy: proxy,
        }
    }

    /// The kubelet stand-in, to change the pods it lists.
    pub fn kubelet(&self) -> &KubeletStandin {
        &self.kubelet
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A process of `pod` (in its container's cgroup), killed on drop.
    pub fn pod(&self, pod: &PodDef) -> PodProcess {
        PodProcess::spawn(layout(), &pod.uid, &pod.container_id)
    }

    /// Starts `jss ARGS` in `pod`'s cgroup with the socket and Vault address
    /// in its environment (`env` then execs jss: the pid stays in the cgroup),
    /// plus `vars`; stdout and stderr piped.
    pub fn spawn_jss(&self, pod: &PodProcess, args: &[&str], vars: &[(&str, &str)]) -> Child {
        self.spawn_bin(pod, "jss", args, vars)
    }

    /// As [`Cluster::spawn_jss`] for another of the workspace's binaries
    /// (`jss-agent`).
    pub fn spawn_bin(
        &self,
        pod: &PodProcess,
        name: &str,
        args: &[&str],
        vars: &[(&str, &str)],
    ) -> Child {
        let mut argv: Vec<String> = vec![
            format!("JSS_SOCKET={}", self.daemon.socket.display()),
            format!("VAULT_ADDR={}", self.bao.addr()),
            "RUST_LOG=info".into(),
        ];
        argv.extend(vars.iter().map(|(k, v)| format!("{k}={v}")));
        argv.push(bin(name).display().to_string());
        argv.extend(args.iter().map(|a| a.to_string()));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        spawn_in(pod, Path::new("/usr/bin/env"), &argv, Stdio::piped())
    }

    /// `jss-bootstrap node register ARGS` for this cluster's node (`node-1`,
    /// its state dir, TPM and daemon socket) with the root token; `signer`
    /// as the node was registered, `args` e.g. `--rotate --no-wait`.
    pub fn register_cmd(&self, signer: &str, args: &[&str]) -> Command {
        let state = self.path().join("state").display().to_string();
        let sock = self.daemon.socket.display().to_string();
        let mut cmd = Command::new(bin("jss-bootstrap"));
        cmd.args(register_args(&state, "node-1", signer))
            .args(["--tcti", &self.tcti, "--socket", &sock])
            .args(args)
            .env("VAULT_ADDR", self.bao.addr())
            .env("VAULT_TOKEN", ROOT_TOKEN)
            .env("TSS2_LOG", "all+none");
        cmd
    }

    /// `bao kv put PATH KEY=VALUE…` with the root token.
    pub fn put(&self, path: &str, kv: &[&str]) {
        let mut args = vec!["kv", "put", path];
        args.extend_from_slice(kv);
        self.bao.ok(&args);
    }

    /// A new directory under the cluster's temp dir.
    pub fn mkdir(&self, name: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        p
    }
}

/// Seconds since the Unix epoch (compare with a token's `exp`).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}
