//! A real swtpm on loopback, killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::net;

pub struct Swtpm {
    child: Option<Child>,
    state: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    port: u16,
}

impl Swtpm {
    /// Starts a swtpm with a fresh state directory.
    pub fn start() -> Self {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let mut s = Self::start_in(tmp.path());
        s._tmp = Some(tmp);
        s
    }

    /// Starts a swtpm on the state in `dir` (kept after drop).
    pub fn start_in(dir: &Path) -> Self {
        let mut last = String::new();
        for _ in 0..5 {
            let port = net::free_port_pair();
            let spawned = spawn(dir, port, Stdio::piped());
            let mut child = match spawned {
                Ok(c) => c,
                Err(e) => {
                    panic!("cannot run swtpm ({e}): install it with `bash swtpm-ci/install-deps`")
                }
            };
            // Listening, and it is ours: a swtpm that lost the port to
            // another process exits at once.
            if net::wait_for_port(port, Duration::from_secs(5)) && still_running(&mut child) {
                return Self {
                    child: Some(child),
                    state: dir.to_path_buf(),
                    _tmp: None,
                    port,
                };
            }
            let _ = child.kill();
            let out = child.wait_with_output().ok();
            last = out
                .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                .unwrap_or_default();
        }
        panic!("swtpm did not start: {last}");
    }

    /// The command port; swtpm's control channel is at `port() + 1`.
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// The swtpm process, e.g. to freeze it (SIGSTOP) and make the TPM hang.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// Stops the TPM gracefully (SIGTERM) so its state is saved.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }

    /// Kills the TPM abruptly (SIGKILL): a TPM that vanishes.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops and starts again on the same state and port.
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port;
        let child = spawn(&self.state, port, Stdio::null())
            .unwrap_or_else(|e| panic!("restart swtpm: {e}"));
        assert!(
            net::wait_for_port(port, Duration::from_secs(5)),
            "swtpm did not come back on port {port}"
        );
        self.child = Some(child);
    }
}

fn still_running(child: &mut Child) -> bool {
    std::thread::sleep(Duration::from_millis(50));
    matches!(child.try_wait(), Ok(None))
}

fn spawn(dir: &Path, port: u16, stderr: Stdio) -> std::io::Result<Child> {
    Command::new("swtpm")
        .args(["socket", "--tpm2", "--tpmstate"])
        .arg(format!("dir={}", dir.display()))
        .arg("--server")
        .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
        .arg("--ctrl")
        .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
        .args(["--flags", "not-need-init,startup-clear"])
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.kill();
    }
}
