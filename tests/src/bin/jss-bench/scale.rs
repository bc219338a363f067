//! Static keys against JWKS mode at growing cluster sizes, on a raft-backed
//! OpenBao on loopback (the 1 MiB storage entry limit of real deployments):
//! login p50/p99, registration throughput (20 concurrent `node register`),
//! JWKS size and serve rate. Each point has one real registration (the node
//! that logs in); the other nodes' records are written straight into the
//! registry with keys generated here. The logins of all points are taken
//! in one window, one login per point in turn, so the points compare fairly
//! on a shared machine. `JSS_BENCH_SCALE=1,100,1000` picks
//! the sizes (default 1, 100, 1000, 5000, 20000), `JSS_BENCH_SCALE_MODES`
//! the modes.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, ensure};
use jss::chain::Chain;
use jss::signer::{self, KeyPolicy, NodePublicKey, SignerConfig, SignerKind};
use jss::token::TokenEncoder;
use jss_tests::bao::{Bao, ROOT_TOKEN};
use jss_tests::daemon::bin;
use jss_tests::discovery::Discovery;

use crate::{Figures, percentile};

const REGION: &str = "eu-de";

fn sizes() -> Vec<usize> {
    std::env::var("JSS_BENCH_SCALE")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 100, 1000, 5000, 20000])
}

/// `JSS_BENCH_SCALE_MODES=jwks` runs one mode only (default both).
fn modes() -> Vec<&'static str> {
    let want = std::env::var("JSS_BENCH_SCALE_MODES").unwrap_or_default();
    ["static", "jwks"]
        .into_iter()
        .filter(|m| want.is_empty() || want.split(',').any(|w| w.trim() == *m))
        .collect()
}

/// One HTTP/1.1 request to OpenBao; (status, body).
fn http(
    port: u16,
    method: &str,
    path: &str,
    token: &str,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).context("connect to OpenBao")?;
    write!(
        s,
        "{method} /v1/{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Vault-Token: {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let code = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

fn port_of(bao: &Bao) -> u16 {
    bao.addr()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

fn jss_bootstrap(bao: &Bao, args: &[&str]) -> anyhow::Result<String> {
    let o = Command::new(bin("jss-bootstrap"))
        .args(args)
        .args(["--vault-addr", &bao.addr(), "--token-file"])
        .arg(bao.root_token_file())
        .output()
        .context("run jss-bootstrap")?;
    ensure!(
        o.status.success(),
        "jss-bootstrap {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn register(bao: &Bao, cluster: &str, node: &str, dir: &Path) -> anyhow::Result<()> {
    let d = dir.display().to_string();
    jss_bootstrap(
        bao,
        &[
            "node",
            "register",
            "--signer",
            "software",
            "--state-dir",
            &d,
            "--cluster",
            cluster,
            "--region",
            REGION,
            "--node",
            node,
            "--ttl",
            "1h",
        ],
    )
    .map(|_| ())
}

/// Writes `n` registry records with fresh keys, 8 writers at a time.
fn fill_registry(port: u16, mount: &str, n: usize) -> anyhow::Result<()> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|w| {
                s.spawn(move || -> anyhow::Result<()> {
                    for i in (w..n).step_by(8) {
                        let k = NodePublicKey::new(
                            p256::SecretKey::random(&mut rand_core::OsRng).public_key(),
                        );
                        let rec = serde_json::json!({"data": {
                            "node": format!("synthetic-{i}"), "kid": k.kid, "jwk": k.jwk(),
                            "certificate": "", "registered": now, "renewed": now, "not_after": 0,
                        }});
                        let path = format!("secret/data/jss/registry/{mount}/synthetic-{i}");
                        let (code, body) = http(port, "POST", &path, ROOT_TOKEN, &rec.to_string())?;
                        ensure!(code == 200, "write {path}: {code} {body}");
                    }
                    Ok(())
                })
            })
            .collect();
        hs.into_iter()
            .try_for_each(|h| h.join().map_err(|_| anyhow!("writer panicked"))?)
    })
}

fn claims(cluster: &str) -> serde_json::Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let images = jss::claims::images_hash(&["img"]);
    serde_json::json!({
        "iss": format!("jss://{cluster}"),
        "sub": format!("{REGION}/{cluster}/ns/default/{images}/sha256:00"),
        "aud": "vault", "iat": now, "nbf": now, "exp": now + 60,
        "jti": format!("bench-{now}-{}", rand_core::RngCore::next_u64(&mut rand_core::OsRng)),
        "cluster-name": cluster, "cluster-region": REGION, "machineid": "0",
        "node": "real", "namespace": "ns", "pod": "p", "pod-uid": "u",
        "service-account": "default", "container": "c", "images-names": "img",
        "images": images, "image": "sha256:00",
    })
}

/// A node that logs in: its mount and a token encoder for its key.
struct LoginNode {
    cluster: String,
    signer: std::sync::Arc<dyn signer::Signer>,
    enc: TokenEncoder,
}

impl LoginNode {
    fn open(cluster: &str, dir: &Path) -> anyhow::Result<Self> {
        let cfg = SignerConfig {
            kind: SignerKind::Software,
            tcti: String::new(),
            state_dir: dir.to_path_buf(),
            pcrs: None,
        };
        let (signer, _) = signer::open(&cfg, KeyPolicy::MustExist)?;
        let chain = Chain::load(dir, signer.public_key())?;
        let enc = TokenEncoder::new(signer.kid(), Some(chain.x5c()))?;
        Ok(Self {
            cluster: cluster.to_string(),
            signer,
            enc,
        })
    }

    /// One login; its latency in microseconds.
    fn login(&self, port: u16) -> anyhow::Result<u32> {
        let jwt = self
            .enc
            .encode(self.signer.as_ref(), &claims(&self.cluster))?;
        let body = serde_json::json!({"role": "jss", "jwt": jwt}).to_string();
        let mount = format!("jss-{}", self.cluster);
        let t = Instant::now();
        let (code, answer) = http(port, "POST", &format!("auth/{mount}/login"), "", &body)?;
        ensure!(code == 200, "login at {mount}: {code} {answer}");
        Ok(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX))
    }
}

/// Login latencies of every node, interleaved (one login per node in turn)
/// for `seconds`, so that each point sees the same moments of this shared
/// machine and the ratios between points are fair; sorted, per node.
fn interleaved_logins(
    port: u16,
    nodes: &[LoginNode],
    seconds: u64,
) -> anyhow::Result<Vec<Vec<u32>>> {
    let mut lat = vec![Vec::new(); nodes.len()];
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end || lat.iter().any(|l| l.len() < 20) {
        for (node, l) in nodes.iter().zip(lat.iter_mut()) {
            l.push(node.login(port)?);
        }
    }
    lat.iter_mut().for_each(|l| l.sort_unstable());
    Ok(lat)
}

/// 20 `node register` processes at once: nodes/s.
fn registration_rate(bao: &Bao, cluster: &str) -> anyhow::Result<f64> {
    let dirs: Vec<tempfile::TempDir> = (0..20)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let t = Instant::now();
    std::thread::scope(|s| {
        let hs: Vec<_> = dirs
            .iter()
            .enumerate()
            .map(|(i, d)| s.spawn(move || register(bao, cluster, &format!("burst-{i}"), d.path())))
            .collect();
        hs.into_iter().try_for_each(|h| {
            h.join()
                .map_err(|_| anyhow!("registration thread panicked"))?
        })
    })?;
    Ok(20.0 / t.elapsed().as_secs_f64())
}

pub fn run(seconds: u64) -> anyhow::Result<Figures> {
    let bao = Bao::start_raft();
    let port = port_of(&bao);
    let mut f = Figures::new();
    let mut points: Vec<(&str, usize)> = Vec::new();
    let mut nodes: Vec<LoginNode> = Vec::new();
    let mut keep = Vec::new();
    println!(
        "\n== static keys vs JWKS mode, raft-backed OpenBao ({seconds} s of logins per point) =="
    );
    for n in sizes() {
        for mode in modes() {
            let cluster = format!("{}{n}", &mode[..1]);
            let key = |what: &str| format!("scale.{mode}.n{n}.{what}");
            let t = Instant::now();
            jss_bootstrap(
                &bao,
                &["cluster", "init", "--cluster", &cluster, "--region", REGION],
            )?;
            let real = tempfile::tempdir()?;
            fill_registry(port, &format!("jss-{cluster}"), n.saturating_sub(1))?;
            let mut _discovery = None;
            let setup = if mode == "static" {
                // Folds the registry into jwt_validation_pubkeys (one entry);
                // the real node registers last, so its key is the last one
                // OpenBao tries: the cost of the newest node's logins.
                jss_bootstrap(
                    &bao,
                    &["cluster", "init", "--cluster", &cluster, "--region", REGION],
                )
                .and_then(|_| register(&bao, &cluster, "real", real.path()))
            } else {
                register(&bao, &cluster, "real", real.path())?;
                let d = Discovery::start(&bao, &cluster, 5, &["--max-rate", "1000000"]);
                let r = jss_bootstrap(
                    &bao,
                    &[
                        "cluster",
                        "init",
                        "--cluster",
                        &cluster,
                        "--region",
                        REGION,
                        "--keys",
                        "jwks",
                        "--jwks-url",
                        &d.url(),
                        "--jwks-ca-pem",
                        &d.ca_file().display().to_string(),
                        "--jwks-wait",
                        "300",
                    ],
                )
                .map(|_| ());
                if r.is_ok() {
                    let body = d.get("/keys").map_err(|e| anyhow!(e))?.body;
                    f.insert(key("jwks_bytes"), body.len() as f64);
                    let end = Instant::now() + Duration::from_secs(2);
                    let mut served = 0u32;
                    let t = Instant::now();
                    while Instant::now() < end {
                        d.get("/keys").map_err(|e| anyhow!(e))?;
                        served += 1;
                    }
                    f.insert(
                        key("jwks_serves_per_s"),
                        f64::from(served) / t.elapsed().as_secs_f64(),
                    );
                }
                _discovery = Some(d);
                r
            };
            if let Err(e) = setup {
                let first = e.to_string().lines().next().unwrap_or_default().to_string();
                println!("{mode:>6} {n:>6} nodes: setup failed: {first}");
                f.insert(key("failed"), 1.0);
                continue;
            }
            let setup_s = t.elapsed().as_secs_f64();
            println!(
                "{mode:>6} {n:>6} nodes: set up in {setup_s:.0} s; JWKS {} bytes, {} serves/s",
                f.get(&key("jwks_bytes"))
                    .map_or("-".into(), |b| format!("{b:.0}")),
                f.get(&key("jwks_serves_per_s"))
                    .map_or("-".into(), |r| format!("{r:.0}")),
            );
            points.push((mode, n));
            nodes.push(LoginNode::open(&cluster, real.path())?);
            keep.push((real, _discovery));
        }
    }
    // Every point's logins in one window, interleaved: a login at 5,000
    // nodes is compared with one at 1 node taken a moment apart.
    let window = seconds.saturating_mul(points.len() as u64);
    println!("logins: every point in turn for {window} s");
    let lat = interleaved_logins(port, &nodes, window)?;
    let mut reference: Option<f64> = None;
    for ((mode, n), lat) in points.iter().zip(&lat) {
        let key = |what: &str| format!("scale.{mode}.n{n}.{what}");
        let (p50, p99) = (percentile(lat, 0.5), percentile(lat, 0.99));
        f.insert(key("login_p50_ms"), p50);
        f.insert(key("login_p99_ms"), p99);
        // The ratio to the smallest JWKS point of this run (goal at 5,000
        // nodes: 1.5 at most).
        let ratio = if *mode == "jwks" {
            let r = p50 / *reference.get_or_insert(p50);
            f.insert(key("login_p50_vs_smallest"), r);
            format!("; {r:.2} x the smallest jwks point")
        } else {
            String::new()
        };
        println!(
            "{mode:>6} {n:>6} nodes: login p50 {p50:.2} ms p99 {p99:.2} ms ({} logins){ratio}",
            lat.len()
        );
    }
    // Registrations last: in static mode they would put keys after the
    // measured node's.
    for ((mode, n), node) in points.iter().zip(&nodes) {
        let reg = registration_rate(&bao, &node.cluster)?;
        f.insert(format!("scale.{mode}.n{n}.register_nodes_per_s"), reg);
        println!("{mode:>6} {n:>6} nodes: 20 concurrent registrations {reg:.1} nodes/s");
    }
    drop(keep);
    Ok(f)
}
