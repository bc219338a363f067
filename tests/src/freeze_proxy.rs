//! An HTTP proxy in front of OpenBao for fault tests: it counts the requests
//! a client makes and acts at a chosen one, so a client is stopped at a
//! given Vault call rather than after a guessed delay. The usual act is to
//! freeze OpenBao (SIGSTOP) just before it forwards request `k`: the client
//! then hangs on that call until the test kills it.
//!
//! HTTP/1.1 without pipelining (the Vault clients here): a request's head
//! starts a read, so a read starting with a method is one request.

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::bao::Bao;

const METHODS: [&[u8]; 6] = [
    b"GET /",
    b"POST /",
    b"PUT /",
    b"DELETE /",
    b"LIST /",
    b"PATCH /",
];

/// What the proxy does with a request after its hook ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// Pass it on to OpenBao.
    Forward,
    /// Drop the connection without passing it on: Vault is gone for it.
    Cut,
}

/// A running proxy; it keeps accepting until the test process ends.
pub struct FreezeProxy {
    port: u16,
    requests: Arc<AtomicUsize>,
    frozen: Arc<AtomicBool>,
}

impl FreezeProxy {
    /// Forwards everything and counts the requests.
    pub fn counting(bao: &Bao) -> Self {
        Self::with(bao, |_| Act::Forward)
    }

    /// Freezes OpenBao (SIGSTOP) just before it forwards request number
    /// `at` (1-based; 0 never), then forwards it: the client hangs on that
    /// call and OpenBao acts on it once thawed ([`Frozen`] thaws it).
    pub fn freezing(bao: &Bao, at: usize) -> Self {
        let pid = bao.pid();
        let frozen = Arc::new(AtomicBool::new(false));
        let fz = frozen.clone();
        Self::start(bao, frozen, move |n| {
            if n == at {
                signal(pid, "STOP");
                fz.store(true, Ordering::SeqCst);
            }
            Act::Forward
        })
    }

    /// Calls `on_request(n)` for the `n`th request (1-based) before it
    /// forwards or cuts it as the hook says.
    pub fn with(bao: &Bao, on_request: impl Fn(usize) -> Act + Send + Sync + 'static) -> Self {
        Self::start(bao, Arc::new(AtomicBool::new(false)), on_request)
    }

    fn start(
        bao: &Bao,
        frozen: Arc<AtomicBool>,
        on_request: impl Fn(usize) -> Act + Send + Sync + 'static,
    ) -> Self {
        let upstream = bao.addr().trim_start_matches("http://").to_string();
        let listener =
            TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("proxy bind: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("proxy address: {e}"))
            .port();
        let requests = Arc::new(AtomicUsize::new(0));
        let rq = requests.clone();
        let hook = Arc::new(on_request);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { return };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    return;
                };
                let (Ok(mut s_r), Ok(mut c_w)) = (server.try_clone(), client.try_clone()) else {
                    return;
                };
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s_r, &mut c_w);
                    let _ = c_w.shutdown(Shutdown::Both);
                });
                let (rq, hook) = (rq.clone(), hook.clone());
                std::thread::spawn(move || pass(client, server, &rq, &*hook));
            }
        });
        Self {
            port,
            requests,
            frozen,
        }
    }

    /// The proxy's address for `--vault-addr` / `VAULT_ADDR`.
    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Requests seen so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Whether [`FreezeProxy::freezing`] has stopped OpenBao.
    pub fn frozen(&self) -> bool {
        self.frozen.load(Ordering::SeqCst)
    }
}

/// Client to server, one read at a time, with the hook at each request.
fn pass(
    mut client: TcpStream,
    mut server: TcpStream,
    rq: &AtomicUsize,
    hook: &dyn Fn(usize) -> Act,
) {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        if METHODS.iter().any(|m| chunk.starts_with(m)) {
            let number = rq.fetch_add(1, Ordering::SeqCst) + 1;
            if hook(number) == Act::Cut {
                let _ = client.shutdown(Shutdown::Both);
                let _ = server.shutdown(Shutdown::Both);
                return;
            }
        }
        if server.write_all(chunk).is_err() {
            break;
        }
    }
    let _ = server.shutdown(Shutdown::Write);
}

/// `kill -SIG pid`; panics when it fails.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{sig} {pid} failed");
}

/// OpenBao stopped with SIGSTOP; SIGCONT on drop (also on panic).
pub struct Frozen(pub u32);

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

/// SIGKILLs `child`, a client stopped at a Vault call, and reaps it; panics
/// with its output (in `log`) when it had already ended, since a kill that
/// came too late tests nothing.
pub fn kill_running(child: &mut Child, log: &Path, ctx: &str) {
    use std::os::unix::process::ExitStatusExt as _;
    let output = || std::fs::read_to_string(log).unwrap_or_default();
    match child.try_wait() {
        Ok(None) => {}
        Ok(Some(st)) => panic!(
            "{ctx}: the run ended ({st}) before it was killed:\n{}",
            output()
        ),
        Err(e) => panic!("{ctx}: cannot check the run: {e}"),
    }
    if let Err(e) = child.kill() {
        panic!("{ctx}: cannot kill the run: {e}");
    }
    match child.wait() {
        Ok(st) => assert_eq!(st.signal(), Some(9), "{ctx}: {st:?}"),
        Err(e) => panic!("{ctx}: cannot reap the run: {e}"),
    }
}
