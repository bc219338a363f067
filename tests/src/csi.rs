//! The CSI side of a node: a temporary kubelet root directory, a real
//! `jss csi` process on a unix socket, and a gRPC client (built from the
//! plugin's own `csi.proto`) that calls it as the kubelet does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jss::csi::proto;
use jss::csi::proto::identity_client::IdentityClient;
use jss::csi::proto::node_client::NodeClient;
use jss::csi::proto::volume_capability::{AccessMode, AccessType, MountVolume, access_mode};
use tonic::transport::Channel;

use crate::daemon::bin;

/// The kubelet's keys for an inline volume with `podInfoOnMount: true`.
pub const POD_NAME: &str = "csi.storage.k8s.io/pod.name";
pub const POD_NAMESPACE: &str = "csi.storage.k8s.io/pod.namespace";
pub const POD_UID: &str = "csi.storage.k8s.io/pod.uid";
pub const SERVICE_ACCOUNT: &str = "csi.storage.k8s.io/serviceAccount.name";
pub const EPHEMERAL: &str = "csi.storage.k8s.io/ephemeral";

/// A kubelet root directory (`<tmp>/pods/...`). On drop, anything still
/// mounted below it is unmounted first, so a failed test leaves no mount on
/// the machine.
pub struct KubeletDir {
    dir: tempfile::TempDir,
}

impl Default for KubeletDir {
    fn default() -> Self {
        Self::new()
    }
}

impl KubeletDir {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        std::fs::create_dir(dir.path().join("pods")).unwrap_or_else(|e| panic!("pods/: {e}"));
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The target the kubelet hands out for volume `name` of pod `uid`,
    /// with its parent created as the kubelet does before NodePublishVolume.
    pub fn target(&self, uid: &str, name: &str) -> PathBuf {
        let parent = self
            .path()
            .join("pods")
            .join(uid)
            .join("volumes/kubernetes.io~csi")
            .join(name);
        std::fs::create_dir_all(&parent).unwrap_or_else(|e| panic!("{}: {e}", parent.display()));
        parent.join("mount")
    }
}

impl Drop for KubeletDir {
    fn drop(&mut self) {
        let mut mounted = mounts_under(self.path());
        // Deepest first.
        mounted.sort_by_key(|m| std::cmp::Reverse(m.point.as_os_str().len()));
        for m in mounted {
            let _ = nix::mount::umount2(&m.point, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// One line of `/proc/self/mountinfo`: the mount point and its options.
#[derive(Debug, Clone)]
pub struct MountLine {
    pub point: PathBuf,
    pub options: Vec<String>,
}

/// This process's mounts at or below `dir` (the same mount namespace as
/// the plugin's: both run on the host).
pub fn mounts_under(dir: &Path) -> Vec<MountLine> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_else(|e| panic!("/proc/self/mountinfo: {e}"));
    jss::csi::mount::mount_points(&text)
        .zip(text.lines())
        .filter(|(p, _)| p.starts_with(dir))
        .map(|(point, line)| MountLine {
            point,
            options: line
                .split(' ')
                .nth(5)
                .unwrap_or_default()
                .split(',')
                .map(String::from)
                .collect(),
        })
        .collect()
}

/// A `jss csi` process, killed on drop.
pub struct CsiPlugin {
    child: Option<Child>,
    pub endpoint: PathBuf,
    pub stderr_log: PathBuf,
}

impl CsiPlugin {
    /// `jss csi --endpoint unix://<dir>/csi.sock --config <config>
    /// --kubelet-dir <kubelet>`, once its socket answers.
    pub fn start(dir: &Path, config: &Path, kubelet: &Path) -> Self {
        let endpoint = dir.join("csi.sock");
        let stderr_log = dir.join("csi.stderr");
        let err = std::fs::File::create(&stderr_log).unwrap_or_else(|e| panic!("log: {e}"));
        let child = Command::new(bin("jss"))
            .arg("csi")
            .arg("--endpoint")
            .arg(format!("unix://{}", endpoint.display()))
            .arg("--config")
            .arg(config)
            .arg("--kubelet-dir")
            .arg(kubelet)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn jss csi: {e}"));
        let mut me = Self {
            child: Some(child),
            endpoint,
            stderr_log,
        };
        me.wait_ready();
        me
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&self.endpoint).is_ok() {
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("jss csi exited with {status}:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("jss csi did not start serving:\n{}", self.stderr());
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// Sends `sig` (`TERM`, `KILL`) and waits for the exit.
    pub fn stop(&mut self, sig: &str) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args([format!("-{sig}"), child.id().to_string()])
            .status();
        child.wait().ok()
    }
}

impl Drop for CsiPlugin {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A CSI client on the plugin's socket, as the kubelet holds one.
pub struct CsiClient {
    rt: tokio::runtime::Runtime,
    pub identity: IdentityClient<Channel>,
    pub node: NodeClient<Channel>,
    pub channel: Channel,
}

impl CsiClient {
    pub fn connect(endpoint: &Path) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"));
        let uri = format!("unix://{}", endpoint.display());
        let channel = rt
            .block_on(
                tonic::transport::Endpoint::from_shared(uri)
                    .unwrap_or_else(|e| panic!("endpoint: {e}"))
                    .connect(),
            )
            .unwrap_or_else(|e| panic!("connect to {}: {e}", endpoint.display()));
        Self {
            rt,
            identity: IdentityClient::new(channel.clone()),
            node: NodeClient::new(channel.clone()),
            channel,
        }
    }

    /// Runs one call on the client's runtime.
    pub fn call<T>(
        &self,
        f: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, tonic::Status> {
        self.rt.block_on(f).map(tonic::Response::into_inner)
    }

    pub fn publish(
        &mut self,
        req: proto::NodePublishVolumeRequest,
    ) -> Result<proto::NodePublishVolumeResponse, tonic::Status> {
        let mut node = self.node.clone();
        self.call(node.node_publish_volume(req))
    }

    pub fn unpublish(
        &mut self,
        volume_id: &str,
        target: &Path,
    ) -> Result<proto::NodeUnpublishVolumeResponse, tonic::Status> {
        let mut node = self.node.clone();
        self.call(
            node.node_unpublish_volume(proto::NodeUnpublishVolumeRequest {
                volume_id: volume_id.into(),
                target_path: target.display().to_string(),
            }),
        )
    }
}

/// A Node client for async tests on the plugin's unix socket, once it
/// answers (a killed plugin leaves its socket file until the next binds).
pub async fn node_client(endpoint: &Path) -> NodeClient<Channel> {
    let uri = format!("unix://{}", endpoint.display());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let e = tonic::transport::Endpoint::from_shared(uri.clone())
            .unwrap_or_else(|e| panic!("endpoint: {e}"));
        match e.connect().await {
            Ok(channel) => return NodeClient::new(channel),
            Err(e) if Instant::now() >= deadline => {
                panic!("jss csi does not answer on {}: {e}", endpoint.display())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The kubelet's volume handle for an inline volume: `csi-` and a hash of
/// the pod UID and volume name.
pub fn volume_id(pod_uid: &str, name: &str) -> String {
    format!(
        "csi-{}",
        crate::pods::hex_of(&format!("{pod_uid}/{name}"), 64)
    )
}

/// The pod keys the kubelet adds, plus `attrs` (the pod's volumeAttributes).
pub fn pod_context(
    pod_uid: &str,
    namespace: &str,
    pod: &str,
    service_account: &str,
    attrs: &[(&str, &str)],
) -> HashMap<String, String> {
    let mut ctx: HashMap<String, String> = [
        (POD_NAME, pod),
        (POD_NAMESPACE, namespace),
        (POD_UID, pod_uid),
        (SERVICE_ACCOUNT, service_account),
        (EPHEMERAL, "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    ctx.extend(attrs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    ctx
}

/// NodePublishVolume as the kubelet sends it for an inline ephemeral
/// volume with `readOnly: true`: a mount capability, SINGLE_NODE_WRITER.
pub fn publish_request(
    volume_id: &str,
    target: &Path,
    context: HashMap<String, String>,
) -> proto::NodePublishVolumeRequest {
    proto::NodePublishVolumeRequest {
        volume_id: volume_id.into(),
        publish_context: HashMap::new(),
        staging_target_path: String::new(),
        target_path: target.display().to_string(),
        volume_capability: Some(proto::VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume::default())),
            access_mode: Some(AccessMode {
                mode: access_mode::Mode::SingleNodeWriter as i32,
            }),
        }),
        readonly: true,
        secrets: HashMap::new(),
        volume_context: context,
    }
}
