#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report
//! JWKS mode under faults: a flood of tokens with random kids (OpenBao keeps
//! answering valid logins, the discovery server stays within its rate cap),
//! and 20 concurrent registrations each SIGKILLed at one of its Vault calls
//! (nothing half-written; re-runs complete; the JWKS holds every node).

mod bootstrap_common;
mod jwks_common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bootstrap_common::*;
use jss::chain::Chain;
use jss::signer::{self, KeyPolicy};
use jss::token::TokenEncoder;
use jss_tests::bao::Bao;
use jss_tests::daemon::bin;
use jss_tests::discovery::Discovery;
use jss_tests::freeze_proxy::{Act, FreezeProxy, signal};
use jwks_common::*;

/// POST auth/<mount>/login over plain HTTP; the status code.
fn login_status(port: u16, mount: &str, jwt: &str) -> u16 {
    let body = serde_json::json!({"role": "jss", "jwt": jwt}).to_string();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST /v1/auth/{mount}/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    raw.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// A metric's value summed over every label set whose labels contain `has`.
fn metric(text: &str, name: &str, has: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(has))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn a_flood_of_random_kids_leaves_valid_logins_working_and_the_server_in_its_caps() {
    let bao = Bao::start();
    let c = "fl1";
    let mount = "jss-fl1";
    cluster_init(&bao, c);
    let a = tempfile::tempdir().unwrap();
    ok_v(&register_args(&bao, c, "node-a", a.path()));
    let max_rate = 20;
    let d = Discovery::start(&bao, c, 1, &["--max-rate", &max_rate.to_string()]);
    init_jwks(&bao, c, &d);
    let port = port_of(&bao);

    // One rogue key; every token names another random kid.
    let rogue = tempfile::tempdir().unwrap();
    let cfg = software(rogue.path());
    let (rs, _) = signer::open(&cfg, KeyPolicy::CreateIfMissing).unwrap();
    let before = d.get("/metrics").unwrap();
    let before = String::from_utf8_lossy(&before.body).into_owned();
    let cpu0 = cpu_ticks(d.pid());
    let start = Instant::now();
    let refused = AtomicUsize::new(0);
    let valid_ok = AtomicUsize::new(0);
    let valid_failed = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..100 {
                    let mut b = [0u8; 32];
                    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
                    let kid = hex::encode(b);
                    let jwt = TokenEncoder::new(&kid, None)
                        .unwrap()
                        .encode(rs.as_ref(), &claims(c, "rogue"))
                        .unwrap();
                    if login_status(port, mount, &jwt) >= 400 {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        s.spawn(|| {
            for _ in 0..40 {
                let jwt = mint(a.path(), &claims(c, "node-a"));
                match login_status(port, mount, &jwt) {
                    200 => valid_ok.fetch_add(1, Ordering::Relaxed),
                    _ => valid_failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    });
    let took = start.elapsed();
    let cpu = cpu_ticks(d.pid()) - cpu0;
    let after = d.get("/metrics").unwrap();
    let after = String::from_utf8_lossy(&after.body).into_owned();
    let served = metric(
        &after,
        "jss_discovery_requests_total",
        "path=\"/keys\",code=\"200\"",
    ) - metric(
        &before,
        "jss_discovery_requests_total",
        "path=\"/keys\",code=\"200\"",
    );
    let limited = metric(&after, "jss_discovery_requests_total", "code=\"429\"")
        - metric(&before, "jss_discovery_requests_total", "code=\"429\"");
    eprintln!(
        "flood: 400 random-kid logins refused {}, 40 valid logins ok {} failed {} in {took:?}; \
         discovery served {served} JWKS ({:.1}/s), limited {limited}, CPU {cpu} ticks",
        refused.load(Ordering::Relaxed),
        valid_ok.load(Ordering::Relaxed),
        valid_failed.load(Ordering::Relaxed),
        served as f64 / took.as_secs_f64()
    );
    assert_eq!(
        refused.load(Ordering::Relaxed),
        400,
        "every random kid is refused"
    );
    assert_eq!(
        valid_ok.load(Ordering::Relaxed),
        40,
        "valid logins keep working"
    );
    // The token bucket: at most one second's burst plus the rate over the run.
    let cap = max_rate as f64 * (took.as_secs_f64() + 1.0);
    assert!(
        (served + limited) > 0,
        "OpenBao never fetched the JWKS for unknown kids"
    );
    assert!(
        (served as f64) <= cap,
        "{served} JWKS answers over a cap of {cap}"
    );
}

/// A proxy in front of OpenBao that SIGKILLs its client process (its pid
/// stored in `victim` once spawned) at request number `kill_at` and then
/// forwards that request anyway (so OpenBao may still act on the dead run's
/// last call).
fn kill_proxy(bao: &Bao, kill_at: usize) -> (FreezeProxy, Arc<AtomicU32>) {
    let victim = Arc::new(AtomicU32::new(0));
    let vi = victim.clone();
    let proxy = FreezeProxy::with(bao, move |n| {
        if n == kill_at {
            while vi.load(Ordering::SeqCst) == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            signal(vi.load(Ordering::SeqCst), "KILL");
        }
        Act::Forward
    });
    (proxy, victim)
}

fn spawn_register(bao: &Bao, c: &str, node: &str, state: &Path, addr: &str) -> Child {
    let mut args = register_args(bao, c, node, state);
    let i = args.iter().position(|a| a == "--vault-addr").unwrap();
    args[i + 1] = addr.to_string();
    Command::new(bin("jss-bootstrap"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Every record in the registry is whole: a valid JWK under its kid and a
/// certificate; where the node's state holds a key, it is that key.
fn registry_is_whole(bao: &Bao, c: &str, dirs: &[tempfile::TempDir]) -> Vec<String> {
    let list = bao.run(
        "root",
        &[
            "kv",
            "list",
            "-format=json",
            &format!("secret/jss/registry/jss-{c}"),
        ],
    );
    let names: Vec<String> = if list.status.success() {
        serde_json::from_slice(&list.stdout).unwrap()
    } else {
        Vec::new()
    };
    let mut kids = Vec::new();
    for n in &names {
        let out = bao.ok(&[
            "kv",
            "get",
            "-format=json",
            &format!("secret/jss/registry/jss-{c}/{n}"),
        ]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let rec = &v["data"]["data"];
        let kid = rec["kid"].as_str().unwrap().to_string();
        assert_eq!(rec["jwk"]["kid"], kid, "{n}: JWK and record disagree");
        assert!(
            rec["certificate"]
                .as_str()
                .unwrap()
                .contains("BEGIN CERTIFICATE"),
            "{n}: record without its certificate"
        );
        // The seed node registered before the test's nodes has no dir here.
        let Some(i) = n.strip_prefix('n').and_then(|i| i.parse::<usize>().ok()) else {
            continue;
        };
        let local = jss::signer::open(&software(dirs[i].path()), KeyPolicy::MustExist)
            .unwrap()
            .0;
        assert_eq!(local.kid(), kid, "{n}: the record holds another key");
        kids.push(kid);
    }
    kids
}

#[test]
fn twenty_concurrent_registrations_killed_at_each_vault_call_then_rerun() {
    let bao = Bao::start();
    let c = "kc1";
    cluster_init(&bao, c);
    let seed = tempfile::tempdir().unwrap();
    ok_v(&register_args(&bao, c, "seed", seed.path()));
    let d = Discovery::start(&bao, c, 1, &[]);
    init_jwks(&bao, c, &d);

    // A clean JWKS-mode registration through the proxy: its Vault calls.
    let counter = FreezeProxy::counting(&bao);
    let probe = tempfile::tempdir().unwrap();
    let mut p = spawn_register(&bao, c, "probe", probe.path(), &counter.addr());
    assert!(p.wait().unwrap().success());
    let calls = counter.requests();
    assert!(calls >= 4, "only {calls} Vault calls?");
    ok_v(&with(
        &["node", "deregister", "--cluster", c, "--node", "probe"],
        &vault_args(&bao),
    ));

    let dirs: Vec<tempfile::TempDir> = (0..20).map(|_| tempfile::tempdir().unwrap()).collect();
    let proxies: Vec<(FreezeProxy, Arc<AtomicU32>)> =
        (0..20).map(|i| kill_proxy(&bao, i % calls + 1)).collect();
    let mut children: Vec<Child> = dirs
        .iter()
        .enumerate()
        .map(|(i, dir)| {
            let (proxy, victim) = &proxies[i];
            let ch = spawn_register(&bao, c, &format!("n{i}"), dir.path(), &proxy.addr());
            victim.store(ch.id(), Ordering::SeqCst);
            ch
        })
        .collect();
    let killed = children
        .iter_mut()
        .map(|ch| ch.wait().unwrap().success())
        .filter(|ok| !ok)
        .count();
    let partial = registry_is_whole(&bao, c, &dirs);
    eprintln!(
        "{calls} Vault calls per JWKS-mode registration; {killed} of 20 runs killed; {} records already whole",
        partial.len()
    );

    // Re-runs, all at once, straight to OpenBao.
    std::thread::scope(|s| {
        for (i, dir) in dirs.iter().enumerate() {
            let args = register_args(&bao, c, &format!("n{i}"), dir.path());
            s.spawn(move || run_v(&args).unwrap_or_else(|e| panic!("re-run of n{i}: {e}")));
        }
    });
    let mut kids = registry_is_whole(&bao, c, &dirs);
    assert_eq!(kids.len(), 20, "one record per node");
    for (i, dir) in dirs.iter().enumerate() {
        let cfg = software(dir.path());
        let (s, _) = signer::open(&cfg, KeyPolicy::MustExist).unwrap();
        Chain::load(dir.path(), s.public_key()).unwrap_or_else(|e| panic!("n{i}: {e}"));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let seed_kid = d.kids().into_iter().find(|k| !kids.contains(k));
    kids.extend(seed_kid);
    kids.sort();
    loop {
        let mut served = d.kids();
        served.sort();
        if served == kids {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "JWKS {served:?} != registry {kids:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mount = format!("jss-{c}");
    for (i, dir) in dirs.iter().enumerate() {
        let node = format!("n{i}");
        login(&bao, &mount, &mint(dir.path(), &claims(c, &node)))
            .unwrap_or_else(|e| panic!("{node}: {e}"));
    }
}
