//! A node ready for `jss serve`: a node key (TPM on a real swtpm, or
//! software), a chain from a test CA, a machine ID, a kubelet stand-in
//! listing one pod with two containers, and the config text tying them up.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use jss::signer::{self, KeyPolicy, SignerConfig, SignerKind};
use serde_json::Value;

use crate::ca::TestCa;
use crate::daemon::bin;
use crate::kubelet::{Ctr, KubeletStandin, PodBuilder, pod_list};
use crate::pods::{PodProcess, random_container_id, random_pod_uid};
use crate::swtpm::Swtpm;

pub const MACHINE_ID: &str = "4c4c4544003548108052b4c04f4e4d32";
pub const NAMESPACE: &str = "trusted-identity";
pub const POD_NAME: &str = "myubuntu-6756d665bc-gc5wz";
pub const APP_IMAGE: &str = "docker.io/library/ubuntu:24.04";
pub const SIDECAR_IMAGE: &str = "docker.io/library/busybox:1.36";

pub struct Node {
    /// `None` for a software key.
    pub tpm: Option<Swtpm>,
    pub dir: tempfile::TempDir,
    pub kubelet: KubeletStandin,
    /// Contents for `dir/config.toml`; socket at `dir/jss.sock`, audit log at `dir/audit.log`.
    pub config: String,
    pub pod_uid: String,
    pub app_id: String,
    pub side_id: String,
}

/// The pod the stand-in lists: containers `app` and `sidecar`.
pub fn pod_json(uid: &str, app_id: &str, side_id: &str) -> Value {
    PodBuilder::new(uid, NAMESPACE, POD_NAME)
        .service_account("demo-sa")
        .container(Ctr::running("app", APP_IMAGE, app_id))
        .container(Ctr::running("sidecar", SIDECAR_IMAGE, side_id))
        .json()
}

impl Node {
    /// `extra` is TOML inserted at top level before the `[signer]` table
    /// (top-level keys first, then any tables such as `[cache]`).
    pub fn new(kind: SignerKind, extra: &str) -> Self {
        // Unbound: TPM figures and tests compare like with like; the
        // PCR-bound path has its own tests (signer_contract, pcr_policy).
        Self::with_pcrs(kind, jss::signer::PcrSelection::none(), extra)
    }

    /// As [`Node::new`], the node key bound to `pcrs` (a TPM key).
    pub fn with_pcrs(kind: SignerKind, pcrs: jss::signer::PcrSelection, extra: &str) -> Self {
        let tpm = (kind == SignerKind::Tpm).then(Swtpm::start);
        let tcti = tpm.as_ref().map(Swtpm::tcti).unwrap_or_default();
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let state = dir.path().join("state");
        let key = signer::open(
            &SignerConfig {
                kind,
                tcti: tcti.clone(),
                state_dir: state.clone(),
                pcrs: Some(pcrs),
            },
            KeyPolicy::CreateIfMissing,
        )
        .unwrap_or_else(|e| panic!("node key: {e}"))
        .0;
        let chain = TestCa::new().issue_node_chain(key.public_key(), Duration::from_secs(3600));
        jss::chain::write(&state, &chain).unwrap_or_else(|e| panic!("chain: {e}"));
        drop(key); // swtpm serves one connection at a time: leave it to the daemon
        std::fs::write(dir.path().join("machine-id"), format!("{MACHINE_ID}\n"))
            .unwrap_or_else(|e| panic!("machine-id: {e}"));

        let (pod_uid, app_id, side_id) = (
            random_pod_uid(),
            random_container_id(),
            random_container_id(),
        );
        let kubelet = KubeletStandin::start(pod_list(&[pod_json(&pod_uid, &app_id, &side_id)]));
        let d = dir.path().display();
        let kind_name = match kind {
            SignerKind::Tpm => "tpm",
            SignerKind::Software => "software",
            SignerKind::Auto => "auto",
        };
        let config = format!(
            r#"socket = "{d}/jss.sock"
state_dir = "{d}/state"
cluster_name = "EUCluster"
cluster_region = "eu-de"
node_name = "node-1"
machine_id_path = "{d}/machine-id"
audiences = ["vault", "other"]
audit_log = "{d}/audit.log"
{extra}
[signer]
kind = "{kind_name}"
tcti = "{tcti}"

[kubelet]
url = "{url}"
token_path = "{token}"
ca_path = "{ca}"
retry_window_ms = 3000
request_timeout_ms = 2000
retry_interval_ms = 100
max_list_age_ms = 0
"#,
            url = kubelet.url(),
            token = kubelet.token_path().display(),
            ca = kubelet.ca_path().display(),
        );
        Self {
            tpm,
            dir,
            kubelet,
            config,
            pod_uid,
            app_id,
            side_id,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Starts `program args` inside `pod`'s container cgroup: a shell waits until
/// its pid has been moved there, then execs (same pid) the program.
pub fn spawn_in(
    pod: &PodProcess,
    program: &Path,
    args: &[&str],
    stdout: Stdio,
) -> std::process::Child {
    let guard = crate::pods::SPAWN.lock().unwrap_or_else(|p| p.into_inner());
    let mut child = Command::new("sh")
        .args(["-c", "read _ && exec \"$@\"", "sh"])
        .arg(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn sh: {e}"));
    drop(guard);
    std::fs::write(
        pod.cgroup_dir().join("cgroup.procs"),
        child.id().to_string(),
    )
    .unwrap_or_else(|e| panic!("move pid into {}: {e}", pod.cgroup_dir().display()));
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(b"go\n")
            .unwrap_or_else(|e| panic!("release child: {e}"));
    }
    child
}

/// Runs `jss args` inside `pod`'s container cgroup and waits for it.
pub fn run_in(pod: &PodProcess, args: &[&str]) -> Output {
    spawn_in(pod, &bin("jss"), args, Stdio::piped())
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait: {e}"))
}

/// The claims of the token a successful `jss token` printed; panics with
/// its stderr when it failed.
pub fn token_claims(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "jss token failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout);
    jss::token::decode_unverified(token.trim())
        .unwrap_or_else(|e| panic!("jss token printed no token: {e}"))
        .1
}
