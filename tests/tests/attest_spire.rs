#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report
//! Conformance with SPIRE's k8s workload attestor, using its fixtures and the
//! expectations transcribed in `../shared/corpus/spire/` (Apache-2.0).
//!
//! Where we differ on purpose:
//! * We follow SPIRE's new container locator, not its legacy regex: a path
//!   with a container ID and no pod UID still names a container, found in the
//!   kubelet's list by ID (the legacy regex said "no match").
//! * A static pod's 32-hex config hash is kept as such (SPIRE drops it); the
//!   lookup is by container ID either way.
//! * A `/proc/<pid>` that does not exist is "process gone" (401) for us, not
//!   "no container": the pid is our peer, and a vanished peer gets nothing.
//! * SPIRE does not search `ephemeralContainerStatuses`; we do, so a debug
//!   container gets its own identity (covered by attest_kubelet.rs).
//! * CRI-O's `crio-conmon-<id>.scope` is not a container for us.
//! * The container must be running: SPIRE attests a terminated init
//!   container from a stale list; we refuse it (container_not_running).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use jss::attest::cgroup::{self, PodRef};
use jss::attest::{Workload, mountinfo, proc_stat};
use jss::kubelet::{PodList, PodQuery, PodSource, StaticPods};
use serde_json::Value;

fn corpus() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/spire");
    assert!(
        p.join("cgroup_cases.json").exists(),
        "the SPIRE corpus is missing at {}",
        p.display()
    );
    p
}

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(corpus().join("cgroup_cases.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["cases"].as_array().unwrap().clone()
}

fn str_or_empty(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// (pod UID or "", container ID or "") as SPIRE's locator reports them.
fn as_spire(m: Option<cgroup::PathMatch>) -> (String, String) {
    match m {
        None => (String::new(), String::new()),
        Some(m) => (
            m.pod
                .as_ref()
                .and_then(PodRef::uid)
                .unwrap_or_default()
                .to_string(),
            m.container_id,
        ),
    }
}

#[test]
fn single_paths() {
    let mut n = 0;
    for c in cases().iter().filter(|c| c["kind"] == "single_cgroup_path") {
        let input = c["input"].as_str().unwrap();
        let want = c
            .get("new_locator_on_same_path__derived_not_upstream")
            .unwrap_or(&c["expected"]);
        let got = as_spire(cgroup::match_path(input));
        assert_eq!(
            got,
            (
                str_or_empty(&want["pod_uid"]),
                str_or_empty(&want["container_id"])
            ),
            "{}",
            c["id"]
        );
        n += 1;
    }
    assert_eq!(n, 15);
}

#[test]
fn lists_of_paths() {
    let mut n = 0;
    for c in cases()
        .iter()
        .filter(|c| c["kind"] == "list_of_cgroup_group_paths")
    {
        let paths: Vec<&str> = c["input"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        let want = &c["expected"];
        match cgroup::combine(paths) {
            Ok(m) if want["ok"] == true => assert_eq!(
                as_spire(m),
                (
                    str_or_empty(&want["pod_uid"]),
                    str_or_empty(&want["container_id"])
                ),
                "{}",
                c["id"]
            ),
            // Same wording as SPIRE, so operators can search for it.
            Err(e) if want["ok"] == false => {
                assert_eq!(e.to_string(), want["message"], "{}", c["id"])
            }
            other => panic!("{}: got {other:?}, want {want}", c["id"]),
        }
        n += 1;
    }
    assert_eq!(n, 7);
}

/// SPIRE's selectors that our workload also carries.
fn selectors(w: &Workload) -> BTreeSet<String> {
    let mut s = BTreeSet::from([
        format!("k8s:ns:{}", w.namespace),
        format!("k8s:sa:{}", w.service_account),
        format!("k8s:pod-name:{}", w.pod_name),
        format!("k8s:pod-uid:{}", w.pod_uid),
        format!("k8s:node-name:{}", w.node_name),
        format!("k8s:container-name:{}", w.container_name),
        format!("k8s:container-image:{}", w.image),
    ]);
    for (k, v) in w.labels.iter() {
        s.insert(format!("k8s:pod-label:{k}:{v}"));
    }
    for o in w.owner_references.iter() {
        s.insert(format!("k8s:pod-owner:{}:{}", o.kind, o.name));
        s.insert(format!("k8s:pod-owner-uid:{}:{}", o.kind, o.uid));
    }
    for i in &w.images {
        s.insert(format!("k8s:pod-image:{}", i.image));
    }
    s
}

#[tokio::test]
async fn proc_cgroup_files_against_pod_lists() {
    let root = corpus();
    let sel: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("expected_selectors.json")).unwrap(),
    )
    .unwrap();
    let mut n = 0;
    for c in cases()
        .iter()
        .filter(|c| c["kind"] == "proc_pid_cgroup_file")
    {
        let id = &c["id"];
        let want = &c["expected"];
        let text = std::fs::read_to_string(root.join(c["input_file"].as_str().unwrap())).unwrap();
        let m = cgroup::parse_file(&text).unwrap();
        let (pod_uid, cid) = as_spire(m);
        assert_eq!(
            (pod_uid.clone(), cid.clone()),
            (
                str_or_empty(&want["pod_uid"]),
                str_or_empty(&want["container_id"])
            ),
            "{id}"
        );
        n += 1;
        let Some(list) = want["paired_pod_list"].as_str() else {
            assert!(
                cid.is_empty(),
                "{id}: a process outside pods names no container"
            );
            continue;
        };
        let pods = StaticPods::from_file(&root.join(list)).unwrap();
        let q = PodQuery {
            pod_uid: Some(pod_uid).filter(|u| !u.is_empty()),
            container_id: cid,
        };
        let found = pods.find(&q).await;
        if let Some(err) = want.get("error") {
            let e = found.unwrap_err();
            assert_eq!(e.code(), "duplicate_container_id", "{id}: {err}");
            continue;
        }
        if list.ends_with("pod_list.json")
            && q.pod_uid.as_deref() == Some("d488cae9-b2a0-11e7-9350-020968147796")
        {
            // Differs on purpose: the fixture's init container has terminated
            // and SPIRE still attests it; a process calling us must be running.
            let e = found.unwrap_err();
            assert_eq!(e.code(), "container_not_running", "{id}: {e}");
            assert!(
                e.to_string().contains("kube-system/kube-flannel-ds-gp1g9"),
                "{e}"
            );
            continue;
        }
        let w = Workload::from_match(found.unwrap_or_else(|e| panic!("{id}: {e}")));
        let expected: BTreeSet<String> = sel["selector_sets"]
            [want["expected_selectors"].as_str().unwrap()]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
        for s in selectors(&w) {
            assert!(
                expected.contains(&s),
                "{id}: {s} not among SPIRE's selectors"
            );
        }
        // The content digest is what SPIRE shows as the second container-image selector.
        let digest = w.image_digest.clone().unwrap();
        assert!(
            expected
                .iter()
                .any(|s| s.starts_with("k8s:container-image:") && s.ends_with(&digest)),
            "{id}: digest {digest}"
        );
    }
    assert_eq!(n, 8);
}

#[tokio::test]
async fn a_container_still_starting_is_not_found() {
    let root = corpus().join("agent/plugin/workloadattestor/k8s/testdata");
    let pods = StaticPods::from_file(&root.join("pod_list_not_running.json")).unwrap();
    let q = PodQuery {
        pod_uid: Some("2c48913c-b29f-11e7-9350-020968147796".into()),
        container_id: "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961".into(),
    };
    assert_eq!(pods.find(&q).await.unwrap_err().code(), "pod_not_found");
}

#[test]
fn containerinfo_trees() {
    let mut n = 0;
    for c in cases()
        .iter()
        .filter(|c| c["kind"] == "root_dir_with_proc_123")
    {
        let id = &c["id"];
        let want = &c["expected"];
        let dir = corpus()
            .join(c["input_dir"].as_str().unwrap())
            .join("proc/123");
        if !dir.exists() {
            // Differs on purpose: our peer's /proc entry vanished → process gone.
            let e = jss::attest::locate(&corpus().join("no-such-dir"), 123).unwrap_err();
            assert_eq!(e.code(), "process_gone", "{id}");
            n += 1;
            continue;
        }
        // Same order as locate(): the cgroup file, then (only if it names no
        // container) the mount table. Some trees have no cgroup file.
        let cg = std::fs::read_to_string(dir.join("cgroup")).unwrap_or_default();
        let got = match cgroup::parse_file(&cg) {
            Ok(Some(m)) => Ok(Some(m)),
            Ok(None) => {
                mountinfo::parse_file(&std::fs::read_to_string(dir.join("mountinfo")).unwrap())
            }
            Err(e) => Err(e),
        };
        if dir.join("cgroup").exists() {
            // The product path agrees.
            let loc = jss::attest::locate(dir.parent().unwrap(), 123);
            assert_eq!(
                loc.as_ref().ok().map(|l| l.container_id.clone()),
                got.as_ref()
                    .ok()
                    .and_then(|m| m.as_ref().map(|m| m.container_id.clone())),
                "{id}"
            );
        }
        match want.get("error_contains") {
            Some(msg) => {
                let e = got.unwrap_err().to_string();
                assert!(e.contains(msg.as_str().unwrap()), "{id}: {e}");
            }
            None => {
                let (pod, cid) = as_spire(got.unwrap());
                assert_eq!(cid, str_or_empty(&want["container_id"]), "{id}");
                if c["mode"] == "pod+container" {
                    assert_eq!(pod, str_or_empty(&want["pod_uid"]), "{id}");
                }
            }
        }
        n += 1;
    }
    assert_eq!(n, 23);
}

#[test]
fn cgroup_line_parser() {
    let d = corpus().join("derived/cgroups_parser");
    let simple = std::fs::read_to_string(d.join("simple.txt")).unwrap();
    let lines: Vec<_> = simple
        .lines()
        .map(|l| cgroup::split_line(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 11);
    assert!(lines.contains(&(
        "1",
        "name=systemd",
        "/user.slice/user-1000.slice/session-2.scope"
    )));
    let un = std::fs::read_to_string(d.join("unified_no_trailing_newline.txt")).unwrap();
    let last = un
        .lines()
        .map(|l| cgroup::split_line(l).unwrap())
        .next_back()
        .unwrap();
    assert_eq!((last.0, last.1), ("0", ""));
    let bad = std::fs::read_to_string(d.join("bad_format.txt")).unwrap();
    let e = cgroup::parse_file(&bad).unwrap_err().to_string();
    assert!(
        e.contains("invalid cgroup entry") && e.contains("11:hugetlb"),
        "{e}"
    );
}

#[test]
fn kubelet_pod_list_parser() {
    let d = corpus().join("derived/kubelet_podlist_parse");
    let parse = |f: &str| PodList::parse(&std::fs::read(d.join(f)).unwrap());
    // SPIRE keeps these UID-only pods; JSS also skips a pod without a name
    // or namespace (an empty namespace claim would be shared by every such
    // pod), so here every item is skipped and counted.
    let two = parse("two_pods.json").unwrap();
    assert_eq!((two.pods.len(), two.skipped), (0, 2));
    assert!(parse("items_null.json").unwrap().pods.is_empty());
    let skipped = parse("pod_without_uid.json").unwrap();
    assert_eq!((skipped.pods.len(), skipped.skipped), (0, 2));
    for bad in [
        "malformed.json",
        "non_object.json",
        "no_items.json",
        "items_not_array.json",
    ] {
        let e = parse(bad).unwrap_err().to_string();
        assert!(
            e.starts_with("unable to parse kubelet response"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn proc_stat_parser() {
    let d = corpus().join("derived/proc_stat");
    let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap();
    assert_eq!(proc_stat::start_time(&read("simple_comm.stat")), Ok(24));
    assert_eq!(proc_stat::start_time(&read("comm_with_space.stat")), Ok(24));
    let e = proc_stat::start_time(&read("comm_not_parenthesized.stat")).unwrap_err();
    assert!(e.contains("not parenthesized"), "{e}");
}
