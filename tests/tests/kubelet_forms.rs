//! What real kubelets and runtimes put in `/pods`, and what JSS makes of it:
//! every image-digest form a runtime reports (`tests/fixtures/kubelet/image-forms.json`)
//! and lists with items that are not pods (`null-items.json`). The daemon
//! tests serve them from the kubelet stand-in to real processes in kubepods cgroups.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use jss::attest::Workload;
use jss::claims::{ClaimsBuilder, NodeFacts};
use jss::kubelet::{PodList, PodQuery, PodSource as _, StaticPods};
use jss::signer::SignerKind;
use jss_tests::daemon::Daemon;
use jss_tests::node::{Node, pod_json, run_in, token_claims};
use jss_tests::pods::{Layout, PodProcess, Qos, random_container_id, random_pod_uid};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/kubelet")
        .join(name);
    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
}

/// For each container of `image-forms.json` (one per form): the claims it
/// must give (`image` = registry digest, `image-id` = image ID, `None` = left
/// out of the token) and where the form was reported. The fixture's hex
/// values are SHA-256 of a label (`sha256("nginx manifest")` …).
fn expected(name: &str) -> (Option<String>, Option<String>) {
    let h = |s: &str| Some(format!("sha256:{}", jss_tests::pods::hex_of(s, 64)));
    match name {
        // CRI-O >= 1.28 (OpenShift 4.15): bare 64-hex image ID, the value
        // quoted in issue 13; openshift/origin#28535, cri-o/cri-o#7143.
        "crio-bare-hex" => (
            None,
            Some("sha256:8aba57ea67e3518f3b7fcbf32954bd2c0bd60d46ed55672a0fcec66076d4a6d4".into()),
        ),
        // containerd, image with a registry digest: `repo@sha256:`;
        // containerd/containerd#8408 (pattern 1), kubernetes/kubernetes#115199.
        "containerd-repo-digest" => (h("nginx manifest"), None),
        // containerd, image without one (loaded or built locally): `sha256:`;
        // containerd/containerd#8408 (pattern 2).
        "containerd-image-id" => (None, h("local config")),
        // dockershim / cri-dockerd: `docker-pullable://repo@sha256:`;
        // kubernetes/kubernetes#95968, SPIRE's kubelet test data (pod_list.json).
        "docker-pullable" => (h("flannel manifest"), None),
        // docker before repo digests: `docker://sha256:`;
        // openshift/origin-web-console#578 (its example imageID).
        "docker-image-id" => (None, h("legacy config")),
        // kind: the digest reference in `image`, the tag in `imageID`
        // (issue 13; kubernetes/kubernetes#95385 shows a kind node mixing them).
        "kind-swapped" => (h("kind manifest"), None),
        // A running container whose runtime reported no digest (`imageID` empty).
        "tag-only" => (None, None),
        _ => panic!("{name}: not a form this test knows"),
    }
}

fn facts() -> NodeFacts {
    NodeFacts {
        issuer: "jss://EUCluster".into(),
        cluster_name: "EUCluster".into(),
        cluster_region: "eu-de".into(),
        node_name: "node-1".into(),
        machine_id: "0123456789abcdef0123456789abcdef".into(),
    }
}

/// (container name, container ID) of every status in `pods`' first pod.
fn containers(pods: &Value) -> Vec<(String, String)> {
    pods["items"][0]["status"]["containerStatuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let id = s["containerID"].as_str().unwrap();
            let id = id.split_once("://").unwrap().1;
            (s["name"].as_str().unwrap().to_string(), id.to_string())
        })
        .collect()
}

#[tokio::test]
async fn every_image_form_gives_its_own_kind_of_digest() {
    let pods = fixture("image-forms.json");
    assert_eq!(containers(&pods).len(), 7);
    let list = PodList::parse(&serde_json::to_vec(&pods).unwrap()).unwrap();
    let src = StaticPods::new(list);
    let builder = ClaimsBuilder::new(facts(), Default::default(), 60);
    let mut subs = std::collections::BTreeSet::new();
    for (name, id) in containers(&pods) {
        let (image, image_id) = expected(&name);
        let m = src
            .find(&PodQuery {
                pod_uid: None,
                container_id: id,
            })
            .await
            .unwrap();
        let w = Workload::from_match(m);
        let c = builder.build(&w, "vault", 1).unwrap();
        assert_eq!(c.image, image.as_deref(), "{name}: image");
        assert_eq!(c.image_id, image_id.as_deref(), "{name}: image-id");
        assert!(subs.insert(c.sub.clone()), "{name}: sub {} repeats", c.sub);
    }
}

/// `image-forms.json` with a fresh pod UID and container IDs, and the IDs by name.
fn fresh_forms() -> (Value, String, Vec<(String, String)>) {
    let mut pods = fixture("image-forms.json");
    let uid = random_pod_uid();
    pods["items"][0]["metadata"]["uid"] = Value::from(uid.clone());
    let mut ids = Vec::new();
    for s in pods["items"][0]["status"]["containerStatuses"]
        .as_array_mut()
        .unwrap()
    {
        let id = random_container_id();
        let runtime = s["containerID"]
            .as_str()
            .unwrap()
            .split("://")
            .next()
            .unwrap()
            .to_string();
        s["containerID"] = Value::from(format!("{runtime}://{id}"));
        ids.push((s["name"].as_str().unwrap().to_string(), id));
    }
    (pods, uid, ids)
}

#[test]
fn a_running_container_gets_a_token_whatever_digest_form_its_runtime_reports() {
    let node = Node::new(SignerKind::Software, "");
    let (forms, uid, ids) = fresh_forms();
    node.kubelet.set_pods(forms);
    let d = Daemon::start(node.path(), &node.config);
    let sock = d.socket.to_str().unwrap();
    for (name, id) in &ids {
        let pod = PodProcess::spawn(Layout::V1Cgroupfs(Qos::BestEffort), &uid, id);
        let c = token_claims(&run_in(&pod, &["token", "--socket", sock]));
        let (image, image_id) = expected(name);
        assert_eq!(c["container"], name.as_str());
        assert_eq!(
            c.get("image").and_then(Value::as_str),
            image.as_deref(),
            "{name}: {c}"
        );
        assert_eq!(
            c.get("image-id").and_then(Value::as_str),
            image_id.as_deref(),
            "{name}: {c}"
        );
    }
    assert!(!d.stderr().contains("claims_unavailable"), "{}", d.stderr());
}

fn get(socket: &Path, path: &str) -> String {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: jss\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// The value of an unlabelled counter in a `/metrics` answer.
fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
}

#[test]
fn items_that_are_not_pods_do_not_take_the_nodes_tokens_down() {
    let mut node = Node::new(SignerKind::Software, "[cache]\nenabled = false\n");
    // Several requests share one list: the skipped items are logged per list.
    node.config = node
        .config
        .replace("max_list_age_ms = 0", "max_list_age_ms = 60000");
    let mut pods = fixture("null-items.json");
    pods["items"].as_array_mut().unwrap().push(pod_json(
        &node.pod_uid,
        &node.app_id,
        &node.side_id,
    ));
    node.kubelet.set_pods(pods);
    let d = Daemon::start(node.path(), &node.config);
    let sock = d.socket.to_str().unwrap();
    let app = PodProcess::spawn(
        Layout::V2Systemd(Qos::Burstable),
        &node.pod_uid,
        &node.app_id,
    );
    for _ in 0..3 {
        let c = token_claims(&run_in(&app, &["token", "--socket", sock]));
        assert_eq!(c["container"], "app");
    }
    let metrics = get(&d.socket, "/metrics");
    let fetches = counter(&metrics, "jss_kubelet_fetches_total");
    assert_eq!(fetches, 1, "{metrics}");
    assert_eq!(
        counter(&metrics, "jss_kubelet_pods_skipped_total"),
        9,
        "{metrics}"
    );
    let log = d.stderr();
    let warned = log.lines().filter(|l| l.contains("skipped them")).count();
    assert_eq!(
        warned, 1,
        "one warning per list, not per request or item:\n{log}"
    );

    // A body whose `items` is not a list is still an error: a caller the
    // young list does not hold waits for newer lists and gets 503.
    node.kubelet
        .set_pods(serde_json::json!({"kind": "PodList", "items": {}}));
    let newcomer = PodProcess::spawn(
        Layout::V1Cgroupfs(Qos::BestEffort),
        &random_pod_uid(),
        &random_container_id(),
    );
    let out = run_in(&newcomer, &["token", "--socket", sock]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("503") && err.contains("kubelet_malformed"),
        "{err}"
    );
}
