//! systemd/: the units verified and analysed by systemd-analyze, and the
//! user and directories sysusers and tmpfiles create.

use super::*;

const UNITS: &[&str] = &[
    "jss.service",
    "jss.socket",
    "jss-bootstrap.service",
    "jss-prune.service",
    "jss-prune.timer",
];

/// A throw-away root for `systemd-analyze --root`.
///
/// Why a root and not the host: `verify` checks that every Exec*= binary
/// exists and is executable, and /usr/bin/jss is not installed on a build
/// machine. Rewriting ExecStart= in a generated copy would verify a unit we do
/// not ship; installing into the host's /usr/bin would change the machine.
/// So the units go in byte for byte, next to the real binaries built from this
/// tree at the paths the units name (/usr/bin/jss, /usr/bin/jss-bootstrap),
/// plus the host's own units (sysinit.target, ...) and the host's copy of any
/// other program a unit runs (/bin/kill for ExecReload=).
fn systemd_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    fs::create_dir_all(r.join("usr/bin")).unwrap();
    fs::create_dir_all(r.join("usr/lib/systemd/system")).unwrap();
    fs::create_dir_all(r.join("etc/systemd/system")).unwrap();
    // Merged /usr, as on Debian 12.
    for d in ["bin", "sbin"] {
        std::os::unix::fs::symlink("usr/bin", r.join(d)).unwrap();
    }
    for entry in fs::read_dir("/usr/lib/systemd/system")
        .expect("/usr/lib/systemd/system: is systemd installed?")
    {
        let entry = entry.unwrap();
        let path = entry.path();
        let dest = r.join("usr/lib/systemd/system").join(entry.file_name());
        let meta = fs::symlink_metadata(&path).unwrap();
        if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&path).unwrap(), dest).unwrap();
        } else if meta.is_file() {
            fs::copy(&path, dest).unwrap();
        }
    }
    let (jss, boot) = built_binaries();
    let units_dir = repo().join("systemd");
    for unit in UNITS {
        let src = units_dir.join(unit);
        let body = fs::read_to_string(&src).unwrap();
        fs::write(r.join("etc/systemd/system").join(unit), &body).unwrap();
        for line in body.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            if !key.starts_with("Exec") {
                continue;
            }
            let prog = value
                .trim_start_matches(['@', '-', ':', '+', '!'])
                .split_whitespace()
                .next()
                .unwrap();
            assert!(
                prog.starts_with('/'),
                "{unit}: {key}= should name an absolute path"
            );
            let dest = r.join(prog.trim_start_matches('/'));
            let src = match prog {
                "/usr/bin/jss" => jss.clone(),
                "/usr/bin/jss-bootstrap" => boot.clone(),
                other => PathBuf::from(other),
            };
            fs::create_dir_all(dest.parent().unwrap()).unwrap();
            fs::copy(&src, &dest).unwrap_or_else(|e| panic!("{src:?} -> {dest:?}: {e}"));
        }
    }
    assert!(r.join("usr/bin/jss").is_file() && r.join("usr/bin/jss-bootstrap").is_file());
    root
}

fn verify(root: &Path) -> Output {
    run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .args(UNITS))
}

#[test]
fn systemd_units_verify_cleanly() {
    let root = systemd_root();
    let out = verify(root.path());
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}",
        text(&out)
    );
    // verify exits 0 on many mistakes (unknown keys, bad values) and only
    // prints them, so any output at all is a failure.
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty(),
        "systemd-analyze verify complained: {}",
        text(&out)
    );

    // The same check does catch a mistake: a unit with an unknown key and a
    // bad value, and one whose ExecStart= binary is missing.
    let unit = root.path().join("etc/systemd/system/jss.service");
    let good = fs::read_to_string(&unit).unwrap();
    fs::write(
        &unit,
        good.replace("ProtectProc=default", "ProtectProc=bogus") + "NoSuchKey=1\n",
    )
    .unwrap();
    let out = verify(root.path());
    let all = text(&out);
    assert!(all.contains("bogus") && all.contains("NoSuchKey"), "{all}");
    fs::write(&unit, &good).unwrap();
    fs::remove_file(root.path().join("usr/bin/jss")).unwrap();
    let out = verify(root.path());
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("/usr/bin/jss"), "{}", text(&out));
}

#[test]
fn systemd_units_wire_socket_bootstrap_and_hardening() {
    let dir = repo().join("systemd");
    let service = fs::read_to_string(dir.join("jss.service")).unwrap();
    let socket = fs::read_to_string(dir.join("jss.socket")).unwrap();
    let boot = fs::read_to_string(dir.join("jss-bootstrap.service")).unwrap();
    let has = |unit: &str, line: &str| unit.lines().any(|l| l.trim() == line);
    for line in [
        "Type=notify",
        "ExecStart=/usr/bin/jss serve --config /etc/jss/config.toml",
        "User=jss",
        "SupplementaryGroups=tss",
        "DeviceAllow=/dev/tpmrm0 rw",
        "StateDirectory=jss",
        "RuntimeDirectory=jss",
        // Stopping jss.service must not delete the socket jss.socket owns.
        "RuntimeDirectoryPreserve=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter=@system-service",
        // Attestation reads other users' /proc/<pid>: never hidepid.
        "ProtectProc=default",
        "Requires=jss-bootstrap.service",
        "After=jss-bootstrap.service",
        "Requires=jss.socket",
    ] {
        assert!(has(&service, line), "jss.service lacks `{line}`");
    }
    assert!(!has(&service, "ProtectProc=invisible"));
    for line in [
        "ListenStream=/run/jss/jss.sock",
        "SocketMode=0666",
        "Service=jss.service",
    ] {
        assert!(has(&socket, line), "jss.socket lacks `{line}`");
    }
    for line in [
        "Type=oneshot",
        "ConditionPathExists=!/var/lib/jss/chain.pem",
        "ConditionPathExists=!/var/lib/jss/current",
        "Before=jss.service",
        "LoadCredential=vault-token:/etc/jss/vault-token",
    ] {
        assert!(has(&boot, line), "jss-bootstrap.service lacks `{line}`");
    }
    let exec = boot
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    assert!(
        exec.starts_with("/usr/bin/jss-bootstrap node register --state-dir /var/lib/jss "),
        "{exec}"
    );
    assert!(exec.contains("--token-file %d/vault-token"), "{exec}");
    // The daemon's socket settings agree with the socket unit.
    let cfg = toml_json(&dir.join("config.toml"));
    assert_eq!(cfg["socket"], "/run/jss/jss.sock");
    assert_eq!(cfg["socket_mode"], "0666");
    assert_eq!(cfg["state_dir"], "/var/lib/jss");
}

fn exposure(root: &Path, unit: &str) -> f64 {
    let out = run_ok(
        Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(format!("--root={}", root.display()))
            .arg(unit),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let marker = format!("Overall exposure level for {unit}: ");
    let rest = stdout
        .lines()
        .find_map(|l| l.split_once(&marker).map(|(_, r)| r))
        .unwrap_or_else(|| panic!("no exposure figure in: {}", text(&out)));
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn systemd_security_exposure_is_low_and_recorded() {
    let root = systemd_root();
    let jss = exposure(root.path(), "jss.service");
    let boot = exposure(root.path(), "jss-bootstrap.service");
    eprintln!("exposure: jss.service {jss}, jss-bootstrap.service {boot}");
    assert!(
        jss <= MAX_EXPOSURE,
        "jss.service exposure {jss} > {MAX_EXPOSURE}"
    );
    assert!(
        boot <= MAX_EXPOSURE,
        "jss-bootstrap.service exposure {boot} > {MAX_EXPOSURE}"
    );
    // The README states the measured figure; keep it true.
    let readme = fs::read_to_string(repo().join("README.md")).unwrap();
    let line = format!("Overall exposure level for jss.service: {jss:.1}");
    assert!(readme.contains(&line), "README.md should record `{line}`");
}

#[test]
fn sysusers_and_tmpfiles_create_the_user_and_directories() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    fs::create_dir_all(r.join("etc")).unwrap();
    let dir = repo().join("systemd");
    run_ok(
        Command::new("systemd-sysusers")
            .arg(format!("--root={}", r.display()))
            .arg(dir.join("sysusers.d/jss.conf")),
    );
    let passwd = fs::read_to_string(r.join("etc/passwd")).unwrap();
    let jss: Vec<&str> = passwd
        .lines()
        .find(|l| l.starts_with("jss:"))
        .expect("no jss user")
        .split(':')
        .collect();
    assert_eq!(jss[6], "/usr/sbin/nologin");
    let uid: u32 = jss[2].parse().unwrap();
    assert!(uid < 1000, "jss must be a system user, got uid {uid}");
    let group = fs::read_to_string(r.join("etc/group")).unwrap();
    let tss = group.lines().find(|l| l.starts_with("tss:")).unwrap();
    assert!(
        tss.rsplit(':')
            .next()
            .unwrap()
            .split(',')
            .any(|m| m == "jss"),
        "jss is not in group tss: {tss}"
    );

    run_ok(
        Command::new("systemd-tmpfiles")
            .arg(format!("--root={}", r.display()))
            .arg("--create")
            .arg(dir.join("tmpfiles.d/jss.conf")),
    );
    for (path, mode, owner) in [
        ("var/lib/jss", 0o700, uid),
        ("run/jss", 0o755, uid),
        ("etc/jss", 0o750, 0),
    ] {
        let meta = fs::metadata(r.join(path)).unwrap();
        assert!(meta.is_dir(), "{path}");
        assert_eq!(meta.permissions().mode() & 0o7777, mode, "{path} mode");
        assert_eq!(meta.uid(), owner, "{path} owner");
    }
}
