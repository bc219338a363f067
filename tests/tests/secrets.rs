//! The workload side (issue 14) against real parts: a swtpm-held node key
//! registered in a real OpenBao, `jss serve`, the kubelet stand-in, and
//! `jss secrets` / `jss token --out` running as processes in the pods'
//! kubepods cgroups. No timing is asserted: every wait has a generous
//! deadline and fails with what it saw.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use jss_tests::bao::Bao;
use jss_tests::cluster::{CLUSTER, Cluster, DEMO_NS, MOUNT, PodDef, REGION};
use jss_tests::watch::{Tail, read, signal, wait_for};

/// The annotation from the TSI article, verbatim (the demo uses it too).
const ARTICLE: &str = include_str!("../fixtures/tsi-article.secrets.yaml");

fn demo_pod() -> PodDef {
    PodDef::tsi_demo()
}

fn all_path(p: &PodDef) -> String {
    p.ti_demo_all("mysecret1")
}

fn ri_path(p: &PodDef) -> String {
    p.ti_demo_ri("mysecret2")
}

fn other_pod() -> PodDef {
    PodDef::new(
        "other-team",
        "mybusybox-5c7f9d8b6-qx2lp",
        "mybusybox",
        "docker.io/library/busybox:1.37.0",
    )
}

fn file1(out: &Path) -> PathBuf {
    out.join("mysecrets/myubuntu-mysecret1/mysecret1")
}

fn file2(out: &Path) -> PathBuf {
    out.join("mysecrets/myubuntu-mysecret2/mysecret2")
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn once_writes_the_articles_secrets_and_refuses_another_pod() {
    let (demo, other) = (demo_pod(), other_pod());
    let c = Cluster::start(&["--role", "demo"], "", &[&demo, &other]);
    c.put(&all_path(&demo), &["username=admin", "password=s3cret-all"]);
    c.put(&ri_path(&demo), &["value=s3cret-ri"]);
    let spec = c.path().join("tsi.secrets");
    std::fs::write(&spec, ARTICLE).unwrap();
    let spec = spec.display().to_string();

    // The demo pod: both files hold the KV data as one JSON object.
    let out = c.mkdir("demo-out");
    let o_s = out.display().to_string();
    let pod = c.pod(&demo);
    let o = c
        .spawn_jss(
            &pod,
            &["secrets", "--once", "--spec", &spec, "--out", &o_s],
            &[],
        )
        .wait_with_output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&read(&file1(&out)).unwrap()).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"username": "admin", "password": "s3cret-all"})
    );
    assert_eq!(read(&file2(&out)).unwrap(), r#"{"value":"s3cret-ri"}"#);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(file1(&out)).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o644);
    assert!(!err.contains("s3cret"), "a secret value in the log:\n{err}");

    // Another namespace and images: a token and a login, but its paths are
    // built from its own claims (Vault's metadata), where nothing is kept.
    let out2 = c.mkdir("other-out");
    let o2_s = out2.display().to_string();
    let opod = c.pod(&other);
    let o = c
        .spawn_bin(
            &opod,
            "jss-agent",
            &["secrets", "--once", "--spec", &spec, "--out", &o2_s],
            &[],
        )
        .wait_with_output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    for name in ["mysecret1", "mysecret2"] {
        let line = err
            .lines()
            .find(|l| l.starts_with(&format!("secret {name}:")))
            .unwrap_or_else(|| panic!("no line for {name} in:\n{err}"));
        assert!(
            line.contains("no such secret") && line.contains(&other.images()),
            "{line}"
        );
        assert!(!line.contains(&demo.images()), "{line}");
    }
    assert!(err.contains("2 of 2 secrets not written"), "{err}");
    assert!(files_under(&out2).is_empty(), "{:?}", files_under(&out2));
}

/// `jss-agent` is what every injected pod runs: it must not load the TPM
/// stack (libtss2-*, and the libcrypto libtss2-esys links), whose pages
/// would be most of a sidecar's resident memory.
#[test]
fn jss_agent_loads_no_tpm_library() {
    let o = std::process::Command::new("readelf")
        .args(["--dynamic", "--wide"])
        .arg(jss_tests::daemon::bin("jss-agent"))
        .output()
        .expect("readelf (binutils) is needed");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dynamic = String::from_utf8_lossy(&o.stdout);
    let needed: Vec<&str> = dynamic.lines().filter(|l| l.contains("(NEEDED)")).collect();
    assert!(!needed.is_empty(), "no NEEDED entries read:\n{dynamic}");
    for lib in ["libtss2", "libcrypto"] {
        assert!(
            needed.iter().all(|l| !l.contains(lib)),
            "jss-agent needs {lib}:\n{}",
            needed.join("\n")
        );
    }
    // The reference: the daemon's binary does need them.
    let o = std::process::Command::new("readelf")
        .args(["--dynamic", "--wide"])
        .arg(jss_tests::daemon::bin("jss"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("libtss2-esys"));
}

#[test]
fn bad_specs_are_refused_before_anything_is_fetched() {
    // No JSS, no Vault: a spec problem must be reported before either is asked.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let cases = [
        (
            "escapes",
            "- tsi.secret/name: \"s\"\n  tsi.secret/role: \"demo\"\n  tsi.secret/vault-path: \"secret/ti-demo-ri\"\n  tsi.secret/local-path: \"../../etc\"\n",
            "\"s\" (item 1)",
            "..",
        ),
        (
            "absolute",
            "- tsi.secret/name: \"ok\"\n  tsi.secret/role: \"demo\"\n  tsi.secret/vault-path: \"secret/ti-demo-ri\"\n  tsi.secret/local-path: \"a\"\n- tsi.secret/name: \"abs\"\n  tsi.secret/role: \"demo\"\n  tsi.secret/vault-path: \"secret/ti-demo-ri\"\n  tsi.secret/local-path: \"/etc/cron.d\"\n",
            "\"abs\" (item 2)",
            "absolute",
        ),
        (
            "norole",
            "- tsi.secret/name: \"norole\"\n  tsi.secret/vault-path: \"secret/ti-demo-ri\"\n  tsi.secret/local-path: \"a\"\n",
            "\"norole\" (item 1)",
            "no tsi.secret/role",
        ),
        (
            "yaml",
            "- tsi.secret/name: [unclosed\n",
            "YAML",
            "tsi.secrets",
        ),
    ];
    for (what, text, item, why) in cases {
        let spec = dir.path().join(what);
        std::fs::write(&spec, text).unwrap();
        let o = Command::new(jss_tests::daemon::bin("jss"))
            .args(["secrets", "--once", "--spec"])
            .arg(&spec)
            .arg("--out")
            .arg(&out)
            .env("JSS_SOCKET", dir.path().join("no.sock"))
            .env("VAULT_ADDR", "http://127.0.0.1:9")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{what}: {err}");
        assert!(err.contains(item) && err.contains(why), "{what}: {err}");
        assert!(
            !err.contains("JSS") && !err.contains("127.0.0.1:9"),
            "{what}: asked JSS or Vault: {err}"
        );
        assert!(files_under(&out).is_empty(), "{what}: wrote files");
    }
}

/// The accessor of the last Vault token the process logged.
fn last_accessor(log: &str) -> String {
    log.lines()
        .filter(|l| l.contains("logged in to Vault"))
        .filter_map(|l| l.split("accessor=").nth(1))
        .filter_map(|r| r.split_whitespace().next())
        .next_back()
        .unwrap_or_else(|| panic!("no login logged:\n{log}"))
        .to_string()
}

fn accessor_alive(bao: &Bao, accessor: &str) -> bool {
    bao.run(
        jss_tests::bao::ROOT_TOKEN,
        &["token", "lookup", "-accessor", accessor],
    )
    .status
    .success()
}

/// A cluster (`cluster init` with `init_args` and role demo) whose demo pod
/// runs the sidecar on the article's annotation, refreshing every second,
/// with `extra` flags; mysecret1 starts as `one`, mysecret2 as `ri`.
struct ArticleSidecar {
    c: Cluster,
    demo: PodDef,
    out: PathBuf,
    side: Child,
    log: Tail,
    _pod: jss_tests::pods::PodProcess,
}

fn article_sidecar(init_args: &[&str], extra: &[&str]) -> ArticleSidecar {
    let demo = demo_pod();
    let mut init = vec!["--role", "demo"];
    init.extend_from_slice(init_args);
    let c = Cluster::start(&init, "", &[&demo]);
    c.put(&all_path(&demo), &["value=one"]);
    c.put(&ri_path(&demo), &["value=ri"]);
    let spec = c.path().join("tsi.secrets");
    std::fs::write(&spec, ARTICLE).unwrap();
    let out = c.mkdir("out");
    let pod = c.pod(&demo);
    let mut args = vec![
        "secrets",
        "--spec",
        spec.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--refresh-seconds",
        "1",
    ];
    args.extend_from_slice(extra);
    // As the injector runs it: `jss-agent`, the workload side alone.
    let mut side = c.spawn_bin(&pod, "jss-agent", &args, &[]);
    let log = Tail::of(&mut side);
    ArticleSidecar {
        c,
        demo,
        out,
        side,
        log,
        _pod: pod,
    }
}

#[test]
fn sidecar_follows_changes_revocations_and_outages() {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    let changes = dir.path().join("changes");
    let on_change = format!("echo changed >> {}", changes.display());
    let mut sc = article_sidecar(
        &[],
        &[
            "--retry-seconds",
            "1",
            "--timeout-seconds",
            "2",
            "--ready-file",
            ready.to_str().unwrap(),
            "--on-change",
            &on_change,
        ],
    );
    let (c, demo, out, log) = (&sc.c, sc.demo.clone(), sc.out.clone(), sc.log.clone());
    let logf = || log.text();
    wait_for(60, "the ready file", &logf, || ready.exists());
    assert_eq!(read(&file1(&out)).unwrap(), r#"{"value":"one"}"#);
    assert_eq!(read(&file2(&out)).unwrap(), r#"{"value":"ri"}"#);

    // Changed in OpenBao: the file follows, and --on-change runs.
    c.put(&all_path(&demo), &["value=two"]);
    wait_for(60, "the changed secret", &logf, || {
        read(&file1(&out)).as_deref() == Some(r#"{"value":"two"}"#)
    });
    wait_for(30, "two on-change runs", &logf, || {
        read(&changes).is_some_and(|t| t.lines().count() >= 2)
    });

    // Deleted in OpenBao: the file is removed (TSI's revocation).
    c.bao.ok(&["kv", "metadata", "delete", &ri_path(&demo)]);
    wait_for(60, "the deleted secret's file to go", &logf, || {
        !file2(&out).exists()
    });
    assert_eq!(read(&file1(&out)).unwrap(), r#"{"value":"two"}"#);

    // OpenBao frozen: requests time out; files stay exactly as they are.
    let before = log.count("its file is left as it is");
    signal(c.bao.pid(), "STOP");
    wait_for(90, "failed passes while OpenBao is frozen", &logf, || {
        log.count("its file is left as it is") >= before + 2
    });
    assert_eq!(read(&file1(&out)).unwrap(), r#"{"value":"two"}"#);
    assert!(!file2(&out).exists());
    assert!(sc.side.try_wait().unwrap().is_none(), "{}", log.text());
    signal(c.bao.pid(), "CONT");
    // Back: changes and a re-created secret are picked up again.
    c.put(&all_path(&demo), &["value=three"]);
    c.put(&ri_path(&demo), &["value=ri-again"]);
    wait_for(90, "recovery after the outage", &logf, || {
        read(&file1(&out)).as_deref() == Some(r#"{"value":"three"}"#)
            && read(&file2(&out)).as_deref() == Some(r#"{"value":"ri-again"}"#)
    });

    // SIGTERM: the sidecar revokes its Vault token and exits 0.
    let accessor = last_accessor(&log.text());
    assert!(accessor_alive(&c.bao, &accessor), "{accessor}");
    signal(sc.side.id(), "TERM");
    let status = sc.side.wait().unwrap();
    std::thread::sleep(Duration::from_millis(200)); // the reader thread drains
    assert!(status.success(), "{status}\n{}", log.text());
    assert!(
        !accessor_alive(&c.bao, &accessor),
        "token {accessor} still valid after SIGTERM\n{}",
        log.text()
    );
    let text = log.text();
    for v in ["\"one\"", "two", "three", "ri-again"] {
        assert!(
            !text.contains(v),
            "a secret value ({v}) in the log:\n{text}"
        );
    }
}

#[test]
fn exec_puts_secrets_in_the_environment_or_does_not_run() {
    let demo = demo_pod();
    let c = Cluster::start(&[], "", &[&demo]);
    let db = format!("secret/ti-demo-ri/{REGION}/{}/db", demo.images());
    c.put(&db, &["password=s3cret-db", "user=app"]);
    // A KV v1 mount too, which the role's ti-demo-ri policy is extended to read.
    c.bao
        .ok(&["secrets", "enable", "-path=kv1", "-version=1", "kv"]);
    c.put("kv1/app/legacy", &["token=v1-value"]);
    let policy = c.bao.ok(&["policy", "read", "ti-demo-ri"]);
    let file = c.path().join("ri.hcl");
    std::fs::write(
        &file,
        format!("{policy}\npath \"kv1/app/*\" {{\n  capabilities = [\"read\"]\n}}\n"),
    )
    .unwrap();
    c.bao
        .ok(&["policy", "write", "ti-demo-ri", file.to_str().unwrap()]);
    let pod = c.pod(&demo);
    let good = format!("vault:{db}#password");

    let o = c
        .spawn_jss(
            &pod,
            &[
                "secrets",
                "exec",
                "--",
                "printenv",
                "DB_PASSWORD",
                "DB_USER",
                "LEGACY",
                "PLAIN",
            ],
            &[
                ("DB_PASSWORD", &good),
                ("DB_USER", &format!("vault:{db}#user")),
                ("LEGACY", "vault:kv1/app/legacy#token"),
                ("PLAIN", "left alone"),
            ],
        )
        .wait_with_output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "s3cret-db\napp\nv1-value\nleft alone\n"
    );
    assert!(!err.contains("s3cret-db"), "{err}");

    // One reference that cannot be resolved: nothing runs, the variable and
    // path are named, no value is printed.
    let marker = c.path().join("ran");
    let missing = format!("secret/ti-demo-ri/{REGION}/{}/nope", demo.images());
    for (var, reference, why) in [
        ("API_KEY", format!("vault:{missing}#key"), "no such secret"),
        ("DB_PASSWORD", format!("vault:{db}#nokey"), "no such key"),
        (
            "DB_PASSWORD",
            "vault:secret/ti-demo-all/x/y#k".to_string(),
            "403",
        ),
    ] {
        let o = c
            .spawn_jss(
                &pod,
                &["secrets", "exec", "--", "touch", marker.to_str().unwrap()],
                &[("GOOD", &good), (var, &reference)],
            )
            .wait_with_output()
            .unwrap();
        let out = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!o.status.success(), "{var}: {out}");
        assert!(!marker.exists(), "{var}: the command ran");
        assert!(
            out.contains(&format!("${var}")) && out.contains(why),
            "{out}"
        );
        assert!(!out.contains("s3cret-db"), "a value printed: {out}");
    }
}

#[test]
fn constraints_items_use_tsi_compat_roles_and_paths() {
    let demo = demo_pod();
    let c = Cluster::start(&["--tsi-compat"], "", &[&demo]);
    let imgs = demo.images();
    c.put(&format!("secret/tsi-r/{REGION}/r1"), &["v=r"]);
    c.put(
        &format!("secret/tsi-rcni/{REGION}/{CLUSTER}/{DEMO_NS}/{imgs}/rcni1"),
        &["v=rcni"],
    );
    let spec = c.path().join("tsi.secrets");
    std::fs::write(
        &spec,
        r#"- tsi.secret/name: "r1"
  tsi.secret/constraints: "region"
  tsi.secret/local-path: "/tsi-secrets/c"
- tsi.secret/name: "rcni1"
  tsi.secret/constraints: "region,cluster-name,namespace,images"
  tsi.secret/local-path: "tsi-secrets/c"
"#,
    )
    .unwrap();
    let out = c.mkdir("out");
    let pod = c.pod(&demo);
    let o = c
        .spawn_jss(
            &pod,
            &[
                "secrets",
                "--once",
                "--format",
                "raw",
                "--spec",
                spec.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            &[],
        )
        .wait_with_output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(read(&out.join("c/r1")).unwrap(), "r");
    assert_eq!(read(&out.join("c/rcni1")).unwrap(), "rcni");
    // The roles carry only their own policy: tsi-role-r cannot read rcni paths.
    let role: serde_json::Value = serde_json::from_str(&c.bao.ok(&[
        "read",
        "-format=json",
        &format!("auth/{MOUNT}/role/tsi-role-r"),
    ]))
    .unwrap();
    assert_eq!(role["data"]["token_policies"], serde_json::json!(["tsi-r"]));
}

#[test]
fn sidecar_logs_in_again_when_its_vault_token_runs_out() {
    // Vault tokens of 4 s that cannot be renewed past that: the sidecar must
    // replace them with new logins (fresh JSS tokens) and keep following.
    let mut sc = article_sidecar(&["--token-ttl", "4s"], &[]);
    let (c, demo, out, log) = (&sc.c, sc.demo.clone(), sc.out.clone(), sc.log.clone());
    let logf = || log.text();
    wait_for(60, "three logins", &logf, || {
        log.count("logged in to Vault") >= 3
    });
    c.put(&all_path(&demo), &["value=two"]);
    wait_for(60, "the change after re-logins", &logf, || {
        read(&file1(&out)).as_deref() == Some(r#"{"value":"two"}"#)
    });
    assert_eq!(read(&file2(&out)).unwrap(), r#"{"value":"ri"}"#);
    let text = log.text();
    assert!(!text.contains("secret revoked"), "{text}");
    assert!(!text.contains("could not revoke"), "{text}");
    signal(sc.side.id(), "TERM");
    assert!(sc.side.wait().unwrap().success(), "{}", log.text());
}
