#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)] // test code: a panic is a failure report
//! The fixture of `request_path.rs`: a node's state dir (software key, chain
//! from a test CA), a fake proc tree, a real `App` serving over a unix
//! socket pair whose peer is this test process, and the test doubles of
//! the pod source and the signer.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use jss::attest::{Peer, PeerProcess};
use jss::config::Config;
use jss::kubelet::{
    BoxFuture, KubeletError, LookupError, Pod, PodList, PodMatch, PodQuery, PodRef, PodSource,
    PodSourceStats, StaticPods,
};
use jss::server::App;
use jss::signer::{self, Backend, KeyPolicy, NodePublicKey, Signer, SignerConfig, SignerError};
use jss_tests::ca::TestCa;
use jss_tests::kubelet::{Ctr, PodBuilder, pod_list};
use jss_tests::pods::{random_container_id, random_pod_uid};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const IMAGE: &str = "docker.io/library/ubuntu:24.04";

/// A node's state dir (software key, chain from a test CA), a machine ID, a
/// fake proc tree and the pod list naming this process's fake container.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub signer: Arc<dyn Signer>,
    pub pod_uid: String,
    pub container_id: String,
}

impl Node {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let (signer, _) = signer::open(
            &SignerConfig {
                kind: signer::SignerKind::Software,
                tcti: String::new(),
                state_dir: state.clone(),
                pcrs: None,
            },
            KeyPolicy::CreateIfMissing,
        )
        .unwrap();
        write_chain(&state, signer.public_key(), &TestCa::new());
        std::fs::write(
            dir.path().join("machine-id"),
            "4c4c4544003548108052b4c04f4e4d32\n",
        )
        .unwrap();
        let node = Self {
            dir,
            signer,
            pod_uid: random_pod_uid(),
            container_id: random_container_id(),
        };
        node.set_cgroup(&format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{}.scope\n",
            node.pod_uid.replace('-', "_"),
            node.container_id
        ));
        node
    }

    pub fn proc_dir(&self) -> PathBuf {
        self.dir
            .path()
            .join("proc")
            .join(std::process::id().to_string())
    }

    /// This process's `/proc/<pid>/cgroup` in the fake tree.
    pub fn set_cgroup(&self, text: &str) {
        std::fs::create_dir_all(self.proc_dir()).unwrap();
        std::fs::write(self.proc_dir().join("cgroup"), text).unwrap();
        // Empty: no mount names a pod here.
        std::fs::write(self.proc_dir().join("mountinfo"), "").unwrap();
    }

    /// This process's `/proc/<pid>/stat` in the fake tree, start time `start`.
    pub fn set_start_time(&self, start: u64) {
        let fields: Vec<String> = (4..=52)
            .map(|i| if i == 22 { start } else { 0 }.to_string())
            .collect();
        let stat = format!("{} (jss-test) S {}\n", std::process::id(), fields.join(" "));
        std::fs::write(self.proc_dir().join("stat"), stat).unwrap();
    }

    pub fn pods(&self, ctr: Ctr) -> Value {
        pod_list(&[PodBuilder::new(&self.pod_uid, "team-a", "app-0")
            .container(ctr)
            .json()])
    }

    pub fn running(&self) -> Ctr {
        Ctr::running("app", IMAGE, &self.container_id)
    }

    pub fn config(&self, extra: &str) -> Config {
        let d = self.dir.path().display();
        let text = format!(
            r#"socket = "{d}/jss.sock"
state_dir = "{d}/state"
cluster_name = "EUCluster"
cluster_region = "eu-de"
node_name = "node-1"
machine_id_path = "{d}/machine-id"
proc_root = "{d}/proc"
audiences = ["vault", "other"]
audit_log = "{d}/audit.log"
[signer]
kind = "software"
[kubelet]
url = "https://127.0.0.1:10250"
{extra}"#
        );
        Config::parse(&text, &self.dir.path().join("config.toml"), None).unwrap()
    }

    pub fn app(&self, extra: &str, signer: Arc<dyn Signer>, pods: Arc<dyn PodSource>) -> Arc<App> {
        Arc::new(App::new(self.config(extra), signer, pods).unwrap())
    }

    pub fn static_app(&self, extra: &str, pods: Value) -> Arc<App> {
        let list = PodList::parse(pods.to_string().as_bytes()).unwrap();
        self.app(
            extra,
            Arc::clone(&self.signer),
            Arc::new(StaticPods::new(list)),
        )
    }

    pub fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("audit.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

pub fn write_chain(state: &Path, key: &NodePublicKey, ca: &TestCa) {
    let chain = ca.issue_node_chain(key, Duration::from_secs(3600));
    jss::chain::write(state, &chain).unwrap();
}

/// This process, as the server sees it at accept.
pub fn this_process(proc_root: &Path) -> Peer {
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    Peer::new(Ok(PeerProcess::of_socket(proc_root, &a).unwrap()))
}

/// One HTTP/1.1 exchange: `raw` sent (and the write side then held open),
/// everything the server sends until it closes returned.
pub async fn exchange(app: &Arc<App>, peer: Peer, raw: &[u8]) -> (u16, String) {
    let (client, server) = tokio::net::UnixStream::pair().unwrap();
    let conn = tokio::spawn(jss::server::connection(Arc::clone(app), peer, server));
    let (mut rd, mut wr) = client.into_split();
    wr.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    rd.read_to_end(&mut out).await.unwrap();
    drop(wr);
    let _ = conn.await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    (status, text)
}

pub async fn get(app: &Arc<App>, peer: Peer, path: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    exchange(app, peer, req.as_bytes()).await
}

pub fn denials(app: &App) -> Vec<(String, u64)> {
    app.metrics
        .render()
        .lines()
        .filter_map(|l| l.strip_prefix("jss_denials_total{reason=\""))
        .map(|l| {
            let (code, n) = l.split_once("\"} ").unwrap();
            (code.to_string(), n.trim().parse().unwrap())
        })
        .collect()
}

/// A pod source that answers every query with an error, or never.
pub enum Answer {
    Fail(fn() -> LookupError),
    Never,
}

impl Answer {
    async fn answer<T>(&self) -> Result<T, LookupError> {
        match self {
            Answer::Fail(e) => Err(e()),
            Answer::Never => std::future::pending().await,
        }
    }
}

impl PodSource for Answer {
    fn find<'a>(&'a self, _: &'a PodQuery) -> BoxFuture<'a, Result<PodMatch, LookupError>> {
        Box::pin(self.answer())
    }
    fn find_pod<'a>(&'a self, _: &'a PodRef) -> BoxFuture<'a, Result<Arc<Pod>, LookupError>> {
        Box::pin(self.answer())
    }
    fn stats(&self) -> PodSourceStats {
        PodSourceStats::default()
    }
}

pub fn kubelet(e: KubeletError) -> LookupError {
    LookupError::Kubelet(Arc::new(e))
}

/// Where a gated signature waits: it says so on `entered`, then waits for `release`.
#[derive(Debug)]
pub struct Gate {
    pub entered: Mutex<mpsc::Sender<()>>,
    pub release: Mutex<mpsc::Receiver<()>>,
}

/// The node's software key behind a gate: reports the TPM backend (so it
/// signs on a blocking thread) and waits for `release` before each
/// signature; `entered` says a signature is waiting. `fail` makes it refuse.
#[derive(Debug)]
pub struct GatedSigner {
    pub inner: Arc<dyn Signer>,
    pub gate: Option<Gate>,
    /// The error every signature fails with, if any.
    pub fail: Option<fn() -> SignerError>,
}

impl Signer for GatedSigner {
    fn backend(&self) -> Backend {
        if self.gate.is_some() {
            Backend::Tpm
        } else {
            self.inner.backend()
        }
    }
    fn public_key(&self) -> &NodePublicKey {
        self.inner.public_key()
    }
    fn sign(&self, input: &[u8]) -> Result<[u8; 64], SignerError> {
        if let Some(fail) = self.fail {
            return Err(fail());
        }
        if let Some(g) = &self.gate {
            g.entered.lock().unwrap().send(()).unwrap();
            g.release.lock().unwrap().recv().unwrap();
        }
        self.inner.sign(input)
    }
}

pub fn jti_of(token: &str) -> String {
    let (_, claims) = jss::token::decode_unverified(token.trim()).unwrap();
    claims["jti"].as_str().unwrap().to_string()
}

pub fn body(text: &str) -> &str {
    text.split_once("\r\n\r\n").unwrap().1
}
