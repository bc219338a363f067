//! A real `jss serve` process on a temporary socket, killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary built next to the running test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    // target/<profile>/deps/<test> or target/<profile>/<bin> -> target/<profile>/<name>
    let mut dir = exe
        .parent()
        .unwrap_or_else(|| panic!("unexpected binary location {}", exe.display()));
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().unwrap_or(dir);
    }
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace` first",
        p.display()
    );
    p
}

pub struct Daemon {
    child: Option<Child>,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub audit_log: PathBuf,
    pub stderr_log: PathBuf,
}

impl Daemon {
    /// Writes `config_toml` to `dir/config.toml` and starts `jss serve` on it.
    /// The config must put its socket at `dir/jss.sock` and audit log at `dir/audit.log`.
    pub fn start(dir: &Path, config_toml: &str) -> Self {
        let config = dir.join("config.toml");
        std::fs::write(&config, config_toml).unwrap_or_else(|e| panic!("write config: {e}"));
        let stderr_log = dir.join("jss.stderr");
        let err = std::fs::File::create(&stderr_log).unwrap_or_else(|e| panic!("log file: {e}"));
        // JSS_DAEMON_WRAPPER="valgrind --tool=callgrind" runs the daemon under a
        // profiler (see DEVELOPERS.md).
        let wrapper = std::env::var("JSS_DAEMON_WRAPPER").unwrap_or_default();
        let mut argv: Vec<std::ffi::OsString> =
            wrapper.split_whitespace().map(Into::into).collect();
        argv.push(bin("jss").into());
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .env("TSS2_LOG", "all+none")
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn jss: {e}"));
        let mut d = Self {
            child: Some(child),
            socket: dir.join("jss.sock"),
            config,
            audit_log: dir.join("audit.log"),
            stderr_log,
        };
        d.wait_ready();
        d
    }

    /// Until the daemon says it serves: that line comes after every socket
    /// (main, SPIFFE, pod-token) is bound; a connect alone can come before.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
                && self.stderr().contains("jss serving")
            {
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!(
                    "jss exited with {status} before serving:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("jss did not start serving:\n{}", self.stderr());
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    pub fn audit_lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.audit_log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}")))
            .collect()
    }

    /// `GET /metrics` on the daemon's socket: the Prometheus text.
    pub fn metrics(&self) -> String {
        use std::io::{Read as _, Write as _};
        let mut s = std::os::unix::net::UnixStream::connect(&self.socket)
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.socket.display()));
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: jss\r\nConnection: close\r\n\r\n")
            .unwrap_or_else(|e| panic!("ask for /metrics: {e}"));
        let mut text = String::new();
        s.read_to_string(&mut text)
            .unwrap_or_else(|e| panic!("read /metrics: {e}"));
        text
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status();
    }

    /// SIGTERM, then wait for exit; returns whether it exited successfully.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.signal("TERM");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The value of the sample `name` (exact, labels included) in Prometheus
/// text, e.g. `jss_refreshes_total`; 0 when absent.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .filter_map(|v| v.trim().parse().ok())
        .next()
        .unwrap_or(0.0)
}

/// One HTTP/1.1 request on a daemon's unix socket (`Connection: close`),
/// the raw answer back.
pub fn ask(socket: &Path, method: &str, path: &str, body: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: j\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap_or_else(|e| panic!("write to {}: {e}", socket.display()));
    let mut out = String::new();
    s.read_to_string(&mut out)
        .unwrap_or_else(|e| panic!("read from {}: {e}", socket.display()));
    out
}

/// `(status, error code)` of an [`ask`] answer: the status line's code and
/// the JSON body's `error`.
pub fn status_code(answer: &str) -> (u16, String) {
    let status = answer
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status line: {answer}"));
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let code = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(String::from))
        .unwrap_or_default();
    (status, code)
}
