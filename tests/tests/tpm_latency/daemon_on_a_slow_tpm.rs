//! The daemon on a TPM slowed to 40 ms per signature by the proxy.

use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::Digest as _;

use jss::signer::SignerKind;
use jss_tests::daemon::{Daemon, bin, metric};
use jss_tests::kubelet::{Ctr, PodBuilder, pod_list};
use jss_tests::node::{Node, pod_json, run_in, spawn_in};
use jss_tests::pods::{Layout, PodProcess, Qos, random_container_id, random_pod_uid};
use jss_tests::tpm_proxy::{TPM2_CC_SIGN, TpmProxy};
use jss_tests::watch::wait_for;

const LATENCY: Duration = Duration::from_millis(40);
/// A refresh goes ahead of waiting callers only this close to its old
/// token's half-life (`jss::signer::URGENT`).
const URGENT_S: u64 = 1;

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sleep_until_unix(t: u64) {
    while now_unix() < t {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A node whose daemon signs through a proxy adding 40 ms per
/// `TPM2_Sign`, listing its own pod and `extra` new one-container pods.
struct SlowNode {
    node: Node,
    proxy: TpmProxy,
    daemon: Daemon,
    /// (pod UID, container ID) of the extra pods.
    extra: Vec<(String, String)>,
}

impl SlowNode {
    fn start(config_extra: &str, extra_pods: usize) -> Self {
        let node = Node::new(SignerKind::Tpm, config_extra);
        let tpm = node.tpm.as_ref().unwrap();
        let proxy = TpmProxy::start(tpm.port(), LATENCY, &[TPM2_CC_SIGN]).unwrap();
        let config = node.config.replace(&tpm.tcti(), &proxy.tcti());
        assert_ne!(config, node.config, "the daemon must use the slow TPM");
        let extra: Vec<(String, String)> = (0..extra_pods)
            .map(|_| (random_pod_uid(), random_container_id()))
            .collect();
        let mut pods = vec![pod_json(&node.pod_uid, &node.app_id, &node.side_id)];
        for (i, (uid, id)) in extra.iter().enumerate() {
            pods.push(
                PodBuilder::new(uid, "burst", &format!("app-{i}"))
                    .container(Ctr::running("app", "registry.example.com/app:1", id))
                    .json(),
            );
        }
        node.kubelet.set_pods(pod_list(&pods));
        let daemon = Daemon::start(node.path(), &config);
        Self {
            node,
            proxy,
            daemon,
            extra,
        }
    }

    fn sock(&self) -> String {
        self.daemon.socket.to_str().unwrap().to_string()
    }

    /// Processes in the extra pods `range`.
    fn pods(&self, range: std::ops::Range<usize>) -> Vec<PodProcess> {
        self.extra[range]
            .iter()
            .map(|(uid, id)| PodProcess::spawn(Layout::V2Systemd(Qos::BestEffort), uid, id))
            .collect()
    }

    fn signs(&self) -> u64 {
        self.proxy.counters.slowed.load(Ordering::Relaxed)
    }
}

/// Claims of a compact JWS.
fn claims(token: &str) -> serde_json::Value {
    use base64::Engine as _;
    let part = token.split('.').nth(1).unwrap();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&raw).unwrap()
}

/// The digest the TPM signed for a token: SHA-256 of `header.claims`.
fn signed_digest(token: &str) -> Vec<u8> {
    let input = &token[..token.rfind('.').unwrap()];
    sha2::Sha256::digest(input.as_bytes()).to_vec()
}

fn token_of(out: &Output) -> String {
    assert!(
        out.status.success(),
        "no token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Holds `jss token` processes inside their pods until [`Gate::open`]:
/// each first reads a line from a FIFO the test keeps open, so all ask
/// at once, however long starting them took.
struct Gate {
    fifo: PathBuf,
    writer: std::fs::File,
    held: usize,
    _dir: tempfile::TempDir,
}

impl Gate {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("gate");
        assert!(
            Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        // Read-write: never blocks, and keeps the FIFO open for readers
        // that start after the release.
        let writer = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo)
            .unwrap();
        Self {
            fifo,
            writer,
            held: 0,
            _dir: dir,
        }
    }

    fn token(&mut self, pod: &PodProcess, sock: &str) -> Child {
        self.held += 1;
        let (fifo, jss) = (self.fifo.to_str().unwrap(), bin("jss"));
        spawn_in(
            pod,
            Path::new("/bin/sh"),
            &[
                "-c",
                r#"read _ < "$0"; exec "$1" token --socket "$2""#,
                fifo,
                jss.to_str().unwrap(),
                sock,
            ],
            Stdio::piped(),
        )
    }

    /// One line per held process: each `read` takes exactly one.
    fn open(&mut self) {
        self.writer
            .write_all("\n".repeat(self.held).as_bytes())
            .unwrap();
    }
}

/// 60 new pods ask at once on a TPM taking 40 ms per signature while
/// tokens of 13 running workloads fall due for refresh. All get tokens,
/// none refused, and each new pod's token waited at most for the
/// signatures queued ahead of it: the j-th burst token the TPM signed
/// is at most its (j + 1 + u)-th signature since the release. The 1 is
/// a signature that may be in flight at the release (a refresh started
/// while the TPM was idle); u counts the refreshes the daemon may put
/// ahead of waiting callers, those within a second of their old token's
/// half-life during the burst (0 unless the burst outlasts the
/// running workloads' refresh points: it is computed, not assumed).
/// Callers queued behind refreshes that are not urgent would break it.
/// Then the steady workload, asking past its first token's half-life,
/// gets a token re-signed ahead of need from the cache.
#[test]
fn a_burst_of_new_pods_is_served_ahead_of_refreshes_in_order() {
    const WAVE: usize = 12;
    const BURST: usize = 60;
    // Refresh points 28–29 s, earlier by the queue's measured wait (the
    // burst's 2.4 s); urgent from 29 s.
    const LIFE: u64 = 60;
    let n = SlowNode::start(&format!("token_ttl_seconds = {LIFE}\n"), WAVE + BURST);
    let sock = n.sock();

    // The steady workload and a wave of running workloads ask once.
    let steady = PodProcess::spawn(
        Layout::V2Systemd(Qos::Burstable),
        &n.node.pod_uid,
        &n.node.app_id,
    );
    let first = claims(&token_of(&run_in(&steady, &["token", "--socket", &sock])));
    let wave = n.pods(0..WAVE);
    let asked: Vec<Child> = wave
        .iter()
        .map(|p| {
            spawn_in(
                p,
                &bin("jss"),
                &["token", "--socket", &sock],
                Stdio::piped(),
            )
        })
        .collect();
    let mut running = vec![first.clone()];
    for c in asked {
        running.push(claims(&token_of(&c.wait_with_output().unwrap())));
    }

    // The burst is released once the first refreshes are due, so more
    // fall due while it waits for the TPM.
    let burst = n.pods(WAVE..WAVE + BURST);
    let mut gate = Gate::new();
    let children: Vec<Child> = burst.iter().map(|p| gate.token(p, &sock)).collect();
    sleep_until_unix(first["iat"].as_u64().unwrap() + LIFE / 2 - URGENT_S - 3);
    let log_start = n.proxy.counters.signed_digests().len();
    gate.open();
    let tokens: Vec<String> = children
        .into_iter()
        .map(|c| token_of(&c.wait_with_output().unwrap()))
        .collect();
    let burst_end = now_unix();
    let refreshes = || metric(&n.daemon.metrics(), "jss_refreshes_total");
    let refreshed_in_burst = refreshes();

    let ours: HashSet<Vec<u8>> = tokens.iter().map(|t| signed_digest(t)).collect();
    assert_eq!(ours.len(), BURST, "every new pod got a token of its own");
    let urgent = running
        .iter()
        .filter(|c| {
            let half = (c["iat"].as_u64().unwrap() + c["exp"].as_u64().unwrap()) / 2;
            half - URGENT_S <= burst_end
        })
        .count();
    let log = n.proxy.counters.signed_digests();
    eprintln!(
        "burst done {} s after the first token; {urgent} refreshes may have been urgent; {} signatures since the release",
        burst_end - first["iat"].as_u64().unwrap(),
        log.len() - log_start
    );
    let mut j = 0;
    for (i, d) in log[log_start..].iter().enumerate() {
        if ours.contains(d) {
            j += 1;
            assert!(
                i < j + 1 + urgent,
                "burst token {j} was the TPM's signature {} since the release: more than {} signatures went ahead of it",
                i + 1,
                1 + urgent
            );
        }
    }
    assert_eq!(j, BURST, "each new pod's token was signed by the TPM once");

    // Past the first token's half-life the steady workload gets a token
    // that was re-signed ahead of need: handed out from the cache.
    let (iat, exp) = (
        first["iat"].as_u64().unwrap(),
        first["exp"].as_u64().unwrap(),
    );
    sleep_until_unix(iat + (exp - iat) / 2 + 1);
    // Done by now on an idle machine (`jss-bench slow-tpm` measures how
    // late refreshes are); waited for, not assumed, on a busy one.
    wait_for(
        60,
        "a refresh after the burst",
        &|| n.daemon.stderr(),
        || refreshes() > refreshed_in_burst,
    );
    let later = claims(&token_of(&run_in(&steady, &["token", "--socket", &sock])));
    assert_ne!(later["jti"], first["jti"]);
    let audit = n.daemon.audit_lines();
    let line = audit
        .iter()
        .rev()
        .find(|l| l["jti"] == later["jti"])
        .unwrap();
    assert_eq!(line["outcome"], "cached", "{line}");
    assert!(
        audit.iter().all(|l| l["outcome"] != "denied"),
        "nothing was refused: {audit:?}"
    );
    let metrics = n.daemon.metrics();
    assert!(metric(&metrics, "jss_refreshes_total") > 0.0, "{metrics}");
}

/// Workloads ask, then stop. Within the interest window (three token
/// lifetimes) their tokens are still re-signed; past it, and past the
/// last refreshed token's life, the daemon refreshes nothing more:
/// `jss_refreshes_total` and the TPM's signature count stand still.
#[test]
fn the_refresh_set_empties_once_workloads_stop_asking() {
    // The shortest life the config allows: a 30 s interest window.
    const LIFE: u64 = 10;
    const WINDOW: u64 = 3 * LIFE;
    let n = SlowNode::start(&format!("token_ttl_seconds = {LIFE}\n"), 3);
    let sock = n.sock();
    let mut pods = n.pods(0..3);
    pods.push(PodProcess::spawn(
        Layout::V2Systemd(Qos::Burstable),
        &n.node.pod_uid,
        &n.node.app_id,
    ));
    for round in 0..2 {
        if round > 0 {
            std::thread::sleep(Duration::from_secs(LIFE / 2));
        }
        for p in &pods {
            token_of(&run_in(p, &["token", "--socket", &sock]));
        }
    }
    let stopped = now_unix();
    let refreshes = || metric(&n.daemon.metrics(), "jss_refreshes_total");
    let at_stop = refreshes();

    // Nobody asks; inside the window the tokens are still kept fresh.
    sleep_until_unix(stopped + LIFE + 2);
    let inside = refreshes();
    assert!(
        inside >= at_stop + pods.len() as f64,
        "within the interest window every workload's token is re-signed: {at_stop} -> {inside}"
    );

    // Past the window and the last refreshed token's life.
    sleep_until_unix(stopped + WINDOW + LIFE + 2);
    let (r1, s1) = (refreshes(), n.signs());
    // Two more lifetimes: each entry would have been due at least twice.
    std::thread::sleep(Duration::from_secs(2 * LIFE));
    let (r2, s2) = (refreshes(), n.signs());
    assert_eq!(r1, r2, "refreshes went on after the interest window");
    assert_eq!(s1, s2, "the TPM kept signing after the interest window");
    assert!(r1 > inside, "refreshes continued until the window closed");
}

/// An HTTP answer as curl prints it with `-i`: status, Retry-After
/// seconds, the error code.
fn answer(out: &Output) -> (u16, Option<u32>, String) {
    let text = String::from_utf8_lossy(&out.stdout);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {text}"));
    let retry = text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("retry-after")
            .then(|| v.trim().parse().ok())?
    });
    let body = text.rsplit("\r\n\r\n").next().unwrap_or_default();
    let code = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_default();
    (status, retry, code)
}

/// `curl -i` for a token, from inside `pod` (a real HTTP client that
/// shows the headers).
fn curl(pod: &PodProcess, sock: &str) -> Child {
    spawn_in(
        pod,
        Path::new("curl"),
        &[
            "-sS",
            "-i",
            "--max-time",
            "60",
            "--unix-socket",
            sock,
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"audience":"vault"}"#,
            "http://jss/v1/token",
        ],
        Stdio::piped(),
    )
}

/// The TPM freezes (swtpm behind the slow proxy gets SIGSTOP): new pods
/// get 503s, each with a Retry-After: those beyond the signing queue's
/// bound at once (`overloaded`), those admitted when the request times
/// out. After SIGCONT the same pods get tokens, without a restart.
#[test]
fn a_tpm_that_stops_answering_gives_503_then_recovers() {
    const PODS: usize = 8;
    let n = SlowNode::start(
        "token_ttl_seconds = 20\n[limits]\nsigner_queue = 4\nrequest_timeout_ms = 5000\n",
        PODS,
    );
    let sock = n.sock();
    let app = PodProcess::spawn(
        Layout::V2Systemd(Qos::Burstable),
        &n.node.pod_uid,
        &n.node.app_id,
    );
    assert_eq!(
        answer(&curl(&app, &sock).wait_with_output().unwrap()).0,
        200
    );
    let pods = n.pods(0..PODS);
    let tpm_pid = n.node.tpm.as_ref().unwrap().pid().unwrap().to_string();
    let kill = |sig: &str| {
        assert!(
            Command::new("kill")
                .args([sig, tpm_pid.as_str()])
                .status()
                .unwrap()
                .success()
        );
    };

    kill("-STOP");
    let asked: Vec<Child> = pods.iter().map(|p| curl(p, &sock)).collect();
    let during: Vec<_> = asked
        .into_iter()
        .map(|c| answer(&c.wait_with_output().unwrap()))
        .collect();
    kill("-CONT");
    for (status, retry, code) in &during {
        assert_eq!(*status, 503, "{code}");
        assert!(
            ["overloaded", "timeout", "signer_unavailable"].contains(&code.as_str()),
            "{code}"
        );
        assert!(retry.is_some_and(|s| s >= 1), "{code} without Retry-After");
    }
    assert!(
        during.iter().any(|a| a.2 == "overloaded"),
        "{PODS} callers on a queue of 4: the bound sheds some at once: {during:?}"
    );

    // The TPM answers again: the same pods get tokens.
    let before = n.signs();
    for p in &pods {
        let (status, _, code) = answer(&curl(p, &sock).wait_with_output().unwrap());
        assert_eq!(status, 200, "after the TPM came back: {code}");
    }
    assert!(n.signs() >= before + PODS as u64);
    let denied = n
        .daemon
        .audit_lines()
        .iter()
        .filter(|l| l["outcome"] == "denied")
        .count();
    assert_eq!(denied, PODS, "each refusal audited once");
}
