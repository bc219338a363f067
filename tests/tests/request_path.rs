#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report
//! The daemon's request path without root, swtpm or cgroups: a real `App`
//! with the software signer, a static pod list (`StaticPods`, what `jss
//! inspect --pods-json` uses) and a fake proc tree (a temp dir holding
//! `<pid>/cgroup`), serving real HTTP/1.1 over a unix socket pair whose
//! peer is this test process. Every refusal the API gives must yield one
//! audit line and one `jss_denials_total` increment.

mod request_path_common;

use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use jss::attest::{AttestError, Peer, PeerProcess, Unattested};
use jss::kubelet::{KubeletError, LookupError, PodList, StaticPods};
use jss::server::{App, Code};
use jss::signer::{self, KeyPolicy, SignerConfig, SignerError};
use jss_tests::ca::TestCa;
use jss_tests::kubelet::{PodBuilder, pod_list};
use jss_tests::pods::random_pod_uid;
use request_path_common::*;
use serde_json::Value;

/// Each refusal the API can give: one audit line (outcome denied, the code,
/// this process's pid) and one increment of its `jss_denials_total` label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_counted_and_audited_once() {
    let node = Node::new();
    let proc_root = node.dir.path().join("proc");
    let pid = std::process::id() as i32;
    let body_deadline = "[limits]\nheader_timeout_ms = 1000\nrequest_timeout_ms = 45000\n";
    let get_token = b"GET /v1/token HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec();
    let post = |body: &str| {
        format!(
            "POST /v1/token HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    let ok_pods = node.pods(node.running());
    let with_pods = |pods: Value| node.static_app(body_deadline, pods);
    let failing = |f: fn() -> LookupError| {
        node.app(
            body_deadline,
            Arc::clone(&node.signer),
            Arc::new(Answer::Fail(f)),
        )
    };
    let mut stopped = node.running();
    stopped.state = "terminated".into();

    // (code, app, request, peer pid as audited)
    let mut cases: Vec<(Code, Arc<App>, Vec<u8>, i32)> = vec![
        (Code::BadAudience, with_pods(ok_pods.clone()), b"GET /v1/token?audience=nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(), pid),
        (Code::BadRequest, with_pods(ok_pods.clone()), post("[1]"), pid),
        // A body that breaks its chunked encoding: a body read error.
        (Code::BadRequest, with_pods(ok_pods.clone()), b"POST /v1/token HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(), pid),
        (Code::TooLarge, with_pods(ok_pods.clone()), post(&"x".repeat(5000)), pid),
        (Code::SlowBody, with_pods(ok_pods.clone()), b"POST /v1/token HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n{\"aud".to_vec(), pid),
        (Code::NotFound, with_pods(ok_pods.clone()), b"GET /v2/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(), pid),
        (Code::MethodNotAllowed, with_pods(ok_pods.clone()), b"DELETE /v1/token HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(), pid),
        (Code::PodNotFound, with_pods(pod_list(&[])), get_token.clone(), pid),
        (Code::ContainerNotRunning, with_pods(node.pods(stopped)), get_token.clone(), pid),
        (Code::KubeletTimeout, failing(|| kubelet(KubeletError::Timeout { url: "https://kubelet".into(), after: Duration::from_secs(2) })), get_token.clone(), pid),
        (Code::KubeletUnauthorized, failing(|| kubelet(KubeletError::Unauthorized { url: "https://kubelet".into() })), get_token.clone(), pid),
        (Code::KubeletForbidden, failing(|| kubelet(KubeletError::Forbidden { url: "https://kubelet".into() })), get_token.clone(), pid),
        (Code::KubeletBadStatus, failing(|| kubelet(KubeletError::Status { url: "https://kubelet".into(), status: 500 })), get_token.clone(), pid),
        (Code::KubeletResponseTooLarge, failing(|| kubelet(KubeletError::TooLarge { url: "https://kubelet".into(), limit: 1 })), get_token.clone(), pid),
        (Code::KubeletTokenUnreadable, failing(|| kubelet(KubeletError::Token { path: "/token".into(), source: std::io::ErrorKind::NotFound.into() })), get_token.clone(), pid),
        (Code::KubeletClientConfig, failing(|| kubelet(KubeletError::File { what: "the CA", path: "/ca.pem".into(), source: std::io::ErrorKind::NotFound.into() })), get_token.clone(), pid),
        (Code::PodMismatch, with_pods(pod_list(&[PodBuilder::new(&random_pod_uid(), "team-a", "app-0").container(node.running()).json()])), get_token.clone(), pid),
        (Code::KubeletMalformed, failing(|| kubelet(KubeletError::Malformed { url: "https://kubelet".into(), source: PodList::parse(b"[").unwrap_err() })), get_token.clone(), pid),
        (Code::DuplicateContainerId, failing(|| LookupError::Duplicate { container_id: "c".into(), pods: vec!["a/b".into(), "c/d".into()] }), get_token.clone(), pid),
        (Code::Timeout, node.app("[limits]\nrequest_timeout_ms = 300\n", Arc::clone(&node.signer), Arc::new(Answer::Never)), get_token.clone(), pid),
        (Code::SignerUnavailable, node.app(body_deadline, Arc::new(GatedSigner { inner: Arc::clone(&node.signer), gate: None, fail: Some(|| SignerError::TpmAnswer { op: "sign", what: "an answer the test made up" }) }), Arc::new(StaticPods::new(PodList::parse(ok_pods.to_string().as_bytes()).unwrap()))), get_token.clone(), pid),
    ];
    // Refused at accept: the kernel named no process.
    cases.push((
        Code::NoPeerPid,
        with_pods(ok_pods.clone()),
        get_token.clone(),
        0,
    ));

    for (code, app, raw, audited_pid) in cases {
        let before = node.audit().len();
        let peer = if code == Code::NoPeerPid {
            Peer::new(Err(Unattested {
                pid: 0,
                uid: 0,
                error: AttestError::NoPeerPid,
            }))
        } else {
            this_process(&proc_root)
        };
        let (status, text) = exchange(&app, peer, &raw).await;
        assert_eq!(status, code.status(), "{code}: {text}");
        assert!(
            text.contains(&format!("\"error\":\"{code}\"")),
            "{code}: {text}"
        );
        assert_eq!(
            text.contains("retry-after: 1\r\n"),
            code.default_retry_after().is_some(),
            "{code}: {text}"
        );
        let lines = node.audit();
        assert_eq!(lines.len(), before + 1, "{code}: {:#?}", &lines[before..]);
        let line = &lines[before];
        assert_eq!(line["outcome"], "denied", "{code}: {line}");
        assert_eq!(line["code"], code.as_str(), "{code}: {line}");
        assert_eq!(line["pid"], audited_pid, "{code}: {line}");
        // Named once attested; the audience once read.
        let attested = code == Code::SignerUnavailable;
        assert_eq!(line["pod"] == "app-0", attested, "{code}: {line}");
        assert!(line.get("jti").is_none_or(Value::is_null), "{code}: {line}");
        let audience = match code {
            Code::BadAudience => "nope",
            Code::Timeout => "",
            c if matches!(c.status(), 401 | 403 | 500 | 503) => "vault",
            _ => "",
        };
        assert_eq!(
            line["audience"].as_str().unwrap_or(""),
            audience,
            "{code}: {line}"
        );
        assert_eq!(
            denials(&app),
            vec![(code.as_str().to_string(), 1)],
            "{code}"
        );
    }
}

/// The caller is not in a pod; its pid names another process by the time
/// it is checked; it has exited. Start-time guard on the fake proc tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_refusals_by_the_fake_proc_tree() {
    let node = Node::new();
    let proc_root = node.dir.path().join("proc");
    let app = node.static_app("", node.pods(node.running()));
    let by_start_time = || {
        // Our euid: the owner of the fake /proc/<pid> we made.
        let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(node.proc_dir()).unwrap());
        let p = PeerProcess::by_start_time(&proc_root, std::process::id() as i32, uid, 0);
        Peer::new(Ok(p.unwrap()))
    };
    node.set_start_time(100);
    let (status, text) = get(&app, by_start_time(), "/v1/token").await;
    assert_eq!(status, 200, "{text}");

    let peer = by_start_time();
    node.set_start_time(200);
    assert_eq!(get(&app, peer, "/v1/token").await.0, 401);
    assert_eq!(node.audit().last().unwrap()["code"], "process_changed");

    node.set_start_time(200);
    let peer = by_start_time();
    std::fs::remove_file(node.proc_dir().join("stat")).unwrap();
    assert_eq!(get(&app, peer, "/v1/token").await.0, 401);
    assert_eq!(node.audit().last().unwrap()["code"], "process_gone");

    node.set_cgroup("0::/user.slice/user-1000.slice/session-3.scope\n");
    let (status, text) = get(&app, this_process(&proc_root), "/v1/token").await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("not_in_pod"), "{text}");
    let counts = denials(&app);
    for code in ["process_changed", "process_gone", "not_in_pod"] {
        assert!(
            counts.contains(&(code.to_string(), 1)),
            "{code}: {counts:?}"
        );
    }
    assert_eq!(node.audit().len(), 4);
}

/// A second request for the same pod, container and audience is the cached
/// token (audited `cached`, counted as a hit, no claims built or signed);
/// another audience or a disabled cache signs anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_hits_and_misses() {
    let node = Node::new();
    let proc_root = node.dir.path().join("proc");
    let app = node.static_app("", node.pods(node.running()));
    let mut tokens = Vec::new();
    for path in ["/v1/token", "/v1/token", "/v1/token?audience=other"] {
        let (status, text) = get(&app, this_process(&proc_root), path).await;
        assert_eq!(status, 200, "{text}");
        tokens.push(body(&text).trim().to_string());
    }
    assert_eq!(tokens[0], tokens[1]);
    assert_ne!(jti_of(&tokens[0]), jti_of(&tokens[2]));
    let outcomes: Vec<Value> = node.audit().iter().map(|l| l["outcome"].clone()).collect();
    assert_eq!(outcomes, ["issued", "cached", "issued"]);
    let metrics = app.metrics.render();
    assert!(metrics.contains("jss_cache_hits_total 1\n"), "{metrics}");
    assert!(metrics.contains("jss_tokens_issued_total 3\n"), "{metrics}");

    let off = node.static_app("[cache]\nenabled = false\n", node.pods(node.running()));
    let a = get(&off, this_process(&proc_root), "/v1/token").await.1;
    let b = get(&off, this_process(&proc_root), "/v1/token").await.1;
    assert_ne!(jti_of(body(&a)), jti_of(body(&b)));
}

/// With `limits.signer_queue` requests waiting for the signer, the next one
/// gets 503 `overloaded` with Retry-After, and the waiting one still
/// completes once the signer answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_503_and_the_queued_request_completes() {
    let node = Node::new();
    let proc_root = node.dir.path().join("proc");
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let gated = GatedSigner {
        inner: Arc::clone(&node.signer),
        gate: Some(Gate {
            entered: Mutex::new(entered_tx),
            release: Mutex::new(release_rx),
        }),
        fail: None,
    };
    let list = PodList::parse(node.pods(node.running()).to_string().as_bytes()).unwrap();
    let app = node.app(
        "[limits]\nsigner_queue = 1\n",
        Arc::new(gated),
        Arc::new(StaticPods::new(list)),
    );
    let first = tokio::spawn({
        let app = Arc::clone(&app);
        let peer = this_process(&proc_root);
        async move { get(&app, peer, "/v1/token").await }
    });
    tokio::task::spawn_blocking(move || entered.recv().unwrap())
        .await
        .unwrap();
    let (status, text) = get(&app, this_process(&proc_root), "/v1/token?audience=other").await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("\"error\":\"overloaded\""), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1\r\n"),
        "{text}"
    );
    release.send(()).unwrap();
    let (status, text) = first.await.unwrap();
    assert_eq!(status, 200, "{text}");
    assert_eq!(denials(&app), vec![("overloaded".to_string(), 1)]);
    let outcomes: Vec<Value> = node.audit().iter().map(|l| l["outcome"].clone()).collect();
    assert_eq!(outcomes, ["denied", "issued"]);
}

/// SIGHUP's reload: a new chain.pem is served and signs from then on (the
/// cache is emptied, so no token with the old x5c is handed out); a bad
/// chain is refused and the old one kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_the_chain_and_empties_the_cache() {
    let node = Node::new();
    let proc_root = node.dir.path().join("proc");
    let state = node.dir.path().join("state");
    let app = node.static_app("", node.pods(node.running()));
    let x5c = |token: &str| {
        let (header, _) = jss::token::decode_unverified(token.trim()).unwrap();
        serde_json::to_value(header).unwrap()["x5c"].clone()
    };
    let old_bundle = body(&get(&app, this_process(&proc_root), "/v1/bundle").await.1).to_string();
    let old = body(&get(&app, this_process(&proc_root), "/v1/token").await.1).to_string();

    write_chain(
        &state,
        node.signer.public_key(),
        &TestCa::named("second root"),
    );
    app.reload_chain().unwrap();
    let new_bundle = body(&get(&app, this_process(&proc_root), "/v1/bundle").await.1).to_string();
    assert_ne!(new_bundle, old_bundle);
    assert_eq!(
        new_bundle,
        std::fs::read_to_string(state.join("chain.pem")).unwrap()
    );
    let new = body(&get(&app, this_process(&proc_root), "/v1/token").await.1).to_string();
    assert_ne!(x5c(&new), x5c(&old));
    let outcomes: Vec<Value> = node.audit().iter().map(|l| l["outcome"].clone()).collect();
    assert_eq!(
        outcomes,
        ["issued", "issued"],
        "the old token must not be served"
    );

    // A chain for another key: refused, the current one stays.
    let other_dir = tempfile::tempdir().unwrap();
    let other = signer::open(
        &SignerConfig {
            kind: signer::SignerKind::Software,
            tcti: String::new(),
            state_dir: other_dir.path().to_path_buf(),
            pcrs: None,
        },
        KeyPolicy::CreateIfMissing,
    )
    .unwrap()
    .0;
    write_chain(&state, other.public_key(), &TestCa::new());
    assert!(app.reload_chain().is_err());
    let kept = body(&get(&app, this_process(&proc_root), "/v1/bundle").await.1).to_string();
    assert_eq!(kept, new_bundle);
}

/// A key the TPM will never use again (boot state changed): 503
/// `signer_unavailable` saying what to do, and no Retry-After, since asking
/// again cannot help.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signer_that_cannot_recover_gets_no_retry_after() {
    let node = Node::new();
    let proc_root = node.dir.path().join("proc");
    let refusing = GatedSigner {
        inner: Arc::clone(&node.signer),
        gate: None,
        fail: Some(|| SignerError::PcrMismatch {
            pcrs: "sha256:7".into(),
        }),
    };
    let list = PodList::parse(node.pods(node.running()).to_string().as_bytes()).unwrap();
    let app = node.app("", Arc::new(refusing), Arc::new(StaticPods::new(list)));
    let (status, text) = get(&app, this_process(&proc_root), "/v1/token").await;
    assert_eq!(status, 503, "{text}");
    assert!(
        text.contains("signer_unavailable") && text.contains("--rotate"),
        "{text}"
    );
    assert!(!text.to_ascii_lowercase().contains("retry-after"), "{text}");
    assert_eq!(denials(&app), vec![("signer_unavailable".to_string(), 1)]);
}
