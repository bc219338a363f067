//! JWT-SVIDs over gRPC (the SPIFFE Workload API, the Rust `spiffe` crate's
//! client) next to tokens over HTTP, in the same run against the same
//! daemon: 16 client processes in a kubepods cgroup, software key, cache
//! off and on; rate, p99 and the ratio gRPC/HTTP (goal ≥ 0.8).

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use jss::signer::SignerKind;
use jss_tests::daemon::Daemon;
use jss_tests::node::Node;
use jss_tests::pods::{Layout, PodProcess, Qos};

use crate::{Figures, percentile};

const CLIENTS: usize = 16;

/// `spiffe-client SOCKET SECONDS`: fetches JWT-SVIDs for `vault` over one
/// gRPC connection until the time is up; prints `errors N` and one latency
/// in microseconds per line (as `client` does for HTTP).
pub fn client_main(args: &[String]) -> anyhow::Result<()> {
    let [socket, seconds] = args else {
        bail!("usage: jss-bench spiffe-client SOCKET SECONDS");
    };
    let seconds: u64 = seconds
        .parse()
        .with_context(|| format!("SECONDS {seconds:?}"))?;
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
        "\n== JWT-SVIDs over gRPC next to tokens over HTTP ({CLIENTS} clients, {seconds} s per point) =="
    );
    let mut f = Figures::new();
    for cache in [false, true] {
        let label = if cache { "cache_on" } else { "cache_off" };
        let dir = tempfile::tempdir().context("tempdir")?;
        let spiffe_sock = dir.path().join("spiffe.sock");
        let extra = format!(
            "[cache]\nenabled = {cache}\n[limits]\nmax_connections = 4096\nsigner_queue = 4096\n[spiffe]\ntrust_domain = \"example.org\"\nsocket = \"{}\"\n",
            spiffe_sock.display()
        );
        let node = Node::new(SignerKind::Software, &extra);
        let config = node
            .config
            .replace("max_list_age_ms = 0", "max_list_age_ms = 1000");
        let daemon = Daemon::start(node.path(), &config);
        let pod = PodProcess::spawn(
            Layout::V2Systemd(Qos::BestEffort),
            &node.pod_uid,
            &node.app_id,
        );
        let secs = seconds.to_string();
        let http_sock = daemon.socket.display().to_string();
        let grpc_sock = spiffe_sock.display().to_string();
        let mut rates = Vec::new();
        for (proto, args) in [
            ("http", ["client", http_sock.as_str(), secs.as_str()]),
            ("grpc", ["spiffe-client", grpc_sock.as_str(), secs.as_str()]),
        ] {
            let cpu0 = crate::e2e::cpu_us(daemon.pid())?;
            let (lat, errors) = crate::e2e::load(&pod, &args, CLIENTS)?;
            let cpu_us = (crate::e2e::cpu_us(daemon.pid())? - cpu0) / lat.len().max(1) as f64;
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
        // The daemon's own cost: on 2 cores the clients share the CPU, and
        // a gRPC client (tonic, h2) costs several times the HTTP one.
        let cpu_ratio = rates[0].1 / rates[1].1.max(1.0);
        println!(
            "software.{label} gRPC/HTTP: {ratio:.2} (goal >= 0.8); daemon CPU per answer HTTP/gRPC: {cpu_ratio:.2}"
        );
        f.insert(format!("svid.software.{label}.grpc_over_http"), ratio);
        f.insert(
            format!("svid.software.{label}.daemon_cpu_http_over_grpc"),
            cpu_ratio,
        );
        let mut daemon = daemon;
        daemon.terminate(Duration::from_secs(30));
    }
    Ok(f)
}
