#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report
//! End to end through the real /proc: child processes moved into
//! kubepods-style cgroups (v1 and v2), attested against the kubelet
//! stand-in. Runs as root; a cgroup tree that cannot be written fails.

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::Duration;

use jss::attest::{Attestor, PeerProcess, ReuseGuard, guard_supported, locate};
use jss::inspect::{InspectArgs, run};
use jss::kubelet::{
    BoxFuture, KubeletPods, LookupError, Pod, PodMatch, PodQuery, PodRef, PodSource, PodSourceStats,
};
use jss_tests::kubelet::{Ctr, KubeletStandin, PodBuilder, pod_list};
use jss_tests::node::spawn_in;
use jss_tests::pods::{HostProcess, Layout, PodProcess, Qos, random_container_id, random_pod_uid};

fn pod_for(p: &PodProcess) -> serde_json::Value {
    PodBuilder::new(&p.pod_uid, "team-a", "api-5c6d")
        .service_account("api")
        .container(Ctr::running("api", "registry.local/api:3", &p.container_id))
        .json()
}

fn attestor(k: &KubeletStandin) -> Attestor {
    Attestor::new(
        "/proc".into(),
        Arc::new(KubeletPods::from_config(&k.config()).unwrap()),
    )
}

async fn attest_in(layout: Layout) {
    let p = PodProcess::spawn(layout, &random_pod_uid(), &random_container_id());
    let k = KubeletStandin::start(pod_list(&[pod_for(&p)]));
    let peer = PeerProcess::by_start_time(Path::new("/proc"), p.pid(), 0, 0).unwrap();
    let w = attestor(&k)
        .attest(&peer)
        .await
        .unwrap_or_else(|e| panic!("{layout:?}: {e}"));
    assert_eq!(w.pod_uid, p.pod_uid);
    assert_eq!(w.container_id, p.container_id);
    assert_eq!(
        (
            w.namespace.as_str(),
            w.pod_name.as_str(),
            w.service_account.as_str()
        ),
        ("team-a", "api-5c6d", "api")
    );
    assert_eq!(
        (w.container_name.as_str(), w.image.as_str()),
        ("api", "registry.local/api:3")
    );
    assert!(w.image_digest.unwrap().starts_with("sha256:"));
}

#[tokio::test]
async fn v1_cgroupfs_all_qos() {
    for qos in [Qos::BestEffort, Qos::Burstable, Qos::Guaranteed] {
        attest_in(Layout::V1Cgroupfs(qos)).await;
    }
}

#[tokio::test]
async fn v2_systemd_all_qos() {
    for qos in [Qos::BestEffort, Qos::Burstable, Qos::Guaranteed] {
        attest_in(Layout::V2Systemd(qos)).await;
    }
}

#[tokio::test]
async fn cgroup_file_is_what_the_kernel_says() {
    let p = PodProcess::spawn(
        Layout::V2Systemd(Qos::Burstable),
        &random_pod_uid(),
        &random_container_id(),
    );
    let cg = std::fs::read_to_string(format!("/proc/{}/cgroup", p.pid())).unwrap();
    assert!(
        cg.contains(&format!("cri-containerd-{}.scope", p.container_id)),
        "{cg}"
    );
    let loc = jss::attest::locate(Path::new("/proc"), p.pid()).unwrap();
    assert_eq!(
        (loc.pod_uid(), loc.container_id.as_str()),
        (Some(p.pod_uid.as_str()), p.container_id.as_str())
    );
}

#[tokio::test]
async fn process_outside_any_pod() {
    let h = HostProcess::spawn();
    let k = KubeletStandin::start(pod_list(&[]));
    let peer = PeerProcess::by_start_time(Path::new("/proc"), h.pid(), 0, 0).unwrap();
    let e = attestor(&k).attest(&peer).await.unwrap_err();
    assert_eq!(
        (e.code(), jss::server::Code::from(&e).status()),
        ("not_in_pod", 403),
        "{e}"
    );
    assert!(
        e.to_string().contains(&h.pid().to_string()) && e.to_string().contains("cgroup"),
        "{e}"
    );
    assert_eq!(k.requests(), 0, "no kubelet call for a host process");
}

#[tokio::test]
async fn pid_reuse_guard() {
    let p = PodProcess::spawn(
        Layout::V1Cgroupfs(Qos::BestEffort),
        &random_pod_uid(),
        &random_container_id(),
    );
    let k = KubeletStandin::start(pod_list(&[pod_for(&p)]));
    let a = attestor(&k);
    // The peer connected as another uid: not this process any more.
    let peer = PeerProcess::by_start_time(Path::new("/proc"), p.pid(), 4321, 4321).unwrap();
    let e = a.attest(&peer).await.unwrap_err();
    assert_eq!(
        (e.code(), jss::server::Code::from(&e).status()),
        ("process_changed", 401),
        "{e}"
    );
    // A different start time (what a reused PID looks like).
    let mut peer = PeerProcess::by_start_time(Path::new("/proc"), p.pid(), 0, 0).unwrap();
    let t = peer.start_time().unwrap();
    peer.guard = ReuseGuard::StartTime(t - 1);
    let e = a.attest(&peer).await.unwrap_err();
    assert_eq!(e.code(), "process_changed", "{e}");
}

/// A caller in `pod` connected to `listener`: the child and the accepted end.
fn connect_from(pod: &PodProcess, listener: &UnixListener) -> (Child, UnixStream) {
    let script = "import socket,sys,time\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\ntime.sleep(600)";
    let path = listener.local_addr().unwrap();
    let sock = path.as_pathname().unwrap().to_str().unwrap();
    let child = spawn_in(
        pod,
        Path::new("/usr/bin/python3"),
        &["-c", script, sock],
        Stdio::null(),
    );
    let (stream, _) = listener.accept().unwrap();
    (child, stream)
}

/// The caller exits, its pid goes to a process in another listed pod, and
/// the /proc files now describe that pod: both guards must refuse.
async fn reused_pid_is_refused(use_pidfd: bool) {
    let (a, b) = (
        PodProcess::spawn(
            Layout::V2Systemd(Qos::Burstable),
            &random_pod_uid(),
            &random_container_id(),
        ),
        (random_pod_uid(), random_container_id()),
    );
    let b_pod = PodBuilder::new(&b.0, "payments", "victim")
        .container(Ctr::running("api", "registry.local/pay:1", &b.1))
        .json();
    let k = KubeletStandin::start(pod_list(&[pod_for(&a), b_pod]));
    let att = attestor(&k);
    let dir = tempfile::tempdir().unwrap();
    let listener = UnixListener::bind(dir.path().join("s")).unwrap();
    let (mut caller, stream) = connect_from(&a, &listener);
    let peer = if use_pidfd {
        PeerProcess::of_socket(Path::new("/proc"), &stream).unwrap()
    } else {
        PeerProcess::by_start_time(Path::new("/proc"), caller.id() as i32, 0, 0).unwrap()
    };
    assert_eq!(peer.pid, caller.id() as i32);
    let loc = locate(Path::new("/proc"), peer.pid).unwrap();
    assert_eq!(att.attest(&peer).await.unwrap().pod_uid, a.pod_uid);

    caller.kill().unwrap();
    caller.wait().unwrap();
    let _victim = PodProcess::spawn_as(Layout::V1Cgroupfs(Qos::BestEffort), &b.0, &b.1, peer.pid);
    let now = locate(Path::new("/proc"), peer.pid).unwrap();
    assert_eq!(now.pod_uid(), Some(b.0.as_str()), "the pid was not reused");

    let expected = match peer.guard {
        ReuseGuard::Pidfd(_) => "process_gone",
        ReuseGuard::StartTime(_) => "process_changed",
    };
    // Located afresh (the victim's cgroup), and located before the exit.
    for e in [
        att.attest(&peer).await.unwrap_err(),
        att.attest_located(&peer, &loc).await.unwrap_err(),
    ] {
        assert_eq!(
            (e.code(), jss::server::Code::from(&e).status()),
            (expected, 401),
            "{e}"
        );
    }
}

/// Linux 6.5 added SO_PEERPIDFD: from there on the pidfd guard must be used.
fn kernel_has_peer_pidfd() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut v = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (v.next().unwrap(), v.next().unwrap_or(0)) >= (6, 5)
}

#[test]
fn the_pidfd_guard_is_used_where_the_kernel_has_it() {
    let expected = if kernel_has_peer_pidfd() {
        "pidfd"
    } else {
        "start_time"
    };
    assert_eq!(guard_supported(), expected);
}

#[tokio::test]
async fn reused_pid_is_refused_by_the_kernels_guard() {
    reused_pid_is_refused(true).await;
}

#[tokio::test]
async fn reused_pid_is_refused_by_the_start_time_fallback() {
    reused_pid_is_refused(false).await;
}

#[test]
fn socket_peer_is_pinned_by_a_pidfd_where_the_kernel_allows() {
    let a = PodProcess::spawn(
        Layout::V1Cgroupfs(Qos::Guaranteed),
        &random_pod_uid(),
        &random_container_id(),
    );
    let dir = tempfile::tempdir().unwrap();
    let listener = UnixListener::bind(dir.path().join("s")).unwrap();
    let (mut caller, stream) = connect_from(&a, &listener);
    let peer = PeerProcess::of_socket(Path::new("/proc"), &stream).unwrap();
    assert_eq!(peer.guard.name(), guard_supported());
    assert_eq!(peer.uid, 0);
    peer.recheck(Path::new("/proc")).unwrap();
    caller.kill().unwrap();
    caller.wait().unwrap();
    let e = peer.recheck(Path::new("/proc")).unwrap_err();
    assert_eq!(e.code(), "process_gone", "{e}");
}

/// Kills the caller while the kubelet is being asked.
struct KillDuring(Arc<dyn PodSource>, std::sync::Mutex<PodProcess>);

impl PodSource for KillDuring {
    fn find<'b>(&'b self, q: &'b PodQuery) -> BoxFuture<'b, Result<PodMatch, LookupError>> {
        Box::pin(async move {
            let r = self.0.find(q).await;
            self.1.lock().unwrap().kill();
            r
        })
    }
    fn find_pod<'b>(&'b self, p: &'b PodRef) -> BoxFuture<'b, Result<Arc<Pod>, LookupError>> {
        self.0.find_pod(p)
    }
    fn stats(&self) -> PodSourceStats {
        self.0.stats()
    }
}

#[tokio::test]
async fn caller_that_exits_mid_attestation_is_refused() {
    let p = PodProcess::spawn(
        Layout::V2Systemd(Qos::BestEffort),
        &random_pod_uid(),
        &random_container_id(),
    );
    let k = KubeletStandin::start(pod_list(&[pod_for(&p)]));
    let peer = PeerProcess::by_start_time(Path::new("/proc"), p.pid(), 0, 0).unwrap();
    let inner: Arc<dyn PodSource> = Arc::new(KubeletPods::from_config(&k.config()).unwrap());
    let a = Attestor::new(
        "/proc".into(),
        Arc::new(KillDuring(inner, std::sync::Mutex::new(p))),
    );
    // The kubelet found the pod, but the caller is gone by the re-check.
    let e = a.attest(&peer).await.unwrap_err();
    assert_eq!(
        (e.code(), jss::server::Code::from(&e).status()),
        ("process_gone", 401),
        "{e}"
    );
}

#[tokio::test]
async fn pod_listed_only_after_a_few_seconds() {
    let p = PodProcess::spawn(
        Layout::V2Systemd(Qos::Burstable),
        &random_pod_uid(),
        &random_container_id(),
    );
    let k = Arc::new(KubeletStandin::start(pod_list(&[])));
    let (k2, pod) = (k.clone(), pod_for(&p));
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        k2.set_pods(pod_list(&[pod]));
    });
    let peer = PeerProcess::by_start_time(Path::new("/proc"), p.pid(), 0, 0).unwrap();
    // A window far longer than the pod takes to appear, also on a slow machine.
    let mut cfg = k.config();
    cfg.retry_window_ms = 30_000;
    let a = Attestor::new(
        "/proc".into(),
        Arc::new(KubeletPods::from_config(&cfg).unwrap()),
    );
    let w = a.attest(&peer).await.unwrap();
    assert_eq!(w.pod_uid, p.pod_uid);
    assert!(k.requests() >= 3);
}

#[tokio::test]
async fn kubelet_down_is_unavailable() {
    let p = PodProcess::spawn(
        Layout::V1Cgroupfs(Qos::Burstable),
        &random_pod_uid(),
        &random_container_id(),
    );
    let mut k = KubeletStandin::start(pod_list(&[pod_for(&p)]));
    let mut cfg = k.config();
    cfg.retry_window_ms = 300;
    k.stop();
    let a = Attestor::new(
        "/proc".into(),
        Arc::new(KubeletPods::from_config(&cfg).unwrap()),
    );
    let peer = PeerProcess::by_start_time(Path::new("/proc"), p.pid(), 0, 0).unwrap();
    let e = a.attest(&peer).await.unwrap_err();
    assert_eq!(
        (e.code(), jss::server::Code::from(&e).status()),
        ("kubelet_unavailable", 503),
        "{e}"
    );
    assert!(e.to_string().contains(&p.container_id), "{e}");
}

#[test]
fn inspect_with_a_pod_list_file_and_with_the_kubelet() {
    let p = PodProcess::spawn(
        Layout::V2Systemd(Qos::Guaranteed),
        &random_pod_uid(),
        &random_container_id(),
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pods.json");
    std::fs::write(
        &file,
        serde_json::to_vec(&pod_list(&[pod_for(&p)])).unwrap(),
    )
    .unwrap();
    let args = |pods_json, config| InspectArgs {
        pid: p.pid(),
        proc_root: None,
        pods_json,
        config,
    };

    // The kernel's view only.
    let r = run(&args(None, None)).unwrap();
    assert_eq!(
        (r.pod_uid.as_deref(), r.container_id.as_str()),
        (Some(p.pod_uid.as_str()), p.container_id.as_str())
    );
    assert!(r.workload.is_none());
    // A saved pod list.
    let r = run(&args(Some(file), None)).unwrap();
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["workload"]["pod_name"], "api-5c6d");
    assert_eq!(json["workload"]["images"][0]["kind"], "container");
    // The kubelet from the daemon's own config file.
    let k = KubeletStandin::start(pod_list(&[pod_for(&p)]));
    let c = k.config();
    let toml = format!(
        "cluster_name = \"c\"\ncluster_region = \"r\"\nnode_name = \"n\"\nproc_root = \"/proc\"\n\n[kubelet]\nurl = \"{}\"\ntoken_path = \"{}\"\nca_path = \"{}\"\nretry_window_ms = 1000\n",
        c.url,
        c.token_path.display(),
        c.ca_path.display()
    );
    let cfg = dir.path().join("jss.toml");
    std::fs::write(&cfg, toml).unwrap();
    let r = run(&args(None, Some(cfg.clone()))).unwrap();
    assert_eq!(r.workload.unwrap().container_name, "api");
    // A typo in [kubelet] is refused with the key's name.
    std::fs::write(
        &cfg,
        "cluster_name = \"c\"\ncluster_region = \"r\"\nnode_name = \"n\"\n[kubelet]\nurll = \"x\"\n",
    )
    .unwrap();
    let e = run(&args(None, Some(cfg))).unwrap_err().to_string();
    assert!(e.contains("urll"), "{e}");
    // A host process: the reason, with its code.
    let h = HostProcess::spawn();
    let e = run(&InspectArgs {
        pid: h.pid(),
        proc_root: None,
        pods_json: None,
        config: None,
    })
    .unwrap_err();
    assert!(e.to_string().contains("[not_in_pod]"), "{e}");
}
