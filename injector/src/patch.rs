//! The JSON Patch (RFC 6902) that adds `jss secrets` to a pod. Operations
//! apply in order, so every index is taken from the pod as it stands before
//! the operation: app containers' mounts first, then the inserted init
//! containers at the front.

use serde_json::{Value, json};

use crate::annotations::{JSS_STATUS, Request};
use crate::config::{Inject, SidecarMode, SocketVolume, VaultCa};

pub const INIT_NAME: &str = "jss-secrets-init";
pub const SIDECAR_NAME: &str = "jss-secrets";
pub const VOL_SOCKET: &str = "jss-socket";
pub const VOL_SECRETS: &str = "jss-secrets";
pub const VOL_SPEC: &str = "jss-secrets-spec";
pub const VOL_STATE: &str = "jss-secrets-state";
pub const VOL_CA: &str = "jss-vault-ca";
/// TSI's layout: the app reads its secrets here.
pub const SECRETS_MOUNT: &str = "/tsi-secrets";
pub const SPEC_DIR: &str = "/var/run/jss-secrets-spec";
pub const SPEC_FILE: &str = "secrets.yaml";
pub const STATE_DIR: &str = "/var/run/jss-secrets-state";
pub const READY_FILE: &str = "/var/run/jss-secrets-state/ready";
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

    let mut inits = vec![container(INIT_NAME, &once_args(plan, cfg), cfg, false)];
    if native {
        let mut c = container(SIDECAR_NAME, &sidecar_args(plan, cfg, true), cfg, true);
        c["restartPolicy"] = json!("Always");
        // App containers start once the first fetch is written.
        c["startupProbe"] = json!({
            "exec": {"command": ["test", "-f", READY_FILE]},
            "periodSeconds": 1,
            "failureThreshold": 120,
        });
        inits.push(c);
    } else if sidecar {
        let c = container(SIDECAR_NAME, &sidecar_args(plan, cfg, false), cfg, false);
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

fn common_args(plan: &Plan, cfg: &Inject) -> Vec<String> {
    let mut a: Vec<String> = [
        "jss",
        "secrets",
        "--spec",
        &format!("{SPEC_DIR}/{SPEC_FILE}"),
        "--out",
        SECRETS_MOUNT,
        "--format",
        &plan.format,
        "--file-mode",
        &cfg.file_mode,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(m) = &cfg.auth_mount {
        a.extend(["--auth-mount".to_string(), m.clone()]);
    }
    a
}

/// The first init container's command: fetch once, exit.
pub fn once_args(plan: &Plan, cfg: &Inject) -> Vec<String> {
    let mut a = common_args(plan, cfg);
    a.push("--once".into());
    a
}

/// The sidecar's command: refresh every `refresh_seconds`.
pub fn sidecar_args(plan: &Plan, cfg: &Inject, native: bool) -> Vec<String> {
    let mut a = common_args(plan, cfg);
    a.extend(["--refresh-seconds".into(), plan.refresh_seconds.to_string()]);
    if native {
        a.extend(["--ready-file".into(), READY_FILE.into()]);
    }
    a
}

fn container(name: &str, command: &[String], cfg: &Inject, state: bool) -> Value {
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
    if state {
        mounts.push(json!({"name": VOL_STATE, "mountPath": STATE_DIR}));
    }
    let r = &cfg.resources;
    json!({
        "name": name,
        "image": cfg.image,
        "imagePullPolicy": cfg.image_pull_policy,
        "command": command,
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
