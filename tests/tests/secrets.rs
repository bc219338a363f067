//! The workload side (issue 14) against real parts: a swtpm-held node key
//! registered in a real OpenBao, `jss serve`, the kubelet stand-in, and
//! `jss secrets` / `jss token --out` running as processes in the pods'
//! kubepods cgroups. No timing is asserted: every wait has a generous
//! deadline and fails with what it saw.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jss_tests::bao::Bao;
use jss_tests::cluster::{CLUSTER, Cluster, MOUNT, PodDef, REGION};

const DEMO_NS: &str = "trusted-identity";
const DEMO_IMG: &str = "docker.io/library/ubuntu:24.04";

/// The annotation from the TSI article, verbatim (the demo uses it too).
const ARTICLE: &str = include_str!("../fixtures/tsi-article.secrets.yaml");

fn demo_pod() -> PodDef {
    PodDef::new(DEMO_NS, "myubuntu-698b8cb4b-n6xgk", "myubuntu", DEMO_IMG)
}

fn other_pod() -> PodDef {
    PodDef::new(
        "other-team",
        "mybusybox-5c7f9d8b6-qx2lp",
        "mybusybox",
        "docker.io/library/busybox:1.37.0",
    )
}

fn all_path(p: &PodDef) -> String {
    format!(
        "secret/ti-demo-all/{REGION}/{CLUSTER}/{}/{}/mysecret1",
        p.namespace,
        p.images()
    )
}

fn ri_path(p: &PodDef) -> String {
    format!("secret/ti-demo-ri/{REGION}/{}/mysecret2", p.images())
}

fn file1(out: &Path) -> PathBuf {
    out.join("mysecrets/myubuntu-mysecret1/mysecret1")
}

fn file2(out: &Path) -> PathBuf {
    out.join("mysecrets/myubuntu-mysecret2/mysecret2")
}

/// Waits up to `secs` for `ok`; panics naming `what` and showing `log`.
fn wait_for(secs: u64, what: &str, log: &dyn Fn() -> String, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "gave up waiting for {what}; log:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Collects a child's stderr as it runs.
#[derive(Clone, Default)]
struct Tail(Arc<Mutex<String>>);

impl Tail {
    fn of(child: &mut Child) -> Self {
        let t = Tail::default();
        let mut err = child.stderr.take().unwrap();
        let buf = t.0.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = err.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });
        t
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    fn count(&self, needle: &str) -> usize {
        self.text().matches(needle).count()
    }
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
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

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

fn put(bao: &Bao, path: &str, kv: &[&str]) {
    let mut args = vec!["kv", "put", path];
    args.extend_from_slice(kv);
    bao.ok(&args);
}

#[test]
fn once_writes_the_articles_secrets_and_refuses_another_pod() {
    let (demo, other) = (demo_pod(), other_pod());
    let c = Cluster::start(&["--role", "demo"], "", &[&demo, &other]);
    put(
        &c.bao,
        &all_path(&demo),
        &["username=admin", "password=s3cret-all"],
    );
    put(&c.bao, &ri_path(&demo), &["value=s3cret-ri"]);
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
        .spawn_jss(
            &opod,
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
    put(&c.bao, &all_path(&demo), &["value=one"]);
    put(&c.bao, &ri_path(&demo), &["value=ri"]);
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
    let mut side = c.spawn_jss(&pod, &args, &[]);
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
    put(&c.bao, &all_path(&demo), &["value=two"]);
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
    put(&c.bao, &all_path(&demo), &["value=three"]);
    put(&c.bao, &ri_path(&demo), &["value=ri-again"]);
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
fn openbao_agent_logs_in_with_a_jss_token_file_and_keeps_rendering() {
    // Short lives everywhere, so expiry happens within the test: JSS tokens
    // of 10 s (dead 20 s after issue with the role's 10 s leeway) and Vault
    // tokens of 10 s that cannot be renewed past that.
    let demo = demo_pod();
    let c = Cluster::start(
        &["--role", "demo", "--token-ttl", "10s"],
        "token_ttl_seconds = 10",
        &[&demo],
    );
    put(&c.bao, &all_path(&demo), &["value=v1"]);
    let tokdir = c.mkdir("jwt");
    let token_file = tokdir.join("token");
    let pod = c.pod(&demo);
    let mut writer = c.spawn_jss(
        &pod,
        &["token", "--out", token_file.to_str().unwrap(), "--refresh"],
        &[],
    );
    let wlog = Tail::of(&mut writer);
    let wlogf = || wlog.text();
    wait_for(60, "the token file", &wlogf, || token_file.exists());
    let first = std::fs::read_to_string(&token_file).unwrap();
    let first_exp = jss::token::decode_unverified(&first).unwrap().1["exp"]
        .as_u64()
        .unwrap();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&token_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o644);

    // A reader that deletes the file (an agent's default): it comes back.
    std::fs::remove_file(&token_file).unwrap();
    wait_for(
        30,
        "the deleted token file to be written again",
        &wlogf,
        || token_file.exists(),
    );

    let rendered = c.path().join("rendered");
    let agent_cfg = c.path().join("agent.hcl");
    std::fs::write(
        &agent_cfg,
        format!(
            r#"vault {{
  address = "{addr}"
}}
auto_auth {{
  method "jwt" {{
    mount_path = "auth/{MOUNT}"
    config = {{
      path = "{jwt}"
      role = "demo"
      remove_jwt_after_reading = false
    }}
  }}
}}
template_config {{
  static_secret_render_interval = "1s"
}}
template {{
  destination = "{out}"
  contents = "{{{{ with secret \"{secret}\" }}}}{{{{ .Data.data.value }}}}{{{{ end }}}}"
}}
"#,
            addr = c.bao.addr(),
            jwt = token_file.display(),
            out = rendered.display(),
            secret = all_path(&demo).replacen("secret/", "secret/data/", 1),
        ),
    )
    .unwrap();
    let mut agent = Command::new(c.bao.bin())
        .args(["agent", "-config"])
        .arg(&agent_cfg)
        .env_remove("VAULT_TOKEN")
        .env_remove("BAO_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let alog = Tail::of(&mut agent);
    let both = || format!("agent:\n{}\njss token:\n{}", alog.text(), wlog.text());
    wait_for(60, "the agent's first render", &both, || {
        read(&rendered).as_deref() == Some("v1")
    });

    // Past the first token's death (exp + 10 s leeway) the agent has had to
    // log in again with later tokens from the file; it still renders.
    wait_for(90, "the first JSS token to expire", &both, || {
        jss_tests::cluster::unix_now() > first_exp + 12
    });
    let refused = c.bao.run(
        "",
        &[
            "write",
            &format!("auth/{MOUNT}/login"),
            "role=demo",
            &format!("jwt={first}"),
        ],
    );
    assert!(!refused.status.success(), "the first token still logs in");
    put(&c.bao, &all_path(&demo), &["value=v2"]);
    wait_for(90, "a render after the first tokens expired", &both, || {
        read(&rendered).as_deref() == Some("v2")
    });
    let logins = alog.count("authentication successful");
    assert!(logins >= 2, "{logins} logins:\n{}", both());
    assert!(agent.try_wait().unwrap().is_none(), "{}", both());
    let _ = agent.kill();
    let _ = agent.wait();

    // SIGTERM: exit 0.
    signal(writer.id(), "TERM");
    let status = writer.wait().unwrap();
    assert!(status.success(), "{status}\n{}", wlog.text());
    assert!(!wlog.text().contains(first.trim()), "the token in the log");
}

#[test]
fn exec_puts_secrets_in_the_environment_or_does_not_run() {
    let demo = demo_pod();
    let c = Cluster::start(&[], "", &[&demo]);
    let db = format!("secret/ti-demo-ri/{REGION}/{}/db", demo.images());
    put(&c.bao, &db, &["password=s3cret-db", "user=app"]);
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
                "PLAIN",
            ],
            &[
                ("DB_PASSWORD", &good),
                ("DB_USER", &format!("vault:{db}#user")),
                ("PLAIN", "left alone"),
            ],
        )
        .wait_with_output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "s3cret-db\napp\nleft alone\n"
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
    put(&c.bao, &format!("secret/tsi-r/{REGION}/r1"), &["v=r"]);
    put(
        &c.bao,
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
    put(&c.bao, &all_path(&demo), &["value=two"]);
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

#[test]
fn token_refresh_rides_out_a_jss_outage_and_logs_it_once() {
    // 10 s tokens: the file is rewritten every few seconds.
    let demo = demo_pod();
    let mut c = Cluster::start(&[], "token_ttl_seconds = 10", &[&demo]);
    let dir = c.mkdir("jwt");
    let file = dir.join("token");
    let pod = c.pod(&demo);
    let mut w = c.spawn_jss(
        &pod,
        &["token", "--out", file.to_str().unwrap(), "--refresh"],
        &[],
    );
    let log = Tail::of(&mut w);
    let logf = || log.text();
    wait_for(60, "the token file", &logf, || file.exists());

    // JSS goes away: the refresher keeps the file and retries quietly.
    let config = std::fs::read_to_string(&c.daemon.config).unwrap();
    assert!(c.daemon.terminate(Duration::from_secs(30)).is_some());
    let before = read(&file).unwrap();
    wait_for(60, "a refresh attempt to fail", &logf, || {
        log.count("cannot refresh the token file") >= 1
    });
    // Several retries later (1 s, 2 s, 4 s …), still one line, same file.
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(
        log.count("cannot refresh the token file"),
        1,
        "{}",
        log.text()
    );
    assert_eq!(read(&file).unwrap(), before);
    assert!(w.try_wait().unwrap().is_none(), "{}", log.text());

    // JSS is back: a new token is written.
    c.daemon = jss_tests::daemon::Daemon::start(c.path(), &config);
    wait_for(60, "a fresh token after the outage", &logf, || {
        read(&file).is_some_and(|t| t != before)
    });
    assert!(log.count("JSS answers again") == 1, "{}", log.text());
    signal(w.id(), "TERM");
    assert!(w.wait().unwrap().success(), "{}", log.text());
}
