//! Vault identity entities (README, "Vault identity entities"): what the
//! mapped `jti` costs a login, and entity count and OpenBao RSS after 1,000
//! simulated rollouts with and without `jss-bootstrap cluster prune`; login
//! latency and memory as entities accumulate.
//!
//! Logins are simulated: tokens with a rollout's claims, signed by a node
//! key registered with the mount (`jss-bootstrap node register`), posted to
//! `auth/<mount>/login` over one keep-alive connection.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, ensure};
use jss::chain::Chain;
use jss::signer::{self, KeyPolicy, SignerConfig, SignerKind};
use jss::token::TokenEncoder;
use jss_tests::bao::{Bao, ROOT_TOKEN};
use jss_tests::daemon::bin;
use serde_json::{Value, json};

use crate::Figures;
use crate::http::Conn;

const CLUSTER: &str = "bench";
const MOUNT: &str = "jss-bench";
const ROLLOUTS: usize = 1000;
/// Rollouts whose workloads are still running (their claim sets in use).
const IN_USE: usize = 20;
/// A prune runs after every this many rollouts.
const PRUNE_EVERY: usize = 100;

pub fn run() -> anyhow::Result<Figures> {
    let mut f = Figures::new();
    println!("\n== Vault identity entities ==");

    // What recording each login costs: the same workload logging in again,
    // with the role mapping `jti` and without.
    let mut c = Cluster::start("1h")?;
    let n = 400;
    for (label, with_jti) in [("jti", true), ("no_jti", false)] {
        if !with_jti {
            c.drop_jti_mapping()?;
        }
        c.login(0)?; // the entity exists; what follows are re-logins
        let p50 = relogin_p50(&c, n)?;
        println!("re-login, role maps {label:<6}: p50 {p50:.3} ms over {n}");
        f.insert(format!("entities.relogin.{label}.p50_ms"), p50);
    }
    drop(c);

    // Rollouts: the claim sets in use stay IN_USE; history grows. The
    // reference makes as many logins, all by the claim sets in use.
    let reference = Cluster::start("1s")?;
    for r in 0..ROLLOUTS {
        reference.login(r % IN_USE)?;
    }
    record(&mut f, &reference, "in_use_only")?;
    drop(reference);

    for prune in [false, true] {
        let c = Cluster::start("1s")?;
        let t = Instant::now();
        for r in 0..ROLLOUTS {
            c.login(r)?;
            if prune && (r + 1) % PRUNE_EVERY == 0 {
                // The token max TTL is 1 s: an age of 2 s is allowed. The
                // running workloads log in again just before the prune.
                std::thread::sleep(Duration::from_millis(2500));
                for active in r + 1 - IN_USE..=r {
                    c.login(active)?;
                }
                c.prune("2s")?;
            }
        }
        println!("({:.0} s)", t.elapsed().as_secs_f64());
        record(&mut f, &c, if prune { "pruned" } else { "unpruned" })?;
    }

    // Login latency as entities accumulate, at the counts named in
    // JSS_BENCH_ENTITY_STEPS (default 0,10000,100000).
    let steps: Vec<usize> = std::env::var("JSS_BENCH_ENTITY_STEPS")
        .unwrap_or_else(|_| "0,10000,100000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let c = Cluster::start("1s")?;
    let mut made = 1;
    c.login(0)?;
    for step in steps {
        if made < step {
            let t = Instant::now();
            c.fill(made, step, 4)?;
            println!(
                "({} logins in {:.0} s)",
                step - made,
                t.elapsed().as_secs_f64()
            );
            made = step;
        }
        let p50 = relogin_p50(&c, 200)?;
        let (rss, heap) = c.memory_mib()?;
        println!(
            "{:>6} entities: re-login p50 {p50:.3} ms, OpenBao RSS {rss:.1} MiB, heap {heap:.1} MiB",
            c.entities()?
        );
        f.insert(format!("entities.at_{step}.relogin_p50_ms"), p50);
        f.insert(format!("entities.at_{step}.rss_mib"), rss);
        f.insert(format!("entities.at_{step}.heap_mib"), heap);
    }
    Ok(f)
}

/// Median of `n` logins by the workload of rollout 0, in ms.
fn relogin_p50(c: &Cluster, n: usize) -> anyhow::Result<f64> {
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        c.login(0)?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    Ok(lat[n / 2])
}

/// Entity count, OpenBao's RSS and live heap after `ROLLOUTS` rollouts.
fn record(f: &mut Figures, c: &Cluster, label: &str) -> anyhow::Result<()> {
    let (count, (rss, heap)) = (c.entities()?, c.memory_mib()?);
    println!(
        "{ROLLOUTS} rollouts, {label:<11}: {count:>5} entities, OpenBao RSS {rss:.1} MiB, heap {heap:.1} MiB"
    );
    f.insert(format!("entities.{label}.count"), count as f64);
    f.insert(format!("entities.{label}.rss_mib"), rss);
    f.insert(format!("entities.{label}.heap_mib"), heap);
    Ok(())
}

/// An OpenBao dev server set up by `jss-bootstrap cluster init`, with one
/// registered software node key.
struct Cluster {
    bao: Bao,
    dir: tempfile::TempDir,
    conn: std::sync::Mutex<Conn<TcpStream>>,
    encoder: TokenEncoder,
    signer: std::sync::Arc<dyn jss::signer::Signer>,
}

impl Cluster {
    fn start(token_ttl: &str) -> anyhow::Result<Self> {
        let bao = Bao::start();
        let dir = tempfile::tempdir().context("create a state directory")?;
        let state = dir.path().join("state");
        let state_s = state.display().to_string();
        bootstrap(
            &bao,
            &[
                "cluster",
                "init",
                "--cluster",
                CLUSTER,
                "--region",
                "eu-de",
                "--token-ttl",
                token_ttl,
            ],
        )?;
        bootstrap(
            &bao,
            &[
                "node",
                "register",
                "--signer",
                "software",
                "--state-dir",
                &state_s,
                "--cluster",
                CLUSTER,
                "--region",
                "eu-de",
                "--node",
                "n1",
            ],
        )?;
        let cfg = SignerConfig {
            kind: SignerKind::Software,
            tcti: String::new(),
            state_dir: state.clone(),
            pcrs: None,
        };
        let (signer, _) = signer::open(&cfg, KeyPolicy::MustExist).context("open the node key")?;
        let chain = Chain::load(&state, signer.public_key()).context("load the node chain")?;
        let encoder = TokenEncoder::new(signer.kid(), Some(chain.x5c()))
            .context("build the token encoder")?;
        let addr = bao.addr().trim_start_matches("http://").to_string();
        let stream =
            TcpStream::connect(&addr).with_context(|| format!("connect to OpenBao at {addr}"))?;
        Ok(Self {
            bao,
            dir,
            conn: std::sync::Mutex::new(Conn::new(stream)),
            encoder,
            signer,
        })
    }

    /// A login by the workload of rollout `r` (its own image, so its own `sub`).
    fn login(&self, r: usize) -> anyhow::Result<()> {
        let req = self.login_request(r)?;
        let mut conn = self
            .conn
            .lock()
            .map_err(|_| anyhow::anyhow!("login connection poisoned"))?;
        login_on(&mut conn, &req)
    }

    /// The login request of rollout `r`'s workload: a fresh token, a
    /// complete HTTP/1.1 request.
    fn login_request(&self, r: usize) -> anyhow::Result<Vec<u8>> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let names = format!("registry.example.com/web:{r}");
        let images = jss::claims::images_hash(&[names.as_str()]);
        let image = format!("sha256:{}", jss_tests::pods::hex_of(&r.to_string(), 64));
        let mut jti = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut jti);
        let claims = json!({
            "iss": format!("jss://{CLUSTER}"),
            "sub": format!("eu-de/{CLUSTER}/shop/web/{images}/{image}"),
            "aud": "vault", "iat": now, "nbf": now, "exp": now + 60,
            "jti": hex::encode(jti),
            "cluster-name": CLUSTER, "cluster-region": "eu-de",
            "machineid": "0123456789abcdef0123456789abcdef", "node": "n1",
            "namespace": "shop", "pod": format!("web-{r}-0"), "pod-uid": format!("uid-{r}"),
            "service-account": "web", "container": "web",
            "images-names": names, "images": images, "image": image,
        });
        let jwt = self
            .encoder
            .encode(self.signer.as_ref(), &claims)
            .context("sign a token")?;
        let body = json!({"role": "jss", "jwt": jwt}).to_string();
        Ok(format!(
            "POST /v1/auth/{MOUNT}/login HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host(),
            body.len()
        )
        .into_bytes())
    }

    fn host(&self) -> String {
        self.bao.addr().trim_start_matches("http://").to_string()
    }

    /// Logins of rollouts `from..to`, `workers` connections at once: the
    /// entity counts of the accumulation steps are reached in minutes, not
    /// hours (OpenBao serialises entity creation, but the round trips and
    /// the signing overlap).
    fn fill(&self, from: usize, to: usize, workers: usize) -> anyhow::Result<()> {
        let next = std::sync::atomic::AtomicUsize::new(from);
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..workers)
                .map(|_| {
                    s.spawn(|| -> anyhow::Result<()> {
                        let stream =
                            TcpStream::connect(self.host()).context("connect to OpenBao")?;
                        let mut conn = Conn::new(stream);
                        loop {
                            let r = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if r >= to {
                                return Ok(());
                            }
                            login_on(&mut conn, &self.login_request(r)?)?;
                        }
                    })
                })
                .collect();
            hs.into_iter().try_for_each(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("login worker panicked"))?
            })
        })?;
        // The kept-alive connection sat idle for the whole fill, longer
        // than OpenBao keeps an idle connection open: a new one.
        let stream = TcpStream::connect(self.host()).context("connect to OpenBao")?;
        *self
            .conn
            .lock()
            .map_err(|_| anyhow::anyhow!("login connection poisoned"))? = Conn::new(stream);
        Ok(())
    }

    /// The role as `cluster init` wrote it, less the `jti` mapping.
    fn drop_jti_mapping(&mut self) -> anyhow::Result<()> {
        let path = format!("auth/{MOUNT}/role/jss");
        let mut role: Value = serde_json::from_str(&self.bao.ok(&["read", "-format=json", &path]))
            .context("read the role")?;
        let mut data = role["data"].take();
        if let Some(m) = data["claim_mappings"].as_object_mut() {
            m.remove("jti");
        }
        let file = self.dir.path().join("role.json");
        std::fs::write(&file, data.to_string()).context("write role.json")?;
        self.bao
            .ok(&["write", &path, &format!("@{}", file.display())]);
        Ok(())
    }

    fn prune(&self, age: &str) -> anyhow::Result<()> {
        bootstrap(
            &self.bao,
            &[
                "cluster",
                "prune",
                "--cluster",
                CLUSTER,
                "--older-than",
                age,
                "--rate",
                "2000",
            ],
        )
        .map(|_| ())
    }

    fn entities(&self) -> anyhow::Result<usize> {
        let o = self
            .bao
            .run(ROOT_TOKEN, &["list", "-format=json", "identity/entity/id"]);
        if !o.status.success() {
            return Ok(0);
        }
        let keys: Vec<String> =
            serde_json::from_slice(&o.stdout).context("parse the entity list")?;
        Ok(keys.len())
    }

    /// OpenBao's live heap right after a garbage collection (`HeapAlloc`
    /// of `sys/pprof/heap?debug=1&gc=1`) and its resident memory (VmRSS
    /// from /proc), in MiB. Go hands freed memory back to the system lazily:
    /// RSS keeps what the heap once needed.
    fn memory_mib(&self) -> anyhow::Result<(f64, f64)> {
        // HTTP/1.0: the profile comes whole, not chunked, up to the close.
        let addr = self.bao.addr();
        let mut stream = TcpStream::connect(addr.trim_start_matches("http://"))
            .context("connect to OpenBao for its heap profile")?;
        let req = format!(
            "GET /v1/sys/pprof/heap?debug=1&gc=1 HTTP/1.0\r\nX-Vault-Token: {ROOT_TOKEN}\r\n\r\n"
        );
        stream
            .write_all(req.as_bytes())
            .context("ask OpenBao for its heap profile")?;
        let mut body = Vec::new();
        stream
            .read_to_end(&mut body)
            .context("read OpenBao's heap profile")?;
        ensure!(
            body.split(|b| *b == b' ').nth(1) == Some(b"200"),
            "sys/pprof/heap: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        );
        let heap: f64 = String::from_utf8_lossy(&body)
            .lines()
            .find_map(|l| l.strip_prefix("# HeapAlloc = "))
            .and_then(|v| v.trim().parse().ok())
            .context("no HeapAlloc in OpenBao's heap profile")?;
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.bao.pid()))
            .context("read OpenBao's /proc status")?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("VmRSS missing from OpenBao's /proc status")?;
        Ok((kib / 1024.0, heap / 1048576.0))
    }
}

/// Runs the `jss-bootstrap` binary built next to this one against `bao`.
fn bootstrap(bao: &Bao, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(bin("jss-bootstrap"))
        .args(args)
        .env("VAULT_ADDR", bao.addr())
        .env("VAULT_TOKEN", ROOT_TOKEN)
        .env_remove("BAO_ADDR")
        .env_remove("BAO_TOKEN")
        .output()
        .context("run jss-bootstrap")?;
    ensure!(
        out.status.success(),
        "jss-bootstrap {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Sends a login request on `conn`; an error unless OpenBao answers 200.
fn login_on(conn: &mut Conn<TcpStream>, req: &[u8]) -> anyhow::Result<()> {
    let (status, answer) = conn.exchange(req).context("log in to OpenBao")?;
    ensure!(
        status == 200,
        "login refused ({status}): {}",
        String::from_utf8_lossy(&answer)
    );
    Ok(())
}
