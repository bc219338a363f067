//! End to end through the socket: client processes in a kubepods cgroup ask
//! `jss serve` for tokens over keep-alive connections.

use std::io::Read as _;
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

use jss::signer::SignerKind;
use jss_tests::daemon::Daemon;
use jss_tests::node::{Node, spawn_in};
use jss_tests::pods::{Layout, PodProcess, Qos};

use crate::http::Conn;
use crate::{CONCURRENCY, Figures, percentile};

/// `POST /v1/token` for the audience `vault`.
pub const REQUEST: &[u8] = b"POST /v1/token HTTP/1.1\r\nHost: jss\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n{\"audience\":\"vault\"}";

/// `client SOCKET SECONDS`: requests tokens until the time is up, then prints
/// `errors N` and one latency in microseconds per line.
pub fn client_main(args: &[String]) -> anyhow::Result<()> {
    let (socket, seconds) = client_args(args, "client")?;
    let connect = || UnixStream::connect(socket).with_context(|| format!("connect to {socket}"));
    let mut conn = Conn::new(connect()?);
    let mut lat: Vec<u32> = Vec::with_capacity(1 << 16);
    let mut errors = 0u64;
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        let t = Instant::now();
        match conn.exchange(REQUEST) {
            Ok((200, _)) => lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX)),
            Ok(_) => errors += 1,
            Err(_) => {
                errors += 1;
                conn = Conn::new(connect()?);
            }
        }
    }
    print_samples(&lat, errors);
    Ok(())
}

/// A load client's `SOCKET SECONDS` arguments; `name` for the usage line.
pub fn client_args<'a>(args: &'a [String], name: &str) -> anyhow::Result<(&'a str, u64)> {
    let [socket, seconds] = args else {
        bail!("usage: jss-bench {name} SOCKET SECONDS");
    };
    let seconds = seconds
        .parse()
        .with_context(|| format!("SECONDS {seconds:?}"))?;
    Ok((socket, seconds))
}

/// A client's report: `errors N`, then one latency in microseconds per line.
pub fn print_samples(lat: &[u32], errors: u64) {
    let mut out = format!("errors {errors}\n");
    for l in lat {
        out.push_str(&l.to_string());
        out.push('\n');
    }
    print!("{out}");
}

/// Runs `clients` processes of `jss-bench ARGS…` in `pod` and reads their
/// reports; the sorted latencies and the error count.
pub fn load(pod: &PodProcess, args: &[&str], clients: usize) -> anyhow::Result<(Vec<u32>, u64)> {
    let me = std::env::current_exe().context("find the jss-bench executable")?;
    let children: Vec<_> = (0..clients)
        .map(|_| spawn_in(pod, &me, args, Stdio::piped()))
        .collect();
    let mut lat = Vec::new();
    let mut errors = 0u64;
    for mut ch in children {
        let mut out = String::new();
        if let Some(mut stdout) = ch.stdout.take() {
            stdout
                .read_to_string(&mut out)
                .context("read a client's output")?;
        }
        let status = ch.wait().context("wait for a client")?;
        ensure!(status.success(), "a benchmark client failed ({status})");
        let mut lines = out.lines();
        errors += lines
            .next()
            .and_then(|l| l.strip_prefix("errors "))
            .and_then(|n| n.parse::<u64>().ok())
            .with_context(|| format!("a client's output lacks `errors N`: {out:.200}"))?;
        for l in lines {
            lat.push(
                l.parse()
                    .with_context(|| format!("a client's latency {l:?}"))?,
            );
        }
    }
    lat.sort_unstable();
    Ok((lat, errors))
}

fn read_proc(pid: u32, file: &str) -> anyhow::Result<String> {
    let path = format!("/proc/{pid}/{file}");
    std::fs::read_to_string(&path).with_context(|| format!("read {path} of the daemon"))
}

/// The process's peak resident set (`VmHWM`), in MiB.
pub fn peak_rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = read_proc(pid, "status")?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no VmHWM in /proc/{pid}/status"))?;
    Ok(kb / 1024.0)
}

/// CPU time (user + system) the process has used, in microseconds.
pub fn cpu_us(pid: u32) -> anyhow::Result<f64> {
    let stat = read_proc(pid, "stat")?;
    // fields 14 and 15 (utime, stime) are at 11 and 12 after the state field
    let ticks = stat
        .rfind(')')
        .and_then(|end| stat.get(end + 2..))
        .map(|after| after.split(' ').collect::<Vec<_>>())
        .and_then(|f| Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?))
        .with_context(|| format!("no utime/stime in /proc/{pid}/stat: {stat}"))?;
    Ok(ticks * 1e6 / 100.0)
}

/// A node under load: its daemon (limits raised, the token cache on or off,
/// `more` appended to its config) and one pod process in a kubepods cgroup.
/// Fields drop in order: the pod, the daemon, then the node's directory.
pub struct BenchNode {
    pub pod: PodProcess,
    pub daemon: Daemon,
    pub node: Node,
}

impl BenchNode {
    pub fn start(kind: SignerKind, cache: bool, more: &str) -> Self {
        let extra = format!(
            "[cache]\nenabled = {cache}\n[limits]\nmax_connections = 4096\nsigner_queue = 4096\n{more}"
        );
        let node = Node::new(kind, &extra);
        // Tests force a fresh pod list per lookup; production reuses a list
        // younger than a second, and so does the benchmark.
        let config = node
            .config
            .replace("max_list_age_ms = 0", "max_list_age_ms = 1000");
        let daemon = Daemon::start(node.path(), &config);
        let pod = PodProcess::spawn(
            Layout::V2Systemd(Qos::BestEffort),
            &node.pod_uid,
            &node.app_id,
        );
        Self { pod, daemon, node }
    }
}

fn one(
    label: &str,
    kind: SignerKind,
    cache: bool,
    seconds: u64,
    f: &mut Figures,
) -> anyhow::Result<()> {
    // Bound in this order so they drop pod, daemon, then the directory.
    let BenchNode {
        node: _dir,
        mut daemon,
        pod,
    } = BenchNode::start(kind, cache, "");
    let sock = daemon.socket.display().to_string();
    let secs = seconds.to_string();
    for c in CONCURRENCY {
        let cpu_before = cpu_us(daemon.pid())?;
        let (lat, errors) = load(&pod, &["client", &sock, &secs], c)?;
        let rate = lat.len() as f64 / seconds as f64;
        let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
        // The daemon's own CPU per token: steadier than rates on a shared machine.
        let cpu = (cpu_us(daemon.pid())? - cpu_before) / lat.len().max(1) as f64;
        println!(
            "{label:<22} {c:>3} clients: {rate:>9.0} tokens/s  p50 {p50:>7.3} ms  p99 {p99:>7.3} ms  daemon {cpu:>5.1} us CPU/token  errors {errors}"
        );
        f.insert(format!("e2e.{label}.c{c}.daemon_cpu_us_per_token"), cpu);
        let k = format!("e2e.{label}.c{c}");
        f.insert(format!("{k}.tokens_per_s"), rate);
        f.insert(format!("{k}.p50_ms"), p50);
        f.insert(format!("{k}.p99_ms"), p99);
        f.insert(format!("{k}.errors"), errors as f64);
    }
    let rss = peak_rss_mib(daemon.pid())?;
    println!("{label:<22} daemon peak RSS: {rss:.1} MiB");
    // A clean exit lets a profiler the daemon runs under write its report.
    daemon.terminate(Duration::from_secs(30));
    f.insert(format!("e2e.{label}.peak_rss_mib"), rss);
    Ok(())
}

pub fn run(seconds: u64) -> anyhow::Result<Figures> {
    println!("\n== end to end over the socket ({seconds} s per point) ==");
    let mut f = Figures::new();
    for (kind, name) in [(SignerKind::Software, "software"), (SignerKind::Tpm, "tpm")] {
        for cache in [false, true] {
            let label = format!("{name}.{}", if cache { "cache_on" } else { "cache_off" });
            // JSS_BENCH_ONLY=software.cache_on runs one configuration (for profiling).
            if std::env::var("JSS_BENCH_ONLY").is_ok_and(|only| only != label) {
                continue;
            }
            one(&label, kind, cache, seconds, &mut f)?;
        }
    }
    Ok(f)
}
