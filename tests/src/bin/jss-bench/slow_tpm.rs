//! `slow-tpm`: JSS on a TPM as slow as real ones (README, "Capacity").
//!
//! swtpm behind [`TpmProxy`], which holds every `TPM2_Sign` for the added
//! latency and runs one command at a time; the daemon is unchanged. For
//! each latency:
//! - node boot: `--boot-pods` new pods (default 110, the kubelet's pod
//!   limit) ask at once; the time until every pod holds a token and the p99
//!   of first-token latency, against the goal 1.1 × pods × latency;
//! - steady state: N workloads refreshing as spiffe-helper does, each its
//!   own pod; the largest N the TPM keeps up with (none refused, at least
//!   99 % of asks answered from the cache), found by steps from 0.7 ×
//!   capacity, as a ratio of the TPM's capacity (token life / 2 ÷ sign
//!   latency, the latency the daemon measured); whether p99 ≤ 100 ms held
//!   is reported beside it (on a loaded machine cached answers alone miss
//!   it).
//!
//! Steady state uses `--token-life` seconds (default 20, the config allows
//! 10..=3600) to keep a run short; the capacity formula uses the same life.
//! Each step starts a fresh daemon (an empty cache and refresh set), spreads
//! the workloads' first asks over a half-life, lets them settle for another
//! half-life + 2 s, then measures for `--measure-s` seconds.

use std::time::Duration;

use anyhow::{Context as _, bail};

use jss::signer::SignerKind;
use jss_tests::daemon::{Daemon, metric};
use jss_tests::kubelet::{Ctr, PodBuilder, pod_list};
use jss_tests::node::Node;
use jss_tests::pods::{random_container_id, random_pod_uid};
use jss_tests::tpm_proxy::{TPM2_CC_SIGN, TpmProxy};

use crate::workload::{Ask, Fleet, Mode, now_ms};
use crate::{Figures, percentile};

/// The steady-state goal: p99 at most this, and no refusal.
const P99_GOAL_MS: f64 = 100.0;
/// Token life in production (config default), for the boot.
const PRODUCTION_LIFE_S: u64 = 60;

#[derive(Debug, Clone)]
pub struct Options {
    pub latencies_ms: Vec<u64>,
    pub boot_pods: usize,
    pub token_life_s: u64,
    pub measure_s: u64,
}

impl Options {
    /// `--latency-ms 35,70,200 --boot-pods 110 --token-life 20 --measure-s 22`
    pub fn from_args(args: &[String]) -> anyhow::Result<Self> {
        let get = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .and_then(|i| args.get(i + 1))
        };
        let num = |flag: &str, default: u64| -> anyhow::Result<u64> {
            get(flag).map_or(Ok(default), |v| {
                v.parse().with_context(|| format!("{flag} {v:?}"))
            })
        };
        let latencies_ms = match get("--latency-ms") {
            None => vec![35, 70, 200],
            Some(v) => v
                .split(',')
                .map(|l| {
                    l.trim()
                        .parse()
                        .with_context(|| format!("--latency-ms {v:?}"))
                })
                .collect::<Result<_, _>>()?,
        };
        let o = Self {
            latencies_ms,
            boot_pods: usize::try_from(num("--boot-pods", 110)?)?,
            token_life_s: num("--token-life", 20)?,
            measure_s: num("--measure-s", 22)?,
        };
        if !(10..=3600).contains(&o.token_life_s) {
            bail!("--token-life must be within 10..=3600 s (token_ttl_seconds)");
        }
        Ok(o)
    }
}

/// A node whose swtpm is behind the slow proxy, and its config text.
/// A fresh one per daemon: swtpm counts each stop without TPM2_Shutdown
/// as a dictionary-attack failure and locks the key out after three.
struct SlowNode {
    node: Node,
    proxy: TpmProxy,
    base: String,
}

impl SlowNode {
    fn new(lat: Duration) -> anyhow::Result<Self> {
        let node = Node::new(SignerKind::Tpm, "");
        let tpm = node.tpm.as_ref().context("the node has no swtpm")?;
        let proxy = TpmProxy::start(tpm.port(), lat, &[TPM2_CC_SIGN])
            .context("start the slow-TPM proxy")?;
        let base = node.config.replace(&tpm.tcti(), &proxy.tcti());
        Ok(Self { node, proxy, base })
    }
}

/// The node's config with the slow TPM, a token life and room for every
/// workload's connection; the pod list is reused for a second, as in
/// production (tests force a fresh one per lookup).
fn config(base: &str, life_s: u64) -> String {
    base.replace("max_list_age_ms = 0", "max_list_age_ms = 1000")
        .replacen(
            "[signer]",
            &format!("token_ttl_seconds = {life_s}\n[limits]\nmax_connections = 4096\n\n[signer]"),
            1,
        )
}

/// `n` one-container pods for the kubelet stand-in, and their (UID, ID).
fn pods(node: &Node, n: usize) -> Vec<(String, String)> {
    let ids: Vec<(String, String)> = (0..n)
        .map(|_| (random_pod_uid(), random_container_id()))
        .collect();
    let json: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, (uid, id))| {
            PodBuilder::new(uid, "bench", &format!("w-{i}"))
                .container(Ctr::running("app", "registry.example.com/app:1", id))
                .json()
        })
        .collect();
    node.kubelet.set_pods(pod_list(&json));
    ids
}

/// Mean seconds per signature as the daemon measured it (TPM round trip
/// included): above the added latency by what the machine's load costs.
fn mean_sign_s(metrics: &str) -> f64 {
    metric(metrics, "jss_sign_duration_seconds_sum")
        / metric(metrics, "jss_sign_duration_seconds_count").max(1.0)
}

fn slowed(proxy: &TpmProxy) -> u64 {
    proxy
        .counters
        .slowed
        .load(std::sync::atomic::Ordering::Relaxed)
}

fn ms_sorted(asks: impl Iterator<Item = u64>) -> Vec<u32> {
    let mut v: Vec<u32> = asks
        .map(|us| u32::try_from(us).unwrap_or(u32::MAX))
        .collect();
    v.sort_unstable();
    v
}

/// `503 x4, 0 x1`: how many asks got each status.
fn by_status<'a>(asks: impl Iterator<Item = &'a Ask>) -> String {
    let mut n = std::collections::BTreeMap::new();
    for a in asks {
        *n.entry(a.status).or_insert(0usize) += 1;
    }
    n.iter()
        .map(|(s, c)| format!("{s} x{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Node boot: every pod asks at once for its first token.
fn boot(lat: Duration, n: usize) -> anyhow::Result<(Figures, f64)> {
    let SlowNode { node, proxy, base } = &SlowNode::new(lat)?;
    let ids = pods(node, n);
    let d = Daemon::start(node.path(), &config(base, PRODUCTION_LIFE_S));
    let mut fleet = Fleet::spawn(&ids, &d.socket)?;
    let signed_before = slowed(proxy);
    let start = now_ms() + 300;
    fleet.start(|_| start, start + 300_000, Mode::Once)?;
    let asks = fleet.collect()?;
    let errors = asks.iter().filter(|a| a.status != 200).count();
    let refusals = by_status(asks.iter().filter(|a| a.status != 200));
    // Per pod: from its first ask until it held its first token.
    let mut first: Vec<(u64, u64)> = vec![(u64::MAX, 0); n];
    for a in &asks {
        let f = &mut first[a.workload];
        f.0 = f.0.min(a.at_ms);
        if a.status == 200 {
            f.1 = f.1.max(a.done_ms());
        }
    }
    if first.iter().any(|f| f.1 == 0) {
        bail!("a pod got no token during the boot");
    }
    let done_s = first
        .iter()
        .map(|f| f.1)
        .max()
        .unwrap_or(start)
        .saturating_sub(start) as f64
        / 1e3;
    let lat_us = ms_sorted(first.iter().map(|f| (f.1 - f.0) * 1000));
    let p99 = percentile(&lat_us, 0.99);
    let goal_s = 1.1 * n as f64 * lat.as_secs_f64();
    let ideal_s = n as f64 * lat.as_secs_f64();
    let signs = slowed(proxy) - signed_before;
    let sign_s = mean_sign_s(&d.metrics());
    println!(
        "boot: {n} pods at once: all hold a token after {done_s:.2} s (goal <= {goal_s:.2} s), p99 first token {p99:.0} ms, {signs} TPM signatures, refused {errors} [{refusals}]; done / ({n} x latency) = {:.3} (goal <= 1.1); signatures took {:.1} ms on average, done / ({n} x that) = {:.3}",
        done_s / ideal_s,
        sign_s * 1e3,
        done_s / (n as f64 * sign_s)
    );
    let k = format!("slow_tpm.{}ms.boot", lat.as_millis());
    let f = Figures::from([
        (format!("{k}.done_s"), done_s),
        (format!("{k}.p99_ms"), p99),
        (format!("{k}.ratio_to_n_x_latency"), done_s / ideal_s),
        (format!("{k}.mean_sign_ms"), sign_s * 1e3),
        (format!("{k}.refused"), errors as f64),
    ]);
    Ok((f, sign_s))
}

/// One steady-state step with `n` workloads.
struct Step {
    n: usize,
    p50_ms: f64,
    p99_ms: f64,
    asks: usize,
    refused: usize,
    /// Refusals by HTTP status (0: no answer), e.g. `503 x4`.
    refusals: String,
    signs_per_s: f64,
    refreshes: f64,
    late: f64,
    sign_ms: f64,
    /// Share of the answers that came from the cache (no wait for the TPM).
    cached: f64,
}

impl Step {
    /// The TPM kept up: none refused, at most 1 % of asks waited for a
    /// signature. What the TPM's capacity decides; the p99 also depends
    /// on how loaded the machine is.
    fn kept_up(&self) -> bool {
        self.refused == 0 && self.asks > 0 && self.cached >= 0.99
    }

    /// The goal: no refusal and p99 at most 100 ms.
    fn met_p99(&self) -> bool {
        self.refused == 0 && self.asks > 0 && self.p99_ms <= P99_GOAL_MS
    }
}

fn steady(lat: Duration, o: &Options, n: usize) -> anyhow::Result<Step> {
    let SlowNode { node, proxy, base } = &SlowNode::new(lat)?;
    let ids = pods(node, n);
    let d = Daemon::start(node.path(), &config(base, o.token_life_s));
    let mut fleet = Fleet::spawn(&ids, &d.socket)?;
    let half_ms = o.token_life_s * 1000 / 2;
    let t0 = now_ms() + 300;
    let from = t0 + half_ms + half_ms + 2000;
    let end = from + o.measure_s * 1000;
    // First asks spread over a half-life, as pods that started at any time.
    fleet.start(|i| t0 + i as u64 * half_ms / n as u64, end, Mode::Refresh)?;
    std::thread::sleep(Duration::from_millis(from.saturating_sub(now_ms())));
    let (signed0, m0) = (slowed(proxy), d.metrics());
    let asks = fleet.collect()?;
    // Workloads stop asking at `end`; one still waiting finishes later.
    let window_s = now_ms().saturating_sub(from).max(1) as f64 / 1e3;
    let m1 = d.metrics();
    let signs = slowed(proxy) - signed0;
    let window: Vec<&Ask> = asks
        .iter()
        .filter(|a| (from..end).contains(&a.at_ms))
        .collect();
    let lat = ms_sorted(
        window
            .iter()
            .filter(|a| a.status == 200)
            .map(|a| u64::from(a.latency_us)),
    );
    let delta = |name: &str| metric(&m1, name) - metric(&m0, name);
    Ok(Step {
        n,
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        asks: window.len(),
        refused: asks.iter().filter(|a| a.status != 200).count(),
        refusals: by_status(asks.iter().filter(|a| a.status != 200)),
        signs_per_s: signs as f64 / window_s,
        refreshes: delta("jss_refreshes_total"),
        late: delta("jss_refreshes_late_total"),
        sign_ms: delta("jss_sign_duration_seconds_sum") * 1e3
            / delta("jss_sign_duration_seconds_count").max(1.0),
        cached: delta("jss_cache_hits_total") / delta("jss_tokens_issued_total").max(1.0),
    })
}

/// The largest passing workload count: from 0.7 × capacity up in steps of
/// 0.1 until a step fails (or down until one passes), then the half step.
fn search(o: &Options, lat: Duration, sign_s: f64) -> anyhow::Result<Figures> {
    // The TPM's capacity at the signing time the daemon measured (the added
    // latency plus what this machine's load adds), and at the nominal one.
    let capacity = o.token_life_s as f64 / 2.0 / sign_s.max(lat.as_secs_f64());
    let nominal = o.token_life_s as f64 / 2.0 / lat.as_secs_f64();
    let mut steps: Vec<(f64, bool)> = Vec::new();
    let mut best = 0usize;
    let mut best_p99 = 0usize;
    let mut run = |r: f64, steps: &mut Vec<(f64, bool)>| -> anyhow::Result<bool> {
        let n = ((r * capacity).round() as usize).max(1);
        let s = steady(lat, o, n)?;
        let ok = s.kept_up();
        println!(
            "steady: {n:>4} workloads ({r:.2} x capacity): p50 {:.1} ms, p99 {:.1} ms over {} asks, refused {} [{}], {:.1} TPM signs/s ({:.0}% busy), {} refreshes ({} late), {:.1} ms per signature, {:.1}% from the cache -> {}{}",
            s.p50_ms,
            s.p99_ms,
            s.asks,
            s.refused,
            s.refusals,
            s.signs_per_s,
            100.0 * s.signs_per_s * lat.as_secs_f64(),
            s.refreshes,
            s.late,
            s.sign_ms,
            100.0 * s.cached,
            if ok { "kept up" } else { "FELL BEHIND" },
            if s.met_p99() { ", p99 goal met" } else { "" }
        );
        if ok {
            best = best.max(s.n);
        }
        if s.met_p99() {
            best_p99 = best_p99.max(s.n);
        }
        steps.push((r, ok));
        Ok(ok)
    };
    let mut r: f64 = 0.7;
    if run(r, &mut steps)? {
        while r < 1.25 && run(r + 0.1, &mut steps)? {
            r += 0.1;
        }
    } else {
        while r > 0.15 && !run(r - 0.1, &mut steps)? {
            r -= 0.1;
        }
        r -= 0.1;
    }
    // Between the last pass (r) and the first failure (r + 0.1).
    if r > 0.15 && r < 1.25 {
        run(r + 0.05, &mut steps)?;
    }
    let ratio = best as f64 / capacity;
    println!(
        "steady: the largest count that also met p99 <= 100 ms: {best_p99} ({:.2} x capacity)",
        best_p99 as f64 / capacity
    );
    println!(
        "steady: capacity {capacity:.0} workloads ({} s tokens, {:.1} ms per signature measured, {} ms added); largest kept up with (none refused, >= 99% of asks from the cache) {best} = {ratio:.2} x capacity (goal >= 0.9), {:.2} x the nominal {nominal:.0}",
        o.token_life_s,
        sign_s * 1e3,
        lat.as_millis(),
        best as f64 / nominal
    );
    let k = format!("slow_tpm.{}ms.steady", lat.as_millis());
    Ok(Figures::from([
        (format!("{k}.capacity"), capacity),
        (format!("{k}.max_workloads"), best as f64),
        (format!("{k}.ratio_to_capacity"), ratio),
        (
            format!("{k}.ratio_to_nominal_capacity"),
            best as f64 / nominal,
        ),
    ]))
}

pub fn run(o: &Options) -> anyhow::Result<Figures> {
    // Two descriptors per workload (its output and error pipes) and a
    // control socket each.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let mut f = Figures::new();
    for &ms in &o.latencies_ms {
        let lat = Duration::from_millis(ms);
        println!("\n== slow TPM: {ms} ms added to every TPM2_Sign ==");
        let mut sign_s = lat.as_secs_f64();
        if o.boot_pods > 0 {
            let (b, s) = boot(lat, o.boot_pods)?;
            f.extend(b);
            sign_s = s;
        }
        f.extend(search(o, lat, sign_s)?);
    }
    Ok(f)
}
