#![allow(clippy::unwrap_used, clippy::expect_used)]
//! End to end: the injector patches TSI's article pod; the kubelet stand-in
//! lists the patched pod whole (app container, injected init container and
//! native sidecar, each a running container). The daemon, told the JSS
//! image (`[injector] image`), leaves the injected containers out of
//! `images`: every container of the patched pod gets the unpatched pod's
//! `images`, and a pod whose sidecar command was changed does not. The
//! injected init container's command, arguments and environment, taken from
//! the patched pod, run as a real process in its kubepods cgroup against
//! swtpm + OpenBao + `jss serve`, with the pod's volumes laid out as the
//! kubelet would (the downward-API file behind `..data` symlinks, an
//! emptyDir, the socket directory); the secret stored at the TSI path built
//! from the app's `images` appears where the app container reads it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use jss_tests::cluster::{CLUSTER, Cluster, DEMO_NS, REGION, layout};
use jss_tests::injector::{Certs, Client, Injector};
use jss_tests::kube;
use jss_tests::kubelet::{Listed, pod_list};
use jss_tests::pods::PodProcess;
use jss_tests::watch::{read, wait_for};
use serde_json::Value;

const JSS_IMAGE: &str = "registry.example.com/jss@sha256:8b1a9953c4611296a827abf8c47804d7e6c49c6b3c3b0b1e1b3e1c1a8f5a7e2d";
/// The app container's image in the article's pod.
const APP_IMAGE: &str =
    "ubuntu@sha256:250cc6f3f3ffc5cdaa9d8f4946ac79821aafb4d3afc93928f0de9336eba21aa4";

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// A downward-API volume as the kubelet writes it: the files in a
/// timestamped directory, `..data` pointing at it, each file a symlink
/// through `..data`.
fn downward_api(dir: &Path, volume: &Value, pod: &Value) {
    let stamp = dir.join("..2026_11_29_12_00_00.000000001");
    std::fs::create_dir_all(&stamp).unwrap();
    for item in volume["downwardAPI"]["items"].as_array().unwrap() {
        let field = item["fieldRef"]["fieldPath"].as_str().unwrap();
        let key = field
            .strip_prefix("metadata.annotations['")
            .and_then(|k| k.strip_suffix("']"))
            .unwrap_or_else(|| panic!("unexpected fieldPath {field}"));
        let value = pod["metadata"]["annotations"][key].as_str().unwrap();
        let path = item["path"].as_str().unwrap();
        std::fs::write(stamp.join(path), value).unwrap();
        std::os::unix::fs::symlink(format!("..data/{path}"), dir.join(path)).unwrap();
    }
    std::os::unix::fs::symlink(stamp.file_name().unwrap(), dir.join("..data")).unwrap();
}

/// Host directories for a container's mounts: mountPath → directory.
fn mounts(c: &Value, volumes: &BTreeMap<String, PathBuf>) -> Vec<(String, PathBuf)> {
    c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let name = m["name"].as_str().unwrap();
            let host = volumes
                .get(name)
                .unwrap_or_else(|| panic!("no volume {name}"))
                .clone();
            (m["mountPath"].as_str().unwrap().to_string(), host)
        })
        .collect()
}

/// A container path as the process sees it through `mounts`.
fn host_path(path: &str, mounts: &[(String, PathBuf)]) -> String {
    for (mp, host) in mounts {
        if path == mp {
            return host.display().to_string();
        }
        if let Some(rest) = path.strip_prefix(&format!("{mp}/")) {
            return host.join(rest).display().to_string();
        }
    }
    path.to_string()
}

/// The claims of a token `jss token --decode` gets in `process`.
fn claims(c: &Cluster, process: &PodProcess) -> Value {
    let out = c
        .spawn_jss(process, &["token", "--decode"], &[])
        .wait_with_output()
        .unwrap();
    assert!(
        out.status.success(),
        "jss token: {}\ndaemon:\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.daemon.stderr()
    );
    serde_json::from_slice::<Value>(&out.stdout).unwrap()["claims"].clone()
}

#[test]
fn the_injected_init_container_writes_the_secrets_where_the_app_reads_them() {
    let c = Cluster::start(
        &["--role", "demo"],
        &format!("[injector]\nimage = \"{JSS_IMAGE}\"\n"),
        &[],
    );
    // The TSI path of the app's images: what the secret maker computes for
    // the pod as written, before any injection.
    let app_images = jss::claims::images_hash(&[APP_IMAGE]);
    c.put(
        &format!("secret/ti-demo-all/{REGION}/{CLUSTER}/{DEMO_NS}/{app_images}/mysecret1"),
        &["username=admin", "password=s3cret-all"],
    );

    let inj_dir = c.mkdir("injector");
    let certs = Certs::issue(&inj_dir, "e2e CA");
    let bao = c.bao.addr();
    let inj = Injector::start(
        &inj_dir,
        &certs,
        &["--image", JSS_IMAGE, "--vault-addr", &bao],
    );
    let pod = kube::yaml_to_json(
        &std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/injector/tsi-article-pod.yaml"),
        )
        .unwrap(),
    );
    let resp = Client::connect(inj.port, &certs).unwrap().review(&pod);
    let raw = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        resp["response"]["patch"].as_str().unwrap(),
    )
    .unwrap();
    let patched = kube::json_patch(&pod, &serde_json::from_slice(&raw).unwrap());
    // The same, but its sidecar does one thing more than the injector wrote.
    let mut tampered = patched.clone();
    let side_cmd = tampered["spec"]["initContainers"][1]["command"]
        .as_array_mut()
        .unwrap();
    side_cmd.extend(["--on-change".into(), "true".into()]);

    let plain = Listed::new(&pod, "myubuntu-698b749889-plain");
    let injected = Listed::new(&patched, "myubuntu-698b749889-x7k2p");
    let changed = Listed::new(&tampered, "myubuntu-698b749889-other");
    c.kubelet().set_pods(pod_list(&[
        plain.json.clone(),
        injected.json.clone(),
        changed.json.clone(),
    ]));
    let process = |l: &Listed, name: &str| PodProcess::spawn(layout(), &l.uid, l.id(name));

    // Every container of the injected pod has the unpatched pod's images,
    // and its own container and image.
    let before = claims(&c, &process(&plain, "myubuntu"));
    assert_eq!(before["images-names"], APP_IMAGE);
    assert_eq!(before["images"], app_images.as_str());
    let app = claims(&c, &process(&injected, "myubuntu"));
    let init_proc = process(&injected, "jss-secrets-init");
    let init = claims(&c, &init_proc);
    let side_proc = process(&injected, "jss-secrets");
    let side = claims(&c, &side_proc);
    for (who, cl) in [("app", &app), ("init", &init), ("sidecar", &side)] {
        assert_eq!(cl["images-names"], APP_IMAGE, "{who}: {cl}");
        assert_eq!(cl["images"], app_images.as_str(), "{who}: {cl}");
    }
    assert_eq!(side["container"], "jss-secrets");
    assert_eq!(init["container"], "jss-secrets-init");
    assert_ne!(
        side["image"], app["image"],
        "the sidecar's own image digest"
    );
    assert_ne!(
        side["sub"], app["sub"],
        "`sub` names the calling container's image"
    );
    // A container the injector did not write exactly counts.
    let other = claims(&c, &process(&changed, "myubuntu"));
    assert_eq!(other["images-names"], format!("{APP_IMAGE},{JSS_IMAGE}"));

    // The kubelet's part: a directory per volume.
    let socket_dir = c.daemon.socket.parent().unwrap().to_path_buf();
    let mut volumes = BTreeMap::new();
    for v in patched["spec"]["volumes"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap().to_string();
        let host = if v.get("hostPath").is_some() {
            assert_eq!(v["hostPath"]["path"], "/run/jss");
            socket_dir.clone()
        } else {
            let d = c.mkdir(&format!("volumes/{name}"));
            if v.get("downwardAPI").is_some() {
                downward_api(&d, v, &patched);
            }
            d
        };
        volumes.insert(name, host);
    }

    let init = &patched["spec"]["initContainers"][0];
    assert_eq!(init["name"], "jss-secrets-init");
    assert_eq!(init["image"], JSS_IMAGE);
    let seen = mounts(init, &volumes);
    let command = strs(&init["command"]);
    assert_eq!(command[0], "jss-agent");
    let args: Vec<String> = command[1..].iter().map(|a| host_path(a, &seen)).collect();
    let env: Vec<(String, String)> = init["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let v = e["value"].as_str().unwrap();
            (e["name"].as_str().unwrap().to_string(), host_path(v, &seen))
        })
        .collect();
    assert!(
        env.iter().any(|(k, v)| k == "VAULT_ADDR" && *v == bao),
        "{env:?}"
    );
    let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let out = c
        .spawn_bin(&init_proc, &command[0], &args_ref, &env_ref)
        .wait_with_output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}\n{err}");
    assert!(!err.contains("s3cret"), "a secret value in the log:\n{err}");

    // What the app container sees under /tsi-secrets (read-only there).
    let app = &patched["spec"]["containers"][0];
    let app_mounts = mounts(app, &volumes);
    let file = host_path(
        "/tsi-secrets/mysecrets/myubuntu-mysecret1/mysecret1",
        &app_mounts,
    );
    let v: Value = serde_json::from_str(&read(Path::new(&file)).unwrap()).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"username": "admin", "password": "s3cret-all"})
    );

    // The native sidecar, in its own container: same translation; its
    // startupProbe passes once the first fetch is written.
    let side = &patched["spec"]["initContainers"][1];
    assert_eq!(side["restartPolicy"], "Always");
    let seen = mounts(side, &volumes);
    let command = strs(&side["command"]);
    let args: Vec<String> = command[1..].iter().map(|a| host_path(a, &seen)).collect();
    let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = c.spawn_bin(&side_proc, &command[0], &args_ref, &env_ref);
    let probe: Vec<String> = strs(&side["startupProbe"]["exec"]["command"])
        .iter()
        .map(|a| host_path(a, &seen))
        .collect();
    wait_for(
        60,
        "the sidecar's startupProbe to pass",
        &String::new,
        || {
            std::process::Command::new(&probe[0])
                .args(&probe[1..])
                .status()
                .is_ok_and(|s| s.success())
        },
    );
    let _ = child.kill();
    let _ = child.wait();
}
