//! What the shipped files say to the binaries: config keys, linked
//! libraries in the image, and the commands and flags they invoke.

use super::*;

#[test]
fn config_examples_use_exactly_the_daemons_keys() {
    let top: BTreeSet<&str> = CONFIG_TOP_KEYS.iter().copied().collect();
    let signer: BTreeSet<&str> = CONFIG_SIGNER_KEYS.iter().copied().collect();
    let kubelet: BTreeSet<&str> = CONFIG_KUBELET_KEYS.iter().copied().collect();
    for (path, has_node_name) in [
        (repo().join("systemd/config.toml"), true),
        // In the DaemonSet node_name comes from $NODE_NAME (downward API).
        (daemonset_dir().join("base/config.toml"), false),
    ] {
        let cfg = toml_json(&path);
        let keys =
            |v: &Value| -> BTreeSet<String> { v.as_object().unwrap().keys().cloned().collect() };
        let mut want: BTreeSet<String> = top.iter().map(|s| s.to_string()).collect();
        if !has_node_name {
            want.remove("node_name");
        }
        assert_eq!(keys(&cfg), want, "{path:?}");
        let s: BTreeSet<String> = signer.iter().map(|s| s.to_string()).collect();
        let k: BTreeSet<String> = kubelet.iter().map(|s| s.to_string()).collect();
        assert_eq!(keys(&cfg["signer"]), s, "{path:?}");
        assert_eq!(keys(&cfg["kubelet"]), k, "{path:?}");
        let c: BTreeSet<String> = CONFIG_CSI_KEYS.iter().map(|s| s.to_string()).collect();
        assert_eq!(keys(&cfg["csi"]), c, "{path:?}");
        // Off: only daemonset/csi (csi_deploy.rs) turns the pod-token socket on.
        assert_eq!(cfg["csi"]["pod_token"], false, "{path:?}");
        assert!(
            keys(&cfg["spiffe"]).is_empty(),
            "{path:?}: SPIFFE is off by default"
        );
        assert_eq!(cfg["signer"]["kind"], "tpm");
        assert_eq!(cfg["token_ttl_seconds"], 60);
        assert_eq!(cfg["kubelet"]["insecure_skip_tls_verify"], false);
    }
}

// ------------------------------------------------------------- Containerfile --

/// Every shared library the built binaries load is in the image: shipped by a
/// package the Containerfile's runtime stage installs, or by debian:12-slim.
#[test]
fn containerfile_runtime_stage_installs_every_linked_library() {
    let containerfile = fs::read_to_string(daemonset_dir().join("Containerfile")).unwrap();
    let runtime = containerfile
        .split("FROM docker.io/library/debian:12-slim")
        .nth(1)
        .expect("runtime stage on debian:12-slim");
    let installed: BTreeSet<&str> = runtime
        .split("--no-install-recommends")
        .nth(1)
        .unwrap()
        .split("&&")
        .next()
        .unwrap()
        .split_whitespace()
        .filter(|w| *w != "\\")
        .collect();
    // Packages of the debian:12-slim base image itself.
    let base = ["libc6", "libgcc-s1"];
    let (jss, boot) = built_binaries();
    let mut needed = BTreeSet::new();
    for bin in [jss, boot] {
        let out = run_ok(Command::new("ldd").arg(bin));
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some((_, rest)) = line.split_once("=> ") else {
                continue;
            };
            let lib = rest.split_whitespace().next().unwrap();
            needed.insert(PathBuf::from(lib));
        }
    }
    // libtss2-tctildr loads the device TCTI at run time (dlopen), which ldd
    // does not show; the DaemonSet's tcti is device:/dev/tpmrm0.
    let tcti = Path::new("/usr/lib/x86_64-linux-gnu/libtss2-tcti-device.so.0");
    if needed
        .iter()
        .any(|p| p.to_string_lossy().contains("libtss2-tctildr"))
    {
        needed.insert(tcti.to_path_buf());
    }
    for lib in needed {
        let line = owning_package(&lib);
        let pkg = line.split(':').next().unwrap().trim();
        assert!(
            installed.contains(pkg) || base.contains(&pkg),
            "{lib:?} comes from {pkg}, which the Containerfile's runtime stage does not install \
             (it installs {installed:?})"
        );
    }
}

/// `dpkg-query -S` for a library, under the name dpkg recorded: with merged
/// /usr, ldd may say /lib/... where dpkg has /usr/lib/... or the other way
/// round, and a symlink's target may be the only name dpkg knows.
fn owning_package(lib: &Path) -> String {
    let shown = lib.display().to_string();
    let real = fs::canonicalize(lib).unwrap().display().to_string();
    let mut candidates = Vec::new();
    for p in [shown, real] {
        let toggled = match p.strip_prefix("/usr") {
            Some(rest) => rest.to_string(),
            None => format!("/usr{p}"),
        };
        candidates.push(p);
        candidates.push(toggled);
    }
    for c in &candidates {
        let out = run(Command::new("dpkg-query").arg("-S").arg(c));
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
    }
    panic!("no Debian package owns {lib:?} (tried {candidates:?})");
}

/// `--flags` in an argument list.
fn flags<'a>(args: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    args.into_iter()
        .filter(|a| a.starts_with("--"))
        .map(|a| a.split('=').next().unwrap().to_string())
        .collect()
}

#[test]
fn bootstrap_flags_in_units_and_daemonset_exist() {
    let (_, boot) = built_binaries();
    let out = run_ok(Command::new(boot).args(["node", "register", "--help"]));
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let known = |flag: &str| {
        help.lines()
            .any(|l| l.trim_start().split([' ', ',']).next() == Some(flag))
    };

    let unit = fs::read_to_string(repo().join("systemd/jss-bootstrap.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    let docs = yaml_docs(&render("base"));
    let ds = find(&docs, "DaemonSet", "jss");
    let init = &ds["spec"]["template"]["spec"]["initContainers"][0];
    for (what, used) in [
        ("jss-bootstrap.service", flags(exec.split_whitespace())),
        (
            "the DaemonSet's init container",
            flags(strings(&init["command"])),
        ),
    ] {
        assert!(used.len() >= 5, "{what}: {used:?}");
        for flag in used {
            assert!(
                known(&flag),
                "{what} passes {flag}, which `jss-bootstrap node register` does not know:\n{help}"
            );
        }
    }
    assert!(!known("--no-such-flag"));
}

// ------------------------------------------------- jss config and commands --

#[test]
fn shipped_configs_parse_with_the_daemons_parser() {
    use jss::config::Config;
    let systemd = repo().join("systemd/config.toml");
    let text = fs::read_to_string(&systemd).unwrap();
    let cfg = Config::parse(&text, &systemd, Some("node-1".into()))
        .unwrap_or_else(|e| panic!("{}: {e}", systemd.display()));
    // The unit's paths: StateDirectory=jss, the socket unit's ListenStream.
    assert_eq!(cfg.state_dir, Path::new("/var/lib/jss"));
    assert_eq!(cfg.socket, Path::new("/run/jss/jss.sock"));
    let socket_unit = fs::read_to_string(repo().join("systemd/jss.socket")).unwrap();
    assert!(
        socket_unit
            .lines()
            .any(|l| l.trim() == format!("ListenStream={}", cfg.socket.display())),
        "jss.socket does not listen on {}",
        cfg.socket.display()
    );

    // The DaemonSet's config: node_name and the kubelet's host come from
    // $NODE_NAME; without it the daemon refuses to start.
    let ds = daemonset_dir().join("base/config.toml");
    let text = fs::read_to_string(&ds).unwrap();
    let cfg = Config::parse(&text, &ds, Some("node-1".into()))
        .unwrap_or_else(|e| panic!("{}: {e}", ds.display()));
    assert_eq!(cfg.node_name, "node-1");
    assert_eq!(cfg.kubelet.url, "https://node-1:10250");
    assert_eq!(cfg.socket, Path::new("/run/jss/jss.sock"));
    assert_eq!(cfg.state_dir, Path::new("/var/lib/jss"));
    let e = Config::parse(&text, &ds, None).unwrap_err().to_string();
    assert!(e.contains("NODE_NAME"), "{e}");
    // The parser is not lenient: a misspelt key in the shipped file fails.
    let typo = text.replace("token_ttl_seconds", "token_tll_seconds");
    assert!(Config::parse(&typo, &ds, Some("node-1".into())).is_err());
}

/// `jss <sub> <flags>` as written in a unit, manifest or script: the
/// subcommand and its `--flags`.
fn jss_invocations(words: &[&str]) -> Vec<(String, BTreeSet<String>)> {
    let mut out = Vec::new();
    for (i, w) in words.iter().enumerate() {
        if *w == "jss" || w.ends_with("/jss") {
            let sub = words[i + 1].to_string();
            let args = words[i + 2..]
                .iter()
                .take_while(|a| !["&&", "||", ";", "|", ">", "<"].contains(*a))
                .copied();
            out.push((sub, flags(args)));
        }
    }
    out
}

#[test]
fn jss_subcommands_and_flags_in_units_and_manifests_exist() {
    let (jss, _) = built_binaries();
    let unit = fs::read_to_string(repo().join("systemd/jss.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    let mut uses: Vec<(String, String, BTreeSet<String>)> = Vec::new();
    let mut add = |what: &str, words: Vec<&str>| {
        let found = jss_invocations(&words);
        assert!(!found.is_empty(), "{what}: no jss command in {words:?}");
        for (sub, f) in found {
            uses.push((what.to_string(), sub, f));
        }
    };
    add("jss.service", exec.split_whitespace().collect());

    let docs = yaml_docs(&render("base"));
    let ds = find(&docs, "DaemonSet", "jss");
    let main = &ds["spec"]["template"]["spec"]["containers"][0];
    add("the DaemonSet's container", strings(&main["command"]));
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        add(probe, strings(&main[probe]["exec"]["command"]));
    }
    let app = yaml_docs(&render("example-app"));
    let pod = find(&app, "Pod", "example-app");
    for c in pod["spec"]["initContainers"].as_array().unwrap() {
        add("the example app", strings(&c["command"]));
    }
    let csi = yaml_docs(&render("csi"));
    let ds = find(&csi, "DaemonSet", "jss");
    let plugin = ds["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "csi")
        .unwrap();
    add("the CSI plugin's container", strings(&plugin["command"]));
    let example = yaml_docs(&render("csi/example"));
    let pod = find(&example, "Pod", "csi-example");
    add(
        "the CSI example pod",
        strings(&pod["spec"]["containers"][0]["command"]),
    );
    let containerfile = fs::read_to_string(daemonset_dir().join("Containerfile")).unwrap();
    let cmd = containerfile
        .lines()
        .find_map(|l| l.strip_prefix("CMD "))
        .unwrap();
    let cmd: Vec<String> = serde_json::from_str(cmd).unwrap();
    add(
        "the Containerfile",
        cmd.iter().map(String::as_str).collect(),
    );

    let subs: BTreeSet<&str> = uses.iter().map(|(_, s, _)| s.as_str()).collect();
    assert_eq!(
        subs,
        BTreeSet::from(["csi", "health", "secrets", "serve", "token"]),
        "{uses:?}"
    );
    for (what, sub, used) in &uses {
        // An unknown subcommand makes --help fail.
        let out = run_ok(Command::new(jss).args([sub.as_str(), "--help"]));
        let help = String::from_utf8_lossy(&out.stdout).into_owned();
        let known = |flag: &str| {
            help.lines()
                .any(|l| l.trim_start().split([' ', ',']).next() == Some(flag))
        };
        assert!(!used.is_empty(), "{what}: jss {sub} without flags");
        for flag in used {
            assert!(
                known(flag),
                "{what} passes {flag}, which `jss {sub}` does not know:\n{help}"
            );
        }
        assert!(!known("--no-such-flag"));
    }
    let bad = run(Command::new(jss).args(["no-such-subcommand", "--help"]));
    assert!(!bad.status.success());
}
