//! A pod named by the kubelet to the CSI plugin (NodePublishVolume's pod
//! info), checked against the daemon's own pod list before a pod-level
//! token is signed for it (README.md, "Token mode").

use std::sync::Arc;
use std::time::Duration;

use super::{LookupError, Outcome, Pod, PodList};

/// The pod a pod-level token is asked for: the volume context's
/// `csi.storage.k8s.io/pod.namespace`, `pod.name`, `pod.uid` and
/// `serviceAccount.name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub service_account: String,
}

/// Phases after which no container of the pod runs again.
const FINISHED: &[&str] = &["Succeeded", "Failed"];

impl PodList {
    /// The pod `r` names: listed with that UID, the same namespace, name and
    /// service account, and not finished. Any other phase passes: the
    /// kubelet mounts volumes before it starts containers, so at the first
    /// NodePublishVolume the pod is `Pending` with no container running,
    /// and a terminating pod's containers still run through their grace
    /// period. A UID not listed is a miss (a newer list may have it).
    pub(crate) fn lookup_pod(&self, r: &PodRef) -> Outcome<Arc<Pod>> {
        let Some(pod) = self.pods.iter().find(|p| p.uid == r.uid) else {
            return Outcome::Miss;
        };
        if pod.namespace != r.namespace
            || pod.name != r.name
            || pod.service_account != r.service_account
        {
            return Outcome::Denied(LookupError::PodNotAsNamed {
                pod_uid: r.uid.clone(),
                asked: r.describe(),
                kubelet: format!(
                    "{}/{} (service account {})",
                    pod.namespace, pod.name, pod.service_account
                ),
            });
        }
        if FINISHED.contains(&pod.phase.as_str()) {
            return Outcome::Denied(LookupError::PodFinished {
                namespace: pod.namespace.clone(),
                pod: pod.name.clone(),
                phase: pod.phase.clone(),
            });
        }
        Outcome::Found(Arc::clone(pod))
    }
}

impl PodRef {
    /// `namespace/name (service account sa)`, as messages name it.
    pub fn describe(&self) -> String {
        format!(
            "{}/{} (service account {})",
            self.namespace, self.name, self.service_account
        )
    }

    /// The refusal for a pod no list held within the retry window.
    pub(crate) fn not_listed(&self, waited: Duration, lists: u64) -> LookupError {
        LookupError::PodNotListed {
            pod: Box::new(self.clone()),
            waited,
            lists,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "5f0c1e2d-3b4a-4c5d-8e6f-7a8b9c0d1e2f";

    /// A pod as the kubelet lists it at the first NodePublishVolume
    /// (`Pending`, its container waiting) or later.
    fn list(phase: &str, state: &str) -> PodList {
        PodList::parse(
            format!(
                r#"{{"items":[{{"metadata":{{"name":"web-1","namespace":"shop","uid":"{UID}"}},
                  "spec":{{"serviceAccountName":"web","nodeName":"node-1","containers":[{{"name":"app","image":"app:1"}}]}},
                  "status":{{"phase":"{phase}","containerStatuses":[{{"name":"app","state":{{"{state}":{{}}}}}}]}}}}]}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    fn asked() -> PodRef {
        PodRef {
            namespace: "shop".into(),
            name: "web-1".into(),
            uid: UID.into(),
            service_account: "web".into(),
        }
    }

    #[test]
    fn a_listed_pod_that_has_not_finished_passes_even_before_its_containers_run() {
        for (phase, state) in [
            ("Pending", "waiting"),
            ("Running", "running"),
            ("Unknown", "running"),
            ("", "waiting"),
        ] {
            let Outcome::Found(p) = list(phase, state).lookup_pod(&asked()) else {
                panic!("{phase} refused")
            };
            assert_eq!(p.uid, UID);
        }
    }

    #[test]
    fn a_finished_pod_is_refused() {
        for phase in ["Succeeded", "Failed"] {
            assert!(matches!(
                list(phase, "terminated").lookup_pod(&asked()),
                Outcome::Denied(LookupError::PodFinished { .. })
            ));
        }
    }

    #[test]
    fn namespace_name_and_service_account_must_match_the_uid() {
        let l = list("Running", "running");
        let cases: [fn(&mut PodRef); 3] = [
            |r| r.namespace = "other".into(),
            |r| r.name = "web-2".into(),
            |r| r.service_account = "admin".into(),
        ];
        for change in cases {
            let mut r = asked();
            change(&mut r);
            let Outcome::Denied(e) = l.lookup_pod(&r) else {
                panic!("{r:?} passed")
            };
            assert!(matches!(e, LookupError::PodNotAsNamed { .. }), "{e}");
            assert!(
                e.to_string().contains("shop/web-1 (service account web)"),
                "{e}"
            );
        }
    }

    #[test]
    fn an_unlisted_uid_is_a_miss_and_says_which_pod() {
        let mut r = asked();
        r.uid = "00000000-0000-0000-0000-000000000000".into();
        assert!(matches!(
            list("Running", "running").lookup_pod(&r),
            Outcome::Miss
        ));
        let e = r.not_listed(Duration::from_secs(3), 4).to_string();
        assert!(e.contains("shop/web-1") && e.contains(&r.uid), "{e}");
    }
}
