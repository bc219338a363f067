#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report
//! The kubelet client and its shared, versioned cache against the stand-in:
//! HTTPS with a bearer token, and a kubelet that is down, slow, refuses us or
//! talks nonsense.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jss::kubelet::{KubeletConfig, KubeletPods, PodList, PodQuery, PodSource};
use jss_tests::kubelet::{Ctr, Fault, KubeletStandin, Mode, PodBuilder, pod_list};
use jss_tests::pods::{random_container_id, random_pod_uid};
use serde_json::Value;

struct Fx {
    uid: String,
    app: String,
    init: String,
    debug: String,
    list: Value,
}

fn fixture() -> Fx {
    let (uid, app, init, debug) = (
        random_pod_uid(),
        random_container_id(),
        random_container_id(),
        random_container_id(),
    );
    let mut i = Ctr::running("setup", "registry.local/setup:1", &init);
    i.state = "running".into();
    let pod = PodBuilder::new(&uid, "shop", "cart-7d9f")
        .service_account("cart")
        .container(Ctr::running("cart", "registry.local/cart:2.1", &app))
        .container(Ctr::running(
            "proxy",
            "registry.local/proxy:1",
            &random_container_id(),
        ))
        .init(i)
        .ephemeral(Ctr::running("debugger", "busybox:1.36", &debug));
    let other = PodBuilder::new(&random_pod_uid(), "shop", "other").container(Ctr::running(
        "x",
        "x:1",
        &random_container_id(),
    ));
    Fx {
        list: pod_list(&[other.json(), pod.json()]),
        uid,
        app,
        init,
        debug,
    }
}

fn q(uid: Option<&str>, cid: &str) -> PodQuery {
    PodQuery {
        pod_uid: uid.map(String::from),
        container_id: cid.into(),
    }
}

fn source(cfg: &KubeletConfig) -> KubeletPods {
    KubeletPods::from_config(cfg).unwrap()
}

#[tokio::test]
async fn finds_containers_init_and_ephemeral_over_https() {
    let fx = fixture();
    let k = KubeletStandin::start(fx.list.clone());
    let pods = source(&k.config());
    let m = pods.find(&q(Some(&fx.uid), &fx.app)).await.unwrap();
    assert_eq!(
        (
            m.pod.namespace.as_str(),
            m.pod.name.as_str(),
            m.container_name.as_str()
        ),
        ("shop", "cart-7d9f", "cart")
    );
    let w = jss::attest::Workload::from_match(m);
    assert_eq!(w.service_account, "cart");
    assert_eq!(w.image, "registry.local/cart:2.1");
    assert!(w.image_digest.as_deref().unwrap().starts_with("sha256:"));
    let kinds: Vec<_> = w
        .images
        .iter()
        .map(|i| (i.name.as_str(), format!("{:?}", i.kind)))
        .collect();
    assert_eq!(
        kinds,
        [
            ("cart", "Container".into()),
            ("proxy", "Container".into()),
            ("setup", "Init".into()),
            ("debugger", "Ephemeral".into())
        ]
    );
    assert_eq!(w.owner_references[0].kind, "ReplicaSet");
    assert!(w.owner_references[0].controller);

    let m = pods.find(&q(Some(&fx.uid), &fx.init)).await.unwrap();
    assert_eq!(
        (m.container_name.as_str(), m.kind),
        ("setup", jss::attest::ContainerKind::Init)
    );
    // Ephemeral (debug) containers are searched too (SPIRE does not).
    let m = pods.find(&q(None, &fx.debug)).await.unwrap();
    assert_eq!(
        (m.container_name.as_str(), m.kind),
        ("debugger", jss::attest::ContainerKind::Ephemeral)
    );
    assert!(pods.fetches() >= 1 && k.requests() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_for_many_concurrent_callers() {
    let fx = fixture();
    let k = KubeletStandin::start(fx.list.clone());
    k.set_fault(Fault::Delay(Duration::from_millis(300)));
    let pods = Arc::new(source(&k.config()));
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let (p, uid, app) = (pods.clone(), fx.uid.clone(), fx.app.clone());
        tasks.push(tokio::spawn(async move {
            p.find(&q(Some(&uid), &app)).await.map(|m| m.list_version)
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 1);
    }
    assert_eq!(k.requests(), 1, "40 callers, one kubelet request");
    assert_eq!(pods.fetches(), 1);
}

/// Back-to-back lookups that each need a fresh list: the caller woken by one
/// fetch's result must be able to start the next fetch at once. (A waiter
/// that saw "fetch in flight" after that fetch had published used to wait
/// out the whole retry window.)
#[test]
fn back_to_back_fresh_lookups_never_wait_for_a_finished_fetch() {
    let fx = fixture();
    let k = KubeletStandin::start(fx.list.clone());
    let mut cfg = k.config();
    cfg.max_list_age_ms = 0;
    // The bug waited out the whole window: a minute here, far from a slow
    // machine's worst lookup.
    cfg.retry_window_ms = 60_000;
    let pods = source(&cfg);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for i in 0..150 {
        let t = Instant::now();
        rt.block_on(pods.find(&q(Some(&fx.uid), &fx.app))).unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "lookup {i} took {:?}",
            t.elapsed()
        );
    }
    assert_eq!(pods.fetches(), 150);
}

#[tokio::test]
async fn pod_that_appears_late_is_found_by_retrying() {
    let fx = fixture();
    let k = KubeletStandin::start(pod_list(&[]));
    // A window far longer than the pod takes to appear, also on a slow machine.
    let mut cfg = k.config();
    cfg.retry_window_ms = 30_000;
    let pods = source(&cfg);
    let started = Instant::now();
    let late = fx.list.clone();
    let k = Arc::new(k);
    let k2 = k.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1_500));
        k2.set_pods(late);
    });
    let m = pods.find(&q(Some(&fx.uid), &fx.app)).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(1_500));
    assert!(
        m.list_version > 2,
        "found in a newer list: v{}",
        m.list_version
    );
    assert!(k.requests() >= 3);
}

#[tokio::test]
async fn pod_never_appears() {
    let fx = fixture();
    let k = KubeletStandin::start(pod_list(&[]));
    let mut cfg = k.config();
    cfg.retry_window_ms = 800;
    let started = Instant::now();
    let e = source(&cfg)
        .find(&q(Some(&fx.uid), &fx.app))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "pod_not_found");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        e.to_string().contains(&fx.app) && e.to_string().contains(&fx.uid),
        "{e}"
    );
}

async fn failure(k: &KubeletStandin, cfg: KubeletConfig) -> jss::kubelet::LookupError {
    let fx = fixture();
    let _ = k;
    let started = Instant::now();
    let e = source(&cfg)
        .find(&q(Some(&fx.uid), &fx.app))
        .await
        .unwrap_err();
    // Bounded by the retry window plus one request timeout.
    assert!(
        started.elapsed()
            < Duration::from_millis(cfg.retry_window_ms + cfg.request_timeout_ms + 1_500),
        "{:?}",
        started.elapsed()
    );
    e
}

fn short(k: &KubeletStandin) -> KubeletConfig {
    let mut c = k.config();
    c.retry_window_ms = 400;
    c.request_timeout_ms = 500;
    c
}

#[tokio::test]
async fn kubelet_failures_have_their_codes() {
    let fx = fixture();
    let k = KubeletStandin::start(fx.list.clone());
    for (fault, code) in [
        (Fault::Status(401), "kubelet_unauthorized"),
        (Fault::Status(403), "kubelet_forbidden"),
        (Fault::Status(500), "kubelet_bad_status"),
        (Fault::Garbage, "kubelet_malformed"),
        (Fault::Hangup, "kubelet_unavailable"),
        (Fault::Delay(Duration::from_secs(3)), "kubelet_timeout"),
    ] {
        k.set_fault(fault.clone());
        let e = failure(&k, short(&k)).await;
        assert_eq!(e.code(), code, "{fault:?}: {e}");
    }
}

#[tokio::test]
async fn kubelet_down() {
    let fx = fixture();
    let mut k = KubeletStandin::start(fx.list);
    let cfg = short(&k);
    k.stop();
    let e = failure(&k, cfg).await;
    assert_eq!(e.code(), "kubelet_unavailable", "{e}");
    assert!(e.to_string().contains("unreachable"), "{e}");
}

#[tokio::test]
async fn wrong_token_then_rotation_is_picked_up() {
    let fx = fixture();
    let k = KubeletStandin::start(fx.list.clone());
    let mut cfg = k.config();
    cfg.token_refresh_secs = 1;
    let pods = source(&cfg);
    pods.find(&q(Some(&fx.uid), &fx.app)).await.unwrap();
    // The kubelet now wants a new token; ours is re-read within a second.
    k.rotate_token("rotated-token");
    let before = k.requests();
    let m = pods.find(&q(Some(&fx.uid), &fx.app)).await.unwrap();
    assert!(m.list_version > 2, "the old token was refused first");
    assert!(k.requests() > before + 1);
    // A token the kubelet never accepts.
    std::fs::write(k.token_path(), "stolen").unwrap();
    let e = failure(&k, short(&k)).await;
    assert_eq!(e.code(), "kubelet_unauthorized");
}

#[tokio::test]
async fn tls_is_verified_unless_told_otherwise() {
    let fx = fixture();
    let k = KubeletStandin::start(fx.list.clone());
    let other = KubeletStandin::start(pod_list(&[]));
    let mut cfg = short(&k);
    cfg.ca_path = other.ca_path();
    let e = failure(&k, cfg.clone()).await;
    assert_eq!(e.code(), "kubelet_unavailable", "{e}");
    cfg.insecure_skip_tls_verify = true;
    source(&cfg).find(&q(Some(&fx.uid), &fx.app)).await.unwrap();
}

#[tokio::test]
async fn client_certificate_and_read_only_port() {
    let fx = fixture();
    let k = KubeletStandin::start_with(Mode::HttpsClientCert, fx.list.clone());
    source(&k.config())
        .find(&q(Some(&fx.uid), &fx.app))
        .await
        .unwrap();
    let mut no_cert = short(&k);
    no_cert.client_cert_path = None;
    no_cert.client_key_path = None;
    no_cert.token_path = k.token_path();
    assert!(failure(&k, no_cert).await.code().starts_with("kubelet_"));

    let ro = KubeletStandin::start_with(Mode::Plain, fx.list.clone());
    let cfg = ro.config();
    assert!(
        cfg.read_only_url
            .as_deref()
            .unwrap()
            .starts_with("http://127.0.0.1:")
    );
    source(&cfg).find(&q(Some(&fx.uid), &fx.app)).await.unwrap();
}

/// A full node: 110 pods padded like real ones (env, annotations, managed
/// fields), a few MiB. Prints the size and timings; fails if parsing is slow
/// or the cap does not hold.
#[tokio::test]
async fn full_node_pod_list_is_cheap_and_capped() {
    let mut pods = Vec::new();
    let mut target = None;
    for i in 0..110 {
        let (uid, cid) = (random_pod_uid(), random_container_id());
        let mut p = PodBuilder::new(&uid, "ns", &format!("pod-{i}"))
            .container(Ctr::running("app", "registry.local/app:1", &cid))
            .container(Ctr::running(
                "sidecar",
                "registry.local/sidecar:1",
                &random_container_id(),
            ))
            .json();
        p["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] =
            Value::String("x".repeat(12_000));
        p["metadata"]["managedFields"] = serde_json::json!([{"manager": "kube-controller-manager", "operation": "Update",
            "fieldsV1": {"f:metadata": {"f:labels": {"x": "y".repeat(8_000)}}}}]);
        p["spec"]["containers"][0]["env"] = serde_json::json!(
            (0..100)
                .map(|j| serde_json::json!({"name": format!("VAR_{j}"), "value": "v".repeat(60)}))
                .collect::<Vec<_>>()
        );
        if i == 97 {
            target = Some((uid, cid));
        }
        pods.push(p);
    }
    let list = pod_list(&pods);
    let body = serde_json::to_vec(&list).unwrap();
    assert!(body.len() > 3 << 20, "{} bytes", body.len());
    let t = Instant::now();
    let mut n = 0;
    while t.elapsed() < Duration::from_millis(500) || n < 5 {
        assert_eq!(PodList::parse(&body).unwrap().pods.len(), 110);
        n += 1;
    }
    let per = t.elapsed() / n;
    println!(
        "110-pod list: {} bytes, parse {:?} per list ({n} runs)",
        body.len(),
        per
    );
    // A guard against a pathological parser, not a benchmark (`jss-bench
    // attest` measures it).
    assert!(per < Duration::from_secs(5), "parse too slow: {per:?}");

    let k = KubeletStandin::start(list);
    let (uid, cid) = target.unwrap();
    let t = Instant::now();
    source(&k.config())
        .find(&q(Some(&uid), &cid))
        .await
        .unwrap();
    println!(
        "110-pod list: HTTPS fetch + parse + match {:?}",
        t.elapsed()
    );
    let mut capped = short(&k);
    capped.max_response_bytes = 1 << 20;
    let e = failure(&k, capped).await;
    assert_eq!(e.code(), "kubelet_response_too_large", "{e}");
}
