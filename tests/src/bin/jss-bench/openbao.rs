//! What a user might run instead: OpenBao's own identity tokens
//! (`identity/oidc/token/<role>`) on loopback, at the same concurrency.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, ensure};

use jss_tests::bao::Bao;

use crate::http::Conn;
use crate::{CONCURRENCY, Figures, percentile};

pub fn run(seconds: u64) -> anyhow::Result<Figures> {
    let bao = Bao::start();
    bao.ok(&[
        "write",
        "identity/oidc/key/bench",
        "allowed_client_ids=*",
        "algorithm=ES256",
    ]);
    bao.ok(&["write", "identity/oidc/role/bench", "key=bench", "ttl=60"]);
    // The token must belong to an entity: log in through userpass.
    let policy = "path \"identity/oidc/token/bench\" { capabilities = [\"read\"] }";
    let dir = tempfile::tempdir().context("create a directory for the policy")?;
    let pfile = dir.path().join("p.hcl");
    std::fs::write(&pfile, policy).with_context(|| format!("write {}", pfile.display()))?;
    let pfile = pfile.display().to_string();
    bao.ok(&["policy", "write", "oidc-bench", &pfile]);
    bao.ok(&["auth", "enable", "userpass"]);
    bao.ok(&[
        "write",
        "auth/userpass/users/bench",
        "password=pw",
        "policies=oidc-bench",
    ]);
    let token = bao
        .ok(&[
            "write",
            "-field=token",
            "auth/userpass/login/bench",
            "password=pw",
        ])
        .trim()
        .to_string();
    let addr = bao.addr().trim_start_matches("http://").to_string();
    let request = format!(
        "GET /v1/identity/oidc/token/bench HTTP/1.1\r\nHost: {addr}\r\nX-Vault-Token: {token}\r\n\r\n"
    );
    println!("\n== OpenBao identity tokens ({seconds} s per point) ==");
    let mut f = Figures::new();
    for c in CONCURRENCY {
        let end = Instant::now() + Duration::from_secs(seconds);
        let lat: Vec<Vec<u32>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..c)
                .map(|_| {
                    let (addr, request) = (&addr, &request);
                    s.spawn(move || -> anyhow::Result<Vec<u32>> {
                        let stream = TcpStream::connect(addr)
                            .with_context(|| format!("connect to OpenBao at {addr}"))?;
                        let mut conn = Conn::new(stream);
                        let mut lat = Vec::new();
                        while Instant::now() < end {
                            let t = Instant::now();
                            let (status, body) = conn
                                .exchange(request.as_bytes())
                                .context("ask OpenBao for an identity token")?;
                            ensure!(
                                status == 200,
                                "OpenBao answered {status}: {}",
                                String::from_utf8_lossy(&body)
                            );
                            lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                        }
                        Ok(lat)
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| {
                    h.join()
                        .map_err(|_| anyhow!("an OpenBao client thread panicked"))?
                })
                .collect::<anyhow::Result<_>>()
        })?;
        let mut all: Vec<u32> = lat.into_iter().flatten().collect();
        all.sort_unstable();
        let rate = all.len() as f64 / seconds as f64;
        let (p50, p99) = (percentile(&all, 0.5), percentile(&all, 0.99));
        println!(
            "openbao {c:>3} clients: {rate:>9.0} tokens/s  p50 {p50:>7.3} ms  p99 {p99:>7.3} ms"
        );
        f.insert(format!("openbao.c{c}.tokens_per_s"), rate);
        f.insert(format!("openbao.c{c}.p50_ms"), p50);
        f.insert(format!("openbao.c{c}.p99_ms"), p99);
    }
    Ok(f)
}
