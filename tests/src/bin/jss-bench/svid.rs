//! JWT-SVIDs over gRPC (the SPIFFE Workload API) next to tokens over HTTP,
//! in the same run against the same daemon: 16 client processes in a
//! kubepods cgroup, software key, cache off and on; rate, p99 and the ratio
//! gRPC/HTTP (goal ≥ 0.8).
//!
//! Two gRPC clients: `grpc`, a load generator as lean as the HTTP client
//! (`grpc_raw`: pre-framed requests on a blocking socket), so the ratio
//! compares the two servers; and `grpc-spiffe-crate`, the Rust `spiffe`
//! crate's client (tonic, h2 on tokio), what a real workload pays: on 2
//! cores its ~90 µs of CPU per call is taken from the daemon.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use jss::signer::SignerKind;

use crate::e2e::BenchNode;
use crate::{Figures, percentile};

const CLIENTS: usize = 16;
/// Each point runs this long at a time, `--seconds` times in turn.
const SLICE_SECONDS: &str = "1";

/// `spiffe-client SOCKET SECONDS`: fetches JWT-SVIDs for `vault` over one
/// gRPC connection until the time is up with the `spiffe` crate; prints
/// `errors N` and one latency in microseconds per line (as `client` does
/// for HTTP).
pub fn spiffe_crate_client_main(args: &[String]) -> anyhow::Result<()> {
    let (socket, seconds) = crate::e2e::client_args(args, "spiffe-client")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start a tokio runtime")?;
    let (lat, errors) = rt.block_on(async {
        let client = spiffe::WorkloadApiClient::connect_to(format!("unix://{socket}"))
            .await
            .with_context(|| format!("connect to {socket}"))?;
        let mut lat: Vec<u32> = Vec::with_capacity(1 << 16);
        let mut errors = 0u64;
        let end = Instant::now() + Duration::from_secs(seconds);
        while Instant::now() < end {
            let t = Instant::now();
            match client.fetch_jwt_token(["vault"], None).await {
                Ok(_) => lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX)),
                Err(_) => errors += 1,
            }
        }
        anyhow::Ok((lat, errors))
    })?;
    crate::e2e::print_samples(&lat, errors);
    Ok(())
}

pub fn run(seconds: u64) -> anyhow::Result<Figures> {
    println!(
        "\n== JWT-SVIDs over gRPC next to tokens over HTTP ({CLIENTS} clients, {seconds} x 1 s per point, in turn) =="
    );
    let mut f = Figures::new();
    for cache in [false, true] {
        let label = if cache { "cache_on" } else { "cache_off" };
        let dir = tempfile::tempdir().context("tempdir")?;
        let spiffe_sock = dir.path().join("spiffe.sock");
        let spiffe = format!(
            "[spiffe]\ntrust_domain = \"example.org\"\nsocket = \"{}\"\n",
            spiffe_sock.display()
        );
        // Bound in this order so they drop pod, daemon, then the directory.
        let BenchNode {
            node: _dir,
            mut daemon,
            pod,
        } = BenchNode::start(SignerKind::Software, cache, &spiffe);
        let http_sock = daemon.socket.display().to_string();
        let grpc_sock = spiffe_sock.display().to_string();
        let points: [(&str, [&str; 3]); 3] = [
            ("http", ["client", &http_sock, SLICE_SECONDS]),
            ("grpc", ["grpc-client", &grpc_sock, SLICE_SECONDS]),
            (
                "grpc-spiffe-crate",
                ["spiffe-client", &grpc_sock, SLICE_SECONDS],
            ),
        ];
        // The points take turns, a second each, so that each sees the
        // same moments of a shared, noisy machine.
        let mut runs: Vec<(Vec<u32>, u64, f64)> = vec![(Vec::new(), 0, 0.0); points.len()];
        for _ in 0..seconds {
            for ((_, args), run) in points.iter().zip(&mut runs) {
                let cpu0 = crate::e2e::cpu_us(daemon.pid())?;
                let (lat, errors) = crate::e2e::load(&pod, args, CLIENTS)?;
                run.2 += crate::e2e::cpu_us(daemon.pid())? - cpu0;
                run.0.extend(lat);
                run.1 += errors;
            }
        }
        let mut rates = Vec::new();
        for ((proto, _), (mut lat, errors, cpu)) in points.iter().zip(runs) {
            lat.sort_unstable();
            let cpu_us = cpu / lat.len().max(1) as f64;
            let rate = lat.len() as f64 / seconds as f64;
            let p99 = percentile(&lat, 0.99);
            println!(
                "software.{label} {proto}: {rate:>9.0} per s  p99 {p99:>7.3} ms  errors {errors}  daemon CPU {cpu_us:.0} us per answer"
            );
            let k = format!("svid.software.{label}.{proto}.c{CLIENTS}");
            f.insert(format!("{k}.per_s"), rate);
            f.insert(format!("{k}.p99_ms"), p99);
            f.insert(format!("{k}.errors"), errors as f64);
            f.insert(format!("{k}.daemon_cpu_us"), cpu_us);
            rates.push((rate, cpu_us));
        }
        let ratio = rates[1].0 / rates[0].0.max(1.0);
        let crate_ratio = rates[2].0 / rates[0].0.max(1.0);
        // The daemon's own cost: on 2 cores the clients share the CPU.
        let cpu_ratio = rates[0].1 / rates[1].1.max(1.0);
        println!(
            "software.{label} gRPC/HTTP: {ratio:.2} (goal >= 0.8; spiffe crate client {crate_ratio:.2}); daemon CPU per answer HTTP/gRPC: {cpu_ratio:.2}"
        );
        f.insert(format!("svid.software.{label}.grpc_over_http"), ratio);
        f.insert(
            format!("svid.software.{label}.spiffe_crate_over_http"),
            crate_ratio,
        );
        f.insert(
            format!("svid.software.{label}.daemon_cpu_http_over_grpc"),
            cpu_ratio,
        );
        daemon.terminate(Duration::from_secs(30));
    }
    Ok(f)
}
