#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report
//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`, minimized
//! after the runs), the hand-made seeds (`fuzz/seeds/<target>/`) and the kept
//! crash inputs (`fuzz/regressions/<target>/`) through the very functions the
//! cargo-fuzz targets call (`fuzz/shared/targets.rs`): deterministic, no
//! nightly toolchain needed. A missing or empty corpus or seed directory is a
//! failure.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

#[path = "../../fuzz/shared/targets.rs"]
mod targets;

/// Wall-clock bound for one input (the slowest takes milliseconds; the HTTP
/// target's own timeouts run on a paused, virtual clock).
const INPUT_BOUND: Duration = Duration::from_secs(10);

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

/// Runs every corpus and regression input of `target`; returns how many ran.
fn replay(target: &str) -> usize {
    let mut inputs = Vec::new();
    for kind in ["corpus", "seeds"] {
        let dir = fuzz_dir().join(kind).join(target);
        let found = files(&dir);
        assert!(
            !found.is_empty(),
            "{} is empty: run the fuzzer and commit its corpus (fuzz/README.md)",
            dir.display()
        );
        inputs.extend(found);
    }
    let regressions = fuzz_dir().join("regressions").join(target);
    if regressions.exists() {
        inputs.extend(files(&regressions));
    }
    let mut failures = Vec::new();
    for path in &inputs {
        let data = std::fs::read(path).unwrap();
        // On a thread of its own, so an input that makes a parser spin is
        // reported as a failure instead of hanging the test run.
        let (tx, rx) = mpsc::channel();
        let name = target.to_string();
        std::thread::spawn(move || {
            let ok = catch_unwind(AssertUnwindSafe(|| targets::run(&name, &data))).is_ok();
            let _ = tx.send(ok);
        });
        match rx.recv_timeout(INPUT_BOUND) {
            Ok(true) => {}
            Ok(false) => failures.push(format!("{}: panicked", path.display())),
            Err(_) => {
                failures.push(format!(
                    "{}: still running after {INPUT_BOUND:?}",
                    path.display()
                ));
                break;
            }
        }
    }
    assert!(failures.is_empty(), "{target}: {failures:#?}");
    inputs.len()
}

#[test]
fn every_target_has_a_fuzzer_and_a_corpus() {
    let mut bins: Vec<String> = files(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    bins.sort();
    let mut listed: Vec<String> = targets::TARGETS.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(
        bins, listed,
        "fuzz/fuzz_targets/ and targets::TARGETS disagree"
    );
    for kind in ["corpus", "seeds"] {
        let mut dirs: Vec<String> = std::fs::read_dir(fuzz_dir().join(kind))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        dirs.sort();
        assert_eq!(dirs, listed, "fuzz/{kind}/ and targets::TARGETS disagree");
    }
}

fn seed(target: &str, name: &str) -> Vec<u8> {
    std::fs::read(fuzz_dir().join("seeds").join(target).join(name)).unwrap()
}

/// The seeds reach the success paths, so the fuzzers start past the parsers'
/// first refusals (and the harness really serves and checks).
#[test]
fn seeds_reach_the_success_paths() {
    let key = targets::node_key();
    for ok in [
        "p256-root.pem",
        "rsa-root.pem",
        "p384-root.pem",
        "ed25519-root.pem",
    ] {
        let pem = String::from_utf8(seed("chain", ok)).unwrap();
        let chain = jss::chain::Chain::from_pem(&pem, &key).unwrap();
        assert_eq!(chain.x5c().len(), 2, "{ok}");
    }
    for bad in ["leaf-only.pem", "wrong-issuer.pem"] {
        let pem = String::from_utf8(seed("chain", bad)).unwrap();
        assert!(jss::chain::Chain::from_pem(&pem, &key).is_err(), "{bad}");
    }

    let csr = String::from_utf8(seed("csr", "node.csr")).unwrap();
    let v = jss_bootstrap::csr::verify(&csr, "seed").unwrap();
    assert_eq!(
        v.identity.subject(),
        "CN=node-1,OU=demo-cluster,L=eu-de,O=JSS"
    );
    assert_eq!(v.key.kid, key.kid);
    for bad in ["csr-no-ou.csr", "csr-p384.csr", "a-certificate-not-csr.pem"] {
        let pem = String::from_utf8(seed("csr", bad)).unwrap();
        assert!(jss_bootstrap::csr::verify(&pem, "seed").is_err(), "{bad}");
    }

    let list =
        jss::kubelet::PodList::parse(&seed("podlist", "generated-three-kinds.json")).unwrap();
    assert_eq!((list.pods.len(), list.skipped), (3, 1));

    let answer = |name: &str| {
        String::from_utf8_lossy(&targets::http_exchange(&seed("http", name))).into_owned()
    };
    let post = answer("post-token");
    assert!(
        post.starts_with("HTTP/1.1 200 OK\r\n") && post.ends_with("vault"),
        "{post}"
    );
    let get = answer("get-token");
    assert!(
        get.starts_with("HTTP/1.1 200 OK\r\n") && get.ends_with("vault"),
        "{get}"
    );
    let chunked = answer("post-chunked");
    assert!(chunked.ends_with("vault"), "{chunked}");
    assert_eq!(answer("pipelined").matches("HTTP/1.1 200 OK").count(), 3);
    assert!(answer("post-too-large").starts_with("HTTP/1.1 413 "));
    assert!(answer("post-slow-body").starts_with("HTTP/1.1 408 "));
    assert!(answer("bad-method").starts_with("HTTP/1.1 405 "));

    use jss_injector::config::{Config, FileConfig, Overrides};
    use jss_injector::mutate::{Outcome, respond};
    let inject = Config::build(FileConfig::default(), Overrides::default())
        .unwrap()
        .inject;
    for (name, want) in [
        ("review-tsi-article-pod.json", Outcome::Patched),
        ("review-job-pod.json", Outcome::Patched),
        ("review-not-annotated.json", Outcome::Unchanged),
        ("review-update.json", Outcome::Ignored),
        ("review-refused-escape.json", Outcome::Refused),
    ] {
        let req = jss_injector::review::decode(&seed("admission", name)).unwrap();
        assert_eq!(respond(&req, &inject).0, want, "{name}");
    }
    let article = String::from_utf8(seed("admission", "annotation-tsi-article-pod.yaml")).unwrap();
    assert!(jss_injector::annotations::parse_items("tsi.secrets", &article).is_ok());
}

#[test]
fn replay_cgroup() {
    assert!(replay("cgroup") > 0);
}

#[test]
fn replay_proc_stat() {
    assert!(replay("proc_stat") > 0);
}

#[test]
fn replay_podlist() {
    assert!(replay("podlist") > 0);
}

#[test]
fn replay_http() {
    assert!(replay("http") > 0);
}

#[test]
fn replay_chain() {
    assert!(replay("chain") > 0);
}

#[test]
fn replay_csr() {
    assert!(replay("csr") > 0);
}

#[test]
fn replay_admission() {
    assert!(replay("admission") > 0);
}

/// The harness itself: a request that never ends must be cut off by the
/// header timeout, and `run` refuses an unknown target instead of skipping.
#[test]
fn harness_checks_what_it_claims() {
    targets::http(b"GET /healthz HTTP/1.1\r\nHost: x\r\n");
    targets::http(b"POST /v1/token HTTP/1.1\r\nContent-Length: 10\r\n\r\n{");
    assert!(catch_unwind(|| targets::run("no-such-target", b"")).is_err());
}
