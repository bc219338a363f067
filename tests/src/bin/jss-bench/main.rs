//! Benchmarks that print figures, as ratios against references measured in
//! the same run (these machines are shared and noisy).
//!
//! `jss-bench [all|sign|e2e|attest|openbao|secrets|injector|svid|entities|slow-tpm|tpm-sign] [--seconds N] [--repeat N] [--out FILE]`
//!
//! With `--repeat N` (default 3) the whole selection runs N times in turn and
//! every figure is the median of its N values: on these shared machines a
//! point can be 10% off for a minute, and passes spread over time see it
//! only once.
//! - sign: raw ES256 signs/s: software signer, TPM signer on swtpm, `openssl speed`.
//! - e2e: tokens/s, p50/p99 and the daemon's peak RSS through the socket, from
//!   client processes in a kubepods cgroup; software and TPM, cache off and on,
//!   1/16/64 clients.
//! - attest: attestation alone against a 110-pod kubelet list.
//! - openbao: OpenBao's own identity tokens at the same concurrency.
//! - scale: static keys vs JWKS mode at 1 to 20,000 nodes (not in `all`:
//!   minutes of setup on a raft-backed OpenBao).
//! - secrets: `jss secrets --once` for 1 and 10 secrets (p50/p99 to all files
//!   written), the sidecar's RSS and CPU per refresh and while idle.
//! - injector: jss-injector admission reviews/s, p50/p99 and peak RSS.
//! - svid: JWT-SVIDs/s over gRPC (SPIFFE Workload API; a lean load
//!   generator and the `spiffe` crate's client) next to tokens/s over HTTP,
//!   16 clients, cache off and on, taking turns; p99, the ratio gRPC/HTTP.
//! - entities (not part of `all`): the cost of the mapped `jti` per login;
//!   entity count and OpenBao RSS after 1,000 rollouts, pruned and not.
//! - slow-tpm (not part of `all`; one pass unless `--repeat`): a node boot
//!   and the steady-state workload capacity on swtpm slowed to real TPM
//!   latencies (`--latency-ms 35,70,200`; see slow_tpm.rs).
//! - tpm-sign (not part of `all`): this node's TPM2_Sign latency
//!   (`--tcti device:/dev/tpmrm0`; see tpm_sign.rs).

mod attest;
mod e2e;
mod entities;
mod grpc_raw;
mod http;
mod injector;
mod openbao;
mod scale;
mod secrets;
mod sign;
mod slow_tpm;
mod svid;
mod tpm_sign;
mod workload;

use std::collections::BTreeMap;

use anyhow::Context as _;

/// Figures by name, printed at the end and written to `--out`.
pub type Figures = BTreeMap<String, f64>;

pub const CONCURRENCY: [usize; 3] = [1, 16, 64];

/// Latency percentile (`q` in 0..=1) of sorted microsecond samples.
pub fn percentile(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted_us.len() - 1) as f64 * q).round() as usize;
    f64::from(sorted_us[i]) / 1000.0
}

/// Each figure's median over the passes that measured it.
fn medians(passes: &[Figures]) -> Figures {
    let mut all: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for p in passes {
        for (k, v) in p {
            all.entry(k).or_default().push(*v);
        }
    }
    all.into_iter()
        .map(|(k, mut v)| {
            v.sort_by(f64::total_cmp);
            let n = v.len();
            let m = if n % 2 == 1 {
                v[n / 2]
            } else {
                (v[n / 2 - 1] + v[n / 2]) / 2.0
            };
            (k.to_string(), m)
        })
        .collect()
}

fn ratio(f: &Figures, a: &str, b: &str) -> Option<f64> {
    Some(f.get(a)? / f.get(b)?)
}

fn print_ratios(f: &mut Figures) {
    println!("\n== ratios and targets ==");
    let rows = [
        (
            "software, cache off, 16 clients / openssl signs/s",
            "e2e.software.cache_off.c16.tokens_per_s",
            "sign.openssl_per_s",
            ">= 0.5",
        ),
        (
            "TPM, cache off, 16 clients / raw TPM signs/s",
            "e2e.tpm.cache_off.c16.tokens_per_s",
            "sign.tpm_per_s",
            ">= 0.9",
        ),
        (
            "TPM, cache off, 64 clients / raw TPM signs/s",
            "e2e.tpm.cache_off.c64.tokens_per_s",
            "sign.tpm_per_s",
            ">= 0.9",
        ),
        (
            "TPM, cache off, 1 client / raw TPM signs/s",
            "e2e.tpm.cache_off.c1.tokens_per_s",
            "sign.tpm_per_s",
            "(one request at a time: TPM + round trip)",
        ),
        (
            "JSS software cache off / OpenBao, 16 clients",
            "e2e.software.cache_off.c16.tokens_per_s",
            "openbao.c16.tokens_per_s",
            "",
        ),
        (
            "JSS software cache off / OpenBao, 64 clients",
            "e2e.software.cache_off.c64.tokens_per_s",
            "openbao.c64.tokens_per_s",
            "",
        ),
    ];
    for (label, a, b, target) in rows {
        if let Some(r) = ratio(f, a, b) {
            println!("{label:<52}: {r:>8.2}  {target}");
            f.insert(format!("ratio.{a}/{b}"), r);
        }
    }
    for cache in ["cache_off", "cache_on"] {
        // Each pass's own ratio (the points took turns), its median.
        if let Some(r) = f.get(&format!("svid.software.{cache}.grpc_over_http")) {
            let label = format!("JWT-SVIDs gRPC / tokens HTTP, {cache}, 16 clients");
            println!("{label:<52}: {r:>8.2}  >= 0.8");
        }
    }
    let best_cached = CONCURRENCY
        .iter()
        .filter_map(|c| f.get(&format!("e2e.software.cache_on.c{c}.tokens_per_s")))
        .fold(f64::NAN, |m, v| m.max(*v));
    if best_cached.is_finite() {
        println!(
            "{:<52}: {best_cached:>8.0}  >= 20000",
            "cache on, best tokens/s"
        );
    }
    if let Some(p99) = f.get("e2e.software.cache_off.c64.p99_ms") {
        println!(
            "{:<52}: {p99:>8.2}  <= 5 ms",
            "p99 ms, software, cache off, 64 clients"
        );
    }
    let rss = ["software", "tpm"]
        .iter()
        .flat_map(|s| ["cache_off", "cache_on"].map(|c| format!("e2e.{s}.{c}.peak_rss_mib")))
        .filter_map(|k| f.get(&k).copied())
        .fold(f64::NAN, f64::max);
    if rss.is_finite() {
        println!(
            "{:<52}: {rss:>8.1}  <= 32 MiB",
            "daemon peak RSS, worst run (MiB)"
        );
    }
    for (label, key, target) in [
        (
            "jss secrets --once, 10 secrets, p50 ms",
            "secrets.once.n10.written_p50_ms",
            "<= 50 ms",
        ),
        (
            "jss secrets sidecar, 10 secrets, RSS MiB",
            "secrets.sidecar.n10.rss_mib",
            "<= 10 MiB",
        ),
        (
            "jss secrets sidecar, idle CPU ms",
            "secrets.sidecar.idle_cpu_ms",
            "0 between refreshes",
        ),
    ] {
        if let Some(v) = f.get(key) {
            println!("{label:<52}: {v:>8.2}  {target}");
        }
    }
}

/// The injector's targets (README.md, "The injector").
fn print_injector_targets(f: &Figures) {
    let best = [1, 4, 16]
        .iter()
        .filter_map(|c| f.get(&format!("injector.c{c}.reviews_per_s")))
        .fold(f64::NAN, |m, v| m.max(*v));
    if best.is_finite() {
        println!("{:<52}: {best:>8.0}  >= 2000", "injector, best reviews/s");
    }
    for c in [1, 4] {
        if let Some(p99) = f.get(&format!("injector.c{c}.p99_ms")) {
            println!(
                "{:<52}: {p99:>8.2}  <= 2 ms",
                format!("injector p99 ms, {c} clients")
            );
        }
    }
    if let Some(rss) = f.get("injector.peak_rss_mib") {
        println!("{:<52}: {rss:>8.1}  <= 20 MiB", "injector peak RSS (MiB)");
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("jss-bench: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("client") {
        // A load-generating process inside the pod's cgroup (see e2e).
        return e2e::client_main(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("workload") {
        // A pod asking for tokens (see slow-tpm).
        return workload::main(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("spiffe-client") {
        return svid::spiffe_crate_client_main(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("grpc-client") {
        return grpc_raw::client_main(&args[1..]);
    }
    let seconds: u64 = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let what = match args.first() {
        Some(w) if !w.starts_with('-') => w.as_str(),
        _ => "all",
    };
    // slow-tpm takes minutes per pass and searches in steps: one pass.
    let one_pass = matches!(what, "slow-tpm" | "tpm-sign");
    let repeat: usize = args
        .iter()
        .position(|a| a == "--repeat")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(if one_pass { 1 } else { 3 })
        .max(1);
    let slow_tpm = if what == "slow-tpm" {
        Some(slow_tpm::Options::from_args(&args)?)
    } else {
        None
    };
    let mut passes: Vec<Figures> = Vec::new();
    for pass in 1..=repeat {
        println!("\n######## pass {pass} of {repeat} ########");
        let mut figures = Figures::new();
        if matches!(what, "sign" | "all") {
            figures.extend(sign::run(seconds)?);
        }
        if matches!(what, "attest" | "all") {
            figures.extend(attest::run(seconds)?);
        }
        if matches!(what, "openbao" | "all") {
            figures.extend(openbao::run(seconds)?);
        }
        if matches!(what, "e2e" | "all") {
            figures.extend(e2e::run(seconds)?);
        }
        if what == "scale" {
            figures.extend(scale::run(seconds)?);
        }
        if matches!(what, "secrets" | "all") {
            figures.extend(secrets::run(seconds));
        }
        if matches!(what, "injector" | "all") {
            figures.extend(injector::run(seconds));
        }
        if matches!(what, "svid" | "all") {
            figures.extend(svid::run(seconds)?);
        }
        if what == "entities" {
            figures.extend(entities::run()?);
        }
        if let Some(o) = &slow_tpm {
            figures.extend(slow_tpm::run(o)?);
        }
        if what == "tpm-sign" {
            figures.extend(tpm_sign::run(&args)?);
        }
        passes.push(figures);
    }
    let mut figures = medians(&passes);
    if repeat > 1 {
        println!("\n== medians of {repeat} passes ==");
        for (k, v) in &figures {
            println!("{k:<52} {v:>12.3}");
        }
    }
    print_ratios(&mut figures);
    print_injector_targets(&figures);
    if let Some(i) = args.iter().position(|a| a == "--out") {
        let path = args.get(i + 1).context("--out needs a FILE")?;
        let body: String = figures
            .iter()
            .map(|(k, v)| format!("{k} {v:.3}\n"))
            .collect();
        std::fs::write(path, body).with_context(|| format!("write the figures to {path}"))?;
        println!("\nfigures written to {path}");
    }
    Ok(())
}
