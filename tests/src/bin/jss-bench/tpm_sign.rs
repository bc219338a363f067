//! `tpm-sign`: how long this node's TPM takes per signature, through the
//! signer the daemon uses (README, "How to check a node's TPM").
//!
//! `jss-bench tpm-sign [--tcti device:/dev/tpmrm0] [--count 100] [--unbound]`
//!
//! Creates a throw-away P-256 key in the TPM (in a temporary state
//! directory; a transient object, nothing is left in the TPM), bound to
//! PCR 7 as `jss-bootstrap node register` binds the node key unless
//! `--unbound`, signs `--count` times one after the other and prints p50,
//! p99 and the mean in milliseconds, with what they mean for the node.

use std::time::Instant;

use anyhow::{Context as _, bail};

use jss::signer::{self, DEFAULT_TCTI, KeyPolicy, PcrSelection, SignerConfig, SignerKind};

use crate::{Figures, percentile};

pub fn run(args: &[String]) -> anyhow::Result<Figures> {
    let get = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
    };
    let tcti = get("--tcti").map_or(DEFAULT_TCTI, String::as_str);
    let count: usize = match get("--count") {
        Some(v) => v.parse().with_context(|| format!("--count {v:?}"))?,
        None => 100,
    };
    if count == 0 {
        bail!("--count must be at least 1");
    }
    let pcrs = if args.iter().any(|a| a == "--unbound") {
        PcrSelection::none()
    } else {
        PcrSelection::secure_boot()
    };
    let dir = tempfile::tempdir().context("create a temporary state directory")?;
    let cfg = SignerConfig {
        kind: SignerKind::Tpm,
        tcti: tcti.into(),
        state_dir: dir.path().to_path_buf(),
        pcrs: Some(pcrs.clone()),
    };
    let (s, _) = signer::open(&cfg, KeyPolicy::CreateIfMissing)
        .with_context(|| format!("create a test key in the TPM at {tcti}"))?;
    let msg = b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ0cG0tc2lnbiJ9";
    // The first signature starts the session (and, bound, the policy session).
    s.sign(msg).context("sign (warm-up)")?;
    let mut us: Vec<u32> = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        s.sign(msg).context("sign")?;
        us.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
    let mean_ms = us.iter().map(|&u| f64::from(u)).sum::<f64>() / count as f64 / 1e3;
    us.sort_unstable();
    let (p50, p99) = (percentile(&us, 0.5), percentile(&us, 0.99));
    let bound = if pcrs.is_empty() { "unbound" } else { "PCR 7" };
    println!("== TPM2_Sign at {tcti} ({bound} key, {count} signatures one after the other) ==");
    println!("p50 {p50:.2} ms   p99 {p99:.2} ms   mean {mean_ms:.2} ms");
    println!(
        "=> at most {:.0} workloads refreshing 60 s tokens; 110 pods starting at once hold tokens after {:.1} s",
        30_000.0 / mean_ms,
        110.0 * mean_ms / 1e3
    );
    Ok(Figures::from([
        ("tpm_sign.p50_ms".into(), p50),
        ("tpm_sign.p99_ms".into(), p99),
        ("tpm_sign.mean_ms".into(), mean_ms),
    ]))
}
