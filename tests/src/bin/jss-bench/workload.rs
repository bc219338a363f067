//! Workloads for the slow-TPM benchmark: one process per pod, inside that
//! pod's container cgroup, asking `jss serve` for tokens over a fresh
//! connection of its own for each ask (so the daemon attests every ask to a
//! live process of that pod). Asking again at half the remaining life + 1 s
//! is spiffe-helper's schedule.
//!
//! The driver ([`Fleet`]) listens on a unix socket; each workload connects
//! to it and waits for one line, `START_MS END_MS MODE` (unix milliseconds;
//! MODE `once`: ask until the first token, `refresh`: keep refreshing until
//! END_MS). It prints one line per ask, `AT_MS LATENCY_US STATUS` (status 0:
//! no HTTP answer), when it is done.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail, ensure};

use jss_tests::node::spawn_in;
use jss_tests::pods::{Layout, PodProcess, Qos};

use crate::e2e::REQUEST;
use crate::http::Conn;

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

fn sleep_until_ms(t: u64) {
    let now = now_ms();
    if t > now {
        std::thread::sleep(Duration::from_millis(t - now));
    }
}

/// `expires_at` (unix seconds) of a `POST /v1/token` answer.
fn expires_at(body: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(body).ok()?;
    let rest = &text[text.find("\"expires_at\":")? + 13..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// One ask on a fresh connection: status (0 when there was no answer) and body.
fn ask(socket: &str) -> (u16, Vec<u8>) {
    let Ok(stream) = UnixStream::connect(socket) else {
        return (0, Vec::new());
    };
    Conn::new(stream)
        .exchange(REQUEST)
        .unwrap_or((0, Vec::new()))
}

/// `workload CTRL SOCKET`: the process inside a pod (see the module docs).
pub fn main(args: &[String]) -> anyhow::Result<()> {
    let [ctrl, socket] = args else {
        bail!("usage: jss-bench workload CTRL SOCKET");
    };
    let ctrl = UnixStream::connect(ctrl).with_context(|| format!("connect to {ctrl}"))?;
    let mut line = String::new();
    BufReader::new(&ctrl)
        .read_line(&mut line)
        .context("read the start line")?;
    let f: Vec<&str> = line.split_whitespace().collect();
    let (Some(start), Some(end), Some(mode)) = (
        f.first().and_then(|s| s.parse::<u64>().ok()),
        f.get(1).and_then(|s| s.parse::<u64>().ok()),
        f.get(2),
    ) else {
        bail!("bad start line {line:?}");
    };
    let once = *mode == "once";
    sleep_until_ms(start);
    let mut out = String::new();
    loop {
        let at = now_ms();
        let t = Instant::now();
        let (status, body) = ask(socket);
        let us = u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX);
        out.push_str(&format!("{at} {us} {status}\n"));
        let now = now_ms();
        let next = match (status, expires_at(&body)) {
            (200, _) if once => break,
            (200, Some(exp)) => now + (exp * 1000).saturating_sub(now) / 2 + 1000,
            // Refused: ask again a second later, as a client honouring
            // Retry-After would.
            _ => now + 1000,
        };
        if next >= end {
            break;
        }
        sleep_until_ms(next);
    }
    print!("{out}");
    Ok(())
}

/// One ask as the driver reads it back.
#[derive(Debug, Clone, Copy)]
pub struct Ask {
    pub workload: usize,
    /// Unix milliseconds when it was sent.
    pub at_ms: u64,
    pub latency_us: u32,
    pub status: u16,
}

impl Ask {
    /// Unix milliseconds when the answer was in.
    pub fn done_ms(&self) -> u64 {
        self.at_ms + u64::from(self.latency_us) / 1000
    }
}

/// How the workloads ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Until the first token (a pod starting).
    Once,
    /// Refreshing at half the remaining life + 1 s until the end.
    Refresh,
}

/// Workload processes, each in its own pod (one container), connected to
/// the driver and waiting for their start line.
pub struct Fleet {
    children: Vec<Child>,
    ctrl: Vec<UnixStream>,
    // Dropped last: the pods' cgroups go once their processes have exited.
    _pods: Vec<PodProcess>,
    _dir: tempfile::TempDir,
}

impl Fleet {
    /// Starts one workload per `(pod UID, container ID)` against `socket`.
    pub fn spawn(pods: &[(String, String)], socket: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("create a directory for the control socket")?;
        let ctrl_path: PathBuf = dir.path().join("ctrl.sock");
        let listener = UnixListener::bind(&ctrl_path)
            .with_context(|| format!("listen on {}", ctrl_path.display()))?;
        let me = std::env::current_exe().context("find the jss-bench executable")?;
        let (ctrl_s, sock_s) = (
            ctrl_path.display().to_string(),
            socket.display().to_string(),
        );
        let mut fleet = Self {
            children: Vec::with_capacity(pods.len()),
            ctrl: Vec::with_capacity(pods.len()),
            _pods: Vec::with_capacity(pods.len()),
            _dir: dir,
        };
        for (uid, id) in pods {
            let pod = PodProcess::spawn(Layout::V2Systemd(Qos::BestEffort), uid, id);
            let args = ["workload", ctrl_s.as_str(), sock_s.as_str()];
            fleet
                .children
                .push(spawn_in(&pod, &me, &args, Stdio::piped()));
            fleet._pods.push(pod);
        }
        listener
            .set_nonblocking(true)
            .context("make the control socket non-blocking")?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while fleet.ctrl.len() < pods.len() {
            match listener.accept() {
                Ok((s, _)) => fleet.ctrl.push(s),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    ensure!(
                        Instant::now() < deadline,
                        "only {} of {} workloads connected within 120 s",
                        fleet.ctrl.len(),
                        pods.len()
                    );
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e).context("accept a workload"),
            }
        }
        Ok(fleet)
    }

    /// Sends every workload its start line: workload `i` starts at
    /// `start_ms(i)`, all stop by `end_ms`.
    pub fn start(
        &mut self,
        start_ms: impl Fn(usize) -> u64,
        end_ms: u64,
        mode: Mode,
    ) -> anyhow::Result<()> {
        let m = match mode {
            Mode::Once => "once",
            Mode::Refresh => "refresh",
        };
        for (i, c) in self.ctrl.iter_mut().enumerate() {
            writeln!(c, "{} {end_ms} {m}", start_ms(i)).context("start a workload")?;
        }
        Ok(())
    }

    /// Waits for every workload and returns all their asks.
    pub fn collect(mut self) -> anyhow::Result<Vec<Ask>> {
        let mut asks = Vec::new();
        for (workload, ch) in self.children.iter_mut().enumerate() {
            let mut out = String::new();
            if let Some(mut stdout) = ch.stdout.take() {
                stdout
                    .read_to_string(&mut out)
                    .context("read a workload's output")?;
            }
            let status = ch.wait().context("wait for a workload")?;
            ensure!(status.success(), "a workload failed ({status})");
            for l in out.lines() {
                let f: Vec<u64> = l.split(' ').filter_map(|v| v.parse().ok()).collect();
                let [at_ms, us, st] = f[..] else {
                    bail!("a workload's line {l:?}");
                };
                asks.push(Ask {
                    workload,
                    at_ms,
                    latency_us: u32::try_from(us).unwrap_or(u32::MAX),
                    status: u16::try_from(st).unwrap_or(0),
                });
            }
        }
        Ok(asks)
    }
}
