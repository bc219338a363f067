//! `jss token --out FILE --refresh` against real parts (issue 14): an
//! OpenBao Agent logs in with the file it keeps, past the first tokens'
//! expiry, and the refresher rides out a JSS outage. The token writer runs
//! in the demo pod's kubepods cgroup; no timing is asserted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use jss_tests::cluster::{Cluster, MOUNT, PodDef};
use jss_tests::watch::{Tail, read, signal, wait_for};

#[test]
fn openbao_agent_logs_in_with_a_jss_token_file_and_keeps_rendering() {
    // Short lives everywhere, so expiry happens within the test: JSS tokens
    // of 10 s (dead 20 s after issue with the role's 10 s leeway) and Vault
    // tokens of 10 s that cannot be renewed past that.
    let demo = PodDef::tsi_demo();
    let c = Cluster::start(
        &["--role", "demo", "--token-ttl", "10s"],
        "token_ttl_seconds = 10",
        &[&demo],
    );
    c.put(&demo.ti_demo_all("mysecret1"), &["value=v1"]);
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
            secret = demo
                .ti_demo_all("mysecret1")
                .replacen("secret/", "secret/data/", 1),
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
    c.put(&demo.ti_demo_all("mysecret1"), &["value=v2"]);
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
fn token_refresh_rides_out_a_jss_outage_and_logs_it_once() {
    // 10 s tokens: the file is rewritten every few seconds.
    let demo = PodDef::tsi_demo();
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
    // The line is logged after the file is written.
    wait_for(30, "the recovery line", &logf, || {
        log.count("JSS answers again") >= 1
    });
    assert_eq!(log.count("JSS answers again"), 1, "{}", log.text());
    signal(w.id(), "TERM");
    assert!(w.wait().unwrap().success(), "{}", log.text());
}
