use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::cache::Timing;
use super::*;

const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn pod(uid: &str, id: Option<&str>, state: &str) -> String {
    let cid = id
        .map(|i| format!(r#","containerID":"containerd://{i}""#))
        .unwrap_or_default();
    format!(
        r#"{{"metadata":{{"name":"p-{uid}","namespace":"ns","uid":"{uid}","managedFields":[{{"x":1}}]}},
           "spec":{{"containers":[{{"name":"app","image":"img:1","env":[]}}],"serviceAccountName":"sa","nodeName":"n"}},
           "status":{{"containerStatuses":[{{"name":"app","state":{{"{state}":{{}}}},"imageID":"img@sha256:{ID}"{cid}}}]}}}}"#
    )
}

fn list(pods: &[String]) -> PodList {
    PodList::parse(format!(r#"{{"kind":"PodList","items":[{}]}}"#, pods.join(",")).as_bytes())
        .unwrap()
}

fn q(uid: Option<&str>) -> PodQuery {
    PodQuery {
        pod_uid: uid.map(String::from),
        container_id: ID.into(),
    }
}

#[test]
fn parse_rules() {
    assert!(PodList::parse(b"{}").is_err());
    assert!(PodList::parse(b"[]").is_err());
    assert!(PodList::parse(br#"{"items":{}}"#).is_err());
    assert!(PodList::parse(b"{not json").is_err());
    assert!(PodList::parse(br#"{"items":"x"}"#).is_err());
    assert!(PodList::parse(br#"{"items":[null}"#).is_err());
    assert_eq!(PodList::parse(br#"{"items":null}"#).unwrap().pods.len(), 0);
    let l = PodList::parse(
        br#"{"items":[{"metadata":{"name":"x","namespace":"n"}},{"metadata":{"uid":"u","name":"y","namespace":"n"}}]}"#,
    )
    .unwrap();
    assert_eq!((l.pods.len(), l.skipped), (1, 1));
}

/// `null` and `{}` next to real pods, as seen in the field (DataDog's
/// kubelet client filters them: DataDog/datadog-agent#3817, fixture
/// `podlist_null_pod.json`), and other items that are not pods.
#[test]
fn items_that_are_not_pods_are_skipped_and_counted() {
    let body = include_bytes!("../../../tests/fixtures/kubelet/null-items.json");
    let l = PodList::parse(body).unwrap();
    assert_eq!((l.pods.len(), l.skipped), (1, 9));
    let p = &l.pods[0];
    assert_eq!(
        (p.namespace.as_str(), p.name.as_str()),
        ("shop", "web-7d4b9c-x2k8p")
    );
    assert!(p.statuses[0].running());
    assert_eq!(
        p.statuses[0].digests.repo_digest.as_deref(),
        Some("sha256:0d17b565c37bcbd895e9d92315a05c1c3c9a29f762b011a10c54a66cd53c9b31")
    );
    // Without the items that are not pod objects the one-pass parse takes
    // it (the others need the item-by-item pass): the same pods either way.
    let mut v: serde_json::Value = serde_json::from_slice(body).unwrap();
    let items = v["items"].as_array_mut().unwrap();
    items.retain(|i| i.is_null() || (i.is_object() && !i["metadata"]["uid"].is_number()));
    assert_eq!(items.len(), 6);
    let one_pass = PodList::parse(&serde_json::to_vec(&v).unwrap()).unwrap();
    assert_eq!((one_pass.pods, one_pass.skipped), (l.pods, 5));
}

#[test]
fn lookup_rules() {
    let l = list(&[pod("a", Some(ID), "running"), pod("b", None, "waiting")]);
    let Outcome::Found(m) = l.lookup(&q(None), 7) else {
        panic!()
    };
    assert_eq!(
        (
            m.pod.uid.as_str(),
            m.container_name.as_str(),
            m.list_version
        ),
        ("a", "app", 7)
    );
    assert!(matches!(l.lookup(&q(Some("a")), 1), Outcome::Found(_)));
    assert!(matches!(
        l.lookup(&q(Some("b")), 1),
        Outcome::Denied(LookupError::PodMismatch { .. })
    ));
    let l = list(&[pod("a", Some(ID), "terminated")]);
    assert!(matches!(
        l.lookup(&q(None), 1),
        Outcome::Denied(LookupError::NotRunning {
            state: "terminated",
            ..
        })
    ));
    let l = list(&[pod("a", Some(ID), "running"), pod("b", Some(ID), "running")]);
    assert!(matches!(
        l.lookup(&q(None), 1),
        Outcome::Denied(LookupError::Duplicate { .. })
    ));
    let l = list(&[pod("b", None, "waiting")]);
    assert!(matches!(l.lookup(&q(None), 1), Outcome::Miss));
}

/// Serves pre-set answers, one per fetch, slowly, counting fetches.
struct Scripted {
    answers: std::sync::Mutex<Vec<Result<PodList, KubeletError>>>,
    calls: Arc<AtomicU64>,
}

impl FetchPods for Scripted {
    fn fetch(&self) -> BoxFuture<'_, Result<PodList, KubeletError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut a = self.answers.lock().unwrap();
            if a.len() > 1 {
                a.remove(0)
            } else {
                match &a[0] {
                    Ok(l) => Ok(l.clone()),
                    Err(_) => Err(KubeletError::Status {
                        url: "x".into(),
                        status: 500,
                    }),
                }
            }
        })
    }
}

fn timing(window_ms: u64) -> Timing {
    Timing {
        retry_window: Duration::from_millis(window_ms),
        retry_interval: Duration::from_millis(20),
        max_list_age: Duration::ZERO,
        fetch_timeout: Duration::from_secs(2),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_fetch_for_many_callers() {
    let calls = Arc::new(AtomicU64::new(0));
    let src = Arc::new(SharedPodList::new(
        Scripted {
            answers: vec![Ok(list(&[pod("a", Some(ID), "running")]))].into(),
            calls: calls.clone(),
        },
        timing(1_000),
    ));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let s = src.clone();
        tasks.push(tokio::spawn(async move {
            s.find(&q(Some("a"))).await.map(|m| m.pod.uid.clone())
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), "a");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "50 concurrent callers share one fetch"
    );
    assert_eq!(src.fetches(), 1);
}

/// Records the thread each fetch runs on.
struct WhereFetched(Arc<std::sync::Mutex<Vec<std::thread::ThreadId>>>);

impl FetchPods for WhereFetched {
    fn fetch(&self) -> BoxFuture<'_, Result<PodList, KubeletError>> {
        Box::pin(async move {
            self.0.lock().unwrap().push(std::thread::current().id());
            Ok(list(&[pod("a", Some(ID), "running")]))
        })
    }
}

#[tokio::test]
async fn a_fetch_runs_on_the_lists_runtime_not_the_callers() {
    let threads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let src = Arc::new(SharedPodList::new(
        WhereFetched(Arc::clone(&threads)),
        timing(2_000),
    ));
    let s = Arc::clone(&src);
    // The caller on a runtime of its own, as on a SPIFFE worker thread.
    let caller = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(s.find(&q(Some("a"))))
            .map(|m| m.pod.uid.clone())
    });
    while !caller.is_finished() {
        tokio::time::sleep(Duration::from_millis(5)).await; // lets this runtime fetch
    }
    assert_eq!(caller.join().unwrap().unwrap(), "a");
    assert_eq!(*threads.lock().unwrap(), vec![std::thread::current().id()]);
}

#[tokio::test]
async fn miss_waits_for_a_newer_list() {
    let calls = Arc::new(AtomicU64::new(0));
    let empty = list(&[pod("b", None, "waiting")]);
    let src = SharedPodList::new(
        Scripted {
            answers: vec![
                Ok(empty.clone()),
                Ok(empty),
                Ok(list(&[pod("a", Some(ID), "running")])),
            ]
            .into(),
            calls: calls.clone(),
        },
        timing(2_000),
    );
    let m = src.find(&q(None)).await.unwrap();
    assert_eq!((m.pod.uid.as_str(), m.list_version), ("a", 3));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn gives_up_after_the_window() {
    let src = SharedPodList::new(
        Scripted {
            answers: vec![Ok(list(&[]))].into(),
            calls: Arc::new(AtomicU64::new(0)),
        },
        timing(300),
    );
    let t = std::time::Instant::now();
    let e = src.find(&q(Some("a"))).await.unwrap_err();
    assert_eq!(e.code(), "pod_not_found");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(
        matches!(e, LookupError::NotFound { lists, .. } if lists >= 3),
        "{e}"
    );
    let src = SharedPodList::new(
        Scripted {
            answers: vec![Err(KubeletError::Status {
                url: "x".into(),
                status: 500,
            })]
            .into(),
            calls: Arc::new(AtomicU64::new(0)),
        },
        timing(200),
    );
    let e = src.find(&q(None)).await.unwrap_err();
    assert_eq!(e.code(), "kubelet_bad_status");
    assert!(src.stats().fetch_errors >= 2);
}

/// A refusal that asking again cannot change says so and names whose fault
/// it is; it never tells the caller to retry.
#[test]
fn permanent_refusals_do_not_suggest_a_retry() {
    let permanent = [
        LookupError::NotRunning {
            namespace: "ns".into(),
            pod: "p".into(),
            container: "app".into(),
            state: "terminated",
        },
        LookupError::Duplicate {
            container_id: ID.into(),
            pods: vec!["ns/a (1)".into(), "ns/b (2)".into()],
        },
        LookupError::PodMismatch {
            container_id: ID.into(),
            cgroup_pod: "1".into(),
            kubelet_pod: "ns/b (2)".into(),
        },
        LookupError::Kubelet(Arc::new(KubeletError::Malformed {
            url: "https://node:10250/pods".into(),
            source: PodList::parse(b"[]").unwrap_err(),
        })),
    ];
    for e in permanent {
        let m = e.to_string().to_lowercase();
        assert!(!m.contains("retry") && !m.contains("again"), "{m}");
    }
    let waiting = LookupError::NotRunning {
        namespace: "ns".into(),
        pod: "p".into(),
        container: "app".into(),
        state: "waiting",
    };
    assert!(
        waiting
            .to_string()
            .contains("once it reports the container running")
    );
}
