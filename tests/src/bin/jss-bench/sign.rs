//! Raw ES256 signing: software signer, TPM signer on swtpm, and `openssl speed`.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use std::sync::atomic::Ordering;

use jss::signer::{self, KeyPolicy, PcrSelection, Signer, SignerConfig, SignerKind};
use jss_tests::swtpm::Swtpm;
use jss_tests::tpm_proxy::{TPM2_CC_SIGN, TpmProxy};

use crate::Figures;

/// The fastest published TPM2_Sign of a real TPM (ST33), added by the proxy.
const SLOW_SIGN: Duration = Duration::from_millis(35);

fn rate(s: &dyn Signer, dur: Duration) -> anyhow::Result<f64> {
    let msg = b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJiZW5jaCJ9";
    // warm up (connection, session, caches)
    for _ in 0..10 {
        s.sign(msg).context("sign (warm-up)")?;
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < dur {
        s.sign(msg).context("sign")?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// TPM commands per signature once warm, counted by a proxy with no added
/// latency in front of `tpm`.
fn commands_per_sign(tpm: &Swtpm, pcrs: PcrSelection) -> anyhow::Result<f64> {
    let proxy = TpmProxy::start(tpm.port(), Duration::ZERO, &[TPM2_CC_SIGN])
        .context("start the TPM proxy")?;
    let (s, _dir) = open(SignerKind::Tpm, &proxy.tcti(), pcrs)?;
    s.sign(b"warm").context("sign (warm-up)")?;
    let before = proxy.counters.commands.load(Ordering::Relaxed);
    for _ in 0..50 {
        s.sign(b"count").context("sign")?;
    }
    Ok((proxy.counters.commands.load(Ordering::Relaxed) - before) as f64 / 50.0)
}

/// `openssl speed -seconds N ecdsap256` sign/s on one core.
fn openssl_rate(seconds: u64) -> anyhow::Result<f64> {
    let out = Command::new("openssl")
        .args(["speed", "-seconds", &seconds.to_string(), "ecdsap256"])
        .output()
        .context("run openssl speed (install openssl)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "256 bits ecdsa (nistp256)   0.0000s   0.0001s  29000.1  10000.2"
    let rate = text
        .lines()
        .find(|l| l.contains("ecdsa (nistp256)"))
        .and_then(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.get(cols.len().checked_sub(2)?)?.parse().ok()
        });
    match rate {
        Some(r) => Ok(r),
        None => bail!(
            "cannot parse openssl speed output ({}):\n{text}",
            out.status
        ),
    }
}

fn open(
    kind: SignerKind,
    tcti: &str,
    pcrs: PcrSelection,
) -> anyhow::Result<(std::sync::Arc<dyn Signer>, tempfile::TempDir)> {
    let dir = tempfile::tempdir().context("create a state directory")?;
    let cfg = SignerConfig {
        kind,
        tcti: tcti.into(),
        state_dir: dir.path().to_path_buf(),
        pcrs: Some(pcrs),
    };
    let (signer, _) = signer::open(&cfg, KeyPolicy::CreateIfMissing)
        .with_context(|| format!("open a {kind:?} signer"))?;
    Ok((signer, dir))
}

pub fn run(seconds: u64) -> anyhow::Result<Figures> {
    let dur = Duration::from_secs(seconds);
    let (sw, _d1) = open(SignerKind::Software, "", PcrSelection::none())?;
    let software = rate(sw.as_ref(), dur)?;
    let tpm = Swtpm::start();
    // One TPM-held key at a time: swtpm has three object slots.
    let tpm_rate = {
        let (hw, _d2) = open(SignerKind::Tpm, &tpm.tcti(), PcrSelection::none())?;
        rate(hw.as_ref(), dur)?
    };
    let pcr_rate = {
        let (bound, _d3) = open(SignerKind::Tpm, &tpm.tcti(), PcrSelection::secure_boot())?;
        rate(bound.as_ref(), dur)?
    };
    // As on the fastest real TPMs: 35 ms added to every TPM2_Sign (PolicyPCR
    // keeps swtpm's speed), bound and unbound in turn.
    let (slow_unbound, slow_bound) = {
        let proxy = TpmProxy::start(tpm.port(), SLOW_SIGN, &[TPM2_CC_SIGN])
            .context("start the slow-TPM proxy")?;
        let unbound = {
            let (s, _d) = open(SignerKind::Tpm, &proxy.tcti(), PcrSelection::none())?;
            rate(s.as_ref(), dur)?
        };
        let (s, _d) = open(SignerKind::Tpm, &proxy.tcti(), PcrSelection::secure_boot())?;
        (unbound, rate(s.as_ref(), dur)?)
    };
    let unbound_cmds = commands_per_sign(&tpm, PcrSelection::none())?;
    let pcr_cmds = commands_per_sign(&tpm, PcrSelection::secure_boot())?;
    let openssl = openssl_rate(seconds)?;
    println!("== raw ES256 signing ({seconds} s each, one thread) ==");
    println!(
        "software signer (aws-lc-rs) : {software:>10.0} signs/s  ({:.1} us/sign)",
        1e6 / software
    );
    println!(
        "TPM signer (swtpm)          : {tpm_rate:>10.0} signs/s  ({:.2} ms/sign)",
        1e3 / tpm_rate
    );
    println!(
        "TPM signer, PCR 7 policy    : {pcr_rate:>10.0} signs/s  ({:.2} ms/sign)",
        1e3 / pcr_rate
    );
    println!("openssl speed ecdsap256     : {openssl:>10.0} signs/s  (reference)");
    println!("ratio software / openssl    : {:>10.2}", software / openssl);
    println!(
        "ratio PCR-bound / unbound   : {:>10.2}  (target >= 0.6 on swtpm)",
        pcr_rate / tpm_rate
    );
    println!(
        "policy session's cost       : {:>10.2} ms/sign (PolicyPCR round trip, and tpm2-tss's session HMACs and hashes)",
        1e3 / pcr_rate - 1e3 / tpm_rate
    );
    println!(
        "TPM commands per signature  : {unbound_cmds:>10.2} unbound, {pcr_cmds:.2} PCR-bound (target: at most one more)"
    );
    println!(
        "with {} ms per TPM2_Sign    : {slow_unbound:>10.1} signs/s unbound, {slow_bound:.1} PCR-bound, ratio {:.3}",
        SLOW_SIGN.as_millis(),
        slow_bound / slow_unbound
    );
    Ok(Figures::from([
        ("sign.software_per_s".into(), software),
        ("sign.tpm_per_s".into(), tpm_rate),
        ("sign.tpm_pcr7_per_s".into(), pcr_rate),
        ("sign.tpm_pcr7_over_unbound".into(), pcr_rate / tpm_rate),
        (
            "sign.tpm_pcr7_extra_ms".into(),
            1e3 / pcr_rate - 1e3 / tpm_rate,
        ),
        ("sign.tpm35ms_per_s".into(), slow_unbound),
        ("sign.tpm35ms_pcr7_per_s".into(), slow_bound),
        (
            "sign.tpm35ms_pcr7_over_unbound".into(),
            slow_bound / slow_unbound,
        ),
        ("sign.tpm_commands_per_sign".into(), unbound_cmds),
        ("sign.tpm_pcr7_commands_per_sign".into(), pcr_cmds),
        ("sign.openssl_per_s".into(), openssl),
        ("sign.software_over_openssl".into(), software / openssl),
    ]))
}
