use super::*;

const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const ID2: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
const UID: &str = "00000000-1111-2222-3333-444444444444";

fn m(path: &str) -> Option<(Option<String>, String)> {
    match_path(path).map(|m| (m.pod.map(|p| p.to_string()), m.container_id))
}

#[test]
fn runtimes_and_drivers() {
    let u = Some(UID.to_string());
    for (path, pod) in [
        (format!("/kubepods/besteffort/pod{UID}/{ID}"), &u),
        (format!("/kubepods/pod{UID}/{ID}"), &u),
        (
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope",
                UID.replace('-', "_")
            ),
            &u,
        ),
        (
            format!(
                "/kubepods-besteffort-pod{}.slice:cri-containerd:{ID}",
                UID.replace('-', "_")
            ),
            &u,
        ),
        (
            format!(
                "/kubepods.slice/kubepods-pod{}.slice/crio-{ID}.scope",
                UID.replace('-', "_")
            ),
            &u,
        ),
        (
            format!("/kubepods.slice/kubepods-pod{UID}.slice/docker-{ID}.scope"),
            &u,
        ),
        (
            format!(
                "/../../kubepods-besteffort-pod{}.slice/cri-containerd-{ID}.scope",
                UID.replace('-', "_")
            ),
            &u,
        ),
        (
            format!("/docker/{ID2}/kubepods/besteffort/pod{UID}/{ID}"),
            &u,
        ),
        (format!("/../crio-{ID}.scope"), &None),
        (format!("/docker/{ID}"), &None),
    ] {
        assert_eq!(m(&path), Some((pod.clone(), ID.to_string())), "{path}");
    }
}

#[test]
fn word_boundaries() {
    // `_` is a word character: an ID glued to it is not an ID.
    assert_eq!(m(&format!("/x_{ID}")), None);
    assert_eq!(m(&format!("/{ID}0")), None);
    assert_eq!(m(&format!("/{}", ID.to_uppercase())), None);
    // `pod` glued to a word is not a pod segment.
    assert_eq!(m(&format!("/xpod{UID}/{ID}")), Some((None, ID.into())));
    // No container, no match.
    assert_eq!(m(&format!("/kubepods/pod{UID}")), None);
    assert_eq!(m("/user.slice/user-0.slice/session-1.scope"), None);
}

#[test]
fn static_pod_config_hash() {
    let got = match_path(&format!(
        "/kubepods/burstable/pod2732ca68f6358eba7703fb6f82a25c94/{ID}"
    ));
    assert_eq!(
        got,
        Some(PathMatch {
            pod: Some(PodRef::ConfigHash(
                "2732ca68f6358eba7703fb6f82a25c94".into()
            )),
            container_id: ID.into()
        })
    );
    assert_eq!(
        got.and_then(|g| g.pod)
            .and_then(|p| p.uid().map(String::from)),
        None
    );
}

#[test]
fn conmon_is_not_the_container() {
    assert_eq!(
        m(&format!(
            "/kubepods.slice/kubepods-pod{UID}.slice/crio-conmon-{ID}.scope"
        )),
        None
    );
}

#[test]
fn lines_combine() {
    let with_pod = format!("/kubepods/pod{UID}/{ID}");
    let without = format!("/docker/{ID2}/system.slice/containerd.service");
    let got = combine([without.as_str(), with_pod.as_str()])
        .unwrap()
        .unwrap();
    assert_eq!(
        (got.pod, got.container_id.as_str()),
        (Some(PodRef::Uid(UID.into())), ID)
    );
    let got = combine([with_pod.as_str(), without.as_str()])
        .unwrap()
        .unwrap();
    assert_eq!(got.container_id, ID);

    let other_ctr = format!("/kubepods/pod{UID}/{ID2}");
    assert!(matches!(
        combine([with_pod.as_str(), other_ctr.as_str()]),
        Err(CgroupError::ContainerConflict(..))
    ));
    let other_pod = format!("/kubepods/pod11111111-1111-2222-3333-444444444444/{ID}");
    assert!(matches!(
        combine([with_pod.as_str(), other_pod.as_str()]),
        Err(CgroupError::PodConflict(..))
    ));
    // Two pod-less lines that disagree are a conflict too.
    let a = format!("/docker/{ID}");
    let b = format!("/docker/{ID2}");
    assert!(combine([a.as_str(), b.as_str()]).is_err());
    assert_eq!(combine([]).unwrap(), None);
}

#[test]
fn file_format() {
    let text = format!("12:pids:/kubepods/pod{UID}/{ID}\n1:name=systemd:/\n0::/\n");
    assert_eq!(parse_file(&text).unwrap().unwrap().container_id, ID);
    assert!(matches!(
        parse_file("11:hugetlb\n"),
        Err(CgroupError::BadLine { fields: 2, .. })
    ));
    assert_eq!(summary(&text), format!("/kubepods/pod{UID}/{ID}"));
    assert_eq!(summary("0::/\n"), "/");
}
