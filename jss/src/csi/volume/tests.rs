use std::collections::HashMap;

use super::*;
use crate::csi::proto::volume_capability::{AccessMode as AccessModeMsg, BlockVolume, MountVolume};

/// The volume context the kubelet sends for an inline volume with
/// `podInfoOnMount: true`, plus `attrs`.
fn ctx(attrs: &[(&str, &str)]) -> HashMap<String, String> {
    let mut c: HashMap<String, String> = [
        (POD_NAME, "app-0"),
        (POD_NAMESPACE, "team-a"),
        (POD_UID, "0b7f3c52-64a4-4f9c-9a1e-1f0c3c1b2d3e"),
        (SERVICE_ACCOUNT, "app"),
        (EPHEMERAL, "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    c.extend(attrs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    c
}

#[test]
fn socket_is_the_default_mode_and_takes_no_token_attributes() {
    let v = VolumeRequest::parse(&ctx(&[])).unwrap();
    assert_eq!(v.mode, Mode::Socket);
    assert_eq!(v.pod.unwrap().service_account, "app");
    assert_eq!(
        VolumeRequest::parse(&ctx(&[(MODE, "socket")]))
            .unwrap()
            .mode,
        Mode::Socket
    );
    // Socket mode works without pod info (podInfoOnMount off).
    let bare = HashMap::from([(MODE.to_string(), "socket".to_string())]);
    assert_eq!(VolumeRequest::parse(&bare).unwrap().pod, None);
    for key in [AUDIENCE, FILE] {
        let e = VolumeRequest::parse(&ctx(&[(key, "x")])).unwrap_err();
        assert!(matches!(e, VolumeError::NotForSocket { .. }), "{e}");
        assert!(e.to_string().contains(key), "{e}");
    }
}

#[test]
fn token_mode_reads_audience_file_and_the_pod() {
    let v = VolumeRequest::parse(&ctx(&[(MODE, "token"), (AUDIENCE, "vault")])).unwrap();
    assert_eq!(v.mode, Mode::Token);
    assert_eq!(v.audience.as_deref(), Some("vault"));
    assert_eq!(v.file, DEFAULT_FILE);
    assert_eq!(
        v.pod,
        Some(PodInfo {
            name: "app-0".into(),
            namespace: "team-a".into(),
            uid: "0b7f3c52-64a4-4f9c-9a1e-1f0c3c1b2d3e".into(),
            service_account: "app".into(),
        })
    );
    let v = VolumeRequest::parse(&ctx(&[(MODE, "token"), (FILE, "jwt")])).unwrap();
    assert_eq!((v.audience, v.file.as_str()), (None, "jwt"));
}

#[test]
fn bad_contexts_name_their_attribute() {
    let cases: Vec<(HashMap<String, String>, &str)> = vec![
        (ctx(&[(MODE, "tokens")]), "mode=\"tokens\""),
        (ctx(&[("audiance", "vault")]), "\"audiance\""),
        (ctx(&[(EPHEMERAL, "false")]), EPHEMERAL),
        (ctx(&[(MODE, "token"), (AUDIENCE, "")]), "\"audience\""),
        (ctx(&[(MODE, "token"), (FILE, "../x")]), "file=\"../x\""),
        (ctx(&[(MODE, "token"), (FILE, "..")]), "file=\"..\""),
        (ctx(&[(MODE, "token"), (FILE, "")]), "file=\"\""),
    ];
    for (c, want) in cases {
        let e = VolumeRequest::parse(&c).unwrap_err().to_string();
        assert!(e.contains(want), "{want}: {e}");
    }
    for key in [POD_NAME, POD_NAMESPACE, POD_UID, SERVICE_ACCOUNT] {
        let mut c = ctx(&[(MODE, "token")]);
        c.remove(key);
        let e = VolumeRequest::parse(&c).unwrap_err().to_string();
        assert!(e.contains(key) && e.contains("podInfoOnMount"), "{e}");
    }
    // Other kubelet keys (serviceAccount.tokens, future ones) pass.
    let c = ctx(&[("csi.storage.k8s.io/serviceAccount.tokens", "{}")]);
    assert!(VolumeRequest::parse(&c).is_ok());
}

fn cap(access: Option<AccessType>, mode: AccessMode) -> VolumeCapability {
    VolumeCapability {
        access_type: access,
        access_mode: Some(AccessModeMsg { mode: mode as i32 }),
    }
}

#[test]
fn capabilities_must_be_a_mount_on_one_node() {
    let mount = || Some(AccessType::Mount(MountVolume::default()));
    for ok in [
        AccessMode::SingleNodeWriter,
        AccessMode::SingleNodeReaderOnly,
        AccessMode::SingleNodeSingleWriter,
        AccessMode::SingleNodeMultiWriter,
    ] {
        check_capability(&cap(mount(), ok)).unwrap();
    }
    assert!(matches!(
        check_capability(&cap(
            Some(AccessType::Block(BlockVolume {})),
            AccessMode::SingleNodeWriter
        )),
        Err(VolumeError::Block)
    ));
    assert!(matches!(
        check_capability(&cap(None, AccessMode::SingleNodeWriter)),
        Err(VolumeError::NoAccessType)
    ));
    assert!(matches!(
        check_capability(&cap(mount(), AccessMode::Unknown)),
        Err(VolumeError::NoAccessMode)
    ));
    let e = check_capability(&cap(mount(), AccessMode::MultiNodeMultiWriter)).unwrap_err();
    assert!(e.to_string().contains("MULTI_NODE_MULTI_WRITER"), "{e}");
    let none = VolumeCapability {
        access_type: mount(),
        access_mode: None,
    };
    assert!(matches!(
        check_capability(&none),
        Err(VolumeError::NoAccessMode)
    ));
}
