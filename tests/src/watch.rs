//! Watching processes the tests start: their stderr as it comes, waits with
//! a deadline that report what was seen, and signals.

use std::io::Read as _;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Waits up to `secs` for `ok`; panics naming `what` and showing `log()`.
/// A deadline for a stuck test, never a timing assertion.
pub fn wait_for(secs: u64, what: &str, log: &dyn Fn() -> String, mut ok: impl FnMut() -> bool) {
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

/// A child's stderr, collected by a thread as it runs.
#[derive(Clone, Default)]
pub struct Tail(Arc<Mutex<String>>);

impl Tail {
    /// Takes `child`'s piped stderr.
    pub fn of(child: &mut Child) -> Self {
        let t = Tail::default();
        let Some(mut err) = child.stderr.take() else {
            panic!("the child's stderr is not piped");
        };
        let buf = t.0.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = err.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });
        t
    }

    pub fn text(&self) -> String {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn count(&self, needle: &str) -> usize {
        self.text().matches(needle).count()
    }
}

/// `kill -SIG pid`; panics when kill fails.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{sig} {pid}");
}

/// A file's text, `None` when it cannot be read (absent).
pub fn read(p: &std::path::Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}
