//! Containers the injector adds are left out of `images`, and only those
//! (README.md, "Token format").

use std::sync::Arc;

use super::injected::{
    INIT_NAME, InjectedContainers, Run, SIDECAR_NAME, SecretsCommand, image_reference_problem,
};
use super::tests::{builder, workload};
use crate::attest::{ContainerImage, ContainerKind, Workload};

const JSS: &str = "registry.example.com/jss@sha256:4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b";
/// The app's images as the unpatched pod has them.
const APP_NAMES: &str = "nginx:1.27,envoy:1,busybox:1";

fn command(run: Run) -> SecretsCommand {
    SecretsCommand {
        format: "json".into(),
        file_mode: "0644".into(),
        auth_mount: None,
        run,
    }
}

fn once() -> Vec<String> {
    command(Run::Once).argv()
}

fn refresh(ready_file: bool) -> Vec<String> {
    command(Run::Refresh {
        seconds: 600,
        ready_file,
    })
    .argv()
}

fn ctr(kind: ContainerKind, name: &str, image: &str, cmd: Vec<String>) -> ContainerImage {
    ContainerImage {
        name: name.into(),
        image: image.into(),
        digest: None,
        image_id: None,
        kind,
        command: cmd.into(),
        args: Arc::from([]),
    }
}

/// The test pod as the injector leaves it: its init container and native
/// sidecar first among the init containers, a regular sidecar appended.
fn patched(extra: Vec<ContainerImage>) -> Workload {
    let mut w = workload();
    let mut front = vec![
        ctr(ContainerKind::Init, INIT_NAME, JSS, once()),
        ctr(ContainerKind::Init, SIDECAR_NAME, JSS, refresh(true)),
    ];
    front.append(&mut w.images);
    w.images = front;
    w.images.extend(extra);
    w
}

fn names_for(injector_image: Option<&str>, w: &Workload) -> String {
    let b = builder().leaving_out(InjectedContainers::new(injector_image.map(String::from)));
    b.build(w, "vault", 1).unwrap().images_names
}

#[test]
fn an_injected_pod_has_its_apps_images() {
    let plain = workload();
    assert_eq!(names_for(Some(JSS), &plain), APP_NAMES);
    assert_eq!(names_for(Some(JSS), &patched(vec![])), APP_NAMES);
    // A regular sidecar (clusters before 1.29) and an auth mount and format
    // from the injector's config.
    let mut side = command(Run::Refresh {
        seconds: 30,
        ready_file: false,
    });
    side.auth_mount = Some("auth/jss-prod-1".into());
    side.format = "raw".into();
    let w = patched(vec![ctr(
        ContainerKind::Container,
        SIDECAR_NAME,
        JSS,
        side.argv(),
    )]);
    assert_eq!(names_for(Some(JSS), &w), APP_NAMES);
}

#[test]
fn without_the_config_key_every_container_counts() {
    let w = patched(vec![]);
    assert_eq!(
        names_for(None, &w),
        format!("nginx:1.27,envoy:1,{JSS},{JSS},busybox:1")
    );
}

/// One container that differs from what the injector writes in one thing:
/// it counts, so its image is in `images-names`.
#[test]
fn a_container_that_differs_in_anything_counts() {
    let other = "evil.example.com/miner:1";
    let mut with_args = ctr(ContainerKind::Init, INIT_NAME, JSS, once());
    with_args.args = Arc::from(["--on-change".to_string(), "sh -c evil".to_string()]);
    let mut on_change = once();
    on_change.extend(["--on-change".into(), "curl evil".into()]);
    let mut other_spec = once();
    other_spec[3] = "/etc/passwd".into();
    let mut padded = refresh(true);
    padded[11] = "0600".into();
    let mut joined = once();
    joined.splice(6..8, ["--format=json".to_string()]);
    let cases: Vec<(&str, ContainerImage)> = vec![
        (
            "name",
            ctr(ContainerKind::Init, "jss-secrets-init2", JSS, once()),
        ),
        (
            "injector's name, another image",
            ctr(ContainerKind::Init, INIT_NAME, other, once()),
        ),
        (
            "image by tag instead of the configured digest",
            ctr(
                ContainerKind::Init,
                INIT_NAME,
                "registry.example.com/jss:0.1.0",
                once(),
            ),
        ),
        (
            "command: --on-change added",
            ctr(ContainerKind::Init, INIT_NAME, JSS, on_change),
        ),
        (
            "command: another spec file",
            ctr(ContainerKind::Init, INIT_NAME, JSS, other_spec),
        ),
        (
            "command: 0600 seconds",
            ctr(ContainerKind::Init, SIDECAR_NAME, JSS, padded),
        ),
        (
            "command: --format=json",
            ctr(ContainerKind::Init, INIT_NAME, JSS, joined),
        ),
        (
            "command: a shell",
            ctr(
                ContainerKind::Init,
                INIT_NAME,
                JSS,
                vec!["sh".into(), "-c".into(), "jss secrets --once".into()],
            ),
        ),
        ("command: none (the image's entrypoint)", {
            ctr(ContainerKind::Init, INIT_NAME, JSS, vec![])
        }),
        ("args", with_args),
        (
            "place: the init container's command in a container",
            ctr(ContainerKind::Container, INIT_NAME, JSS, once()),
        ),
        (
            "place: the native sidecar's command in a container",
            ctr(ContainerKind::Container, SIDECAR_NAME, JSS, refresh(true)),
        ),
        (
            "name and command swapped",
            ctr(ContainerKind::Init, SIDECAR_NAME, JSS, once()),
        ),
    ];
    for (what, c) in cases {
        let image = c.image.clone();
        let names = names_for(Some(JSS), &patched(vec![c]));
        // Counted once; the injector's own two containers stay left out.
        assert_eq!(
            names.split(',').filter(|n| *n == image).count(),
            1,
            "{what}: {names}"
        );
    }
}

#[test]
fn the_injected_sidecars_token_carries_the_apps_images_and_its_own_container() {
    let mut w = patched(vec![]);
    w.container_name = SIDECAR_NAME.into();
    w.image = JSS.into();
    w.image_digest = Some(format!("sha256:{}", "ef".repeat(32)));
    let b = builder().leaving_out(InjectedContainers::new(Some(JSS.into())));
    let c = b.build(&w, "vault", 1).unwrap();
    assert_eq!(c.images_names, APP_NAMES);
    assert_eq!(
        c.images,
        super::images_hash(&["nginx:1.27", "envoy:1", "busybox:1"])
    );
    assert_eq!(c.container, Some(SIDECAR_NAME));
    assert_eq!(c.image, w.image_digest.as_deref());
}

#[test]
fn commands_parse_back_only_from_what_the_builder_writes() {
    for run in [
        Run::Once,
        Run::Refresh {
            seconds: 1,
            ready_file: false,
        },
        Run::Refresh {
            seconds: 86_400,
            ready_file: true,
        },
    ] {
        for auth_mount in [None, Some("jss-prod-1".to_string())] {
            let cmd = SecretsCommand {
                auth_mount,
                ..command(run.clone())
            };
            assert_eq!(SecretsCommand::parse(&cmd.argv()), Some(cmd));
        }
    }
    for (format, mode, mount, seconds) in [
        ("yaml", "0644", None, 1),
        ("json", "999", None, 1),
        ("json", "06440", None, 1),
        ("json", "0644", Some("--on-change"), 1),
        ("json", "0644", Some(""), 1),
        ("json", "0644", None, 0),
    ] {
        let cmd = SecretsCommand {
            format: format.into(),
            file_mode: mode.into(),
            auth_mount: mount.map(String::from),
            run: Run::Refresh {
                seconds,
                ready_file: false,
            },
        };
        assert_eq!(SecretsCommand::parse(&cmd.argv()), None, "{cmd:?}");
    }
}

#[test]
fn image_references_are_checked() {
    assert_eq!(image_reference_problem(JSS), None);
    assert_eq!(image_reference_problem("jss:0.1.0"), None);
    for bad in ["", "jss 0.1", "jss@sha256:abc", "jss@md5:00", "jss\n"] {
        assert!(image_reference_problem(bad).is_some(), "{bad:?}");
    }
}
