//! The CSI driver's token mode end to end (issue 16): `jss serve` with the
//! pod-token socket, `jss csi` as a real process, CSI gRPC over its unix
//! socket as the kubelet sends it, a real OpenBao. No timing is asserted
//! beyond "a newer token is in the file before the old one's half-life".

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use jss::csi::proto::{NodePublishVolumeRequest, NodeUnpublishVolumeRequest};
use jss_tests::cluster::{Cluster, MOUNT, PodDef, unix_now};
use jss_tests::csi::{self, CsiPlugin};
use jss_tests::daemon::{Daemon, ask, status_code};
use jss_tests::kubelet::{Ctr, Fault, PodBuilder, pod_list};
use jss_tests::node::{NAMESPACE, Node, POD_NAME};
use jss_tests::watch::wait_for;
use serde_json::Value;

/// The plugin's and the daemon's logs, for a failure message.
fn both_logs(plugin: &CsiPlugin, c: &Cluster) -> String {
    format!("plugin:\n{}\njss:\n{}", plugin.stderr(), c.daemon.stderr())
}

/// The volume context the kubelet sends for an inline token volume of `pod`
/// (`podInfoOnMount: true`).
fn token_context(pod: &PodDef, uid: &str) -> HashMap<String, String> {
    csi::pod_context(
        uid,
        &pod.namespace,
        &pod.name,
        "default",
        &[("mode", "token"), ("audience", "vault")],
    )
}

fn publish(target: &Path, ctx: HashMap<String, String>) -> NodePublishVolumeRequest {
    let name = target.parent().unwrap().file_name().unwrap();
    csi::publish_request(&format!("csi-{}", name.to_string_lossy()), target, ctx)
}

fn mounted(path: &Path) -> bool {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    jss::csi::mount::mount_points(&table).any(|p| p == path)
}

fn claims(token: &str) -> (jss::token::Header, Value) {
    jss::token::decode_unverified(token).unwrap()
}

fn life(c: &Value) -> (u64, u64) {
    (c["iat"].as_u64().unwrap(), c["exp"].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn token_volumes_carry_a_fresh_pod_level_token_and_only_for_listed_pods() {
    // Tokens of 20 s, a fresh signature per request (no cache) so that each
    // refresh is a newer token; the pod-token socket in a directory of its own.
    let run = tempfile::tempdir().unwrap();
    let pod_socket = run.path().join("jss-csi/jss.sock");
    let demo = PodDef::tsi_demo();
    let c = Cluster::start(
        &[],
        &format!(
            "token_ttl_seconds = 20\n[cache]\nenabled = false\n[csi]\npod_token = true\npod_token_socket = \"{}\"\n",
            pod_socket.display()
        ),
        &[&demo],
    );
    // Root only: 0700 directory, 0600 socket.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(pod_socket.parent().unwrap()), 0o700);
    assert_eq!(mode(&pod_socket), 0o600);

    let kubelet = csi::KubeletDir::new();
    let plugin_dir = run.path().join("csi");
    std::fs::create_dir(&plugin_dir).unwrap();
    let mut plugin = CsiPlugin::start(&plugin_dir, &c.daemon.config, kubelet.path());
    let mut node = csi::node_client(&plugin.endpoint).await;
    let logs = || both_logs(&plugin, &c);

    // NodePublishVolume as the kubelet sends it: the tmpfs and the token.
    let t = kubelet.target(&demo.uid, "jss-token");
    node.node_publish_volume(publish(&t, token_context(&demo, &demo.uid)))
        .await
        .unwrap_or_else(|s| panic!("publish: {s}\n{}", logs()));
    assert!(mounted(&t), "no tmpfs at {t:?}");
    let file = t.join("token");
    let first = std::fs::read_to_string(&file).unwrap();
    assert_eq!(mode(&file), 0o644);
    let (header, cl) = claims(&first);
    assert_eq!(header.alg, "ES256");
    assert_eq!(cl["aud"], "vault");
    assert_eq!(cl["pod-uid"], demo.uid.as_str());
    assert_eq!(cl["pod"], demo.name.as_str());
    assert_eq!(cl["namespace"], demo.namespace.as_str());
    assert_eq!(cl["service-account"], "default");
    assert_eq!(cl["images"], demo.images());
    for k in ["container", "image", "image-id"] {
        assert!(cl.get(k).is_none(), "pod-level token has {k}: {cl}");
    }
    assert!(cl["sub"].as_str().unwrap().ends_with("#pod"), "{cl}");
    let audit = c.daemon.audit_lines();
    let issued = audit.last().unwrap();
    assert_eq!(issued["outcome"], "issued", "{issued}");
    assert_eq!(issued["uid"], 0, "{issued}");
    assert!(issued["container"].is_null(), "{issued}");

    // It logs in to OpenBao (signature, issuer, audience, bound claims).
    let login = c.bao.run(
        "",
        &[
            "write",
            "-format=json",
            &format!("auth/{MOUNT}/login"),
            "role=jss",
            &format!("jwt={first}"),
        ],
    );
    assert!(
        login.status.success(),
        "login with the pod-level token: {}",
        String::from_utf8_lossy(&login.stderr)
    );

    // A republish (requiresRepublish) before the token is due keeps it.
    node.node_publish_volume(publish(&t, token_context(&demo, &demo.uid)))
        .await
        .unwrap_or_else(|s| panic!("republish: {s}\n{}", logs()));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), first);

    // Rewritten with a newer token before the old one's half-life.
    let (iat, exp) = life(&cl);
    let mut second = String::new();
    wait_for(30, "a newer token in the file", &logs, || {
        second = std::fs::read_to_string(&file).unwrap_or_default();
        !second.is_empty() && life(&claims(&second).1).0 > iat
    });
    assert!(
        unix_now() <= iat + (exp - iat) / 2,
        "refreshed after half-life\n{}",
        logs()
    );

    // A plugin restart (a DaemonSet update): the next republish resumes refreshing.
    drop(node);
    drop(plugin);
    plugin = CsiPlugin::start(&plugin_dir, &c.daemon.config, kubelet.path());
    let mut node = csi::node_client(&plugin.endpoint).await;
    let logs = || both_logs(&plugin, &c);
    node.node_publish_volume(publish(&t, token_context(&demo, &demo.uid)))
        .await
        .unwrap_or_else(|s| panic!("republish after restart: {s}\n{}", logs()));
    let iat2 = life(&claims(&second).1).0;
    wait_for(30, "a newer token after the plugin restart", &logs, || {
        let now = std::fs::read_to_string(&file).unwrap_or_default();
        !now.is_empty() && life(&claims(&now).1).0 > iat2
    });

    // Unpublish: the refresher stops, the tmpfs is gone, and so is the target.
    node.node_unpublish_volume(NodeUnpublishVolumeRequest {
        volume_id: "csi-jss-token".into(),
        target_path: t.display().to_string(),
    })
    .await
    .unwrap_or_else(|s| panic!("unpublish: {s}\n{}", logs()));
    assert!(!mounted(&t), "{t:?} still mounted");
    assert!(!file.exists() && !t.exists());

    // A pod the kubelet does not list yet: the daemon waits for it (its
    // retry window) and so does that publish, holding only its own target.
    // Another volume publishes and unpublishes meanwhile; then the pod is
    // listed and the waiting publish succeeds. With one lock for all
    // targets, the other calls would wait until the daemon gave up on the
    // pod (pod_not_found) and only then list it.
    let late = PodDef::new(&demo.namespace, "late-7c9d", "app", "app:1");
    let lt = kubelet.target(&late.uid, "jss-token");
    let mut late_node = node.clone();
    let late_publish = publish(&lt, token_context(&late, &late.uid));
    let waiting = tokio::spawn(async move { late_node.node_publish_volume(late_publish).await });
    // Its tmpfs is mounted before the fetch: the publish holds its target.
    wait_for(30, "the late pod's publish in its fetch", &logs, || {
        mounted(&lt)
    });
    let other = kubelet.target(&demo.uid, "jss-token-2");
    node.node_publish_volume(publish(&other, token_context(&demo, &demo.uid)))
        .await
        .unwrap_or_else(|s| panic!("publish beside a waiting one: {s}\n{}", logs()));
    node.node_unpublish_volume(NodeUnpublishVolumeRequest {
        volume_id: "csi-jss-token-2".into(),
        target_path: other.display().to_string(),
    })
    .await
    .unwrap_or_else(|s| panic!("unpublish beside a waiting publish: {s}\n{}", logs()));
    assert!(!other.exists() && !mounted(&other));
    assert!(
        !waiting.is_finished(),
        "the other volume's calls waited for the late pod's publish\n{}",
        logs()
    );
    c.kubelet().set_pods(pod_list(&[demo.json(), late.json()]));
    waiting
        .await
        .unwrap()
        .unwrap_or_else(|s| panic!("publish for a pod listed late: {s}\n{}", logs()));
    assert!(lt.join("token").is_file());
    node.node_unpublish_volume(NodeUnpublishVolumeRequest {
        volume_id: "csi-jss-token".into(),
        target_path: lt.display().to_string(),
    })
    .await
    .unwrap_or_else(|s| panic!("unpublish: {s}\n{}", logs()));

    // A pod the kubelet does not list: refused, nothing left mounted.
    let ghost = "0b6f5c1e-9d8a-4c3b-a2e1-f0e9d8c7b6a5";
    let g = kubelet.target(ghost, "jss-token");
    let s = node
        .node_publish_volume(publish(&g, token_context(&demo, ghost)))
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s}");
    assert!(s.message().contains("pod_not_found"), "{s}");
    assert!(!mounted(&g), "{g:?} left mounted");
    let denied = c.daemon.audit_lines();
    let denied = denied.last().unwrap();
    assert_eq!(denied["code"], "pod_not_found", "{denied}");
    assert_eq!(denied["pod"], demo.name.as_str(), "{denied}");

    // A caller that is not root. By default it cannot even connect (0700,
    // 0600); with the modes loosened the daemon still refuses it, by uid.
    let ask = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\ns.sendall(b'POST /v1/pod-token HTTP/1.1\\r\\nHost: j\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\n{}')\nd=b''\nwhile True:\n  c=s.recv(65536)\n  if not c: break\n  d+=c\nsys.stdout.write(d.decode())";
    let as_nobody = || {
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "/usr/bin/python3",
                "-c",
                ask,
            ])
            .arg(&pod_socket)
            .output()
            .unwrap()
    };
    let out = as_nobody();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PermissionError"),
        "{out:?}"
    );
    for (p, m) in [
        (run.path(), 0o755),
        (pod_socket.parent().unwrap(), 0o755),
        (pod_socket.as_path(), 0o666),
    ] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    }
    let out = as_nobody();
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}\n{out:?}");
    assert!(answer.contains("\"not_root\""), "{answer}");
    let audit = c.daemon.audit_lines();
    let last = audit.last().unwrap();
    assert_eq!(
        (last["code"].as_str(), last["uid"].as_u64()),
        (Some("not_root"), Some(65534)),
        "{last}"
    );
    let metrics = jss::client::get(&c.daemon.socket, "/metrics", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&metrics).contains("jss_denials_total{reason=\"not_root\"} 1"),
        "{}",
        String::from_utf8_lossy(&metrics)
    );
}

/// The daemon side alone (software key, the kubelet stand-in): the pod
/// check, including a pod still `Pending` at its first publish, and each
/// refusal with its status and code.
#[test]
fn the_pod_token_socket_checks_the_pod_and_answers_per_the_refusal_contract() {
    let run = tempfile::tempdir().unwrap();
    let socket = run.path().join("jss-csi/jss.sock");
    let node = Node::new(
        jss::signer::SignerKind::Software,
        &format!(
            "[csi]\npod_token = true\npod_token_socket = \"{}\"\n",
            socket.display()
        ),
    );
    let d = Daemon::start(node.path(), &node.config);
    let body = |ns: &str, pod: &str, uid: &str, sa: &str, aud: &str| {
        serde_json::json!({"namespace": ns, "pod": pod, "pod_uid": uid, "service_account": sa, "audience": aud})
            .to_string()
    };
    let ok = body(NAMESPACE, POD_NAME, &node.pod_uid, "demo-sa", "other");
    let answer = ask(&socket, "POST", "/v1/pod-token", &ok);
    assert_eq!(status_code(&answer).0, 200, "{answer}\n{}", d.stderr());
    let v: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let (_, cl) = claims(v["token"].as_str().unwrap());
    assert_eq!(cl["aud"], "other");
    assert_eq!(cl["pod-uid"], node.pod_uid.as_str());
    assert!(cl.get("container").is_none(), "{cl}");
    assert_eq!(v["expires_at"], cl["exp"]);

    // At the first NodePublishVolume the pod is Pending, nothing runs yet.
    let pending = PodBuilder::new(&node.pod_uid, NAMESPACE, POD_NAME)
        .service_account("demo-sa")
        .container(Ctr {
            id: None,
            state: "waiting".into(),
            ..Ctr::running("app", "app:1", "")
        })
        .json();
    let mut pending_v = pending.clone();
    pending_v["status"]["phase"] = "Pending".into();
    node.kubelet.set_pods(pod_list(&[pending_v]));
    let answer = ask(&socket, "POST", "/v1/pod-token", &ok);
    assert_eq!(status_code(&answer).0, 200, "{answer}");
    let mut finished = pending;
    finished["status"]["phase"] = "Succeeded".into();
    node.kubelet.set_pods(pod_list(&[finished]));

    let not_listed = body(
        NAMESPACE,
        POD_NAME,
        "0b6f5c1e-9d8a-4c3b-a2e1-f0e9d8c7b6a5",
        "demo-sa",
        "vault",
    );
    for (method, path, body, want) in [
        (
            "POST",
            "/v1/pod-token",
            ok.clone(),
            (403, "container_not_running"),
        ),
        ("POST", "/v1/pod-token", not_listed, (403, "pod_not_found")),
        (
            "POST",
            "/v1/pod-token",
            body(NAMESPACE, POD_NAME, &node.pod_uid, "admin", "vault"),
            (403, "pod_mismatch"),
        ),
        (
            "POST",
            "/v1/pod-token",
            body("kube-system", POD_NAME, &node.pod_uid, "demo-sa", "vault"),
            (403, "pod_mismatch"),
        ),
        (
            "POST",
            "/v1/pod-token",
            body(NAMESPACE, POD_NAME, &node.pod_uid, "demo-sa", "nope"),
            (400, "bad_audience"),
        ),
        (
            "POST",
            "/v1/pod-token",
            r#"{"namespace":"x"}"#.to_string(),
            (400, "bad_request"),
        ),
        (
            "POST",
            "/v1/pod-token",
            "not json".to_string(),
            (400, "bad_request"),
        ),
        (
            "GET",
            "/v1/pod-token",
            String::new(),
            (405, "method_not_allowed"),
        ),
        ("POST", "/v1/token", ok.clone(), (404, "not_found")),
    ] {
        let answer = ask(&socket, method, path, &body);
        let got = status_code(&answer);
        assert_eq!(
            (got.0, got.1.as_str()),
            want,
            "{method} {path} {body}: {answer}"
        );
    }
    // The kubelet down: 503 with Retry-After.
    node.kubelet.set_fault(Fault::Status(500));
    let answer = ask(&socket, "POST", "/v1/pod-token", &ok);
    let (status, code) = status_code(&answer);
    assert_eq!(status, 503, "{answer}");
    assert!(code.starts_with("kubelet_"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );

    // Each refusal audited once, naming the pod and no container.
    let audit = d.audit_lines();
    let denied: Vec<&Value> = audit.iter().filter(|l| l["outcome"] == "denied").collect();
    assert_eq!(denied.len(), 10, "{audit:?}");
    let mismatch = denied.iter().find(|l| l["code"] == "pod_mismatch").unwrap();
    assert_eq!(mismatch["pod"], POD_NAME, "{mismatch}");
    assert!(mismatch["container"].is_null(), "{mismatch}");
}
