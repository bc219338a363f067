//! The JSON Patch (RFC 6902) that adds `jss secrets` to a pod. Operations
//! apply in order, so every index is taken from the pod as it stands before
//! the operation: app containers' mounts first, then the inserted init
//! containers at the front.

pub use jss::claims::injected::{
    INIT_NAME, READY_FILE, SECRETS_MOUNT, SIDECAR_NAME, SPEC_DIR, SPEC_FILE, STATE_DIR,
};
use jss::claims::injected::{Run, SecretsCommand};
use serde_json::{Value, json};

use crate::annotations::{JSS_STATUS, Request};
use crate::config::{Inject, SidecarMode, SocketVolume, VaultCa};

pub const VOL_SOCKET: &str = "jss-socket";
pub const VOL_SECRETS: &str = "jss-secrets";
pub const VOL_SPEC: &str = "jss-secrets-spec";
pub const VOL_STATE: &str = "jss-secrets-state";
pub const VOL_CA: &str = "jss-vault-ca";
pub const CA_DIR: &str = "/var/run/jss-vault-ca";
const CA_FILE: &str = "ca.crt";
const OUR_VOLUMES: &[&str] = &[VOL_SOCKET, VOL_SECRETS, VOL_SPEC, VOL_STATE, VOL_CA];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatchError {
    #[error("the pod has no spec.containers list")]
    NoContainers,
    #[error("the pod already has a volume named {0:?}, which the injector adds; rename it")]
    VolumeTaken(String),
    #[error(
        "container {0:?} already mounts something at {SECRETS_MOUNT}, where the injector mounts the secrets; move it"
    )]
    MountTaken(String),
}

/// How the pod will run `jss secrets`, after annotations and config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub init_only: bool,
    pub native_sidecar: bool,
    pub refresh_seconds: u32,
    pub format: String,
}

impl Plan {
    /// `job_owned`: a Job's pod runs init-only unless annotated otherwise.
    pub fn new(req: &Request, cfg: &Inject, job_owned: bool) -> Self {
        Self {
            init_only: req.init_only.unwrap_or(job_owned),
            native_sidecar: req
                .native_sidecar
                .unwrap_or(cfg.sidecar == SidecarMode::Native),
            refresh_seconds: req.refresh_seconds.unwrap_or(cfg.refresh_seconds),
            format: req.format.clone().unwrap_or_else(|| cfg.format.clone()),
        }
    }
}

fn list<'a>(pod: &'a Value, key: &str) -> Option<&'a Vec<Value>> {
    pod.get("spec")?.get(key)?.as_array()
}

fn names(v: Option<&Vec<Value>>) -> impl Iterator<Item = &str> {
    v.into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
}

/// Whether the injector has patched this pod before (its init container is there).
pub fn is_injected(pod: &Value) -> bool {
    names(list(pod, "initContainers"))
        .chain(names(list(pod, "containers")))
        .any(|n| n == INIT_NAME)
}

/// `add` of the read-only secrets mount to every app container (and app init
/// container) that has none yet; `Err` when one already uses the mount path.
fn mount_ops(pod: &Value, ops: &mut Vec<Value>) -> Result<(), PatchError> {
    for key in ["containers", "initContainers"] {
        for (i, c) in list(pod, key).into_iter().flatten().enumerate() {
            let name = c.get("name").and_then(Value::as_str).unwrap_or("");
            if name == INIT_NAME || name == SIDECAR_NAME {
                continue;
            }
            let mounts = c.get("volumeMounts").and_then(Value::as_array);
            let mut ours = false;
            for m in mounts.into_iter().flatten() {
                if m.get("name").and_then(Value::as_str) == Some(VOL_SECRETS) {
                    ours = true;
                } else if m
                    .get("mountPath")
                    .and_then(Value::as_str)
                    .is_some_and(|p| p.trim_end_matches('/') == SECRETS_MOUNT)
                {
                    return Err(PatchError::MountTaken(name.into()));
                }
            }
            if ours {
                continue;
            }
            let mount = json!({"name": VOL_SECRETS, "mountPath": SECRETS_MOUNT, "readOnly": true});
            ops.push(match mounts {
                Some(_) => json!({"op": "add", "path": format!("/spec/{key}/{i}/volumeMounts/-"), "value": mount}),
                None => json!({"op": "add", "path": format!("/spec/{key}/{i}/volumeMounts"), "value": [mount]}),
            });
        }
    }
    Ok(())
}

/// The patch for a pod injected before (reinvocation): mounts for app
/// containers that another webhook added since. Empty: nothing to do.
pub fn reinvocation(pod: &Value) -> Result<Vec<Value>, PatchError> {
    let mut ops = Vec::new();
    mount_ops(pod, &mut ops)?;
    Ok(ops)
}

/// The whole patch for an annotated pod not injected yet.
pub fn build(
    pod: &Value,
    req: &Request,
    plan: &Plan,
    cfg: &Inject,
) -> Result<Vec<Value>, PatchError> {
    if list(pod, "containers").is_none() {
        return Err(PatchError::NoContainers);
    }
    if let Some(taken) = names(list(pod, "volumes")).find(|n| OUR_VOLUMES.contains(n)) {
        return Err(PatchError::VolumeTaken(taken.into()));
    }
    let mut ops = Vec::new();
    mount_ops(pod, &mut ops)?;
    ops.push(json!({
        "op": "add",
        "path": format!("/metadata/annotations/{}", JSS_STATUS.replace('~', "~0").replace('/', "~1")),
        "value": "injected",
    }));

    let mut volumes = vec![
        socket_volume(cfg),
        json!({"name": VOL_SECRETS, "emptyDir": {"medium": "Memory", "sizeLimit": cfg.secrets_size_limit}}),
        json!({"name": VOL_SPEC, "downwardAPI": {"items": [{
            "path": SPEC_FILE,
            "fieldRef": {"fieldPath": format!("metadata.annotations['{}']", req.secrets_annotation)},
        }]}}),
    ];
    let sidecar = !plan.init_only;
    let native = sidecar && plan.native_sidecar;
    if native {
        volumes
            .push(json!({"name": VOL_STATE, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}));
    }
    match &cfg.vault_ca {
        VaultCa::None => {}
        VaultCa::ConfigMap { name, key } => volumes.push(json!({"name": VOL_CA,
            "configMap": {"name": name, "items": [{"key": key, "path": CA_FILE}]}})),
        VaultCa::Secret { name, key } => volumes.push(json!({"name": VOL_CA,
            "secret": {"secretName": name, "items": [{"key": key, "path": CA_FILE}]}})),
    }
    match list(pod, "volumes") {
        Some(_) => ops.extend(
            volumes
                .into_iter()
                .map(|v| json!({"op": "add", "path": "/spec/volumes/-", "value": v})),
        ),
        None => ops.push(json!({"op": "add", "path": "/spec/volumes", "value": volumes})),
    }

    let mut inits = vec![container(&command(plan, cfg, Run::Once), cfg)];
    let refresh = |ready_file| {
        let seconds = plan.refresh_seconds;
        command(
            plan,
            cfg,
            Run::Refresh {
                seconds,
                ready_file,
            },
        )
    };
    if native {
        let mut c = container(&refresh(true), cfg);
        c["restartPolicy"] = json!("Always");
        // App containers start once the first fetch is written.
        c["startupProbe"] = json!({
            "exec": {"command": ["test", "-f", READY_FILE]},
            "periodSeconds": 1,
            "failureThreshold": 120,
        });
        inits.push(c);
    } else if sidecar {
        let c = container(&refresh(false), cfg);
        ops.push(json!({"op": "add", "path": "/spec/containers/-", "value": c}));
    }
    match list(pod, "initContainers") {
        Some(_) => ops.extend(inits.into_iter().enumerate().map(
            |(i, c)| json!({"op": "add", "path": format!("/spec/initContainers/{i}"), "value": c}),
        )),
        None => ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": inits})),
    }
    Ok(ops)
}

/// The `jss secrets` command of an injected container.
pub fn command(plan: &Plan, cfg: &Inject, run: Run) -> SecretsCommand {
    SecretsCommand {
        format: plan.format.clone(),
        file_mode: cfg.file_mode.clone(),
        auth_mount: cfg.auth_mount.clone(),
        run,
    }
}

/// A container running `cmd`, named for it (the daemon recognises it by
/// name, image and command: `jss::claims::injected`).
fn container(cmd: &SecretsCommand, cfg: &Inject) -> Value {
    let mut env = vec![
        json!({"name": "JSS_SOCKET", "value": cfg.socket_path()}),
        json!({"name": "VAULT_ADDR", "value": cfg.vault_addr}),
    ];
    let mut mounts = vec![
        json!({"name": VOL_SOCKET, "mountPath": cfg.socket_dir, "readOnly": true}),
        json!({"name": VOL_SECRETS, "mountPath": SECRETS_MOUNT}),
        json!({"name": VOL_SPEC, "mountPath": SPEC_DIR, "readOnly": true}),
    ];
    if cfg.vault_ca != VaultCa::None {
        env.push(json!({"name": "VAULT_CACERT", "value": format!("{CA_DIR}/{CA_FILE}")}));
        mounts.push(json!({"name": VOL_CA, "mountPath": CA_DIR, "readOnly": true}));
    }
    // The native sidecar's ready file, for its startupProbe.
    if matches!(
        cmd.run,
        Run::Refresh {
            ready_file: true,
            ..
        }
    ) {
        mounts.push(json!({"name": VOL_STATE, "mountPath": STATE_DIR}));
    }
    let r = &cfg.resources;
    json!({
        "name": cmd.placement().0,
        "image": cfg.image,
        "imagePullPolicy": cfg.image_pull_policy,
        "command": cmd.argv(),
        "env": env,
        "volumeMounts": mounts,
        "resources": {
            "requests": {"cpu": r.cpu_request, "memory": r.memory_request},
            "limits": {"cpu": r.cpu_limit, "memory": r.memory_limit},
        },
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": cfg.run_as_user,
            "runAsGroup": cfg.run_as_user,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    })
}

/// The JSS socket directory: the directory, not the socket file, so a
/// restarted daemon's new socket is seen. Through the CSI driver it is the
/// same directory, bind-mounted read-only by the driver (mode socket).
fn socket_volume(cfg: &Inject) -> Value {
    match cfg.socket_volume {
        SocketVolume::HostPath => {
            json!({"name": VOL_SOCKET, "hostPath": {"path": cfg.socket_dir, "type": "Directory"}})
        }
        SocketVolume::Csi => json!({"name": VOL_SOCKET, "csi": {
            "driver": cfg.csi_driver,
            "readOnly": true,
            "volumeAttributes": {"mode": "socket"},
        }}),
    }
}

#[cfg(test)]
mod tests {
    use jss::claims::InjectedContainers;
    use jss::claims::injected::SpecView;
    use jss::kubelet::ContainerKind;

    use super::*;
    use crate::annotations::parse;
    use crate::config::{Config, FileConfig, Overrides};

    fn strings(v: &Value) -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(String::from))
            .collect()
    }

    /// Every container the injector adds, in every mode, is one the daemon
    /// leaves out of `images` for the same image; the app's are not.
    #[test]
    fn the_daemon_recognises_exactly_the_containers_the_injector_writes() {
        let mut cfg = Config::build(FileConfig::default(), Overrides::default())
            .unwrap()
            .inject;
        cfg.auth_mount = Some("jss-prod-1".into());
        let daemon = InjectedContainers::new(Some(cfg.image.clone()));
        let other_image = InjectedContainers::new(Some("jss:other".into()));
        let pod = json!({"metadata": {"annotations": {"admission.trusted.identity/inject": "true",
            "tsi.secrets": "- {tsi.secret/name: s, tsi.secret/role: r, tsi.secret/vault-path: secret/ti-demo-all, tsi.secret/local-name: f}"}},
            "spec": {"containers": [{"name": "app", "image": cfg.image, "command": ["jss", "secrets", "--once"]}]}});
        let req = parse(pod["metadata"]["annotations"].as_object().unwrap())
            .unwrap()
            .unwrap();
        for (init_only, native, added) in [(false, true, 2), (false, false, 2), (true, false, 1)] {
            let plan = Plan {
                init_only,
                native_sidecar: native,
                refresh_seconds: 45,
                format: "raw".into(),
            };
            let mut seen = 0;
            for op in build(&pod, &req, &plan, &cfg).unwrap() {
                let path = op["path"].as_str().unwrap();
                let kind = match path.rsplit_once('/').unwrap() {
                    ("/spec", "initContainers") => ContainerKind::Init,
                    ("/spec/initContainers", i) if i.parse::<usize>().is_ok() => {
                        ContainerKind::Init
                    }
                    ("/spec/containers", "-") => ContainerKind::Container,
                    _ => continue,
                };
                for c in op["value"]
                    .as_array()
                    .cloned()
                    .unwrap_or(vec![op["value"].clone()])
                {
                    let (command, args) = (strings(&c["command"]), strings(&c["args"]));
                    let view = SpecView {
                        kind,
                        name: c["name"].as_str().unwrap(),
                        image: c["image"].as_str().unwrap(),
                        command: &command,
                        args: &args,
                    };
                    assert!(daemon.is_injected(view), "{c}");
                    assert!(!other_image.is_injected(view), "{c}");
                    seen += 1;
                }
            }
            assert_eq!(seen, added, "init_only {init_only}, native {native}");
        }
    }
}
