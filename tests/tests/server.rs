//! `jss serve` end to end through its socket: a swtpm-held key, a kubelet
//! stand-in, and callers that are real processes in kubepods cgroups.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use jss::signer::{self, KeyPolicy, SignerConfig, SignerKind};
use jss_tests::ca::TestCa;
use jss_tests::daemon::{Daemon, bin, metric};
use jss_tests::kubelet::{Ctr, PodBuilder, pod_list};
use jss_tests::node::{MACHINE_ID, Node, pod_json, run_in};
use jss_tests::pods::{Layout, PodProcess, Qos, random_container_id, random_pod_uid};
use jss_tests::swtpm::Swtpm;
use jss_tests::watch::wait_for;
use serde_json::Value;

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "jss failed: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// A raw HTTP/1.1 exchange on the socket from this (host) process.
fn raw(socket: &Path, request: &[u8]) -> String {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn get(socket: &Path, path: &str) -> String {
    raw(
        socket,
        format!("GET {path} HTTP/1.1\r\nHost: jss\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

struct Env {
    node: Node,
    daemon: Daemon,
}

impl std::ops::Deref for Env {
    type Target = Node;
    fn deref(&self) -> &Node {
        &self.node
    }
}

fn start(extra: &str) -> Env {
    let node = Node::new(SignerKind::Tpm, extra);
    let daemon = Daemon::start(node.path(), &node.config);
    Env { node, daemon }
}

fn decode(token: &str) -> (Value, Value) {
    let (h, c) = jss::token::decode_unverified(token).unwrap();
    (serde_json::to_value(h).unwrap(), c)
}

#[test]
fn token_for_a_pod_verifies_and_describes_it() {
    let env = start("");
    let pod = PodProcess::spawn(Layout::V2Systemd(Qos::Burstable), &env.pod_uid, &env.app_id);
    let token = stdout(&run_in(
        &pod,
        &["token", "--socket", env.daemon.socket.to_str().unwrap()],
    ));
    let token = token.trim();

    // Verify with the node key of the chain the daemon serves.
    let bundle = body(&get(&env.daemon.socket, "/v1/bundle"));
    let node_key = jss::signer::NodePublicKey::new(x509_leaf_key(&bundle));
    let chain = jss::chain::Chain::from_pem(&bundle, &node_key).unwrap();
    let spki = node_key.spki_pem();
    let key = jsonwebtoken::DecodingKey::from_ec_pem(spki.as_bytes()).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&["vault"]);
    v.set_issuer(&["jss://EUCluster"]);
    let data = jsonwebtoken::decode::<Value>(token, &key, &v).unwrap();
    let c = data.claims;

    let (h, _) = decode(token);
    assert_eq!(h["alg"], "ES256");
    assert_eq!(h["typ"], "JWT");
    assert_eq!(h["x5c"].as_array().unwrap().len(), 2);
    assert_eq!(h["x5c"], serde_json::json!(chain.x5c()));

    assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 60);
    assert_eq!(c["namespace"], "trusted-identity");
    assert_eq!(c["pod"], "myubuntu-6756d665bc-gc5wz");
    assert_eq!(c["pod-uid"], env.pod_uid.as_str());
    assert_eq!(c["service-account"], "demo-sa");
    assert_eq!(c["container"], "app");
    assert_eq!(c["node"], "node-1");
    assert_eq!(c["machineid"], MACHINE_ID);
    assert_eq!(c["cluster-name"], "EUCluster");
    assert_eq!(c["cluster-region"], "eu-de");
    assert_eq!(
        c["images-names"],
        "docker.io/library/ubuntu:24.04,docker.io/library/busybox:1.36"
    );
    assert_eq!(
        c["images"],
        jss::claims::images_hash(&[
            "docker.io/library/ubuntu:24.04",
            "docker.io/library/busybox:1.36"
        ])
    );
    // The stand-in reports a registry digest (`repo@sha256:`), no image ID.
    assert!(c["image"].as_str().unwrap().starts_with("sha256:"));
    assert!(c.get("image-id").is_none(), "{c}");
    assert_eq!(
        c["sub"],
        format!(
            "eu-de/EUCluster/trusted-identity/demo-sa/{}/{}/",
            c["images"].as_str().unwrap(),
            c["image"].as_str().unwrap()
        )
    );

    // The JWKS names the same key.
    let jwks = get(&env.daemon.socket, "/v1/jwks");
    assert!(jwks.contains(h["kid"].as_str().unwrap()), "{jwks}");
}

fn x509_leaf_key(pem: &str) -> p256::PublicKey {
    use p256::pkcs8::DecodePublicKey as _;
    use x509_cert::der::Encode as _;
    let certs = x509_cert::Certificate::load_pem_chain(pem.as_bytes()).unwrap();
    let spki = certs[0]
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .unwrap();
    p256::PublicKey::from_public_key_der(&spki).unwrap()
}

fn body(response: &str) -> String {
    response.split_once("\r\n\r\n").unwrap().1.to_string()
}

#[test]
fn containers_get_their_own_tokens_and_the_cache_works() {
    let env = start("");
    let sock = env.daemon.socket.to_str().unwrap().to_string();
    let app = PodProcess::spawn(
        Layout::V1Cgroupfs(Qos::BestEffort),
        &env.pod_uid,
        &env.app_id,
    );
    let side = PodProcess::spawn(
        Layout::V2Systemd(Qos::Burstable),
        &env.pod_uid,
        &env.side_id,
    );

    let t_app = stdout(&run_in(&app, &["token", "--socket", &sock]));
    let t_app2 = stdout(&run_in(&app, &["token", "--socket", &sock]));
    let t_side = stdout(&run_in(&side, &["token", "--socket", &sock]));
    assert_eq!(t_app, t_app2, "within half-life the cached token is reused");
    assert_ne!(t_app, t_side);
    assert_eq!(decode(&t_app).1["container"], "app");
    assert_eq!(decode(&t_side).1["container"], "sidecar");
    // another audience is another token
    let t_other = stdout(&run_in(
        &app,
        &["token", "--socket", &sock, "--audience", "other"],
    ));
    assert_eq!(decode(&t_other).1["aud"], "other");

    let metrics = get(&env.daemon.socket, "/metrics");
    assert!(metrics.contains("jss_tokens_issued_total 4"), "{metrics}");
    assert!(metrics.contains("jss_cache_hits_total 1"), "{metrics}");
    assert!(metrics.contains("jss_kubelet_fetches_total"), "{metrics}");
    assert!(
        metrics.contains("\njss_token_ttl_seconds 60\n"),
        "{metrics}"
    );
    let guard = format!(
        "jss_pid_reuse_guard_info{{guard=\"{}\"}} 1",
        jss::attest::guard_supported()
    );
    assert!(metrics.contains(&guard), "{guard} in {metrics}");
    assert!(
        metrics.contains("jss_request_duration_seconds_count 4"),
        "{metrics}"
    );

    let audit = env.daemon.audit_lines();
    assert_eq!(audit.len(), 4, "{audit:?}");
    assert_eq!(audit[1]["outcome"], "cached");
    assert_eq!(audit[0]["jti"], decode(&t_app).1["jti"]);
    assert!(
        !std::fs::read_to_string(&env.daemon.audit_log)
            .unwrap()
            .contains(t_app.trim())
    );
}

#[test]
fn cache_expires_at_half_life() {
    let env = start("token_ttl_seconds = 10\n");
    let sock = env.daemon.socket.to_str().unwrap().to_string();
    let app = PodProcess::spawn(Layout::V2Systemd(Qos::Burstable), &env.pod_uid, &env.app_id);
    let t1 = stdout(&run_in(&app, &["token", "--socket", &sock]));
    let (_, c1) = decode(&t1);
    assert_eq!(
        c1["exp"].as_u64().unwrap() - c1["iat"].as_u64().unwrap(),
        10
    );
    std::thread::sleep(Duration::from_secs(6));
    let t2 = stdout(&run_in(&app, &["token", "--socket", &sock]));
    assert_ne!(t1, t2, "past half the lifetime a new token is signed");
}

#[test]
fn refusals_have_status_codes_and_reasons() {
    let env = start("[limits]\nheader_timeout_ms = 500\nmax_body_bytes = 64\n");
    let sock = env.daemon.socket.to_str().unwrap().to_string();

    // This test process is outside any pod.
    let out = Command::new(bin("jss"))
        .args(["token", "--socket", &sock])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("403") && err.contains("not_in_pod"), "{err}");

    let r = raw(
        &env.daemon.socket,
        b"POST /v1/token HTTP/1.1\r\nHost: j\r\nContent-Type: application/json\r\nContent-Length: 22\r\nConnection: close\r\n\r\n{\"audience\":\"nobody\"}\n",
    );
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(r.contains("bad_audience"), "{r}");

    let big = "x".repeat(1000);
    let r = raw(
        &env.daemon.socket,
        format!("POST /v1/token HTTP/1.1\r\nHost: j\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{big}", big.len()).as_bytes(),
    );
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");

    let r = raw(
        &env.daemon.socket,
        b"POST /v1/token HTTP/1.1\r\nHost: j\r\nContent-Length: 5\r\nConnection: close\r\n\r\n{nope",
    );
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(r.contains("\"error\":\"bad_request\""), "{r}");

    // A client that sends nothing is dropped after the header timeout.
    let mut idle = UnixStream::connect(&env.daemon.socket).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 64];
    let n = idle.read(&mut buf).unwrap_or(0);
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "idle connection kept {:?}",
        t.elapsed()
    );
    let _ = n;

    let metrics = get(&env.daemon.socket, "/metrics");
    assert!(
        metrics.contains("jss_denials_total{reason=\"not_in_pod\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("jss_denials_total{reason=\"bad_audience\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("jss_denials_total{reason=\"too_large\"} 1"),
        "{metrics}"
    );
    assert!(get(&env.daemon.socket, "/healthz").ends_with("ok\n"));
    assert!(get(&env.daemon.socket, "/nope").starts_with("HTTP/1.1 404"));
    let audit = env.daemon.audit_lines();
    assert!(audit.iter().any(|l| l["outcome"] == "denied"), "{audit:?}");
}

#[test]
fn plain_text_get_for_curl() {
    let env = start("");
    let app = PodProcess::spawn(Layout::V2Systemd(Qos::Burstable), &env.pod_uid, &env.app_id);
    // curl would do the same; here the request comes from inside the pod via a shell here-doc.
    let mut child = Command::new("sh")
        .args(["-c", "read _ && exec python3 -c \"$0\" \"$1\"",
            "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\ns.sendall(b'GET /v1/token?audience=vault HTTP/1.1\\r\\nHost: j\\r\\nConnection: close\\r\\n\\r\\n')\nd=b''\nwhile True:\n  c=s.recv(65536)\n  if not c: break\n  d+=c\nsys.stdout.write(d.decode())",
            env.daemon.socket.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::fs::write(
        app.cgroup_dir().join("cgroup.procs"),
        child.id().to_string(),
    )
    .unwrap();
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("content-type: text/plain"), "{out}");
    assert_eq!(decode(body(&out).trim()).1["aud"], "vault");
}

#[test]
fn sigterm_drains_in_flight_requests() {
    let mut env = start("");
    let sock = env.daemon.socket.to_str().unwrap().to_string();
    // A pod the kubelet does not list yet: its request waits for newer lists.
    let late_uid = random_pod_uid();
    let late_id = random_container_id();
    let late = PodProcess::spawn(Layout::V2Systemd(Qos::Burstable), &late_uid, &late_id);
    let fetches = env.kubelet.requests();
    let waiting = std::thread::spawn({
        let sock = sock.clone();
        move || run_in(&late, &["token", "--socket", &sock])
    });
    // Only that request fetches lists: two of them say it is in the
    // daemon, looking again (within its 3 s retry window).
    wait_for(
        30,
        "the request to wait for newer pod lists",
        &|| env.daemon.stderr(),
        || env.kubelet.requests() >= fetches + 2,
    );
    env.daemon.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    // The new pod shows up: the in-flight request completes.
    let late_pod = PodBuilder::new(&late_uid, "late", "late-pod")
        .container(Ctr::running(
            "app",
            "docker.io/library/ubuntu:24.04",
            &late_id,
        ))
        .json();
    env.kubelet.set_pods(pod_list(&[
        pod_json(&env.pod_uid, &env.app_id, &env.side_id),
        late_pod,
    ]));
    let out = waiting.join().unwrap();
    let token = stdout(&out);
    assert_eq!(decode(&token).1["namespace"], "late");
    let status = env
        .daemon
        .terminate(Duration::from_secs(10))
        .expect("jss exits after draining");
    assert!(status.success(), "{status}");
    assert!(
        UnixStream::connect(&env.daemon.socket).is_err(),
        "no longer accepting"
    );
}

#[test]
fn sighup_reloads_the_chain() {
    let env = start("");
    let before = get(&env.daemon.socket, "/v1/bundle");
    // Re-issue the chain from a new CA for the same key, then SIGHUP.
    let state = env.dir.path().join("state");
    let old = std::fs::read_to_string(state.join("chain.pem")).unwrap();
    let leaf = x509_leaf_key(&old);
    let ca = TestCa::named("Reloaded Root");
    jss::chain::write(
        &state,
        &ca.issue_node_chain(
            &jss::signer::NodePublicKey::new(leaf),
            Duration::from_secs(3600),
        ),
    )
    .unwrap();
    env.daemon.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let after = get(&env.daemon.socket, "/v1/bundle");
        if after != before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "chain not reloaded:\n{}",
            env.daemon.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn refuses_to_start_without_a_chain() {
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    signer::open(
        &SignerConfig {
            kind: SignerKind::Tpm,
            tcti: tpm.tcti(),
            state_dir: state.clone(),
            pcrs: None,
        },
        KeyPolicy::CreateIfMissing,
    )
    .unwrap();
    std::fs::write(dir.path().join("machine-id"), MACHINE_ID).unwrap();
    let d = dir.path().display();
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "socket = \"{d}/jss.sock\"\nstate_dir = \"{d}/state\"\ncluster_name = \"c\"\ncluster_region = \"r\"\nnode_name = \"n\"\nmachine_id_path = \"{d}/machine-id\"\n[signer]\nkind = \"tpm\"\ntcti = \"{}\"\n",
            tpm.tcti()
        ),
    )
    .unwrap();
    let out = Command::new(bin("jss"))
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .env("TSS2_LOG", "all+none")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("jss-bootstrap node register"), "{err}");

    // and a config error names its key before anything starts
    std::fs::write(
        &cfg,
        "cluster_name = \"c\"\ncluster_region = \"r\"\nnode_name = \"n\"\ntoken_ttl_seconds = 0\n",
    )
    .unwrap();
    let out = Command::new(bin("jss"))
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("token_ttl_seconds"));
}

#[test]
fn systemd_socket_activation_and_notify() {
    use std::os::unix::net::UnixDatagram;
    let s = Node::new(SignerKind::Tpm, "");
    let dir = s.path();
    std::fs::write(dir.join("config.toml"), &s.config).unwrap();
    let notify = UnixDatagram::bind(dir.join("notify.sock")).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let socket = dir.join("jss.sock");
    // systemd-socket-activate binds the socket and starts jss on the first
    // connection with LISTEN_FDS=1, as jss.socket would.
    let mut activator = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&socket)
        .arg(format!(
            "--setenv=NOTIFY_SOCKET={}",
            dir.join("notify.sock").display()
        ))
        .arg("--setenv=TSS2_LOG=all+none")
        .arg(bin("jss"))
        .args(["serve", "--config"])
        .arg(dir.join("config.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("systemd-socket-activate (package systemd)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "systemd-socket-activate did not bind"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(get(&socket, "/healthz").ends_with("ok\n"));
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("READY=1 from jss");
    assert_eq!(String::from_utf8_lossy(&buf[..n]).trim(), "READY=1");

    let app = PodProcess::spawn(Layout::V2Systemd(Qos::Guaranteed), &s.pod_uid, &s.app_id);
    let decoded = stdout(&run_in(
        &app,
        &["token", "--decode", "--socket", socket.to_str().unwrap()],
    ));
    let v: Value = serde_json::from_str(&decoded).unwrap();
    assert_eq!(v["header"]["alg"], "ES256");
    assert_eq!(v["claims"]["container"], "app");

    Command::new("kill")
        .arg(activator.id().to_string())
        .status()
        .unwrap();
    let n = notify.recv(&mut buf).expect("STOPPING=1 from jss");
    assert_eq!(String::from_utf8_lossy(&buf[..n]).trim(), "STOPPING=1");
    assert!(activator.wait().unwrap().success());
    assert!(
        socket.exists(),
        "a socket passed by systemd belongs to systemd: jss must not remove it"
    );
}

#[test]
fn jss_token_explains_failures() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin("jss"))
        .args(["token", "--socket"])
        .arg(dir.path().join("missing.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no JSS socket at") && err.contains("missing.sock"),
        "{err}"
    );
}

#[test]
fn a_hung_tpm_sheds_load_with_503() {
    let env = start("[cache]\nenabled = false\n[limits]\nsigner_queue = 1\n");
    let sock = env.daemon.socket.to_str().unwrap().to_string();
    let a = PodProcess::spawn(Layout::V2Systemd(Qos::Burstable), &env.pod_uid, &env.app_id);
    let b = PodProcess::spawn(
        Layout::V1Cgroupfs(Qos::Burstable),
        &env.pod_uid,
        &env.side_id,
    );
    let tpm_pid = env.tpm.as_ref().unwrap().pid().unwrap().to_string();
    // Signatures the signing thread has taken up.
    let taken = || metric(&env.daemon.metrics(), "jss_sign_queue_wait_seconds_count");
    let before = taken();
    // Freeze the TPM: the first request takes the only signer slot and waits.
    Command::new("kill")
        .args(["-STOP", &tpm_pid])
        .status()
        .unwrap();
    let first = std::thread::spawn({
        let sock = sock.clone();
        move || run_in(&a, &["token", "--socket", &sock])
    });
    wait_for(
        30,
        "the first request at the frozen TPM",
        &|| env.daemon.stderr(),
        || taken() > before,
    );
    let second = run_in(&b, &["token", "--socket", &sock]);
    Command::new("kill")
        .args(["-CONT", &tpm_pid])
        .status()
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("503") && err.contains("overloaded"), "{err}");
    // Once the TPM answers again, the waiting request completes.
    let token = stdout(&first.join().unwrap());
    assert_eq!(decode(&token).1["container"], "app");
}

#[test]
fn warns_when_the_node_certificate_is_nearly_expired() {
    let node = Node::new(SignerKind::Tpm, "");
    let state = node.path().join("state");
    let leaf = x509_leaf_key(&std::fs::read_to_string(state.join("chain.pem")).unwrap());
    let now = std::time::SystemTime::now();
    // 100 minutes of life, 10 left: 10%.
    let pem = TestCa::new().issue_node_chain_between(
        &jss::signer::NodePublicKey::new(leaf),
        now - Duration::from_secs(90 * 60),
        now + Duration::from_secs(10 * 60),
    );
    jss::chain::write(&state, &pem).unwrap();
    let d = Daemon::start(node.path(), &node.config);
    assert!(
        d.stderr().contains("less than 20% of its lifetime left"),
        "{}",
        d.stderr()
    );
    assert!(d.stderr().contains("jss-bootstrap node renew"));
}

#[test]
fn refusals_are_logged_with_the_request_and_workload_spans() {
    let mut env = start("");
    // A refusal after attestation: the TPM is gone when the token is signed.
    env.node.tpm.as_mut().unwrap().kill();
    let pod = PodProcess::spawn(
        Layout::V1Cgroupfs(Qos::BestEffort),
        &env.pod_uid,
        &env.app_id,
    );
    let out = run_in(
        &pod,
        &["token", "--socket", env.daemon.socket.to_str().unwrap()],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("503") && err.contains("signer_unavailable"),
        "{err}"
    );

    let log = env.daemon.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("signer_unavailable"))
        .unwrap_or_else(|| panic!("no log line for the refusal:\n{log}"));
    // Plain text (no terminal colours in a log file), the caller's pid first.
    assert!(!line.contains('\x1b'), "{line:?}");
    for part in [
        "token{pid=",
        "}:workload{namespace=trusted-identity pod=myubuntu-6756d665bc-gc5wz container=app}:",
    ] {
        assert!(line.contains(part), "{part} not in {line}");
    }
}
