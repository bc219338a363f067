#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report
//! Cgroup parsing (and mount tables that must not count) against the project's own fixtures
//! (`tests/fixtures/attest/`), one file per runtime, driver and layout.

use std::path::{Path, PathBuf};

use jss::attest::cgroup::{self, CgroupError, PodRef};
use jss::attest::locate;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/attest")
}

fn s(v: &Value) -> Option<String> {
    v.as_str().map(String::from)
}

#[test]
fn every_cgroup_format() {
    let dir = fixtures().join("cgroup");
    let table: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let cases = table["cases"].as_object().unwrap();
    // Every fixture file has an expectation and every expectation a file.
    let files = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "txt")
        })
        .count();
    assert_eq!(files, cases.len());
    assert!(cases.len() >= 25);
    for (name, want) in cases {
        let text = std::fs::read_to_string(dir.join(format!("{name}.txt"))).unwrap();
        let got = cgroup::parse_file(&text);
        match s(&want["error"]) {
            Some(kind) => {
                let e = got.expect_err(name);
                let ok = matches!(
                    (kind.as_str(), &e),
                    ("container_conflict", CgroupError::ContainerConflict(..))
                        | ("pod_conflict", CgroupError::PodConflict(..))
                        | ("bad_line", CgroupError::BadLine { .. })
                );
                assert!(ok, "{name}: want {kind}, got {e}");
            }
            None => {
                let got = got.unwrap_or_else(|e| panic!("{name}: {e}"));
                let cid = got.as_ref().map(|m| m.container_id.clone());
                assert_eq!(cid, s(&want["container_id"]), "{name}: container");
                let pod = got.and_then(|m| m.pod);
                let (uid, hash) = match pod {
                    Some(PodRef::Uid(u)) => (Some(u), None),
                    Some(PodRef::ConfigHash(h)) => (None, Some(h)),
                    None => (None, None),
                };
                assert_eq!(uid, s(&want["pod_uid"]), "{name}: pod UID");
                assert_eq!(hash, s(&want["static_pod_hash"]), "{name}: static pod hash");
            }
        }
    }
}

#[test]
fn proc_trees_only_the_cgroup_file_names_a_workload() {
    let dir = fixtures().join("proc");
    let table: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let pid = table["pid"].as_i64().unwrap() as i32;
    for (name, want) in table["cases"].as_object().unwrap() {
        let root = dir.join(name);
        match s(&want["error"]) {
            Some(code) => {
                let e = locate(&root, pid).expect_err(name);
                assert_eq!(e.code(), code, "{name}: {e}");
                assert!(e.to_string().contains(&pid.to_string()), "{name}: {e}");
            }
            None => {
                let loc = locate(&root, pid).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(
                    Some(loc.container_id.clone()),
                    s(&want["container_id"]),
                    "{name}"
                );
                assert_eq!(
                    loc.pod_uid().map(String::from),
                    s(&want["pod_uid"]),
                    "{name}"
                );
            }
        }
    }
}

#[test]
fn not_in_pod_names_the_cgroup_and_gone_is_gone() {
    let root = fixtures().join("proc");
    let e = locate(&root.join("mountinfo-root-only"), 4242).unwrap_err();
    assert_eq!(e.code(), "not_in_pod");
    assert!(e.to_string().contains("cgroup /"), "{e}");
    let e = locate(&root.join("mountinfo-root-only"), 999_999).unwrap_err();
    assert_eq!(e.code(), "process_gone");
    assert_eq!(jss::server::Code::from(&e).status(), 401);
}

#[test]
fn peer_start_time_from_a_stat_with_parens_in_comm() {
    let root = fixtures().join("proc/cgroup-v1-pod");
    let p = jss::attest::PeerProcess::by_start_time(&root, 4242, 1000, 1000).unwrap();
    assert_eq!(p.start_time(), Some(987_654));
    let p = jss::attest::PeerProcess::from_proc(&root, 4242).unwrap();
    assert_eq!((p.uid, p.gid), (1000, 1000));
}
