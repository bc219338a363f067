//! Nobody gets an identity that is not theirs: not another pod's, not one a
//! reused pid would inherit, not one made of claims the caller sends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

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

/// The attack PID reuse opens: a process connects, hands the connection to
/// a child and exits; its pid goes to a process in another pod (here a real
/// reuse, staged through ns_last_pid), and the child asks on the connection,
/// once or, with `ask_first`, after a first request as itself. A `/healthz`
/// answer first proves the daemon took the connection while its process lived.
fn reuse_attack(ask_first: bool) {
    let node = Node::new(SignerKind::Software, "[cache]\nenabled = false\n");
    let (victim_uid, victim_id) = (random_pod_uid(), random_container_id());
    let victim_pod = PodBuilder::new(&victim_uid, "payments", "victim")
        .container(Ctr::running(
            "api",
            "registry.example.com/pay:1",
            &victim_id,
        ))
        .json();
    node.kubelet.set_pods(pod_list(&[
        pod_json(&node.pod_uid, &node.app_id, &node.side_id),
        victim_pod,
    ]));
    let d = Daemon::start(node.path(), &node.config);
    let attacker = PodProcess::spawn(
        Layout::V1Cgroupfs(Qos::Burstable),
        &node.pod_uid,
        &node.app_id,
    );
    let script = "import os,socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\nf=s.makefile('rb')\ndef ask(path=b'/v1/token'):\n  s.sendall(b'GET '+path+b' HTTP/1.1\\r\\nHost: j\\r\\n\\r\\n')\n  status=f.readline().split()[1].decode()\n  n=0\n  while True:\n    h=f.readline().strip()\n    if not h: break\n    if h.lower().startswith(b'content-length:'): n=int(h.split(b':')[1])\n  f.read(n)\n  return status\nask(b'/healthz')\nif sys.argv[2]=='1': print(ask(), flush=True)\nif os.fork()==0:\n  sys.stdin.readline()\n  print(ask(), flush=True)\nos._exit(0)";
    // A shell holds the program at `read` until it is in the pod's cgroup.
    let mut child = Command::new("sh")
        .args([
            "-c",
            "read _ && exec \"$@\"",
            "sh",
            "/usr/bin/python3",
            "-c",
            script,
        ])
        .args([
            d.socket.to_str().unwrap(),
            if ask_first { "1" } else { "0" },
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    std::fs::write(attacker.cgroup_dir().join("cgroup.procs"), pid.to_string()).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    stdin.write_all(b"go\n").unwrap();
    let mut line = String::new();
    if ask_first {
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert_eq!(line.trim(), "200", "the attacker's own first request");
    }
    // The connecting process exits (its child keeps the socket); reap it so
    // its pid is free, and give the pid to a process in the victim's pod.
    assert!(child.wait().unwrap().success());
    let _victim = PodProcess::spawn_as(
        Layout::V2Systemd(Qos::Guaranteed),
        &victim_uid,
        &victim_id,
        pid,
    );
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(cg.contains(&victim_id), "pid {pid} was not reused: {cg}");

    stdin.write_all(b"go\n").unwrap();
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(
        line.trim(),
        "401",
        "a connection whose process exited asked as the pid's new owner"
    );
    let audit = std::fs::read_to_string(node.path().join("audit.log")).unwrap();
    assert!(
        audit.contains("\"outcome\":\"denied\",\"code\":\"process_gone\"")
            || audit.contains("\"outcome\":\"denied\",\"code\":\"process_changed\""),
        "{audit}"
    );
    assert!(
        !audit.contains("victim"),
        "the victim's identity was issued: {audit}"
    );
}

#[test]
fn a_reused_pid_is_refused() {
    reuse_attack(false);
}

#[test]
fn a_reused_pid_is_refused_on_a_kept_alive_connection() {
    // The container is located once per connection; the PID-reuse guard
    // must still run for every request on it.
    reuse_attack(true);
}

/// A host user in no pod forges its mount table: it makes its own user and
/// mount namespace (`unshare -Urm`, no privilege needed), bind-mounts a
/// running pod container's cgroup directory, and asks for a token. Its
/// `/proc/<pid>/mountinfo` then names that container; only the cgroup file,
/// which the kernel writes about the process itself, may count.
#[test]
fn a_host_user_with_a_forged_mount_table_is_refused() {
    use std::os::unix::fs::{PermissionsExt as _, chown};
    const NOBODY: u32 = 65534;
    let node = Node::new(SignerKind::Software, "[cache]\nenabled = false\n");
    // The socket is 0666 by design; let `nobody` reach its directory.
    std::fs::set_permissions(node.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = Daemon::start(node.path(), &node.config);
    let victim = PodProcess::spawn(
        Layout::V2Systemd(Qos::BestEffort),
        &node.pod_uid,
        &node.app_id,
    );
    // The victim itself gets its token: the pod and daemon are set up right.
    let ok = claims(&run_in(
        &victim,
        &["token", "--socket", d.socket.to_str().unwrap()],
    ));
    assert_eq!(ok["pod-uid"].as_str(), Some(node.pod_uid.as_str()));

    let forge = tempfile::tempdir().unwrap();
    chown(forge.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    let ask = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\ns.sendall(b'GET /v1/token?audience=vault HTTP/1.1\\r\\nHost: j\\r\\nConnection: close\\r\\n\\r\\n')\nd=b''\nwhile True:\n  c=s.recv(65536)\n  if not c: break\n  d+=c\nsys.stdout.write(d.decode())";
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "unshare",
            "-Urm",
            "sh",
            "-c",
            // The mount table the daemon would see, then the request.
            "mount --bind \"$1\" \"$2\" && cat /proc/self/cgroup /proc/self/mountinfo >&2 && exec /usr/bin/python3 -c \"$3\" \"$4\"",
            "sh",
        ])
        .arg(victim.cgroup_dir())
        .arg(forge.path())
        .args([ask, d.socket.to_str().unwrap()])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "the forger could not run: {stderr}");
    // The forgery is in place: the caller's own mount table names the victim.
    let forged = stderr
        .lines()
        .find(|l| l.contains(forge.path().to_str().unwrap()))
        .unwrap_or_else(|| panic!("no forged mount in {stderr}"));
    assert!(forged.contains(&node.app_id), "{forged}");
    assert!(
        !stderr
            .lines()
            .take_while(|l| !l.contains(" - "))
            .any(|l| l.contains(&node.app_id)),
        "the forger's cgroup file names the victim: the test set-up is wrong\n{stderr}"
    );
    assert!(stdout.starts_with("HTTP/1.1 403"), "{stdout}");
    assert!(stdout.contains("\"not_in_pod\""), "{stdout}");
    let audit = d.audit_lines();
    let last = audit.last().unwrap();
    assert_eq!(last["outcome"], "denied", "{last}");
    assert_eq!(last["code"], "not_in_pod", "{last}");
    assert_eq!(last["uid"], NOBODY, "{last}");
    assert_eq!(
        audit.iter().filter(|l| l["outcome"] == "issued").count(),
        1,
        "only the victim's own token was issued: {audit:?}"
    );
}
