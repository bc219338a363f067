//! Nobody gets an identity that is not theirs: not another pod's, not one a
//! reused pid would inherit, not one made of claims the caller sends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use jss::signer::SignerKind;
use jss_tests::daemon::{Daemon, bin};
use jss_tests::kubelet::{Ctr, PodBuilder, pod_list};
use jss_tests::node::{Node, pod_json, run_in, spawn_in};
use jss_tests::pods::{Layout, PodProcess, Qos, random_container_id, random_pod_uid};
use serde_json::Value;

fn claims(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout);
    let body = token
        .rsplit("\r\n\r\n")
        .next()
        .unwrap_or(&token)
        .trim()
        .to_string();
    let body = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["token"].as_str().map(str::to_string))
        .unwrap_or(body);
    jss::token::decode_unverified(&body).unwrap().1
}

#[test]
fn a_pod_never_gets_another_pods_claims() {
    let node = Node::new(SignerKind::Software, "");
    let (b_uid, b_id) = (random_pod_uid(), random_container_id());
    let b = PodBuilder::new(&b_uid, "payments", "payments-api")
        .service_account("payments")
        .container(Ctr::running(
            "api",
            "registry.example.com/payments:7",
            &b_id,
        ))
        .json();
    node.kubelet.set_pods(pod_list(&[
        pod_json(&node.pod_uid, &node.app_id, &node.side_id),
        b,
    ]));
    let d = Daemon::start(node.path(), &node.config);
    let sock = d.socket.to_str().unwrap();
    let pa = PodProcess::spawn(
        Layout::V1Cgroupfs(Qos::BestEffort),
        &node.pod_uid,
        &node.app_id,
    );
    let pb = PodProcess::spawn(Layout::V2Systemd(Qos::Guaranteed), &b_uid, &b_id);
    for _ in 0..3 {
        let a = claims(&run_in(&pa, &["token", "--socket", sock]));
        let b = claims(&run_in(&pb, &["token", "--socket", sock]));
        assert_eq!(
            (a["namespace"].as_str(), a["pod-uid"].as_str()),
            (Some("trusted-identity"), Some(node.pod_uid.as_str()))
        );
        assert_eq!(
            (b["namespace"].as_str(), b["pod-uid"].as_str()),
            (Some("payments"), Some(b_uid.as_str()))
        );
        assert_ne!(a["sub"], b["sub"]);
        assert_ne!(a["images"], b["images"]);
    }
}

#[test]
fn claims_sent_by_the_client_are_ignored() {
    let node = Node::new(SignerKind::Software, "");
    let d = Daemon::start(node.path(), &node.config);
    let pod = PodProcess::spawn(
        Layout::V2Systemd(Qos::Burstable),
        &node.pod_uid,
        &node.app_id,
    );
    let body = r#"{"audience":"vault","namespace":"kube-system","sub":"admin","pod":"x","images":"0000","claims":{"namespace":"kube-system"},"cluster-name":"other"}"#;
    let script = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\nb=sys.argv[2].encode()\ns.sendall(b'POST /v1/token?namespace=kube-system HTTP/1.1\\r\\nHost: j\\r\\nX-Namespace: kube-system\\r\\nConnection: close\\r\\nContent-Length: %d\\r\\n\\r\\n' % len(b) + b)\nd=b''\nwhile True:\n  c=s.recv(65536)\n  if not c: break\n  d+=c\nsys.stdout.write(d.decode())";
    let out = spawn_in(
        &pod,
        Path::new("/usr/bin/python3"),
        &["-c", script, d.socket.to_str().unwrap(), body],
        Stdio::piped(),
    )
    .wait_with_output()
    .unwrap();
    let c = claims(&out);
    assert_eq!(c["namespace"], "trusted-identity");
    assert_eq!(c["cluster-name"], "EUCluster");
    assert_eq!(c["pod"], "myubuntu-6756d665bc-gc5wz");
    assert_ne!(c["sub"], "admin");
    assert!(c.get("claims").is_none());
}

#[test]
fn a_socket_user_outside_any_pod_is_refused() {
    let node = Node::new(SignerKind::Software, "");
    let d = Daemon::start(node.path(), &node.config);
    let out = Command::new(bin("jss"))
        .args(["token", "--socket", d.socket.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("403") && err.contains("not_in_pod"), "{err}");
}

/// Starts `program args` held at a shell `read`, moves it into `pod`'s
/// cgroup, copies its /proc entry into `fake_proc` (which the daemon reads)
/// and releases it. Returns the child and its copied /proc directory.
fn staged(
    pod: &PodProcess,
    fake_proc: &Path,
    program: &Path,
    args: &[&str],
) -> (std::process::Child, std::path::PathBuf) {
    let mut child = Command::new("sh")
        .args(["-c", "read _ && exec \"$@\"", "sh"])
        .arg(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    std::fs::write(pod.cgroup_dir().join("cgroup.procs"), pid.to_string()).unwrap();
    let mine = fake_proc.join(pid.to_string());
    std::fs::create_dir(&mine).unwrap();
    for f in ["stat", "status", "cgroup"] {
        std::fs::copy(format!("/proc/{pid}/{f}"), mine.join(f)).unwrap();
    }
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    (child, mine)
}

/// Rewrites field 22 (start time) of a `/proc/<pid>/stat` copy.
fn bump_start_time(stat: &Path) {
    let s = std::fs::read_to_string(stat).unwrap();
    let close = s.rfind(')').unwrap();
    let mut fields: Vec<String> = s[close + 2..].split(' ').map(str::to_string).collect();
    // fields[0] is field 3 (state); field 22 is fields[19]
    let t: u64 = fields[19].parse().unwrap();
    fields[19] = (t + 1).to_string();
    std::fs::write(stat, format!("{}{}", &s[..close + 2], fields.join(" "))).unwrap();
}

#[test]
fn a_reused_pid_is_refused() {
    // The daemon reads a proc root we control, so "the caller exited and its
    // pid went to another process" can be staged between accept and answer.
    let fake_proc = tempfile::tempdir().unwrap();
    let node = Node::new(
        SignerKind::Software,
        &format!("proc_root = \"{}\"\n", fake_proc.path().display()),
    );
    let d = Daemon::start(node.path(), &node.config);
    // A pod the kubelet does not list yet: the request waits for newer lists.
    let (uid, id) = (random_pod_uid(), random_container_id());
    let pod = PodProcess::spawn(Layout::V2Systemd(Qos::Burstable), &uid, &id);
    let (child, mine) = staged(
        &pod,
        fake_proc.path(),
        &bin("jss"),
        &["token", "--socket", d.socket.to_str().unwrap()],
    );
    std::thread::sleep(Duration::from_millis(600));
    // The pid now belongs to "another process", and the pod shows up.
    bump_start_time(&mine.join("stat"));
    let late = PodBuilder::new(&uid, "late", "late-pod")
        .container(Ctr::running("app", "docker.io/library/ubuntu:24.04", &id))
        .json();
    node.kubelet.set_pods(pod_list(&[
        pod_json(&node.pod_uid, &node.app_id, &node.side_id),
        late,
    ]));
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "a reused pid got a token");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("401") && err.contains("process_changed"),
        "{err}"
    );
}

#[test]
fn a_reused_pid_is_refused_on_a_kept_alive_connection() {
    // The container is located once per connection; the PID-reuse guard
    // must still run for every request on it.
    let fake_proc = tempfile::tempdir().unwrap();
    let node = Node::new(
        SignerKind::Software,
        &format!(
            "proc_root = \"{}\"\n[cache]\nenabled = false\n",
            fake_proc.path().display()
        ),
    );
    let d = Daemon::start(node.path(), &node.config);
    let pod = PodProcess::spawn(
        Layout::V1Cgroupfs(Qos::Burstable),
        &node.pod_uid,
        &node.app_id,
    );
    // Two requests on one connection, the second after a line on stdin.
    let script = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\nf=s.makefile('rb')\ndef ask():\n  s.sendall(b'GET /v1/token HTTP/1.1\\r\\nHost: j\\r\\n\\r\\n')\n  status=f.readline().split()[1].decode()\n  n=0\n  while True:\n    h=f.readline().strip()\n    if not h: break\n    if h.lower().startswith(b'content-length:'): n=int(h.split(b':')[1])\n  f.read(n)\n  return status\nprint(ask(), flush=True)\nsys.stdin.readline()\nprint(ask(), flush=True)";
    let (mut child, mine) = staged(
        &pod,
        fake_proc.path(),
        Path::new("/usr/bin/python3"),
        &["-c", script, d.socket.to_str().unwrap()],
    );
    let mut stdin = child.stdin.take().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut out, &mut first).unwrap();
    assert_eq!(first.trim(), "200");
    bump_start_time(&mine.join("stat"));
    stdin.write_all(b"again\n").unwrap();
    let mut second = String::new();
    std::io::BufRead::read_line(&mut out, &mut second).unwrap();
    assert_eq!(
        second.trim(),
        "401",
        "a reused pid kept its connection's identity"
    );
    let _ = child.wait();
}
