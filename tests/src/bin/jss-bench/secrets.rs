//! `jss-agent secrets` (what the injector runs) against a loopback OpenBao:
//! time from `--once` starting (in the pod's cgroup) to all its files
//! written, for 1 and 10 secrets; the sidecar's RSS and CPU per refresh, and
//! its CPU while idle; the same sidecar run as `jss secrets` for reference.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a panic is a failure report

use std::io::Read as _;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant, SystemTime};

use jss_tests::cluster::{Cluster, PodDef, REGION};

use crate::{Figures, percentile};

const SIZES: [usize; 2] = [1, 10];
/// The binary the injector runs in pods.
const AGENT: &str = "jss-agent";

/// The annotation for `n` secrets `s0…` at the pod's ti-demo-ri paths.
fn spec(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "- tsi.secret/name: \"s{i}\"\n  tsi.secret/role: \"jss\"\n  tsi.secret/vault-path: \"secret/ti-demo-ri\"\n  tsi.secret/local-path: \"bench\"\n"
            )
        })
        .collect()
}

fn status_kib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// User + system CPU of `pid`, in milliseconds.
fn cpu_ms(pid: u32) -> f64 {
    crate::e2e::cpu_us(pid).expect("read the sidecar's CPU time") / 1000.0
}

/// Starts the sidecar on `spec` into `out` with `extra` flags; returns it
/// once its ready file exists.
fn sidecar(
    c: &Cluster,
    program: &str,
    pod: &jss_tests::pods::PodProcess,
    spec: &str,
    out: &Path,
    extra: &[&str],
    log: &str,
) -> Child {
    let ready = out.with_extension("ready");
    let ready_s = ready.to_str().unwrap().to_string();
    let mut args = vec!["secrets", "--spec", spec, "--out", out.to_str().unwrap()];
    args.extend_from_slice(&["--ready-file", &ready_s]);
    args.extend_from_slice(extra);
    let child = c.spawn_bin(pod, program, &args, &[("RUST_LOG", log)]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "the sidecar never got ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn terminate(mut child: Child) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// Newest modification time under `dir`.
fn last_write(dir: &Path) -> SystemTime {
    std::fs::read_dir(dir.join("bench"))
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().modified().unwrap())
        .max()
        .unwrap()
}

/// Output directories on tmpfs, as the memory-backed emptyDir a pod gives
/// `jss secrets` (on a disk each file's two fsyncs would be measured instead).
fn memory_dir() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm").unwrap()
}

pub fn run(seconds: u64) -> Figures {
    println!("\n== jss secrets against a loopback OpenBao ==");
    let shm = memory_dir();
    let mut f = Figures::new();
    let pod = PodDef::new(
        "bench",
        "bench-0",
        "app",
        "docker.io/library/busybox:1.37.0",
    );
    let c = Cluster::start(&[], "", &[&pod]);
    for i in 0..SIZES[1] {
        let path = format!("secret/ti-demo-ri/{REGION}/{}/s{i}", pod.images());
        c.bao
            .ok(&["kv", "put", &path, "user=bench", &format!("password=p{i}")]);
    }
    let proc_ = c.pod(&pod);
    let runs = (seconds * 10).max(10) as usize;
    for n in SIZES {
        let spec_file = c.path().join(format!("spec-{n}"));
        std::fs::write(&spec_file, spec(n)).unwrap();
        let spec_s = spec_file.to_str().unwrap().to_string();
        let (mut written, mut exited) = (Vec::new(), Vec::new());
        for r in 0..runs {
            let out = shm.path().join(format!("once-{n}-{r}"));
            std::fs::create_dir(&out).unwrap();
            let out_s = out.to_str().unwrap();
            let t0 = SystemTime::now();
            let start = Instant::now();
            let o = c
                .spawn_bin(
                    &proc_,
                    AGENT,
                    &["secrets", "--once", "--spec", &spec_s, "--out", out_s],
                    &[("RUST_LOG", "warn")],
                )
                .wait_with_output()
                .unwrap();
            let took = start.elapsed();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let to_files = last_write(&out).duration_since(t0).unwrap_or_default();
            written.push(u32::try_from(to_files.as_micros()).unwrap_or(u32::MAX));
            exited.push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
        }
        written.sort_unstable();
        exited.sort_unstable();
        let (p50, p99) = (percentile(&written, 0.5), percentile(&written, 0.99));
        let (e50, e99) = (percentile(&exited, 0.5), percentile(&exited, 0.99));
        println!(
            "--once, {n:>2} secrets, {runs} runs: to all files written p50 {p50:>7.2} ms  p99 {p99:>7.2} ms; to exit (token revoked) p50 {e50:>7.2} ms  p99 {e99:>7.2} ms"
        );
        f.insert(format!("secrets.once.n{n}.written_p50_ms"), p50);
        f.insert(format!("secrets.once.n{n}.written_p99_ms"), p99);
        f.insert(format!("secrets.once.n{n}.exit_p50_ms"), e50);
        f.insert(format!("secrets.once.n{n}.exit_p99_ms"), e99);
    }

    // The sidecar with 10 secrets: a pass every second for a while, then
    // idle; as `jss-agent` and, for reference, as `jss` (the daemon's binary).
    let spec_s = c.path().join("spec-10").to_str().unwrap().to_string();
    let window = Duration::from_secs(seconds.max(5));
    for program in [AGENT, "jss"] {
        sidecar_rss(
            &c,
            &proc_,
            program,
            &spec_s,
            &shm.path().join(program),
            window,
            &mut f,
        );
    }
    if let (Some(agent), Some(jss)) = (
        f.get("secrets.sidecar.n10.rss_mib").copied(),
        f.get("secrets.sidecar.jss.n10.rss_mib").copied(),
    ) {
        println!("sidecar RSS, jss-agent / jss: {:.2}", agent / jss);
        f.insert("secrets.sidecar.rss_agent_vs_jss".into(), agent / jss);
    }

    // Idle between refreshes (the default 600 s): CPU over a quiet window.
    let out = shm.path().join("idle");
    std::fs::create_dir(&out).unwrap();
    let idle = sidecar(&c, AGENT, &proc_, &spec_s, &out, &[], "warn");
    std::thread::sleep(Duration::from_millis(200));
    let i0 = cpu_ms(idle.id());
    std::thread::sleep(window);
    let idle_ms = cpu_ms(idle.id()) - i0;
    terminate(idle);
    println!(
        "sidecar idle between refreshes: {idle_ms:.0} ms CPU in {} s",
        window.as_secs()
    );
    f.insert("secrets.sidecar.idle_cpu_ms".into(), idle_ms);
    f
}

/// RSS (anonymous and file-backed) and CPU per refresh of the sidecar run
/// as `program`, refreshing every second over `window`. Figures of
/// `jss-agent` are `secrets.sidecar.n10.*`, of another program
/// `secrets.sidecar.<program>.n10.*`.
fn sidecar_rss(
    c: &Cluster,
    proc_: &jss_tests::pods::PodProcess,
    program: &str,
    spec_s: &str,
    out: &Path,
    window: Duration,
    f: &mut Figures,
) {
    std::fs::create_dir(out).unwrap();
    let mut side = sidecar(
        c,
        program,
        proc_,
        spec_s,
        out,
        &["--refresh-seconds", "1"],
        "warn,jss::workload=debug",
    );
    let pid = side.id();
    let mut err = side.stderr.take().unwrap();
    let drain = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let cpu0 = cpu_ms(pid);
    let passes0 = Instant::now();
    std::thread::sleep(window);
    let cpu1 = cpu_ms(pid);
    let rss = status_kib(pid, "VmRSS:") / 1024.0;
    let hwm = status_kib(pid, "VmHWM:") / 1024.0;
    // Anonymous (the sidecar's own) vs file-backed (binary and libraries,
    // shared with every other process that maps them).
    let anon = status_kib(pid, "RssAnon:") / 1024.0;
    let file = status_kib(pid, "RssFile:") / 1024.0;
    terminate(side);
    let log = drain.join().unwrap();
    // One pass a second (plus its jitter): the window's length in passes.
    let passes = passes0.elapsed().as_secs_f64().floor().max(1.0);
    let per_pass = (cpu1 - cpu0) / passes;
    println!(
        "sidecar ({program} secrets), 10 secrets, refresh 1 s: RSS {rss:.1} MiB (peak {hwm:.1} MiB; anonymous {anon:.1}, file-backed {file:.1}), CPU {per_pass:.2} ms per refresh ({} passes logged in all)",
        log.matches("next pass").count()
    );
    let key = |what: &str| match program {
        AGENT => format!("secrets.sidecar.n10.{what}"),
        other => format!("secrets.sidecar.{other}.n10.{what}"),
    };
    f.insert(key("rss_mib"), rss);
    f.insert(key("peak_rss_mib"), hwm);
    f.insert(key("rss_anon_mib"), anon);
    f.insert(key("rss_file_mib"), file);
    f.insert(key("cpu_ms_per_refresh"), per_pass);
}
