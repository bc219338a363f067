//! A TPM that is as slow as real ones: a TCP proxy in front of swtpm.
//!
//! swtpm signs in ~0.5 ms; hardware TPMs take 25–200 ms per `TPM2_Sign`
//! (README, "Capacity"). The proxy sits between `tcti-swtpm` and swtpm and
//! holds the answer to every command whose code is in `slow` for the extra
//! latency. It also does what a single TPM does: one command at a time. The
//! daemon is unchanged: it is simply given the proxy's port in its TCTI.
//!
//! Wire format (tcti-swtpm, tpm2-tss 3.x): the command port carries raw TPM
//! commands — header `tag: u16, size: u32, code: u32` (big-endian, `size`
//! counts the whole command) — and the answer in the same framing. The
//! control port (command port + 1) carries swtpm's control protocol; it is
//! forwarded byte for byte, one client connection to one upstream connection.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::net;

/// `TPM2_CC_Sign` (TPM 2.0 Library Part 2, table 12).
pub const TPM2_CC_SIGN: u32 = 0x0000_015D;

/// Largest command or answer the proxy passes (swtpm's own limit is 4 KiB).
const MAX_FRAME: usize = 64 * 1024;

/// What the proxy has seen, for tests and the benchmark.
#[derive(Debug, Default)]
pub struct Counters {
    /// Commands forwarded, all codes.
    pub commands: AtomicU64,
    /// Commands that succeeded and were held for the extra latency.
    pub slowed: AtomicU64,
    /// Most commands that were waiting for the TPM at one time.
    pub max_waiting: AtomicU64,
    waiting: AtomicU64,
    /// The digest of every slowed `TPM2_Sign`, in the order the TPM signed.
    signed: Mutex<Vec<Vec<u8>>>,
}

impl Counters {
    /// The digests the TPM signed so far, oldest first: SHA-256 of each
    /// token's signing input (`header.claims`), so a test can tell whose
    /// token each signature was.
    pub fn signed_digests(&self) -> Vec<Vec<u8>> {
        self.signed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A running proxy; stops accepting on drop.
pub struct TpmProxy {
    port: u16,
    stop: Arc<AtomicBool>,
    pub counters: Arc<Counters>,
}

struct Shared {
    upstream: u16,
    slow: Vec<u32>,
    latency: Duration,
    /// The TPM runs one command at a time.
    tpm: Mutex<()>,
    counters: Arc<Counters>,
}

impl TpmProxy {
    /// Proxies swtpm at `upstream` (command port; control at `upstream + 1`),
    /// adding `latency` to each command whose code is in `slow`.
    pub fn start(upstream: u16, latency: Duration, slow: &[u32]) -> std::io::Result<Self> {
        let port = net::free_port_pair();
        let cmd = TcpListener::bind(("127.0.0.1", port))?;
        let ctrl = TcpListener::bind(("127.0.0.1", port + 1))?;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let shared = Arc::new(Shared {
            upstream,
            slow: slow.to_vec(),
            latency,
            tpm: Mutex::new(()),
            counters: Arc::clone(&counters),
        });
        let (s1, st1) = (Arc::clone(&shared), Arc::clone(&stop));
        thread::spawn(move || accept_loop(cmd, &st1, move |c| serve_commands(c, &s1)));
        let (st2, up_ctrl) = (Arc::clone(&stop), upstream + 1);
        thread::spawn(move || accept_loop(ctrl, &st2, move |c| forward_control(c, up_ctrl)));
        Ok(Self {
            port,
            stop,
            counters,
        })
    }

    /// The command port; control is at `port() + 1`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A TCTI string for the daemon, `jss-bootstrap` or tpm2-tools.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }
}

impl Drop for TpmProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake both accept loops so they see the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        let _ = TcpStream::connect(("127.0.0.1", self.port + 1));
    }
}

fn accept_loop(
    listener: TcpListener,
    stop: &AtomicBool,
    handle: impl Fn(TcpStream) + Send + Sync + Clone + 'static,
) {
    for conn in listener.incoming() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let Ok(conn) = conn else { continue };
        let _ = conn.set_nodelay(true);
        let h = handle.clone();
        thread::spawn(move || h(conn));
    }
}

/// Reads one TPM frame (command or answer): its code field and all bytes.
fn read_frame(r: &mut impl Read) -> std::io::Result<Option<(u32, Vec<u8>)>> {
    let mut head = [0u8; 10];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let size = u32::from_be_bytes([head[2], head[3], head[4], head[5]]) as usize;
    if !(10..=MAX_FRAME).contains(&size) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("TPM frame of {size} bytes"),
        ));
    }
    let code = u32::from_be_bytes([head[6], head[7], head[8], head[9]]);
    let mut frame = head.to_vec();
    frame.resize(size, 0);
    r.read_exact(&mut frame[10..])?;
    Ok(Some((code, frame)))
}

/// One client connection: each command goes to swtpm alone, on a fresh
/// upstream connection (swtpm serves one connection at a time).
fn serve_commands(mut client: TcpStream, s: &Shared) {
    while let Ok(Some((code, cmd))) = read_frame(&mut client) {
        let c = &s.counters;
        let waiting = c.waiting.fetch_add(1, Ordering::Relaxed) + 1;
        c.max_waiting.fetch_max(waiting, Ordering::Relaxed);
        let answer = {
            let _tpm = s.tpm.lock().unwrap_or_else(|p| p.into_inner());
            c.waiting.fetch_sub(1, Ordering::Relaxed);
            let started = Instant::now();
            let answer = exchange(s.upstream, &cmd);
            c.commands.fetch_add(1, Ordering::Relaxed);
            // Only work the TPM did is slow: a warning such as TPM_RC_RETRY
            // (swtpm answers the first Sign after a load with it, and ESAPI
            // resends) comes back at once from a real TPM too.
            let done = matches!(&answer, Ok(a) if a[6..10] == [0, 0, 0, 0]);
            if done && s.slow.contains(&code) {
                c.slowed.fetch_add(1, Ordering::Relaxed);
                if code == TPM2_CC_SIGN
                    && let Some(d) = sign_digest(&cmd)
                {
                    c.signed.lock().unwrap_or_else(|p| p.into_inner()).push(d);
                }
                // The TPM is busy for the whole signature, not just the answer.
                thread::sleep(s.latency.saturating_sub(started.elapsed()));
            }
            answer
        };
        match answer {
            Ok(a) if client.write_all(&a).is_ok() => {}
            _ => break,
        }
    }
    let _ = client.shutdown(Shutdown::Both);
}

/// The digest a `TPM2_Sign` command asks to sign (TPM 2.0 Library Part 3,
/// TPM2_Sign): after the 10-byte header come `keyHandle: u32`,
/// `authorizationSize: u32` and that many bytes of sessions, then the
/// `TPM2B_DIGEST` (`size: u16`, bytes). In clear: the signer authorises the
/// key with a password session, which encrypts no parameter.
fn sign_digest(cmd: &[u8]) -> Option<Vec<u8>> {
    // TPM_ST_SESSIONS: a key's use is always authorised
    if cmd.get(..2)? != [0x80, 0x02] {
        return None;
    }
    let be32 = |at: usize| Some(u32::from_be_bytes(cmd.get(at..at + 4)?.try_into().ok()?));
    let at = 18 + usize::try_from(be32(14)?).ok()?;
    let len = usize::from(u16::from_be_bytes(cmd.get(at..at + 2)?.try_into().ok()?));
    Some(cmd.get(at + 2..at + 2 + len)?.to_vec())
}

fn exchange(upstream: u16, cmd: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut tpm = TcpStream::connect(("127.0.0.1", upstream))?;
    tpm.set_nodelay(true)?;
    tpm.write_all(cmd)?;
    match read_frame(&mut tpm)? {
        Some((_, answer)) => Ok(answer),
        None => Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "swtpm closed without answering",
        )),
    }
}

/// swtpm's control channel, forwarded both ways.
fn forward_control(client: TcpStream, upstream: u16) {
    let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let (Ok(mut c2), Ok(mut u2)) = (client.try_clone(), up.try_clone()) else {
        return;
    };
    let t = thread::spawn(move || {
        let _ = std::io::copy(&mut c2, &mut u2);
        let _ = u2.shutdown(Shutdown::Write);
    });
    let (mut up, mut client) = (up, client);
    let _ = std::io::copy(&mut up, &mut client);
    let _ = client.shutdown(Shutdown::Write);
    let _ = t.join();
}
