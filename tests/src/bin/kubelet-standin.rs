//! A runnable kubelet stand-in for `swtpm-ci/demo` (and anyone who wants to
//! try `jss serve` without a cluster). Test tooling, never part of the product.
//!
//! ```text
//! kubelet-standin PODS.json DIR
//! ```
//!
//! Serves `GET /pods` over HTTPS with a bearer token (the kubelet's secure
//! port, on a free loopback port), writes the CA that signed its serving
//! certificate to `DIR/ca.crt` and the token to `DIR/token`, prints its URL on
//! stdout and stays in the foreground until killed. `PODS.json` is either a
//! `PodList` exactly as the kubelet returns it (served as is) or a short list
//! of pods that is expanded into the kubelet's `/pods` shape:
//!
//! ```json
//! [{"uid": "…", "namespace": "trusted-identity", "name": "myubuntu",
//!   "serviceAccount": "default",
//!   "containers": [{"name": "app", "image": "docker.io/library/ubuntu:24.04", "id": "<64 hex>"}]}]
//! ```
//!
//! The file is re-read when it changes, so pods can come and go. The
//! certificates live in a temporary directory under `$TMPDIR` that stays
//! after a kill: point `TMPDIR` into a directory you remove afterwards.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use jss_tests::kubelet::{Ctr, KubeletStandin, PodBuilder, pod_list};
use serde_json::Value;

fn main() {
    if let Err(e) = run() {
        eprintln!("kubelet-standin: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [pods_file, dir] = args.as_slice() else {
        bail!("usage: kubelet-standin PODS.json DIR");
    };
    let (pods_file, dir) = (PathBuf::from(pods_file), PathBuf::from(dir));
    let (mut list, mut stamp) = load(&pods_file)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;

    let standin = KubeletStandin::start(list.clone());
    for (from, name) in [
        (standin.ca_path(), "ca.crt"),
        (standin.token_path(), "token"),
    ] {
        std::fs::copy(&from, dir.join(name))
            .with_context(|| format!("copy {} to {}", from.display(), dir.display()))?;
    }
    println!("{}", standin.url());
    std::io::stdout().flush()?;

    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = modified(&pods_file);
        if now == stamp {
            continue;
        }
        match load(&pods_file) {
            Ok((l, s)) if l != list => {
                let n = l["items"].as_array().map_or(0, Vec::len);
                standin.set_pods(l.clone());
                eprintln!("kubelet-standin: now serving {n} pod(s)");
                (list, stamp) = (l, s);
            }
            Ok((_, s)) => stamp = s,
            // A half-written file: keep serving the last good list.
            Err(e) => eprintln!("kubelet-standin: keeping the previous pod list: {e:#}"),
        }
    }
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The pod list to serve, and the file's modification time.
fn load(p: &Path) -> anyhow::Result<(Value, Option<SystemTime>)> {
    let stamp = modified(p);
    let text = std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?;
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("parse {} as JSON", p.display()))?;
    if v.get("kind").and_then(Value::as_str) == Some("PodList") {
        return Ok((v, stamp));
    }
    let Some(pods) = v.as_array() else {
        bail!("{}: neither a PodList nor a list of pods", p.display());
    };
    let pods = pods
        .iter()
        .map(expand)
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((pod_list(&pods), stamp))
}

fn field<'a>(v: &'a Value, k: &str) -> anyhow::Result<&'a str> {
    v.get(k)
        .and_then(Value::as_str)
        .with_context(|| format!("pod entry {v} has no string {k:?}"))
}

/// A short pod description in the kubelet's `/pods` shape.
fn expand(p: &Value) -> anyhow::Result<Value> {
    let mut b = PodBuilder::new(field(p, "uid")?, field(p, "namespace")?, field(p, "name")?);
    if let Some(sa) = p.get("serviceAccount").and_then(Value::as_str) {
        b = b.service_account(sa);
    }
    if let Some(node) = p.get("nodeName").and_then(Value::as_str) {
        b.node_name = node.to_string();
    }
    for (key, init) in [("containers", false), ("initContainers", true)] {
        for c in p.get(key).and_then(Value::as_array).into_iter().flatten() {
            let ctr = Ctr::running(field(c, "name")?, field(c, "image")?, field(c, "id")?);
            b = if init { b.init(ctr) } else { b.container(ctr) };
        }
    }
    if b.containers.is_empty() {
        bail!("pod {} has no containers", b.name);
    }
    Ok(b.json())
}
