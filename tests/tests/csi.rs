//! The CSI node plugin (`jss csi`) over its unix socket, called as the
//! kubelet calls it (gRPC, the csi.v1 messages, the kubelet's volume
//! context), with real bind mounts in a temporary kubelet directory; and
//! socket mode end to end: a process in a kubepods cgroup reaches `jss
//! serve` (swtpm key) through the published volume. Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use jss::csi::proto;
use jss::signer::SignerKind;
use jss_tests::csi::{
    CsiClient, CsiPlugin, KubeletDir, mounts_under, pod_context, publish_request, volume_id,
};
use jss_tests::daemon::Daemon;
use jss_tests::node::{NAMESPACE, Node, POD_NAME, run_in, token_claims};
use jss_tests::pods::{Layout, PodProcess, Qos, random_pod_uid};
use tonic::Code;

/// A node (kubelet stand-in, key, config) whose JSS socket lives alone in
/// `<node>/run/`, a kubelet directory, and `jss csi` on both.
struct Env {
    node: Node,
    run: PathBuf,
    kubelet: KubeletDir,
    plugin: CsiPlugin,
    client: CsiClient,
}

fn start(kind: SignerKind) -> Env {
    let node = Node::new(kind, "");
    let run = node.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let config = node.path().join("csi-config.toml");
    std::fs::write(&config, config_with_socket_in(&node, &run)).unwrap();
    let kubelet = KubeletDir::new();
    let plugin = CsiPlugin::start(node.path(), &config, kubelet.path());
    let client = CsiClient::connect(&plugin.endpoint);
    Env {
        node,
        run,
        kubelet,
        plugin,
        client,
    }
}

/// The node's config with `socket` moved to `run/jss.sock`.
fn config_with_socket_in(node: &Node, run: &Path) -> String {
    let old = format!("socket = \"{}/jss.sock\"", node.path().display());
    assert!(node.config.contains(&old), "{}", node.config);
    node.config.replace(
        &old,
        &format!("socket = \"{}\"", run.join("jss.sock").display()),
    )
}

impl Env {
    /// A socket-mode publish for pod `uid`'s volume `name`.
    fn publish(&mut self, uid: &str, name: &str) -> (String, PathBuf, Result<(), tonic::Status>) {
        let target = self.kubelet.target(uid, name);
        let id = volume_id(uid, name);
        let ctx = pod_context(uid, NAMESPACE, POD_NAME, "demo-sa", &[("mode", "socket")]);
        let r = self
            .client
            .publish(publish_request(&id, &target, ctx))
            .map(drop);
        (id, target, r)
    }

    fn context(&self) -> String {
        format!("plugin log:\n{}", self.plugin.stderr())
    }
}

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> (Code, String) {
    let s = r.expect_err("the plugin accepted it");
    (s.code(), s.message().to_string())
}

#[test]
fn identity_and_node_info_answer_as_the_kubelet_expects() {
    let env = start(SignerKind::Software);
    let mut identity = env.client.identity.clone();
    let info = env
        .client
        .call(identity.get_plugin_info(proto::GetPluginInfoRequest {}))
        .unwrap();
    assert_eq!(info.name, "csi.jss.dev");
    assert_eq!(info.name, jss::csi::DRIVER_NAME);
    assert_eq!(info.vendor_version, env!("CARGO_PKG_VERSION"));
    let caps = env
        .client
        .call(identity.get_plugin_capabilities(proto::GetPluginCapabilitiesRequest {}))
        .unwrap();
    assert!(caps.capabilities.is_empty(), "{caps:?}");
    let probe = env
        .client
        .call(identity.probe(proto::ProbeRequest {}))
        .unwrap();
    assert_eq!(probe.ready, Some(true));

    let mut node = env.client.node.clone();
    let info = env
        .client
        .call(node.node_get_info(proto::NodeGetInfoRequest {}))
        .unwrap();
    assert_eq!(info.node_id, "node-1");
    assert_eq!(info.max_volumes_per_node, 0);
    let caps = env
        .client
        .call(node.node_get_capabilities(proto::NodeGetCapabilitiesRequest {}))
        .unwrap();
    assert!(caps.capabilities.is_empty(), "{caps:?}");

    // A Node RPC the plugin does not offer (no STAGE_UNSTAGE_VOLUME).
    let mut grpc = tonic::client::Grpc::new(env.client.channel.clone());
    let stage = env.client.call(async {
        grpc.ready().await.unwrap();
        grpc.unary(
            tonic::Request::new(proto::NodeGetInfoRequest {}),
            tonic::codegen::http::uri::PathAndQuery::from_static("/csi.v1.Node/NodeStageVolume"),
            tonic_prost::ProstCodec::<proto::NodeGetInfoRequest, proto::NodeGetInfoResponse>::default(),
        )
        .await
    });
    assert_eq!(code(stage).0, Code::Unimplemented);

    // Probe follows the socket directory.
    std::fs::remove_dir(&env.run).unwrap();
    let probe = env
        .client
        .call(identity.probe(proto::ProbeRequest {}))
        .unwrap();
    assert_eq!(probe.ready, Some(false));
}

#[test]
fn publish_and_unpublish_are_idempotent_and_leave_no_mount() {
    let mut env = start(SignerKind::Software);
    let uid = random_pod_uid();
    // Unpublish before any publish: nothing there, nothing to do.
    let never = env.kubelet.target(&uid, "never");
    env.client
        .unpublish(&volume_id(&uid, "never"), &never)
        .unwrap();

    let (id, target, r) = env.publish(&uid, "jss");
    r.unwrap_or_else(|e| panic!("{e:?}\n{}", env.context()));
    let mounted = mounts_under(&target);
    assert_eq!(mounted.len(), 1, "{mounted:?}");
    assert_eq!(mounted[0].point, target);
    for opt in ["ro", "nosuid", "nodev", "noexec"] {
        assert!(mounted[0].options.iter().any(|o| o == opt), "{mounted:?}");
    }
    // The volume shows the socket directory, and root cannot write to it.
    std::fs::write(env.run.join("marker"), "x").unwrap();
    assert_eq!(std::fs::read_to_string(target.join("marker")).unwrap(), "x");
    let e = std::fs::write(target.join("other"), "x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(nix::libc::EROFS), "{e}");

    // The kubelet retries, and republishes (requiresRepublish): same answer,
    // still one mount.
    for _ in 0..2 {
        let (_, _, r) = env.publish(&uid, "jss");
        r.unwrap();
    }
    assert_eq!(mounts_under(&target).len(), 1);

    // A second pod's volume is its own mount.
    let uid2 = random_pod_uid();
    let (id2, target2, r) = env.publish(&uid2, "jss");
    r.unwrap();
    assert_eq!(mounts_under(&target2).len(), 1);

    for _ in 0..2 {
        env.client.unpublish(&id, &target).unwrap();
    }
    assert!(!target.exists(), "the target directory stays");
    assert!(mounts_under(&target).is_empty());
    assert_eq!(
        mounts_under(&target2).len(),
        1,
        "the other pod's volume went too"
    );
    env.client.unpublish(&id2, &target2).unwrap();
    assert!(mounts_under(env.kubelet.path()).is_empty());

    // A restarted plugin (killed, stale socket left) serves again, and a
    // volume published before the restart is found by its mount.
    let (id3, target3, r) = env.publish(&uid, "again");
    r.unwrap();
    env.plugin.stop("KILL");
    assert!(env.plugin.endpoint.exists(), "expected a stale socket");
    let config = env.node.path().join("csi-config.toml");
    env.plugin = CsiPlugin::start(env.node.path(), &config, env.kubelet.path());
    env.client = CsiClient::connect(&env.plugin.endpoint);
    let (_, _, r) = env.publish(&uid, "again");
    r.unwrap();
    assert_eq!(mounts_under(&target3).len(), 1);
    env.client.unpublish(&id3, &target3).unwrap();
    assert!(mounts_under(env.kubelet.path()).is_empty());

    // SIGTERM: the plugin exits 0 and takes its socket with it.
    let status = env.plugin.stop("TERM").unwrap();
    assert!(status.success(), "{status}\n{}", env.context());
    assert!(!env.plugin.endpoint.exists());
}

#[test]
fn bad_requests_get_the_codes_of_the_csi_spec() {
    let mut env = start(SignerKind::Software);
    let uid = random_pod_uid();
    let target = env.kubelet.target(&uid, "jss");
    let id = volume_id(&uid, "jss");
    let ctx = || pod_context(&uid, NAMESPACE, POD_NAME, "demo-sa", &[]);
    let ok = || publish_request(&id, &target, ctx());

    let mut req = ok();
    req.volume_id.clear();
    let (c, m) = code(env.client.publish(req));
    assert_eq!(
        (c, m.contains("volume_id")),
        (Code::InvalidArgument, true),
        "{m}"
    );
    let mut req = ok();
    req.target_path.clear();
    let (c, m) = code(env.client.publish(req));
    assert_eq!(
        (c, m.contains("target_path")),
        (Code::InvalidArgument, true),
        "{m}"
    );
    let mut req = ok();
    req.volume_capability = None;
    let (c, m) = code(env.client.publish(req));
    assert_eq!(
        (c, m.contains("volume_capability")),
        (Code::InvalidArgument, true),
        "{m}"
    );
    let mut req = ok();
    req.volume_capability.as_mut().unwrap().access_type = Some(
        proto::volume_capability::AccessType::Block(proto::volume_capability::BlockVolume {}),
    );
    assert_eq!(code(env.client.publish(req)).0, Code::InvalidArgument);
    let mut req = ok();
    req.volume_context.insert("audiance".into(), "vault".into());
    let (c, m) = code(env.client.publish(req));
    assert_eq!(
        (c, m.contains("audiance")),
        (Code::InvalidArgument, true),
        "{m}"
    );
    let (c, _) = code(env.client.unpublish("", &target));
    assert_eq!(c, Code::InvalidArgument);
    let (c, _) = code(env.client.unpublish(&id, Path::new("")));
    assert_eq!(c, Code::InvalidArgument);

    // Targets that are not the kubelet's: refused, nothing mounted anywhere.
    let elsewhere = tempfile::tempdir().unwrap();
    let shaped = elsewhere
        .path()
        .join(format!("{uid}/volumes/kubernetes.io~csi/jss"));
    std::fs::create_dir_all(&shaped).unwrap();
    let pods = env.kubelet.path().join("pods");
    let link = pods.join(random_pod_uid());
    std::os::unix::fs::symlink(elsewhere.path().join(&uid), &link).unwrap();
    let last_link = env.kubelet.target(&uid, "linked");
    std::os::unix::fs::symlink(elsewhere.path(), &last_link).unwrap();
    for bad in [
        shaped.join("mount"),
        pods.join(&uid),
        pods.join(format!("{uid}/volumes/kubernetes.io~empty-dir/jss/mount")),
        pods.join(format!("{uid}/volumes/kubernetes.io~csi/jss/../jss/mount")),
        link.join("volumes/kubernetes.io~csi/jss/mount"),
        last_link.clone(),
    ] {
        let mut req = ok();
        req.target_path = bad.display().to_string();
        let (c, m) = code(env.client.publish(req));
        assert_eq!(c, Code::InvalidArgument, "{bad:?}: {m}");
        let (c, m) = code(env.client.unpublish(&id, &bad));
        assert_eq!(c, Code::InvalidArgument, "{bad:?}: {m}");
    }
    assert!(mounts_under(elsewhere.path()).is_empty());
    assert!(mounts_under(env.kubelet.path()).is_empty());
    assert!(!shaped.join("mount").exists());

    // Something else already mounted at the target: incompatible.
    std::fs::create_dir(&target).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &target,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=64k"),
    )
    .unwrap();
    let (c, m) = code(env.client.publish(ok()));
    assert_eq!(c, Code::AlreadyExists, "{m}");
    // Unpublish takes it down all the same (the kubelet tearing down).
    env.client.unpublish(&id, &target).unwrap();
    assert!(mounts_under(env.kubelet.path()).is_empty());
    assert!(!target.exists());
}

#[test]
fn socket_mode_end_to_end_a_pod_gets_its_token_through_the_volume() {
    let mut env = start(SignerKind::Tpm);
    let config = config_with_socket_in(&env.node, &env.run);
    let daemon = Daemon::start(&env.run, &config);
    let uid = env.node.pod_uid.clone();
    let (id, target, r) = env.publish(&uid, "jss");
    r.unwrap_or_else(|e| panic!("{e:?}\n{}", env.context()));

    // The pod's container reaches JSS at <target>/jss.sock, read-only mount
    // and all, and gets its own identity.
    let app = PodProcess::spawn(Layout::V2Systemd(Qos::Burstable), &uid, &env.node.app_id);
    let socket = target.join("jss.sock");
    let claims = token_claims(&run_in(
        &app,
        &["token", "--socket", &socket.display().to_string()],
    ));
    assert_eq!(claims["pod"], POD_NAME, "{claims}\n{}", daemon.stderr());
    assert_eq!(claims["namespace"], NAMESPACE);
    assert_eq!(claims["pod-uid"], uid.as_str());
    assert_eq!(claims["container"], "app");

    env.client.unpublish(&id, &target).unwrap();
    assert!(!target.exists());
    assert!(mounts_under(&target).is_empty());
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !text.contains(&target.display().to_string()),
        "mountinfo still names {}",
        target.display()
    );
    let gone = run_in(
        &app,
        &[
            "token",
            "--socket",
            &socket.display().to_string(),
            "--timeout-seconds",
            "2",
        ],
    );
    assert!(!gone.status.success());
}
