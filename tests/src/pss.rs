//! The Pod Security Standards' `restricted` profile (which includes
//! `baseline`) as a table of rules, for checking pods the project ships or
//! patches: the injector's patched pods, the CSI driver's example pod.

use serde_json::Value;

/// Pod Security Standards, `restricted` profile (which includes `baseline`),
/// for one container of `pod`: (rule, passes). The pod-level fields count
/// where the standard lets them stand in for the container's.
pub fn restricted_rules(pod: &Value, c: &Value) -> Vec<(&'static str, bool)> {
    let sc = &c["securityContext"];
    let psc = &pod["spec"]["securityContext"];
    let either = |k: &str| if sc[k].is_null() { &psc[k] } else { &sc[k] };
    let caps_add: Vec<&str> = sc["capabilities"]["add"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let caps_drop: Vec<&str> = sc["capabilities"]["drop"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let seccomp = either("seccompProfile")["type"].as_str().unwrap_or("");
    vec![
        (
            "baseline: privileged unset or false",
            sc["privileged"] != true,
        ),
        (
            "baseline: capabilities.add within the baseline set (restricted: NET_BIND_SERVICE only)",
            caps_add.iter().all(|c| *c == "NET_BIND_SERVICE"),
        ),
        (
            "baseline: no hostPort",
            c["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|p| p["hostPort"].is_null() || p["hostPort"] == 0),
        ),
        (
            "baseline: no custom SELinux type or user",
            sc["seLinuxOptions"]["type"].is_null() && sc["seLinuxOptions"]["user"].is_null(),
        ),
        (
            "baseline: procMount Default",
            sc["procMount"].is_null() || sc["procMount"] == "Default",
        ),
        (
            "baseline: no windows hostProcess",
            sc["windowsOptions"]["hostProcess"] != true,
        ),
        (
            "restricted: allowPrivilegeEscalation false",
            sc["allowPrivilegeEscalation"] == false,
        ),
        (
            "restricted: runAsNonRoot true",
            either("runAsNonRoot") == true,
        ),
        ("restricted: runAsUser not 0", either("runAsUser") != 0),
        (
            "restricted: seccomp RuntimeDefault or Localhost",
            seccomp == "RuntimeDefault" || seccomp == "Localhost",
        ),
        (
            "restricted: capabilities drop ALL",
            caps_drop.contains(&"ALL"),
        ),
        // Not PSS, but the terms for the injected containers.
        (
            "injector: readOnlyRootFilesystem",
            sc["readOnlyRootFilesystem"] == true,
        ),
        (
            "injector: requests and limits",
            !c["resources"]["requests"].is_null() && !c["resources"]["limits"].is_null(),
        ),
    ]
}

/// Volume types the `restricted` profile allows.
pub const RESTRICTED_VOLUMES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// Every `restricted` rule `pod` breaks: the pod-level ones (host
/// namespaces, volume types) and [`restricted_rules`] for each container,
/// init container and ephemeral container; empty when it passes.
pub fn restricted_violations(pod: &Value) -> Vec<String> {
    let spec = &pod["spec"];
    let mut out = Vec::new();
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        if spec[host] == true {
            out.push(format!("baseline: {host} unset or false"));
        }
    }
    for v in spec["volumes"].as_array().into_iter().flatten() {
        let kinds: Vec<&String> = v
            .as_object()
            .into_iter()
            .flat_map(|o| o.keys())
            .filter(|k| *k != "name")
            .collect();
        if !kinds
            .iter()
            .all(|k| RESTRICTED_VOLUMES.contains(&k.as_str()))
        {
            out.push(format!(
                "restricted: volume {} is of a type restricted refuses ({kinds:?})",
                v["name"]
            ));
        }
    }
    for key in ["initContainers", "containers", "ephemeralContainers"] {
        for c in spec[key].as_array().into_iter().flatten() {
            for (rule, ok) in restricted_rules(pod, c) {
                if !ok {
                    out.push(format!("{}: {rule}", c["name"]));
                }
            }
        }
    }
    out
}
