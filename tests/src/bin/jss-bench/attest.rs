//! Attestation alone: a real process in a kubepods cgroup, matched against a
//! 110-pod list (the kubelet's default pod limit).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use jss::attest::{Attestor, PeerProcess};
use jss::kubelet::{KubeletPods, PodList, StaticPods};
use jss_tests::kubelet::{Ctr, KubeletStandin, PodBuilder, pod_list};
use jss_tests::pods::{Layout, PodProcess, Qos, random_container_id, random_pod_uid};

use crate::Figures;

/// 110 pods of 3 containers and an init container; ours is the last. Each
/// carries a 24 KiB annotation, as `kubectl apply` leaves one, so the list is
/// the multi-MiB size real nodes serve.
fn big_list(our_uid: &str, our_id: &str) -> serde_json::Value {
    let applied = "x".repeat(24 * 1024);
    let mut pods: Vec<_> = (0..109)
        .map(|i| {
            let mut p = PodBuilder::new(
                &random_pod_uid(),
                &format!("ns-{}", i % 7),
                &format!("pod-{i}"),
            )
            .container(Ctr::running(
                "app",
                "registry.example.com/team/app:1.2.3",
                &random_container_id(),
            ))
            .container(Ctr::running(
                "envoy",
                "docker.io/envoyproxy/envoy:v1.31.0",
                &random_container_id(),
            ))
            .container(Ctr::running(
                "log",
                "docker.io/fluent/fluent-bit:3.1",
                &random_container_id(),
            ))
            .init(Ctr::running(
                "init",
                "docker.io/library/busybox:1.36",
                &random_container_id(),
            ))
            .json();
            p["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] =
                serde_json::Value::String(applied.clone());
            p
        })
        .collect();
    pods.push(
        PodBuilder::new(our_uid, "bench", "bench-pod")
            .container(Ctr::running(
                "app",
                "docker.io/library/ubuntu:24.04",
                our_id,
            ))
            .json(),
    );
    pod_list(&pods)
}

/// Calls of `f` per second for `dur`; the first failure ends the run.
fn per_second(dur: Duration, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < dur {
        f()?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

pub fn run(seconds: u64) -> anyhow::Result<Figures> {
    let dur = Duration::from_secs(seconds);
    let (uid, id) = (random_pod_uid(), random_container_id());
    let list = big_list(&uid, &id);
    let body = serde_json::to_vec(&list).context("serialize the pod list")?;
    let parse = || PodList::parse(&body).context("parse the benchmark's pod list");
    let parse_rate = per_second(dur, || parse().map(drop))?;
    let pod = PodProcess::spawn(Layout::V2Systemd(Qos::BestEffort), &uid, &id);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start a tokio runtime")?;
    let proc_root = std::path::PathBuf::from("/proc");
    let peer = PeerProcess::from_proc(&proc_root, pod.pid())
        .with_context(|| format!("read /proc of the pod process {}", pod.pid()))?;

    // From a list already in memory (what most requests see).
    let cached = Attestor::new(proc_root.clone(), Arc::new(StaticPods::new(parse()?)));
    let cached_rate = per_second(dur, || {
        rt.block_on(cached.attest(&peer))
            .map(drop)
            .context("attest against the list in memory")
    })?;

    // Through the kubelet client with a fresh fetch every time (cold path).
    let kubelet = KubeletStandin::start(list);
    let mut cfg = kubelet.config();
    cfg.max_list_age_ms = 0;
    let pods = KubeletPods::from_config(&cfg).context("kubelet client for the stand-in")?;
    let fetching = Attestor::new(proc_root, Arc::new(pods));
    let fetch_rate = per_second(dur, || {
        rt.block_on(fetching.attest(&peer))
            .map(drop)
            .context("attest with a fresh kubelet fetch")
    })?;

    let mib = body.len() as f64 / (1024.0 * 1024.0);
    println!("\n== attestation alone, 110-pod list ({mib:.2} MiB JSON) ==");
    println!(
        "parse the pod list             : {parse_rate:>9.0} /s  ({:.2} ms)",
        1e3 / parse_rate
    );
    println!(
        "attest, list in memory         : {cached_rate:>9.0} /s  ({:.1} us)",
        1e6 / cached_rate
    );
    println!(
        "attest, fresh kubelet fetch    : {fetch_rate:>9.0} /s  ({:.2} ms)",
        1e3 / fetch_rate
    );
    Ok(Figures::from([
        ("attest.podlist_mib".into(), mib),
        ("attest.parse_per_s".into(), parse_rate),
        ("attest.cached_per_s".into(), cached_rate),
        ("attest.fetch_per_s".into(), fetch_rate),
    ]))
}
