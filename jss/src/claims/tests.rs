use super::*;
use crate::attest::{ContainerImage, Workload};

/// A pod-shaped workload for unit tests elsewhere in the crate too.
pub(crate) fn workload() -> Workload {
    Workload {
        namespace: "trusted-identity".into(),
        pod_name: "myubuntu-6756d665bc-gc5wz".into(),
        pod_uid: "2c48913c-b29f-11e7-9350-020968147796".into(),
        service_account: "default".into(),
        node_name: "node-1".into(),
        container_name: "app".into(),
        container_id: "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961".into(),
        image: "nginx:1.27".into(),
        image_digest: Some(format!("sha256:{}", "ab".repeat(32))),
        image_id: Some(format!("sha256:{}", "cd".repeat(32))),
        images: vec![
            ContainerImage {
                name: "init".into(),
                image: "busybox:1".into(),
                digest: None,
                image_id: None,
                kind: ContainerKind::Init,
                command: Default::default(),
                args: Default::default(),
            },
            ContainerImage {
                name: "app".into(),
                image: "nginx:1.27".into(),
                digest: Some(format!("sha256:{}", "ab".repeat(32))),
                image_id: Some(format!("sha256:{}", "cd".repeat(32))),
                kind: ContainerKind::Container,
                command: Default::default(),
                args: Default::default(),
            },
            ContainerImage {
                name: "side".into(),
                image: "envoy:1".into(),
                digest: None,
                image_id: None,
                kind: ContainerKind::Container,
                command: Default::default(),
                args: Default::default(),
            },
        ],
        labels: Default::default(),
        owner_references: Default::default(),
    }
}

pub(crate) fn builder() -> ClaimsBuilder {
    ClaimsBuilder::new(
        NodeFacts {
            issuer: "jss://EUCluster".into(),
            cluster_name: "EUCluster".into(),
            cluster_region: "eu-de".into(),
            node_name: "node-1".into(),
            machine_id: "0123456789abcdef0123456789abcdef".into(),
        },
        SubTemplate::default(),
        60,
    )
}

#[test]
fn claims_follow_the_token_format() {
    let (b, w) = (builder(), workload());
    let c = b.build(&w, "vault", 1_700_000_000).unwrap();
    assert_eq!(c.exp - c.iat, 60);
    assert_eq!(c.nbf, c.iat);
    assert_eq!(c.images_names, "nginx:1.27,envoy:1,busybox:1");
    assert_eq!(
        c.images,
        images_hash(&["nginx:1.27", "envoy:1", "busybox:1"])
    );
    let (image, image_id) = (
        format!("sha256:{}", "ab".repeat(32)),
        format!("sha256:{}", "cd".repeat(32)),
    );
    assert_eq!(c.image, Some(image.as_str()));
    assert_eq!(c.image_id, Some(image_id.as_str()));
    assert_eq!(
        c.sub,
        format!(
            "eu-de/EUCluster/trusted-identity/default/{}/{image}/{image_id}",
            c.images
        )
    );
    let v = serde_json::to_value(&c).unwrap();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut expected: Vec<&str> = REGISTERED_CLAIMS
        .iter()
        .chain(WORKLOAD_CLAIMS)
        .copied()
        .collect();
    expected.sort_unstable();
    assert_eq!(keys, expected);
    for k in WORKLOAD_CLAIMS {
        assert!(
            v[k].is_string(),
            "{k} must be a string (Vault maps only strings)"
        );
    }
}

#[test]
fn jti_is_unique() {
    let b = builder();
    let w = workload();
    let a = b.build(&w, "vault", 1).unwrap();
    let c = b.build(&w, "vault", 1).unwrap();
    assert_ne!(a.jti, c.jti);
}

#[test]
fn unreported_digests_are_left_out_not_refused() {
    let b = builder();
    for (digest, id) in [(true, false), (false, true), (false, false)] {
        let mut w = workload();
        if !digest {
            w.image_digest = None;
        }
        if !id {
            w.image_id = None;
        }
        let c = b.build(&w, "vault", 1).unwrap();
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v.get("image").is_some(), digest, "{v}");
        assert_eq!(v.get("image-id").is_some(), id, "{v}");
    }
}

/// Vault keys entity aliases by `sub`: every claim a policy may template on
/// must change it, including a digest that is present for one workload and
/// absent for the other.
#[test]
fn sub_differs_for_every_templatable_claim_set() {
    let b = builder();
    let other = |x: &str| format!("sha256:{}", x.repeat(32));
    type Change = Box<dyn Fn(&mut Workload)>;
    let variants: Vec<(&str, Change)> = vec![
        ("base", Box::new(|_| {})),
        ("namespace", Box::new(|w| w.namespace = "other".into())),
        (
            "service-account",
            Box::new(|w| w.service_account = "sa2".into()),
        ),
        (
            "images",
            Box::new(|w| w.images[1].image = "nginx:1.28".into()),
        ),
        (
            "image",
            Box::new(move |w| w.image_digest = Some(other("01"))),
        ),
        ("no image", Box::new(|w| w.image_digest = None)),
        (
            "image-id",
            Box::new(move |w| w.image_id = Some(other("02"))),
        ),
        ("no image-id", Box::new(|w| w.image_id = None)),
        (
            "image and image-id swapped",
            Box::new(|w| std::mem::swap(&mut w.image_digest, &mut w.image_id)),
        ),
    ];
    let mut seen = std::collections::BTreeMap::new();
    for (name, change) in &variants {
        let mut w = workload();
        change(&mut w);
        let sub = b.build(&w, "vault", 1).unwrap().sub;
        if let Some(prev) = seen.insert(sub.clone(), *name) {
            panic!("{name} and {prev} share sub {sub}");
        }
    }
}

#[test]
fn sub_template_rules() {
    assert!(SubTemplate::parse("{namespace}/{images}").is_ok());
    assert!(matches!(
        SubTemplate::parse("{namespace}/{pod}/{images}"),
        Err(SubTemplateError::Unknown { .. })
    ));
    assert!(matches!(
        SubTemplate::parse("{namespace}/{images"),
        Err(SubTemplateError::Unclosed(_))
    ));
    assert!(matches!(
        SubTemplate::parse("{cluster-name}/{image}"),
        Err(SubTemplateError::MissingRequired(_))
    ));
}

#[test]
fn machine_id_is_validated() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("machine-id");
    std::fs::write(&p, "0123456789abcdef0123456789abcdef\n").unwrap();
    assert_eq!(
        read_machine_id(&p).unwrap(),
        "0123456789abcdef0123456789abcdef"
    );
    std::fs::write(&p, "\n").unwrap();
    assert!(read_machine_id(&p).is_err());
}

/// A pod-level token (the CSI plugin's token mode) names no container and
/// no image digest, keeps `images`, and its `sub` is no container's.
#[test]
fn pod_level_claims_name_no_container_and_have_their_own_sub() {
    let b = builder();
    let w = workload();
    let pod = b.build_as(&w, Scope::Pod, "vault", 1).unwrap();
    let v = serde_json::to_value(&pod).unwrap();
    for k in ["container", "image", "image-id"] {
        assert!(v.get(k).is_none(), "{k} in {v}");
    }
    let app = b.build(&w, "vault", 1).unwrap();
    assert_eq!(pod.images, app.images);
    assert_eq!(pod.images_names, app.images_names);
    assert!(pod.sub.ends_with(POD_SUB_SUFFIX), "{}", pod.sub);
    // A container with no digests renders the same template values.
    let mut bare = workload();
    (bare.image_digest, bare.image_id) = (None, None);
    let bare = b.build(&bare, "vault", 1).unwrap();
    assert_ne!(pod.sub, bare.sub);
    assert_eq!(pod.sub, format!("{}{POD_SUB_SUFFIX}", bare.sub));
    // Pod-level subs still differ by every templatable pod-level claim.
    let mut other = workload();
    other.service_account = "sa2".into();
    assert_ne!(
        b.build_as(&other, Scope::Pod, "vault", 1).unwrap().sub,
        pod.sub
    );
    // With `{container}` in the template, a pod-level token renders it empty.
    let with_container = ClaimsBuilder::new(
        b.facts().clone(),
        SubTemplate::parse("{namespace}/{images}/{container}").unwrap(),
        60,
    );
    assert_eq!(
        with_container
            .build_as(&w, Scope::Pod, "vault", 1)
            .unwrap()
            .sub,
        format!("trusted-identity/{}/{POD_SUB_SUFFIX}", pod.images)
    );
    assert!(matches!(
        SubTemplate::parse("{namespace}/{images}#pod"),
        Err(SubTemplateError::Hash(_))
    ));
}
